//! Node lifecycle controller: notices nodes that stopped reporting and says so
//! in the API, as upstream's pkg/controller/nodelifecycle does.
//!
//! A node whose Lease (kube-node-lease/<node>) and Ready heartbeat have not
//! moved for the node monitor grace period gets its conditions set to Unknown
//! ("Kubelet stopped posting node status."). Node conditions become taints:
//! NoSchedule ones for every condition that keeps pods away, and the
//! `not-ready`/`unreachable` NoExecute taints that make the taint eviction
//! controller evict pods. NoExecute taints are added at a limited rate per
//! zone, slower when much of a zone is down and not at all when every node is
//! (the control plane is more likely cut off than every node dead); they are
//! removed as soon as the node is Ready again. Pods on a node that stops being
//! Ready are marked not Ready, so Services stop sending them traffic.

use super::Context;
use crate::runtime::{Change, Controller, Error, EventType, Informer, Next, Reconciler, Recorder, WorkQueue, reference};
use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The reason on a pod's Ready condition when its node stopped reporting.
pub const NODE_NOT_READY_REASON: &str = "NodeNotReady";

const COMPONENT: &str = "node-controller";
const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// How often every node is looked at (upstream's node monitor period), at most.
const MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// Grace for a node that never reported its Ready condition.
const STARTUP_GRACE_PERIOD: Duration = Duration::from_secs(60);
/// Nodes tainted NoExecute per second in a healthy zone, and in a partly
/// disrupted large one (upstream's --node-eviction-rate and secondary rate).
const EVICTION_RATE: f64 = 0.1;
const SECONDARY_EVICTION_RATE: f64 = 0.01;
/// A zone is partly disrupted when this share of its nodes is not Ready (more than 2).
const UNHEALTHY_ZONE_THRESHOLD: f64 = 0.55;
/// Zones up to this size stop tainting altogether when partly disrupted.
const LARGE_CLUSTER_THRESHOLD: usize = 50;
/// Conditions reset to Unknown when a node stops reporting.
const MONITORED_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// NoSchedule taints kept in line with node conditions: (condition, status, taint).
const CONDITION_TAINTS: [(&str, &str, &str); 6] = [
    ("Ready", "False", NOT_READY_TAINT),
    ("Ready", "Unknown", UNREACHABLE_TAINT),
    ("MemoryPressure", "True", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("NetworkUnavailable", "True", "node.kubernetes.io/network-unavailable"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
];
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// What the controller remembers of a node between passes.
struct Health {
    /// When the node was last seen alive (by this controller's clock).
    probe: Instant,
    lease_renewed: Option<MicroTime>,
    ready_heartbeat: Option<Time>,
    /// Whether its pods have been marked not ready since it stopped being Ready.
    pods_marked: bool,
    ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// A token bucket of burst 1: how fast NoExecute taints may be added in a zone.
struct Limiter {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Limiter {
    fn new(rate: f64) -> Self {
        Self { rate, tokens: 1.0, at: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(1.0);
        self.at = now;
    }

    /// Takes a token, or says how long until one is due (`None`: never at this rate).
    fn try_take(&mut self) -> Result<(), Option<Duration>> {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate <= 0.0 {
            return Err(None);
        }
        Err(Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate)))
    }

    fn set_rate(&mut self, rate: f64) {
        self.refill();
        self.rate = rate;
    }
}

struct Zone {
    state: ZoneState,
    limiter: Limiter,
}

#[derive(Default)]
struct Zones {
    zones: HashMap<String, Zone>,
    /// Every zone fully disrupted: no NoExecute taints at all.
    all_disrupted: bool,
}

pub async fn run(ctx: Context) {
    let nodes = ctx.informers.get::<Node>();
    let leases = ctx.informers.get::<Lease>();
    let pods = ctx.informers.get::<Pod>();
    let controller = Controller::new(COMPONENT, ctx.options.workers).owns_kind(&nodes).watch(&leases, |change: &Change<Lease>| {
        let lease = change.object();
        if lease.metadata.namespace.as_deref() == Some(LEASE_NAMESPACE) { vec![lease.name_any()] } else { vec![] }
    });
    let grace = ctx.options.node_monitor_grace_period;
    let reconciler = Arc::new(NodeLifecycle {
        nodes: nodes.clone(),
        leases,
        pods,
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        grace,
        health: Mutex::new(HashMap::new()),
        zones: Mutex::new(Zones::default()),
    });
    let period = (grace / 4).clamp(Duration::from_millis(100), MONITOR_PERIOD);
    tokio::spawn(monitor(reconciler.clone(), controller.queue(), period, ctx.shutdown.clone()));
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

/// Every period: recompute zone states, then look at every node (a node that
/// stopped reporting produces no event to react to).
async fn monitor(lifecycle: Arc<NodeLifecycle>, queue: Arc<WorkQueue>, period: Duration, shutdown: tokio_util::sync::CancellationToken) {
    lifecycle.nodes.wait_synced().await;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let nodes = lifecycle.nodes.list();
        lifecycle.update_zones(&nodes);
        for node in nodes {
            queue.add(node.name_any());
        }
    }
}

struct NodeLifecycle {
    nodes: Informer<Node>,
    leases: Informer<Lease>,
    pods: Informer<Pod>,
    client: kube::Client,
    recorder: Recorder,
    grace: Duration,
    health: Mutex<HashMap<String, Health>>,
    zones: Mutex<Zones>,
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// "True", "False" or "Unknown" (also when never reported).
fn ready_status(node: &Node) -> &str {
    condition(node, "Ready").map_or("Unknown", |c| c.status.as_str())
}

/// The zone a node is in, as upstream keys zones (region and zone labels).
fn zone_of(node: &Node) -> String {
    let label = |k: &str| node.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned().unwrap_or_default();
    format!("{}:\u{0}:{}", label("topology.kubernetes.io/region"), label("topology.kubernetes.io/zone"))
}

/// Upstream's zone state: fully disrupted when no node is Ready, partly when
/// more than 2 and at least the threshold share are not.
fn zone_state(ready: usize, not_ready: usize) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / (ready + not_ready) as f64 >= UNHEALTHY_ZONE_THRESHOLD {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// How fast a zone in `state` with `size` nodes may have nodes tainted NoExecute.
fn taint_rate(state: ZoneState, size: usize) -> f64 {
    match state {
        ZoneState::Normal | ZoneState::FullDisruption => EVICTION_RATE,
        ZoneState::PartialDisruption if size > LARGE_CLUSTER_THRESHOLD => SECONDARY_EVICTION_RATE,
        ZoneState::PartialDisruption => 0.0,
    }
}

fn is_taint(t: &Taint, key: &str, effect: &str) -> bool {
    t.key == key && t.effect == effect
}

/// The taints `node` should carry, given its Ready status and whether NoExecute
/// taints may be added now (`may_add_no_execute`).
fn desired_taints(node: &Node, ready: &str, keep_no_execute: bool, may_add_no_execute: bool) -> Vec<Taint> {
    let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let mut no_schedule: Vec<&str> = CONDITION_TAINTS
        .iter()
        .filter(|(c, status, _)| if *c == "Ready" { ready == *status } else { condition(node, c).is_some_and(|c| c.status == *status) })
        .map(|(_, _, taint)| *taint)
        .collect();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        no_schedule.push(UNSCHEDULABLE_TAINT);
    }
    let managed_no_schedule = |key: &str| key == UNSCHEDULABLE_TAINT || CONDITION_TAINTS.iter().any(|(_, _, t)| *t == key);
    let wanted_no_execute = match ready {
        "False" if keep_no_execute => Some(NOT_READY_TAINT),
        "Unknown" if keep_no_execute => Some(UNREACHABLE_TAINT),
        _ => None,
    };
    let mut taints: Vec<Taint> = current
        .iter()
        .filter(|t| !(t.effect == "NoSchedule" && managed_no_schedule(&t.key) && !no_schedule.contains(&t.key.as_str())))
        .filter(|t| !(t.effect == "NoExecute" && (t.key == NOT_READY_TAINT || t.key == UNREACHABLE_TAINT) && Some(t.key.as_str()) != wanted_no_execute))
        .cloned()
        .collect();
    for key in no_schedule {
        if !taints.iter().any(|t| is_taint(t, key, "NoSchedule")) {
            taints.push(Taint { key: key.into(), effect: "NoSchedule".into(), value: None, time_added: None });
        }
    }
    if let Some(key) = wanted_no_execute {
        // Swapping one node-controller taint for the other is not rate limited.
        let swapping = current.iter().any(|t| t.effect == "NoExecute" && (t.key == NOT_READY_TAINT || t.key == UNREACHABLE_TAINT));
        if !taints.iter().any(|t| is_taint(t, key, "NoExecute")) && (swapping || may_add_no_execute) {
            taints.push(Taint { key: key.into(), effect: "NoExecute".into(), value: None, time_added: Some(Time(jiff::Timestamp::now())) });
        }
    }
    taints
}

#[async_trait]
impl Reconciler for NodeLifecycle {
    async fn reconcile(&self, name: &str) -> Result<Next, Error> {
        let Some(cached) = self.nodes.get(name) else {
            self.health.lock().expect("health lock").remove(name);
            return Ok(Next::Done);
        };
        let mut node = (*cached).clone();
        if self.stopped_reporting(&node) {
            node = self.mark_unknown(&node).await?;
        }
        let ready = ready_status(&node).to_owned();
        let (newly_not_ready, pods_to_mark) = self.observe_ready(name, ready == "True");
        if newly_not_ready {
            self.recorder.record(reference(&node), EventType::Normal, "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
        }
        if pods_to_mark {
            self.mark_pods_not_ready(name).await?;
            if let Some(h) = self.health.lock().expect("health lock").get_mut(name) {
                h.pods_marked = true;
            }
        }
        self.update_taints(&node, &ready).await
    }
}

impl NodeLifecycle {
    /// Records the node's signs of life; true when none came within the grace period.
    fn stopped_reporting(&self, node: &Node) -> bool {
        let name = node.name_any();
        let lease_renewed = self.leases.get(&format!("{LEASE_NAMESPACE}/{name}")).and_then(|l| l.spec.as_ref()?.renew_time.clone());
        let ready = condition(node, "Ready");
        let ready_heartbeat = ready.and_then(|c| c.last_heartbeat_time.clone());
        let mut health = self.health.lock().expect("health lock");
        let now = Instant::now();
        let h = health.entry(name).or_insert_with(|| Health {
            probe: now,
            lease_renewed: lease_renewed.clone(),
            ready_heartbeat: ready_heartbeat.clone(),
            pods_marked: false,
            ready: ready.is_some_and(|c| c.status == "True"),
        });
        if h.lease_renewed != lease_renewed || h.ready_heartbeat != ready_heartbeat {
            h.probe = now;
            h.lease_renewed = lease_renewed;
            h.ready_heartbeat = ready_heartbeat;
        }
        let grace = if ready.is_some() { self.grace } else { self.grace.max(STARTUP_GRACE_PERIOD) };
        now.duration_since(h.probe) > grace
    }

    /// Records whether the node is Ready; says whether it just stopped being
    /// Ready and whether its pods still have to be marked not ready.
    fn observe_ready(&self, name: &str, ready: bool) -> (bool, bool) {
        let mut health = self.health.lock().expect("health lock");
        let Some(h) = health.get_mut(name) else { return (false, false) };
        let was_ready = std::mem::replace(&mut h.ready, ready);
        if ready {
            h.pods_marked = false;
        }
        (was_ready && !ready, !ready && !h.pods_marked)
    }

    /// Sets the monitored conditions to Unknown, as upstream does for a silent node.
    async fn mark_unknown(&self, node: &Node) -> Result<Node, Error> {
        let now = Time(jiff::Timestamp::now());
        let changed: Vec<NodeCondition> = MONITORED_CONDITIONS
            .iter()
            .filter_map(|type_| match condition(node, type_) {
                Some(c) if c.status == "Unknown" => None,
                Some(c) => Some(NodeCondition {
                    status: "Unknown".into(),
                    reason: Some("NodeStatusUnknown".into()),
                    message: Some("Kubelet stopped posting node status.".into()),
                    last_transition_time: Some(now.clone()),
                    ..c.clone()
                }),
                None => Some(NodeCondition {
                    type_: (*type_).into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(now.clone()),
                }),
            })
            .collect();
        if changed.is_empty() {
            return Ok(node.clone());
        }
        tracing::info!(node = %node.name_any(), "node stopped posting status; marking it Unknown");
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({ "status": { "conditions": changed } });
        Ok(api.patch_status(&node.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await?)
    }

    /// Sets the Ready condition of the node's pods to False (upstream's MarkPodsNotReady),
    /// with a reason that says why.
    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), Error> {
        let pods = self.pods.filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node));
        for pod in pods {
            let ready = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            if ready.is_none_or(|c| c.status == "False") {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = json!({ "status": { "conditions": [{ "type": "Ready", "status": "False", "reason": NODE_NOT_READY_REASON, "lastTransitionTime": Time(jiff::Timestamp::now()) }] } });
            match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Brings the node's taints in line with its conditions; adding a NoExecute
    /// taint waits for its zone's limiter.
    async fn update_taints(&self, node: &Node, ready: &str) -> Result<Next, Error> {
        let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let (all_disrupted, mut wait) = (self.zones.lock().expect("zones lock").all_disrupted, None);
        let mut taints = desired_taints(node, ready, !all_disrupted, false);
        let wants_no_execute = !all_disrupted && ready != "True";
        if wants_no_execute && !taints.iter().any(|t| t.effect == "NoExecute" && (t.key == NOT_READY_TAINT || t.key == UNREACHABLE_TAINT)) {
            let mut zones = self.zones.lock().expect("zones lock");
            let zone = zones.zones.entry(zone_of(node)).or_insert_with(|| Zone { state: ZoneState::Normal, limiter: Limiter::new(EVICTION_RATE) });
            match zone.limiter.try_take() {
                Ok(()) => taints = desired_taints(node, ready, true, true),
                Err(due) => wait = due,
            }
        }
        if taints != current {
            tracing::info!(node = %node.name_any(), ready, "updating node taints");
            let api: Api<Node> = Api::all(self.client.clone());
            let patch = json!({ "metadata": { "resourceVersion": node.resource_version() }, "spec": { "taints": taints } });
            api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        Ok(wait.map_or(Next::Done, Next::After))
    }

    /// Recomputes each zone's state from the cached nodes and adjusts its taint rate.
    fn update_zones(&self, nodes: &[Arc<Node>]) {
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        for node in nodes {
            let c = counts.entry(zone_of(node)).or_default();
            if ready_status(node) == "True" { c.0 += 1 } else { c.1 += 1 }
        }
        let states: HashMap<String, (ZoneState, usize)> = counts.iter().map(|(z, (r, n))| (z.clone(), (zone_state(*r, *n), r + n))).collect();
        let all_disrupted = !states.is_empty() && states.values().all(|(s, _)| *s == ZoneState::FullDisruption);
        let mut zones = self.zones.lock().expect("zones lock");
        zones.zones.retain(|z, _| states.contains_key(z));
        if all_disrupted != zones.all_disrupted {
            if all_disrupted {
                tracing::warn!("every node is not Ready: entering disruption mode, no node is tainted for eviction");
            } else {
                tracing::info!("some nodes are Ready again: leaving disruption mode");
                // Every node gets a full grace period again.
                let now = Instant::now();
                for h in self.health.lock().expect("health lock").values_mut() {
                    h.probe = now;
                }
            }
            zones.all_disrupted = all_disrupted;
        }
        for (name, (state, size)) in states {
            let zone = zones.zones.entry(name).or_insert_with(|| Zone { state, limiter: Limiter::new(taint_rate(state, size)) });
            if zone.state != state {
                zone.state = state;
                zone.limiter.set_rate(taint_rate(state, size));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn node(ready: &str, taints: Vec<Taint>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta { name: Some("n".into()), ..Default::default() },
            spec: Some(NodeSpec { taints: Some(taints), ..Default::default() }),
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                conditions: Some(vec![NodeCondition { type_: "Ready".into(), status: ready.into(), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint { key: key.into(), effect: effect.into(), value: None, time_added: None }
    }

    fn keys(taints: &[Taint]) -> Vec<String> {
        taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect()
    }

    #[test]
    fn an_unreachable_node_is_tainted_no_schedule_at_once_and_no_execute_when_allowed() {
        let n = node("Unknown", vec![taint("user/own", "NoSchedule")]);
        assert_eq!(keys(&desired_taints(&n, "Unknown", true, false)), ["user/own:NoSchedule", "node.kubernetes.io/unreachable:NoSchedule"]);
        let taints = desired_taints(&n, "Unknown", true, true);
        assert_eq!(keys(&taints)[2], "node.kubernetes.io/unreachable:NoExecute");
        assert!(taints[2].time_added.is_some() && taints[1].time_added.is_none());
    }

    #[test]
    fn a_not_ready_node_swaps_unreachable_for_not_ready_and_recovery_clears_both() {
        let n = node("False", vec![taint(UNREACHABLE_TAINT, "NoSchedule"), taint(UNREACHABLE_TAINT, "NoExecute")]);
        assert_eq!(keys(&desired_taints(&n, "False", true, false)), ["node.kubernetes.io/not-ready:NoSchedule", "node.kubernetes.io/not-ready:NoExecute"]);
        let n = node("True", vec![taint(NOT_READY_TAINT, "NoSchedule"), taint(NOT_READY_TAINT, "NoExecute"), taint("user/own", "NoExecute")]);
        assert_eq!(keys(&desired_taints(&n, "True", true, true)), ["user/own:NoExecute"]);
        // When every node is down, the eviction taints go too.
        let n = node("Unknown", vec![taint(UNREACHABLE_TAINT, "NoExecute")]);
        assert_eq!(keys(&desired_taints(&n, "Unknown", false, false)), ["node.kubernetes.io/unreachable:NoSchedule"]);
    }

    #[test]
    fn zone_states_and_taint_rates_follow_upstream() {
        assert_eq!(zone_state(0, 3), ZoneState::FullDisruption);
        assert_eq!(zone_state(2, 1), ZoneState::Normal);
        assert_eq!(zone_state(2, 2), ZoneState::Normal, "no more than 2 down is normal");
        assert_eq!(zone_state(2, 3), ZoneState::PartialDisruption);
        assert_eq!(taint_rate(ZoneState::PartialDisruption, 10), 0.0);
        assert_eq!(taint_rate(ZoneState::PartialDisruption, 100), SECONDARY_EVICTION_RATE);
        assert_eq!(taint_rate(ZoneState::FullDisruption, 3), EVICTION_RATE);
    }

    #[test]
    fn the_limiter_allows_a_burst_of_one_then_the_rate() {
        let mut l = Limiter::new(10.0);
        assert!(l.try_take().is_ok());
        let wait = l.try_take().unwrap_err().unwrap();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(50), "{wait:?}");
        l.set_rate(0.0);
        assert_eq!(l.try_take(), Err(None));
    }
}

//! Fake nodes (kwok's role): simulated nodes that register, renew their Leases
//! and move the pods bound to them to Running and Ready without running
//! anything, so the control plane can be exercised and measured at a thousand
//! nodes on one small machine. They talk to the API like any node agent.
//!
//! Simulation knob: annotating a fake node `rk.io/fake-node-stopped: "true"`
//! makes it behave as a node whose kubelet died (no Lease renewals, nothing
//! done for its pods), so node failure handling can be exercised; removing the
//! annotation brings it back, reporting Ready as a restarted kubelet would.

use crate::runtime::{Change, Controller, Error, Informer, Informers, Next, Reconciler, split_key};
use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, Node, NodeAddress, NodeCondition,
    NodeStatus, NodeSystemInfo, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::ResourceExt;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the kubelet renews its Lease by default.
const KUBELET_LEASE_RENEW_EVERY: Duration = Duration::from_secs(10);
const LEASE_DURATION_SECONDS: i32 = 40;
/// Label every fake node carries, so tests and users can tell them apart.
pub const FAKE_NODE_LABEL: &str = "rk.io/fake-node";
/// The simulation knob: a fake node annotated with this set to "true" stops.
pub const STOPPED_ANNOTATION: &str = "rk.io/fake-node-stopped";

/// How often fake nodes renew their Leases: the kubelet's 10 s, or a quarter of
/// the node monitor grace period when that is shorter (tests shorten it), so a
/// running fake node is never taken for a dead one.
pub fn lease_renew_interval(node_monitor_grace_period: Duration) -> Duration {
    (node_monitor_grace_period / 4).clamp(Duration::from_millis(100), KUBELET_LEASE_RENEW_EVERY)
}

fn is_stopped(node: &Node) -> bool {
    node.metadata.annotations.as_ref().and_then(|a| a.get(STOPPED_ANNOTATION)).is_some_and(|v| v == "true")
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.as_str())
}

pub fn node_name(index: usize) -> String {
    format!("fake-{index}")
}

/// The InternalIP of fake node `index`, in 10.200.0.0/14.
fn node_ip(index: usize) -> String {
    let n = index + 1;
    format!("10.{}.{}.{}", 200 + n / 65536, (n / 256) % 256, n % 256)
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn node(index: usize) -> Node {
    let name = node_name(index);
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", "32"),
        ("memory", "256Gi"),
        ("pods", "110"),
        ("ephemeral-storage", "1Ti"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), quantity(v)))
    .collect();
    let now = Time(jiff::Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [
                    ("kubernetes.io/hostname", name.as_str()),
                    ("kubernetes.io/os", "linux"),
                    ("kubernetes.io/arch", "amd64"),
                    (FAKE_NODE_LABEL, "true"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            conditions: Some(vec![
                condition("Ready", "True", "KubeletReady", "fake node is ready"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "fake node has sufficient memory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "fake node has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "fake node has sufficient PID"),
            ]),
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: node_ip(index) },
                NodeAddress { type_: "Hostname".into(), address: name },
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                operating_system: "linux".into(),
                os_image: "rk fake node".into(),
                kernel_version: "fake".into(),
                container_runtime_version: "fake://0".into(),
                kubelet_version: format!("v1.{}.0-rk-fake", crate::api::discovery::KUBERNETES_MINOR),
                kube_proxy_version: String::new(),
                boot_id: String::new(),
                machine_id: String::new(),
                system_uuid: String::new(),
                swap: None,
            }),
            ..Default::default()
        }),
    }
}

/// Registers `count` fake nodes, renews their Leases every `renew_every` and
/// runs their pods until `shutdown`.
pub async fn run(informers: Arc<Informers>, count: usize, renew_every: Duration, shutdown: CancellationToken) {
    let client = informers.client().clone();
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for index in 0..count {
        if let Err(e) = register(&nodes, index).await {
            tracing::warn!(error = %e, node = node_name(index), "fake node not registered");
        }
    }
    tracing::info!(count, "fake nodes registered");
    let node_cache = informers.get::<Node>();
    tokio::spawn(renew_leases(leases, nodes, node_cache.clone(), count, renew_every, shutdown.clone()));
    let pods = informers.get::<Pod>();
    let pods_of_node = pods.clone();
    let controller = Controller::new("fake-kubelet", 8)
        .watch(&pods, |change: &Change<Pod>| {
            let pod = change.object();
            match (&change, pod.spec.as_ref().and_then(|s| s.node_name.as_deref())) {
                (Change::Applied { .. }, Some(node)) if node.starts_with("fake-") => vec![crate::runtime::key_of(pod.as_ref())],
                _ => vec![],
            }
        })
        .watch(&node_cache, move |change: &Change<Node>| match change {
            // A node coming back catches up with what happened to its pods meanwhile.
            Change::Applied { old: Some(old), new } if is_stopped(old) && !is_stopped(new) => {
                let name = new.metadata.name.clone();
                pods_of_node.filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()) == name.as_ref()).iter().map(|p| crate::runtime::key_of(p.as_ref())).collect()
            }
            _ => vec![],
        });
    let kubelet = Arc::new(FakeKubelet { pods, nodes: node_cache, client, addresses: Mutex::new(HashMap::new()) });
    controller.run(kubelet, shutdown).await;
}

async fn register(nodes: &Api<Node>, index: usize) -> Result<(), kube::Error> {
    match nodes.create(&PostParams::default(), &node(index)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let status = json!({ "status": node(index).status });
            nodes.patch_status(&node_name(index), &PatchParams::default(), &Patch::Merge(&status)).await.map(drop)
        }
        Err(e) => Err(e),
    }
}

/// Renews every running fake node's Lease each period, spread over the
/// period, and reports it Ready again if it was marked otherwise.
async fn renew_leases(leases: Api<Lease>, nodes: Api<Node>, node_cache: Informer<Node>, count: usize, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pause = every.checked_div(count.max(1) as u32 * 2).unwrap_or_default();
        for index in 0..count {
            let name = node_name(index);
            let cached = node_cache.get(&name);
            if cached.as_deref().is_some_and(is_stopped) {
                continue;
            }
            if cached.as_deref().is_some_and(|n| ready_status(n) != Some("True")) {
                let ready = node(index).status.and_then(|s| s.conditions).unwrap_or_default();
                let patch = json!({ "status": { "conditions": ready } });
                if let Err(e) = nodes.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
                    tracing::debug!(error = %e, node = name, "node status not reported");
                }
            }
            let lease = Lease {
                metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(MicroTime(jiff::Timestamp::now())),
                    ..Default::default()
                }),
            };
            if let Err(e) = leases.replace(&name, &PostParams::default(), &lease).await {
                tracing::debug!(error = %e, node = name, "lease not renewed");
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Plays the kubelet for pods bound to fake nodes.
struct FakeKubelet {
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    client: kube::Client,
    /// Next free host number per node, for pod IPs.
    addresses: Mutex<HashMap<String, u32>>,
}

impl FakeKubelet {
    fn pod_ip(&self, node: &str) -> String {
        let index: u32 = node.trim_start_matches("fake-").parse().unwrap_or(0);
        let mut next = self.addresses.lock().expect("addresses lock");
        let host = next.entry(node.to_owned()).or_insert(1);
        let ip = format!("10.{}.{}.{}", 64 + index / 256, index % 256, *host % 254 + 1);
        *host += 1;
        ip
    }
}

/// Whether the node lifecycle controller took the pod's readiness away while its
/// node was unreachable (and nothing else did).
fn marked_not_ready_by_node_lifecycle(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "False" && c.reason.as_deref() == Some(crate::controllers::nodelifecycle::NODE_NOT_READY_REASON)))
}

fn running_status(pod: &Pod, host_ip: &str, pod_ip: String) -> PodStatus {
    let now = Time(jiff::Timestamp::now());
    let spec = pod.spec.clone().unwrap_or_default();
    let condition = |type_: &str| PodCondition {
        type_: type_.into(),
        status: "True".into(),
        last_transition_time: Some(now.clone()),
        ..Default::default()
    };
    let status_of = |c: &k8s_openapi::api::core::v1::Container, state: ContainerState, ready: bool| ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: format!("fake://{}", c.image.clone().unwrap_or_default()),
        container_id: Some(format!("fake://{}/{}", pod.uid().unwrap_or_default(), c.name)),
        ready,
        started: Some(ready),
        restart_count: 0,
        state: Some(state),
        ..Default::default()
    };
    PodStatus {
        phase: Some("Running".into()),
        conditions: Some(["PodScheduled", "Initialized", "ContainersReady", "Ready"].map(condition).into()),
        host_ip: Some(host_ip.to_owned()),
        pod_ip: Some(pod_ip.clone()),
        pod_ips: Some(vec![PodIP { ip: pod_ip }]),
        start_time: Some(now.clone()),
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        init_container_statuses: spec.init_containers.as_ref().map(|cs| {
            cs.iter()
                .map(|c| {
                    let done = ContainerStateTerminated { exit_code: 0, reason: Some("Completed".into()), finished_at: Some(now.clone()), started_at: Some(now.clone()), ..Default::default() };
                    status_of(c, ContainerState { terminated: Some(done), ..Default::default() }, false)
                })
                .collect()
        }),
        container_statuses: Some(
            spec.containers
                .iter()
                .map(|c| status_of(c, ContainerState { running: Some(ContainerStateRunning { started_at: Some(now.clone()) }), ..Default::default() }, true))
                .collect(),
        ),
        ..Default::default()
    }
}

#[async_trait]
impl Reconciler for FakeKubelet {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(pod) = self.pods.get(key) else { return Ok(Next::Done) };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if self.nodes.get(&node).is_some_and(|n| is_stopped(&n)) {
            return Ok(Next::Done);
        }
        let (namespace, name) = split_key(key);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        if pod.metadata.deletion_timestamp.is_some() {
            // Nothing runs, so termination is immediate.
            let params = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
            match api.delete(name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Next::Done);
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if phase == "Running" && marked_not_ready_by_node_lifecycle(&pod) {
            // Marked not ready while its node was away: it runs, so it is ready.
            let ready = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": Time(jiff::Timestamp::now()) }] } });
            api.patch_status(name, &PatchParams::default(), &Patch::Strategic(ready)).await?;
            return Ok(Next::Done);
        }
        let runs_to_completion = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).is_some_and(|p| p != "Always");
        match phase {
            "Pending" => {
                let index: usize = node.trim_start_matches("fake-").parse().unwrap_or(0);
                let status = running_status(&pod, &node_ip(index), self.pod_ip(&node));
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
                Ok(if runs_to_completion { Next::After(run_time(&pod)) } else { Next::Done })
            }
            "Running" if runs_to_completion => {
                let started = pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map_or(jiff::Timestamp::now(), |t| t.0);
                let elapsed = Duration::from_millis((jiff::Timestamp::now().as_millisecond() - started.as_millisecond()).max(0) as u64);
                if elapsed < run_time(&pod) {
                    return Ok(Next::After(run_time(&pod) - elapsed));
                }
                let exit_code: i32 = pod.annotations().get(FAKE_EXIT_CODE).and_then(|c| c.parse().ok()).unwrap_or(0);
                let status = finished_status(&pod, exit_code);
                // Strategic: conditions merge by type, keeping PodScheduled and Initialized.
                api.patch_status(name, &PatchParams::default(), &Patch::Strategic(json!({ "status": status }))).await?;
                Ok(Next::Done)
            }
            _ => Ok(Next::Done),
        }
    }
}

/// Pods that run to completion (restartPolicy Never or OnFailure) "run" this
/// long on a fake node (annotation `rk.io/fake-run-seconds`, default 1).
const FAKE_RUN_SECONDS: &str = "rk.io/fake-run-seconds";
/// ... and exit with this code (annotation `rk.io/fake-exit-code`, default 0).
const FAKE_EXIT_CODE: &str = "rk.io/fake-exit-code";

fn run_time(pod: &Pod) -> Duration {
    let seconds: f64 = pod.annotations().get(FAKE_RUN_SECONDS).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0))
}

/// The status of a pod whose containers all exited with `exit_code`.
fn finished_status(pod: &Pod, exit_code: i32) -> serde_json::Value {
    let now = Time(jiff::Timestamp::now());
    let (phase, reason) = if exit_code == 0 { ("Succeeded", "Completed") } else { ("Failed", "Error") };
    let statuses: Vec<ContainerStatus> = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            let started_at = c.state.as_ref().and_then(|s| s.running.as_ref()).and_then(|r| r.started_at.clone());
            c.state = Some(ContainerState {
                terminated: Some(ContainerStateTerminated { exit_code, reason: Some(reason.into()), started_at, finished_at: Some(now.clone()), ..Default::default() }),
                ..Default::default()
            });
            c.ready = false;
            c.started = Some(false);
            c
        })
        .collect();
    let not_ready = |type_: &str| json!({ "type": type_, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now });
    json!({
        "phase": phase,
        "containerStatuses": statuses,
        "conditions": [not_ready("Ready"), not_ready("ContainersReady")],
    })
}

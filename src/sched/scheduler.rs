//! The scheduling loop: takes its inputs from the shared informers (pods,
//! nodes, Services) into the node cache and the scheduling queue, then decides
//! one pod at a time: place it (assume it in the cache at once and bind it
//! through `pods/binding` in the background, a bounded number at a time), or
//! report why it fits nowhere (a `FailedScheduling` event and the pod's
//! `PodScheduled` condition) and park it until the cluster changes.

use super::Profile;
use super::algorithm::Algorithm;
use super::cache::Cache;
use super::pod_info::PodInfo;
use super::queue::SchedulingQueue;
use crate::runtime::{Change, EventType, Informer, Informers, Recorder, key_of, reference};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// The `spec.schedulerName` this scheduler answers to (also the pods that name none).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const MAX_BINDINGS_IN_FLIGHT: usize = 256;
/// How often back-offs that are over and long-unschedulable pods are moved back.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Whether this scheduler should find `pod` a node: unassigned, ours, not
/// going away, not finished, and not held back by scheduling gates.
pub fn wants_node(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    spec.node_name.as_deref().unwrap_or("").is_empty()
        && spec.scheduler_name.as_deref().is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME)
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
}

fn is_bound(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty())
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

struct Scheduler {
    pods: Informer<Pod>,
    cache: Mutex<Cache>,
    queue: SchedulingQueue,
    client: kube::Client,
    recorder: Recorder,
    bindings: Arc<Semaphore>,
}

/// Runs the scheduler with `profile` until `shutdown`.
pub async fn run(profile: Profile, informers: Arc<Informers>, client: kube::Client, shutdown: CancellationToken) {
    let (pods, nodes, services) = (informers.get::<Pod>(), informers.get::<Node>(), informers.get::<Service>());
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = async { nodes.wait_synced().await; services.wait_synced().await; pods.wait_synced().await } => {}
    }
    let scheduler = Arc::new(Scheduler {
        pods: pods.clone(),
        cache: Mutex::new(Cache::default()),
        queue: SchedulingQueue::default(),
        recorder: Recorder::new(client.clone(), SCHEDULER_NAME, None),
        client,
        bindings: Arc::new(Semaphore::new(MAX_BINDINGS_IN_FLIGHT)),
    });
    // Everything already cached is taken in before the first decision, so no
    // bound pod is overlooked; later changes follow in the background.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(follow(nodes.subscribe(), scheduler.clone(), Scheduler::on_node));
    tasks.spawn(follow(services.subscribe(), scheduler.clone(), Scheduler::on_service));
    tasks.spawn(follow(pods.subscribe(), scheduler.clone(), Scheduler::on_pod));
    let upkeep = scheduler.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tick.tick().await;
            upkeep.queue.flush(Instant::now());
        }
    });
    tracing::info!("scheduler started");
    let mut algorithm = Algorithm::new(profile);
    loop {
        let key = tokio::select! {
            _ = shutdown.cancelled() => break,
            key = scheduler.queue.pop() => key,
        };
        let Some(key) = key else { break };
        scheduler.schedule_one(&mut algorithm, key).await;
        // A long queue never makes the loop hog its worker thread.
        tokio::task::consume_budget().await;
    }
    scheduler.queue.close();
}

/// Applies the snapshot of an informer at once, then returns a task applying its later changes.
fn follow<K: Send + Sync + 'static>(
    mut changes: mpsc::UnboundedReceiver<Change<K>>,
    scheduler: Arc<Scheduler>,
    apply: fn(&Scheduler, Change<K>),
) -> impl Future<Output = ()> + Send + 'static {
    while let Ok(change) = changes.try_recv() {
        apply(&scheduler, change);
    }
    async move {
        while let Some(change) = changes.recv().await {
            apply(&scheduler, change);
        }
    }
}

impl Scheduler {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().expect("scheduler cache lock")
    }

    fn on_node(&self, change: Change<Node>) {
        match change {
            Change::Applied { new, .. } => {
                if self.cache().set_node(new) {
                    self.queue.cluster_changed();
                }
            }
            Change::Deleted(node) => self.cache().remove_node(node.metadata.name.as_deref().unwrap_or("")),
        }
    }

    fn on_service(&self, change: Change<Service>) {
        match change {
            Change::Applied { new, .. } => self.cache().set_service(&new),
            Change::Deleted(service) => self.cache().remove_service(&service),
        }
    }

    fn on_pod(&self, change: Change<Pod>) {
        match change {
            Change::Applied { old, new } => {
                let key = key_of(new.as_ref());
                if is_bound(&new) {
                    self.queue.remove(&key);
                    if self.cache().set_bound_pod(&new) {
                        self.queue.cluster_changed();
                    }
                } else if wants_node(&new) {
                    if self.cache().is_assumed(&key) {
                        return;
                    }
                    // Status updates (our own condition among them) change nothing to retry for.
                    let changed = old.is_none_or(|old| old.spec != new.spec || old.metadata.labels != new.metadata.labels);
                    if changed {
                        self.queue.add(&key, priority(&new));
                    }
                } else {
                    self.queue.remove(&key);
                }
            }
            Change::Deleted(pod) => {
                let key = key_of(pod.as_ref());
                self.queue.remove(&key);
                if self.cache().remove_pod(&key) {
                    self.queue.cluster_changed();
                }
            }
        }
    }

    async fn schedule_one(self: &Arc<Self>, algorithm: &mut Algorithm, key: String) {
        let Some(pod) = self.pods.get(&key).filter(|p| wants_node(p)) else {
            self.queue.remove(&key);
            return;
        };
        let decision = {
            let mut cache = self.cache();
            if cache.is_assumed(&key) {
                drop(cache);
                self.queue.binding(&key);
                return;
            }
            let info = PodInfo::new(pod.clone(), cache.spread_groups(&pod));
            algorithm.schedule(&info, cache.nodes()).map(|index| {
                let node = cache.nodes()[index].name.clone();
                cache.assume(&info, &node);
                node
            })
        };
        match decision {
            Ok(node) => {
                self.queue.binding(&key);
                let Ok(permit) = self.bindings.clone().acquire_owned().await else { return };
                tokio::spawn(self.clone().bind(pod, node, permit));
            }
            Err(why) => {
                self.queue.failed(&key, true);
                self.report_unschedulable(&pod, why.to_string());
            }
        }
    }

    /// POSTs the pod's Binding; a failure forgets the assumption and retries after a back-off.
    async fn bind(self: Arc<Self>, pod: Arc<Pod>, node: Arc<str>, _permit: OwnedSemaphorePermit) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let binding = Binding {
            metadata: kube::api::ObjectMeta { name: Some(name.to_owned()), namespace: Some(namespace.to_owned()), uid: pod.metadata.uid.clone(), ..Default::default() },
            target: ObjectReference { api_version: Some("v1".into()), kind: Some("Node".into()), name: Some(node.to_string()), ..Default::default() },
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding).await {
            Ok(_) => self.recorder.record(reference(pod.as_ref()), EventType::Normal, "Scheduled", format!("Successfully assigned {namespace}/{name} to {node}")),
            Err(e) => {
                let key = key_of(pod.as_ref());
                tracing::debug!(pod = %key, node = %node, error = %e, "binding failed");
                self.cache().forget(&key);
                self.queue.failed(&key, false);
                self.recorder.record(reference(pod.as_ref()), EventType::Warning, "FailedScheduling", format!("Binding rejected: {e}"));
            }
        }
    }

    /// A `FailedScheduling` event, and `PodScheduled=False` (reason `Unschedulable`)
    /// with the same message unless the pod already says so.
    fn report_unschedulable(&self, pod: &Arc<Pod>, message: String) {
        self.recorder.record(reference(pod.as_ref()), EventType::Warning, "FailedScheduling", message.clone());
        let current = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        if current.is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(&message)) {
            return;
        }
        let since = current.filter(|c| c.status == "False").and_then(|c| c.last_transition_time.clone()).unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
            "lastProbeTime": null, "lastTransitionTime": since,
        }]}});
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let name = pod.metadata.name.clone().unwrap_or_default();
        tokio::spawn(async move {
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                tracing::debug!(pod = %name, error = %e, "PodScheduled condition not updated");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec, "status": status})).unwrap()
    }

    #[test]
    fn only_unassigned_live_ungated_pods_of_this_scheduler_want_a_node() {
        let containers = json!([{"name": "c"}]);
        assert!(wants_node(&pod(json!({"containers": containers}), json!({}))));
        assert!(wants_node(&pod(json!({"containers": containers, "schedulerName": "default-scheduler"}), json!({}))));
        assert!(!wants_node(&pod(json!({"containers": containers, "schedulerName": "other"}), json!({}))));
        assert!(!wants_node(&pod(json!({"containers": containers, "nodeName": "n1"}), json!({}))));
        assert!(!wants_node(&pod(json!({"containers": containers}), json!({"phase": "Failed"}))));
        assert!(!wants_node(&pod(json!({"containers": containers, "schedulingGates": [{"name": "wait"}]}), json!({}))));
        let mut deleting = pod(json!({"containers": containers}), json!({}));
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        assert!(!wants_node(&deleting));
    }
}

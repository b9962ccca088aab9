//! ReplicaSet and ReplicationController controllers: keep the number of running
//! pods that match the selector equal to `spec.replicas`. One implementation
//! serves both kinds through [`Replicated`].
//!
//! Like upstream: pods are created in slow-start batches (1, 2, 4, …) and
//! deleted in "least valuable first" order; orphans that match are adopted and
//! owned pods that stop matching are released; "expectations" remember what was
//! just created or deleted until the informer has seen it, so a stale cache
//! never causes double creation.

use super::Context;
use crate::api::selector::LabelSelector;
use crate::runtime::{Change, Controller, Error, EventType, Informer, Next, Reconciler, Recorder, key_of, owner_keys, reference, split_key};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most this many pods are created or deleted per reconcile.
const BURST: usize = 500;
/// Expectations older than this are assumed met (an event was lost).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

/// A kind that keeps N copies of a pod template running.
pub trait Replicated: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + serde::Serialize + Debug + Send + Sync + 'static {
    const COMPONENT: &'static str;
    fn replicas(&self) -> i32;
    fn selector(&self) -> Option<LabelSelector>;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Option<LabelSelector> {
        LabelSelector::from_k8s(&self.spec.as_ref()?.selector).ok().filter(|s| !s.is_empty())
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Option<LabelSelector> {
        let labels = self.spec.as_ref()?.selector.clone()?;
        LabelSelector::from_match(&labels, &[]).ok().filter(|s| !s.is_empty())
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
}

/// What a controller just did and waits to see in its cache.
#[derive(Default)]
struct Expected {
    created: HashSet<String>,
    deleted: HashSet<String>,
    at: Option<Instant>,
}

pub struct ReplicaController<R> {
    owners: Informer<R>,
    pods: Informer<Pod>,
    client: kube::Client,
    recorder: Recorder,
    expectations: Mutex<HashMap<String, Expected>>,
}

/// Runs the controller for `R` until shutdown.
pub async fn run<R: Replicated>(ctx: Context) {
    let owners = ctx.informers.get::<R>();
    let pods = ctx.informers.get::<Pod>();
    let kind = R::kind(&()).into_owned();
    let orphans_owners = owners.clone();
    let controller = Controller::new(R::COMPONENT, ctx.options.workers).owns_kind(&owners).watch(&pods, move |change: &Change<Pod>| {
        let mut keys = owner_keys(change, &kind);
        // An orphan that matches a selector may be adopted.
        if keys.is_empty() && !change.object().metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|o| o.controller == Some(true))) {
            let pod = change.object();
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            keys.extend(
                orphans_owners
                    .list_namespace(pod.metadata.namespace.as_deref().unwrap_or(""))
                    .iter()
                    .filter(|o| o.selector().is_some_and(|s| s.matches(&labels)))
                    .map(|o| key_of(o.as_ref())),
            );
        }
        keys
    });
    let reconciler = Arc::new(ReplicaController {
        owners,
        pods,
        client: ctx.client.clone(),
        recorder: ctx.recorder(R::COMPONENT),
        expectations: Mutex::new(HashMap::new()),
    });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

/// Whether a pod still counts: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    phase != "Succeeded" && phase != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

/// The time since which a pod has been Ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let condition = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (condition.status == "True").then(|| condition.last_transition_time.as_ref().map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0))
}

/// Whether a pod has been Ready for `min_ready_seconds`; else how long until it will be.
pub fn available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> Result<(), Option<Duration>> {
    let since = ready_since(pod).ok_or(None)?;
    let ready_for = now.duration_since(since).as_secs_f64();
    if min_ready_seconds <= 0 || ready_for >= f64::from(min_ready_seconds) {
        Ok(())
    } else {
        Err(Some(Duration::from_secs_f64(f64::from(min_ready_seconds) - ready_for)))
    }
}

/// Upstream's order of pods to delete first when scaling down: unscheduled,
/// then pending, not ready, recently ready, often restarted, newest.
fn deletion_rank(pod: &Pod) -> (bool, u8, bool, std::cmp::Reverse<i64>, std::cmp::Reverse<i32>, std::cmp::Reverse<i64>) {
    let status = pod.status.as_ref();
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready = ready_since(pod);
    let restarts: i32 = status.and_then(|s| s.container_statuses.as_ref()).map_or(0, |c| c.iter().map(|c| c.restart_count).sum());
    let created = pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    (
        scheduled,
        phase,
        ready.is_some(),
        std::cmp::Reverse(ready.map_or(0, |t| t.as_second())),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(created),
    )
}

fn owner_reference<R: Replicated>(owner: &R) -> OwnerReference {
    OwnerReference {
        api_version: R::api_version(&()).into_owned(),
        kind: R::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn is_controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|o| o.controller == Some(true) && o.uid == uid))
}

fn has_controller(pod: &Pod) -> bool {
    pod.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|o| o.controller == Some(true)))
}

impl<R: Replicated> ReplicaController<R> {
    /// Whether the cache reflects everything this controller did for `key`.
    fn expectations_met(&self, key: &str) -> bool {
        let mut all = self.expectations.lock().expect("expectations lock");
        let Some(e) = all.get_mut(key) else { return true };
        if e.at.is_some_and(|at| at.elapsed() > EXPECTATIONS_TTL) {
            all.remove(key);
            return true;
        }
        let (ns, _) = split_key(key);
        e.created.retain(|name| self.pods.get(&format!("{ns}/{name}")).is_none());
        e.deleted.retain(|name| self.pods.get(&format!("{ns}/{name}")).is_some_and(|p| p.metadata.deletion_timestamp.is_none()));
        let met = e.created.is_empty() && e.deleted.is_empty();
        if met {
            all.remove(key);
        }
        met
    }

    fn expect(&self, key: &str, created: impl IntoIterator<Item = String>, deleted: impl IntoIterator<Item = String>) {
        let mut all = self.expectations.lock().expect("expectations lock");
        let e = all.entry(key.to_owned()).or_default();
        e.created.extend(created);
        e.deleted.extend(deleted);
        e.at = Some(Instant::now());
    }

    /// Adopts matching orphans and releases owned pods that no longer match.
    async fn claim(&self, owner: &R, selector: &LabelSelector, pods: Vec<Arc<Pod>>) -> Result<Vec<Arc<Pod>>, Error> {
        let uid = owner.uid().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &owner.namespace().unwrap_or_default());
        let mut owned = Vec::new();
        for pod in pods {
            let matches = selector.matches(&pod.metadata.labels.clone().unwrap_or_default());
            if is_controlled_by(&pod, &uid) {
                if matches {
                    owned.push(pod);
                } else {
                    let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}], "uid": pod.uid()}});
                    api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await?;
                }
            } else if matches && !has_controller(&pod) && pod.metadata.deletion_timestamp.is_none() && owner.meta().deletion_timestamp.is_none() {
                let patch = json!({"metadata": {"ownerReferences": [owner_reference(owner)], "uid": pod.uid()}});
                let adopted = api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await?;
                owned.push(Arc::new(adopted));
            }
        }
        Ok(owned)
    }

    async fn create_pods(&self, owner: &R, key: &str, count: usize) -> Result<(), Error> {
        let template = owner.template().cloned().unwrap_or_default();
        let template_meta = template.metadata.unwrap_or_default();
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}-", owner.name_any())),
                labels: template_meta.labels,
                annotations: template_meta.annotations,
                owner_references: Some(vec![owner_reference(owner)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &owner.namespace().unwrap_or_default());
        let (mut remaining, mut batch) = (count, 1usize);
        let params = PostParams::default();
        while remaining > 0 {
            let size = batch.min(remaining);
            let results = futures::future::join_all((0..size).map(|_| api.create(&params, &pod))).await;
            let mut failure = None;
            let created: Vec<String> = results
                .into_iter()
                .filter_map(|r| match r {
                    Ok(p) => Some(p.name_any()),
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                })
                .collect();
            for name in &created {
                self.recorder.record(reference(owner), EventType::Normal, "SuccessfulCreate", format!("Created pod: {name}"));
            }
            self.expect(key, created, []);
            if let Some(e) = failure {
                self.recorder.record(reference(owner), EventType::Warning, "FailedCreate", format!("Error creating: {e}"));
                return Err(e.into());
            }
            remaining -= size;
            batch *= 2;
        }
        Ok(())
    }

    async fn delete_pods(&self, owner: &R, key: &str, mut pods: Vec<Arc<Pod>>, count: usize) -> Result<(), Error> {
        pods.sort_by_cached_key(|p| deletion_rank(p));
        let victims: Vec<Arc<Pod>> = pods.into_iter().take(count).collect();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &owner.namespace().unwrap_or_default());
        self.expect(key, [], victims.iter().map(|p| p.name_any()));
        let params = DeleteParams::default();
        let names: Vec<String> = victims.iter().map(|p| p.name_any()).collect();
        let results = futures::future::join_all(names.iter().map(|name| api.delete(name, &params))).await;
        for (pod, result) in victims.iter().zip(results) {
            match result {
                Ok(_) => self.recorder.record(reference(owner), EventType::Normal, "SuccessfulDelete", format!("Deleted pod: {}", pod.name_any())),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes status through `/status` when it changed; returns when to look again
    /// for pods that become available with time.
    async fn update_status(&self, owner: &R, pods: &[Arc<Pod>]) -> Result<Option<Duration>, Error> {
        let now = jiff::Timestamp::now();
        let template_labels: BTreeMap<String, String> = owner.template().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
        let mut next_check: Option<Duration> = None;
        let (mut ready, mut available_count, mut fully_labeled) = (0, 0, 0);
        for pod in pods {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            if template_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                fully_labeled += 1;
            }
            if ready_since(pod).is_some() {
                ready += 1;
            }
            match available(pod, owner.min_ready_seconds(), now) {
                Ok(()) => available_count += 1,
                Err(Some(wait)) => next_check = Some(next_check.map_or(wait, |n| n.min(wait))),
                Err(None) => {}
            }
        }
        let current = serde_json::to_value(owner)?.get("status").cloned().unwrap_or(json!({}));
        let mut status = current.clone();
        status["replicas"] = json!(pods.len());
        status["fullyLabeledReplicas"] = json!(fully_labeled);
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(available_count);
        status["observedGeneration"] = json!(owner.meta().generation.unwrap_or(0));
        if status != current {
            let api: Api<R> = Api::namespaced(self.client.clone(), &owner.namespace().unwrap_or_default());
            api.patch_status(&owner.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
        }
        Ok(next_check)
    }
}

#[async_trait]
impl<R: Replicated> Reconciler for ReplicaController<R> {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(owner) = self.owners.get(key) else {
            self.expectations.lock().expect("expectations lock").remove(key);
            return Ok(Next::Done);
        };
        let Some(selector) = owner.selector() else { return Ok(Next::Done) };
        let (namespace, _) = split_key(key);
        let candidates: Vec<Arc<Pod>> = self.pods.list_namespace(namespace).into_iter().filter(|p| is_active(p)).collect();
        let owned = self.claim(owner.as_ref(), &selector, candidates).await?;
        if owner.meta().deletion_timestamp.is_none() && self.expectations_met(key) {
            let desired = owner.replicas().max(0) as usize;
            if owned.len() < desired {
                self.create_pods(owner.as_ref(), key, (desired - owned.len()).min(BURST)).await?;
            } else if owned.len() > desired {
                self.delete_pods(owner.as_ref(), key, owned.clone(), (owned.len() - desired).min(BURST)).await?;
            }
        }
        Ok(match self.update_status(owner.as_ref(), &owned).await? {
            Some(wait) => Next::After(wait + Duration::from_millis(50)),
            None => Next::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready_at: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: node.map(Into::into), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(jiff::Timestamp::from_second(t).unwrap())),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn scale_down_removes_unscheduled_then_pending_then_unready_then_newest() {
        let mut pods = [
            pod("old-ready", Some("n"), "Running", Some(100), 10),
            pod("new-ready", Some("n"), "Running", Some(200), 20),
            pod("unready", Some("n"), "Running", None, 5),
            pod("pending", Some("n"), "Pending", None, 1),
            pod("unscheduled", None, "Pending", None, 0),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<&str> = pods.iter().map(|p| p.metadata.name.as_deref().unwrap()).collect();
        assert_eq!(order, ["unscheduled", "pending", "unready", "new-ready", "old-ready"]);
    }

    #[test]
    fn a_pod_is_available_after_min_ready_seconds() {
        let now = jiff::Timestamp::from_second(1000).unwrap();
        let p = pod("p", Some("n"), "Running", Some(995), 0);
        assert!(available(&p, 0, now).is_ok());
        assert_eq!(available(&p, 10, now), Err(Some(Duration::from_secs(5))));
        assert_eq!(available(&pod("q", None, "Pending", None, 0), 0, now), Err(None));
    }
}

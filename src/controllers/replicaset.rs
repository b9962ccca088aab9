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
use super::ownership::{Owner, claim, controller_reference, nonempty_selector, owners_to_wake};
use super::pods::{PodControl, available, from_template, is_active, ready_since, sooner};
use crate::api::selector::LabelSelector;
use crate::runtime::{Change, Controller, Error, Informer, Next, Reconciler, split_key};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// At most this many pods are created or deleted per reconcile.
const BURST: usize = 500;

/// A kind that keeps N copies of a pod template running.
pub trait Replicated: Owner {
    const COMPONENT: &'static str;
    fn replicas(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
}

impl Owner for ReplicaSet {
    fn selector(&self) -> Option<LabelSelector> {
        nonempty_selector(&self.spec.as_ref()?.selector)
    }
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
}

impl Owner for ReplicationController {
    fn selector(&self) -> Option<LabelSelector> {
        let labels = self.spec.as_ref()?.selector.clone()?;
        LabelSelector::from_match(&labels, &[]).ok().filter(|s| !s.is_empty())
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
}

pub struct ReplicaController<R> {
    owners: Informer<R>,
    pods: Informer<Pod>,
    client: kube::Client,
    control: PodControl,
}

/// Runs the controller for `R` until shutdown.
pub async fn run<R: Replicated>(ctx: Context) {
    let owners = ctx.informers.get::<R>();
    let pods = ctx.informers.get::<Pod>();
    let wake = owners.clone();
    let controller = Controller::new(R::COMPONENT, ctx.options.workers).owns_kind(&owners).watch(&pods, move |change: &Change<Pod>| owners_to_wake(change, &wake));
    let reconciler = Arc::new(ReplicaController {
        owners,
        pods: pods.clone(),
        client: ctx.client.clone(),
        control: PodControl::new(ctx.client.clone(), pods, ctx.recorder(R::COMPONENT)),
    });
    controller.run(reconciler, ctx.shutdown.clone()).await;
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

impl<R: Replicated> ReplicaController<R> {
    async fn create_pods(&self, owner: &R, key: &str, count: usize) -> Result<(), Error> {
        let mut pod = from_template(&owner.template().cloned().unwrap_or_default(), controller_reference(owner));
        pod.metadata.generate_name = Some(format!("{}-", owner.name_any()));
        self.control.create(owner, key, vec![pod; count]).await
    }

    async fn delete_pods(&self, owner: &R, key: &str, mut pods: Vec<Arc<Pod>>, count: usize) -> Result<(), Error> {
        pods.sort_by_cached_key(|p| deletion_rank(p));
        let victims = pods.iter().take(count).map(|p| p.name_any()).collect();
        self.control.delete(owner, key, victims).await
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
                Err(wait) => next_check = sooner(next_check, wait),
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
            self.control.forget(key);
            return Ok(Next::Done);
        };
        let Some(selector) = owner.selector() else { return Ok(Next::Done) };
        let (namespace, _) = split_key(key);
        let candidates: Vec<Arc<Pod>> = self.pods.list_namespace(namespace).into_iter().filter(|p| is_active(p)).collect();
        let owned = claim(&self.client, owner.as_ref(), &selector, candidates).await?;
        if owner.meta().deletion_timestamp.is_none() && self.control.satisfied(key) {
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
}

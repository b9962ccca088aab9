//! Pod garbage collection (upstream's PodGC): a periodic sweep that force-deletes
//! pods nobody else will finish:
//! - pods bound to nodes that no longer exist (after a quarantine, confirmed
//!   with a GET, so a node that is only missing from the cache is spared),
//! - terminating pods that were never scheduled,
//! - terminating pods on not-Ready nodes tainted `node.kubernetes.io/out-of-service`,
//! - finished pods beyond a threshold, oldest (and evicted) first.
//!
//! Pods that have not finished are first marked Failed (with a DisruptionTarget
//! condition when their node is gone), since no kubelet will ever do it.

use super::Context;
use crate::runtime::{Controller, Error, Informer, Next, Reconciler};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COMPONENT: &str = "pod-garbage-collector";
/// Finished pods kept before the oldest are deleted (upstream's default).
pub const TERMINATED_POD_THRESHOLD: usize = 12_500;
/// How often the sweep runs, at most.
const SWEEP_PERIOD: Duration = Duration::from_secs(20);
const SWEEP_KEY: &str = "sweep";
const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

pub async fn run(ctx: Context) {
    let pods = ctx.informers.get::<Pod>();
    let nodes = ctx.informers.get::<Node>();
    pods.wait_synced().await;
    nodes.wait_synced().await;
    // Upstream quarantines a missing node for 40 s, the default grace period; a
    // shortened grace period (tests) shortens both.
    let quarantine = ctx.options.node_monitor_grace_period;
    let controller = Controller::new(COMPONENT, 1);
    controller.queue().add(SWEEP_KEY.to_owned());
    let gc = Arc::new(PodGc {
        pods,
        nodes,
        client: ctx.client.clone(),
        quarantine,
        period: (quarantine / 2).clamp(Duration::from_millis(100), SWEEP_PERIOD),
        missing_since: Mutex::new(HashMap::new()),
    });
    controller.run(gc, ctx.shutdown.clone()).await;
}

struct PodGc {
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    client: kube::Client,
    quarantine: Duration,
    period: Duration,
    /// Nodes named by pods but absent from the cache, since when.
    missing_since: Mutex<HashMap<String, Instant>>,
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn is_terminated(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

/// The finished pods to delete to get back to `threshold`: evicted ones first,
/// then the oldest.
fn excess_terminated(mut terminated: Vec<Arc<Pod>>, threshold: usize) -> Vec<Arc<Pod>> {
    if terminated.len() <= threshold {
        return Vec::new();
    }
    let excess = terminated.len() - threshold;
    terminated.sort_by_cached_key(|p| {
        let evicted = p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
        (!evicted, p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.name_any())
    });
    terminated.truncate(excess);
    terminated
}

#[async_trait]
impl Reconciler for PodGc {
    async fn reconcile(&self, _key: &str) -> Result<Next, Error> {
        for pod in excess_terminated(self.pods.filter(is_terminated), TERMINATED_POD_THRESHOLD) {
            self.force_delete(&pod, None).await;
        }
        for pod in self.pods.filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_none()) {
            self.force_delete(&pod, None).await;
        }
        let out_of_service: HashSet<String> = self
            .nodes
            .filter(|n| {
                let tainted = n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT));
                let ready = n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                tainted && !ready
            })
            .iter()
            .map(|n| n.name_any())
            .collect();
        for pod in self.pods.filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_some_and(|n| out_of_service.contains(n))) {
            self.force_delete(&pod, None).await;
        }
        for node in self.deleted_nodes().await {
            let gone = json!({ "type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists", "lastTransitionTime": Time(jiff::Timestamp::now()) });
            for pod in self.pods.filter(|p| node_of(p) == Some(node.as_str())) {
                self.force_delete(&pod, Some(gone.clone())).await;
            }
        }
        Ok(Next::After(self.period))
    }
}

impl PodGc {
    /// Nodes that pods are bound to but that have been missing for the
    /// quarantine and that the API confirms are gone.
    async fn deleted_nodes(&self) -> Vec<String> {
        let named: HashSet<String> = self.pods.list().iter().filter_map(|p| node_of(p).map(str::to_owned)).collect();
        let overdue: Vec<String> = {
            let mut missing = self.missing_since.lock().expect("missing lock");
            missing.retain(|n, _| named.contains(n) && self.nodes.get(n).is_none());
            let now = Instant::now();
            for node in named.iter().filter(|n| self.nodes.get(n).is_none()) {
                missing.entry(node.clone()).or_insert(now);
            }
            missing.iter().filter(|(_, since)| since.elapsed() >= self.quarantine).map(|(n, _)| n.clone()).collect()
        };
        let api: Api<Node> = Api::all(self.client.clone());
        let mut deleted = Vec::new();
        for node in overdue {
            match api.get_opt(&node).await {
                Ok(None) => deleted.push(node),
                Ok(Some(_)) => {
                    self.missing_since.lock().expect("missing lock").remove(&node);
                }
                Err(e) => tracing::debug!(node, error = %e, "pod GC could not check node"),
            }
        }
        deleted
    }

    /// Marks an unfinished pod Failed (with `condition`), then deletes it without grace.
    async fn force_delete(&self, pod: &Pod, condition: Option<serde_json::Value>) {
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        tracing::info!(pod = %format!("{namespace}/{name}"), "pod GC force-deleting pod");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        if !is_terminated(pod) {
            let mut status = json!({ "phase": "Failed" });
            if let Some(c) = condition {
                status["conditions"] = json!([c]);
            }
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(json!({ "status": status }))).await {
                tracing::debug!(pod = name, error = %e, "pod not marked failed");
            }
        }
        match api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::debug!(pod = name, error = %e, "pod not deleted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    fn pod(name: &str, created: i64, reason: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus { phase: Some("Failed".into()), reason: reason.map(Into::into), ..Default::default() }),
        })
    }

    #[test]
    fn finished_pods_beyond_the_threshold_go_evicted_first_then_oldest() {
        let pods = vec![pod("new", 30, None), pod("old", 10, None), pod("evicted", 40, Some("Evicted")), pod("mid", 20, None)];
        let names = |v: Vec<Arc<Pod>>| v.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(excess_terminated(pods.clone(), 2)), ["evicted", "old"]);
        assert!(excess_terminated(pods, 4).is_empty());
    }
}

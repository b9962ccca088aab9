//! Taint-based eviction (upstream's taint eviction controller): a pod bound to a
//! node with NoExecute taints it does not tolerate is deleted at once; one that
//! tolerates them for a while (`tolerationSeconds`, 300 s by default from
//! admission for not-ready and unreachable nodes) is deleted when that time is
//! up, counted from when the taint was added. Its controller then replaces it
//! elsewhere.

use super::Context;
use crate::api::taints::tolerates;
use crate::runtime::{Change, Controller, Error, EventType, Informer, Next, Reconciler, Recorder, key_of, reference};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COMPONENT: &str = "taint-eviction-controller";

pub async fn run(ctx: Context) {
    let pods = ctx.informers.get::<Pod>();
    let nodes = ctx.informers.get::<Node>();
    let pods_on_node = pods.clone();
    let controller = Controller::new(COMPONENT, ctx.options.workers)
        .watch(&pods, |change: &Change<Pod>| match change {
            Change::Applied { new, .. } if node_of(new).is_some() => vec![key_of(new.as_ref())],
            _ => vec![],
        })
        .watch(&nodes, move |change: &Change<Node>| {
            let (old, new) = match change {
                Change::Applied { old, new } => (old.as_deref().map(no_execute_taints).unwrap_or_default(), no_execute_taints(new)),
                Change::Deleted(_) => return vec![],
            };
            if old == new {
                return vec![];
            }
            let name = change.object().name_any();
            pods_on_node.filter(|p| node_of(p) == Some(name.as_str())).iter().map(|p| key_of(p.as_ref())).collect()
        });
    let reconciler = Arc::new(TaintEviction {
        pods,
        nodes,
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        first_seen: Mutex::new(HashMap::new()),
    });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

struct TaintEviction {
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    client: kube::Client,
    recorder: Recorder,
    /// When a pod was first seen under taints that do not say when they were added.
    first_seen: Mutex<HashMap<String, jiff::Timestamp>>,
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

fn no_execute_taints(node: &Node) -> Vec<Taint> {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().filter(|t| t.effect == "NoExecute").cloned().collect()).unwrap_or_default()
}

/// How long a pod may stay under `taints`: `None` forever, zero not at all.
fn toleration_time(taints: &[Taint], tolerations: &[Toleration]) -> Option<Duration> {
    let mut shortest: Option<Duration> = None;
    for taint in taints {
        let used: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Some(Duration::ZERO);
        }
        for seconds in used.iter().filter_map(|t| t.toleration_seconds) {
            let d = Duration::from_secs(seconds.max(0) as u64);
            shortest = Some(shortest.map_or(d, |s| s.min(d)));
        }
    }
    shortest
}

#[async_trait]
impl Reconciler for TaintEviction {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let pod = self.pods.get(key);
        let taints = pod
            .as_ref()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .and_then(|p| self.nodes.get(node_of(p)?))
            .map(|n| no_execute_taints(&n))
            .unwrap_or_default();
        let (Some(pod), false) = (pod, taints.is_empty()) else {
            self.first_seen.lock().expect("first seen lock").remove(key);
            return Ok(Next::Done);
        };
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
        let Some(tolerated_for) = toleration_time(&taints, &tolerations) else { return Ok(Next::Done) };
        let now = jiff::Timestamp::now();
        let since = match taints.iter().map(|t| t.time_added.as_ref().map(|t| t.0)).collect::<Option<Vec<_>>>() {
            Some(added) => added.into_iter().min().unwrap_or(now),
            None => *self.first_seen.lock().expect("first seen lock").entry(key.to_owned()).or_insert(now),
        };
        let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or_default();
        if elapsed < tolerated_for {
            return Ok(Next::After(tolerated_for - elapsed));
        }
        self.evict(&pod).await?;
        self.first_seen.lock().expect("first seen lock").remove(key);
        Ok(Next::Done)
    }
}

impl TaintEviction {
    /// Marks the pod as disrupted by the taint, then deletes it.
    async fn evict(&self, pod: &Pod) -> Result<(), Error> {
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        tracing::info!(pod = %format!("{namespace}/{name}"), "evicting pod from a NoExecute-tainted node");
        self.recorder.record(reference(pod), EventType::Normal, "TaintManagerEviction", format!("Marking for deletion Pod {namespace}/{name}"));
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let condition = json!({ "status": { "conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint",
            "lastTransitionTime": Time(jiff::Timestamp::now()),
        }] } });
        let params = DeleteParams { preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
        let result = match api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition)).await {
            Ok(_) => api.delete(&name, &params).await.map(drop),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>) -> Taint {
        Taint { key: key.into(), value: value.map(Into::into), effect: "NoExecute".into(), time_added: None }
    }

    fn toleration(key: &str, operator: &str, value: Option<&str>, seconds: Option<i64>) -> Toleration {
        Toleration { key: Some(key.into()), operator: Some(operator.into()), value: value.map(Into::into), effect: Some("NoExecute".into()), toleration_seconds: seconds }
    }

    #[test]
    fn tolerations_match_taints_as_upstream() {
        let t = taint("k", Some("v"));
        assert!(tolerates(&toleration("k", "Equal", Some("v"), None), &t));
        assert!(!tolerates(&toleration("k", "Equal", Some("w"), None), &t));
        assert!(tolerates(&toleration("k", "Exists", None, None), &t));
        assert!(tolerates(&toleration("", "Exists", None, None), &t), "an empty key with Exists tolerates everything");
        assert!(!tolerates(&Toleration { effect: Some("NoSchedule".into()), ..toleration("k", "Exists", None, None) }, &t));
    }

    #[test]
    fn a_pod_stays_for_its_shortest_toleration_and_leaves_at_once_when_untolerated() {
        let unreachable = [taint("node.kubernetes.io/unreachable", None)];
        let default = [toleration("node.kubernetes.io/unreachable", "Exists", None, Some(300))];
        assert_eq!(toleration_time(&unreachable, &default), Some(Duration::from_secs(300)));
        let both = [default[0].clone(), toleration("", "Exists", None, Some(5))];
        assert_eq!(toleration_time(&unreachable, &both), Some(Duration::from_secs(5)));
        assert_eq!(toleration_time(&unreachable, &[toleration("", "Exists", None, None)]), None, "tolerated forever");
        assert_eq!(toleration_time(&[taint("other", None)], &default), Some(Duration::ZERO));
    }
}

//! Filters: each decides whether a pod may run on a node at all and, if not,
//! says why in upstream's words (the reasons `FailedScheduling` aggregates).
//! One small unit per rule behind [`Filter`]; the list that runs, in order, is
//! [`super::Profile::default`].

use super::cache::NodeInfo;
use super::pod_info::PodInfo;
use k8s_openapi::api::core::v1::Taint;
use std::borrow::Cow;

/// Why a node does not fit a pod, e.g. "Insufficient cpu".
pub type Reason = Cow<'static, str>;

/// A feasibility rule (upstream's Filter plugins).
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;
    /// `Ok` if `node` may run `pod`; otherwise every reason it may not.
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>>;
}

fn unfit(reason: impl Into<Reason>) -> Result<(), Vec<Reason>> {
    Err(vec![reason.into()])
}

/// Whether the pod tolerates a taint the node would carry for a condition
/// (the taints upstream's node lifecycle controller adds).
fn tolerates_condition_taint(pod: &PodInfo, key: &str) -> bool {
    pod.tolerates(&Taint { key: key.into(), effect: "NoSchedule".into(), value: None, time_added: None })
}

/// Nodes whose `Ready` condition is not `True` get no new pods, unless the pod
/// tolerates `node.kubernetes.io/not-ready:NoSchedule`.
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        if node.ready || tolerates_condition_taint(pod, "node.kubernetes.io/not-ready") {
            return Ok(());
        }
        unfit("node(s) were not ready")
    }
}

/// Cordoned nodes (`spec.unschedulable`) get no new pods, unless the pod
/// tolerates `node.kubernetes.io/unschedulable:NoSchedule`.
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        if !node.unschedulable || tolerates_condition_taint(pod, "node.kubernetes.io/unschedulable") {
            return Ok(());
        }
        unfit("node(s) were unschedulable")
    }
}

/// Every `NoSchedule` and `NoExecute` taint of the node must be tolerated.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        let untolerated = node.taints().iter().find(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !pod.tolerates(t));
        match untolerated {
            None => Ok(()),
            Some(t) => unfit(format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or(""))),
        }
    }
}

/// The pod's `nodeSelector` and required node affinity.
pub struct NodeAffinity;

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        if pod.affinity.required_match(&node.node) {
            return Ok(());
        }
        unfit("node(s) didn't match Pod's node affinity/selector")
    }
}

/// No two pods on a node may bind the same host port.
pub struct NodePorts;

impl Filter for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        if pod.host_ports.iter().any(|p| node.port_taken(p)) {
            return unfit("node(s) didn't have free ports for the requested pod ports");
        }
        Ok(())
    }
}

/// The pod's requests fit in what is allocatable minus what the node's pods
/// (bound or assumed) already request, and the node has room for one more pod.
pub struct NodeResourcesFit;

impl Filter for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        let mut reasons = Vec::new();
        if node.pod_count + 1 > node.allowed_pods {
            reasons.push(Reason::Borrowed("Too many pods"));
        }
        let want = &pod.requests.exact;
        let (have, used) = (&node.allocatable, &node.requested);
        if want.milli_cpu > 0 && want.milli_cpu > have.milli_cpu - used.milli_cpu {
            reasons.push(Reason::Borrowed("Insufficient cpu"));
        }
        if want.memory > 0 && want.memory > have.memory - used.memory {
            reasons.push(Reason::Borrowed("Insufficient memory"));
        }
        if want.ephemeral_storage > 0 && want.ephemeral_storage > have.ephemeral_storage - used.ephemeral_storage {
            reasons.push(Reason::Borrowed("Insufficient ephemeral-storage"));
        }
        for (name, amount) in &want.scalar {
            let free = have.scalar.get(name).copied().unwrap_or(0) - used.scalar.get(name).copied().unwrap_or(0);
            if *amount > 0 && *amount > free {
                reasons.push(Reason::Owned(format!("Insufficient {name}")));
            }
        }
        if reasons.is_empty() { Ok(()) } else { Err(reasons) }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sched::cache::Cache;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::json;
    use std::sync::Arc;

    /// A cache with one node per `(name, labels, spec, allocatable)`, ready unless its spec says otherwise.
    pub fn cluster(nodes: &[serde_json::Value]) -> Cache {
        let mut cache = Cache::default();
        for n in nodes {
            let mut n = n.clone();
            if n.pointer("/status/allocatable").is_none() {
                n["status"]["allocatable"] = json!({"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"});
            }
            if n.pointer("/status/conditions").is_none() {
                n["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
            }
            cache.set_node(Arc::new(serde_json::from_value::<Node>(n).unwrap()));
        }
        cache
    }

    pub fn pod_info(cache: &Cache, spec: serde_json::Value) -> PodInfo {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "x"}]);
        }
        let pod: Arc<Pod> = Arc::new(serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})).unwrap());
        PodInfo::new(pod.clone(), cache.spread_groups(&pod))
    }

    fn bind(cache: &mut Cache, name: &str, node: &str, spec: serde_json::Value) {
        let mut spec = spec;
        spec["nodeName"] = json!(node);
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap();
        cache.set_bound_pod(&Arc::new(pod));
    }

    fn requesting(requests: serde_json::Value) -> serde_json::Value {
        json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": requests}}]})
    }

    fn verdict(filter: &dyn Filter, cache: &Cache, pod: &PodInfo, node: &str) -> Result<(), Vec<String>> {
        filter.filter(pod, cache.node(node).unwrap()).map_err(|r| r.into_iter().map(|r| r.into_owned()).collect())
    }

    #[test]
    fn not_ready_nodes_are_filtered_unless_tolerated() {
        let cache = cluster(&[json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})]);
        assert_eq!(verdict(&NodeReady, &cache, &pod_info(&cache, json!({})), "n"), Err(vec!["node(s) were not ready".into()]));
        let tolerant = pod_info(&cache, json!({"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}]}));
        assert_eq!(verdict(&NodeReady, &cache, &tolerant, "n"), Ok(()));
        let only_noexecute = pod_info(&cache, json!({"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}));
        assert!(verdict(&NodeReady, &cache, &only_noexecute, "n").is_err(), "the default NoExecute toleration does not let pods onto not-ready nodes");
    }

    #[test]
    fn cordoned_nodes_are_filtered_unless_tolerated() {
        let cache = cluster(&[json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}}), json!({"metadata": {"name": "m"}})]);
        let pod = pod_info(&cache, json!({}));
        assert_eq!(verdict(&NodeUnschedulable, &cache, &pod, "n"), Err(vec!["node(s) were unschedulable".into()]));
        assert_eq!(verdict(&NodeUnschedulable, &cache, &pod, "m"), Ok(()));
        let tolerant = pod_info(&cache, json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}));
        assert_eq!(verdict(&NodeUnschedulable, &cache, &tolerant, "n"), Ok(()));
    }

    #[test]
    fn untolerated_noschedule_and_noexecute_taints_filter_and_prefer_noschedule_does_not() {
        let cache = cluster(&[
            json!({"metadata": {"name": "gpu"}, "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
            json!({"metadata": {"name": "evict"}, "spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}}),
            json!({"metadata": {"name": "soft"}, "spec": {"taints": [{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]}}),
        ]);
        let plain = pod_info(&cache, json!({}));
        assert_eq!(verdict(&TaintToleration, &cache, &plain, "gpu"), Err(vec!["node(s) had untolerated taint {dedicated: gpu}".into()]));
        assert_eq!(verdict(&TaintToleration, &cache, &plain, "evict"), Err(vec!["node(s) had untolerated taint {maintenance: }".into()]));
        assert_eq!(verdict(&TaintToleration, &cache, &plain, "soft"), Ok(()));
        let tolerant = pod_info(&cache, json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}));
        assert_eq!(verdict(&TaintToleration, &cache, &tolerant, "gpu"), Ok(()));
    }

    #[test]
    fn node_selector_and_required_affinity_filter() {
        let cache = cluster(&[json!({"metadata": {"name": "ssd", "labels": {"disk": "ssd"}}}), json!({"metadata": {"name": "hdd", "labels": {"disk": "hdd"}}})]);
        let selector = pod_info(&cache, json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(verdict(&NodeAffinity, &cache, &selector, "ssd"), Ok(()));
        assert_eq!(verdict(&NodeAffinity, &cache, &selector, "hdd"), Err(vec!["node(s) didn't match Pod's node affinity/selector".into()]));
        let affinity = pod_info(&cache, json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}}}));
        assert_eq!(verdict(&NodeAffinity, &cache, &affinity, "hdd"), Ok(()));
        assert!(verdict(&NodeAffinity, &cache, &affinity, "ssd").is_err());
    }

    #[test]
    fn host_ports_held_by_bound_pods_filter() {
        let mut cache = cluster(&[json!({"metadata": {"name": "n"}})]);
        let with_port = |ip: &str| json!({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip}]}]});
        bind(&mut cache, "holder", "n", with_port("10.0.0.1"));
        assert_eq!(verdict(&NodePorts, &cache, &pod_info(&cache, with_port("10.0.0.2")), "n"), Ok(()));
        assert_eq!(
            verdict(&NodePorts, &cache, &pod_info(&cache, with_port("0.0.0.0")), "n"),
            Err(vec!["node(s) didn't have free ports for the requested pod ports".into()])
        );
    }

    #[test]
    fn requests_must_fit_what_is_left_and_every_shortage_is_named() {
        let mut cache = cluster(&[json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "2", "ephemeral-storage": "10Gi", "example.com/dongle": "1"}}})]);
        bind(&mut cache, "a", "n", requesting(json!({"cpu": "1500m", "memory": "512Mi"})));
        assert_eq!(verdict(&NodeResourcesFit, &cache, &pod_info(&cache, requesting(json!({"cpu": "500m", "memory": "512Mi"}))), "n"), Ok(()), "exactly full fits");
        assert_eq!(verdict(&NodeResourcesFit, &cache, &pod_info(&cache, json!({})), "n"), Ok(()), "a pod without requests only needs a pod slot");
        assert_eq!(
            verdict(&NodeResourcesFit, &cache, &pod_info(&cache, requesting(json!({"cpu": "501m", "memory": "1Gi", "ephemeral-storage": "11Gi", "example.com/dongle": "2"}))), "n"),
            Err(vec!["Insufficient cpu".into(), "Insufficient memory".into(), "Insufficient ephemeral-storage".into(), "Insufficient example.com/dongle".into()])
        );
        bind(&mut cache, "b", "n", json!({"containers": [{"name": "c", "image": "x"}]}));
        assert_eq!(verdict(&NodeResourcesFit, &cache, &pod_info(&cache, json!({})), "n"), Err(vec!["Too many pods".into()]));
    }
}

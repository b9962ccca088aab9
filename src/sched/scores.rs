//! Scores: each ranks the nodes that passed the filters from 0 to 100 for one
//! concern; the scheduler sums them times their weights and takes the best
//! (upstream's Score plugins with their default weights). One small unit per
//! concern behind [`Score`]; the list is [`super::Profile::default`].

use super::cache::NodeInfo;
use super::pod_info::PodInfo;
use crate::api::taints::tolerates;

/// The best score a node can get from one scorer.
pub const MAX_NODE_SCORE: i64 = 100;

/// A preference among feasible nodes (upstream's Score plugins).
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;
    fn weight(&self) -> i64;
    /// False when this score has nothing to say about `pod` (upstream's PreScore
    /// "skip"): it then adds nothing on any node.
    fn applies(&self, _pod: &PodInfo) -> bool {
        true
    }
    /// The raw score of `node`, before normalizing.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64;
    /// Rescales the raw scores of all feasible nodes to 0..=100 in place.
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Upstream's `DefaultNormalizeScore`: scales to 0..=100 by the highest score;
/// `reverse` turns "more is worse" counts into scores.
fn normalize_by_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        let scaled = if max == 0 { 0 } else { MAX_NODE_SCORE * *s / max };
        *s = if reverse { MAX_NODE_SCORE - scaled } else { scaled };
    }
}

/// Prefers nodes with the most CPU and memory left after placing the pod,
/// counting missing requests as 100m CPU and 200Mi (NodeResourcesFit's LeastAllocated).
pub struct LeastAllocated;

fn least_requested(requested: i64, capacity: i64) -> Option<i64> {
    if capacity == 0 {
        return None;
    }
    Some(if requested > capacity { 0 } else { (capacity - requested) * MAX_NODE_SCORE / capacity })
}

impl Score for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let cpu = least_requested(node.non_zero_milli_cpu + pod.requests.non_zero_milli_cpu, node.allocatable.milli_cpu);
        let memory = least_requested(node.non_zero_memory + pod.requests.non_zero_memory, node.allocatable.memory);
        let (sum, count) = [cpu, memory].into_iter().flatten().fold((0, 0), |(sum, count), s| (sum + s, count + 1));
        if count == 0 { 0 } else { sum / count }
    }
}

/// Prefers nodes whose CPU and memory would be used in equal proportion
/// (NodeResourcesBalancedAllocation); pods requesting nothing are not scored.
pub struct BalancedAllocation;

impl Score for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn applies(&self, pod: &PodInfo) -> bool {
        pod.requests.exact.milli_cpu != 0 || pod.requests.exact.memory != 0
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let fraction = |requested: i64, capacity: i64| (capacity != 0).then(|| (requested as f64 / capacity as f64).min(1.0));
        let cpu = fraction(node.requested.milli_cpu + pod.requests.exact.milli_cpu, node.allocatable.milli_cpu);
        let memory = fraction(node.requested.memory + pod.requests.exact.memory, node.allocatable.memory);
        let deviation = match (cpu, memory) {
            (Some(c), Some(m)) => (c - m).abs() / 2.0,
            _ => 0.0,
        };
        ((1.0 - deviation) * MAX_NODE_SCORE as f64) as i64
    }
}

/// Prefers nodes with fewer pods of the same spread groups (controller,
/// Services) as the pod, upstream's SelectorSpread. Weighted like
/// PodTopologySpread, the plugin that spreads by default upstream today.
pub struct SelectorSpread;

impl Score for SelectorSpread {
    fn name(&self) -> &'static str {
        "SelectorSpread"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn applies(&self, pod: &PodInfo) -> bool {
        !pod.spread_groups.is_empty()
    }
    /// Pods matching all of the pod's groups, bounded by the smallest group's count.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.spread_groups.iter().map(|g| i64::from(node.spread_count(g))).min().unwrap_or(0)
    }
    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == 0 { MAX_NODE_SCORE } else { (MAX_NODE_SCORE as f64 * (max - *s) as f64 / max as f64) as i64 };
        }
    }
}

/// Prefers nodes matching more of the pod's preferred node affinity terms, by weight.
pub struct NodeAffinityPreference;

impl Score for NodeAffinityPreference {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn applies(&self, pod: &PodInfo) -> bool {
        pod.affinity.has_preferences()
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.affinity.preference_weight(&node.node)
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_by_max(scores, false);
    }
}

/// Prefers nodes with fewer `PreferNoSchedule` taints the pod does not tolerate.
pub struct TaintTolerationPreference;

impl Score for TaintTolerationPreference {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn weight(&self) -> i64 {
        3
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        // Only tolerations for PreferNoSchedule (or for every effect) count here.
        let tolerated = |taint| {
            pod.tolerations.iter().any(|tol| matches!(tol.effect.as_deref(), None | Some("") | Some("PreferNoSchedule")) && tolerates(tol, taint))
        };
        node.taints().iter().filter(|t| t.effect == "PreferNoSchedule" && !tolerated(t)).count() as i64
    }
    fn normalize(&self, scores: &mut [i64]) {
        normalize_by_max(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::filters::tests::{cluster, pod_info};
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;
    use std::sync::Arc;

    fn raw(score: &dyn Score, cache: &crate::sched::cache::Cache, pod: &PodInfo, node: &str) -> i64 {
        score.score(pod, cache.node(node).unwrap())
    }

    fn requesting(cpu: &str, memory: &str) -> serde_json::Value {
        json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]})
    }

    fn bind(cache: &mut crate::sched::cache::Cache, name: &str, node: &str, spec: serde_json::Value, owner: Option<&str>) {
        let mut spec = spec;
        spec["nodeName"] = json!(node);
        let owners = owner.map(|o| json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o, "uid": "u", "controller": true}]));
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "ownerReferences": owners}, "spec": spec})).unwrap();
        cache.set_bound_pod(&Arc::new(pod));
    }

    #[test]
    fn least_allocated_favours_free_nodes_and_counts_missing_requests_as_defaults() {
        let mut cache = cluster(&[json!({"metadata": {"name": "busy"}}), json!({"metadata": {"name": "idle"}})]);
        bind(&mut cache, "a", "busy", requesting("2", "4Gi"), None);
        let pod = pod_info(&cache, requesting("1", "2Gi"));
        assert_eq!(raw(&LeastAllocated, &cache, &pod, "idle"), 75, "(4-1)/4 cpu and (8-2)/8 memory");
        assert_eq!(raw(&LeastAllocated, &cache, &pod, "busy"), 25);
        let empty = pod_info(&cache, json!({}));
        assert_eq!(raw(&LeastAllocated, &cache, &empty, "idle"), (97 + 97) / 2, "100m of 4 cpu and 200Mi of 8Gi");
    }

    #[test]
    fn balanced_allocation_prefers_even_use_and_skips_best_effort_pods() {
        let mut cache = cluster(&[json!({"metadata": {"name": "cpu-heavy"}}), json!({"metadata": {"name": "idle"}})]);
        bind(&mut cache, "a", "cpu-heavy", requesting("2", "0"), None);
        let pod = pod_info(&cache, requesting("1", "2Gi"));
        assert_eq!(raw(&BalancedAllocation, &cache, &pod, "idle"), 100, "1/4 cpu and 2/8 memory");
        assert_eq!(raw(&BalancedAllocation, &cache, &pod, "cpu-heavy"), 75, "3/4 cpu against 2/8 memory");
        assert!(!BalancedAllocation.applies(&pod_info(&cache, json!({}))));
    }

    #[test]
    fn selector_spread_prefers_nodes_with_fewer_pods_of_the_same_owner() {
        let mut cache = cluster(&[json!({"metadata": {"name": "n1"}}), json!({"metadata": {"name": "n2"}}), json!({"metadata": {"name": "n3"}})]);
        bind(&mut cache, "a", "n1", json!({"containers": []}), Some("web"));
        bind(&mut cache, "b", "n1", json!({"containers": []}), Some("web"));
        bind(&mut cache, "c", "n2", json!({"containers": []}), Some("web"));
        bind(&mut cache, "d", "n3", json!({"containers": []}), Some("other"));
        let unbound: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
            "spec": {"containers": []}})).unwrap();
        let unbound = Arc::new(unbound);
        let pod = PodInfo::new(unbound.clone(), cache.spread_groups(&unbound));
        let mut scores: Vec<i64> = ["n1", "n2", "n3"].iter().map(|n| raw(&SelectorSpread, &cache, &pod, n)).collect();
        assert_eq!(scores, [2, 1, 0]);
        SelectorSpread.normalize(&mut scores);
        assert_eq!(scores, [0, 50, 100]);
        let mut none = vec![0, 0];
        SelectorSpread.normalize(&mut none);
        assert_eq!(none, [100, 100]);
    }

    #[test]
    fn preferred_affinity_scores_by_matching_weight() {
        let cache = cluster(&[json!({"metadata": {"name": "ssd", "labels": {"disk": "ssd"}}}), json!({"metadata": {"name": "hdd"}})]);
        let pod = pod_info(&cache, json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}));
        let mut scores = vec![raw(&NodeAffinityPreference, &cache, &pod, "ssd"), raw(&NodeAffinityPreference, &cache, &pod, "hdd")];
        assert_eq!(scores, [30, 0]);
        NodeAffinityPreference.normalize(&mut scores);
        assert_eq!(scores, [100, 0]);
        assert!(!NodeAffinityPreference.applies(&pod_info(&cache, json!({}))));
    }

    #[test]
    fn prefer_noschedule_taints_lower_the_score_unless_tolerated() {
        let cache = cluster(&[
            json!({"metadata": {"name": "spot"}, "spec": {"taints": [{"key": "spot", "effect": "PreferNoSchedule"}, {"key": "old", "effect": "PreferNoSchedule"}]}}),
            json!({"metadata": {"name": "half"}, "spec": {"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}}),
            json!({"metadata": {"name": "clean"}}),
        ]);
        let pod = pod_info(&cache, json!({}));
        let mut scores: Vec<i64> = ["spot", "half", "clean"].iter().map(|n| raw(&TaintTolerationPreference, &cache, &pod, n)).collect();
        assert_eq!(scores, [2, 1, 0]);
        TaintTolerationPreference.normalize(&mut scores);
        assert_eq!(scores, [0, 50, 100]);
        let tolerant = pod_info(&cache, json!({"tolerations": [{"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}]}));
        assert_eq!(raw(&TaintTolerationPreference, &cache, &tolerant, "spot"), 1);
        let noschedule_only = pod_info(&cache, json!({"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]}));
        assert_eq!(raw(&TaintTolerationPreference, &cache, &noschedule_only, "half"), 1, "a NoSchedule toleration does not tolerate PreferNoSchedule");
    }
}

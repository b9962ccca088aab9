//! One scheduling decision, as upstream's `schedulePod`: run the filters over
//! the nodes, starting where the previous pod stopped and stopping once enough
//! feasible nodes are found (`percentageOfNodesToScore`); score the feasible
//! ones; pick the best, breaking ties at random. When nothing fits, the
//! reasons are counted per node for the `FailedScheduling` message.

use super::Profile;
use super::cache::NodeInfo;
use super::filters::Reason;
use super::pod_info::PodInfo;
use std::collections::HashMap;
use std::fmt;

/// Below this many nodes every node is examined.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive percentage never goes below this.
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// How many feasible nodes to find before scoring, out of `all`
/// (`percentage` 0 means upstream's adaptive default: 50% minus 1% per 125 nodes).
pub fn nodes_to_find(percentage: u32, all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = match percentage as usize {
        0 => 50usize.saturating_sub(all / 125).max(MIN_FEASIBLE_NODES_PERCENTAGE),
        p => p.min(100),
    };
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Why a pod could not be placed.
#[derive(Debug, PartialEq)]
pub enum Unschedulable {
    NoNodes,
    /// Every node failed a filter: how many nodes there are and how many gave each reason.
    NoFit { nodes: usize, reasons: HashMap<Reason, usize> },
}

impl fmt::Display for Unschedulable {
    /// Upstream's wording, reasons sorted as strings:
    /// "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient cpu."
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unschedulable::NoNodes => write!(f, "no nodes available to schedule pods"),
            Unschedulable::NoFit { nodes, reasons } => {
                let mut counted: Vec<String> = reasons.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
                counted.sort();
                write!(f, "0/{nodes} nodes are available: {}.", counted.join(", "))
            }
        }
    }
}

/// The profile and the state one decision leaves for the next.
pub struct Algorithm {
    profile: Profile,
    next_start: usize,
    rng: fastrand::Rng,
}

impl Algorithm {
    pub fn new(profile: Profile) -> Self {
        Algorithm { profile, next_start: 0, rng: fastrand::Rng::new() }
    }

    /// Chooses a node for `pod` among `nodes`; returns its index.
    pub fn schedule(&mut self, pod: &PodInfo, nodes: &[NodeInfo]) -> Result<usize, Unschedulable> {
        let all = nodes.iter().filter(|n| n.present).count();
        if all == 0 {
            return Err(Unschedulable::NoNodes);
        }
        let wanted = nodes_to_find(self.profile.percentage_of_nodes_to_score, all);
        let mut feasible = Vec::with_capacity(wanted);
        let mut reasons: HashMap<Reason, usize> = HashMap::new();
        let mut examined = 0;
        while examined < nodes.len() && feasible.len() < wanted {
            let index = (self.next_start + examined) % nodes.len();
            examined += 1;
            let node = &nodes[index];
            if !node.present {
                continue;
            }
            match self.profile.filters.iter().try_for_each(|f| f.filter(pod, node)) {
                Ok(()) => feasible.push(index),
                Err(why) => {
                    for reason in why {
                        *reasons.entry(reason).or_default() += 1;
                    }
                }
            }
        }
        self.next_start = (self.next_start + examined) % nodes.len();
        match feasible.as_slice() {
            [] => Err(Unschedulable::NoFit { nodes: all, reasons }),
            [only] => Ok(*only),
            _ => Ok(self.best(pod, nodes, &feasible)),
        }
    }

    /// The feasible node with the highest weighted score; among equals, each
    /// is equally likely (reservoir sampling, as upstream's `selectHost`).
    fn best(&mut self, pod: &PodInfo, nodes: &[NodeInfo], feasible: &[usize]) -> usize {
        let mut totals = vec![0i64; feasible.len()];
        let mut column = vec![0i64; feasible.len()];
        for score in self.profile.scores.iter().filter(|s| s.applies(pod)) {
            for (value, &index) in column.iter_mut().zip(feasible) {
                *value = score.score(pod, &nodes[index]);
            }
            score.normalize(&mut column);
            let weight = score.weight();
            for (total, value) in totals.iter_mut().zip(&column) {
                *total += value * weight;
            }
        }
        let (mut chosen, mut best, mut ties) = (feasible[0], i64::MIN, 0usize);
        for (&index, &total) in feasible.iter().zip(&totals) {
            if total > best {
                (chosen, best, ties) = (index, total, 1);
            } else if total == best {
                ties += 1;
                if self.rng.usize(..ties) == 0 {
                    chosen = index;
                }
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::cache::Cache;
    use crate::sched::filters::tests::{cluster, pod_info};
    use serde_json::json;

    fn names(n: usize) -> Vec<serde_json::Value> {
        (0..n).map(|i| json!({"metadata": {"name": format!("n{i}")}})).collect()
    }

    fn message(reasons: &[(&'static str, usize)], nodes: usize) -> String {
        Unschedulable::NoFit { nodes, reasons: reasons.iter().map(|(r, n)| (Reason::Borrowed(r), *n)).collect() }.to_string()
    }

    #[test]
    fn failure_messages_count_reasons_and_sort_them_like_upstream() {
        assert_eq!(message(&[("Insufficient cpu", 3)], 3), "0/3 nodes are available: 3 Insufficient cpu.");
        assert_eq!(
            message(&[("Insufficient memory", 2), ("node(s) didn't match Pod's node affinity/selector", 1)], 3),
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient memory."
        );
        assert_eq!(
            message(&[("Insufficient cpu", 2), ("node(s) were unschedulable", 10)], 12),
            "0/12 nodes are available: 10 node(s) were unschedulable, 2 Insufficient cpu.",
            "sorted as strings, as upstream"
        );
        assert_eq!(Unschedulable::NoNodes.to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn the_share_of_nodes_examined_adapts_to_cluster_size() {
        assert_eq!(nodes_to_find(0, 3), 3);
        assert_eq!(nodes_to_find(0, 99), 99);
        assert_eq!(nodes_to_find(0, 150), 100, "never fewer than 100 nodes");
        assert_eq!(nodes_to_find(0, 1000), 420, "50% - 1000/125 = 42%");
        assert_eq!(nodes_to_find(0, 5000), 500, "10%");
        assert_eq!(nodes_to_find(0, 20_000), 1000, "at least 5%");
        assert_eq!(nodes_to_find(30, 1000), 300);
        assert_eq!(nodes_to_find(100, 1000), 1000);
    }

    #[test]
    fn filtering_stops_once_enough_nodes_fit_and_the_next_pod_starts_after() {
        let cache = cluster(&names(1000));
        let mut algorithm = Algorithm::new(Profile::default());
        let pod = pod_info(&cache, json!({}));
        algorithm.schedule(&pod, cache.nodes()).unwrap();
        assert_eq!(algorithm.next_start, 420);
        algorithm.schedule(&pod, cache.nodes()).unwrap();
        assert_eq!(algorithm.next_start, 840);
        algorithm.schedule(&pod, cache.nodes()).unwrap();
        assert_eq!(algorithm.next_start, 260, "wraps around");
    }

    #[test]
    fn every_node_is_examined_before_giving_up_and_each_reason_is_counted() {
        let mut nodes = names(4);
        nodes[0]["spec"] = json!({"unschedulable": true});
        nodes[1]["metadata"]["labels"] = json!({"disk": "ssd"});
        let cache = cluster(&nodes);
        let pod = pod_info(&cache, json!({"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "8", "memory": "16Gi"}}}]}));
        let failure = Algorithm::new(Profile::default()).schedule(&pod, cache.nodes()).unwrap_err();
        assert_eq!(
            failure.to_string(),
            "0/4 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, 1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
        );
    }

    #[test]
    fn no_nodes_at_all_is_its_own_failure() {
        let cache = Cache::default();
        let pod = pod_info(&cache, json!({}));
        assert_eq!(Algorithm::new(Profile::default()).schedule(&pod, cache.nodes()), Err(Unschedulable::NoNodes));
    }

    #[test]
    fn the_highest_weighted_score_wins() {
        let mut nodes = names(3);
        nodes[2]["metadata"]["labels"] = json!({"disk": "ssd"});
        let cache = cluster(&nodes);
        let pod = pod_info(&cache, json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}));
        let mut algorithm = Algorithm::new(Profile::default());
        for _ in 0..20 {
            assert_eq!(cache.nodes()[algorithm.schedule(&pod, cache.nodes()).unwrap()].name.as_ref(), "n2");
        }
    }

    #[test]
    fn ties_are_broken_at_random() {
        let cache = cluster(&names(3));
        let pod = pod_info(&cache, json!({}));
        let mut algorithm = Algorithm::new(Profile::default());
        let mut chosen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            chosen.insert(algorithm.schedule(&pod, cache.nodes()).unwrap());
        }
        assert_eq!(chosen.len(), 3, "equal nodes are all picked sometimes");
    }
}

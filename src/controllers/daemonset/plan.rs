//! What a DaemonSet's controller does next, as pure functions over the pods
//! per node: which nodes need a pod and which pods must go (excess, failed,
//! misplaced), and how far a rolling update may go now within maxUnavailable
//! (delete old, let the next pass create new) or maxSurge (start new beside
//! old, delete old once new is available).

use crate::controllers::history::POD_REVISION_LABEL;
use crate::controllers::pods::{is_available, is_terminating, phase, ready_since};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A DaemonSet's pods, by the node each is for.
pub type PodsByNode = BTreeMap<String, Vec<Arc<Pod>>>;

/// Whether a node should get a daemon pod, and whether one there may stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fit {
    pub should_run: bool,
    pub may_continue: bool,
}

/// Pods to create (by node) and to delete (by name).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create_on: Vec<String>,
    pub delete: Vec<String>,
    /// Failed pods among `delete`: the controller backs off when there are some.
    pub failed: usize,
}

/// Bound pods first, then oldest, then by name (upstream's podByCreationTimestampAndPhase).
fn oldest_first(pods: &mut [&Arc<Pod>]) {
    pods.sort_by_key(|p| {
        let unbound = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty);
        (unbound, p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.name_any())
    });
}

pub fn is_updated(pod: &Pod, hash: &str) -> bool {
    pod.labels().get(POD_REVISION_LABEL).map(String::as_str) == Some(hash)
}

/// The pod a node's status is judged by: its oldest.
pub fn representative(pods: &[Arc<Pod>]) -> Option<&Arc<Pod>> {
    let mut pods: Vec<&Arc<Pod>> = pods.iter().collect();
    oldest_first(&mut pods);
    pods.first().copied()
}

/// Upstream's `manage`: a pod for every node that should run one, none on
/// nodes that must not, failed pods replaced, one pod per node (two while
/// surging: the oldest updated one, and the oldest old one until the new is
/// available).
pub fn manage(fits: &BTreeMap<String, Fit>, pods: &PodsByNode, hash: &str, surge: bool, min_ready_seconds: i32, now: jiff::Timestamp) -> Plan {
    let mut plan = Plan::default();
    for (node, fit) in fits {
        let on_node = pods.get(node).filter(|p| !p.is_empty());
        match on_node {
            None if fit.should_run => plan.create_on.push(node.clone()),
            None => {}
            Some(on_node) if fit.may_continue => {
                let mut running = Vec::new();
                for pod in on_node.iter().filter(|p| !is_terminating(p)) {
                    if phase(pod) == "Failed" {
                        plan.failed += 1;
                        plan.delete.push(pod.name_any());
                    } else {
                        running.push(pod);
                    }
                }
                plan.delete.extend(excess(running, hash, surge, min_ready_seconds, now));
            }
            Some(on_node) => plan.delete.extend(on_node.iter().filter(|p| !is_terminating(p)).map(|p| p.name_any())),
        }
    }
    // Pods for nodes that are gone never get scheduled; nothing else removes them.
    for on_node in pods.iter().filter(|(node, _)| !fits.contains_key(*node)).map(|(_, pods)| pods) {
        let unbound = on_node.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty));
        plan.delete.extend(unbound.filter(|p| !is_terminating(p)).map(|p| p.name_any()));
    }
    plan
}

/// The pods beyond what one node should run.
fn excess(mut running: Vec<&Arc<Pod>>, hash: &str, surge: bool, min_ready_seconds: i32, now: jiff::Timestamp) -> Vec<String> {
    if running.len() <= 1 {
        return Vec::new();
    }
    oldest_first(&mut running);
    if !surge {
        return running[1..].iter().map(|p| p.name_any()).collect();
    }
    let (mut oldest_new, mut oldest_old, mut extra) = (None, None, Vec::new());
    for pod in running {
        let slot = if is_updated(pod, hash) { &mut oldest_new } else { &mut oldest_old };
        if slot.is_none() {
            *slot = Some(pod);
        } else {
            extra.push(pod.name_any());
        }
    }
    if let (Some(new), Some(old)) = (oldest_new, oldest_old)
        && (ready_since(old).is_none() || is_available(new, min_ready_seconds, now))
    {
        extra.push(old.name_any());
    }
    extra
}

/// The pods of one node a rolling update looks at: at most one updated and one old.
type NewAndOld<'a> = (Option<&'a Arc<Pod>>, Option<&'a Arc<Pod>>);

/// The one updated and one old pod on a node (ignoring terminating ones);
/// `None` when there are more, for `manage` to prune first.
fn updated_and_old<'a>(pods: &'a [Arc<Pod>], hash: &str) -> Option<NewAndOld<'a>> {
    let (mut new, mut old) = (None, None);
    for pod in pods.iter().filter(|p| !is_terminating(p)) {
        let slot = if is_updated(pod, hash) { &mut new } else { &mut old };
        if slot.replace(pod).is_some() {
            return None;
        }
    }
    Some((new, old))
}

/// The limits of one rolling-update step.
pub struct Budget {
    pub max_surge: usize,
    pub max_unavailable: usize,
    pub desired: usize,
    pub min_ready_seconds: i32,
}

/// Upstream's `rollingUpdate`: which old pods to delete and which nodes get a
/// new pod now. `pods` holds an entry for every node that should run a pod;
/// `should_run` says whether a node still should.
pub fn rolling_update(pods: &PodsByNode, should_run: impl Fn(&str) -> bool, hash: &str, budget: &Budget, now: jiff::Timestamp) -> Plan {
    let available = |pod: &Pod| is_available(pod, budget.min_ready_seconds, now);
    let mut plan = Plan::default();
    if budget.max_surge == 0 {
        let (mut unavailable, mut candidates) = (0, Vec::new());
        for on_node in pods.values() {
            match updated_and_old(on_node, hash) {
                None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
                Some((Some(new), None)) => unavailable += usize::from(!available(new)),
                Some((None, Some(old))) if !available(old) => {
                    plan.delete.push(old.name_any());
                    unavailable += 1;
                }
                Some((None, Some(old))) if unavailable < budget.max_unavailable => candidates.push(old.name_any()),
                Some((None, Some(_))) => {}
            }
        }
        let room = budget.max_unavailable.saturating_sub(unavailable).min(candidates.len());
        plan.delete.extend(candidates.into_iter().take(room));
        return plan;
    }
    let (mut surging, mut available_count, mut candidates, mut misplaced) = (0usize, 0usize, Vec::new(), Vec::new());
    for (node, on_node) in pods {
        let Some((new, old)) = updated_and_old(on_node, hash) else {
            surging += 1;
            continue;
        };
        if old.or(new).is_some_and(|p| available(p)) {
            available_count += 1;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) if !available(old) => {
                if should_run(node) {
                    plan.create_on.push(node.clone());
                } else {
                    plan.delete.push(old.name_any());
                }
            }
            (None, Some(old)) => {
                if !should_run(node) {
                    misplaced.push(old.name_any());
                } else if surging < budget.max_surge {
                    candidates.push(node.clone());
                }
            }
            (Some(new), Some(_)) if !available(new) => surging += 1,
            (Some(_), Some(old)) => plan.delete.push(old.name_any()),
        }
    }
    // With surge the owner wants full availability: a pod on a node it should
    // leave goes only once enough pods are available elsewhere.
    let deletable = available_count.saturating_sub(budget.desired).min(misplaced.len());
    plan.delete.extend(misplaced.into_iter().take(deletable));
    let room = budget.max_surge.saturating_sub(surging).min(candidates.len());
    plan.create_on.extend(candidates.into_iter().take(room));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(second).unwrap()
    }

    fn pod(name: &str, hash: &str, ready: bool, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some([(POD_REVISION_LABEL.to_owned(), hash.to_owned())].into()),
                creation_timestamp: Some(Time(at(created))),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: Some("n".into()), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: ready.then(|| vec![PodCondition { type_: "Ready".into(), status: "True".into(), last_transition_time: Some(Time(at(0))), ..Default::default() }]),
                ..Default::default()
            }),
        })
    }

    fn nodes(entries: &[(&str, Vec<Arc<Pod>>)]) -> PodsByNode {
        entries.iter().map(|(n, p)| (n.to_string(), p.clone())).collect()
    }

    const RUN: Fit = Fit { should_run: true, may_continue: true };

    #[test]
    fn manage_fills_empty_nodes_and_keeps_the_oldest_of_several() {
        let fits: BTreeMap<String, Fit> = [("a", RUN), ("b", RUN), ("c", Fit { should_run: false, may_continue: false })].map(|(n, f)| (n.to_owned(), f)).into();
        let pods = nodes(&[("b", vec![pod("b2", "h", true, 2), pod("b1", "h", true, 1)]), ("c", vec![pod("c1", "h", true, 1)])]);
        let plan = manage(&fits, &pods, "h", false, 0, at(10));
        assert_eq!(plan.create_on, ["a"]);
        assert_eq!(plan.delete, ["b2", "c1"]);
    }

    #[test]
    fn without_surge_old_pods_go_as_far_as_max_unavailable() {
        let pods = nodes(&[("a", vec![pod("a", "old", true, 1)]), ("b", vec![pod("b", "old", true, 1)]), ("c", vec![pod("c", "old", true, 1)])]);
        let budget = Budget { max_surge: 0, max_unavailable: 1, desired: 3, min_ready_seconds: 0 };
        let plan = rolling_update(&pods, |_| true, "new", &budget, at(10));
        assert_eq!(plan.delete.len(), 1);
        // One node already runs an unavailable new pod: nothing more may go.
        let pods = nodes(&[("a", vec![pod("a", "new", false, 5)]), ("b", vec![pod("b", "old", true, 1)])]);
        assert!(rolling_update(&pods, |_| true, "new", &budget, at(10)).delete.is_empty());
    }

    #[test]
    fn unavailable_old_pods_are_always_replaced() {
        let pods = nodes(&[("a", vec![pod("a", "old", false, 1)]), ("b", vec![pod("b", "old", false, 1)])]);
        let budget = Budget { max_surge: 0, max_unavailable: 1, desired: 2, min_ready_seconds: 0 };
        assert_eq!(rolling_update(&pods, |_| true, "new", &budget, at(10)).delete, ["a", "b"]);
    }

    #[test]
    fn with_surge_new_pods_start_beside_old_ones_which_go_once_new_is_available() {
        let budget = Budget { max_surge: 1, max_unavailable: 0, desired: 2, min_ready_seconds: 0 };
        let pods = nodes(&[("a", vec![pod("a", "old", true, 1)]), ("b", vec![pod("b", "old", true, 1)])]);
        let plan = rolling_update(&pods, |_| true, "new", &budget, at(10));
        assert_eq!((plan.create_on, plan.delete), (vec!["a".to_owned()], vec![]));
        let pods = nodes(&[("a", vec![pod("a-old", "old", true, 1), pod("a-new", "new", true, 5)]), ("b", vec![pod("b", "old", true, 1)])]);
        let plan = rolling_update(&pods, |_| true, "new", &budget, at(10));
        assert_eq!(plan.delete, ["a-old"]);
        assert_eq!(plan.create_on, ["b"]);
    }

    #[test]
    fn a_surging_node_keeps_its_old_pod_until_the_new_one_is_available() {
        let fits: BTreeMap<String, Fit> = [("a".to_owned(), RUN)].into();
        let waiting = nodes(&[("a", vec![pod("old", "o", true, 1), pod("new", "n", false, 2)])]);
        assert!(manage(&fits, &waiting, "n", true, 0, at(10)).delete.is_empty());
        let ready = nodes(&[("a", vec![pod("old", "o", true, 1), pod("new", "n", true, 2)])]);
        assert_eq!(manage(&fits, &ready, "n", true, 0, at(10)).delete, ["old"]);
    }
}

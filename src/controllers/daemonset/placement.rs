//! Which nodes a DaemonSet's pod belongs on, decided as upstream's DaemonSet
//! controller decides it: the pod's node name, node selector and required
//! node affinity must fit the node, and the node's NoSchedule/NoExecute taints
//! must be tolerated (with the tolerations every daemon pod gets). A daemon pod
//! is pinned to its node by node affinity, for the scheduler to bind.

use crate::api::taints::tolerates;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};

/// The field a daemon pod's node affinity pins.
const NODE_NAME_FIELD: &str = "metadata.name";

/// Adds the tolerations every daemon pod carries, so node problems (not
/// ready, unreachable, pressure, cordoned) neither evict it nor keep it off.
pub fn add_default_tolerations(spec: &mut PodSpec) {
    let mut defaults = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        defaults.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in defaults {
        let toleration = Toleration { key: Some(key.into()), operator: Some("Exists".into()), effect: Some(effect.into()), value: None, toleration_seconds: None };
        let same = |t: &Toleration| t.key == toleration.key && t.operator == toleration.operator && t.effect == toleration.effect && t.value == toleration.value;
        match tolerations.iter_mut().find(|t| same(t)) {
            Some(existing) => *existing = toleration,
            None => tolerations.push(toleration),
        }
    }
}

/// `affinity` with its required node terms replaced by one that selects `node`
/// by name (the other constraints were already checked against the node).
pub fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement { key: NODE_NAME_FIELD.into(), operator: "In".into(), values: Some(vec![node.into()]) }]),
            match_expressions: None,
        }],
    });
    affinity
}

/// The node a daemon pod is for: where it is bound, or where its affinity pins it.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    let terms = &spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find_map(|r| match (r.key.as_str(), r.operator.as_str(), r.values.as_deref()) {
        (NODE_NAME_FIELD, "In", Some([node])) => Some(node.clone()),
        _ => None,
    })
}

/// Whether a taint among those `effects` is tolerated by none of `tolerations`.
fn untolerated(taints: &[Taint], tolerations: &[Toleration], effects: &[&str]) -> bool {
    taints.iter().filter(|t| effects.contains(&t.effect.as_str())).any(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (value.and_then(number), values.first().and_then(|v| number(v))) {
            (Some(v), Some(bound)) => if r.operator == "Gt" { v > bound } else { v < bound },
            _ => false,
        },
        _ => false,
    }
}

/// A term matches when all its requirements do; a term without any matches nothing.
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref();
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == NODE_NAME_FIELD && requirement_matches(r, name))
}

/// The pod's node selector and required node affinity fit the node.
fn affinity_fits(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector = spec.node_selector.clone().unwrap_or_default();
    if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let required = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// Whether a daemon pod (`spec`, default tolerations included) should be
/// started on `node`, and whether one already there may keep running.
pub fn should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    let fits_name = spec.node_name.as_deref().is_none_or(|n| n.is_empty() || n == node_name);
    if !fits_name || !affinity_fits(spec, node) {
        return (false, false);
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    if untolerated(&taints, &tolerations, &["NoSchedule", "NoExecute"]) {
        return (false, !untolerated(&taints, &tolerations, &["NoExecute"]));
    }
    (true, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec};

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints.iter().map(|(k, e)| Taint { key: k.to_string(), effect: e.to_string(), ..Default::default() }).collect()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn daemon(spec: PodSpec) -> PodSpec {
        let mut spec = spec;
        add_default_tolerations(&mut spec);
        spec
    }

    #[test]
    fn a_plain_daemon_pod_runs_everywhere_even_on_cordoned_or_unready_nodes() {
        let spec = daemon(PodSpec::default());
        assert_eq!(should_run(&spec, &node("a", &[], &[])), (true, true));
        assert_eq!(should_run(&spec, &node("a", &[], &[("node.kubernetes.io/unschedulable", "NoSchedule")])), (true, true));
        assert_eq!(should_run(&spec, &node("a", &[], &[("node.kubernetes.io/not-ready", "NoExecute")])), (true, true));
    }

    #[test]
    fn untolerated_taints_keep_pods_off_and_no_execute_evicts() {
        let spec = daemon(PodSpec::default());
        assert_eq!(should_run(&spec, &node("a", &[], &[("dedicated", "NoSchedule")])), (false, true), "stays but is not started");
        assert_eq!(should_run(&spec, &node("a", &[], &[("dedicated", "NoExecute")])), (false, false));
        let tolerant = daemon(PodSpec {
            tolerations: Some(vec![Toleration { key: Some("dedicated".into()), operator: Some("Exists".into()), ..Default::default() }]),
            ..Default::default()
        });
        assert_eq!(should_run(&tolerant, &node("a", &[], &[("dedicated", "NoExecute")])), (true, true));
    }

    #[test]
    fn node_selector_and_required_affinity_pick_nodes() {
        let spec = daemon(PodSpec { node_selector: Some([("disk".to_owned(), "ssd".to_owned())].into()), ..Default::default() });
        assert!(should_run(&spec, &node("a", &[("disk", "ssd")], &[])).0);
        assert_eq!(should_run(&spec, &node("b", &[("disk", "hdd")], &[])), (false, false));
        let term = |key: &str, operator: &str, values: &[&str]| NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_fields: None,
        };
        let with_terms = |terms: Vec<NodeSelectorTerm>| {
            daemon(PodSpec {
                affinity: Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(NodeSelector { node_selector_terms: terms }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let zones = with_terms(vec![term("zone", "In", &["a"]), term("cpus", "Gt", &["8"])]);
        assert!(should_run(&zones, &node("n", &[("zone", "a")], &[])).0, "first term");
        assert!(should_run(&zones, &node("n", &[("cpus", "16")], &[])).0, "second term");
        assert!(!should_run(&zones, &node("n", &[("cpus", "4")], &[])).0);
        assert!(should_run(&with_terms(vec![term("gpu", "DoesNotExist", &[])]), &node("n", &[], &[])).0);
        assert!(!should_run(&with_terms(vec![NodeSelectorTerm::default()]), &node("n", &[], &[])).0, "an empty term matches nothing");
    }

    #[test]
    fn a_pinned_pod_targets_its_node_and_fits_only_there() {
        let mut spec = daemon(PodSpec::default());
        spec.affinity = Some(pin_to_node(None, "fake-1"));
        let pod = Pod { spec: Some(spec.clone()), ..Default::default() };
        assert_eq!(target_node(&pod).as_deref(), Some("fake-1"));
        assert!(should_run(&spec, &node("fake-1", &[], &[])).0);
        assert!(!should_run(&spec, &node("fake-2", &[], &[])).0);
        let bound = Pod { spec: Some(PodSpec { node_name: Some("fake-2".into()), ..spec }), ..Default::default() };
        assert_eq!(target_node(&bound).as_deref(), Some("fake-2"));
    }

    #[test]
    fn default_tolerations_are_added_once() {
        let mut spec = PodSpec { host_network: Some(true), ..Default::default() };
        add_default_tolerations(&mut spec);
        add_default_tolerations(&mut spec);
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 7);
    }
}

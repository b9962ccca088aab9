//! Node selection rules of a pod, parsed once per scheduling attempt: its
//! `nodeSelector` and node affinity (`nodeSelectorTerms` with `matchExpressions`
//! and `matchFields`), with upstream's semantics: terms are ORed, requirements
//! within a term ANDed; an empty term, or one with an invalid requirement
//! (e.g. `Gt` with a non-integer), matches nothing.

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    operator: Operator,
}

impl Requirement {
    /// Label requirements take every operator; field requirements only `In`
    /// and `NotIn` with one value, as upstream.
    fn parse(r: &NodeSelectorRequirement, field: bool) -> Option<Requirement> {
        let values = r.values.clone().unwrap_or_default();
        let single_int = || match values.as_slice() {
            [v] => v.parse::<i64>().ok(),
            _ => None,
        };
        let operator = match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() || (field && values.len() != 1) => return None,
            "In" => Operator::In(values),
            "NotIn" => Operator::NotIn(values),
            _ if field => return None,
            "Exists" if values.is_empty() => Operator::Exists,
            "DoesNotExist" if values.is_empty() => Operator::DoesNotExist,
            "Gt" => Operator::Gt(single_int()?),
            "Lt" => Operator::Lt(single_int()?),
            _ => return None,
        };
        Some(Requirement { key: r.key.clone(), operator })
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.operator, value) {
            (Operator::In(values), Some(v)) => values.iter().any(|x| x == v),
            (Operator::In(_), None) => false,
            (Operator::NotIn(values), Some(v)) => !values.iter().any(|x| x == v),
            (Operator::NotIn(_), None) => true,
            (Operator::Exists, v) => v.is_some(),
            (Operator::DoesNotExist, v) => v.is_none(),
            (Operator::Gt(bound), v) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|n| n > *bound),
            (Operator::Lt(bound), v) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|n| n < *bound),
        }
    }
}

/// One `NodeSelectorTerm`; `None` when it can match nothing.
#[derive(Clone, Debug, PartialEq)]
struct Term {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Term {
    fn parse(t: &NodeSelectorTerm) -> Option<Term> {
        let labels: Option<Vec<_>> = t.match_expressions.iter().flatten().map(|r| Requirement::parse(r, false)).collect();
        let fields: Option<Vec<_>> = t.match_fields.iter().flatten().map(|r| Requirement::parse(r, true)).collect();
        let term = Term { labels: labels?, fields: fields? };
        (!term.labels.is_empty() || !term.fields.is_empty()).then_some(term)
    }

    fn matches(&self, node: &Node) -> bool {
        let labels = node.metadata.labels.as_ref();
        self.labels.iter().all(|r| r.matches(labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
            && self.fields.iter().all(|r| {
                let value = match r.key.as_str() {
                    "metadata.name" => node.metadata.name.as_deref(),
                    _ => None,
                };
                r.matches(value)
            })
    }
}

/// Where a pod may and would like to run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeAffinity {
    node_selector: BTreeMap<String, String>,
    /// `None`: no required affinity; `Some(terms)`: at least one term must match.
    required: Option<Vec<Term>>,
    preferred: Vec<(i64, Term)>,
}

impl NodeAffinity {
    pub fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let affinity = spec.and_then(|s| s.affinity.as_ref()).and_then(|a| a.node_affinity.as_ref());
        NodeAffinity {
            node_selector: spec.and_then(|s| s.node_selector.clone()).unwrap_or_default(),
            required: affinity
                .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
                .map(|s| s.node_selector_terms.iter().filter_map(Term::parse).collect()),
            preferred: affinity
                .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
                .into_iter()
                .flatten()
                .filter(|p| p.weight != 0)
                .filter_map(|p| Some((i64::from(p.weight), Term::parse(&p.preference)?)))
                .collect(),
        }
    }

    /// The pod's `nodeSelector` and required node affinity both hold.
    pub fn required_match(&self, node: &Node) -> bool {
        let labels = node.metadata.labels.as_ref();
        self.node_selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            && self.required.as_ref().is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
    }

    pub fn has_preferences(&self) -> bool {
        !self.preferred.is_empty()
    }

    /// The summed weights of the preferred terms `node` matches.
    pub fn preference_weight(&self, node: &Node) -> i64 {
        self.preferred.iter().filter(|(_, t)| t.matches(node)).map(|(w, _)| w).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn affinity(spec: serde_json::Value) -> NodeAffinity {
        NodeAffinity::of(&serde_json::from_value(json!({"spec": spec})).unwrap())
    }

    fn required(expressions: serde_json::Value) -> NodeAffinity {
        affinity(json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": expressions}]}}}}))
    }

    #[test]
    fn node_selector_needs_every_label() {
        let a = affinity(json!({"containers": [], "nodeSelector": {"disk": "ssd", "zone": "a"}}));
        assert!(a.required_match(&node("n", json!({"disk": "ssd", "zone": "a", "x": "y"}))));
        assert!(!a.required_match(&node("n", json!({"disk": "ssd"}))));
        assert!(!a.required_match(&node("n", json!({"disk": "hdd", "zone": "a"}))));
    }

    #[test]
    fn each_operator_follows_upstream() {
        let n = node("n", json!({"zone": "a", "gen": "5", "odd": "x"}));
        let cases = [
            (json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}]), true),
            (json!([{"key": "zone", "operator": "In", "values": ["b"]}]), false),
            (json!([{"key": "missing", "operator": "In", "values": ["a"]}]), false),
            (json!([{"key": "zone", "operator": "NotIn", "values": ["b"]}]), true),
            (json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}]), false),
            (json!([{"key": "missing", "operator": "NotIn", "values": ["a"]}]), true),
            (json!([{"key": "zone", "operator": "Exists"}]), true),
            (json!([{"key": "missing", "operator": "Exists"}]), false),
            (json!([{"key": "missing", "operator": "DoesNotExist"}]), true),
            (json!([{"key": "zone", "operator": "DoesNotExist"}]), false),
            (json!([{"key": "gen", "operator": "Gt", "values": ["4"]}]), true),
            (json!([{"key": "gen", "operator": "Gt", "values": ["5"]}]), false),
            (json!([{"key": "gen", "operator": "Lt", "values": ["6"]}]), true),
            (json!([{"key": "odd", "operator": "Lt", "values": ["6"]}]), false),
            (json!([{"key": "missing", "operator": "Gt", "values": ["0"]}]), false),
            (json!([{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "gen", "operator": "Gt", "values": ["9"]}]), false),
        ];
        for (expressions, want) in cases {
            assert_eq!(required(expressions.clone()).required_match(&n), want, "{expressions}");
        }
    }

    #[test]
    fn invalid_or_empty_terms_match_nothing() {
        let n = node("n", json!({"gen": "5"}));
        assert!(!required(json!([{"key": "gen", "operator": "Gt", "values": ["five"]}])).required_match(&n));
        assert!(!required(json!([{"key": "gen", "operator": "In", "values": []}])).required_match(&n));
        assert!(!required(json!([{"key": "gen", "operator": "Exists", "values": ["5"]}])).required_match(&n));
        assert!(!required(json!([])).required_match(&n), "an empty term selects no node");
    }

    #[test]
    fn terms_are_ored_and_match_fields_reads_the_node_name() {
        let a = affinity(json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-2"]}]},
                {"matchExpressions": [{"key": "role", "operator": "In", "values": ["edge"]}]},
            ]}}}}));
        assert!(a.required_match(&node("node-2", json!({}))));
        assert!(a.required_match(&node("node-1", json!({"role": "edge"}))));
        assert!(!a.required_match(&node("node-1", json!({}))));
        let not_in = affinity(json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["node-1"]}]}]}}}}));
        assert!(!not_in.required_match(&node("node-1", json!({}))));
        assert!(not_in.required_match(&node("node-3", json!({}))));
    }

    #[test]
    fn preferred_terms_sum_the_weights_that_match() {
        let a = affinity(json!({"containers": [], "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
            {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}},
            {"weight": 7, "preference": {}},
        ]}}}));
        assert!(a.has_preferences());
        assert_eq!(a.preference_weight(&node("n", json!({"disk": "ssd", "zone": "a"}))), 15);
        assert_eq!(a.preference_weight(&node("n", json!({"zone": "a"}))), 5);
        assert_eq!(a.preference_weight(&node("n", json!({}))), 0, "the empty preference counts for nothing");
        assert!(a.required_match(&node("n", json!({}))), "preferences never exclude a node");
    }
}

//! Resource quota accounting, as upstream's quota evaluators do it, shared by
//! the quota admission in the API server and the quota controller: what one
//! object uses (pods: counts and compute requests/limits; services: counts by
//! type; anything else: `count/<resource>.<group>`), which quotas it falls under
//! (scopes and scope selectors), the constraints a pod must meet, and the
//! arithmetic and wording of usage.

use super::quantity::Quantity;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceRequirements, ScopedResourceSelectorRequirement, Service};
use std::collections::{BTreeMap, BTreeSet};

/// Resource name → amount.
pub type ResourceList = BTreeMap<String, Quantity>;

/// Kinds counted under their plain (legacy) name as well as `count/<name>`.
const LEGACY_COUNTS: &[&str] = &["pods", "services", "replicationcontrollers", "resourcequotas", "secrets", "configmaps", "persistentvolumeclaims"];
/// Compute resources counted by plain name and `requests.`/`limits.` prefix.
const COMPUTE: &[&str] = &["cpu", "memory", "ephemeral-storage"];
/// Resources a pod must set in every container when a quota limits them.
const MUST_SPECIFY: &[&str] = &["cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"];

/// Parses a k8s resource map, skipping malformed amounts.
pub fn parse_list(list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>) -> ResourceList {
    list.into_iter().flatten().filter_map(|(k, v)| Some((k.clone(), Quantity::parse(&v.0)?))).collect()
}

pub fn to_k8s(list: &ResourceList) -> BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity> {
    list.iter().map(|(k, v)| (k.clone(), v.to_k8s())).collect()
}

pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut sum = a.clone();
    for (k, v) in b {
        let total = sum.get(k).map_or(*v, |have| *have + *v);
        sum.insert(k.clone(), total);
    }
    sum
}

/// The entries of `list` named in `names`.
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    names.into_iter().filter_map(|n| Some((n.clone(), *list.get(n)?))).collect()
}

/// Names whose amount in `list` exceeds the amount in `limit`.
pub fn exceeded(list: &ResourceList, limit: &ResourceList) -> BTreeSet<String> {
    list.iter().filter(|(k, v)| limit.get(*k).is_some_and(|l| *v > l)).map(|(k, _)| k.clone()).collect()
}

/// `a=1,b=2`, as upstream prints resource lists in quota messages.
pub fn pretty(list: &ResourceList) -> String {
    list.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The resource names an object of `group`/`plural` is counted under.
fn count_names(group: &str, plural: &str) -> Vec<String> {
    let mut names = Vec::new();
    if group.is_empty() && LEGACY_COUNTS.contains(&plural) {
        names.push(plural.to_owned());
    }
    names.push(if group.is_empty() { format!("count/{plural}") } else { format!("count/{plural}.{group}") });
    names
}

fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("requests.") && !name.starts_with("count/")
}

/// Whether a quota resource name is one that objects of `group`/`plural` use.
pub fn counts_toward(group: &str, plural: &str, name: &str) -> bool {
    if count_names(group, plural).iter().any(|n| n == name) {
        return true;
    }
    match (group, plural) {
        ("", "pods") => {
            COMPUTE.contains(&name)
                || name.strip_prefix("requests.").is_some_and(|r| COMPUTE.contains(&r) || r.starts_with("hugepages-") || is_extended(r))
                || name.strip_prefix("limits.").is_some_and(|r| COMPUTE.contains(&r))
                || name.starts_with("hugepages-")
        }
        ("", "services") => name == "services.loadbalancers" || name == "services.nodeports",
        ("", "persistentvolumeclaims") => name == "requests.storage" || name.contains(".storageclass.storage.k8s.io/"),
        _ => false,
    }
}

/// The kind a quota resource name is about, as (group, plural).
pub fn kind_of(name: &str) -> Option<(String, String)> {
    if let Some(counted) = name.strip_prefix("count/") {
        let (plural, group) = counted.split_once('.').unwrap_or((counted, ""));
        return Some((group.to_owned(), plural.to_owned()));
    }
    ["pods", "services", "persistentvolumeclaims", "replicationcontrollers", "resourcequotas", "secrets", "configmaps"]
        .into_iter()
        .find(|plural| counts_toward("", plural, name))
        .map(|plural| (String::new(), plural.to_owned()))
}

/// Whether a pod counts against quota at `now`: not finished, and not stuck
/// terminating past its grace period (a lost node must not eat the quota).
pub fn pod_counts(pod: &Pod, now: jiff::Timestamp) -> bool {
    if matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return false;
    }
    match (&pod.metadata.deletion_timestamp, pod.metadata.deletion_grace_period_seconds) {
        (Some(at), Some(grace)) => now <= at.0 + jiff::SignedDuration::from_secs(grace),
        _ => true,
    }
}

/// Adds `b` into `a`.
fn accumulate(a: &mut ResourceList, b: &ResourceList) {
    *a = add(a, b);
}

/// Keeps the larger amount of each resource.
fn maximize(a: &mut ResourceList, b: &ResourceList) {
    for (k, v) in b {
        if a.get(k).is_none_or(|have| v > have) {
            a.insert(k.clone(), *v);
        }
    }
}

/// A pod's effective requests or limits: containers add up, init containers
/// run one at a time (sidecars keep running and add up), plus the overhead.
fn pod_resources(pod: &Pod, pick: fn(&ResourceRequirements) -> Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, overhead_everywhere: bool) -> ResourceList {
    let Some(spec) = pod.spec.as_ref() else { return ResourceList::new() };
    let of = |c: &k8s_openapi::api::core::v1::Container| parse_list(c.resources.as_ref().and_then(pick));
    let mut total = ResourceList::new();
    for c in &spec.containers {
        accumulate(&mut total, &of(c));
    }
    let (mut sidecars, mut init) = (ResourceList::new(), ResourceList::new());
    for c in spec.init_containers.iter().flatten() {
        let own = of(c);
        let running = if c.restart_policy.as_deref() == Some("Always") {
            accumulate(&mut total, &own);
            accumulate(&mut sidecars, &own);
            sidecars.clone()
        } else {
            add(&own, &sidecars)
        };
        maximize(&mut init, &running);
    }
    maximize(&mut total, &init);
    for (k, v) in parse_list(spec.overhead.as_ref()) {
        if overhead_everywhere || total.contains_key(&k) {
            accumulate(&mut total, &ResourceList::from([(k, v)]));
        }
    }
    total
}

/// What a pod charges: one pod, its requests under plain and `requests.`
/// names, its limits under `limits.` names.
pub fn pod_usage(pod: &Pod, now: jiff::Timestamp) -> ResourceList {
    if !pod_counts(pod, now) {
        return ResourceList::new();
    }
    let mut usage = compute_usage(&pod_resources(pod, |r| r.requests.as_ref(), true), &pod_resources(pod, |r| r.limits.as_ref(), false));
    for name in count_names("", "pods") {
        usage.insert(name, Quantity::count(1));
    }
    usage
}

/// Upstream's podComputeUsageHelper: quota names for requests and limits.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut usage = ResourceList::new();
    for (k, v) in requests {
        if COMPUTE.contains(&k.as_str()) || k.starts_with("hugepages-") {
            usage.insert(k.clone(), *v);
            usage.insert(format!("requests.{k}"), *v);
        } else if is_extended(k) {
            usage.insert(format!("requests.{k}"), *v);
        }
    }
    for (k, v) in limits {
        if COMPUTE.contains(&k.as_str()) {
            usage.insert(format!("limits.{k}"), *v);
        }
    }
    usage
}

/// What a service charges: one service, and one load balancer or its node ports by type.
pub fn service_usage(service: &Service) -> ResourceList {
    let mut usage: ResourceList = count_names("", "services").into_iter().map(|n| (n, Quantity::count(1))).collect();
    let spec = service.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_ref()).map_or(0, Vec::len) as i64;
    match spec.and_then(|s| s.type_.as_deref()) {
        Some("LoadBalancer") => {
            usage.insert("services.loadbalancers".into(), Quantity::count(1));
            usage.insert("services.nodeports".into(), Quantity::count(ports));
        }
        Some("NodePort") => {
            usage.insert("services.nodeports".into(), Quantity::count(ports));
        }
        _ => {}
    }
    usage
}

/// What any other object charges: one of its kind.
pub fn count_usage(group: &str, plural: &str) -> ResourceList {
    count_names(group, plural).into_iter().map(|n| (n, Quantity::count(1))).collect()
}

/// What the object `obj` of `group`/`plural` charges.
pub fn object_usage(group: &str, plural: &str, obj: &serde_json::Value, now: jiff::Timestamp) -> ResourceList {
    match (group, plural) {
        ("", "pods") => serde_json::from_value::<Pod>(obj.clone()).map(|p| pod_usage(&p, now)).unwrap_or_default(),
        ("", "services") => serde_json::from_value::<Service>(obj.clone()).map(|s| service_usage(&s)).unwrap_or_default(),
        _ => count_usage(group, plural),
    }
}

/// The quota's scopes, each as a selector requirement.
fn scope_selectors(quota: &ResourceQuota) -> Vec<ScopedResourceSelectorRequirement> {
    let spec = quota.spec.as_ref();
    let mut selectors: Vec<ScopedResourceSelectorRequirement> = spec
        .and_then(|s| s.scopes.as_ref())
        .into_iter()
        .flatten()
        .map(|scope| ScopedResourceSelectorRequirement { scope_name: scope.clone(), operator: "Exists".into(), values: None })
        .collect();
    selectors.extend(spec.and_then(|s| s.scope_selector.as_ref()).and_then(|s| s.match_expressions.clone()).into_iter().flatten());
    selectors
}

fn is_best_effort(pod: &Pod) -> bool {
    match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some(class) => class == "BestEffort",
        None => pod.spec.as_ref().is_none_or(|s| {
            s.containers.iter().chain(s.init_containers.iter().flatten()).all(|c| {
                let r = c.resources.as_ref();
                let none = |l: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
                    l.is_none_or(|l| !l.keys().any(|k| k == "cpu" || k == "memory"))
                };
                none(r.and_then(|r| r.requests.as_ref())) && none(r.and_then(|r| r.limits.as_ref()))
            })
        }),
    }
}

fn uses_cross_namespace_affinity(pod: &Pod) -> bool {
    let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else { return false };
    let cross = |t: &k8s_openapi::api::core::v1::PodAffinityTerm| t.namespace_selector.is_some() || t.namespaces.as_ref().is_some_and(|n| !n.is_empty());
    let affinity_terms = affinity.pod_affinity.as_ref().map(|a| {
        a.required_during_scheduling_ignored_during_execution.iter().flatten().any(cross)
            || a.preferred_during_scheduling_ignored_during_execution.iter().flatten().any(|w| cross(&w.pod_affinity_term))
    });
    let anti_terms = affinity.pod_anti_affinity.as_ref().map(|a| {
        a.required_during_scheduling_ignored_during_execution.iter().flatten().any(cross)
            || a.preferred_during_scheduling_ignored_during_execution.iter().flatten().any(|w| cross(&w.pod_affinity_term))
    });
    affinity_terms == Some(true) || anti_terms == Some(true)
}

/// Whether a pod satisfies one scope selector.
fn pod_matches_scope(pod: &Pod, selector: &ScopedResourceSelectorRequirement) -> bool {
    let spec = pod.spec.as_ref();
    match selector.scope_name.as_str() {
        "Terminating" => spec.and_then(|s| s.active_deadline_seconds).is_some_and(|d| d >= 0),
        "NotTerminating" => spec.and_then(|s| s.active_deadline_seconds).is_none_or(|d| d < 0),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "CrossNamespacePodAffinity" => uses_cross_namespace_affinity(pod),
        "PriorityClass" => {
            // Matched as a label selector against {PriorityClass: <class name>}.
            let class = spec.and_then(|s| s.priority_class_name.as_deref()).unwrap_or_default();
            let values = selector.values.as_deref().unwrap_or_default();
            match selector.operator.as_str() {
                "Exists" => !class.is_empty(),
                "In" => values.iter().any(|v| v == class),
                "NotIn" => !values.iter().any(|v| v == class),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether `quota` tracks the object: it limits something the object uses,
/// and the object is in all of its scopes (only pods have scopes).
pub fn quota_matches(quota: &ResourceQuota, group: &str, plural: &str, pod: Option<&Pod>) -> bool {
    let hard = quota.spec.as_ref().and_then(|s| s.hard.as_ref());
    if !hard.into_iter().flatten().any(|(name, _)| counts_toward(group, plural, name)) {
        return false;
    }
    scope_selectors(quota).iter().all(|s| pod.is_some_and(|p| pod_matches_scope(p, s)))
}

/// Upstream's pod constraint: when a quota limits cpu or memory, every
/// container must say how much it requests or limits of it.
pub fn pod_constraints(pod: &Pod, limited: &[String]) -> Result<(), String> {
    let required: BTreeSet<&str> = limited.iter().map(String::as_str).filter(|n| MUST_SPECIFY.contains(n)).collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let spec = pod.spec.clone().unwrap_or_default();
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let r = c.resources.as_ref();
        let usage = compute_usage(&parse_list(r.and_then(|r| r.requests.as_ref())), &parse_list(r.and_then(|r| r.limits.as_ref())));
        for name in required.iter().filter(|n| !usage.contains_key(**n)) {
            missing.entry(name).or_default().insert(c.name.clone());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing.iter().map(|(name, containers)| format!("{name} for: {}", containers.iter().cloned().collect::<Vec<_>>().join(","))).collect();
    Err(format!("must specify {}", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "metadata": { "name": "p" }, "spec": spec })).unwrap()
    }

    fn list(pairs: &[(&str, &str)]) -> ResourceList {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), Quantity::parse(v).unwrap())).collect()
    }

    #[test]
    fn a_pod_charges_its_count_requests_and_limits() {
        let p = pod(json!({ "containers": [
            { "name": "a", "resources": { "requests": { "cpu": "100m", "memory": "64Mi" }, "limits": { "cpu": "200m", "memory": "64Mi" } } },
            { "name": "b", "resources": { "requests": { "cpu": "200m", "memory": "64Mi", "example.com/gpu": "1" } } }
        ] }));
        let usage = pod_usage(&p, jiff::Timestamp::now());
        let shown: BTreeMap<&str, String> = usage.iter().map(|(k, v)| (k.as_str(), v.to_string())).collect();
        assert_eq!(shown["pods"], "1");
        assert_eq!(shown["count/pods"], "1");
        assert_eq!(shown["requests.cpu"], "300m");
        assert_eq!(shown["cpu"], "300m");
        assert_eq!(shown["requests.memory"], "128Mi");
        assert_eq!(shown["limits.cpu"], "200m");
        assert_eq!(shown["requests.example.com/gpu"], "1");
        assert!(!shown.contains_key("example.com/gpu"));
    }

    #[test]
    fn init_containers_count_at_their_peak_and_sidecars_add_up() {
        let p = pod(json!({
            "initContainers": [
                { "name": "setup", "resources": { "requests": { "cpu": "1" } } },
                { "name": "proxy", "restartPolicy": "Always", "resources": { "requests": { "cpu": "100m" } } }
            ],
            "containers": [{ "name": "app", "resources": { "requests": { "cpu": "200m" } } }]
        }));
        assert_eq!(pod_usage(&p, jiff::Timestamp::now())["requests.cpu"].to_string(), "1", "max(1, 200m + 100m)");
    }

    #[test]
    fn finished_and_long_terminating_pods_do_not_count() {
        let mut p = pod(json!({ "containers": [{ "name": "a" }] }));
        assert!(pod_counts(&p, jiff::Timestamp::now()));
        p.status = Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
        assert!(pod_usage(&p, jiff::Timestamp::now()).is_empty());
        let mut q = pod(json!({ "containers": [{ "name": "a" }] }));
        q.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::from_second(1000).unwrap()));
        q.metadata.deletion_grace_period_seconds = Some(30);
        assert!(pod_counts(&q, jiff::Timestamp::from_second(1020).unwrap()));
        assert!(!pod_counts(&q, jiff::Timestamp::from_second(1031).unwrap()));
    }

    #[test]
    fn quota_resource_names_map_to_the_kinds_they_count() {
        assert_eq!(kind_of("requests.cpu"), Some((String::new(), "pods".into())));
        assert_eq!(kind_of("count/deployments.apps"), Some(("apps".into(), "deployments".into())));
        assert_eq!(kind_of("count/pods"), Some((String::new(), "pods".into())));
        assert_eq!(kind_of("services.nodeports"), Some((String::new(), "services".into())));
        assert_eq!(kind_of("configmaps"), Some((String::new(), "configmaps".into())));
        assert_eq!(kind_of("requests.storage"), Some((String::new(), "persistentvolumeclaims".into())));
        assert!(counts_toward("apps", "deployments", "count/deployments.apps"));
        assert!(!counts_toward("apps", "deployments", "deployments"), "no legacy name outside the core group");
    }

    #[test]
    fn a_pod_without_limits_is_told_which_containers_must_set_them() {
        let p = pod(json!({ "containers": [
            { "name": "b", "resources": { "limits": { "cpu": "1" } } },
            { "name": "a" }
        ] }));
        let limited = vec!["limits.cpu".to_owned(), "limits.memory".to_owned(), "pods".to_owned()];
        assert_eq!(pod_constraints(&p, &limited), Err("must specify limits.cpu for: a; limits.memory for: a,b".into()));
        assert_eq!(pod_constraints(&p, &["pods".to_owned()]), Ok(()));
    }

    #[test]
    fn scopes_select_pods_by_deadline_qos_and_priority_class() {
        let quota = |scopes: serde_json::Value| -> ResourceQuota { serde_json::from_value(json!({ "spec": { "hard": { "pods": "1" }, "scopes": scopes } })).unwrap() };
        let best_effort = pod(json!({ "containers": [{ "name": "a" }], "priorityClassName": "high" }));
        let burstable = pod(json!({ "containers": [{ "name": "a", "resources": { "requests": { "cpu": "1" } } }], "activeDeadlineSeconds": 10 }));
        assert!(quota_matches(&quota(json!(["BestEffort"])), "", "pods", Some(&best_effort)));
        assert!(!quota_matches(&quota(json!(["BestEffort"])), "", "pods", Some(&burstable)));
        assert!(quota_matches(&quota(json!(["Terminating", "NotBestEffort"])), "", "pods", Some(&burstable)));
        assert!(!quota_matches(&quota(json!(["BestEffort"])), "", "configmaps", None), "scoped quotas track only pods");
        let by_class: ResourceQuota = serde_json::from_value(json!({ "spec": { "hard": { "pods": "1" },
            "scopeSelector": { "matchExpressions": [{ "scopeName": "PriorityClass", "operator": "In", "values": ["high"] }] } } })).unwrap();
        assert!(quota_matches(&by_class, "", "pods", Some(&best_effort)));
        assert!(!quota_matches(&by_class, "", "pods", Some(&burstable)));
    }

    #[test]
    fn usage_arithmetic_and_wording_follow_upstream() {
        let used = list(&[("pods", "2"), ("requests.cpu", "500m")]);
        let requested = list(&[("pods", "1")]);
        let hard = list(&[("pods", "2"), ("requests.cpu", "1")]);
        let new = add(&used, &requested);
        let over = exceeded(&mask(&new, requested.keys()), &hard);
        assert_eq!(over.iter().collect::<Vec<_>>(), ["pods"]);
        assert_eq!(
            format!("requested: {}, used: {}, limited: {}", pretty(&mask(&requested, &over)), pretty(&mask(&used, &over)), pretty(&mask(&hard, &over))),
            "requested: pods=1, used: pods=2, limited: pods=2"
        );
    }
}

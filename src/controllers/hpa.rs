//! The HorizontalPodAutoscaler controller (autoscaling/v2). Once per sync
//! period (upstream's `--horizontal-pod-autoscaler-sync-period`, 15 s) it
//! reads the target's `/scale`, the pods' usage from `metrics.k8s.io` and
//! their requests, and sets the replica count that brings each metric to its
//! target, within the HPA's bounds and its behavior (stabilization windows,
//! rate policies). The replica calculator (pods not ready or without a sample
//! are assumed idle on a scale-up and busy on a scale-down), the conditions,
//! the events and the status follow upstream's controller, so `kubectl get`
//! and `kubectl describe` read the same. Resource and ContainerResource
//! metrics come from the agents' samples; Pods, Object and External metrics
//! need custom or external metrics APIs, which rk does not serve, so they are
//! reported as failing.

use super::Context;
use crate::api::object::parse_go_duration;
use crate::api::quantity::{Quantity, milli_value};
use crate::api::selector::LabelSelector;
use crate::runtime::{Controller, Error, EventType, Informer, Next, Reconciler, Recorder, reference, split_key};
use async_trait::async_trait;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricTarget, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Usage within this fraction of the target changes nothing.
const TOLERANCE: f64 = 0.1;
/// After a pod starts, its CPU samples count only once a whole window was
/// measured while it was ready (upstream's `--horizontal-pod-autoscaler-cpu-initialization-period`).
const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// Past the initialization period, a pod that turned unready this soon after
/// starting has never been ready (upstream's `--horizontal-pod-autoscaler-initial-readiness-delay`).
const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

struct HpaController {
    hpas: Informer<HorizontalPodAutoscaler>,
    pods: Informer<Pod>,
    client: kube::Client,
    recorder: Recorder,
    sync_period: Duration,
    memory: Mutex<HashMap<String, Memory>>,
}

/// What the controller keeps of one HPA between syncs (upstream keeps the same in memory).
#[derive(Default)]
struct Memory {
    uid: String,
    /// When the HPA is next evaluated: changes before then, its own status
    /// writes among them, wait for it, so each HPA is evaluated once a period.
    next_sync: Option<Instant>,
    /// Whether the target's replica count at the first sync was recorded as a
    /// recommendation (so a new HPA does not scale down within its window).
    started: bool,
    /// Unstabilized recommendations, for the stabilization windows.
    recommendations: Vec<(Instant, i32)>,
    /// Replicas added, for the rate policies.
    scale_ups: Vec<(Instant, i32)>,
    /// Replicas removed, for the rate policies.
    scale_downs: Vec<(Instant, i32)>,
}

pub async fn run(ctx: Context) {
    let hpas = ctx.informers.get::<HorizontalPodAutoscaler>();
    let pods = ctx.informers.get::<Pod>();
    let controller = Controller::new("horizontal-pod-autoscaler", ctx.options.workers).owns_kind(&hpas);
    let reconciler = Arc::new(HpaController {
        hpas,
        pods,
        client: ctx.client.clone(),
        recorder: ctx.recorder("horizontal-pod-autoscaler"),
        sync_period: ctx.options.hpa_sync_period,
        memory: Mutex::new(HashMap::new()),
    });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

/// The `/scale` path of a scalable kind.
fn scale_path(namespace: &str, api_version: &str, kind: &str, name: &str) -> String {
    let plural = match kind {
        "Deployment" => "deployments",
        "ReplicaSet" => "replicasets",
        "StatefulSet" => "statefulsets",
        "ReplicationController" => "replicationcontrollers",
        other => return format!("/apis/{api_version}/namespaces/{namespace}/{}s/{name}/scale", other.to_ascii_lowercase()),
    };
    let prefix = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
    format!("{prefix}/namespaces/{namespace}/{plural}/{name}/scale")
}

async fn get_json(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
    client.request::<Value>(http::Request::get(path).body(Vec::new()).expect("a valid request")).await
}

/// One pod's usage of a resource in thousandths, and when and over what window it was measured.
#[derive(Clone, Debug)]
struct Sample {
    milli: i64,
    timestamp: Option<jiff::Timestamp>,
    window: Duration,
}

/// The pods' samples of `resource` (of one container's, when `container` is
/// given) in a PodMetricsList. A pod lacking the container, or a container
/// lacking the resource, has no sample, as with upstream's metrics client.
fn samples(list: &Value, resource: &str, container: Option<&str>) -> BTreeMap<String, Sample> {
    let items = list.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items
        .iter()
        .filter_map(|item| {
            let name = item.pointer("/metadata/name")?.as_str()?.to_owned();
            let containers = item.get("containers")?.as_array()?;
            let usage = |c: &Value| milli_value(c.get("usage")?.get(resource)?.as_str()?);
            let milli = match container {
                Some(wanted) => usage(containers.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(wanted))?)?,
                None => containers.iter().map(usage).sum::<Option<i64>>()?,
            };
            let timestamp = item.get("timestamp").and_then(Value::as_str).and_then(|t| t.parse().ok());
            let window = item.get("window").and_then(Value::as_str).and_then(parse_go_duration).unwrap_or_default();
            Some((name, Sample { milli, timestamp, window }))
        })
        .collect()
}

/// The target's pods sorted as upstream's replica calculator sorts them.
#[derive(Debug, Default, PartialEq)]
struct Groups {
    /// Pods whose samples count.
    ready: usize,
    /// Pending pods, and pods whose CPU sample predates their readiness.
    unready: BTreeSet<String>,
    /// Running pods without a sample.
    missing: BTreeSet<String>,
    /// Failed pods and pods being deleted.
    ignored: BTreeSet<String>,
}

fn group_pods(pods: &[Arc<Pod>], samples: &BTreeMap<String, Sample>, resource: &str, now: jiff::Timestamp) -> Groups {
    let mut groups = Groups::default();
    for pod in pods {
        let name = pod.name_any();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if pod.metadata.deletion_timestamp.is_some() || phase == "Failed" {
            groups.ignored.insert(name);
        } else if phase == "Pending" {
            groups.unready.insert(name);
        } else if let Some(sample) = samples.get(&name) {
            if resource == "cpu" && !cpu_sample_counts(pod, sample, now) {
                groups.unready.insert(name);
            } else {
                groups.ready += 1;
            }
        } else {
            groups.missing.insert(name);
        }
    }
    groups
}

/// Whether a pod's CPU sample shows its work rather than its start-up: while
/// starting, once a whole window was measured after it became ready; later,
/// unless it is unready and never was ready.
fn cpu_sample_counts(pod: &Pod, sample: &Sample, now: jiff::Timestamp) -> bool {
    let status = pod.status.as_ref();
    let ready = status.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let (Some(ready), Some(started)) = (ready, status.and_then(|s| s.start_time.as_ref())) else { return false };
    let became = ready.last_transition_time.as_ref().map(|t| t.0);
    let is_unready = ready.status == "False";
    if later(started.0, CPU_INITIALIZATION_PERIOD) > now {
        let measured_after = match (sample.timestamp, became) {
            (Some(at), Some(became)) => at >= later(became, sample.window),
            (Some(_), None) => true,
            (None, _) => false,
        };
        !is_unready && measured_after
    } else {
        !(is_unready && became.is_none_or(|became| later(started.0, INITIAL_READINESS_DELAY) > became))
    }
}

fn later(t: jiff::Timestamp, by: Duration) -> jiff::Timestamp {
    t.checked_add(by).unwrap_or(jiff::Timestamp::MAX)
}

/// Each pod's request of `resource` in thousandths: its containers' (and
/// restartable init containers'), or `container`'s alone.
fn pod_requests(pods: &[Arc<Pod>], resource: &str, container: Option<&str>) -> Result<BTreeMap<String, i64>, String> {
    let mut requests = BTreeMap::new();
    for pod in pods {
        let name = pod.name_any();
        let spec = pod.spec.as_ref();
        let sidecars = spec.and_then(|s| s.init_containers.as_ref()).into_iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let containers = spec.map(|s| s.containers.iter()).into_iter().flatten().chain(sidecars).filter(|c| container.is_none_or(|wanted| c.name == wanted));
        let (mut total, mut found) = (0i64, false);
        for c in containers {
            let request = c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(resource)).and_then(|q| milli_value(&q.0));
            total += request.ok_or_else(|| format!("missing request for {resource} in container {} of Pod {name}", c.name))?;
            found = true;
        }
        if let (Some(wanted), false) = (container, found) {
            return Err(format!("container {wanted} not found in Pod {name}"));
        }
        requests.insert(name, total);
    }
    Ok(requests)
}

/// Usage against a utilization target: (usage / target, utilization in whole
/// percent of the requests, average usage in thousandths), over the pods with
/// both a sample and a request.
fn utilization_ratio(usage: &BTreeMap<String, i64>, requests: &BTreeMap<String, i64>, target: i32) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut counted) = (0i64, 0i64, 0i64);
    for (pod, value) in usage {
        if let Some(request) = requests.get(pod) {
            used += value;
            requested += request;
            counted += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = i32::try_from(used * 100 / requested).unwrap_or(i32::MAX);
    Ok((f64::from(utilization) / f64::from(target), utilization, used / counted))
}

/// Usage against an average-value target: (usage / target, average usage in thousandths).
fn average_ratio(usage: &BTreeMap<String, i64>, target_milli: i64) -> (f64, i64) {
    let average = usage.values().sum::<i64>() / i64::try_from(usage.len()).unwrap_or(1).max(1);
    (average as f64 / target_milli as f64, average)
}

fn within_tolerance(ratio: f64) -> bool {
    (ratio - 1.0).abs() <= TOLERANCE
}

fn ceil_replicas(ratio: f64, pods: usize) -> i32 {
    let wanted = (ratio * pods as f64).ceil();
    if wanted >= f64::from(i32::MAX) { i32::MAX } else { wanted as i32 }
}

/// Upstream's replica count for one metric. `usage` holds the counted pods'
/// samples and `ratio` is their usage over the target. When pods were left
/// out, the ratio is worked out again assuming the pods without a sample use
/// `busy(pod)` on a scale-down and nothing on a scale-up, and the unready
/// ones nothing on a scale-up; if that flips the direction, nothing changes.
fn propose(
    current: i32,
    groups: &Groups,
    mut usage: BTreeMap<String, i64>,
    ratio: f64,
    ratio_of: impl Fn(&BTreeMap<String, i64>) -> Result<f64, String>,
    busy: impl Fn(&str) -> i64,
) -> Result<i32, String> {
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        return Ok(if within_tolerance(ratio) { current } else { ceil_replicas(ratio, groups.ready) });
    }
    for pod in &groups.missing {
        if ratio < 1.0 {
            usage.insert(pod.clone(), busy(pod));
        } else if ratio > 1.0 {
            usage.insert(pod.clone(), 0);
        }
    }
    if scale_up_with_unready {
        usage.extend(groups.unready.iter().map(|pod| (pod.clone(), 0)));
    }
    let new_ratio = ratio_of(&usage)?;
    if within_tolerance(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok(current);
    }
    let replicas = ceil_replicas(new_ratio, usage.len());
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(current);
    }
    Ok(replicas)
}

/// What a resource metric is aimed at.
enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Usage per pod, in thousandths.
    AverageValue(i64),
}

fn target_of(target: &MetricTarget) -> Result<Target, String> {
    if let Some(value) = &target.average_value {
        return milli_value(&value.0).map(Target::AverageValue).ok_or_else(|| format!("invalid average value target {}", value.0));
    }
    match target.average_utilization {
        Some(percent) if percent > 0 => Ok(Target::Utilization(percent)),
        _ => Err("invalid resource metric source: neither an average utilization target nor an average value target was set".into()),
    }
}

/// What one resource metric measured and the replica count it asks for.
#[derive(Debug, PartialEq)]
struct Measured {
    replicas: i32,
    utilization: Option<i32>,
    average_milli: i64,
}

/// Upstream's replica calculator for a Resource or ContainerResource metric.
fn resource_replicas(current: i32, pods: &[Arc<Pod>], samples: &BTreeMap<String, Sample>, resource: &str, container: Option<&str>, target: &Target, now: jiff::Timestamp) -> Result<Measured, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let groups = group_pods(pods, samples, resource, now);
    let counted: BTreeSet<String> = pods.iter().map(|p| p.name_any()).filter(|n| !groups.unready.contains(n) && !groups.ignored.contains(n)).collect();
    let usage: BTreeMap<String, i64> = samples.iter().filter(|(name, _)| counted.contains(*name)).map(|(name, s)| (name.clone(), s.milli)).collect();
    if usage.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    match *target {
        Target::Utilization(percent) => {
            let requests = pod_requests(pods, resource, container)?;
            let (ratio, utilization, average_milli) = utilization_ratio(&usage, &requests, percent)?;
            let busy = |pod: &str| requests.get(pod).copied().unwrap_or(0) * i64::from(percent.max(100)) / 100;
            let replicas = propose(current, &groups, usage, ratio, |u| Ok(utilization_ratio(u, &requests, percent)?.0), busy)?;
            Ok(Measured { replicas, utilization: Some(utilization), average_milli })
        }
        Target::AverageValue(target_milli) => {
            let (ratio, average_milli) = average_ratio(&usage, target_milli);
            let replicas = propose(current, &groups, usage, ratio, |u| Ok(average_ratio(u, target_milli).0), |_| target_milli)?;
            Ok(Measured { replicas, utilization: None, average_milli })
        }
    }
}

/// A metric's proposal: the replica count, the metric as events name it, its status.
struct Proposal {
    replicas: i32,
    metric: String,
    status: MetricStatus,
}

/// Why a metric gave no proposal: the condition reason and the error.
struct Failure {
    reason: &'static str,
    error: String,
}

/// Measures one metric of the HPA. `pod_metrics` is the target's PodMetricsList, or why it could not be read.
fn measure(spec: &MetricSpec, current: i32, pods: &[Arc<Pod>], pod_metrics: &Result<Value, String>, now: jiff::Timestamp) -> Result<Proposal, Failure> {
    let unserved = |reason, api: &str, name: &str| Failure { reason, error: format!("unable to get metric {name}: no {api} API is served") };
    let (resource, container, target) = match (spec.type_.as_str(), &spec.resource, &spec.container_resource) {
        ("Resource", Some(r), _) => (r.name.as_str(), None, &r.target),
        ("ContainerResource", _, Some(c)) => (c.name.as_str(), Some(c.container.as_str()), &c.target),
        ("Pods", ..) => return Err(unserved("FailedGetPodsMetric", "custom metrics", spec.pods.as_ref().map_or("", |p| p.metric.name.as_str()))),
        ("Object", ..) => return Err(unserved("FailedGetObjectMetric", "custom metrics", spec.object.as_ref().map_or("", |o| o.metric.name.as_str()))),
        ("External", ..) => return Err(unserved("FailedGetExternalMetric", "external metrics", spec.external.as_ref().map_or("", |e| e.metric.name.as_str()))),
        (other, ..) => return Err(Failure { reason: "InvalidMetricSourceType", error: format!("unknown metric source type {other:?}") }),
    };
    let reason = if container.is_some() { "FailedGetContainerResourceMetric" } else { "FailedGetResourceMetric" };
    let fail = |error: String| Failure { reason, error };
    let target = target_of(target).map_err(fail)?;
    let list = pod_metrics.as_ref().map_err(|e| fail(format!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e}")))?;
    let samples = samples(list, resource, container);
    if samples.is_empty() {
        return Err(fail(format!("unable to get metrics for resource {resource}: no metrics returned from resource metrics API")));
    }
    let measured = resource_replicas(current, pods, &samples, resource, container, &target, now).map_err(fail)?;
    let current_value = MetricValueStatus {
        average_utilization: measured.utilization,
        average_value: Some(Quantity::from_millis(measured.average_milli).to_k8s()),
        value: None,
    };
    let kind = if container.is_some() { "container resource" } else { "resource" };
    let metric = match target {
        Target::Utilization(_) => format!("{resource} {kind} utilization (percentage of request)"),
        Target::AverageValue(_) => format!("{resource} {kind}"),
    };
    let status = match container {
        Some(container) => MetricStatus {
            type_: "ContainerResource".into(),
            container_resource: Some(ContainerResourceMetricStatus { name: resource.into(), container: container.into(), current: current_value }),
            ..Default::default()
        },
        None => MetricStatus { type_: "Resource".into(), resource: Some(ResourceMetricStatus { name: resource.into(), current: current_value }), ..Default::default() },
    };
    Ok(Proposal { replicas: measured.replicas, metric, status })
}

/// A metric as upstream's errors name it: `cpu resource`, `app container`, `pods`.
fn metric_subject(spec: &MetricSpec) -> String {
    match (&spec.resource, &spec.container_resource, &spec.external) {
        (Some(r), ..) => format!("{} resource", r.name),
        (_, Some(c), _) => format!("{} container", c.container),
        (.., Some(e)) => format!("{} external", e.metric.name),
        _ => spec.type_.to_lowercase(),
    }
}

/// How many replicas `events` moved within the last `period_seconds`.
fn moved_within(events: &[(Instant, i32)], period_seconds: i32, now: Instant) -> i32 {
    let period = Duration::from_secs(u64::try_from(period_seconds).unwrap_or(0));
    events.iter().filter(|(at, _)| now.saturating_duration_since(*at) < period).map(|(_, n)| n).sum()
}

/// How far one direction's policies let the replica count go now: the most
/// replicas when scaling `up`, else the fewest. Each policy counts from the
/// replicas at the start of its period; `Max` picks the biggest change, `Min` the smallest.
fn rate_limit(current: i32, memory: &Memory, rules: &HPAScalingRules, up: bool, now: Instant) -> i32 {
    let smallest_change = match rules.select_policy.as_deref() {
        Some("Disabled") => return current,
        Some("Min") => true,
        _ => false,
    };
    let limits = rules.policies.iter().flatten().map(|p| {
        let start = current - moved_within(&memory.scale_ups, p.period_seconds, now) + moved_within(&memory.scale_downs, p.period_seconds, now);
        let (start, value) = (f64::from(start), f64::from(p.value));
        let limit = match (p.type_.as_str(), up) {
            ("Percent", true) => (start * (1.0 + value / 100.0)).ceil(),
            ("Percent", false) => (start * (1.0 - value / 100.0)).trunc(),
            (_, true) => start + value,
            (_, false) => start - value,
        };
        limit as i32
    });
    if up != smallest_change { limits.max().unwrap_or(i32::MIN) } else { limits.min().unwrap_or(i32::MAX) }
}

/// A recommendation brought within the HPA's behavior and bounds, and the
/// conditions that say how (upstream's normalization with behaviors).
#[derive(Debug, PartialEq)]
struct Normalized {
    replicas: i32,
    /// The AbleToScale reason and message: stabilized, or ready for a new scale.
    able: (&'static str, &'static str),
    /// The ScalingLimited status, reason and message.
    limited: (bool, &'static str, &'static str),
}

fn normalize(memory: &mut Memory, behavior: &HorizontalPodAutoscalerBehavior, current: i32, proposed: i32, min: i32, max: i32, now: Instant) -> Normalized {
    let window = |rules: &Option<HPAScalingRules>| Duration::from_secs(rules.as_ref().and_then(|r| r.stabilization_window_seconds).and_then(|s| u64::try_from(s).ok()).unwrap_or(0));
    let (up_window, down_window) = (window(&behavior.scale_up), window(&behavior.scale_down));
    // Scale up no further than the lowest recommendation of the up window, down no further than the highest of the down window.
    let (mut up, mut down) = (proposed, proposed);
    for (at, recommended) in &memory.recommendations {
        let age = now.saturating_duration_since(*at);
        if age < up_window {
            up = up.min(*recommended);
        }
        if age < down_window {
            down = down.max(*recommended);
        }
    }
    memory.recommendations.retain(|(at, _)| now.saturating_duration_since(*at) < up_window.max(down_window));
    memory.recommendations.push((now, proposed));
    let stabilized = current.max(up).min(down);
    let able = if stabilized == proposed {
        ("ReadyForNewScale", "recommended size matches current size")
    } else if proposed >= current {
        ("ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation")
    } else {
        ("ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
    };
    let no_rules = HPAScalingRules::default();
    let (replicas, reason, message) = if stabilized > current {
        let limit = rate_limit(current, memory, behavior.scale_up.as_ref().unwrap_or(&no_rules), true, now).max(current);
        let (allowed, reason, message) = if max > limit {
            (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
        } else {
            (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
        };
        if stabilized > allowed { (allowed, reason, message) } else { (stabilized, "DesiredWithinRange", "the desired count is within the acceptable range") }
    } else if stabilized < current {
        let limit = rate_limit(current, memory, behavior.scale_down.as_ref().unwrap_or(&no_rules), false, now).min(current);
        let (allowed, reason, message) = if min < limit {
            (limit, "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate")
        } else {
            (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
        };
        if stabilized < allowed { (allowed, reason, message) } else { (stabilized, "DesiredWithinRange", "the desired count is within the acceptable range") }
    } else {
        (stabilized, "DesiredWithinRange", "the desired count is within the acceptable range")
    };
    Normalized { replicas, able, limited: (replicas != stabilized, reason, message) }
}

/// Remembers a scale change for the rate policies, forgetting what no policy looks back to.
fn remember_change(memory: &mut Memory, behavior: &HorizontalPodAutoscalerBehavior, from: i32, to: i32, now: Instant) {
    let (events, rules, moved) = if to > from { (&mut memory.scale_ups, &behavior.scale_up, to - from) } else { (&mut memory.scale_downs, &behavior.scale_down, from - to) };
    let longest = rules.as_ref().and_then(|r| r.policies.as_ref()).into_iter().flatten().map(|p| p.period_seconds).max().unwrap_or(0);
    let keep = Duration::from_secs(u64::try_from(longest).unwrap_or(0));
    events.retain(|(at, _)| now.saturating_duration_since(*at) < keep);
    events.push((now, moved));
}

/// Sets a condition of `status`; its transition time moves only when its status does.
fn set_condition(status: &mut HorizontalPodAutoscalerStatus, kind: &str, ok: bool, reason: &str, message: impl Into<String>) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let index = conditions.iter().position(|c| c.type_ == kind).unwrap_or_else(|| {
        conditions.push(HorizontalPodAutoscalerCondition { type_: kind.into(), ..Default::default() });
        conditions.len() - 1
    });
    let condition = &mut conditions[index];
    let status = if ok { "True" } else { "False" };
    if condition.status != status {
        condition.last_transition_time = Some(now_time());
    }
    condition.status = status.into();
    condition.reason = Some(reason.into());
    condition.message = Some(message.into());
}

/// Now, to the second, as API timestamps are kept.
fn now_time() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_else(|_| jiff::Timestamp::now()))
}

#[async_trait]
impl Reconciler for HpaController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(hpa) = self.hpas.get(key) else {
            self.memory.lock().expect("lock").remove(key);
            return Ok(Next::Done);
        };
        {
            let mut all = self.memory.lock().expect("lock");
            let memory = all.entry(key.to_owned()).or_default();
            let uid = hpa.metadata.uid.clone().unwrap_or_default();
            if memory.uid != uid {
                *memory = Memory { uid, ..Memory::default() };
            }
            let now = Instant::now();
            if memory.next_sync.is_some_and(|at| now < at) {
                return Ok(Next::Done);
            }
            memory.next_sync = Some(now + self.sync_period);
        }
        // As upstream: a failed sync is reported on the HPA and tried again next period.
        if let Err(e) = self.sync(&hpa, key).await {
            tracing::debug!(hpa = key, error = %e, "horizontal pod autoscaler sync failed");
        }
        Ok(Next::After(self.sync_period))
    }
}

impl HpaController {
    /// One evaluation of `hpa`, as upstream's reconcileAutoscaler.
    async fn sync(&self, hpa: &HorizontalPodAutoscaler, key: &str) -> Result<(), Error> {
        let (namespace, _) = split_key(key);
        let spec = hpa.spec.clone().unwrap_or_default();
        let original = hpa.status.clone().unwrap_or_default();
        let mut status = original.clone();
        let target = &spec.scale_target_ref;
        let path = scale_path(namespace, target.api_version.as_deref().unwrap_or("apps/v1"), &target.kind, &target.name);
        let scale = match get_json(&self.client, &path).await {
            Ok(scale) => scale,
            Err(e) => {
                self.warn(hpa, "FailedGetScale", e.to_string());
                set_condition(&mut status, "AbleToScale", false, "FailedGetScale", format!("the HPA controller was unable to get the target's current scale: {e}"));
                self.write_status(hpa, &original, status).await?;
                return Err(e.into());
            }
        };
        set_condition(&mut status, "AbleToScale", true, "SucceededGetScale", "the HPA controller was able to get the target's current scale");
        let current = scale.pointer("/spec/replicas").and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok()).unwrap_or(0);
        {
            let mut all = self.memory.lock().expect("lock");
            let memory = all.entry(key.to_owned()).or_default();
            if !memory.started {
                memory.started = true;
                memory.recommendations.push((Instant::now(), current));
            }
        }
        let (min, max) = (spec.min_replicas.unwrap_or(1), spec.max_replicas);
        let mut metric_statuses = None;
        let (desired, reason) = if current == 0 && min != 0 {
            set_condition(&mut status, "ScalingActive", false, "ScalingDisabled", "scaling is disabled since the replica count of the target is zero");
            (current, String::new())
        } else if current > max {
            (max, "Current number of replicas above Spec.MaxReplicas".to_owned())
        } else if current < min {
            (min, "Current number of replicas below Spec.MinReplicas".to_owned())
        } else {
            let selector = scale.pointer("/status/selector").and_then(Value::as_str).unwrap_or("");
            let computed = self.replicas_for_metrics(hpa, &spec.metrics.clone().unwrap_or_default(), current, namespace, selector, &mut status).await;
            let (proposed, metric, statuses) = match computed {
                Ok(computed) => computed,
                Err((error, statuses)) => {
                    status.current_replicas = Some(current);
                    status.current_metrics = statuses;
                    self.write_status(hpa, &original, status).await?;
                    self.warn(hpa, "FailedComputeMetricsReplicas", error.clone());
                    return Err(error.into());
                }
            };
            metric_statuses = Some(statuses);
            let mut behavior = spec.behavior.clone().unwrap_or_default();
            crate::api::kinds::autoscaling::default_behavior(&mut behavior);
            let normalized = {
                let mut all = self.memory.lock().expect("lock");
                normalize(all.entry(key.to_owned()).or_default(), &behavior, current, proposed, min, max, Instant::now())
            };
            set_condition(&mut status, "AbleToScale", true, normalized.able.0, normalized.able.1);
            let (limited, limit_reason, limit_message) = normalized.limited;
            set_condition(&mut status, "ScalingLimited", limited, limit_reason, limit_message);
            let reason = match proposed.cmp(&current) {
                std::cmp::Ordering::Greater => format!("{metric} above target"),
                std::cmp::Ordering::Less => "All metrics below target".to_owned(),
                std::cmp::Ordering::Equal => String::new(),
            };
            (normalized.replicas, reason)
        };
        let rescale = desired != current;
        if rescale {
            let patch = serde_json::to_vec(&json!({ "spec": { "replicas": desired } }))?;
            let request = http::Request::patch(&path).header("content-type", "application/merge-patch+json").body(patch).expect("a valid request");
            if let Err(e) = self.client.request::<Value>(request).await {
                self.warn(hpa, "FailedRescale", format!("New size: {desired}; reason: {reason}; error: {e}"));
                set_condition(&mut status, "AbleToScale", false, "FailedUpdateScale", format!("the HPA controller was unable to update the target scale: {e}"));
                status.current_replicas = Some(current);
                status.current_metrics = metric_statuses;
                self.write_status(hpa, &original, status).await?;
                return Err(e.into());
            }
            set_condition(&mut status, "AbleToScale", true, "SucceededRescale", format!("the HPA controller was able to update the target scale to {desired}"));
            self.recorder.record(reference(hpa), EventType::Normal, "SuccessfulRescale", format!("New size: {desired}; reason: {reason}"));
            let mut behavior = spec.behavior.clone().unwrap_or_default();
            crate::api::kinds::autoscaling::default_behavior(&mut behavior);
            remember_change(self.memory.lock().expect("lock").entry(key.to_owned()).or_default(), &behavior, current, desired, Instant::now());
            status.last_scale_time = Some(now_time());
        }
        status.current_replicas = Some(current);
        status.desired_replicas = if rescale { desired } else { current };
        status.current_metrics = metric_statuses;
        self.write_status(hpa, &original, status).await
    }

    /// Every metric's proposal: the highest, the metric that asked for it and
    /// all statuses; or, when every metric failed (or some did and the rest
    /// would scale down), the first error and the statuses.
    async fn replicas_for_metrics(
        &self,
        hpa: &HorizontalPodAutoscaler,
        specs: &[MetricSpec],
        current: i32,
        namespace: &str,
        selector: &str,
        status: &mut HorizontalPodAutoscalerStatus,
    ) -> Result<(i32, String, Vec<MetricStatus>), (String, Option<Vec<MetricStatus>>)> {
        if selector.is_empty() {
            self.warn(hpa, "SelectorRequired", "selector is required".into());
            set_condition(status, "ScalingActive", false, "InvalidSelector", "the HPA target's scale is missing a selector");
            return Err(("selector is required".into(), None));
        }
        let parsed = match LabelSelector::parse(selector) {
            Ok(parsed) => parsed,
            Err(e) => {
                let message = format!("couldn't convert selector into a corresponding internal selector object: {e}");
                self.warn(hpa, "InvalidSelector", message.clone());
                set_condition(status, "ScalingActive", false, "InvalidSelector", message.clone());
                return Err((message, None));
            }
        };
        let pods: Vec<Arc<Pod>> = self.pods.list_namespace(namespace).into_iter().filter(|p| parsed.matches(p.labels())).collect();
        let needs_pod_metrics = specs.iter().any(|m| m.type_ == "Resource" || m.type_ == "ContainerResource");
        let pod_metrics = if needs_pod_metrics {
            let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={}", form_urlencoded::byte_serialize(selector.as_bytes()).collect::<String>());
            get_json(&self.client, &path).await.map_err(|e| e.to_string())
        } else {
            Ok(Value::Null)
        };
        let now = jiff::Timestamp::now();
        let mut statuses = vec![MetricStatus::default(); specs.len()];
        let mut best: Option<(i32, String)> = None;
        let mut failures = Vec::new();
        for (spec, slot) in specs.iter().zip(statuses.iter_mut()) {
            match measure(spec, current, &pods, &pod_metrics, now) {
                Ok(proposal) => {
                    *slot = proposal.status;
                    if best.as_ref().is_none_or(|(replicas, _)| proposal.replicas > *replicas) {
                        best = Some((proposal.replicas, proposal.metric));
                    }
                }
                Err(failure) => {
                    self.warn(hpa, failure.reason, failure.error.clone());
                    failures.push((metric_subject(spec), failure));
                }
            }
        }
        match best {
            Some((replicas, metric)) if failures.is_empty() || replicas >= current => {
                set_condition(status, "ScalingActive", true, "ValidMetricFound", format!("the HPA was able to successfully calculate a replica count from {metric}"));
                Ok((replicas, metric, statuses))
            }
            _ => {
                let Some((subject, first)) = failures.first() else { return Err(("the HPA has no metrics".into(), Some(statuses))) };
                set_condition(status, "ScalingActive", false, first.reason, format!("the HPA was unable to compute the replica count: {}", first.error));
                let error = format!("invalid metrics ({} invalid out of {}), first error is: failed to get {subject} metric value: {}", failures.len(), specs.len(), first.error);
                Err((error, Some(statuses)))
            }
        }
    }

    fn warn(&self, hpa: &HorizontalPodAutoscaler, reason: &str, message: String) {
        self.recorder.record(reference(hpa), EventType::Warning, reason, message);
    }

    /// Writes `status` unless it is what the HPA already has. The metrics are
    /// always named, so a merge patch drops stale ones when there are none.
    async fn write_status(&self, hpa: &HorizontalPodAutoscaler, original: &HorizontalPodAutoscalerStatus, status: HorizontalPodAutoscalerStatus) -> Result<(), Error> {
        if *original == status {
            return Ok(());
        }
        let mut body = serde_json::to_value(&status)?;
        body["currentMetrics"] = serde_json::to_value(&status.current_metrics)?;
        let api: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), &hpa.namespace().unwrap_or_default());
        if let Err(e) = api.patch_status(&hpa.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": body }))).await {
            self.warn(hpa, "FailedUpdateStatus", e.to_string());
            return Err(e.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::{HPAScalingPolicy, ResourceMetricSource};
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

    fn at(seconds_ago: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - seconds_ago).unwrap()
    }

    /// A pod requesting `cpu`, in `phase`, started and ready `age` seconds ago.
    fn pod(name: &str, cpu: &str, phase: &str, age: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    resources: Some(ResourceRequirements { requests: Some([("cpu".to_owned(), K8sQuantity(cpu.into()))].into()), ..Default::default() }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                start_time: Some(Time(at(age))),
                conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "True".into(), last_transition_time: Some(Time(at(age))), ..Default::default() }]),
                ..Default::default()
            }),
        })
    }

    fn running(name: &str, cpu: &str) -> Arc<Pod> {
        pod(name, cpu, "Running", 3600)
    }

    /// Samples taken now over a one-second window.
    fn usage(pairs: &[(&str, i64)]) -> BTreeMap<String, Sample> {
        pairs.iter().map(|(n, milli)| ((*n).to_owned(), Sample { milli: *milli, timestamp: Some(jiff::Timestamp::now()), window: Duration::from_secs(1) })).collect()
    }

    fn cpu_replicas(current: i32, pods: &[Arc<Pod>], samples: &BTreeMap<String, Sample>, percent: i32) -> Result<Measured, String> {
        resource_replicas(current, pods, samples, "cpu", None, &Target::Utilization(percent), jiff::Timestamp::now())
    }

    #[test]
    fn utilization_above_target_asks_for_more_replicas_and_below_for_fewer() {
        let pods = [running("a", "100m"), running("b", "100m")];
        // 90% of the requests against 50%: 2 * 1.8 = 3.6, so 4.
        assert_eq!(cpu_replicas(2, &pods, &usage(&[("a", 90), ("b", 90)]), 50), Ok(Measured { replicas: 4, utilization: Some(90), average_milli: 90 }));
        // Within the 10% tolerance nothing changes.
        assert_eq!(cpu_replicas(2, &pods, &usage(&[("a", 52), ("b", 53)]), 50).unwrap().replicas, 2);
        // Idle pods ask for none at all; the HPA's minimum bounds that later.
        assert_eq!(cpu_replicas(2, &pods, &usage(&[("a", 0), ("b", 0)]), 50).unwrap().replicas, 0);
        // Utilization is truncated to whole percent, as upstream's integer arithmetic does.
        assert_eq!(cpu_replicas(2, &pods, &usage(&[("a", 33), ("b", 34)]), 50).unwrap().utilization, Some(33));
    }

    #[test]
    fn pods_without_samples_hold_back_a_scale_down() {
        // Upstream's example: 3 pods at 40% and one without a sample, against 50%.
        let pods = [running("a", "100m"), running("b", "100m"), running("c", "100m"), running("d", "100m")];
        let samples = usage(&[("a", 40), ("b", 40), ("c", 40)]);
        // Counted as using all of its request the ratio is 1.1: within tolerance, so no change.
        assert_eq!(cpu_replicas(4, &pods, &samples, 50).unwrap().replicas, 4);
        // Without it, 3 pods at 80% of the target would scale to 3.
        assert_eq!(cpu_replicas(3, &pods[..3], &samples, 50).unwrap().replicas, 3);
        // Idle pods and one without a sample: (0 + 0 + 100) / 300 = 33% of requests, so ceil(0.66 * 3) = 2.
        let idle = [running("a", "100m"), running("b", "100m"), running("c", "100m")];
        assert_eq!(cpu_replicas(3, &idle, &usage(&[("a", 0), ("b", 0)]), 50).unwrap().replicas, 2);
    }

    #[test]
    fn pods_not_ready_count_as_idle_on_a_scale_up() {
        let pods = [running("a", "100m"), pod("b", "100m", "Pending", 1)];
        // One busy pod at 200% and a pending one counted as idle: 100% over 2 pods, so ceil(2 * 2) = 4.
        let measured = cpu_replicas(2, &pods, &usage(&[("a", 200)]), 50).unwrap();
        assert_eq!((measured.replicas, measured.utilization), (4, Some(200)));
        // Pending pods only: nothing to measure.
        assert!(cpu_replicas(1, &pods[1..], &usage(&[]), 50).unwrap_err().contains("did not receive metrics"));
    }

    #[test]
    fn a_cpu_sample_counts_once_a_window_was_measured_after_readiness() {
        let fresh = pod("a", "100m", "Running", 10);
        let sample = |seconds_ago: i64| Sample { milli: 500, timestamp: Some(at(seconds_ago)), window: Duration::from_secs(1) };
        let now = jiff::Timestamp::now();
        assert!(cpu_sample_counts(&fresh, &sample(0), now), "measured after it became ready");
        assert!(!cpu_sample_counts(&fresh, &sample(20), now), "measured while it started");
        assert!(cpu_sample_counts(&running("b", "100m"), &sample(20), now), "past the initialization period");
        // Memory samples count whenever they come.
        let groups = group_pods(&[fresh], &[("a".to_owned(), sample(20))].into(), "memory", now);
        assert_eq!(groups.ready, 1);
    }

    #[test]
    fn failed_and_deleted_pods_are_ignored_and_requests_are_required() {
        let mut deleting = (*running("c", "100m")).clone();
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let pods = [running("a", "100m"), pod("b", "100m", "Failed", 60), Arc::new(deleting)];
        let groups = group_pods(&pods, &usage(&[("a", 10), ("b", 10), ("c", 10)]), "cpu", jiff::Timestamp::now());
        assert_eq!((groups.ready, groups.ignored.len()), (1, 2));
        let mut no_request = (*running("d", "1")).clone();
        no_request.spec.as_mut().unwrap().containers[0].resources = None;
        let error = cpu_replicas(1, &[Arc::new(no_request)], &usage(&[("d", 10)]), 50).unwrap_err();
        assert_eq!(error, "missing request for cpu in container app of Pod d");
        assert_eq!(pod_requests(&pods[..1], "cpu", Some("other")).unwrap_err(), "container other not found in Pod a");
    }

    #[test]
    fn average_value_targets_compare_usage_per_pod() {
        let pods = [running("a", "100m"), running("b", "100m")];
        let measured = resource_replicas(2, &pods, &usage(&[("a", 300), ("b", 500)]), "cpu", None, &Target::AverageValue(200), jiff::Timestamp::now()).unwrap();
        assert_eq!(measured, Measured { replicas: 4, utilization: None, average_milli: 400 });
    }

    #[test]
    fn samples_add_up_containers_or_pick_one() {
        let list = json!({ "items": [
            { "metadata": { "name": "a" }, "timestamp": "2024-01-01T00:00:00Z", "window": "1.5s", "containers": [
                { "name": "app", "usage": { "cpu": "250m", "memory": "1Mi" } },
                { "name": "sidecar", "usage": { "cpu": "1000000n", "memory": "1Mi" } } ] },
            { "metadata": { "name": "b" }, "containers": [ { "name": "app", "usage": { "memory": "1Mi" } } ] },
        ] });
        let all = samples(&list, "cpu", None);
        assert_eq!(all.keys().collect::<Vec<_>>(), ["a"], "b has no cpu sample");
        assert_eq!((all["a"].milli, all["a"].window), (251, Duration::from_millis(1500)));
        assert_eq!(samples(&list, "cpu", Some("app"))["a"].milli, 250);
        assert!(samples(&list, "cpu", Some("missing")).is_empty());
        assert_eq!(samples(&list, "memory", None)["b"].milli, 1_048_576_000);
    }

    fn behavior(down_window: i32) -> HorizontalPodAutoscalerBehavior {
        let mut b = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules { stabilization_window_seconds: Some(down_window), ..Default::default() }),
            ..Default::default()
        };
        crate::api::kinds::autoscaling::default_behavior(&mut b);
        b
    }

    #[test]
    fn bounds_and_rates_limit_a_recommendation_and_say_so() {
        let now = Instant::now();
        // 1 → 20 wanted: the default rate allows max(1 + 4, 1 * 2) = 5, the maximum 3.
        let n = normalize(&mut Memory::default(), &behavior(300), 1, 20, 1, 3, now);
        assert_eq!((n.replicas, n.limited), (3, (true, "TooManyReplicas", "the desired replica count is more than the maximum replica count")));
        let n = normalize(&mut Memory::default(), &behavior(300), 1, 20, 1, 10, now);
        assert_eq!((n.replicas, n.limited.1), (5, "ScaleUpLimit"));
        // Idle pods ask for 0; the minimum keeps 1.
        let n = normalize(&mut Memory::default(), &behavior(0), 3, 0, 1, 5, now);
        assert_eq!((n.replicas, n.able.0, n.limited), (1, "ReadyForNewScale", (true, "TooFewReplicas", "the desired replica count is less than the minimum replica count")));
        let n = normalize(&mut Memory::default(), &behavior(0), 3, 2, 1, 5, now);
        assert_eq!((n.replicas, n.limited.0, n.limited.1), (2, false, "DesiredWithinRange"));
    }

    #[test]
    fn recent_scale_ups_use_up_the_rate() {
        let now = Instant::now();
        let mut memory = Memory::default();
        remember_change(&mut memory, &behavior(300), 2, 6, now - Duration::from_secs(5));
        // 6 now, 2 at the period's start: max(2 + 4, 2 * 2) = 6 allows no more yet.
        let n = normalize(&mut memory, &behavior(300), 6, 10, 1, 20, now);
        assert_eq!((n.replicas, n.limited.1), (6, "ScaleUpLimit"));
        // Once the period has passed the step is measured from 6 again.
        let later = now + Duration::from_secs(15);
        assert_eq!(normalize(&mut memory, &behavior(300), 6, 10, 1, 20, later).replicas, 10);
        let disabled = HPAScalingRules { select_policy: Some("Disabled".into()), ..behavior(0).scale_up.unwrap() };
        assert_eq!(rate_limit(2, &Memory::default(), &disabled, true, now), 2);
        let min = HPAScalingRules {
            select_policy: Some("Min".into()),
            policies: Some(vec![HPAScalingPolicy { type_: "Pods".into(), value: 1, period_seconds: 60 }, HPAScalingPolicy { type_: "Percent".into(), value: 50, period_seconds: 60 }]),
            ..Default::default()
        };
        assert_eq!(rate_limit(10, &Memory::default(), &min, false, now), 9, "max(10 - 1, 10 * 0.5)");
    }

    #[test]
    fn the_stabilization_window_keeps_the_highest_recent_recommendation() {
        let now = Instant::now();
        let mut memory = Memory { recommendations: vec![(now - Duration::from_secs(60), 4)], ..Default::default() };
        let n = normalize(&mut memory, &behavior(300), 4, 1, 1, 10, now);
        assert_eq!((n.replicas, n.able.0), (4, "ScaleDownStabilized"));
        // With no window the same recommendation scales down at once.
        let mut memory = Memory { recommendations: vec![(now - Duration::from_secs(60), 4)], ..Default::default() };
        assert_eq!(normalize(&mut memory, &behavior(0), 4, 1, 1, 10, now).replicas, 1);
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_holds() {
        let mut status = HorizontalPodAutoscalerStatus::default();
        set_condition(&mut status, "ScalingActive", false, "FailedGetResourceMetric", "no metrics");
        let old = Time(at(100));
        status.conditions.as_mut().unwrap()[0].last_transition_time = Some(old.clone());
        set_condition(&mut status, "ScalingActive", false, "FailedGetResourceMetric", "still no metrics");
        assert_eq!(status.conditions.as_ref().unwrap()[0].last_transition_time, Some(old.clone()));
        set_condition(&mut status, "ScalingActive", true, "ValidMetricFound", "found");
        let condition = &status.conditions.as_ref().unwrap()[0];
        assert_ne!(condition.last_transition_time, Some(old));
        assert_eq!((condition.status.as_str(), condition.reason.as_deref(), status.conditions.as_ref().unwrap().len()), ("True", Some("ValidMetricFound"), 1));
    }

    #[test]
    fn metrics_name_themselves_as_upstream_events_do() {
        let pods = [running("a", "100m")];
        let list = Ok(json!({ "items": [ { "metadata": { "name": "a" }, "containers": [ { "name": "app", "usage": { "cpu": "150m" } } ] } ] }));
        let spec = MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource { name: "cpu".into(), target: MetricTarget { type_: "Utilization".into(), average_utilization: Some(50), ..Default::default() } }),
            ..Default::default()
        };
        let proposal = measure(&spec, 1, &pods, &list, jiff::Timestamp::now()).ok().unwrap();
        assert_eq!((proposal.replicas, proposal.metric.as_str()), (3, "cpu resource utilization (percentage of request)"));
        let current = &proposal.status.resource.as_ref().unwrap().current;
        assert_eq!((current.average_utilization, current.average_value.as_ref().map(|q| q.0.as_str())), (Some(150), Some("150m")));
        let failure = measure(&spec, 1, &pods, &Ok(json!({ "items": [] })), jiff::Timestamp::now()).err().unwrap();
        assert_eq!((failure.reason, failure.error.as_str()), ("FailedGetResourceMetric", "unable to get metrics for resource cpu: no metrics returned from resource metrics API"));
        let pods_metric = MetricSpec { type_: "Pods".into(), ..Default::default() };
        assert_eq!(measure(&pods_metric, 1, &pods, &list, jiff::Timestamp::now()).err().unwrap().reason, "FailedGetPodsMetric");
    }

    #[test]
    fn scale_paths_follow_the_target_kind() {
        assert_eq!(scale_path("ns", "apps/v1", "Deployment", "web"), "/apis/apps/v1/namespaces/ns/deployments/web/scale");
        assert_eq!(scale_path("ns", "v1", "ReplicationController", "rc"), "/api/v1/namespaces/ns/replicationcontrollers/rc/scale");
    }
}

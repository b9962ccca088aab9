//! The HorizontalPodAutoscaler controller (autoscaling/v2, resource metrics):
//! every 15 s it reads the target's `/scale`, the pods' CPU and memory usage
//! from `metrics.k8s.io`, and their requests, and sets the replica count that
//! brings average utilization to the target, within the HPA's bounds and its
//! scaling behavior (stabilization windows, rate policies), as upstream's
//! replica calculator does.

use super::Context;
use super::pods::is_active;
use crate::api::quantity::Quantity;
use crate::api::selector::LabelSelector;
use crate::runtime::{Controller, Error, EventType, Informer, Next, Reconciler, Recorder, reference, split_key};
use async_trait::async_trait;
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often every HPA is evaluated (upstream's --horizontal-pod-autoscaler-sync-period).
const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Changes within this fraction of the target are ignored.
const TOLERANCE: f64 = 0.1;

struct HpaController {
    hpas: Informer<HorizontalPodAutoscaler>,
    pods: Informer<Pod>,
    client: kube::Client,
    recorder: Recorder,
    /// Per HPA: past recommendations, for the stabilization windows.
    recommendations: Mutex<HashMap<String, Vec<(Instant, i32)>>>,
    /// Per HPA: past scale changes, for the rate policies.
    changes: Mutex<HashMap<String, Vec<(Instant, i32)>>>,
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
        recommendations: Mutex::new(HashMap::new()),
        changes: Mutex::new(HashMap::new()),
    });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

/// The plural of a scalable kind, for its `/scale` path.
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

/// What one resource metric says: average utilization of requests, and the replica count it asks for.
struct Measured {
    name: String,
    utilization: Option<i32>,
    average: Quantity,
    desired: i32,
}

fn request_of(pod: &Pod, resource: &str) -> Option<Quantity> {
    let mut total = Quantity::zero();
    for c in &pod.spec.as_ref()?.containers {
        let request = c.resources.as_ref()?.requests.as_ref()?.get(resource)?;
        total = total + Quantity::parse(&request.0)?;
    }
    Some(total)
}

/// Upstream's replica calculator for one resource metric (simplified: pods
/// without metrics or not ready are left out of the average).
fn calculate(current: i32, pods: &[Arc<Pod>], usage: &BTreeMap<String, Quantity>, resource: &str, target_utilization: Option<i32>, target_average: Option<&Quantity>) -> Option<Measured> {
    let (mut used, mut requested, mut counted) = (0f64, 0f64, 0i32);
    for pod in pods {
        let Some(u) = usage.get(&pod.name_any()) else { continue };
        used += u.as_f64();
        if let Some(r) = request_of(pod, resource) {
            requested += r.as_f64();
        } else if target_utilization.is_some() {
            return None; // Utilization needs every pod to request the resource.
        }
        counted += 1;
    }
    if counted == 0 {
        return None;
    }
    let average = used / f64::from(counted);
    let (ratio, utilization) = match (target_utilization, target_average) {
        (Some(target), _) if requested > 0.0 => {
            let utilization = used * 100.0 / requested;
            (utilization / f64::from(target), Some(utilization.round() as i32))
        }
        (_, Some(target)) if target.as_f64() > 0.0 => (average / target.as_f64(), None),
        _ => return None,
    };
    let desired = if (ratio - 1.0).abs() <= TOLERANCE { current } else { (ratio * f64::from(counted)).ceil() as i32 };
    Some(Measured { name: resource.to_owned(), utilization, average: Quantity::from_millis((average * 1000.0).round() as i64), desired })
}

/// Bounds a change by the behavior's policies for `rules` over what changed recently.
fn rate_limited(rules: &HPAScalingRules, current: i32, desired: i32, past: &[(Instant, i32)], up: bool) -> i32 {
    if rules.select_policy.as_deref() == Some("Disabled") {
        return current;
    }
    let limits: Vec<i32> = rules
        .policies
        .iter()
        .flatten()
        .map(|p| {
            let window = Duration::from_secs(p.period_seconds.max(1) as u64);
            let moved: i32 = past.iter().filter(|(at, _)| at.elapsed() < window).map(|(_, delta)| if up { (*delta).max(0) } else { (-*delta).max(0) }).sum();
            let base = if up { current - moved } else { current + moved };
            let step = match p.type_.as_str() {
                "Percent" => (f64::from(base) * f64::from(p.value) / 100.0).ceil() as i32,
                _ => p.value,
            };
            if up { base + step } else { base - step }
        })
        .collect();
    if limits.is_empty() {
        return desired;
    }
    let pick_max = rules.select_policy.as_deref() != Some("Min");
    let bound = if up == pick_max { limits.iter().copied().max() } else { limits.iter().copied().min() }.unwrap_or(desired);
    if up { desired.min(bound.max(current)) } else { desired.max(bound.min(current)) }
}

#[async_trait]
impl Reconciler for HpaController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(hpa) = self.hpas.get(key) else {
            self.recommendations.lock().expect("lock").remove(key);
            self.changes.lock().expect("lock").remove(key);
            return Ok(Next::Done);
        };
        let (namespace, _) = split_key(key);
        let spec = hpa.spec.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let path = scale_path(namespace, target.api_version.as_deref().unwrap_or("apps/v1"), &target.kind, &target.name);
        let mut conditions = Vec::new();
        let now = crate::api::object::now_rfc3339();
        let condition = |kind: &str, ok: bool, reason: &str, message: String| {
            json!({ "type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message, "lastTransitionTime": now })
        };
        let scale = match get_json(&self.client, &path).await {
            Ok(s) => s,
            Err(e) => {
                conditions.push(condition("AbleToScale", false, "FailedGetScale", format!("the HPA controller was unable to get the target's current scale: {e}")));
                self.write_status(&hpa, json!({ "conditions": conditions })).await?;
                return Ok(Next::After(SYNC_PERIOD));
            }
        };
        let current = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0) as i32;
        let selector_text = scale.pointer("/status/selector").and_then(Value::as_str).unwrap_or("");
        let selector = LabelSelector::parse(selector_text).unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_namespace(namespace)
            .into_iter()
            .filter(|p| is_active(p) && selector.matches(&p.labels().clone()))
            .collect();
        conditions.push(condition("AbleToScale", true, "SucceededGetScale", "the HPA controller was able to get the target's current scale".into()));
        let metrics_path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={}", form_urlencoded::byte_serialize(selector_text.as_bytes()).collect::<String>());
        let pod_metrics = get_json(&self.client, &metrics_path).await.ok();
        let mut measured = Vec::new();
        for metric in spec.metrics.iter().flatten().filter_map(|m| m.resource.as_ref()) {
            let usage: BTreeMap<String, Quantity> = pod_metrics
                .as_ref()
                .and_then(|m| m.get("items"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|item| {
                    let name = item.pointer("/metadata/name")?.as_str()?.to_owned();
                    let mut total = Quantity::zero();
                    for c in item.get("containers")?.as_array()? {
                        total = total + Quantity::parse(c.pointer(&format!("/usage/{}", metric.name))?.as_str()?)?;
                    }
                    Some((name, total))
                })
                .collect();
            let target_average = metric.target.average_value.as_ref().and_then(|q| Quantity::parse(&q.0));
            if let Some(m) = calculate(current, &pods, &usage, &metric.name, metric.target.average_utilization, target_average.as_ref()) {
                measured.push(m);
            }
        }
        if measured.is_empty() {
            conditions.push(condition("ScalingActive", false, "FailedGetResourceMetric", "the HPA was unable to compute the replica count: no metrics returned from resource metrics API".into()));
            self.write_status(&hpa, json!({ "currentReplicas": current, "desiredReplicas": current, "conditions": conditions })).await?;
            return Ok(Next::After(SYNC_PERIOD));
        }
        conditions.push(condition("ScalingActive", true, "ValidMetricFound", "the HPA was able to successfully calculate a replica count".into()));
        let recommendation = measured.iter().map(|m| m.desired).max().unwrap_or(current);
        let (min, max) = (spec.min_replicas.unwrap_or(1), spec.max_replicas);
        // Stabilization: scale down only to the highest recommendation of the window, up to the lowest.
        let behavior = spec.behavior.clone().unwrap_or_default();
        let window = |rules: &Option<HPAScalingRules>, default: i32| Duration::from_secs(rules.as_ref().and_then(|r| r.stabilization_window_seconds).unwrap_or(default).max(0) as u64);
        let (down_window, up_window) = (window(&behavior.scale_down, 300), window(&behavior.scale_up, 0));
        let stabilized = {
            let mut all = self.recommendations.lock().expect("lock");
            let history = all.entry(key.to_owned()).or_default();
            history.retain(|(at, _)| at.elapsed() < down_window.max(up_window));
            history.push((Instant::now(), recommendation));
            let up_floor = history.iter().filter(|(at, _)| at.elapsed() <= up_window).map(|(_, r)| *r).min().unwrap_or(recommendation);
            let down_ceiling = history.iter().filter(|(at, _)| at.elapsed() <= down_window).map(|(_, r)| *r).max().unwrap_or(recommendation);
            if recommendation > current { up_floor.max(current) } else { down_ceiling.min(current) }
        };
        let past = self.changes.lock().expect("lock").get(key).cloned().unwrap_or_default();
        let limited = match stabilized.cmp(&current) {
            std::cmp::Ordering::Greater => rate_limited(behavior.scale_up.as_ref().unwrap_or(&HPAScalingRules::default()), current, stabilized, &past, true),
            std::cmp::Ordering::Less => rate_limited(behavior.scale_down.as_ref().unwrap_or(&HPAScalingRules::default()), current, stabilized, &past, false),
            std::cmp::Ordering::Equal => current,
        };
        let desired = limited.clamp(min, max.max(min));
        conditions.push(condition(
            "ScalingLimited",
            desired != limited,
            if desired != limited { "TooManyReplicas" } else { "DesiredWithinRange" },
            if desired != limited { format!("the desired replica count is outside the range {min}-{max}") } else { "the desired count is within the acceptable range".into() },
        ));
        let mut status = json!({
            "currentReplicas": current,
            "desiredReplicas": desired,
            "currentMetrics": measured.iter().map(|m| {
                let mut current = json!({ "averageValue": m.average.to_string() });
                if let Some(u) = m.utilization {
                    current["averageUtilization"] = json!(u);
                }
                json!({ "type": "Resource", "resource": { "name": m.name, "current": current } })
            }).collect::<Vec<_>>(),
            "conditions": conditions,
            "observedGeneration": hpa.metadata.generation,
        });
        if desired != current {
            let patch = json!({ "spec": { "replicas": desired } });
            let request = http::Request::patch(&path).header("content-type", "application/merge-patch+json").body(serde_json::to_vec(&patch)?).expect("a valid request");
            self.client.request::<Value>(request).await?;
            self.changes.lock().expect("lock").entry(key.to_owned()).or_default().push((Instant::now(), desired - current));
            let reason = measured.iter().map(|m| format!("{} resource utilization (percentage of request) {}", m.name, if desired > current { "above target" } else { "below target" })).collect::<Vec<_>>().join(", ");
            self.recorder.record(reference(hpa.as_ref()), EventType::Normal, "SuccessfulRescale", format!("New size: {desired}; reason: {reason}"));
            status["lastScaleTime"] = json!(crate::api::object::now_rfc3339());
        }
        self.write_status(&hpa, status).await?;
        Ok(Next::After(SYNC_PERIOD))
    }
}

impl HpaController {
    async fn write_status(&self, hpa: &HorizontalPodAutoscaler, status: Value) -> Result<(), Error> {
        let api: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), &hpa.namespace().unwrap_or_default());
        api.patch_status(&hpa.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::HPAScalingPolicy;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};

    fn pod(name: &str, cpu_request: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_owned(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(cpu_request.into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        })
    }

    fn usage(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs.iter().map(|(n, q)| ((*n).to_owned(), Quantity::parse(q).unwrap())).collect()
    }

    #[test]
    fn utilization_above_target_asks_for_more_replicas() {
        let pods = [pod("a", "100m"), pod("b", "100m")];
        // 90% used against a 50% target: 2 * 1.8 = 3.6 → 4.
        let m = calculate(2, &pods, &usage(&[("a", "90m"), ("b", "90m")]), "cpu", Some(50), None).unwrap();
        assert_eq!((m.utilization, m.desired), (Some(90), 4));
        // Within the 10% tolerance nothing changes.
        let m = calculate(2, &pods, &usage(&[("a", "52m"), ("b", "52m")]), "cpu", Some(50), None).unwrap();
        assert_eq!(m.desired, 2);
        // Low usage asks for fewer.
        let m = calculate(2, &pods, &usage(&[("a", "10m"), ("b", "10m")]), "cpu", Some(50), None).unwrap();
        assert_eq!(m.desired, 1);
    }

    #[test]
    fn no_metrics_or_missing_requests_give_no_recommendation() {
        assert!(calculate(2, &[pod("a", "100m")], &usage(&[]), "cpu", Some(50), None).is_none());
        let no_request = Arc::new(Pod { spec: Some(PodSpec { containers: vec![Container { name: "c".into(), ..Default::default() }], ..Default::default() }), ..(*pod("a", "1")).clone() });
        assert!(calculate(1, &[no_request], &usage(&[("a", "10m")]), "cpu", Some(50), None).is_none());
    }

    #[test]
    fn scale_up_policies_bound_the_step() {
        let rules = HPAScalingRules {
            select_policy: Some("Max".into()),
            policies: Some(vec![HPAScalingPolicy { type_: "Pods".into(), value: 4, period_seconds: 15 }, HPAScalingPolicy { type_: "Percent".into(), value: 100, period_seconds: 15 }]),
            ..Default::default()
        };
        assert_eq!(rate_limited(&rules, 2, 20, &[], true), 6, "max(2+4, 2*2)");
        assert_eq!(rate_limited(&rules, 10, 40, &[], true), 20, "max(10+4, 10*2)");
        let disabled = HPAScalingRules { select_policy: Some("Disabled".into()), ..rules };
        assert_eq!(rate_limited(&disabled, 2, 20, &[], true), 2);
    }

    #[test]
    fn scale_paths_follow_the_target_kind() {
        assert_eq!(scale_path("ns", "apps/v1", "Deployment", "web"), "/apis/apps/v1/namespaces/ns/deployments/web/scale");
        assert_eq!(scale_path("ns", "v1", "ReplicationController", "rc"), "/api/v1/namespaces/ns/replicationcontrollers/rc/scale");
    }
}

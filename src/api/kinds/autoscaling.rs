//! autoscaling/v2: HorizontalPodAutoscalers, with upstream's defaults (CPU at
//! 80% when no metric is given, the default scaling behavior) and columns.

use crate::api::error::FieldError;
use crate::api::registry::{Column, Resource, ResourceBuilder, Subresource};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, MetricSpec, MetricTarget, ResourceMetricSource,
};
use serde_json::json;

pub fn resources() -> Vec<Resource> {
    vec![horizontalpodautoscalers()]
}

fn policy(kind: &str, value: i32) -> HPAScalingPolicy {
    HPAScalingPolicy { type_: kind.into(), value, period_seconds: 15 }
}

/// The behavior upstream gives an HPA that states none.
fn default_behavior(behavior: &mut HorizontalPodAutoscalerBehavior) {
    let up = behavior.scale_up.get_or_insert_with(HPAScalingRules::default);
    up.stabilization_window_seconds.get_or_insert(0);
    up.select_policy.get_or_insert_with(|| "Max".into());
    up.policies.get_or_insert_with(|| vec![policy("Pods", 4), policy("Percent", 100)]);
    let down = behavior.scale_down.get_or_insert_with(HPAScalingRules::default);
    down.stabilization_window_seconds.get_or_insert(300);
    down.select_policy.get_or_insert_with(|| "Max".into());
    down.policies.get_or_insert_with(|| vec![policy("Percent", 100)]);
}

/// `cpu: 45%/50%`, as kubectl shows an HPA's targets.
fn targets(hpa: &HorizontalPodAutoscaler) -> String {
    let spec = hpa.spec.as_ref();
    let current = hpa.status.as_ref().and_then(|s| s.current_metrics.as_ref());
    let shown: Vec<String> = spec
        .and_then(|s| s.metrics.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let resource = m.resource.as_ref()?;
            let now = current
                .and_then(|c| c.iter().find_map(|c| c.resource.as_ref().filter(|r| r.name == resource.name)))
                .and_then(|r| r.current.average_utilization.map(|u| format!("{u}%")).or_else(|| r.current.average_value.as_ref().map(|v| v.0.clone())));
            let target = resource.target.average_utilization.map(|u| format!("{u}%")).or_else(|| resource.target.average_value.as_ref().map(|v| v.0.clone()))?;
            Some(format!("{}: {}/{target}", resource.name, now.unwrap_or_else(|| "<unknown>".into())))
        })
        .collect();
    if shown.is_empty() { "<none>".into() } else { shown.join(", ") }
}

fn horizontalpodautoscalers() -> Resource {
    ResourceBuilder::<HorizontalPodAutoscaler>::new()
        .short_names(&["hpa"])
        .categories(&["all"])
        .subresources(&[Subresource::Status])
        .tracks_generation()
        .default(|hpa| {
            let Some(spec) = hpa.spec.as_mut() else { return };
            spec.min_replicas.get_or_insert(1);
            if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
                spec.metrics = Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget { type_: "Utilization".into(), average_utilization: Some(80), ..Default::default() },
                    }),
                    ..Default::default()
                }]);
            }
            default_behavior(spec.behavior.get_or_insert_with(Default::default));
        })
        .validate(|hpa| {
            let Some(spec) = &hpa.spec else { return vec![FieldError::required("spec", "")] };
            let mut errors = Vec::new();
            if spec.scale_target_ref.kind.is_empty() {
                errors.push(FieldError::required("spec.scaleTargetRef.kind", ""));
            }
            if spec.scale_target_ref.name.is_empty() {
                errors.push(FieldError::required("spec.scaleTargetRef.name", ""));
            }
            let min = spec.min_replicas.unwrap_or(1);
            if min < 1 {
                errors.push(FieldError::invalid("spec.minReplicas", min, "must be greater than or equal to 1"));
            }
            if spec.max_replicas < min {
                errors.push(FieldError::invalid("spec.maxReplicas", spec.max_replicas, "must be greater than or equal to `minReplicas`"));
            }
            for (i, m) in spec.metrics.iter().flatten().enumerate() {
                if m.type_ == "Resource" && m.resource.is_none() {
                    errors.push(FieldError::required(format!("spec.metrics[{i}].resource"), "must populate information for the given metric source"));
                }
                if let Some(u) = m.resource.as_ref().and_then(|r| r.target.average_utilization).filter(|u| *u <= 0) {
                    errors.push(FieldError::invalid(format!("spec.metrics[{i}].resource.target.averageUtilization"), u, "must be greater than 0"));
                }
            }
            errors
        })
        .columns(vec![
            Column::name(),
            Column::new("Reference", "string", "The reference to the object being scaled.", |h: &HorizontalPodAutoscaler| {
                json!(h.spec.as_ref().map(|s| format!("{}/{}", s.scale_target_ref.kind, s.scale_target_ref.name)).unwrap_or_default())
            }),
            Column::new("Targets", "string", "The current and target metrics.", |h: &HorizontalPodAutoscaler| json!(targets(h))),
            Column::new("MinPods", "string", "The lower limit for the number of pods.", |h: &HorizontalPodAutoscaler| {
                json!(h.spec.as_ref().and_then(|s| s.min_replicas).unwrap_or(1).to_string())
            }),
            Column::new("MaxPods", "integer", "The upper limit for the number of pods.", |h: &HorizontalPodAutoscaler| {
                json!(h.spec.as_ref().map_or(0, |s| s.max_replicas))
            }),
            Column::new("Replicas", "integer", "The current number of replicas.", |h: &HorizontalPodAutoscaler| {
                json!(h.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0))
            }),
            Column::age(),
        ])
        .build()
}

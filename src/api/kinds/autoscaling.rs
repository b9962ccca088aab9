//! autoscaling/v2: HorizontalPodAutoscalers, with upstream's defaults (CPU at
//! 80% when no metric is given, the default scaling behavior) and columns.

use crate::api::error::FieldError;
use crate::api::registry::{Column, Resource, ResourceBuilder, Subresource};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, MetricSpec, MetricTarget, MetricValueStatus,
    ResourceMetricSource,
};
use serde_json::json;

pub fn resources() -> Vec<Resource> {
    vec![horizontalpodautoscalers()]
}

fn policy(kind: &str, value: i32) -> HPAScalingPolicy {
    HPAScalingPolicy { type_: kind.into(), value, period_seconds: 15 }
}

/// Fills in the scaling rules upstream gives an HPA that states none (also
/// what the controller assumes of an HPA stored without them).
pub fn default_behavior(behavior: &mut HorizontalPodAutoscalerBehavior) {
    let up = behavior.scale_up.get_or_insert_with(HPAScalingRules::default);
    up.stabilization_window_seconds.get_or_insert(0);
    up.select_policy.get_or_insert_with(|| "Max".into());
    up.policies.get_or_insert_with(|| vec![policy("Pods", 4), policy("Percent", 100)]);
    let down = behavior.scale_down.get_or_insert_with(HPAScalingRules::default);
    down.stabilization_window_seconds.get_or_insert(300);
    down.select_policy.get_or_insert_with(|| "Max".into());
    down.policies.get_or_insert_with(|| vec![policy("Percent", 100)]);
}

/// A quantity as upstream prints it (canonical form), or as written when it does not parse.
fn canonical(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> String {
    crate::api::quantity::Quantity::parse(&q.0).map_or_else(|| q.0.clone(), |q| q.to_string())
}

/// The Targets column: each metric's current value against its target
/// (`cpu: 45%/50%`, `memory: 12Mi/100Mi`, `3/10 (avg)`), matching statuses to
/// specs by position as upstream does; two at most, then `+ N more...`.
fn targets(hpa: &HorizontalPodAutoscaler) -> String {
    let specs = hpa.spec.as_ref().and_then(|s| s.metrics.as_deref()).unwrap_or_default();
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = hpa.status.as_ref().and_then(|s| s.current_metrics.as_deref()).unwrap_or_default();
    let unknown = || "<unknown>".to_owned();
    let shown: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = statuses.get(i);
            let resource = |name: &str, target: &MetricTarget, current: Option<&MetricValueStatus>| match &target.average_value {
                Some(value) => format!("{name}: {}/{}", current.and_then(|c| c.average_value.as_ref()).map_or_else(unknown, canonical), canonical(value)),
                None => {
                    let now = current.and_then(|c| c.average_utilization).map_or_else(unknown, |u| format!("{u}%"));
                    format!("{name}: {now}/{}", target.average_utilization.map_or_else(|| "<auto>".to_owned(), |u| format!("{u}%")))
                }
            };
            let object = |target: &MetricTarget, current: Option<&MetricValueStatus>| match &target.average_value {
                Some(value) => format!("{}/{} (avg)", current.and_then(|c| c.average_value.as_ref()).map_or_else(unknown, canonical), canonical(value)),
                None => format!("{}/{}", current.and_then(|c| c.value.as_ref()).map_or_else(unknown, canonical), target.value.as_ref().map_or_else(unknown, canonical)),
            };
            match (spec.type_.as_str(), &spec.resource, &spec.container_resource, &spec.pods, &spec.object, &spec.external) {
                ("Resource", Some(r), ..) => resource(&r.name, &r.target, status.and_then(|s| s.resource.as_ref()).map(|r| &r.current)),
                ("ContainerResource", _, Some(c), ..) => resource(&c.name, &c.target, status.and_then(|s| s.container_resource.as_ref()).map(|c| &c.current)),
                ("Pods", _, _, Some(p), ..) => {
                    let now = status.and_then(|s| s.pods.as_ref()).and_then(|p| p.current.average_value.as_ref()).map_or_else(unknown, canonical);
                    format!("{now}/{}", p.target.average_value.as_ref().map_or_else(unknown, canonical))
                }
                ("Object", .., Some(o), _) => object(&o.target, status.and_then(|s| s.object.as_ref()).map(|o| &o.current)),
                ("External", .., Some(e)) => object(&e.target, status.and_then(|s| s.external.as_ref()).map(|e| &e.current)),
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    match shown.len() {
        n if n > 2 => format!("{} + {} more...", shown[..2].join(", "), n - 2),
        _ => shown.join(", "),
    }
}

/// Upstream's checks of one direction's scaling rules.
fn scaling_rules_errors(rules: &HPAScalingRules, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match rules.stabilization_window_seconds {
        Some(w) if w < 0 => errors.push(FieldError::invalid(format!("{path}.stabilizationWindowSeconds"), w, "must be greater than or equal to zero")),
        Some(w) if w > 3600 => errors.push(FieldError::invalid(format!("{path}.stabilizationWindowSeconds"), w, "must be less than or equal to 3600")),
        _ => {}
    }
    if let Some(select) = rules.select_policy.as_deref().filter(|p| !["Max", "Min", "Disabled"].contains(p)) {
        errors.push(FieldError::not_supported(format!("{path}.selectPolicy"), select, &["Disabled", "Max", "Min"]));
    }
    let policies = rules.policies.as_deref().unwrap_or_default();
    if policies.is_empty() {
        errors.push(FieldError::required(format!("{path}.policies"), "must specify at least one Policy"));
    }
    for (i, p) in policies.iter().enumerate() {
        let at = format!("{path}.policies[{i}]");
        if p.type_ != "Pods" && p.type_ != "Percent" {
            errors.push(FieldError::not_supported(format!("{at}.type"), &p.type_, &["Percent", "Pods"]));
        }
        if p.value <= 0 {
            errors.push(FieldError::invalid(format!("{at}.value"), p.value, "must be greater than zero"));
        }
        if p.period_seconds <= 0 {
            errors.push(FieldError::invalid(format!("{at}.periodSeconds"), p.period_seconds, "must be greater than zero"));
        } else if p.period_seconds > 1800 {
            errors.push(FieldError::invalid(format!("{at}.periodSeconds"), p.period_seconds, "must be less than or equal to 1800"));
        }
    }
    errors
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
            if let Some(behavior) = &spec.behavior {
                for (direction, rules) in [("scaleUp", &behavior.scale_up), ("scaleDown", &behavior.scale_down)] {
                    errors.extend(rules.iter().flat_map(|r| scaling_rules_errors(r, &format!("spec.behavior.{direction}"))));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn hpa(metrics: Value, current: Value) -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({
            "metadata": { "name": "web" },
            "spec": { "scaleTargetRef": { "kind": "Deployment", "name": "web" }, "maxReplicas": 3, "metrics": metrics },
            "status": { "desiredReplicas": 1, "currentMetrics": current },
        }))
        .unwrap()
    }

    fn cpu(target: Value) -> Value {
        json!({ "type": "Resource", "resource": { "name": "cpu", "target": target } })
    }

    #[test]
    fn targets_pair_statuses_with_specs_by_position() {
        let utilization = cpu(json!({ "type": "Utilization", "averageUtilization": 50 }));
        let measured = json!({ "type": "Resource", "resource": { "name": "cpu", "current": { "averageUtilization": 197, "averageValue": "98m" } } });
        assert_eq!(targets(&hpa(json!([utilization]), json!([measured]))), "cpu: 197%/50%");
        assert_eq!(targets(&hpa(json!([utilization]), json!(null))), "cpu: <unknown>/50%");
        // A metric that failed leaves an empty status in its place; values print as the controller wrote them (decimal).
        let memory = json!({ "type": "Resource", "resource": { "name": "memory", "target": { "type": "AverageValue", "averageValue": "100Mi" } } });
        let memory_now = json!({ "type": "Resource", "resource": { "name": "memory", "current": { "averageValue": "12582912" } } });
        assert_eq!(targets(&hpa(json!([utilization, memory]), json!([{ "type": "" }, memory_now]))), "cpu: <unknown>/50%, memory: 12582912/100Mi");
        let pods = json!({ "type": "Pods", "pods": { "metric": { "name": "qps" }, "target": { "type": "AverageValue", "averageValue": "10" } } });
        assert_eq!(targets(&hpa(json!([utilization, memory, pods]), json!(null))), "cpu: <unknown>/50%, memory: <unknown>/100Mi + 1 more...");
        assert_eq!(targets(&hpa(json!([pods]), json!(null))), "<unknown>/10");
    }

    #[test]
    fn scaling_rules_need_policies_within_upstream_bounds() {
        let rules = |policies: Value, window: i32| serde_json::from_value::<HPAScalingRules>(json!({ "policies": policies, "stabilizationWindowSeconds": window })).unwrap();
        assert!(scaling_rules_errors(&rules(json!([{ "type": "Pods", "value": 4, "periodSeconds": 15 }]), 0), "spec.behavior.scaleUp").is_empty());
        let errors = scaling_rules_errors(&rules(json!([]), 3601), "spec.behavior.scaleDown");
        let fields: Vec<String> = errors.iter().map(|e| e.message()).collect();
        assert_eq!(errors.len(), 2, "{fields:?}");
        let errors = scaling_rules_errors(&rules(json!([{ "type": "Nodes", "value": 0, "periodSeconds": 1801 }]), 0), "spec.behavior.scaleUp");
        assert_eq!(errors.len(), 3, "{:?}", errors.iter().map(|e| e.message()).collect::<Vec<_>>());
    }
}

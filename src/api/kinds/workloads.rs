//! Pods and the controllers' kinds that own them: ReplicationControllers,
//! ReplicaSets and Deployments. The pod-spec rules they share live in `pods.rs`.

use super::pods;
use super::{containers_and_images, labels_string, or_none, selector_string};
use crate::api::error::FieldError;
use crate::api::registry::{Column, Resource, ResourceBuilder, Subresource};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use std::collections::BTreeMap;

pub fn pods() -> Resource {
    ResourceBuilder::<Pod>::new()
        .short_names(&["po"])
        .categories(&["all"])
        .subresources(&[
            Subresource::Status,
            Subresource::Binding,
            Subresource::Log,
            Subresource::Exec,
            Subresource::Attach,
            Subresource::PortForward,
        ])
        .selectable_fields(&[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ])
        .returns_deleted_object()
        .default(pods::default_pod)
        .on_create(pods::prepare_pod_create)
        .validate(pods::validate_pod)
        .validate_update(pods::validate_pod_update)
        .grace_period(pods::grace_period)
        .columns(vec![
            Column::name(),
            Column::new("Ready", "string", "The aggregate readiness state of this pod for accepting traffic.", |p: &Pod| json!(pods::ready_cell(p))),
            Column::new("Status", "string", "The aggregate status of the containers in this pod.", |p: &Pod| json!(pods::status_cell(p))),
            Column::new("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", |p: &Pod| json!(pods::restarts_cell(p))),
            Column::age(),
            Column::new("IP", "string", "IP address allocated to the pod. Routable at least within the cluster.", |p: &Pod| {
                or_none(p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default())
            })
            .wide(),
            Column::new("Node", "string", "Name of the Node this pod is assigned to.", |p: &Pod| {
                or_none(p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default())
            })
            .wide(),
            Column::new("Nominated Node", "string", "Name of the node this pod is nominated to run on.", |p: &Pod| {
                or_none(p.status.as_ref().and_then(|s| s.nominated_node_name.clone()).unwrap_or_default())
            })
            .wide(),
            Column::new("Readiness Gates", "string", "The readiness gates of the pod.", |p: &Pod| json!(pods::readiness_gates_cell(p))).wide(),
        ])
        .build()
}

pub fn resources() -> Vec<Resource> {
    vec![replicationcontrollers(), deployments(), replicasets()]
}

pub(super) fn default_template(template: Option<&mut PodTemplateSpec>) {
    if let Some(spec) = template.and_then(|t| t.spec.as_mut()) {
        pods::default_pod_spec(spec);
    }
}

/// The rules every replicated workload shares: a non-negative replica count and a
/// valid template whose labels the selector matches (`kind` names the workload
/// in upstream's messages).
pub(super) fn validate_replicated(
    replicas: Option<i32>,
    selector_matches: Option<bool>,
    template: Option<&PodTemplateSpec>,
    kind: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(r) = replicas.filter(|r| *r < 0) {
        errors.push(FieldError::invalid("spec.replicas", r, "must be greater than or equal to 0"));
    }
    match template {
        None => errors.push(FieldError::required("spec.template", "")),
        Some(t) => {
            if selector_matches == Some(false) {
                errors.push(selector_mismatch(t));
            }
            errors.extend(pods::validate_template(t, "spec.template", kind));
        }
    }
    errors
}

/// The error for a template whose labels its workload's selector does not match.
pub(super) fn selector_mismatch(template: &PodTemplateSpec) -> FieldError {
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    FieldError::invalid(
        "spec.template.metadata.labels",
        format!("map[string]string{{{}}}", labels.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect::<Vec<_>>().join(", ")),
        "`selector` does not match template `labels`",
    )
}

/// Whether a LabelSelector matches a template's labels; `None` if the selector
/// is empty or invalid (`owner` names the workload in the error, as upstream's).
pub(super) fn selector_matches_template(selector: &LabelSelector, template: Option<&PodTemplateSpec>, errors: &mut Vec<FieldError>, owner: &str) -> Option<bool> {
    let labels = template.and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    if selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty) && selector.match_expressions.as_ref().is_none_or(Vec::is_empty) {
        errors.push(FieldError::invalid("spec.selector", "{}", format!("empty selector is invalid for {owner}")));
        return None;
    }
    match crate::api::selector::LabelSelector::from_k8s(selector) {
        Ok(s) => Some(s.matches(&labels)),
        Err(e) => {
            errors.push(FieldError::invalid("spec.selector", selector_string(selector), e));
            None
        }
    }
}

pub(super) fn selector_immutable(new: Option<&LabelSelector>, old: Option<&LabelSelector>) -> Vec<FieldError> {
    if new != old {
        let shown = new.map(selector_string).unwrap_or_default();
        return vec![FieldError::invalid("spec.selector", shown, "field is immutable")];
    }
    Vec::new()
}

fn replicationcontrollers() -> Resource {
    ResourceBuilder::<ReplicationController>::new()
        .short_names(&["rc"])
        .categories(&["all"])
        .subresources(&[Subresource::Status, Subresource::Scale])
        .tracks_generation()
        .selectable_fields(&["status.replicas"])
        .default(|rc| {
            let Some(spec) = rc.spec.as_mut() else { return };
            spec.replicas.get_or_insert(1);
            spec.min_ready_seconds.get_or_insert(0);
            let template_labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
            if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
                spec.selector = template_labels.clone();
            }
            if rc.metadata.labels.as_ref().is_none_or(BTreeMap::is_empty) {
                rc.metadata.labels = template_labels;
            }
            default_template(spec.template.as_mut());
        })
        .validate(|rc| {
            let Some(spec) = rc.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
            let mut errors = Vec::new();
            let selector = spec.selector.clone().unwrap_or_default();
            if selector.is_empty() {
                errors.push(FieldError::required("spec.selector", ""));
            }
            let labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
            let matches = (!selector.is_empty()).then(|| selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
            errors.extend(validate_replicated(spec.replicas, matches, spec.template.as_ref(), "ReplicationController"));
            errors
        })
        .columns(vec![
            Column::name(),
            Column::new("Desired", "integer", "Number of desired pods", |rc: &ReplicationController| {
                json!(rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
            }),
            Column::new("Current", "integer", "Number of actually running pods", |rc: &ReplicationController| {
                json!(rc.status.as_ref().map_or(0, |s| s.replicas))
            }),
            Column::new("Ready", "integer", "Number of ready pods", |rc: &ReplicationController| {
                json!(rc.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0))
            }),
            Column::age(),
            Column::new("Containers", "string", "Names of each container in the template", |rc: &ReplicationController| {
                json!(containers_and_images(rc.spec.as_ref().and_then(|s| s.template.as_ref())).0)
            })
            .wide(),
            Column::new("Images", "string", "Images referenced by each container in the template", |rc: &ReplicationController| {
                json!(containers_and_images(rc.spec.as_ref().and_then(|s| s.template.as_ref())).1)
            })
            .wide(),
            Column::new("Selector", "string", "Label selector", |rc: &ReplicationController| {
                or_none(rc.spec.as_ref().and_then(|s| s.selector.as_ref()).map(labels_string).unwrap_or_default())
            })
            .wide(),
        ])
        .build()
}

fn deployments() -> Resource {
    ResourceBuilder::<Deployment>::new()
        .short_names(&["deploy"])
        .categories(&["all"])
        .subresources(&[Subresource::Status, Subresource::Scale])
        .tracks_generation()
        .default(|d| {
            let Some(spec) = d.spec.as_mut() else { return };
            spec.replicas.get_or_insert(1);
            spec.revision_history_limit.get_or_insert(10);
            spec.progress_deadline_seconds.get_or_insert(600);
            let strategy = spec.strategy.get_or_insert_with(DeploymentStrategy::default);
            let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
            if kind == "RollingUpdate" {
                let rolling = strategy.rolling_update.get_or_insert_with(RollingUpdateDeployment::default);
                rolling.max_surge.get_or_insert_with(|| IntOrString::String("25%".into()));
                rolling.max_unavailable.get_or_insert_with(|| IntOrString::String("25%".into()));
            }
            default_template(Some(&mut spec.template));
        })
        .validate(|d| {
            let Some(spec) = d.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
            let mut errors = Vec::new();
            let matches = selector_matches_template(&spec.selector, Some(&spec.template), &mut errors, "deployment");
            errors.extend(validate_replicated(spec.replicas, matches, Some(&spec.template), "ReplicaSet"));
            if let Some(strategy) = &spec.strategy {
                match strategy.type_.as_deref() {
                    Some("Recreate") if strategy.rolling_update.is_some() => errors.push(FieldError::forbidden(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'Recreate'",
                    )),
                    Some("Recreate" | "RollingUpdate") | None => {}
                    Some(other) => errors.push(FieldError::not_supported("spec.strategy.type", other, &["Recreate", "RollingUpdate"])),
                }
                if let Some(r) = &strategy.rolling_update {
                    let zero = |v: &Option<IntOrString>| match v {
                        Some(IntOrString::Int(0)) => true,
                        Some(IntOrString::String(s)) => s == "0%" || s == "0",
                        _ => false,
                    };
                    if zero(&r.max_surge) && zero(&r.max_unavailable) {
                        errors.push(FieldError::invalid(
                            "spec.strategy.rollingUpdate.maxUnavailable",
                            "0",
                            "may not be 0 when `maxSurge` is 0",
                        ));
                    }
                }
            }
            if let Some(h) = spec.revision_history_limit.filter(|h| *h < 0) {
                errors.push(FieldError::invalid("spec.revisionHistoryLimit", h, "must be greater than or equal to 0"));
            }
            let min_ready = spec.min_ready_seconds.unwrap_or(0);
            if min_ready < 0 {
                errors.push(FieldError::invalid("spec.minReadySeconds", min_ready, "must be greater than or equal to 0"));
            }
            if let Some(p) = spec.progress_deadline_seconds.filter(|p| *p <= min_ready) {
                errors.push(FieldError::invalid(
                    "spec.progressDeadlineSeconds",
                    p,
                    "must be greater than minReadySeconds",
                ));
            }
            errors
        })
        .validate_update(|new, old| {
            selector_immutable(new.spec.as_ref().map(|s| &s.selector), old.spec.as_ref().map(|s| &s.selector))
        })
        .columns(vec![
            Column::name(),
            Column::new("Ready", "string", "Number of the pod with ready state", |d: &Deployment| {
                let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
                json!(format!("{ready}/{}", d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)))
            }),
            Column::new("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", |d: &Deployment| {
                json!(d.status.as_ref().and_then(|s| s.updated_replicas).unwrap_or(0))
            }),
            Column::new("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", |d: &Deployment| {
                json!(d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0))
            }),
            Column::age(),
            Column::new("Containers", "string", "Names of each container in the template.", |d: &Deployment| {
                json!(containers_and_images(d.spec.as_ref().map(|s| &s.template)).0)
            })
            .wide(),
            Column::new("Images", "string", "Images referenced by each container in the template.", |d: &Deployment| {
                json!(containers_and_images(d.spec.as_ref().map(|s| &s.template)).1)
            })
            .wide(),
            Column::new("Selector", "string", "Label selector for pods.", |d: &Deployment| {
                or_none(d.spec.as_ref().map(|s| selector_string(&s.selector)).unwrap_or_default())
            })
            .wide(),
        ])
        .build()
}

fn replicasets() -> Resource {
    ResourceBuilder::<ReplicaSet>::new()
        .short_names(&["rs"])
        .categories(&["all"])
        .subresources(&[Subresource::Status, Subresource::Scale])
        .tracks_generation()
        .selectable_fields(&["status.replicas"])
        .default(|rs| {
            let Some(spec) = rs.spec.as_mut() else { return };
            spec.replicas.get_or_insert(1);
            default_template(spec.template.as_mut());
        })
        .validate(|rs| {
            let Some(spec) = rs.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
            let mut errors = Vec::new();
            let matches = selector_matches_template(&spec.selector, spec.template.as_ref(), &mut errors, "deployment");
            errors.extend(validate_replicated(spec.replicas, matches, spec.template.as_ref(), "ReplicaSet"));
            errors
        })
        .validate_update(|new, old| {
            selector_immutable(new.spec.as_ref().map(|s| &s.selector), old.spec.as_ref().map(|s| &s.selector))
        })
        .columns(vec![
            Column::name(),
            Column::new("Desired", "integer", "Number of desired pods.", |rs: &ReplicaSet| {
                json!(rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
            }),
            Column::new("Current", "integer", "Number of actually running pods.", |rs: &ReplicaSet| {
                json!(rs.status.as_ref().map_or(0, |s| s.replicas))
            }),
            Column::new("Ready", "integer", "Number of ready pods.", |rs: &ReplicaSet| {
                json!(rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0))
            }),
            Column::age(),
            Column::new("Containers", "string", "Names of each container in the template.", |rs: &ReplicaSet| {
                json!(containers_and_images(rs.spec.as_ref().and_then(|s| s.template.as_ref())).0)
            })
            .wide(),
            Column::new("Images", "string", "Images referenced by each container in the template.", |rs: &ReplicaSet| {
                json!(containers_and_images(rs.spec.as_ref().and_then(|s| s.template.as_ref())).1)
            })
            .wide(),
            Column::new("Selector", "string", "Label selector for pods.", |rs: &ReplicaSet| {
                or_none(rs.spec.as_ref().map(|s| selector_string(&s.selector)).unwrap_or_default())
            })
            .wide(),
        ])
        .build()
}

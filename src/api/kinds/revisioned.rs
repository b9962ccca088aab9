//! Workloads whose template history lives in ControllerRevisions: DaemonSets
//! (a pod per eligible node) and StatefulSets (pods with stable names and
//! storage), and the ControllerRevisions themselves.

use super::containers_and_images;
use super::workloads::{default_template, selector_immutable, selector_matches_template, selector_mismatch, validate_replicated};
use super::{labels_string, or_none, pods, selector_string};
use crate::api::error::FieldError;
use crate::api::registry::{Column, NameRule, Resource, ResourceBuilder, Subresource};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetUpdateStrategy, RollingUpdateDaemonSet, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::PersistentVolumeClaimStatus;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

pub fn resources() -> Vec<Resource> {
    vec![daemonsets(), statefulsets(), controllerrevisions()]
}

/// A non-negative int or a percentage string (upstream's ValidatePositiveIntOrPercent).
fn int_or_percent(value: Option<&IntOrString>, path: &str, errors: &mut Vec<FieldError>) {
    match value {
        Some(IntOrString::Int(n)) if *n < 0 => errors.push(FieldError::invalid(path, n, "must be greater than or equal to 0")),
        Some(IntOrString::String(s)) => {
            let digits = s.strip_suffix('%').unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                errors.push(FieldError::invalid(path, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
            } else if digits.parse::<u64>().is_ok_and(|p| p > 100) {
                errors.push(FieldError::invalid(path, s, "must not be greater than 100%"));
            }
        }
        _ => {}
    }
}

/// The number an int-or-percent names, percent or not; whether it is zero is what validation asks.
fn is_zero(value: Option<&IntOrString>) -> bool {
    match value {
        None | Some(IntOrString::Int(0)) => true,
        Some(IntOrString::Int(_)) => false,
        Some(IntOrString::String(s)) => s.trim_end_matches('%').parse::<i64>().is_ok_and(|n| n == 0),
    }
}

fn non_negative(value: Option<i32>, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        errors.push(FieldError::invalid(path, v, "must be greater than or equal to 0"));
    }
}

fn daemonsets() -> Resource {
    ResourceBuilder::<DaemonSet>::new()
        .short_names(&["ds"])
        .categories(&["all"])
        .subresources(&[Subresource::Status])
        .tracks_generation()
        .default(|ds| {
            let Some(spec) = ds.spec.as_mut() else { return };
            let strategy = spec.update_strategy.get_or_insert_with(DaemonSetUpdateStrategy::default);
            if strategy.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
                let rolling = strategy.rolling_update.get_or_insert_with(RollingUpdateDaemonSet::default);
                rolling.max_unavailable.get_or_insert(IntOrString::Int(1));
                rolling.max_surge.get_or_insert(IntOrString::Int(0));
            }
            spec.revision_history_limit.get_or_insert(10);
            default_template(Some(&mut spec.template));
        })
        .validate(|ds| {
            let Some(spec) = ds.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
            let mut errors = Vec::new();
            let matches = selector_matches_template(&spec.selector, Some(&spec.template), &mut errors, "daemonset");
            errors.extend(validate_replicated(None, matches, Some(&spec.template), "DaemonSet"));
            non_negative(spec.min_ready_seconds, "spec.minReadySeconds", &mut errors);
            non_negative(spec.revision_history_limit, "spec.revisionHistoryLimit", &mut errors);
            let strategy = spec.update_strategy.clone().unwrap_or_default();
            match strategy.type_.as_deref() {
                Some("OnDelete") => {}
                Some("RollingUpdate") => match &strategy.rolling_update {
                    None => errors.push(FieldError::required("spec.updateStrategy.rollingUpdate", "")),
                    Some(r) => {
                        let path = "spec.updateStrategy.rollingUpdate";
                        int_or_percent(r.max_unavailable.as_ref(), &format!("{path}.maxUnavailable"), &mut errors);
                        int_or_percent(r.max_surge.as_ref(), &format!("{path}.maxSurge"), &mut errors);
                        match (is_zero(r.max_unavailable.as_ref()), is_zero(r.max_surge.as_ref())) {
                            (false, false) => errors.push(FieldError::invalid(format!("{path}.maxSurge"), r.max_surge.clone(), "may not be set when maxUnavailable is non-zero")),
                            (true, true) => errors.push(FieldError::required(format!("{path}.maxUnavailable"), "cannot be 0 when maxSurge is 0")),
                            _ => {}
                        }
                    }
                },
                other => errors.push(FieldError::not_supported("spec.updateStrategy", other.unwrap_or_default(), &["RollingUpdate", "OnDelete"])),
            }
            errors
        })
        .validate_update(|new, old| selector_immutable(new.spec.as_ref().map(|s| &s.selector), old.spec.as_ref().map(|s| &s.selector)))
        .columns(vec![
            Column::name(),
            Column::new("Desired", "integer", "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod). More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/", |ds: &DaemonSet| {
                json!(ds.status.as_ref().map_or(0, |s| s.desired_number_scheduled))
            }),
            Column::new("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/", |ds: &DaemonSet| {
                json!(ds.status.as_ref().map_or(0, |s| s.current_number_scheduled))
            }),
            Column::new("Ready", "integer", "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.", |ds: &DaemonSet| {
                json!(ds.status.as_ref().map_or(0, |s| s.number_ready))
            }),
            Column::new("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod", |ds: &DaemonSet| {
                json!(ds.status.as_ref().and_then(|s| s.updated_number_scheduled).unwrap_or(0))
            }),
            Column::new("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)", |ds: &DaemonSet| {
                json!(ds.status.as_ref().and_then(|s| s.number_available).unwrap_or(0))
            }),
            Column::new("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/", |ds: &DaemonSet| {
                or_none(ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.node_selector.as_ref()).map(labels_string).unwrap_or_default())
            }),
            Column::age(),
            Column::new("Containers", "string", "Names of each container in the template.", |ds: &DaemonSet| {
                json!(containers_and_images(ds.spec.as_ref().map(|s| &s.template)).0)
            })
            .wide(),
            Column::new("Images", "string", "Images referenced by each container in the template.", |ds: &DaemonSet| {
                json!(containers_and_images(ds.spec.as_ref().map(|s| &s.template)).1)
            })
            .wide(),
            Column::new("Selector", "string", "A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors", |ds: &DaemonSet| {
                or_none(ds.spec.as_ref().map(|s| selector_string(&s.selector)).unwrap_or_default())
            })
            .wide(),
        ])
        .build()
}

fn statefulsets() -> Resource {
    ResourceBuilder::<StatefulSet>::new()
        .short_names(&["sts"])
        .categories(&["all"])
        .subresources(&[Subresource::Status, Subresource::Scale])
        .tracks_generation()
        .names(NameRule::Label)
        .default(|sts| {
            let Some(spec) = sts.spec.as_mut() else { return };
            spec.pod_management_policy.get_or_insert_with(|| "OrderedReady".into());
            let strategy = spec.update_strategy.get_or_insert_with(StatefulSetUpdateStrategy::default);
            if strategy.type_.is_none() {
                strategy.type_ = Some("RollingUpdate".into());
                strategy.rolling_update.get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
            }
            if let Some(rolling) = strategy.rolling_update.as_mut().filter(|_| strategy.type_.as_deref() == Some("RollingUpdate")) {
                rolling.partition.get_or_insert(0);
            }
            let retention = spec.persistent_volume_claim_retention_policy.get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
            retention.when_deleted.get_or_insert_with(|| "Retain".into());
            retention.when_scaled.get_or_insert_with(|| "Retain".into());
            spec.replicas.get_or_insert(1);
            spec.revision_history_limit.get_or_insert(10);
            for claim in spec.volume_claim_templates.iter_mut().flatten() {
                claim.spec.get_or_insert_with(Default::default).volume_mode.get_or_insert_with(|| "Filesystem".into());
                claim.status.get_or_insert_with(PersistentVolumeClaimStatus::default).phase.get_or_insert_with(|| "Pending".into());
            }
            default_template(Some(&mut spec.template));
        })
        .validate(|sts| {
            let Some(spec) = sts.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
            let mut errors = Vec::new();
            match spec.pod_management_policy.as_deref() {
                Some("OrderedReady" | "Parallel") => {}
                None => errors.push(FieldError::required("spec.podManagementPolicy", "")),
                Some(other) => errors.push(FieldError::invalid("spec.podManagementPolicy", other, "must be 'OrderedReady' or 'Parallel'")),
            }
            let strategy = spec.update_strategy.clone().unwrap_or_default();
            match strategy.type_.as_deref() {
                None => errors.push(FieldError::required("spec.updateStrategy", "")),
                Some("OnDelete") if strategy.rolling_update.is_some() => {
                    errors.push(FieldError::invalid("spec.updateStrategy.rollingUpdate", "", "only allowed for updateStrategy 'RollingUpdate'"))
                }
                Some("OnDelete") => {}
                Some("RollingUpdate") => non_negative(strategy.rolling_update.and_then(|r| r.partition), "spec.updateStrategy.rollingUpdate.partition", &mut errors),
                Some(_) => errors.push(FieldError::invalid("spec.updateStrategy", "", "must be 'RollingUpdate' or 'OnDelete'")),
            }
            let retention = spec.persistent_volume_claim_retention_policy.clone().unwrap_or_default();
            for (field, policy) in [("whenDeleted", retention.when_deleted), ("whenScaled", retention.when_scaled)] {
                if let Some(p) = policy.filter(|p| p != "Retain" && p != "Delete") {
                    errors.push(FieldError::not_supported(format!("spec.persistentVolumeClaimRetentionPolicy.{field}"), p, &["Retain", "Delete"]));
                }
            }
            non_negative(spec.replicas, "spec.replicas", &mut errors);
            non_negative(spec.min_ready_seconds, "spec.minReadySeconds", &mut errors);
            non_negative(spec.ordinals.as_ref().and_then(|o| o.start), "spec.ordinals.start", &mut errors);
            if selector_matches_template(&spec.selector, Some(&spec.template), &mut errors, "statefulset") == Some(false) {
                errors.push(selector_mismatch(&spec.template));
            }
            // As upstream: the pod spec itself is not validated here, since its
            // volume mounts may name volumes that only the claim templates provide.
            errors.extend(pods::validate_template_metadata(&spec.template, "spec.template"));
            errors.extend(pods::validate_long_running(&spec.template.spec.clone().unwrap_or_default(), "spec.template.spec", "StatefulSet"));
            errors
        })
        .validate_update(|new, old| {
            let mutable_cleared = |sts: &StatefulSet| {
                let mut spec = sts.spec.clone().unwrap_or_default();
                spec.replicas = None;
                spec.template = Default::default();
                spec.update_strategy = None;
                spec.min_ready_seconds = None;
                spec.ordinals = None;
                spec.persistent_volume_claim_retention_policy = None;
                spec.revision_history_limit = None;
                spec
            };
            if mutable_cleared(new) != mutable_cleared(old) {
                return vec![FieldError::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                )];
            }
            Vec::new()
        })
        .columns(vec![
            Column::name(),
            Column::new("Ready", "string", "Number of the pod with ready state", |sts: &StatefulSet| {
                let ready = sts.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
                json!(format!("{ready}/{}", sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)))
            }),
            Column::age(),
            Column::new("Containers", "string", "Names of each container in the template.", |sts: &StatefulSet| {
                json!(containers_and_images(sts.spec.as_ref().map(|s| &s.template)).0)
            })
            .wide(),
            Column::new("Images", "string", "Images referenced by each container in the template.", |sts: &StatefulSet| {
                json!(containers_and_images(sts.spec.as_ref().map(|s| &s.template)).1)
            })
            .wide(),
        ])
        .build()
}

/// `daemonset.apps/fluentd`: how kubectl names the controller of a revision.
fn controller_name(revision: &ControllerRevision) -> String {
    let Some(owner) = revision.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)) else { return "<none>".into() };
    let group = owner.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = if group.is_empty() { owner.kind.to_lowercase() } else { format!("{}.{group}", owner.kind.to_lowercase()) };
    format!("{kind}/{}", owner.name)
}

fn controllerrevisions() -> Resource {
    ResourceBuilder::<ControllerRevision>::new()
        .validate(|revision| {
            let mut errors = Vec::new();
            if revision.data.is_none() {
                errors.push(FieldError::required("data", "data is mandatory"));
            }
            if revision.revision < 0 {
                errors.push(FieldError::invalid("revision", revision.revision, "must be greater than or equal to 0"));
            }
            errors
        })
        .validate_update(|new, old| {
            if new.data != old.data {
                return vec![FieldError::invalid("data", "", "field is immutable")];
            }
            Vec::new()
        })
        .columns(vec![
            Column::name(),
            Column::new("Controller", "string", "Controller of the object", |r: &ControllerRevision| json!(controller_name(r))),
            Column::new("Revision", "string", "Revision indicates the revision of the state represented by Data.", |r: &ControllerRevision| json!(r.revision)),
            Column::age(),
        ])
        .build()
}

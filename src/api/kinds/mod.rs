//! The kinds rk serves. Each is a registry entry built from its k8s-openapi type:
//! names, scope, subresources, table columns, and the hooks (defaults, validation,
//! lifecycle) that make it behave as upstream. Adding a kind means adding an entry
//! here, not a handler.

pub mod autoscaling;
mod batch;
mod core;
pub mod networking;
mod pods;
mod revisioned;
mod workloads;

/// Kubernetes quantities in nano-units, for the node agent's resource arithmetic.
pub use pods::parse_quantity;

use super::registry::{Registry, Resource};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Every served resource, in discovery order.
pub fn all() -> Vec<Resource> {
    let mut resources = core::resources();
    resources.push(workloads::pods());
    resources.extend(workloads::resources());
    resources.extend(batch::resources());
    resources.extend(revisioned::resources());
    resources.extend(networking::resources());
    resources.extend(autoscaling::resources());
    resources
}

pub fn registry() -> Registry {
    Registry::new(all())
}

/// Container names and images of a pod template, for wide output.
fn containers_and_images(template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> (String, String) {
    let containers = template.and_then(|t| t.spec.as_ref()).map(|s| s.containers.as_slice()).unwrap_or_default();
    let names = containers.iter().map(|c| c.name.clone()).collect::<Vec<_>>().join(",");
    let images = containers.iter().map(|c| c.image.clone().unwrap_or_default()).collect::<Vec<_>>().join(",");
    (names, images)
}

/// `<none>` for empty cells, as kubectl prints them.
fn or_none(s: impl Into<String>) -> Value {
    let s = s.into();
    json!(if s.is_empty() { "<none>".to_owned() } else { s })
}

/// A label map rendered as a selector (`app=web,tier=db`).
fn labels_string(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A LabelSelector rendered as kubectl shows it in wide output.
fn selector_string(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> String {
    super::selector::LabelSelector::from_k8s(selector).map(|s| s.to_string()).unwrap_or_default()
}

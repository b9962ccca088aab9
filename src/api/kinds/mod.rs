//! The kinds rk serves. Each is a registry entry built from its k8s-openapi type:
//! names, scope, subresources, table columns, and the hooks (defaults, validation,
//! lifecycle) that make it behave as upstream. Adding a kind means adding an entry
//! here, not a handler.

mod core;
mod pods;
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
    resources
}

pub fn registry() -> Registry {
    Registry::new(all())
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

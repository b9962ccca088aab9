//! Where a pod's configuration comes from, shared by environment variables and
//! volumes: ConfigMaps and Secrets (from the agent's caches), and the downward
//! API (`fieldRef`, `resourceFieldRef`) with the kubelet's formatting.

use super::host::Capacity;
use crate::runtime::Informer;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, ResourceFieldSelector, Secret};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Looks up the objects pods refer to.
pub trait Lookup: Send + Sync {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
}

/// Lookups from the agent's informer caches.
pub struct Cached {
    pub config_maps: Informer<ConfigMap>,
    pub secrets: Informer<Secret>,
}

impl Lookup for Cached {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps.get(&format!("{namespace}/{name}"))
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&format!("{namespace}/{name}"))
    }
}

/// A ConfigMap's keys with their bytes (`data` and `binaryData`).
pub fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    out.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    out
}

/// A Secret's keys with their bytes (`stringData` is folded in by the API).
pub fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    out.extend(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    out
}

/// Go's `%q` for the label and annotation files of the downward API.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter().flatten().map(|(k, v)| format!("{k}={}", quote(v))).collect::<Vec<_>>().join("\n")
}

/// Pod facts only the node knows, for `status.*` field references.
#[derive(Clone, Debug, Default)]
pub struct PodAddresses {
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
}

/// The value of a `fieldRef` path.
pub fn field_ref(pod: &Pod, path: &str, addresses: &PodAddresses) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(str::to_owned);
    if let Some(key) = subscript("metadata.labels['") {
        return Ok(meta.labels.as_ref().and_then(|l| l.get(&key)).cloned().unwrap_or_default());
    }
    if let Some(key) = subscript("metadata.annotations['") {
        return Ok(meta.annotations.as_ref().and_then(|a| a.get(&key)).cloned().unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => addresses.pod_ip.clone().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => addresses.host_ip.clone().unwrap_or_default(),
        other => return Err(format!("unsupported fieldPath: {other}")),
    })
}

/// `value / divisor`, rounded up, both in nano-units.
fn ceil_div(value: i128, divisor: i128) -> i128 {
    if divisor <= 0 {
        return value;
    }
    (value + divisor - 1).div_euclid(divisor)
}

/// The value of a `resourceFieldRef` for `container`; a limit that is not set
/// is the node's allocatable amount, as upstream does.
pub fn resource_field_ref(container: &Container, selector: &ResourceFieldSelector, allocatable: &Capacity) -> Result<String, String> {
    let resources = container.resources.as_ref();
    let quantity = |set: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, name: &str| {
        set.and_then(|m| m.get(name)).and_then(|q| crate::api::kinds::parse_quantity(&q.0))
    };
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    const NANO: i128 = 1_000_000_000;
    let value = match selector.resource.as_str() {
        "limits.cpu" => quantity(limits, "cpu").unwrap_or(allocatable.cpus as i128 * NANO),
        "limits.memory" => quantity(limits, "memory").unwrap_or(allocatable.memory as i128 * NANO),
        "limits.ephemeral-storage" => quantity(limits, "ephemeral-storage").unwrap_or(allocatable.ephemeral_storage as i128 * NANO),
        "requests.cpu" => quantity(requests, "cpu").unwrap_or(0),
        "requests.memory" => quantity(requests, "memory").unwrap_or(0),
        "requests.ephemeral-storage" => quantity(requests, "ephemeral-storage").unwrap_or(0),
        other => return Err(format!("unsupported container resource: {other}")),
    };
    let divisor = selector.divisor.as_ref().and_then(|d| crate::api::kinds::parse_quantity(&d.0)).filter(|d| *d > 0).unwrap_or(NANO);
    Ok(ceil_div(value, divisor).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.labels = Some([("app".to_owned(), "web".to_owned()), ("tier".to_owned(), "a \"b\"".to_owned())].into());
        p.spec = Some(PodSpec { node_name: Some("n1".into()), ..Default::default() });
        p
    }

    #[test]
    fn field_refs_read_metadata_spec_and_node_facts() {
        let addresses = PodAddresses { pod_ip: Some("10.0.0.5".into()), host_ip: Some("192.0.2.2".into()) };
        let p = pod();
        assert_eq!(field_ref(&p, "metadata.name", &addresses).unwrap(), "web");
        assert_eq!(field_ref(&p, "metadata.labels['app']", &addresses).unwrap(), "web");
        assert_eq!(field_ref(&p, "spec.nodeName", &addresses).unwrap(), "n1");
        assert_eq!(field_ref(&p, "status.podIP", &addresses).unwrap(), "10.0.0.5");
        assert_eq!(field_ref(&p, "metadata.labels", &addresses).unwrap(), "app=\"web\"\ntier=\"a \\\"b\\\"\"");
        assert!(field_ref(&p, "spec.bogus", &addresses).is_err());
    }

    #[test]
    fn resource_refs_round_up_by_the_divisor_and_default_to_allocatable() {
        let container = Container {
            resources: Some(ResourceRequirements {
                limits: Some([("cpu".to_owned(), Quantity("250m".into())), ("memory".to_owned(), Quantity("64Mi".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = Capacity { cpus: 4, memory: 1 << 30, ephemeral_storage: 1 << 40 };
        let sel = |r: &str, d: Option<&str>| ResourceFieldSelector { resource: r.into(), divisor: d.map(|d| Quantity(d.into())), container_name: None };
        assert_eq!(resource_field_ref(&container, &sel("limits.cpu", None), &node).unwrap(), "1");
        assert_eq!(resource_field_ref(&container, &sel("limits.cpu", Some("1m")), &node).unwrap(), "250");
        assert_eq!(resource_field_ref(&container, &sel("limits.memory", Some("1Mi")), &node).unwrap(), "64");
        assert_eq!(resource_field_ref(&Container::default(), &sel("limits.cpu", None), &node).unwrap(), "4");
        assert_eq!(resource_field_ref(&Container::default(), &sel("requests.memory", None), &node).unwrap(), "0");
    }
}

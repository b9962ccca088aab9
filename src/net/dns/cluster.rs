//! The cluster as DNS sees it, read from the shared informer caches: Services
//! by name, the ready endpoints behind them (from EndpointSlices), namespaces,
//! and the names that point back at an address. Both the forward zone
//! (`cluster.local`) and the reverse zones read through this.

use crate::runtime::Informer;
use hickory_server::proto::rr::Name;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::IpAddr;
use std::sync::Arc;

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One ready endpoint address of a Service, with the ports of its slice.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The endpoint's own label under the Service: its hostname, or its address with dashes.
    pub label: String,
    /// `(name, port, protocol)` of each port of the slice.
    pub ports: Vec<(String, u16, String)>,
}

/// How a Service is answered for.
pub enum Shape {
    /// A CNAME to an outside name.
    ExternalName(String),
    /// Its cluster IPs.
    ClusterIp(Vec<IpAddr>),
    /// Its endpoints' addresses.
    Headless,
}

pub struct Cluster {
    /// The zone, e.g. `cluster.local.`.
    pub domain: Name,
    pub services: Informer<Service>,
    pub slices: Informer<EndpointSlice>,
    pub namespaces: Informer<Namespace>,
}

impl Cluster {
    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.namespaces.get(namespace).is_some()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&format!("{namespace}/{name}"))
    }

    pub fn shape(service: &Service) -> Shape {
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return Shape::ExternalName(spec.external_name.unwrap_or_default());
        }
        let ips: Vec<String> = match spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips,
            _ => spec.cluster_ip.into_iter().collect(),
        };
        let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        if ips.is_empty() { Shape::Headless } else { Shape::ClusterIp(ips) }
    }

    /// The ready endpoints of a Service, in a stable order.
    pub fn endpoints(&self, namespace: &str, service: &str) -> Vec<Endpoint> {
        let slices = self.slices.filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str) == Some(service)
        });
        let mut out: Vec<Endpoint> = slices.iter().flat_map(|slice| slice_endpoints(slice)).collect();
        out.sort_by(|a, b| a.ip.cmp(&b.ip).then_with(|| a.label.cmp(&b.label)));
        out.dedup_by(|a, b| a.ip == b.ip && a.label == b.label && a.ports == b.ports);
        out
    }

    /// `<service>.<namespace>.svc.<zone>`
    pub fn service_name(&self, namespace: &str, service: &str) -> Option<Name> {
        self.name_under(&[service, namespace, "svc"])
    }

    /// `labels...` (leftmost first) followed by the zone.
    pub fn name_under(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?.append_domain(&self.domain).ok()
    }

    /// The names that point back at `ip`: the Service whose cluster IP it is,
    /// otherwise every endpoint with that address.
    pub fn names_for(&self, ip: IpAddr) -> Vec<Name> {
        let services = self.services.list();
        let owner = services.iter().find(|s| matches!(Self::shape(s), Shape::ClusterIp(ips) if ips.contains(&ip)));
        if let Some(service) = owner {
            let (namespace, name) = (service.metadata.namespace.as_deref().unwrap_or(""), service.metadata.name.as_deref().unwrap_or(""));
            return self.service_name(namespace, name).into_iter().collect();
        }
        let mut names = Vec::new();
        for slice in self.slices.list() {
            let namespace = slice.metadata.namespace.as_deref().unwrap_or("");
            let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
            for endpoint in slice_endpoints(&slice).into_iter().filter(|e| e.ip == ip) {
                names.extend(self.name_under(&[&endpoint.label, service, namespace, "svc"]));
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

/// The ready addresses of one slice (an endpoint whose readiness is unknown counts as ready).
fn slice_endpoints(slice: &EndpointSlice) -> Vec<Endpoint> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    let ports: Vec<(String, u16, String)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok()?;
            Some((p.name.clone().unwrap_or_default(), port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
        })
        .collect();
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| {
            let ports = ports.clone();
            e.addresses.iter().filter_map(move |address| {
                let ip: IpAddr = address.parse().ok()?;
                let label = e.hostname.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| dashed(ip));
                Some(Endpoint { ip, label, ports: ports.clone() })
            })
        })
        .collect()
}

/// An address as one DNS label: `10-42-0-5`, or `fd00--5` for IPv6.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address a dashed label stands for (`10-42-0-5` → 10.42.0.5).
pub fn undashed(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label.replace('-', ".").parse().ok()
    } else {
        label.replace('-', ":").parse().ok()
    }
}

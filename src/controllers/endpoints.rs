//! Endpoints and EndpointSlice controllers: for every Service with a selector,
//! the addresses of the pods it selects, ready ones separately from not-ready
//! ones, with named target ports resolved per pod. Both controllers share the
//! pod-to-service mapping and the address computation; they differ only in the
//! object they write.

use super::Context;
use crate::runtime::{Change, Controller, Error, Informer, Next, Reconciler, key_of, split_key};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Slices hold at most this many endpoints, as upstream's default.
const MAX_ENDPOINTS_PER_SLICE: usize = 100;
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// One pod's contribution to a Service.
#[derive(Clone, Debug, PartialEq)]
struct Backend {
    ip: String,
    node: Option<String>,
    pod: ObjectReference,
    /// The pod's hostname when its subdomain is this Service (StatefulSet pods), for DNS.
    hostname: Option<String>,
    ready: bool,
    terminating: bool,
    /// Resolved `(name, port, protocol)` for each Service port.
    ports: Vec<(Option<String>, i32, String)>,
}

fn selector_matches(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else { return false };
    let labels = pod.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The container port a Service port targets on a pod: a number, or a named port.
fn resolve_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == port.protocol.as_deref().unwrap_or("TCP"))
            .map(|p| p.container_port),
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pods a Service sends traffic to, in a stable order.
fn backends(service: &Service, pods: &[Arc<Pod>]) -> Vec<Backend> {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut out: Vec<Backend> = pods
        .iter()
        .filter(|p| selector_matches(service, p))
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            let phase = status.phase.as_deref().unwrap_or("");
            if phase == "Succeeded" || phase == "Failed" {
                return None;
            }
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.name.clone(), resolve_port(p, pod)?, p.protocol.clone().unwrap_or_else(|| "TCP".into()))))
                .collect();
            let pod_spec = pod.spec.as_ref();
            let hostname = pod_spec
                .filter(|s| s.subdomain.as_deref() == service.metadata.name.as_deref())
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty());
            Some(Backend {
                ip,
                node: pod_spec.and_then(|s| s.node_name.clone()),
                hostname,
                pod: ObjectReference {
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    namespace: pod.metadata.namespace.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                },
                ready: publish_not_ready || (pod_ready(pod) && !terminating),
                terminating,
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip).then_with(|| a.pod.name.cmp(&b.pod.name)));
    out
}

/// Upstream's Endpoints layout: one subset per distinct set of resolved ports.
fn subsets(backends: &[Backend]) -> Vec<EndpointSubset> {
    let mut by_ports: BTreeMap<Vec<(Option<String>, i32, String)>, EndpointSubset> = BTreeMap::new();
    for b in backends.iter().filter(|b| !b.terminating || b.ready) {
        let subset = by_ports.entry(b.ports.clone()).or_insert_with(|| EndpointSubset {
            ports: Some(b.ports.iter().map(|(name, port, protocol)| EndpointPort { name: name.clone(), port: *port, protocol: Some(protocol.clone()), app_protocol: None }).collect()),
            ..Default::default()
        });
        let address = EndpointAddress { ip: b.ip.clone(), node_name: b.node.clone(), target_ref: Some(b.pod.clone()), hostname: b.hostname.clone() };
        let list = if b.ready { &mut subset.addresses } else { &mut subset.not_ready_addresses };
        list.get_or_insert_with(Vec::new).push(address);
    }
    by_ports.into_values().collect()
}

/// Services whose selector a pod matched before or matches now.
fn services_of_pod(services: &Informer<Service>, change: &Change<Pod>) -> Vec<String> {
    let pods: Vec<&Arc<Pod>> = match change {
        Change::Applied { old, new } => old.iter().chain(std::iter::once(new)).collect(),
        Change::Deleted(old) => vec![old],
    };
    let namespace = change.object().metadata.namespace.clone().unwrap_or_default();
    services
        .list_namespace(&namespace)
        .iter()
        .filter(|svc| pods.iter().any(|p| selector_matches(svc, p)))
        .map(|svc| key_of(svc.as_ref()))
        .collect()
}

struct EndpointsController {
    services: Informer<Service>,
    pods: Informer<Pod>,
    endpoints: Informer<Endpoints>,
    client: kube::Client,
}

#[async_trait]
impl Reconciler for EndpointsController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let (namespace, name) = split_key(key);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), namespace);
        let Some(service) = self.services.get(key) else {
            // The Service is gone; so are the Endpoints this controller made for it.
            if self.endpoints.get(key).is_some() {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(Next::Done);
        };
        if service.spec.as_ref().and_then(|s| s.selector.as_ref()).is_none_or(BTreeMap::is_empty) {
            return Ok(Next::Done); // Endpoints of selector-less Services are the user's.
        }
        let subsets = subsets(&backends(&service, &self.pods.list_namespace(namespace)));
        let mut labels = service.labels().clone();
        if service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            labels.insert("service.kubernetes.io/headless".into(), String::new());
        }
        let current = self.endpoints.get(key);
        let wanted_subsets = (!subsets.is_empty()).then_some(subsets);
        if let Some(current) = &current
            && current.subsets == wanted_subsets && current.metadata.labels.clone().unwrap_or_default() == labels {
                return Ok(Next::Done);
            }
        let endpoints = Endpoints {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels),
                resource_version: current.as_ref().and_then(|c| c.metadata.resource_version.clone()),
                annotations: Some([("endpoints.kubernetes.io/last-change-trigger-time".to_owned(), crate::api::object::now_rfc3339())].into()),
                ..Default::default()
            },
            subsets: wanted_subsets,
        };
        match current {
            Some(_) => api.replace(name, &PostParams::default(), &endpoints).await?,
            None => api.create(&PostParams::default(), &endpoints).await?,
        };
        Ok(Next::Done)
    }
}

struct SliceController {
    services: Informer<Service>,
    pods: Informer<Pod>,
    slices: Informer<EndpointSlice>,
    client: kube::Client,
}

fn slice_ports(backends: &[Backend], service: &Service) -> Vec<SlicePort> {
    let resolved = backends.first().map(|b| b.ports.clone()).unwrap_or_else(|| {
        service.spec.iter().flat_map(|s| s.ports.iter().flatten()).map(|p| (p.name.clone(), p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into()))).collect()
    });
    resolved.into_iter().map(|(name, port, protocol)| SlicePort { name: Some(name.unwrap_or_default()), port: Some(port), protocol: Some(protocol), app_protocol: None }).collect()
}

#[async_trait]
impl Reconciler for SliceController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let (namespace, name) = split_key(key);
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        let mut existing: Vec<Arc<EndpointSlice>> = self.slices.list_namespace(namespace).into_iter().filter(|s| {
            let labels = s.labels();
            labels.get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name) && labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        }).collect();
        existing.sort_by_key(|s| s.name_any());
        let Some(service) = self.services.get(key).filter(|s| s.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty())) else {
            for slice in existing {
                let _ = api.delete(&slice.name_any(), &DeleteParams::default()).await;
            }
            return Ok(Next::Done);
        };
        let backends = backends(&service, &self.pods.list_namespace(namespace));
        // Group by resolved ports: every endpoint of a slice shares its ports.
        let mut groups: BTreeMap<Vec<(Option<String>, i32, String)>, Vec<Backend>> = BTreeMap::new();
        for b in backends {
            groups.entry(b.ports.clone()).or_default().push(b);
        }
        let mut wanted: Vec<(Vec<SlicePort>, Vec<Endpoint>)> = Vec::new();
        for group in groups.values() {
            for chunk in group.chunks(MAX_ENDPOINTS_PER_SLICE) {
                let endpoints = chunk
                    .iter()
                    .map(|b| Endpoint {
                        addresses: vec![b.ip.clone()],
                        conditions: Some(EndpointConditions { ready: Some(b.ready), serving: Some(b.ready || b.terminating), terminating: Some(b.terminating) }),
                        node_name: b.node.clone(),
                        target_ref: Some(b.pod.clone()),
                        hostname: b.hostname.clone(),
                        ..Default::default()
                    })
                    .collect();
                wanted.push((slice_ports(chunk, &service), endpoints));
            }
        }
        if wanted.is_empty() {
            wanted.push((slice_ports(&[], &service), Vec::new()));
        }
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: name.to_owned(),
            uid: service.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        for (index, (ports, endpoints)) in wanted.iter().enumerate() {
            let current = existing.get(index);
            if current.is_some_and(|c| c.endpoints == *endpoints && c.ports.as_ref() == Some(ports)) {
                continue;
            }
            let slice = EndpointSlice {
                metadata: kube::api::ObjectMeta {
                    name: current.map(|c| c.name_any()),
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(namespace.to_owned()),
                    labels: Some([(SERVICE_NAME_LABEL.to_owned(), name.to_owned()), (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())].into()),
                    owner_references: Some(vec![owner.clone()]),
                    resource_version: current.and_then(|c| c.metadata.resource_version.clone()),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: endpoints.clone(),
                ports: Some(ports.clone()),
            };
            match current {
                Some(c) => api.replace(&c.name_any(), &PostParams::default(), &slice).await?,
                None => api.create(&PostParams::default(), &slice).await?,
            };
        }
        for extra in existing.iter().skip(wanted.len()) {
            api.delete(&extra.name_any(), &DeleteParams::default()).await?;
        }
        Ok(Next::Done)
    }
}

/// Runs both controllers until shutdown.
pub async fn run(ctx: Context) {
    let services = ctx.informers.get::<Service>();
    let pods = ctx.informers.get::<Pod>();
    let endpoints = ctx.informers.get::<Endpoints>();
    let slices = ctx.informers.get::<EndpointSlice>();
    let pod_services = services.clone();
    let endpoints_controller = Controller::new("endpoint-controller", ctx.options.workers)
        .owns_kind(&services)
        .watch(&endpoints, |c| vec![key_of(c.object().as_ref())])
        .watch(&pods, move |c| services_of_pod(&pod_services, c));
    let slice_services = services.clone();
    let slice_controller = Controller::new("endpointslice-controller", ctx.options.workers)
        .owns_kind(&services)
        .watch(&slices, |c| {
            let slice = c.object();
            slice.labels().get(SERVICE_NAME_LABEL).map(|svc| vec![format!("{}/{svc}", slice.namespace().unwrap_or_default())]).unwrap_or_default()
        })
        .watch(&pods, move |c| services_of_pod(&slice_services, c));
    let first = Arc::new(EndpointsController { services: services.clone(), pods: pods.clone(), endpoints, client: ctx.client.clone() });
    let second = Arc::new(SliceController { services, pods, slices, client: ctx.client.clone() });
    tokio::join!(endpoints_controller.run(first, ctx.shutdown.clone()), slice_controller.run(second, ctx.shutdown.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec};

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), labels: Some([("app".into(), "web".into())].into()), ..Default::default() },
            spec: Some(PodSpec {
                containers: vec![Container { name: "c".into(), ports: Some(vec![ContainerPort { name: Some(port_name.into()), container_port: port, protocol: Some("TCP".into()), ..Default::default() }]), ..Default::default() }],
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition { type_: "Ready".into(), status: if ready { "True" } else { "False" }.into(), ..Default::default() }]),
                ..Default::default()
            }),
        })
    }

    fn service(target: IntOrString) -> Service {
        Service {
            metadata: kube::api::ObjectMeta { name: Some("web".into()), namespace: Some("ns".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some([("app".into(), "web".into())].into()),
                ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, target_port: Some(target), protocol: Some("TCP".into()), ..Default::default() }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn ready_and_not_ready_pods_are_listed_apart_with_named_ports_resolved() {
        let pods = [pod("a", "10.0.0.2", true, "http", 8080), pod("b", "10.0.0.3", false, "http", 8080)];
        let s = subsets(&backends(&service(IntOrString::String("http".into())), &pods));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].addresses.as_ref().unwrap().iter().map(|a| a.ip.as_str()).collect::<Vec<_>>(), ["10.0.0.2"]);
        assert_eq!(s[0].not_ready_addresses.as_ref().unwrap()[0].ip, "10.0.0.3");
        assert_eq!(s[0].ports.as_ref().unwrap()[0].port, 8080);
    }

    #[test]
    fn pods_resolving_a_named_port_differently_get_separate_subsets() {
        let pods = [pod("a", "10.0.0.2", true, "http", 8080), pod("b", "10.0.0.3", true, "http", 9090)];
        let s = subsets(&backends(&service(IntOrString::String("http".into())), &pods));
        assert_eq!(s.len(), 2);
        let a_without_port = pod("c", "10.0.0.4", true, "other", 1);
        assert!(backends(&service(IntOrString::String("http".into())), &[a_without_port])[0].ports.is_empty());
    }
}

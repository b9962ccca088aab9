//! ServiceLB (k3s's role, without its DaemonSets): a LoadBalancer Service's
//! `status.loadBalancer.ingress` becomes the nodes' addresses (ExternalIP, else
//! InternalIP), which every node's proxy programs like a node port. Two
//! LoadBalancer Services cannot share a port on the same addresses: the older
//! one keeps it and the other stays pending, as with k3s. Services that are no
//! longer LoadBalancers lose the ingress they were given.

use crate::controllers::Context;
use crate::runtime::{Change, Controller, Error, Informer, Next, Reconciler, key_of};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

fn is_ours(service: &Service) -> bool {
    service.spec.as_ref().is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none())
}

fn ingress(service: &Service) -> Vec<LoadBalancerIngress> {
    service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.clone()).unwrap_or_default()
}

/// `(protocol, port)` pairs a Service listens on.
fn ports(service: &Service) -> BTreeSet<(String, i32)> {
    service.spec.iter().flat_map(|s| s.ports.iter().flatten()).map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port)).collect()
}

/// The address a node is reached at from outside: ExternalIP, else InternalIP.
fn node_address(node: &Node) -> Option<String> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let of = |kind: &str| addresses.iter().find(|a| a.type_ == kind).map(|a| a.address.clone());
    of("ExternalIP").or_else(|| of("InternalIP"))
}

struct ServiceLb {
    services: Informer<Service>,
    nodes: Informer<Node>,
    client: kube::Client,
}

impl ServiceLb {
    /// Whether an older LoadBalancer Service already uses one of `service`'s ports.
    fn port_taken(&self, service: &Service) -> bool {
        let mine = ports(service);
        let age = |s: &Service| (s.metadata.creation_timestamp.clone().map(|t| t.0), key_of(s));
        self.services.filter(|other| is_ours(other) && key_of(other) != key_of(service) && age(other) < age(service)).iter().any(|other| !ports(other).is_disjoint(&mine))
    }
}

#[async_trait]
impl Reconciler for ServiceLb {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(service) = self.services.get(key) else { return Ok(Next::Done) };
        if service.spec.as_ref().is_some_and(|s| s.load_balancer_class.is_some()) {
            return Ok(Next::Done); // another load balancer's
        }
        let wanted: Vec<LoadBalancerIngress> = if is_ours(&service) && !self.port_taken(&service) {
            let addresses: BTreeSet<String> = self.nodes.list().iter().filter_map(|n| node_address(n)).collect();
            addresses.into_iter().map(|ip| LoadBalancerIngress { ip: Some(ip), ip_mode: Some("VIP".into()), ..Default::default() }).collect()
        } else {
            Vec::new()
        };
        if ingress(&service) == wanted {
            return Ok(Next::Done);
        }
        let patch = json!({ "status": { "loadBalancer": { "ingress": wanted } } });
        let (namespace, name) = crate::runtime::split_key(key);
        Api::<Service>::namespaced(self.client.clone(), namespace).patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(Next::Done)
    }
}

/// Every LoadBalancer Service (and those that just stopped being one) may gain
/// or lose addresses when any of them, or any node, changes.
fn all_load_balancers(services: &Informer<Service>) -> Vec<String> {
    services.filter(|s| is_ours(s) || !ingress(s).is_empty()).iter().map(|s| key_of(s.as_ref())).collect()
}

pub async fn run(ctx: Context) {
    let services = ctx.informers.get::<Service>();
    let nodes = ctx.informers.get::<Node>();
    let for_services = services.clone();
    let for_nodes = services.clone();
    let controller = Controller::new("service-lb-controller", 1)
        .watch(&services, move |change: &Change<Service>| {
            let concerned = |s: &Service| is_ours(s) || !ingress(s).is_empty();
            let was = matches!(change, Change::Applied { old: Some(old), .. } if concerned(old));
            if !was && !concerned(change.object()) {
                return Vec::new();
            }
            let mut keys = all_load_balancers(&for_services);
            keys.push(key_of(change.object().as_ref()));
            keys
        })
        .watch(&nodes, move |_| all_load_balancers(&for_nodes));
    let reconciler = Arc::new(ServiceLb { services, nodes, client: ctx.client.clone() });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

//! Routes between nodes, flannel's host-gw backend: a route to every other
//! node's pod CIDR via that node's InternalIP, kept from the Nodes informer.
//! One reconcile compares the whole wanted set with the main table's routes
//! of rk's own protocol number, so routes of deleted nodes go too, also those
//! left by an earlier run. It needs the nodes on one L2 network (the gateway
//! must be on-link); a node that is not is reported and skipped.

use super::links::{self, Route};
use crate::runtime::{Change, Controller, Error, Informer, Next, Reconciler};
use async_trait::async_trait;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The `proto` of rk's routes (`ip route show proto 82`), free in iproute2's table.
pub const ROUTE_PROTOCOL: u8 = 82;
/// The one key: every reconcile handles every node.
const KEY: &str = "routes";
/// Routes are checked again this often even if no node changes.
const RESYNC_EVERY: Duration = Duration::from_secs(60);

fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses.iter().filter(|a| a.type_ == "InternalIP").find_map(|a| a.address.parse().ok())
}

/// The routes this node wants: one per other node with a pod CIDR and an
/// InternalIP that is not this node's own.
pub fn wanted(nodes: &[Arc<Node>], own: &str) -> BTreeSet<Route> {
    let own_ip = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(own)).and_then(|n| internal_ip(n));
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(own))
        .filter_map(|n| Some(Route { destination: pod_cidr(n)?, gateway: internal_ip(n).filter(|ip| Some(*ip) != own_ip)? }))
        .collect()
}

/// A node change matters when a node comes, goes, or changes its pod CIDR or address.
fn routing_change(change: &Change<Node>) -> Vec<String> {
    if let Change::Applied { old: Some(old), new } = change
        && (pod_cidr(old), internal_ip(old)) == (pod_cidr(new), internal_ip(new))
    {
        return vec![];
    }
    vec![KEY.to_owned()]
}

struct HostGw {
    nodes: Informer<Node>,
    own: String,
    handle: rtnetlink::Handle,
    /// Routes the kernel refused as unreachable, reported once.
    unreachable: Mutex<HashSet<Route>>,
}

#[async_trait]
impl Reconciler for HostGw {
    async fn reconcile(&self, _key: &str) -> Result<Next, Error> {
        let wanted = wanted(&self.nodes.list(), &self.own);
        let current: BTreeSet<Route> = links::routes(&self.handle, ROUTE_PROTOCOL).await?.into_iter().collect();
        for stale in current.difference(&wanted) {
            links::delete_route(&self.handle, stale, ROUTE_PROTOCOL).await?;
            tracing::info!(destination = %stale.destination, via = %stale.gateway, "removed the route to a node's pods");
        }
        let mut failure = None;
        for route in wanted.difference(&current) {
            match links::replace_route(&self.handle, route, ROUTE_PROTOCOL).await {
                Ok(()) => {
                    self.unreachable.lock().expect("unreachable lock").remove(route);
                    tracing::info!(destination = %route.destination, via = %route.gateway, "added a route to a node's pods");
                }
                // The kernel's "Nexthop has invalid gateway" (EINVAL) or ENETUNREACH.
                Err(e) if matches!(links::errno(&e), Some(libc::EINVAL | libc::ENETUNREACH)) => {
                    if self.unreachable.lock().expect("unreachable lock").insert(*route) {
                        tracing::warn!(destination = %route.destination, via = %route.gateway, "a node's address is not on this node's network: its pods are unreachable from here (host-gw routing needs the nodes on one L2 network)");
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(Next::After(RESYNC_EVERY)),
        }
    }
}

/// Keeps the routes to other nodes' pods until `shutdown`.
pub async fn run(nodes: Informer<Node>, own: String, handle: rtnetlink::Handle, shutdown: CancellationToken) {
    let controller = Controller::new("host-gw", 1).watch(&nodes, routing_change);
    let reconciler = HostGw { nodes, own, handle, unreachable: Mutex::new(HashSet::new()) };
    controller.run(Arc::new(reconciler), shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Arc<Node> {
        Arc::new(Node {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(NodeSpec { pod_cidr: cidr.map(Into::into), ..Default::default() }),
            status: Some(NodeStatus {
                addresses: ip.map(|ip| vec![NodeAddress { type_: "Hostname".into(), address: name.into() }, NodeAddress { type_: "InternalIP".into(), address: ip.into() }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn every_other_node_with_a_cidr_and_an_address_gets_a_route() {
        let nodes = vec![
            node("me", Some("10.42.0.0/24"), Some("192.168.1.10")),
            node("b", Some("10.42.1.0/24"), Some("192.168.1.11")),
            node("no-cidr-yet", None, Some("192.168.1.12")),
            node("no-address", Some("10.42.3.0/24"), None),
            node("same-host", Some("10.42.4.0/24"), Some("192.168.1.10")),
        ];
        let routes: Vec<Route> = wanted(&nodes, "me").into_iter().collect();
        assert_eq!(routes, vec![Route { destination: "10.42.1.0/24".parse().unwrap(), gateway: "192.168.1.11".parse().unwrap() }]);
    }

    #[test]
    fn only_cidr_and_address_changes_wake_the_loop() {
        let before = node("b", Some("10.42.1.0/24"), Some("192.168.1.11"));
        let mut heartbeat = (*before).clone();
        heartbeat.metadata.resource_version = Some("2".into());
        let applied = |new: Node| Change::Applied { old: Some(before.clone()), new: Arc::new(new) };
        assert!(routing_change(&applied(heartbeat)).is_empty());
        assert_eq!(routing_change(&applied((*node("b", Some("10.42.1.0/24"), Some("192.168.1.99"))).clone())), vec![KEY]);
        assert_eq!(routing_change(&Change::Deleted(before.clone())), vec![KEY]);
    }
}

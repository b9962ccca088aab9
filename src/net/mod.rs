//! Node networking. The service proxy (kube-proxy's role, nftables mode):
//! every node programs its kernel so that Service cluster IPs, external and
//! load-balancer IPs and node ports reach the Service's ready endpoints. The
//! pod network (the CNI bridge/host-local plugins' and flannel host-gw's role):
//! each node's pods on a bridge of their own, addresses from the node's pod
//! CIDR, routes between nodes, masquerade on the way out. The cluster DNS and
//! the ingress proxy, and the Services that put a cluster IP in front of
//! listeners of the node itself.
//!
//! - [`netlink`]: the nfnetlink socket; one batch = one atomic transaction.
//! - [`nft`]: nf_tables objects and expressions as netlink messages.
//! - [`model`]: rk's table as comparable values, and the transactions between them.
//! - [`services`]: one Service and its EndpointSlices → its chains and map elements.
//! - [`proxier`]: the control loop over the shared informers.
//! - [`conntrack`]: clearing UDP flows stuck on endpoints that are gone.
//! - [`health`]: the health check node ports of `externalTrafficPolicy: Local` load balancers.
//! - [`servicelb`]: gives LoadBalancer Services the nodes' addresses (k3s's ServiceLB role).
//! - [`bench`]: `rk bench proxy`, the cost of programming one Service among many.
//! - [`dns`]: the cluster DNS (kube-dns/CoreDNS's role).
//! - [`ingress`]: the ingress controller and HTTP(S) proxy.
//! - [`node_service`]: Services whose endpoints are this node's own listeners.
//! - [`podnet`]: the node's bridge and the plugging of pod sandboxes into it.
//! - [`ipam`]: host-local addresses from the node's pod CIDR, kept on disk.
//! - [`links`]: links, addresses and routes over rtnetlink, in any network namespace.
//! - [`hostgw`]: the routes to other nodes' pod CIDRs.
//! - [`podrules`]: masquerading pods' outbound traffic, and Docker's forward policy.
//!
//! The proxy's rules live in rk's own tables, `table ip rk` and its Service
//! shards `table ip rk-services-NN`; the pod network's in `table ip rk-podnet`,
//! plus two accept rules in Docker's `DOCKER-USER` chain (see [`podrules`]).

pub mod bench;
pub mod conntrack;
pub mod dns;
pub mod health;
pub mod hostgw;
pub mod ingress;
pub mod ipam;
pub mod links;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod node_service;
pub mod podnet;
pub mod podrules;
pub mod proxier;
pub mod servicelb;
pub mod services;

use crate::runtime::{Controller, Informers};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The name of rk's shared table, and the prefix of its Service shards.
pub const TABLE: &str = "rk";

#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The pod network (ClusterIP traffic from outside it is masqueraded).
    pub cluster_cidr: ipnet::Ipv4Net,
    /// This node's name (`externalTrafficPolicy: Local` picks endpoints on it).
    pub node_name: String,
}

/// Runs the proxy until `shutdown`. Without nf_tables (or without the right to
/// use it) it says so and stops: rk has no userspace fallback.
pub async fn run(informers: Arc<Informers>, options: ProxyOptions, shutdown: CancellationToken) {
    let netlink = match netlink::Nfnetlink::open() {
        Ok(n) => n,
        Err(netlink::Error::Unavailable(e)) if e.raw_os_error() == Some(libc::EPERM) => {
            tracing::error!("service proxy disabled: programming nf_tables needs root (CAP_NET_ADMIN); Services are not reachable through their cluster IPs on this node");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "service proxy disabled: this kernel has no usable nf_tables and rk has no userspace proxy; Services are not reachable through their cluster IPs or node ports on this node");
            return;
        }
    };
    prepare_host();
    let services = informers.get::<Service>();
    let slices = informers.get::<EndpointSlice>();
    let controller = Controller::new("service-proxy", 1).owns_kind(&services).watch(&slices, proxier::slice_keys);
    let context = services::Context { cluster_cidr: options.cluster_cidr, node_name: Some(options.node_name) };
    let proxier = proxier::Proxier::new(netlink, services, slices, context, model::Tables::new(TABLE), controller.queue());
    tracing::info!(table = TABLE, "service proxy programming nf_tables");
    controller.run(Arc::new(proxier), shutdown).await;
}

/// Kernel settings the rules rely on. NodePorts on 127.0.0.1 need
/// `route_localnet` (as kube-proxy's iptables mode sets it); replies between
/// pods on one bridge are un-NATed only if bridged traffic passes netfilter.
fn prepare_host() {
    let route_localnet = "/proc/sys/net/ipv4/conf/all/route_localnet";
    if let Err(e) = std::fs::write(route_localnet, "1") {
        tracing::warn!(error = %e, "could not set net.ipv4.conf.all.route_localnet=1: NodePorts will not answer on 127.0.0.1");
    }
    match std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables") {
        Ok(v) if v.trim() == "1" => {}
        _ => tracing::warn!(
            "net.bridge.bridge-nf-call-iptables is not 1 (is br_netfilter loaded?): a pod reaching a Service whose endpoint is on the same bridge will not get replies"
        ),
    }
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() != "1") {
        tracing::warn!("net.ipv4.ip_forward is 0: Service traffic cannot be forwarded to pods");
    }
}

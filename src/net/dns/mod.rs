//! The cluster DNS (kube-dns/CoreDNS's role), served by `rk server` on the
//! node with hickory-server: the cluster zone and the reverse zones of the
//! cluster's addresses answered from the shared informers, every other name
//! forwarded to the host's resolvers. The `kube-system/kube-dns` Service at
//! the DNS service IP points at the node's listener, so the service proxy
//! carries pods' queries to 10.43.0.10:53 here. `resolv` renders pods'
//! resolv.conf for the node agent.

mod authority;
mod cluster;
pub mod resolv;
mod reverse;
mod zone;

use crate::runtime::Informers;
use authority::Authority;
use cluster::Cluster;
use hickory_server::Server;
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::resolver::config::NameServerConfig;
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, ZoneHandler};
use resolv::{PodDns, ResolvConf};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a TCP client may stay silent before its connection is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 64;
/// How long answering waits for the caches' first list (CoreDNS waits 5s).
const SYNC_WAIT: Duration = Duration::from_secs(10);
/// The reverse trees whose cluster addresses are answered here.
const REVERSE_ZONES: &[&str] = &["in-addr.arpa.", "ip6.arpa."];

/// How the cluster DNS runs.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    pub enabled: bool,
    /// Where the server listens (UDP and TCP); pods reach it through the kube-dns Service.
    pub listen: SocketAddr,
    /// The cluster zone, `cluster.local` by default.
    pub cluster_domain: String,
    /// The nameserver ClusterFirst pods are given: the kube-dns Service address by default.
    pub cluster_dns: IpAddr,
    /// Where names outside the zone go; empty means the host's resolvers.
    pub upstreams: Vec<SocketAddr>,
}

impl DnsOptions {
    /// The defaults of a cluster whose Services get addresses from `service_cidr`:
    /// the kube-dns Service's address and `cluster.local`.
    pub fn for_service_range(service_cidr: ipnet::Ipv4Net) -> Self {
        let ranges = crate::api::allocator::Ranges { service_cidr, ..Default::default() };
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 53)),
            cluster_domain: "cluster.local".into(),
            cluster_dns: IpAddr::V4(ranges.dns_service_ip()),
            upstreams: Vec::new(),
        }
    }

    /// What the node agent needs to write pods' resolv.conf.
    pub fn pod_dns(&self) -> PodDns {
        PodDns {
            cluster_dns: self.cluster_dns,
            cluster_domain: self.cluster_domain.clone(),
            host: ResolvConf::host(Path::new(resolv::HOST_RESOLV_CONF), Path::new(resolv::SYSTEMD_RESOLV_CONF)),
        }
    }

    /// The servers names outside the zone are forwarded to, never this
    /// server itself (a host whose resolv.conf names 127.0.0.1 would loop).
    fn upstream_servers(&self) -> Vec<SocketAddr> {
        let servers = if self.upstreams.is_empty() {
            self.pod_dns().host.upstream_addresses().into_iter().map(|ip| SocketAddr::new(ip, 53)).collect()
        } else {
            self.upstreams.clone()
        };
        let listen = self.listen;
        let localhost = |ip: IpAddr| ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        let is_self = |s: &SocketAddr| *s == listen || (listen.ip().is_unspecified() && s.port() == listen.port() && localhost(s.ip()));
        servers.into_iter().filter(|s| !is_self(s)).collect()
    }
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Binds the DNS listeners and starts answering once the informer caches are
/// synced; returns the bound address (UDP and TCP share the port).
pub async fn start(
    options: &DnsOptions,
    informers: &Informers,
    dns_service_ip: Ipv4Addr,
    shutdown: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<SocketAddr, Error> {
    let udp = tokio::net::UdpSocket::bind(options.listen).await.map_err(|e| format!("listening for DNS on udp {}: {e}", options.listen))?;
    let address = udp.local_addr()?;
    let tcp = tokio::net::TcpListener::bind(address).await.map_err(|e| format!("listening for DNS on tcp {address}: {e}"))?;
    let mut domain = Name::from_ascii(&options.cluster_domain).map_err(|e| format!("cluster domain {:?}: {e}", options.cluster_domain))?;
    domain.set_fqdn(true);
    let cluster = Arc::new(Cluster { domain: domain.clone(), services: informers.get(), slices: informers.get(), namespaces: informers.get() });
    let upstreams = options.upstream_servers();
    if upstreams.is_empty() {
        tracing::warn!("no upstream DNS servers known (none in the host's resolv.conf, no --dns-upstream): names outside the cluster will be refused");
    }
    let catalog = catalog(cluster.clone(), dns_service_ip, forwarder(&upstreams)?);
    tasks.spawn(async move {
        // Answering before the caches hold the cluster would deny names that exist.
        let synced = async { tokio::join!(cluster.services.wait_synced(), cluster.slices.wait_synced(), cluster.namespaces.wait_synced()) };
        tokio::select! {
            _ = tokio::time::timeout(SYNC_WAIT, synced) => {}
            _ = shutdown.cancelled() => return,
        }
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        tracing::info!(%address, upstreams = ?upstreams, "cluster DNS is serving");
        tokio::select! {
            result = server.block_until_done() => if let Err(e) = result { tracing::error!(error = %e, "cluster DNS stopped") },
            _ = shutdown.cancelled() => { let _ = server.shutdown_gracefully().await; }
        }
    });
    Ok(address)
}

/// The zones: the cluster zone, the reverse trees (cluster addresses first,
/// then upstream), and the root, forwarded.
fn catalog(cluster: Arc<Cluster>, dns_service_ip: Ipv4Addr, upstream: Option<Arc<dyn ZoneHandler>>) -> Catalog {
    let mut catalog = Catalog::new();
    let origin = LowerName::new(&cluster.domain);
    let zone = zone::ClusterZone::new(cluster.clone(), dns_service_ip, upstream.clone());
    catalog.upsert(origin.clone(), vec![Arc::new(Authority::new(origin, zone))]);
    for tree in REVERSE_ZONES {
        let origin = LowerName::new(&Name::from_ascii(tree).expect("reverse zone names are valid"));
        let mut chain: Vec<Arc<dyn ZoneHandler>> = vec![Arc::new(Authority::new(origin.clone(), reverse::ReverseZone::new(cluster.clone())))];
        chain.extend(upstream.clone());
        catalog.upsert(origin, chain);
    }
    if let Some(upstream) = upstream {
        catalog.upsert(LowerName::new(&Name::root()), vec![upstream]);
    }
    catalog
}

/// A caching forwarder to `servers` (UDP, retried over TCP when truncated).
fn forwarder(servers: &[SocketAddr]) -> Result<Option<Arc<dyn ZoneHandler>>, Error> {
    if servers.is_empty() {
        return Ok(None);
    }
    let name_servers = servers
        .iter()
        .map(|server| {
            let mut config = NameServerConfig::udp_and_tcp(server.ip());
            for connection in &mut config.connections {
                connection.port = server.port();
            }
            config
        })
        .collect();
    let handler = ForwardZoneHandler::builder_tokio(ForwardConfig { name_servers, options: None }).build()?;
    Ok(Some(Arc::new(handler)))
}

/// Publishes `kube-system/kube-dns` at `cluster_ip`, pointing at the DNS
/// listener on this node (`address`, `port`), as clusters name their DNS Service.
pub async fn publish_service(client: &kube::Client, cluster_ip: Ipv4Addr, address: IpAddr, port: u16) -> Result<(), String> {
    use crate::net::node_service::{NodePort, NodeService, publish};
    let ports = [
        NodePort { name: "dns", protocol: "UDP", port: 53, target: port },
        NodePort { name: "dns-tcp", protocol: "TCP", port: 53, target: port },
    ];
    let labels = [("k8s-app", "kube-dns"), ("kubernetes.io/cluster-service", "true"), ("kubernetes.io/name", "rk-dns")];
    publish(client, &NodeService { namespace: "kube-system", name: "kube-dns", labels: &labels, cluster_ip: IpAddr::V4(cluster_ip), address, ports: &ports }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_never_forwards_to_itself() {
        let options = DnsOptions {
            enabled: true,
            listen: "0.0.0.0:53".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            cluster_dns: "10.43.0.10".parse().unwrap(),
            upstreams: ["127.0.0.1:53", "192.0.2.1:53", "127.0.0.1:5353"].iter().map(|s| s.parse().unwrap()).collect(),
        };
        let kept: Vec<String> = options.upstream_servers().iter().map(ToString::to_string).collect();
        assert_eq!(kept, ["192.0.2.1:53", "127.0.0.1:5353"]);
    }
}

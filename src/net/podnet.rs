//! rk's pod network on one node, what the CNI bridge and host-local plugins
//! and flannel's host-gw backend do for k3s: once the node has its
//! `spec.podCIDR`, the agent owns a bridge (`rk0`) holding the CIDR's first
//! address as the pods' gateway, and plugs each pod sandbox into it — a veth
//! pair, one end a hairpin port of the bridge, the other moved into the
//! sandbox's network namespace as `eth0` with an address from [`Ipam`] and a
//! default route via the bridge. Routes to other nodes' pods come from
//! [`hostgw`](super::hostgw); masquerading and Docker's forward policy from
//! [`podrules`](super::podrules). Everything happens in the network namespace
//! the agent runs in, whatever namespace Docker's daemon is in.

use super::ipam::{self, Ipam};
use super::links;
use super::netlink::Nfnetlink;
use super::podrules::{self, Ranges};
use crate::runtime::Informers;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the agent waits for the node IPAM controller to give its node a pod CIDR.
const POD_CIDR_WAIT: Duration = Duration::from_secs(60);
/// How often the bridge, kernel settings and rules are checked and repaired.
const MAINTAIN_EVERY: Duration = Duration::from_secs(30);
/// The name of a pod's end of its veth pair.
const POD_INTERFACE: &str = "eth0";

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the pod network is made of, besides the node's pod CIDR.
#[derive(Clone, Debug)]
pub struct Options {
    /// Every node's pods (traffic within it is neither masqueraded nor dropped).
    pub cluster_cidr: Ipv4Net,
    /// Service cluster IPs (never masqueraded on the way out).
    pub service_cidr: Ipv4Net,
    /// The bridge pods are plugged into.
    pub bridge: String,
}

impl Options {
    pub fn new(cluster_cidr: Ipv4Net, service_cidr: Ipv4Net) -> Self {
        Self { cluster_cidr, service_cidr, bridge: "rk0".into() }
    }
}

/// The node's pod network, ready to plug sandboxes in.
pub struct PodNetwork {
    handle: rtnetlink::Handle,
    bridge: String,
    bridge_index: AtomicU32,
    gateway: Ipv4Addr,
    ipam: Ipam,
    ranges: Ranges,
    /// Sandboxes plugged in by this process, with their addresses. A sandbox
    /// found after a restart is plugged again (every step is idempotent)
    /// before its address is reported.
    plugged: Mutex<HashMap<String, Ipv4Addr>>,
}

fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

/// The host end of a sandbox's veth pair: `rkv` and the start of its id.
fn host_interface(sandbox: &str) -> String {
    format!("rkv{}", sandbox.get(..12).unwrap_or(sandbox))
}

/// Waits for the node's pod CIDR, sets the network up and starts keeping it
/// (and the routes to other nodes) in shape. `None` when there is no pod CIDR
/// or the network cannot be set up: the agent then puts pods on Docker's network.
pub async fn start(informers: &Arc<Informers>, node: &str, options: &Options, data_dir: &Path, shutdown: &CancellationToken) -> Option<Arc<PodNetwork>> {
    let nodes = informers.get::<Node>();
    let deadline = tokio::time::Instant::now() + POD_CIDR_WAIT;
    let pod_cidr = loop {
        if let Some(cidr) = nodes.get(node).as_deref().and_then(pod_cidr) {
            break cidr;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(node, "the node has no spec.podCIDR after {}s (is the node IPAM controller running?); pods join Docker's network instead of rk's pod network", POD_CIDR_WAIT.as_secs());
            return None;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    let network = match PodNetwork::setup(options, pod_cidr, data_dir).await {
        Ok(network) => Arc::new(network),
        Err(e) => {
            tracing::warn!(error = %e, "rk's pod network could not be set up (it needs root: CAP_NET_ADMIN); pods join Docker's network instead");
            return None;
        }
    };
    tracing::info!(bridge = options.bridge, %pod_cidr, gateway = %network.gateway, "pod network ready");
    tokio::spawn(network.clone().maintain(shutdown.clone()));
    tokio::spawn(super::hostgw::run(nodes, node.to_owned(), network.handle.clone(), shutdown.clone()));
    Some(network)
}

impl PodNetwork {
    async fn setup(options: &Options, pod_cidr: Ipv4Net, data_dir: &Path) -> Result<Self, Error> {
        let handle = links::connect()?;
        let gateway = ipam::gateway(pod_cidr);
        let ipam = Ipam::open(&data_dir.join("pod-network").join("ipam"), pod_cidr)?;
        let ranges = Ranges { pod_cidr, cluster_cidr: options.cluster_cidr, service_cidr: options.service_cidr };
        let network = Self {
            handle,
            bridge: options.bridge.clone(),
            bridge_index: AtomicU32::new(0),
            gateway,
            ipam,
            ranges,
            plugged: Mutex::new(HashMap::new()),
        };
        network.ensure_host().await?;
        Ok(network)
    }

    /// The bridge, the kernel settings and the rules: created or repaired.
    async fn ensure_host(&self) -> Result<(), Error> {
        let index = links::ensure_bridge(&self.handle, &self.bridge, self.gateway, self.ranges.pod_cidr.prefix_len()).await?;
        let before = self.bridge_index.swap(index, Ordering::Relaxed);
        if before != 0 && before != index {
            // Its ports went with it: every sandbox is plugged in again on its next sync.
            tracing::warn!(bridge = self.bridge, "the pod bridge was deleted and has been created again");
            self.plugged.lock().expect("plugged lock").clear();
        }
        enable_forwarding();
        let ranges = self.ranges;
        let installed = tokio::task::spawn_blocking(move || -> Result<podrules::Installed, super::netlink::Error> {
            podrules::ensure(&mut Nfnetlink::open()?, &ranges)
        })
        .await??;
        if installed.masquerade {
            tracing::info!(table = podrules::TABLE, pod_cidr = %ranges.pod_cidr, "pods' traffic leaving the cluster is masqueraded");
        }
        if installed.docker_user {
            tracing::info!(cluster_cidr = %ranges.cluster_cidr, "accepted pod traffic in Docker's DOCKER-USER chain (Docker's FORWARD policy drops the rest)");
        }
        Ok(())
    }

    async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(MAINTAIN_EVERY) => {}
            }
            if let Err(e) = self.ensure_host().await {
                tracing::warn!(error = %e, "repairing the pod network's bridge or rules failed");
            }
        }
    }

    /// Plugs a running sandbox (its process `pid`) into the bridge; returns its address.
    pub async fn plug(&self, sandbox: &str, pid: u32) -> Result<Ipv4Addr, Error> {
        let address = self.ipam.allocate(sandbox)?;
        let netns = File::open(format!("/proc/{pid}/ns/net")).map_err(|e| format!("opening the sandbox's network namespace: {e}"))?;
        let pod = links::connect_in(&netns)?;
        let host_name = host_interface(sandbox);
        let pod_end = links::link(&pod, POD_INTERFACE).await?;
        let host_end = links::link(&self.handle, &host_name).await?;
        if pod_end.is_none() || host_end.is_none() {
            // Half of a pair from an interrupted attempt goes first.
            if let Some(stale) = pod_end {
                pod.link().del(stale.header.index).execute().await?;
            }
            links::delete_link(&self.handle, &host_name).await?;
            links::create_veth(&self.handle, &host_name, POD_INTERFACE, &netns).await?;
        }
        let host_end = links::link(&self.handle, &host_name).await?.ok_or("the veth's host end vanished")?;
        let bridge = self.bridge_index.load(Ordering::Relaxed);
        if links::controller(&host_end) != Some(bridge) || !is_up(&host_end) {
            links::attach_to_bridge(&self.handle, host_end.header.index, bridge).await?;
        }
        let pod_end = links::link(&pod, POD_INTERFACE).await?.ok_or("the veth's pod end vanished")?;
        links::ensure_only_address(&pod, pod_end.header.index, address, self.ranges.pod_cidr.prefix_len()).await?;
        links::set_up(&pod, pod_end.header.index).await?;
        if let Some(lo) = links::link(&pod, "lo").await? {
            links::set_up(&pod, lo.header.index).await?;
        }
        links::replace_default_route(&pod, self.gateway).await?;
        self.plugged.lock().expect("plugged lock").insert(sandbox.to_owned(), address);
        Ok(address)
    }

    /// The address of a sandbox this process plugged in.
    pub fn address_of(&self, sandbox: &str) -> Option<Ipv4Addr> {
        self.plugged.lock().expect("plugged lock").get(sandbox).copied()
    }

    /// Unplugs a sandbox (stopped or gone) and frees its address.
    pub async fn unplug(&self, sandbox: &str) -> Result<(), Error> {
        self.plugged.lock().expect("plugged lock").remove(sandbox);
        links::delete_link(&self.handle, &host_interface(sandbox)).await?;
        self.ipam.release(sandbox)?;
        Ok(())
    }

    /// The sandboxes holding addresses now.
    pub fn holders(&self) -> HashSet<String> {
        self.ipam.allocations().into_iter().map(|(_, owner)| owner).collect()
    }
}

fn is_up(link: &rtnetlink::packet_route::link::LinkMessage) -> bool {
    link.header.flags.contains(rtnetlink::packet_route::link::LinkFlags::Up)
}

/// Writes `value` to a sysctl unless it holds it; logs what it changed.
fn set_sysctl(path: &str, value: &str, why: &str) {
    match std::fs::read_to_string(path) {
        Ok(current) if current.trim() == value => {}
        Ok(_) => match std::fs::write(path, value) {
            Ok(()) => tracing::info!(sysctl = path, value, "set: {why}"),
            Err(e) => tracing::warn!(sysctl = path, error = %e, "could not set: {why}"),
        },
        Err(e) => tracing::warn!(sysctl = path, error = %e, "not available: {why}"),
    }
}

/// IP forwarding, and bridged IPv4 through netfilter (loading `br_netfilter`
/// when its settings are missing).
fn enable_forwarding() {
    set_sysctl("/proc/sys/net/ipv4/ip_forward", "1", "pods' traffic is routed through the node");
    let bridge_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !Path::new(bridge_nf).exists() {
        match std::process::Command::new("modprobe").arg("br_netfilter").status() {
            Ok(status) if status.success() => tracing::info!("loaded the br_netfilter module"),
            other => tracing::warn!(result = ?other, "could not load br_netfilter"),
        }
    }
    set_sysctl(bridge_nf, "1", "traffic between pods on one bridge passes conntrack, so Service replies are un-NATed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_fit_the_kernels_limit() {
        let id = "4f1c2a9b7d3e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd";
        assert_eq!(host_interface(id), "rkv4f1c2a9b7d3e");
        assert!(host_interface(id).len() <= 15);
        assert_eq!(host_interface("abc"), "rkvabc");
    }
}

//! How the agent puts a pod on the network. With rk's pod network (the
//! default once the node has a pod CIDR), sandboxes are created on Docker's
//! `none` network and plugged into the node's bridge once they run; their
//! address comes from the pod network, not from Docker. Without it, they join
//! a Docker network (`bridge`) and Docker gives the address. Either way each
//! pod gets the `/etc/resolv.conf` and `/etc/hosts` the kubelet would write
//! ([`names`](super::names)), bind-mounted into all its containers.

use super::docker::{Observed, Role, Runtime};
use super::names;
use crate::net::dns::resolv::PodDns;
use crate::net::podnet::PodNetwork;
use k8s_openapi::api::core::v1::Pod;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Host files mounted over a pod's containers' own.
#[derive(Clone, Debug)]
pub struct EtcFiles {
    pub resolv_conf: PathBuf,
    /// None for pods on the host's network, which see the host's.
    pub hosts: Option<PathBuf>,
}

pub struct Networking {
    pod_network: Option<Arc<PodNetwork>>,
    /// The Docker network sandboxes join without rk's pod network.
    docker_network: String,
    dns: PodDns,
}

/// Writes `content` to `path` unless it holds it already. In place: the file
/// may be bind-mounted, and a rename would leave containers with the old one.
fn write_if_changed(path: &Path, content: &str) -> io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    std::fs::write(path, content)
}

impl Networking {
    pub fn new(pod_network: Option<Arc<PodNetwork>>, docker_network: &str, dns: PodDns) -> Self {
        Self { pod_network, docker_network: docker_network.to_owned(), dns }
    }

    /// The Docker network a sandbox not on the host's network is created on.
    pub fn sandbox_network(&self) -> &str {
        if self.pod_network.is_some() { "none" } else { &self.docker_network }
    }

    /// Gives sandboxes on rk's pod network their addresses (Docker knows none).
    pub fn fill_addresses(&self, containers: &mut [Observed]) {
        let Some(network) = &self.pod_network else { return };
        for sandbox in containers.iter_mut().filter(|c| c.role == Role::Sandbox && c.ip.is_none()) {
            sandbox.ip = network.address_of(&sandbox.id).map(|ip| ip.to_string());
        }
    }

    /// Plugs a running sandbox without an address into rk's pod network.
    pub async fn plug(&self, sandbox: &mut Observed) -> Result<(), String> {
        let Some(network) = &self.pod_network else { return Ok(()) };
        if sandbox.ip.is_some() {
            return Ok(());
        }
        let pid = sandbox.pid.ok_or("the sandbox has no process")?;
        let address = network.plug(&sandbox.id, pid).await.map_err(|e| e.to_string())?;
        sandbox.ip = Some(address.to_string());
        Ok(())
    }

    /// Unplugs stopped or removed sandboxes, freeing their addresses.
    pub async fn unplug<'a>(&self, sandboxes: impl IntoIterator<Item = &'a Observed>) {
        let Some(network) = &self.pod_network else { return };
        for sandbox in sandboxes.into_iter().filter(|c| c.role == Role::Sandbox) {
            if let Err(e) = network.unplug(&sandbox.id).await {
                tracing::warn!(sandbox = sandbox.id, error = %e, "unplugging a pod sandbox failed");
            }
        }
    }

    /// Frees the addresses of sandboxes that no longer run, whoever stopped them.
    pub async fn release_unused(&self, runtime: &Runtime) {
        let Some(network) = &self.pod_network else { return };
        // Holders first: a sandbox plugged after the listing must not look unused.
        let holders = network.holders();
        let Ok(running) = runtime.running_sandboxes().await else { return };
        for sandbox in holders.difference(&running) {
            if let Err(e) = network.unplug(sandbox).await {
                tracing::warn!(sandbox, error = %e, "freeing the address of a stopped sandbox failed");
            }
        }
    }

    /// Writes the pod's `/etc` files under `pod_dir/etc`.
    pub fn write_etc_files(&self, pod: &Pod, pod_dir: &Path, pod_ip: Option<&str>) -> io::Result<EtcFiles> {
        let dir = pod_dir.join("etc");
        std::fs::create_dir_all(&dir)?;
        let resolv_conf = dir.join("resolv.conf");
        write_if_changed(&resolv_conf, &self.dns.resolv_conf(pod).render())?;
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let hosts = match pod_ip.filter(|_| !host_network) {
            Some(ip) => {
                let path = dir.join("hosts");
                write_if_changed(&path, &names::hosts(pod, ip, &self.dns.cluster_domain))?;
                Some(path)
            }
            None => None,
        };
        Ok(EtcFiles { resolv_conf, hosts })
    }
}

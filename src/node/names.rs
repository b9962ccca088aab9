//! How a pod resolves names: the `/etc/resolv.conf` and `/etc/hosts` the agent
//! writes for each pod (under `pods/<uid>/etc/`) and bind-mounts into every
//! container of it, as the kubelet does. Pure renderers; `network.rs` writes
//! the files.
//!
//! [`resolv_conf`] is the hook for the cluster DNS: ClusterFirst pods get the
//! cluster DNS Service's address with upstream's search path and `ndots:5`,
//! Default pods (and ClusterFirst pods on the host's network) the host's
//! resolver configuration, None pods only their `dnsConfig`.

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Pod, PodDNSConfig};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The host's resolver configuration.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the real upstream servers, used when
/// `/etc/resolv.conf` points at its loopback stub (unreachable from a pod).
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";
/// The index of the cluster DNS Service's address in the Service range (k3s's 10.43.0.10).
const DNS_SERVICE_INDEX: u32 = 10;

/// The cluster DNS a ClusterFirst pod is pointed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    pub nameserver: Ipv4Addr,
    pub domain: String,
}

impl Dns {
    /// The `kube-dns` Service's address (the 10th of the Service range) and `cluster.local`.
    pub fn in_service_range(service_cidr: Ipv4Net) -> Self {
        let nameserver = Ipv4Addr::from(u32::from(service_cidr.network()).saturating_add(DNS_SERVICE_INDEX));
        Self { nameserver, domain: "cluster.local".into() }
    }
}

/// The host's resolver configuration file: `/etc/resolv.conf`, unless it only
/// names loopback servers and systemd-resolved has the upstream list.
pub fn host_resolv_conf() -> PathBuf {
    let host = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
    let servers = directive(&host, "nameserver");
    let all_loopback = !servers.is_empty() && servers.iter().all(|s| s.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()));
    if all_loopback && Path::new(RESOLVED_UPSTREAM).exists() { PathBuf::from(RESOLVED_UPSTREAM) } else { PathBuf::from(HOST_RESOLV_CONF) }
}

/// The words after `name` on every `name` line of a resolv.conf, in order.
fn directive(content: &str, name: &str) -> Vec<String> {
    content
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(name)).then(|| words.map(str::to_owned).collect::<Vec<_>>())
        })
        .flatten()
        .collect()
}

#[derive(Default)]
struct Resolver {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

impl Resolver {
    fn parse(content: &str) -> Self {
        Self { nameservers: directive(content, "nameserver"), searches: directive(content, "search"), options: directive(content, "options") }
    }

    /// Adds a pod's `dnsConfig`: servers and search domains appended, options
    /// replacing those of the same name.
    fn merge(&mut self, config: &PodDNSConfig) {
        for server in config.nameservers.iter().flatten() {
            if !self.nameservers.contains(server) {
                self.nameservers.push(server.clone());
            }
        }
        for search in config.searches.iter().flatten() {
            if !self.searches.contains(search) {
                self.searches.push(search.clone());
            }
        }
        for option in config.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else { continue };
            self.options.retain(|o| o.split(':').next() != Some(name));
            self.options.push(option.value.as_deref().map_or_else(|| name.to_owned(), |v| format!("{name}:{v}")));
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for server in &self.nameservers {
            out.push_str(&format!("nameserver {server}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// The pod's `/etc/resolv.conf`, given the host's (`host`).
pub fn resolv_conf(pod: &Pod, dns: &Dns, host: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let mut resolver = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
        "None" => Resolver::default(),
        "Default" => Resolver::parse(host),
        "ClusterFirst" if host_network => Resolver::parse(host),
        _ => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let domain = &dns.domain;
            let mut searches = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.clone()];
            searches.extend(Resolver::parse(host).searches);
            Resolver { nameservers: vec![dns.nameserver.to_string()], searches, options: vec!["ndots:5".into()] }
        }
    };
    if let Some(config) = &spec.dns_config {
        resolver.merge(config);
    }
    resolver.render()
}

/// The pod's `/etc/hosts` (pods on their own network): localhost, the pod's
/// own names on its address, and its `hostAliases`.
pub fn hosts(pod: &Pod, pod_ip: &str, dns: &Dns) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let hostname = spec.hostname.clone().or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        Some(subdomain) => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            out.push_str(&format!("{pod_ip}\t{hostname}.{subdomain}.{namespace}.svc.{}\t{hostname}\n", dns.domain));
        }
        None => out.push_str(&format!("{pod_ip}\t{hostname}\n")),
    }
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            out.push_str(&format!("{}\t{}\n", alias.ip, alias.hostnames.unwrap_or_default().join("\t")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfigOption, PodSpec};

    const HOST: &str = "# generated\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";

    fn pod(policy: Option<&str>, host_network: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.metadata.namespace = Some("shop".into());
        pod.spec = Some(PodSpec { dns_policy: policy.map(Into::into), host_network: Some(host_network), ..Default::default() });
        pod
    }

    fn dns() -> Dns {
        Dns::in_service_range("10.43.0.0/16".parse().unwrap())
    }

    #[test]
    fn cluster_first_pods_ask_the_cluster_dns_with_the_upstream_search_path() {
        assert_eq!(dns().nameserver, Ipv4Addr::new(10, 43, 0, 10));
        let expected = "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.43.0.10\noptions ndots:5\n";
        assert_eq!(resolv_conf(&pod(None, false), &dns(), HOST), expected);
        assert_eq!(resolv_conf(&pod(Some("ClusterFirstWithHostNet"), true), &dns(), HOST), expected);
    }

    #[test]
    fn default_pods_and_cluster_first_pods_on_the_host_network_get_the_hosts_resolver() {
        let expected = "search corp.example\nnameserver 192.0.2.53\noptions edns0\n";
        assert_eq!(resolv_conf(&pod(Some("Default"), false), &dns(), HOST), expected);
        assert_eq!(resolv_conf(&pod(Some("ClusterFirst"), true), &dns(), HOST), expected);
    }

    #[test]
    fn dns_config_is_all_a_none_pod_gets_and_extends_the_others() {
        let mut p = pod(Some("None"), false);
        let config = PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into()]),
            searches: Some(vec!["extra.example".into()]),
            options: Some(vec![PodDNSConfigOption { name: Some("ndots".into()), value: Some("2".into()) }]),
        };
        p.spec.as_mut().unwrap().dns_config = Some(config.clone());
        assert_eq!(resolv_conf(&p, &dns(), HOST), "search extra.example\nnameserver 1.1.1.1\noptions ndots:2\n");
        let mut cluster = pod(None, false);
        cluster.spec.as_mut().unwrap().dns_config = Some(config);
        let rendered = resolv_conf(&cluster, &dns(), HOST);
        assert!(rendered.ends_with("nameserver 10.43.0.10\nnameserver 1.1.1.1\noptions ndots:2\n"), "{rendered}");
    }

    #[test]
    fn the_hosts_file_names_the_pod_on_its_address_with_its_aliases() {
        let mut p = pod(None, false);
        let spec = p.spec.as_mut().unwrap();
        spec.hostname = Some("db".into());
        spec.subdomain = Some("backend".into());
        spec.host_aliases = Some(vec![HostAlias { ip: "192.0.2.9".into(), hostnames: Some(vec!["a.example".into(), "b.example".into()]) }]);
        let rendered = hosts(&p, "10.42.0.7", &dns());
        assert!(rendered.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"), "{rendered}");
        assert!(rendered.contains("10.42.0.7\tdb.backend.shop.svc.cluster.local\tdb\n"), "{rendered}");
        assert!(rendered.ends_with("192.0.2.9\ta.example\tb.example\n"), "{rendered}");
        assert!(hosts(&pod(None, false), "10.42.0.8", &dns()).contains("10.42.0.8\tweb-0\n"));
    }
}

//! resolv.conf, both ways: reading the host's (to find upstream resolvers and
//! the host's search domains) and rendering a pod's for each `dnsPolicy`, as the
//! kubelet does, so the node agent can write it into the pod's /etc/resolv.conf.
//!
//! Loopback stub resolvers (systemd-resolved's 127.0.0.53, a local dnsmasq)
//! answer only inside the host's network namespace. When /etc/resolv.conf names
//! nothing else, the real upstreams are read from systemd-resolved's
//! /run/systemd/resolve/resolv.conf, as k3s does; pods in their own network
//! namespace never get a loopback nameserver.

use k8s_openapi::api::core::v1::{Pod, PodDNSConfigOption};
use std::net::IpAddr;
use std::path::Path;

/// The host's resolver configuration file.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the real upstream servers, behind its 127.0.0.53 stub.
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// Most nameservers a resolver uses (glibc's MAXNS), as the kubelet limits them.
const MAX_NAMESERVERS: usize = 3;
/// Most search domains, and the longest search line, with upstream's expanded DNS config.
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_LINE: usize = 2048;
/// Search domains longer than a DNS name can be make some resolvers abort.
const MAX_SEARCH_DOMAIN: usize = 253;
/// The option every ClusterFirst pod gets, so `web` and `web.ns` go through the search list.
const CLUSTER_FIRST_OPTIONS: &[&str] = &["ndots:5"];

/// The three things a resolv.conf says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses as the kubelet does: nameserver lines accumulate, the last search
    /// and options lines win, comments and other keywords are ignored.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.nameservers.extend(words.next().map(str::to_owned)),
                Some("search") => conf.searches = words.map(|s| s.trim_end_matches('.').to_owned()).collect(),
                Some("options") => conf.options = words.map(str::to_owned).collect(),
                _ => {}
            }
        }
        conf
    }

    /// Reads and parses a file; a missing or unreadable file says nothing.
    pub fn read(path: &Path) -> Self {
        std::fs::read_to_string(path).map(|t| Self::parse(&t)).unwrap_or_default()
    }

    /// The host's configuration: `primary`, unless it names only loopback
    /// stubs and `resolved` (systemd-resolved's upstream list) names real servers.
    pub fn host(primary: &Path, resolved: &Path) -> Self {
        let conf = Self::read(primary);
        if !conf.nameservers.is_empty() && conf.nameservers.iter().all(|n| is_loopback(n)) {
            let upstream = Self::read(resolved);
            if upstream.nameservers.iter().any(|n| !is_loopback(n)) {
                return upstream;
            }
        }
        conf
    }

    /// The file's text, in the order container runtimes write it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }

    /// The nameservers a process in another network namespace can reach.
    fn without_loopback(&self) -> Self {
        Self { nameservers: self.nameservers.iter().filter(|n| !is_loopback(n)).cloned().collect(), ..self.clone() }
    }

    /// Nameservers that are IP addresses, non-loopback ones first, for a
    /// forwarder running on the host (which can reach a loopback stub as a last resort).
    pub fn upstream_addresses(&self) -> Vec<IpAddr> {
        let addresses: Vec<IpAddr> = self.nameservers.iter().filter_map(|n| n.parse().ok()).collect();
        let (remote, local): (Vec<IpAddr>, Vec<IpAddr>) = addresses.into_iter().partition(|a| !a.is_loopback());
        if remote.is_empty() { local } else { remote }
    }
}

fn is_loopback(nameserver: &str) -> bool {
    nameserver.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// What the node agent knows to give pods their DNS configuration.
#[derive(Clone, Debug)]
pub struct PodDns {
    /// The cluster DNS address (the kube-dns Service) for ClusterFirst pods.
    pub cluster_dns: IpAddr,
    /// `cluster.local` unless configured otherwise.
    pub cluster_domain: String,
    /// The host's resolver configuration.
    pub host: ResolvConf,
}

impl PodDns {
    /// A pod's resolv.conf, by its `dnsPolicy` and `dnsConfig`, within the
    /// resolver limits the kubelet applies (extra entries are dropped).
    pub fn resolv_conf(&self, pod: &Pod) -> ResolvConf {
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network == Some(true);
        let mut conf = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
            "None" => ResolvConf::default(),
            "ClusterFirst" if host_network => self.host.clone(),
            "Default" if host_network => self.host.clone(),
            "Default" => self.host.without_loopback(),
            _ => self.cluster_first(pod.metadata.namespace.as_deref().unwrap_or("default")),
        };
        if let Some(extra) = &spec.dns_config {
            append_unique(&mut conf.nameservers, extra.nameservers.iter().flatten());
            append_unique(&mut conf.searches, extra.searches.iter().flatten());
            merge_options(&mut conf.options, extra.options.iter().flatten());
        }
        fit_limits(conf)
    }

    fn cluster_first(&self, namespace: &str) -> ResolvConf {
        let domain = &self.cluster_domain;
        let mut searches = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.clone()];
        append_unique(&mut searches, self.host.searches.iter());
        ResolvConf {
            nameservers: vec![self.cluster_dns.to_string()],
            searches,
            options: CLUSTER_FIRST_OPTIONS.iter().map(|o| o.to_string()).collect(),
        }
    }
}

fn append_unique<'a>(list: &mut Vec<String>, extra: impl Iterator<Item = &'a String>) {
    for item in extra {
        if !list.contains(item) {
            list.push(item.clone());
        }
    }
}

/// Options by name: a pod's `dnsConfig.options` replace same-named ones.
fn merge_options<'a>(options: &mut Vec<String>, extra: impl Iterator<Item = &'a PodDNSConfigOption>) {
    for option in extra {
        let Some(name) = option.name.as_deref() else { continue };
        let rendered = match option.value.as_deref() {
            Some(v) if !v.is_empty() => format!("{name}:{v}"),
            _ => name.to_owned(),
        };
        match options.iter_mut().find(|o| o.split(':').next() == Some(name)) {
            Some(existing) => *existing = rendered,
            None => options.push(rendered),
        }
    }
}

fn fit_limits(mut conf: ResolvConf) -> ResolvConf {
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    conf.searches.retain(|s| s.len() <= MAX_SEARCH_DOMAIN);
    while conf.searches.join(" ").len() > MAX_SEARCH_LINE {
        conf.searches.pop();
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodSpec};

    fn host() -> ResolvConf {
        ResolvConf::parse("# generated\nnameserver 192.0.2.53\nnameserver 127.0.0.53\nsearch corp.example. lab.example\noptions edns0 trust-ad\n")
    }

    fn dns() -> PodDns {
        PodDns { cluster_dns: "10.43.0.10".parse().unwrap(), cluster_domain: "cluster.local".into(), host: host() }
    }

    fn pod(policy: Option<&str>, host_network: bool, config: Option<PodDNSConfig>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("shop".into());
        pod.spec = Some(PodSpec {
            dns_policy: policy.map(str::to_owned),
            host_network: Some(host_network),
            dns_config: config,
            ..Default::default()
        });
        pod
    }

    #[test]
    fn parsing_accumulates_nameservers_and_keeps_the_last_search_line() {
        let conf = ResolvConf::parse("search a.example\nnameserver 1.1.1.1\nsearch b.example c.example.\nnameserver 8.8.8.8\ndomain x\n");
        assert_eq!(conf.nameservers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(conf.searches, ["b.example", "c.example"]);
    }

    #[test]
    fn cluster_first_searches_the_namespace_then_the_cluster_then_the_host() {
        let conf = dns().resolv_conf(&pod(None, false, None));
        assert_eq!(
            conf.render(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn default_policy_uses_the_host_resolvers_a_pod_can_reach() {
        let conf = dns().resolv_conf(&pod(Some("Default"), false, None));
        assert_eq!(conf.nameservers, ["192.0.2.53"]);
        assert_eq!(conf.searches, ["corp.example", "lab.example"]);
        assert_eq!(conf.options, ["edns0", "trust-ad"]);
    }

    #[test]
    fn host_network_pods_with_cluster_first_use_the_host_configuration_as_is() {
        let conf = dns().resolv_conf(&pod(Some("ClusterFirst"), true, None));
        assert_eq!(conf, host());
    }

    #[test]
    fn cluster_first_with_host_net_uses_the_cluster_dns_even_on_the_host_network() {
        let conf = dns().resolv_conf(&pod(Some("ClusterFirstWithHostNet"), true, None));
        assert_eq!(conf.nameservers, ["10.43.0.10"]);
        assert_eq!(conf.searches[0], "shop.svc.cluster.local");
    }

    #[test]
    fn none_policy_takes_only_the_pod_dns_config() {
        let config = PodDNSConfig {
            nameservers: Some(vec!["192.0.2.1".into()]),
            searches: Some(vec!["my.example".into()]),
            options: Some(vec![PodDNSConfigOption { name: Some("ndots".into()), value: Some("2".into()) }]),
        };
        let conf = dns().resolv_conf(&pod(Some("None"), false, Some(config)));
        assert_eq!(conf.render(), "search my.example\nnameserver 192.0.2.1\noptions ndots:2\n");
    }

    #[test]
    fn dns_config_is_merged_into_cluster_first_without_duplicates() {
        let config = PodDNSConfig {
            nameservers: Some(vec!["192.0.2.1".into(), "10.43.0.10".into()]),
            searches: Some(vec!["svc.cluster.local".into(), "extra.example".into()]),
            options: Some(vec![
                PodDNSConfigOption { name: Some("ndots".into()), value: Some("1".into()) },
                PodDNSConfigOption { name: Some("single-request".into()), value: None },
            ]),
        };
        let conf = dns().resolv_conf(&pod(Some("ClusterFirst"), false, Some(config)));
        assert_eq!(conf.nameservers, ["10.43.0.10", "192.0.2.1"]);
        assert_eq!(conf.searches.iter().filter(|s| *s == "svc.cluster.local").count(), 1);
        assert_eq!(conf.searches.last().map(String::as_str), Some("extra.example"));
        assert_eq!(conf.options, ["ndots:1", "single-request"]);
    }

    #[test]
    fn limits_drop_extra_nameservers_and_search_domains() {
        let config = PodDNSConfig {
            nameservers: Some((1..=5).map(|i| format!("192.0.2.{i}")).collect()),
            searches: Some((0..40).map(|i| format!("d{i}.example")).chain([format!("{}.example", "x".repeat(250))]).collect()),
            options: None,
        };
        let conf = dns().resolv_conf(&pod(Some("None"), false, Some(config)));
        assert_eq!(conf.nameservers.len(), MAX_NAMESERVERS);
        assert_eq!(conf.searches.len(), MAX_SEARCHES);
        assert!(conf.searches.iter().all(|s| s.len() <= MAX_SEARCH_DOMAIN));
    }

    #[test]
    fn a_loopback_only_host_file_gives_way_to_systemd_resolved_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let (stub, real) = (dir.path().join("stub"), dir.path().join("real"));
        std::fs::write(&stub, "nameserver 127.0.0.53\nsearch home.example\n").unwrap();
        std::fs::write(&real, "nameserver 192.0.2.7\nsearch home.example\n").unwrap();
        assert_eq!(ResolvConf::host(&stub, &real).nameservers, ["192.0.2.7"]);
        assert_eq!(ResolvConf::host(&stub, &dir.path().join("missing")).nameservers, ["127.0.0.53"]);
    }

    #[test]
    fn upstreams_prefer_remote_servers_and_fall_back_to_a_local_stub() {
        assert_eq!(host().upstream_addresses(), ["192.0.2.53".parse::<IpAddr>().unwrap()]);
        let stub_only = ResolvConf::parse("nameserver 127.0.0.53\n");
        assert_eq!(stub_only.upstream_addresses(), ["127.0.0.53".parse::<IpAddr>().unwrap()]);
    }
}

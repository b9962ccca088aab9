//! How a pod names itself: the `/etc/hosts` the agent writes for each pod
//! (under `pods/<uid>/etc/`) and bind-mounts into every container of it, as the
//! kubelet does. Its `/etc/resolv.conf` comes from the cluster DNS's renderer
//! (`crate::net::dns::resolv::PodDns`); `network.rs` writes both files.

use k8s_openapi::api::core::v1::Pod;

/// The pod's `/etc/hosts` (pods on their own network): localhost, the pod's
/// own names on its address, and its `hostAliases`.
pub fn hosts(pod: &Pod, pod_ip: &str, cluster_domain: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let hostname = spec.hostname.clone().or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        Some(subdomain) => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            out.push_str(&format!("{pod_ip}\t{hostname}.{subdomain}.{namespace}.svc.{cluster_domain}\t{hostname}\n"));
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
    use k8s_openapi::api::core::v1::{HostAlias, PodSpec};

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.metadata.namespace = Some("shop".into());
        pod.spec = Some(PodSpec::default());
        pod
    }

    #[test]
    fn the_hosts_file_names_the_pod_on_its_address_with_its_aliases() {
        let mut p = pod();
        let spec = p.spec.as_mut().unwrap();
        spec.hostname = Some("db".into());
        spec.subdomain = Some("backend".into());
        spec.host_aliases = Some(vec![HostAlias { ip: "192.0.2.9".into(), hostnames: Some(vec!["a.example".into(), "b.example".into()]) }]);
        let rendered = hosts(&p, "10.42.0.7", "cluster.local");
        assert!(rendered.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"), "{rendered}");
        assert!(rendered.contains("10.42.0.7\tdb.backend.shop.svc.cluster.local\tdb\n"), "{rendered}");
        assert!(rendered.ends_with("192.0.2.9\ta.example\tb.example\n"), "{rendered}");
        assert!(hosts(&pod(), "10.42.0.8", "cluster.local").contains("10.42.0.8\tweb-0\n"));
    }
}

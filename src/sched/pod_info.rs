//! What the scheduler needs to know about one pod, worked out once per
//! scheduling attempt (upstream's PreFilter/PreScore state) so that filters and
//! scores evaluated on hundreds of nodes only compare numbers and short lists.

use super::affinity::NodeAffinity;
use super::resources::PodRequests;
use crate::api::taints::tolerates;
use crate::runtime::key_of;
use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};
use std::sync::Arc;

/// A host port a container binds: two pods conflict on the same protocol and
/// port when either binds every address (`0.0.0.0`) or both the same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

const ANY_ADDRESS: &str = "0.0.0.0";

impl HostPort {
    pub fn conflicts_with(&self, other: &HostPort) -> bool {
        self.port == other.port && self.protocol == other.protocol && (self.ip == other.ip || self.ip == ANY_ADDRESS || other.ip == ANY_ADDRESS)
    }

    /// The host ports of a pod's containers (and of its sidecars, which run alongside them).
    pub fn of(pod: &Pod) -> Vec<HostPort> {
        let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
        let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
        spec.containers
            .iter()
            .chain(sidecars)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.is_some_and(|h| h > 0))
            .map(|p| HostPort {
                protocol: p.protocol.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "TCP".into()),
                ip: p.host_ip.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| ANY_ADDRESS.into()),
                port: p.host_port.unwrap_or_default(),
            })
            .collect()
    }
}

/// The pod being scheduled, with everything the plugins read precomputed.
pub struct PodInfo {
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    pub requests: PodRequests,
    pub host_ports: Vec<HostPort>,
    pub affinity: NodeAffinity,
    pub tolerations: Vec<Toleration>,
    /// The groups whose pods this pod should be spread away from (its
    /// controller, the Services selecting it), see `cache::Cache::spread_groups`.
    pub spread_groups: Vec<Arc<str>>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>, spread_groups: Vec<Arc<str>>) -> Self {
        let spec = pod.spec.as_ref();
        PodInfo {
            key: key_of(pod.as_ref()),
            requests: spec.map(PodRequests::of).unwrap_or_default(),
            host_ports: HostPort::of(&pod),
            affinity: NodeAffinity::of(&pod),
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            spread_groups,
            pod,
        }
    }

    /// Whether some toleration of the pod tolerates `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        self.tolerations.iter().any(|t| tolerates(t, taint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_ports_default_to_tcp_on_every_address() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [{"name": "a", "ports": [
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
            {"containerPort": 9090},
        ]}]}}))
        .unwrap();
        let ports = HostPort::of(&pod);
        assert_eq!(ports, vec![
            HostPort { protocol: "TCP".into(), ip: "0.0.0.0".into(), port: 8080 },
            HostPort { protocol: "UDP".into(), ip: "10.0.0.1".into(), port: 53 },
        ]);
    }

    #[test]
    fn host_ports_conflict_on_the_same_address_or_the_wildcard() {
        let p = |protocol: &str, ip: &str, port| HostPort { protocol: protocol.into(), ip: ip.into(), port };
        assert!(p("TCP", "0.0.0.0", 80).conflicts_with(&p("TCP", "10.0.0.1", 80)));
        assert!(p("TCP", "10.0.0.1", 80).conflicts_with(&p("TCP", "0.0.0.0", 80)));
        assert!(p("TCP", "10.0.0.1", 80).conflicts_with(&p("TCP", "10.0.0.1", 80)));
        assert!(!p("TCP", "10.0.0.1", 80).conflicts_with(&p("TCP", "10.0.0.2", 80)));
        assert!(!p("TCP", "0.0.0.0", 80).conflicts_with(&p("UDP", "0.0.0.0", 80)));
        assert!(!p("TCP", "0.0.0.0", 80).conflicts_with(&p("TCP", "0.0.0.0", 81)));
    }
}

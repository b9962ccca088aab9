//! The node's presence in the cluster: registers the Node object (capacity,
//! allocatable, addresses, system information, the four conditions with the
//! kubelet's reasons), renews its Lease in `kube-node-lease` every 10 seconds,
//! and writes the node's status when it changes and at least once a minute.

use super::docker::Runtime;
use super::host::{self, Capacity, Pressure, SystemInfo};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{DaemonEndpoint, Node, NodeDaemonEndpoints, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(10);
const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the status is recomputed; it is written when it changed.
const STATUS_CHECK_EVERY: Duration = Duration::from_secs(10);
/// The longest the status goes unwritten.
const STATUS_REPORT_EVERY: Duration = Duration::from_secs(60);

pub fn kubelet_version() -> String {
    format!("v1.{}.0-rk", crate::api::discovery::KUBERNETES_MINOR)
}

/// What the node reports, apart from heartbeat times.
#[derive(Clone, Debug, PartialEq)]
struct Observation {
    capacity: Capacity,
    pressure: Pressure,
    /// `docker://<version>`, or the error when the engine does not answer.
    runtime: Result<String, String>,
}

pub struct Heartbeat {
    client: kube::Client,
    runtime: Runtime,
    node_name: String,
    data_dir: PathBuf,
    node_ip: Option<String>,
    system: SystemInfo,
    /// The port of the agent's endpoint, published as the kubelet's.
    endpoint_port: Option<u16>,
}

fn resources(c: &Capacity) -> BTreeMap<String, Quantity> {
    [
        ("cpu", c.cpus.to_string()),
        ("memory", format!("{}Ki", c.memory / 1024)),
        ("ephemeral-storage", c.ephemeral_storage.to_string()),
        ("pods", host::MAX_PODS.to_string()),
        ("hugepages-1Gi", "0".into()),
        ("hugepages-2Mi", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v)))
    .collect()
}

/// The four node conditions, keeping each one's transition time from `previous`.
fn conditions(o: &Observation, previous: &[NodeCondition], now: &Time) -> Vec<NodeCondition> {
    let pressure = |pressed: bool, names: [&'static str; 5]| {
        let [type_, bad_reason, bad_message, good_reason, good_message] = names;
        if pressed { (type_, "True", bad_reason, bad_message.to_owned()) } else { (type_, "False", good_reason, good_message.to_owned()) }
    };
    let ready = match &o.runtime {
        Ok(_) => ("Ready", "True", "KubeletReady", "kubelet is posting ready status".to_owned()),
        Err(e) => ("Ready", "False", "KubeletNotReady", format!("container runtime is down: {e}")),
    };
    [
        pressure(o.pressure.memory, ["MemoryPressure", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"]),
        pressure(o.pressure.disk, ["DiskPressure", "KubeletHasDiskPressure", "kubelet has disk pressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"]),
        pressure(o.pressure.pids, ["PIDPressure", "KubeletHasInsufficientPID", "kubelet has insufficient PID available", "KubeletHasSufficientPID", "kubelet has sufficient PID available"]),
        ready,
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| {
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(since),
        }
    })
    .collect()
}

impl Heartbeat {
    pub fn new(client: kube::Client, runtime: Runtime, node_name: &str, data_dir: PathBuf, endpoint_port: Option<u16>) -> Self {
        Self {
            endpoint_port,
            client,
            runtime,
            node_name: node_name.to_owned(),
            data_dir,
            node_ip: host::default_route_address().map(|ip| ip.to_string()),
            system: host::system_info(),
        }
    }

    /// The node's InternalIP, which pods report as their hostIP.
    pub fn node_ip(&self) -> Option<String> {
        self.node_ip.clone()
    }

    async fn observe(&self) -> Observation {
        Observation {
            capacity: host::capacity(&self.data_dir),
            pressure: host::pressure(&self.data_dir),
            runtime: self.runtime.version().await.map(|v| format!("docker://{v}")).map_err(|e| e.to_string()),
        }
    }

    fn status(&self, o: &Observation, previous: &[NodeCondition]) -> NodeStatus {
        let now = Time(jiff::Timestamp::now());
        let mut addresses: Vec<NodeAddress> = self.node_ip.iter().map(|ip| NodeAddress { type_: "InternalIP".into(), address: ip.clone() }).collect();
        addresses.push(NodeAddress { type_: "Hostname".into(), address: host::hostname() });
        NodeStatus {
            capacity: Some(resources(&o.capacity)),
            allocatable: Some(resources(&o.capacity.allocatable())),
            conditions: Some(conditions(o, previous, &now)),
            addresses: Some(addresses),
            node_info: Some(NodeSystemInfo {
                architecture: self.system.architecture.clone(),
                operating_system: "linux".into(),
                os_image: self.system.os_image.clone(),
                kernel_version: self.system.kernel_version.clone(),
                container_runtime_version: o.runtime.clone().unwrap_or_default(),
                kubelet_version: kubelet_version(),
                kube_proxy_version: String::new(),
                boot_id: self.system.boot_id.clone(),
                machine_id: self.system.machine_id.clone(),
                system_uuid: self.system.system_uuid.clone(),
                swap: None,
            }),
            daemon_endpoints: self.endpoint_port.map(|port| NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(port) }) }),
            ..Default::default()
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let arch = host::architecture();
        [
            ("kubernetes.io/hostname", self.node_name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", arch),
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", arch),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Creates the Node, or adopts an existing one (re-labelling it and
    /// rewriting its status); returns the node's uid and conditions.
    async fn register(&self, o: &Observation) -> Result<(String, Vec<NodeCondition>), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = Node {
            metadata: ObjectMeta { name: Some(self.node_name.clone()), labels: Some(self.labels()), ..Default::default() },
            spec: None,
            status: Some(self.status(o, &[])),
        };
        let created = match nodes.create(&PostParams::default(), &node).await {
            Ok(n) => n,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = nodes.get(&self.node_name).await?;
                let previous = existing.status.and_then(|s| s.conditions).unwrap_or_default();
                let labels = serde_json::json!({ "metadata": { "labels": self.labels() } });
                nodes.patch(&self.node_name, &PatchParams::default(), &Patch::Merge(&labels)).await?;
                let status = serde_json::json!({ "status": self.status(o, &previous) });
                nodes.patch_status(&self.node_name, &PatchParams::default(), &Patch::Merge(&status)).await?
            }
            Err(e) => return Err(e),
        };
        tracing::info!(node = self.node_name, "node registered");
        Ok((created.metadata.uid.unwrap_or_default(), created.status.and_then(|s| s.conditions).unwrap_or_default()))
    }

    async fn renew_lease(&self, node_uid: &str) -> Result<(), kube::Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.node_name.clone()),
                namespace: Some(LEASE_NAMESPACE.into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: self.node_name.clone(),
                    uid: node_uid.to_owned(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node_name.clone()),
                lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                renew_time: Some(MicroTime(jiff::Timestamp::now())),
                ..Default::default()
            }),
        };
        match leases.replace(&self.node_name, &PostParams::default(), &lease).await {
            Err(kube::Error::Api(e)) if e.code == 404 => leases.create(&PostParams::default(), &lease).await.map(drop),
            other => other.map(drop),
        }
    }

    /// Registers the node, then keeps its Lease and status fresh until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut registered: Option<(String, Vec<NodeCondition>)> = None;
        let mut reported: Option<(Observation, Instant)> = None;
        let mut lease_renewed: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some((uid, previous)) = registered.as_mut() else {
                let o = self.observe().await;
                match self.register(&o).await {
                    Ok(r) => {
                        registered = Some(r);
                        reported = Some((o, Instant::now()));
                    }
                    Err(e) => tracing::warn!(error = %e, node = self.node_name, "node not registered; retrying"),
                }
                continue;
            };
            if lease_renewed.is_none_or(|at| at.elapsed() >= LEASE_RENEW_EVERY) {
                match self.renew_lease(uid).await {
                    Ok(()) => lease_renewed = Some(Instant::now()),
                    Err(e) => tracing::debug!(error = %e, node = self.node_name, "lease not renewed"),
                }
            }
            if reported.as_ref().is_some_and(|(_, at)| at.elapsed() < STATUS_CHECK_EVERY) {
                continue;
            }
            let o = self.observe().await;
            let due = reported.as_ref().is_none_or(|(last, at)| *last != o || at.elapsed() >= STATUS_REPORT_EVERY);
            if !due {
                continue;
            }
            let status = self.status(&o, previous);
            let nodes: Api<Node> = Api::all(self.client.clone());
            match nodes.patch_status(&self.node_name, &PatchParams::default(), &Patch::Merge(serde_json::json!({ "status": status }))).await {
                Ok(node) => {
                    *previous = node.status.and_then(|s| s.conditions).unwrap_or_default();
                    reported = Some((o, Instant::now()));
                }
                // Someone deleted the Node: register it again.
                Err(kube::Error::Api(e)) if e.code == 404 => registered = None,
                Err(e) => tracing::debug!(error = %e, node = self.node_name, "node status not written"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(runtime: Result<String, String>) -> Observation {
        Observation { capacity: Capacity { cpus: 2, memory: 1 << 30, ephemeral_storage: 1 << 40 }, pressure: Pressure::default(), runtime }
    }

    #[test]
    fn a_healthy_node_reports_the_kubelets_reasons() {
        let now = Time(jiff::Timestamp::now());
        let c = conditions(&observation(Ok("docker://20.10".into())), &[], &now);
        let summary: Vec<(&str, &str, &str)> = c.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref().unwrap())).collect();
        assert_eq!(
            summary,
            [
                ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID"),
                ("Ready", "True", "KubeletReady"),
            ]
        );
    }

    #[test]
    fn a_down_runtime_makes_the_node_not_ready_and_transition_times_move_only_on_change() {
        let earlier = Time(jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let ready = conditions(&observation(Ok("docker://20.10".into())), &[], &earlier);
        let now = Time(jiff::Timestamp::now());
        let down = conditions(&observation(Err("connection refused".into())), &ready, &now);
        let r = down.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((r.status.as_str(), r.reason.as_deref()), ("False", Some("KubeletNotReady")));
        assert_eq!(r.last_transition_time, Some(now.clone()));
        let memory = down.iter().find(|c| c.type_ == "MemoryPressure").unwrap();
        assert_eq!(memory.last_transition_time, Some(earlier));
        assert_eq!(memory.last_heartbeat_time, Some(now));
    }

    #[test]
    fn memory_is_reported_in_kibibytes() {
        let r = resources(&Capacity { cpus: 2, memory: 2048 * 1024, ephemeral_storage: 5 });
        assert_eq!(r["memory"].0, "2048Ki");
        assert_eq!(r["pods"].0, "110");
    }
}

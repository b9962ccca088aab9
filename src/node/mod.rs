//! The node agent (the kubelet's role): registers its node and keeps it alive
//! (`heartbeat`), and runs the pods bound to it as Docker containers — a
//! sandbox per pod holding the network namespace, init and app containers
//! joining it — reconciled level-triggered per pod key (`pods`, `sync`) from
//! the API's wishes and Docker's state, with volumes, probes, restarts and
//! status. Pods are put on rk's pod network (`network`, `crate::net::podnet`)
//! once the node has a pod CIDR. It needs only a `kube::Client` and a node
//! name, so it runs the same embedded in `rk server` or on another machine.
//! `fake` holds the simulated nodes used to exercise the control plane.

pub mod backoff;
pub mod containers;
pub mod docker;
pub mod endpoint;
pub mod env;
mod exec;
pub mod fake;
pub mod heartbeat;
pub mod host;
pub mod images;
mod logs;
pub mod metrics;
pub mod names;
pub mod network;
pub mod pods;
mod portforward;
pub mod probes;
pub mod sources;
pub mod spdy;
pub mod status;
pub mod tokens;
mod sync;
pub mod volumes;
mod websocket;

use crate::runtime::{Change, Controller, Informer, Informers, Recorder, WorkQueue, key_of};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret};
use kube::api::Api;
use kube::runtime::watcher;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often every pod is reconciled even if nothing was heard of it.
const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// Everything the agent needs besides its API client.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// Holds `pods/<uid>/` (volumes, termination messages).
    pub data_dir: PathBuf,
    /// The Docker network pod sandboxes join when rk's pod network is off or
    /// unavailable (no pod CIDR, no privileges).
    pub network: String,
    /// rk's pod network (a bridge, addresses from the node's pod CIDR, routes
    /// to other nodes); `None` puts pods on Docker's `network` only.
    pub pod_network: Option<crate::net::podnet::Options>,
    /// How pods resolve names: the cluster DNS ClusterFirst pods are pointed at,
    /// the cluster domain, the host's resolvers.
    pub dns: crate::net::dns::resolv::PodDns,
    /// Docker's socket; the default one when `None`.
    pub docker_socket: Option<String>,
    /// Pods synced at once.
    pub workers: usize,
    /// The HTTPS endpoint the API server reaches pods' streams and the
    /// node's metrics through; `None` serves none.
    pub endpoint: Option<EndpointConfig>,
}

/// Where and with which certificate the agent's endpoint listens.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// 0 picks a free port (reported in the Node's daemonEndpoints).
    pub port: u16,
    pub tls: endpoint::ServingTls,
}

/// The kubelet's port.
pub const DEFAULT_ENDPOINT_PORT: u16 = 10250;

impl AgentConfig {
    /// An agent of a cluster whose pods and Services get addresses from these ranges.
    pub fn new(node_name: &str, data_dir: PathBuf, cluster_cidr: ipnet::Ipv4Net, service_cidr: ipnet::Ipv4Net) -> Self {
        Self {
            node_name: node_name.to_owned(),
            data_dir,
            network: "bridge".into(),
            pod_network: Some(crate::net::podnet::Options::new(cluster_cidr, service_cidr)),
            dns: crate::net::dns::DnsOptions::for_service_range(service_cidr).pod_dns(),
            docker_socket: None,
            workers: 8,
            endpoint: None,
        }
    }
}

/// Whether `spec` mounts or reads the ConfigMap (`config_map`) or Secret named `name`.
fn references(spec: &PodSpec, name: &str, config_map: bool) -> bool {
    let volumes = spec.volumes.iter().flatten().any(|v| {
        let direct = if config_map {
            v.config_map.as_ref().is_some_and(|c| c.name == name)
        } else {
            v.secret.as_ref().is_some_and(|s| s.secret_name.as_deref() == Some(name))
        };
        let projected = v.projected.iter().flat_map(|p| p.sources.iter().flatten()).any(|s| {
            if config_map { s.config_map.as_ref().is_some_and(|c| c.name == name) } else { s.secret.as_ref().is_some_and(|c| c.name == name) }
        });
        direct || projected
    });
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let env = containers.clone().any(|c| {
        c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()).any(|from| {
            if config_map { from.config_map_key_ref.as_ref().is_some_and(|r| r.name == name) } else { from.secret_key_ref.as_ref().is_some_and(|r| r.name == name) }
        }) || c.env_from.iter().flatten().any(|from| {
            if config_map { from.config_map_ref.as_ref().is_some_and(|r| r.name == name) } else { from.secret_ref.as_ref().is_some_and(|r| r.name == name) }
        })
    });
    let pull_secret = !config_map && spec.image_pull_secrets.iter().flatten().any(|s| s.name == name);
    volumes || env || pull_secret
}

/// A pod change that asks for a sync: anything but the agent's own status
/// writes (which would otherwise wake every pod once more after each sync).
fn wants_sync(change: &Change<Pod>) -> Vec<String> {
    if let Change::Applied { old: Some(old), new } = change {
        let (o, n) = (&old.metadata, &new.metadata);
        let same = old.spec == new.spec
            && o.deletion_timestamp == n.deletion_timestamp
            && o.deletion_grace_period_seconds == n.deletion_grace_period_seconds
            && o.uid == n.uid
            && old.status.as_ref().and_then(|s| s.phase.as_ref()) == new.status.as_ref().and_then(|s| s.phase.as_ref());
        if same {
            return vec![];
        }
    }
    vec![key_of(change.object().as_ref())]
}

/// Maps a change of a ConfigMap or Secret to the keys of this node's pods using it.
fn users<K: kube::Resource>(pods: Informer<Pod>, config_map: bool) -> impl Fn(&Change<K>) -> Vec<String> + Send + 'static {
    move |change| {
        let object = change.object();
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        let name = object.meta().name.clone().unwrap_or_default();
        pods.list_namespace(&namespace)
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| references(s, &name, config_map)))
            .map(|p| key_of(p.as_ref()))
            .collect()
    }
}

/// Runs the agent until `shutdown`: registration and heartbeats, and the pods
/// bound to the node.
pub async fn run(client: kube::Client, config: AgentConfig, shutdown: CancellationToken) -> Result<(), crate::runtime::Error> {
    let node = config.node_name.clone();
    let runtime = docker::Runtime::connect(config.docker_socket.as_deref(), &node, &config.network)?;
    let listener = match &config.endpoint {
        Some(e) => Some(endpoint::bind(e.port).await.map_err(|err| format!("the node's endpoint cannot listen on port {}: {err}", e.port))?),
        None => None,
    };
    let endpoint_port = listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port());
    let heartbeat = heartbeat::Heartbeat::new(client.clone(), runtime.clone(), &node, config.data_dir.clone(), endpoint_port);
    let host_ip = heartbeat.node_ip();
    tokio::spawn(heartbeat.run(shutdown.clone()));

    let informers = Informers::new(client.clone(), shutdown.clone());
    let pod_network = match &config.pod_network {
        Some(options) => crate::net::podnet::start(&informers, &node, options, &config.data_dir, &shutdown).await,
        None => {
            tracing::info!(network = config.network, "rk's pod network is disabled: pods join Docker's network, with no routes between nodes' pods");
            None
        }
    };
    let networking = network::Networking::new(pod_network, &config.network, config.dns.clone());

    let selector = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pods = Informer::start(Api::<Pod>::all(client.clone()), selector, shutdown.clone());
    if let (Some(listener), Some(e)) = (listener, &config.endpoint) {
        let tls = crate::pki::mutual_tls_server_config(&e.tls.cert_pem, &e.tls.key_pem, &e.tls.ca_pem).map_err(|err| format!("the node's endpoint certificate: {err}"))?;
        let samples = metrics::Samples::default();
        tokio::spawn(metrics::run(runtime.clone(), samples.clone(), shutdown.clone()));
        let app = endpoint::router(endpoint::Endpoint { runtime: runtime.clone(), pods: pods.clone(), samples });
        tokio::spawn(crate::api::serve::serve_tls(listener, Arc::new(tls), app, shutdown.clone()));
        tracing::info!(node, port = endpoint_port, "node endpoint listening");
    }
    let informers = Informers::new(client.clone(), shutdown.clone());
    let config_maps = informers.get::<ConfigMap>();
    let secrets = informers.get::<Secret>();
    let recorder = Recorder::new(client.clone(), "kubelet", Some(node.clone()));
    let controller = Controller::new("kubelet", config.workers)
        .watch(&pods, wants_sync)
        .watch(&config_maps, users::<ConfigMap>(pods.clone(), true))
        .watch(&secrets, users::<Secret>(pods.clone(), false));
    let queue = controller.queue();
    let prober = Arc::new(probes::Prober::new(runtime.clone(), recorder.clone(), queue.clone()));
    let allocatable = host::capacity(&config.data_dir).allocatable();
    let sources = sources::Cached { config_maps: config_maps.clone(), secrets: secrets.clone() };
    let reconciler = Arc::new(pods::PodReconciler::new(
        &node,
        config.data_dir.clone(),
        runtime.clone(),
        prober,
        pods.clone(),
        sources,
        client,
        recorder,
        host_ip,
        allocatable,
        networking,
    ));
    // Reconciling before the caches hold everything would remove containers
    // of pods that exist.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = async { tokio::join!(pods.wait_synced(), config_maps.wait_synced(), secrets.wait_synced()) } => {}
    }
    tokio::spawn(follow_docker_events(runtime.clone(), queue.clone(), shutdown.clone()));
    tokio::spawn(resync(runtime, pods, reconciler.clone(), queue, config.data_dir.clone(), shutdown.clone()));
    tracing::info!(node, "node agent running");
    controller.run(reconciler, shutdown).await;
    Ok(())
}

/// Wakes a pod's reconcile when Docker reports one of its containers started,
/// died or vanished.
async fn follow_docker_events(runtime: docker::Runtime, queue: Arc<WorkQueue>, shutdown: CancellationToken) {
    use futures::StreamExt;
    loop {
        let mut events = Box::pin(runtime.events());
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.next() => e,
            };
            match event {
                Some(Ok(key)) => queue.add(key),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "docker event stream failed; reconnecting");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Every period: queue every pod the API or Docker knows of (adopting and
/// cleaning up after restarts), remove directories of pods that are gone,
/// and trim back-off bookkeeping.
async fn resync(
    runtime: docker::Runtime,
    pods: Informer<Pod>,
    reconciler: Arc<pods::PodReconciler>,
    queue: Arc<WorkQueue>,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(RESYNC_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(in_docker) = runtime.pods().await else { continue };
        let known: HashSet<String> = pods.list().iter().filter_map(|p| p.metadata.uid.clone()).chain(in_docker.keys().cloned()).collect();
        for key in in_docker.into_values().chain(pods.list().iter().map(|p| key_of(p.as_ref()))) {
            queue.add(key);
        }
        for uid in volumes::pod_dirs(&data_dir).into_iter().filter(|uid| !known.contains(uid)) {
            // Looked up again: a pod created since the listing may be setting up its directory.
            if !pods.filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str())).is_empty() {
                continue;
            }
            if let Err(e) = volumes::cleanup(&data_dir, &uid) {
                tracing::warn!(uid, error = %e, "directory of a removed pod not cleaned up");
            }
        }
        reconciler.images().gc();
        reconciler.gc_backoffs();
        reconciler.networking().release_unused(&runtime).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, Container, EnvFromSource, LocalObjectReference, SecretEnvSource, Volume};

    #[test]
    fn pods_are_found_by_the_config_they_use() {
        let spec = PodSpec {
            volumes: Some(vec![Volume { name: "v".into(), config_map: Some(ConfigMapVolumeSource { name: "cm".into(), ..Default::default() }), ..Default::default() }]),
            containers: vec![Container {
                env_from: Some(vec![EnvFromSource { secret_ref: Some(SecretEnvSource { name: "s".into(), optional: None }), ..Default::default() }]),
                ..Default::default()
            }],
            image_pull_secrets: Some(vec![LocalObjectReference { name: "pull".into() }]),
            ..Default::default()
        };
        assert!(references(&spec, "cm", true));
        assert!(!references(&spec, "cm", false));
        assert!(references(&spec, "s", false));
        assert!(references(&spec, "pull", false));
        assert!(!references(&spec, "other", true));
    }
}

//! The pod reconciler: for one pod key, compares the pod the API wants on this
//! node with the containers Docker has for it, level-triggered (from the
//! cache and Docker's state, never from the event that woke it). Containers
//! of other incarnations or of pods that are gone are removed; a deleted pod
//! is terminated gracefully (preStop hooks, SIGTERM, SIGKILL after the grace
//! period) and only then removed from the API; a live pod is synced
//! (`sync.rs`) and its status written through `/status` when it changed.

use super::backoff::Backoff;
use super::docker::{Observed, Role, Runtime};
use super::host::Capacity;
use super::images::{Images, Waiting};
use super::network::Networking;
use super::probes::{self, Prober};
use super::sources::Cached;
use super::status::Snapshot;
use super::volumes;
use crate::runtime::{Error, EventType, Informer, Next, Reconciler, Recorder, reference, split_key};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a termination message is kept, as upstream.
const MAX_TERMINATION_MESSAGE: usize = 4096;
/// Status fields the node owns that disappear when they no longer hold.
const CLEARED_STATUS_FIELDS: [&str; 5] = ["podIP", "podIPs", "initContainerStatuses", "hostIP", "hostIPs"];

pub struct PodReconciler {
    pub(super) node: String,
    pub(super) data_dir: PathBuf,
    pub(super) runtime: Runtime,
    pub(super) images: Images,
    pub(super) prober: Arc<Prober>,
    pub(super) pods: Informer<Pod>,
    pub(super) sources: Cached,
    pub(super) client: kube::Client,
    pub(super) recorder: Recorder,
    /// Crash-loop back-off per `uid/container`.
    pub(super) restarts: Backoff,
    pub(super) host_ip: Option<String>,
    pub(super) allocatable: Capacity,
    pub(super) networking: Networking,
    /// Projected service account tokens.
    pub(super) tokens: super::tokens::Tokens,
    /// The last status written per pod uid: the base for the next one, since
    /// the cache may not have caught up with it yet.
    written: Mutex<HashMap<String, PodStatus>>,
}

/// Waiting reasons and the earliest moment worth looking again, gathered by a sync.
#[derive(Default)]
pub(super) struct Outcome {
    pub waiting: HashMap<String, Waiting>,
    pub requeue: Option<Duration>,
}

impl Outcome {
    pub fn wait(&mut self, container: &str, reason: &'static str, message: String) {
        self.waiting.insert(container.to_owned(), Waiting { reason, message });
    }

    pub fn requeue_after(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}

/// The grace period a pod's containers get when it is stopped.
pub(super) fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

impl PodReconciler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &str,
        data_dir: PathBuf,
        runtime: Runtime,
        prober: Arc<Prober>,
        pods: Informer<Pod>,
        sources: Cached,
        client: kube::Client,
        recorder: Recorder,
        host_ip: Option<String>,
        allocatable: Capacity,
        networking: Networking,
    ) -> Self {
        Self {
            node: node.to_owned(),
            data_dir,
            images: Images::new(runtime.clone()),
            runtime,
            prober,
            pods,
            sources,
            tokens: super::tokens::Tokens::new(client.clone()),
            client,
            recorder,
            restarts: Backoff::default(),
            host_ip,
            allocatable,
            networking,
            written: Mutex::new(HashMap::new()),
        }
    }

    pub fn images(&self) -> &Images {
        &self.images
    }

    pub fn networking(&self) -> &Networking {
        &self.networking
    }

    /// Every container of pod `namespace/name` on this node (of any uid), with
    /// the addresses of sandboxes on rk's pod network.
    pub(super) async fn observe(&self, namespace: &str, name: &str) -> Result<Vec<Observed>, Error> {
        let mut containers = self.runtime.pod_containers(namespace, name).await?;
        self.networking.fill_addresses(&mut containers);
        Ok(containers)
    }

    /// Drops crash-loop back-offs that expired anyway.
    pub fn gc_backoffs(&self) {
        self.restarts.gc(jiff::Timestamp::now());
    }

    /// Stops and removes containers whose pod is gone, then its volumes.
    async fn remove_strays(&self, strays: Vec<Observed>) -> Result<(), Error> {
        let mut uids: Vec<String> = strays.iter().map(|c| c.pod_uid.clone()).collect();
        uids.sort();
        uids.dedup();
        self.stop_all(&strays, None).await;
        for c in &strays {
            self.runtime.remove(&c.id).await?;
        }
        for uid in uids {
            self.forget(&uid)?;
        }
        Ok(())
    }

    /// Drops everything kept about a pod uid, and its directory.
    fn forget(&self, uid: &str) -> Result<(), Error> {
        self.prober.forget_pod(uid);
        self.images.forget_pod(uid);
        self.tokens.forget_pod(uid);
        self.restarts.forget_prefix(&format!("{uid}/"));
        self.written.lock().expect("written lock").remove(uid);
        volumes::cleanup(&self.data_dir, uid).map_err(|e| format!("removing the volumes of pod {uid}: {e}"))?;
        Ok(())
    }

    /// Stops running containers: app containers first (after their preStop
    /// hooks, when the pod is known), then init containers, then sandboxes,
    /// each within the grace period.
    async fn stop_all(&self, containers: &[Observed], pod: Option<&Pod>) {
        let started = tokio::time::Instant::now();
        let grace = |c: &Observed| pod.map(grace_period).unwrap_or_else(|| Duration::from_secs(c.grace_seconds.unwrap_or(30).max(0) as u64));
        for role in [Role::App, Role::Init, Role::Sandbox] {
            let stops = containers.iter().filter(|c| c.role == role && c.running()).map(|c| async move {
                let budget = grace(c).saturating_sub(started.elapsed());
                if let Some(pod) = pod
                    && role == Role::App
                {
                    self.pre_stop(pod, c, budget).await;
                }
                let budget = grace(c).saturating_sub(started.elapsed());
                if let Err(e) = self.runtime.stop(&c.id, budget).await {
                    tracing::warn!(container = c.id, error = %e, "container not stopped");
                }
            });
            futures::future::join_all(stops).await;
        }
        self.networking.unplug(containers).await;
    }

    /// Runs a container's preStop hook within `budget`; records Killing.
    async fn pre_stop(&self, pod: &Pod, c: &Observed, budget: Duration) {
        let Some(spec) = pod.spec.iter().flat_map(|s| s.containers.iter()).find(|s| s.name == c.name) else { return };
        let object = probes::container_ref(&reference(pod), &c.name);
        self.recorder.record(object.clone(), EventType::Normal, "Killing", format!("Stopping container {}", c.name));
        let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else { return };
        let pod_ip = self.pod_ip(pod).unwrap_or_default();
        let target = probes::Target { runtime: &self.runtime, container: spec, container_id: &c.id, pod_ip: &pod_ip };
        if let Err(message) = probes::run_hook(hook, &target, budget).await {
            self.recorder.record(object, EventType::Warning, "FailedPreStopHook", format!("PreStopHook failed: {message}"));
        }
    }

    fn pod_ip(&self, pod: &Pod) -> Option<String> {
        pod.status.as_ref().and_then(|s| s.pod_ip.clone())
    }

    /// Terminates a deleted pod, then removes it from the API.
    async fn terminate(&self, pod: &Pod, containers: Vec<Observed>) -> Result<Next, Error> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.prober.forget_pod(&uid);
        self.stop_all(&containers, Some(pod)).await;
        for c in &containers {
            self.runtime.remove(&c.id).await?;
        }
        self.forget(&uid)?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
            ..Default::default()
        };
        match api.delete(pod.metadata.name.as_deref().unwrap_or(""), &params).await {
            Ok(_) => Ok(Next::Done),
            // Already gone, or a new pod of the same name.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Next::Done),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the termination messages of exited containers.
    fn termination_messages(containers: &[Observed]) -> HashMap<String, String> {
        containers
            .iter()
            .filter(|c| !c.running())
            .filter_map(|c| {
                let file = c.termination_message_file.as_ref()?;
                let mut bytes = std::fs::read(file).ok()?;
                bytes.truncate(MAX_TERMINATION_MESSAGE);
                Some((c.id.clone(), String::from_utf8_lossy(&bytes).into_owned()))
            })
            .collect()
    }

    /// Computes the pod's status and writes it if it changed.
    pub(super) async fn write_status(&self, pod: &Pod, containers: &[Observed], outcome: &Outcome) -> Result<(), Error> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut base = pod.clone();
        if let Some(written) = self.written.lock().expect("written lock").get(&uid) {
            // Our own last write may be newer than the cache; foreign conditions come from the cache.
            let mut status = written.clone();
            let cached = pod.status.clone().unwrap_or_default().conditions.unwrap_or_default();
            let mut conditions = status.conditions.take().unwrap_or_default();
            conditions.retain(|c| !cached.iter().any(|k| k.type_ == c.type_) || super::status::OWNED_CONDITIONS.contains(&c.type_.as_str()));
            conditions.extend(cached.into_iter().filter(|c| !super::status::OWNED_CONDITIONS.contains(&c.type_.as_str())));
            status.conditions = Some(conditions);
            base.status = Some(status);
        }
        let sandbox = super::status::instances(containers, Role::Sandbox, "").first().copied();
        let probes: HashMap<String, (bool, bool)> = self.probe_verdicts(pod, containers);
        let mut image_ids = HashMap::new();
        for c in containers.iter().filter(|c| c.role != Role::Sandbox) {
            if !image_ids.contains_key(&c.spec_image) {
                image_ids.insert(c.spec_image.clone(), self.images.status_id(&c.image_id).await);
            }
        }
        let messages = Self::termination_messages(containers);
        let snapshot = Snapshot {
            pod: &base,
            containers,
            sandbox,
            waiting: &outcome.waiting,
            probes: &probes,
            image_ids: &image_ids,
            messages: &messages,
            host_ip: self.host_ip.as_deref(),
            now: jiff::Timestamp::now(),
        };
        let status = snapshot.pod_status();
        if pod.status.as_ref() == Some(&status) || self.written.lock().expect("written lock").get(&uid) == Some(&status) {
            return Ok(());
        }
        let mut body = serde_json::to_value(&status)?;
        for field in CLEARED_STATUS_FIELDS {
            body.as_object_mut().map(|o| o.entry(field).or_insert(serde_json::Value::Null));
        }
        let (namespace, name) = (pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""));
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({ "status": body });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        self.written.lock().expect("written lock").insert(uid, status);
        Ok(())
    }

    /// (started, ready) per running container id.
    fn probe_verdicts(&self, pod: &Pod, containers: &[Observed]) -> HashMap<String, (bool, bool)> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let specs = pod.spec.iter().flat_map(|s| s.containers.iter());
        specs
            .filter_map(|spec| {
                let c = containers.iter().find(|c| c.role == Role::App && c.name == spec.name && c.running())?;
                Some((c.id.clone(), (self.prober.started(uid, spec, &c.id), self.prober.ready(uid, spec, &c.id))))
            })
            .collect()
    }
}

#[async_trait]
impl Reconciler for PodReconciler {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let (namespace, name) = split_key(key);
        let pod = self.pods.get(key).filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str()));
        let uid = pod.as_ref().and_then(|p| p.metadata.uid.clone()).unwrap_or_default();
        let (mine, strays): (Vec<Observed>, Vec<Observed>) =
            self.observe(namespace, name).await?.into_iter().partition(|c| c.pod_uid == uid);
        if !strays.is_empty() {
            self.remove_strays(strays).await?;
        }
        let Some(pod) = pod else { return Ok(Next::Done) };
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(&pod, mine).await;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            // A finished pod never runs again; its exited containers stay for inspection.
            self.prober.forget_pod(&uid);
            self.stop_all(&mine, Some(&pod)).await;
            return Ok(Next::Done);
        }
        self.sync(&pod, key, mine).await
    }
}

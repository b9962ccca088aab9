//! The container runtime as the node agent sees it: Docker, through bollard.
//! Every container rk creates carries labels naming its node, pod and role, so
//! the agent can rebuild its whole view from Docker after a restart (adopting
//! what runs, never creating twins) and never touches containers of another
//! node sharing the engine. Everything here speaks Docker's API 1.41 (engine
//! 20.10 and later).

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummaryStateEnum, EventMessage, ExecConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub const LABEL_NODE: &str = "io.rk.node";
pub const LABEL_POD_UID: &str = "io.rk.pod.uid";
pub const LABEL_POD_NAMESPACE: &str = "io.rk.pod.namespace";
pub const LABEL_POD_NAME: &str = "io.rk.pod.name";
/// `sandbox`, `init` or `app`.
pub const LABEL_ROLE: &str = "io.rk.container.role";
pub const LABEL_CONTAINER_NAME: &str = "io.rk.container.name";
/// How many times this container of the pod was (re)created before: its restart count.
pub const LABEL_ATTEMPT: &str = "io.rk.container.attempt";
/// The sandbox a container joined.
pub const LABEL_SANDBOX: &str = "io.rk.sandbox.id";
/// The image as the pod spec names it (Docker reports the resolved one).
pub const LABEL_SPEC_IMAGE: &str = "io.rk.container.image";
/// The pod's grace period, for stopping containers whose pod is gone.
pub const LABEL_GRACE: &str = "io.rk.pod.termination-grace-period";
/// Where the container's termination message is written, on the host.
pub const LABEL_TERMINATION_MESSAGE: &str = "io.rk.container.termination-message";

/// The Docker API version rk speaks: Docker 20.10's.
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion { major_version: 1, minor_version: 41 };
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
const REQUEST_TIMEOUT_SECONDS: u64 = 120;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Sandbox,
    Init,
    App,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Sandbox => "sandbox",
            Role::Init => "init",
            Role::App => "app",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [Role::Sandbox, Role::Init, Role::App].into_iter().find(|r| r.label() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Created but never started (or a start that failed).
    Created,
    Running,
    Exited,
}

/// One of the agent's containers, as Docker reports it.
#[derive(Clone, Debug)]
pub struct Observed {
    pub id: String,
    pub role: Role,
    pub pod_uid: String,
    /// The container's name in the pod; empty for a sandbox.
    pub name: String,
    pub attempt: u32,
    /// The sandbox it joined; empty for a sandbox.
    pub sandbox: String,
    pub spec_image: String,
    /// `sha256:…` of the image it runs.
    pub image_id: String,
    pub state: RunState,
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// Docker's error for a container that could not start.
    pub error: String,
    /// For a sandbox: its address on the pod network.
    pub ip: Option<String>,
    /// The process holding its namespaces, while it runs.
    pub pid: Option<u32>,
    pub grace_seconds: Option<i64>,
    pub termination_message_file: Option<String>,
}

impl Observed {
    pub fn running(&self) -> bool {
        self.state == RunState::Running
    }

    /// How long it ran before it exited (zero if it never did).
    pub fn ran_for(&self) -> Duration {
        match (self.started_at, self.finished_at) {
            (Some(s), Some(f)) if f > s => Duration::from_nanos((f - s).get_nanoseconds().max(0) as u64),
            _ => Duration::ZERO,
        }
    }
}

/// Parses Docker's RFC 3339 times; its zero time means "never".
pub fn docker_time(s: Option<&str>) -> Option<Timestamp> {
    s.filter(|s| !s.starts_with("0001-")).and_then(|s| s.parse().ok())
}

fn observed(inspect: ContainerInspectResponse, network: &str) -> Option<Observed> {
    let config = inspect.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let state = inspect.state.unwrap_or_default();
    let run_state = match state.status {
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED | ContainerStateStatusEnum::RESTARTING) => RunState::Running,
        Some(ContainerStateStatusEnum::CREATED) | None => RunState::Created,
        _ => RunState::Exited,
    };
    let networks = inspect.network_settings.and_then(|n| n.networks).unwrap_or_default();
    let ip = networks
        .get(network)
        .or_else(|| networks.values().next())
        .and_then(|e| e.ip_address.clone())
        .filter(|ip| !ip.is_empty());
    Some(Observed {
        id: inspect.id?,
        role: Role::parse(&label(LABEL_ROLE))?,
        pod_uid: label(LABEL_POD_UID),
        name: label(LABEL_CONTAINER_NAME),
        attempt: label(LABEL_ATTEMPT).parse().unwrap_or(0),
        sandbox: label(LABEL_SANDBOX),
        spec_image: label(LABEL_SPEC_IMAGE),
        image_id: inspect.image.unwrap_or_default(),
        state: run_state,
        created_at: inspect.created.as_deref().and_then(|c| docker_time(Some(c))),
        started_at: docker_time(state.started_at.as_deref()),
        finished_at: docker_time(state.finished_at.as_deref()),
        exit_code: state.exit_code.unwrap_or(0),
        oom_killed: state.oom_killed.unwrap_or(false),
        error: state.error.unwrap_or_default(),
        ip,
        pid: state.pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0),
        grace_seconds: labels.get(LABEL_GRACE).and_then(|g| g.parse().ok()),
        termination_message_file: labels.get(LABEL_TERMINATION_MESSAGE).cloned(),
    })
}

/// A pod as Docker knows it: the namespace/name key its containers carry.
pub fn pod_key(labels: &HashMap<String, String>) -> Option<String> {
    Some(format!("{}/{}", labels.get(LABEL_POD_NAMESPACE)?, labels.get(LABEL_POD_NAME)?))
}

/// Whether a Docker error says the object does not exist.
pub fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

/// Whether a Docker error says the name is taken.
pub fn is_conflict(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 409, .. })
}

/// Docker's own message for an error, without bollard's wrapping.
pub fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// The agent's handle on Docker, scoped to one node's containers.
#[derive(Clone)]
pub struct Runtime {
    docker: Docker,
    node: String,
    /// The Docker network whose address a sandbox reports first.
    network: String,
}

impl Runtime {
    /// Connects to `socket` (Docker's default socket when `None`); does not
    /// wait for the engine to answer.
    pub fn connect(socket: Option<&str>, node: &str, network: &str) -> Result<Self, Error> {
        let docker = Docker::connect_with_socket(socket.unwrap_or(DEFAULT_SOCKET), REQUEST_TIMEOUT_SECONDS, &API_VERSION)?;
        Ok(Self { docker, node: node.to_owned(), network: network.to_owned() })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The engine's version, e.g. `20.10.24`.
    pub async fn version(&self) -> Result<String, Error> {
        Ok(self.docker.version().await?.version.unwrap_or_default())
    }

    /// The labels every container of this node carries.
    pub fn base_labels(&self) -> HashMap<String, String> {
        [(LABEL_NODE.to_owned(), self.node.clone())].into()
    }

    async fn list(&self, extra: &[(&str, &str)]) -> Result<Vec<bollard::models::ContainerSummary>, Error> {
        let mut labels = vec![format!("{LABEL_NODE}={}", self.node)];
        labels.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        let filters = HashMap::from([("label".to_owned(), labels)]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        Ok(self.docker.list_containers(Some(options)).await?)
    }

    /// Every pod that has containers on this node: uid → key.
    pub async fn pods(&self) -> Result<HashMap<String, String>, Error> {
        let summaries = self.list(&[]).await?;
        Ok(summaries
            .iter()
            .filter_map(|c| {
                let labels = c.labels.as_ref()?;
                Some((labels.get(LABEL_POD_UID)?.clone(), pod_key(labels)?))
            })
            .collect())
    }

    /// The ids of this node's running pod sandboxes.
    pub async fn running_sandboxes(&self) -> Result<HashSet<String>, Error> {
        let summaries = self.list(&[(LABEL_ROLE, Role::Sandbox.label())]).await?;
        Ok(summaries.into_iter().filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING)).filter_map(|c| c.id).collect())
    }

    /// Every container of pod `namespace/name` on this node (of any uid),
    /// oldest first.
    pub async fn pod_containers(&self, namespace: &str, name: &str) -> Result<Vec<Observed>, Error> {
        let summaries = self.list(&[(LABEL_POD_NAMESPACE, namespace), (LABEL_POD_NAME, name)]).await?;
        let mut out = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            match self.docker.inspect_container(&id, None).await {
                Ok(inspect) => out.extend(observed(inspect, &self.network)),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by_key(|c| (c.created_at, c.attempt));
        Ok(out)
    }

    /// The running containers of this node in `role`: their ids and labels.
    pub async fn running(&self, role: Role) -> Result<Vec<(String, HashMap<String, String>)>, Error> {
        let summaries = self.list(&[(LABEL_ROLE, role.label())]).await?;
        Ok(summaries
            .into_iter()
            .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect())
    }

    /// Removes every container of this node (after its agent is gone).
    pub async fn remove_all(&self) -> Result<(), Error> {
        for c in self.list(&[]).await? {
            if let Some(id) = c.id {
                self.remove(&id).await?;
            }
        }
        Ok(())
    }

    /// Creates a container; returns its id.
    pub async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, DockerError> {
        let options = CreateContainerOptions { name: Some(name.to_owned()), ..Default::default() };
        Ok(self.docker.create_container(Some(options), body).await?.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.docker.start_container(id, None).await
    }

    /// SIGTERM, then SIGKILL after `grace`. A container already gone or stopped is fine.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), Error> {
        let options = StopContainerOptions { t: Some(grace.as_secs().min(i32::MAX as u64) as i32), signal: None };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(DockerError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a container (killing it if it still runs) with its anonymous volumes.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        let options = RemoveContainerOptions { force: true, v: true, link: false };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // Already being removed by someone else.
            Err(DockerError::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `command` in a running container; returns its exit code and
    /// combined output (at most 10 KiB), or an error after `timeout`.
    pub async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<(i64, String), Error> {
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(command.to_vec()),
            ..Default::default()
        };
        let exec = self.docker.create_exec(id, config).await?.id;
        let run = async {
            let mut output = String::new();
            if let bollard::exec::StartExecResults::Attached { output: mut stream, .. } = self.docker.start_exec(&exec, None).await? {
                while let Some(chunk) = stream.next().await {
                    if output.len() < 10 * 1024 {
                        output.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
                    }
                }
            }
            Ok::<_, Error>(output)
        };
        let output = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| format!("command timed out after {}s", timeout.as_secs_f64()))??;
        let code = self.docker.inspect_exec(&exec).await?.exit_code.unwrap_or(-1);
        Ok((code, output))
    }

    /// The keys of pods whose containers on this node start, die or vanish,
    /// as Docker reports it; ends when the connection does.
    pub fn events(&self) -> impl Stream<Item = Result<String, DockerError>> + use<> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![format!("{LABEL_NODE}={}", self.node)]),
            ("event".to_owned(), ["start", "die", "oom", "destroy", "stop", "kill"].map(String::from).to_vec()),
        ]);
        let options = EventsOptions { filters: Some(filters), ..Default::default() };
        self.docker.events(Some(options)).filter_map(|event: Result<EventMessage, DockerError>| async move {
            match event {
                Ok(e) => e.actor.and_then(|a| a.attributes).and_then(|attrs| pod_key(&attrs)).map(Ok),
                Err(e) => Some(Err(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_zero_time_means_never() {
        assert_eq!(docker_time(Some("0001-01-01T00:00:00Z")), None);
        assert!(docker_time(Some("2024-05-01T10:00:00.123456789Z")).is_some());
        assert_eq!(docker_time(None), None);
    }

    #[test]
    fn pod_key_comes_from_the_labels() {
        let labels: HashMap<String, String> =
            [(LABEL_POD_NAMESPACE, "ns"), (LABEL_POD_NAME, "web")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        assert_eq!(pod_key(&labels).as_deref(), Some("ns/web"));
        assert_eq!(pod_key(&HashMap::new()), None);
    }
}

//! Probes and lifecycle hooks. One worker per (container, probe) runs the
//! startup, liveness or readiness probe on its period (exec through Docker,
//! HTTP GET or TCP connect to the pod's IP), applies the success and failure
//! thresholds, and wakes the pod's reconcile when the verdict changes: a
//! failed liveness or startup probe gets the container restarted, readiness
//! drives the pod's Ready condition. Hooks (postStart, preStop) run the same
//! actions once.

use super::docker::Runtime;
use crate::runtime::{EventType, Recorder, WorkQueue};
use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, LifecycleHandler, ObjectReference, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

/// What a probe or hook does, whichever object carries it.
pub struct Action<'a> {
    pub exec: Option<&'a ExecAction>,
    pub http_get: Option<&'a HTTPGetAction>,
    pub tcp_socket: Option<&'a TCPSocketAction>,
}

impl<'a> From<&'a Probe> for Action<'a> {
    fn from(p: &'a Probe) -> Self {
        Action { exec: p.exec.as_ref(), http_get: p.http_get.as_ref(), tcp_socket: p.tcp_socket.as_ref() }
    }
}

impl<'a> From<&'a LifecycleHandler> for Action<'a> {
    fn from(h: &'a LifecycleHandler) -> Self {
        Action { exec: h.exec.as_ref(), http_get: h.http_get.as_ref(), tcp_socket: h.tcp_socket.as_ref() }
    }
}

/// Where an action runs: the container and the pod's address.
pub struct Target<'a> {
    pub runtime: &'a Runtime,
    pub container: &'a Container,
    pub container_id: &'a str,
    pub pod_ip: &'a str,
}

/// A port given by number or by the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| i64::from(p.container_port))
                .ok_or_else(|| format!("couldn't find port: {s} in {}", container.name))?,
        },
    };
    u16::try_from(number).ok().filter(|n| *n > 0).ok_or_else(|| format!("invalid port number: {number}"))
}

/// The first line of an HTTP response: its status code.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Sends `request` and reads at most 10 KiB of the response.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(request).await?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while response.len() < 10 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            // A server that closes without TLS close_notify still answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(response)
}

async fn http_get(action: &HTTPGetAction, target: &Target<'_>, timeout: Duration) -> Result<String, String> {
    let https = action.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let host = action.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.pod_ip.to_owned());
    let port = resolve_port(&action.port, target.container)?;
    let path = action.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    let path = if path.starts_with('/') { path } else { format!("/{path}") };
    let url = format!("{}://{host}:{port}{path}", if https { "https" } else { "http" });
    let headers: Vec<(String, String)> = action.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !has("Host") {
        request.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    if !has("User-Agent") {
        request.push_str(&format!("User-Agent: kube-probe/1.{}\r\n", crate::api::discovery::KUBERNETES_MINOR));
    }
    if !has("Accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let attempt = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        if !https {
            return exchange(stream, request.as_bytes()).await;
        }
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        exchange(crate::client::insecure_tls().connect(name, stream).await?, request.as_bytes()).await
    };
    let response = match tokio::time::timeout(timeout, attempt).await {
        Err(_) => return Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)")),
        Ok(Err(e)) => return Err(format!("Get \"{url}\": {e}")),
        Ok(Ok(r)) => r,
    };
    match status_code(&response) {
        Some(code) if (200..400).contains(&code) => Ok(String::new()),
        Some(code) => Err(format!("HTTP probe failed with statuscode: {code}")),
        None => Err(format!("Get \"{url}\": malformed HTTP response")),
    }
}

async fn tcp_connect(action: &TCPSocketAction, target: &Target<'_>, timeout: Duration) -> Result<String, String> {
    let host = action.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.pod_ip.to_owned());
    let port = resolve_port(&action.port, target.container)?;
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(_)) => Ok(String::new()),
        Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

/// Runs `action` once; the error is the failure message.
pub async fn run(action: Action<'_>, target: &Target<'_>, timeout: Duration) -> Result<String, String> {
    if let Some(exec) = action.exec {
        let command = exec.command.clone().unwrap_or_default();
        return match target.runtime.exec(target.container_id, &command, timeout).await {
            Ok((0, output)) => Ok(output),
            Ok((code, output)) => Err(if output.trim().is_empty() { format!("command {command:?} exited with {code}") } else { output.trim_end().to_owned() }),
            Err(e) => Err(e.to_string()),
        };
    }
    if let Some(http) = action.http_get {
        return http_get(http, target, timeout).await;
    }
    if let Some(tcp) = action.tcp_socket {
        return tcp_connect(tcp, target, timeout).await;
    }
    Err("the action has no handler rk supports (gRPC probes are not supported yet)".into())
}

/// Runs a lifecycle hook: exec, HTTP GET, or sleep.
pub async fn run_hook(handler: &LifecycleHandler, target: &Target<'_>, timeout: Duration) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    run(Action::from(handler), target, timeout).await.map(drop)
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct WorkerKey {
    uid: String,
    container: String,
    kind: ProbeKind,
}

/// The probes of one pod: where to find it and how to wake its reconcile.
pub struct PodProbes<'a> {
    pub key: &'a str,
    pub uid: &'a str,
    pub pod_ip: &'a str,
    pub pod_ref: &'a ObjectReference,
}

/// Runs probe workers and keeps their verdicts, per container instance.
pub struct Prober {
    runtime: Runtime,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    workers: Mutex<HashMap<WorkerKey, (String, CancellationToken)>>,
    /// Verdicts: the container id they are about, and whether the probe passes.
    results: Arc<Mutex<HashMap<WorkerKey, (String, bool)>>>,
}

impl Prober {
    pub fn new(runtime: Runtime, recorder: Recorder, queue: Arc<WorkQueue>) -> Self {
        Self { runtime, recorder, queue, workers: Mutex::new(HashMap::new()), results: Arc::new(Mutex::new(HashMap::new())) }
    }

    fn verdict(&self, uid: &str, container: &str, container_id: &str, kind: ProbeKind) -> Option<bool> {
        let key = WorkerKey { uid: uid.to_owned(), container: container.to_owned(), kind };
        self.results.lock().expect("probe results lock").get(&key).filter(|(id, _)| id == container_id).map(|(_, ok)| *ok)
    }

    /// Whether the container has passed its startup probe (or has none).
    pub fn started(&self, uid: &str, c: &Container, container_id: &str) -> bool {
        c.startup_probe.is_none() || self.verdict(uid, &c.name, container_id, ProbeKind::Startup) == Some(true)
    }

    /// Whether the container passes its readiness probe (or has none).
    pub fn ready(&self, uid: &str, c: &Container, container_id: &str) -> bool {
        self.started(uid, c, container_id)
            && (c.readiness_probe.is_none() || self.verdict(uid, &c.name, container_id, ProbeKind::Readiness) == Some(true))
    }

    /// The probe that says the container must be restarted, if one does.
    pub fn failed(&self, uid: &str, c: &Container, container_id: &str) -> Option<ProbeKind> {
        [ProbeKind::Liveness, ProbeKind::Startup].into_iter().find(|k| self.verdict(uid, &c.name, container_id, *k) == Some(false))
    }

    /// Runs workers for the probes of `running` (container, id) pairs and
    /// stops every other worker of the pod.
    pub fn sync(&self, pod: &PodProbes<'_>, running: &[(&Container, &str)]) {
        let mut workers = self.workers.lock().expect("probe workers lock");
        let mut wanted = Vec::new();
        for (container, id) in running {
            for kind in [ProbeKind::Startup, ProbeKind::Liveness, ProbeKind::Readiness] {
                let Some(probe) = kind.of(container) else { continue };
                let key = WorkerKey { uid: pod.uid.to_owned(), container: container.name.clone(), kind };
                wanted.push(key.clone());
                if workers.get(&key).is_some_and(|(worker_id, _)| worker_id == id) {
                    continue;
                }
                if let Some((_, old)) = workers.remove(&key) {
                    old.cancel();
                }
                let cancel = CancellationToken::new();
                workers.insert(key.clone(), (id.to_string(), cancel.clone()));
                let worker = Worker {
                    key,
                    pod_key: pod.key.to_owned(),
                    pod_ip: pod.pod_ip.to_owned(),
                    container: (*container).clone(),
                    container_id: id.to_string(),
                    probe: probe.clone(),
                    object: container_ref(pod.pod_ref, &container.name),
                    runtime: self.runtime.clone(),
                    recorder: self.recorder.clone(),
                    queue: self.queue.clone(),
                    results: self.results.clone(),
                };
                tokio::spawn(worker.run(cancel));
            }
        }
        workers.retain(|key, (_, cancel)| {
            let keep = key.uid != pod.uid || wanted.contains(key);
            if !keep {
                cancel.cancel();
            }
            keep
        });
        self.results.lock().expect("probe results lock").retain(|key, _| key.uid != pod.uid || wanted.contains(key));
    }

    /// Stops every worker of a pod and forgets its verdicts.
    pub fn forget_pod(&self, uid: &str) {
        self.workers.lock().expect("probe workers lock").retain(|key, (_, cancel)| {
            if key.uid == uid {
                cancel.cancel();
            }
            key.uid != uid
        });
        self.results.lock().expect("probe results lock").retain(|key, _| key.uid != uid);
    }
}

/// A reference to one container of a pod, for its events.
pub fn container_ref(pod: &ObjectReference, container: &str) -> ObjectReference {
    let mut r = pod.clone();
    r.field_path = Some(format!("spec.containers{{{container}}}"));
    r
}

struct Worker {
    key: WorkerKey,
    pod_key: String,
    pod_ip: String,
    container: Container,
    container_id: String,
    probe: Probe,
    object: ObjectReference,
    runtime: Runtime,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    results: Arc<Mutex<HashMap<WorkerKey, (String, bool)>>>,
}

impl Worker {
    fn verdict(&self, kind: ProbeKind) -> Option<bool> {
        let key = WorkerKey { kind, ..self.key.clone() };
        self.results.lock().expect("probe results lock").get(&key).filter(|(id, _)| *id == self.container_id).map(|(_, ok)| *ok)
    }

    fn set(&self, ok: bool) {
        let changed = {
            let mut results = self.results.lock().expect("probe results lock");
            let previous = results.insert(self.key.clone(), (self.container_id.clone(), ok));
            previous != Some((self.container_id.clone(), ok))
        };
        if changed {
            self.queue.add(self.pod_key.clone());
        }
    }

    async fn run(self, cancel: CancellationToken) {
        let p = &self.probe;
        let seconds = |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let period = seconds(p.period_seconds, 10).max(Duration::from_secs(1));
        let timeout = seconds(p.timeout_seconds, 1).max(Duration::from_secs(1));
        let success_threshold = p.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        let kind = self.key.kind;
        let (mut successes, mut failures) = (0, 0);
        let mut wait = seconds(p.initial_delay_seconds, 0);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = period;
            if kind != ProbeKind::Startup && self.container.startup_probe.is_some() && self.verdict(ProbeKind::Startup) != Some(true) {
                continue;
            }
            let target = Target { runtime: &self.runtime, container: &self.container, container_id: &self.container_id, pod_ip: &self.pod_ip };
            match run(Action::from(p), &target, timeout).await {
                Ok(_) => {
                    failures = 0;
                    successes += 1;
                    if successes >= success_threshold {
                        self.set(true);
                        if kind == ProbeKind::Startup {
                            return;
                        }
                    }
                }
                Err(message) => {
                    successes = 0;
                    failures += 1;
                    self.recorder.record(self.object.clone(), EventType::Warning, "Unhealthy", format!("{} probe failed: {message}", kind.title()));
                    if failures >= failure_threshold {
                        self.set(false);
                        if kind != ProbeKind::Readiness {
                            // The container gets restarted; its successor has a worker of its own.
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    /// A runtime that is never called: network probes do not need Docker.
    fn unused_runtime() -> Runtime {
        let socket = tempfile::NamedTempFile::new().unwrap();
        Runtime::connect(Some(socket.path().to_str().unwrap()), "n", "bridge").unwrap()
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c = Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
            ..Default::default()
        };
        assert_eq!(resolve_port(&IntOrString::String("http".into()), &c), Ok(8080));
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c), Ok(81));
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &c).is_err());
    }

    #[tokio::test]
    async fn https_probes_accept_any_certificate() {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await;
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
            let _ = tls.shutdown().await;
        });
        let runtime = unused_runtime();
        let container = Container::default();
        let target = Target { runtime: &runtime, container: &container, container_id: "", pod_ip: "127.0.0.1" };
        let action = HTTPGetAction { port: IntOrString::Int(i32::from(port)), scheme: Some("HTTPS".into()), ..Default::default() };
        let result = run(Action { exec: None, http_get: Some(&action), tcp_socket: None }, &target, Duration::from_secs(5)).await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn the_status_line_gives_the_code() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500 Oops\r\n"), Some(500));
        assert_eq!(status_code(b"garbage"), None);
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx_and_fail_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in [200, 302, 503] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let runtime = unused_runtime();
        let container = Container::default();
        let target = Target { runtime: &runtime, container: &container, container_id: "", pod_ip: "127.0.0.1" };
        let action = HTTPGetAction { port: IntOrString::Int(i32::from(port)), path: Some("/healthz".into()), ..Default::default() };
        let a = || Action { exec: None, http_get: Some(&action), tcp_socket: None };
        assert!(run(a(), &target, Duration::from_secs(2)).await.is_ok());
        assert!(run(a(), &target, Duration::from_secs(2)).await.is_ok());
        assert_eq!(run(a(), &target, Duration::from_secs(2)).await.unwrap_err(), "HTTP probe failed with statuscode: 503");
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let closed = TCPSocketAction { port: IntOrString::Int(i32::from(closed_port)), host: None };
        let tcp = Action { exec: None, http_get: None, tcp_socket: Some(&closed) };
        assert!(run(tcp, &target, Duration::from_secs(2)).await.is_err(), "nothing listens there");
    }
}

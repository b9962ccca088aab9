//! `rk bench`: measures a real `rk server` process through its HTTPS API, as a
//! client sees it: start-up time, durable creates per second at concurrency 1
//! and 64, get and list latency, watch delivery latency to 100 watchers, and the
//! server's memory. The figures go into the project's notes; targets live in
//! `shared/targets.md`, not in tests. `rk bench scheduler` ([`scheduler`])
//! measures scheduling throughput on fake nodes, `rk bench deployment`
//! ([`deployment`]) a 1,000-replica Deployment's rollout and rolling update.

pub mod deployment;
pub mod pods;
pub mod scheduler;
pub mod service;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod dns;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What to measure, and how much.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Seconds each create phase runs.
    pub seconds: u64,
    pub watchers: usize,
    /// Writes whose delivery to every watcher is timed.
    pub watched_writes: usize,
}

/// A server process started for the benchmark, stopped when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    _dir: tempfile::TempDir,
    pub(crate) kubeconfig: std::path::PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rk server` on loopback with `args` (e.g. `--disable-agent`) on a
/// fresh data directory, without its service proxy (the host's nf_tables stay untouched).
pub(crate) fn start_server(args: &[&str]) -> Result<(ServerProcess, Duration), Error> {
    start_server_with_proxy(&[&["--disable-proxy"], args].concat())
}

/// Starts `rk server` like [`start_server`], with its service proxy: it
/// programs the nf_tables of the network namespace the calling thread is in.
pub(crate) fn start_server_with_proxy(args: &[&str]) -> Result<(ServerProcess, Duration), Error> {
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let started = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .args(["server", "--bind-address", "127.0.0.1", "--https-listen-port", "0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let server = ServerProcess { child, _dir: dir, kubeconfig };
    while !server.kubeconfig.exists() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the server did not start within 30s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok((server, started.elapsed()))
}

pub(crate) async fn client(kubeconfig: &Path) -> Result<kube::Client, Error> {
    let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(kubeconfig)?, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Waits until the server's node agent has reported node `node` Ready.
pub(crate) async fn wait_node_ready(client: &kube::Client, node: &str) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = kube::runtime::wait::await_condition(nodes, node, |n: Option<&Node>| {
        n.and_then(|n| n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")).is_some_and(|c| c.status == "True")
    });
    tokio::time::timeout(Duration::from_secs(60), ready).await.map_err(|_| "the node did not become Ready within 60s")??;
    Ok(())
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmRSS:")
}

/// The most resident memory a process has had, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmHWM:")
}

/// A memory figure (given in kB) from `/proc/<pid>/status`, in MiB.
fn proc_status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn configmap(name: String) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some(name), ..Default::default() },
        data: Some([("key".to_owned(), "a small value".to_owned())].into()),
        ..Default::default()
    }
}

/// Creates as many objects as `concurrency` clients can in `duration`; returns creates/s.
async fn creates_per_second(api: &Api<ConfigMap>, prefix: &str, concurrency: usize, duration: Duration) -> Result<f64, Error> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let api = api.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                api.create(&PostParams::default(), &configmap(format!("{prefix}-{worker}-{done}"))).await?;
                done += 1;
            }
            Ok::<u64, kube::Error>(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn latencies<F, Fut>(count: usize, mut op: F) -> Result<Vec<Duration>, Error>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        op(i).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// Opens `watchers` watches, then times each of `writes` creates from the call
/// to its arrival at every watcher.
async fn watch_latency(client: &kube::Client, watchers: usize, writes: usize) -> Result<Vec<Duration>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    let rv = api.list(&ListParams::default().limit(1)).await?.metadata.resource_version.unwrap_or_default();
    let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> = Arc::new(std::sync::Mutex::new(vec![None; writes]));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let stream = api.watch(&WatchParams::default().timeout(290), &rv).await?;
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = stream.boxed();
            let mut seen = Vec::with_capacity(writes);
            while seen.len() < writes {
                match stream.next().await {
                    Some(Ok(WatchEvent::Added(cm))) => {
                        let received = Instant::now();
                        let index: usize = cm.metadata.name.as_deref().and_then(|n| n.strip_prefix("w-")?.parse().ok()).unwrap_or(usize::MAX);
                        if let Some(Some(at)) = sent.lock().expect("sent lock").get(index) {
                            seen.push(received - *at);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            seen
        }));
    }
    for i in 0..writes {
        sent.lock().expect("sent lock")[i] = Some(Instant::now());
        api.create(&PostParams::default(), &configmap(format!("w-{i}"))).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort();
    Ok(all)
}

pub async fn run(options: BenchOptions) -> Result<(), Error> {
    let (server, startup) = start_server(&["--disable-agent", "--disable-dns", "--disable-ingress"])?;
    let pid = server.child.id();
    let client = client(&server.kubeconfig).await?;
    let ready = Instant::now();
    client.apiserver_version().await?;
    println!("rk bench: one rk server process, driven over HTTPS with the kube crate");
    println!("start-up (process start to kubeconfig written): {}", ms(startup));
    println!("first request after start-up:                   {}", ms(ready.elapsed()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("idle RSS:                                        {:.1} MiB", rss_mib(pid));

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let phase = Duration::from_secs(options.seconds);
    let c1 = creates_per_second(&api, "c1", 1, phase).await?;
    println!("durable creates/s, concurrency 1:                {c1:.0}");
    let c64 = creates_per_second(&api, "c64", 64, phase).await?;
    println!("durable creates/s, concurrency 64:               {c64:.0}");

    let gets = latencies(1000, |i| {
        let api = api.clone();
        async move { api.get(&format!("c64-{}-0", i % 64)).await.map(drop) }
    })
    .await?;
    println!("get latency p50 / p99:                           {} / {}", ms(percentile(&gets, 0.5)), ms(percentile(&gets, 0.99)));
    let lists = latencies(50, |_| {
        let api = api.clone();
        async move { api.list(&ListParams::default().limit(500)).await.map(drop) }
    })
    .await?;
    println!("list of 500 latency p50 / p99:                   {} / {}", ms(percentile(&lists, 0.5)), ms(percentile(&lists, 0.99)));

    let delivered = watch_latency(&client, options.watchers, options.watched_writes).await?;
    println!(
        "watch delivery ({} watchers, {} writes) p50 / p99: {} / {}   ({} deliveries, from create call to arrival)",
        options.watchers,
        options.watched_writes,
        ms(percentile(&delivered, 0.5)),
        ms(percentile(&delivered, 0.99)),
        delivered.len()
    );
    println!("RSS after the run:                               {:.1} MiB", rss_mib(pid));
    Ok(())
}

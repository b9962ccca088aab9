//! `rk bench service`: HTTP throughput and latency through the service proxy's
//! rules, next to the same requests sent straight to a pod. A real `rk server`
//! with its node agent (Docker), rk's pod network and the service proxy runs in
//! a network namespace of its own, so the host's bridge and nf_tables are never
//! touched; 3 pods of `rk-test/web:1` (busybox httpd) sit behind a NodePort
//! Service. `wrk` runs on the node (in that namespace, as a client on the host
//! of a node would) against one pod IP, the cluster IP and the node port.

use super::{Error, client, ms, start_server_with_proxy, wait_node_ready};
use crate::node::docker::{LABEL_NODE, Runtime};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE: &str = "rk-test/web:1";
const REPLICAS: usize = 3;
/// The node's address, on a veth (its peer dangles) holding the namespace's default route.
const NODE_IP: &str = "192.168.252.1";
const NAME: &str = "web";
/// A Service in front of only the pod measured directly: the proxy's cost on one backend.
const ONE_POD: &str = "web-one";
/// The label that picks that pod.
const ONE_POD_LABEL: &str = "rk-bench-direct";
/// How long pods, endpoints and the proxy's rules get to appear, and pods to go.
const SETTLE: Duration = Duration::from_secs(120);
/// Reported by the Lua `done` hook handed to wrk: one line of `key=value` pairs,
/// read from wrk's own latency histogram (the one `--latency` prints).
const REPORT_PREFIX: &str = "rk-wrk-report";
const WRK_REPORT: &str = r#"done = function(summary, latency, requests)
  io.write(string.format("rk-wrk-report requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
end
"#;

#[derive(Clone, Debug)]
pub struct ServiceBenchOptions {
    /// Seconds wrk runs against each target.
    pub seconds: u64,
    pub connections: usize,
    pub threads: usize,
    /// Times every target is measured; the figures are medians.
    pub rounds: usize,
}

/// What one wrk run measured.
#[derive(Clone, Debug, PartialEq)]
struct WrkFigures {
    requests_per_second: f64,
    p50: Duration,
    p99: Duration,
    /// Connect, read, write and timeout errors, and non-2xx/3xx answers.
    errors: u64,
}

/// Reads the figures out of wrk's output: the line the Lua `done` hook wrote.
fn parse_wrk(output: &str) -> Result<WrkFigures, Error> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix(REPORT_PREFIX))
        .ok_or_else(|| format!("wrk printed no report line:\n{output}"))?;
    let fields: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k, v.parse().ok()?))
        })
        .collect();
    let field = |k: &str| fields.get(k).copied().ok_or_else(|| format!("wrk's report has no {k}: {line}"));
    let duration = field("duration_us")?;
    if duration == 0 {
        return Err(format!("wrk ran for no time: {line}").into());
    }
    Ok(WrkFigures {
        requests_per_second: field("requests")? as f64 * 1e6 / duration as f64,
        p50: Duration::from_micros(field("p50_us")?),
        p99: Duration::from_micros(field("p99_us")?),
        errors: ["connect", "read", "write", "status", "timeout"].iter().map(|k| field(k)).sum::<Result<u64, _>>()?,
    })
}

/// Runs wrk against `url` for `seconds`.
fn wrk(url: &str, seconds: u64, options: &ServiceBenchOptions, script: &std::path::Path) -> Result<WrkFigures, Error> {
    let output = Command::new("wrk")
        .args(["-t", &options.threads.to_string(), "-c", &options.connections.to_string(), "-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("wrk {url} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr)).into());
    }
    parse_wrk(&stdout)
}

/// One plain HTTP request; whether it was answered 200.
fn answers(address: &str) -> bool {
    let Ok(address) = address.parse::<SocketAddr>() else { return false };
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = Vec::new();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok() && stream.read_to_end(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.") && answer.get(9..12) == Some(b"200")
}

/// Checks what the benchmark needs before building anything.
fn preflight() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("rk bench service needs root (network namespaces, nf_tables, Docker)".into());
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        return Err("wrk is not installed; Debian's package provides it: apt-get install wrk".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("iproute2's `ip` is needed: apt-get install iproute2".into());
    }
    let image = Command::new("docker").args(["image", "inspect", IMAGE]).output().map_err(|e| format!("running docker: {e}"))?;
    if !image.status.success() {
        return Err(format!("the image {IMAGE} is missing; build it with tools/test-images.sh").into());
    }
    Ok(())
}

/// The node's network namespace, deleted when dropped (with the bridge, veths
/// and tables the agent and proxy made in it).
struct NodeNamespace(String);

impl NodeNamespace {
    fn create(name: &str) -> Result<Self, Error> {
        let ns = NodeNamespace(name.to_owned());
        for args in [
            &["netns", "add", name][..],
            &["-n", name, "link", "set", "lo", "up"],
            &["-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0"],
            &["-n", name, "addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"],
            &["-n", name, "link", "set", "lan0", "up"],
            &["-n", name, "link", "set", "eth0", "up"],
            &["-n", name, "route", "add", "default", "dev", "eth0"],
            &["netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ] {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)).into());
            }
        }
        Ok(ns)
    }
}

impl Drop for NodeNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

pub fn run(options: ServiceBenchOptions) -> Result<(), Error> {
    preflight()?;
    let node = format!("rk-bench-svc-{}", std::process::id());
    let namespace = NodeNamespace::create(&node)?;
    let path = format!("/run/netns/{}", namespace.0);
    let result = std::thread::spawn(move || -> Result<(), String> {
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: setns moves only this thread, which owns nothing shared, into the namespace we hold open.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("entering {path}: {}", std::io::Error::last_os_error()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(on_node(&node, &options)).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the benchmark thread panicked")?;
    drop(namespace);
    Ok(result?)
}

/// Everything that happens inside the node's namespace: the server, the
/// workload, the measurements, and the removal of every container.
async fn on_node(node: &str, options: &ServiceBenchOptions) -> Result<(), Error> {
    let (server, _) = start_server_with_proxy(&["--node-name", node, "--disable-dns", "--disable-ingress", "--kubelet-port", "0"])?;
    let client = client(&server.kubeconfig).await?;
    let result = measure(&client, node, options).await;
    let removed = remove_workload(&client).await;
    drop(server);
    Runtime::connect(None, node, "bridge")?.remove_all().await?;
    let left = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={LABEL_NODE}={node}")]).output()?;
    let left = String::from_utf8_lossy(&left.stdout).split_whitespace().count();
    if left > 0 {
        return Err(format!("{left} containers of node {node} are left in `docker ps -a`").into());
    }
    result?;
    removed
}

fn manifests() -> Result<(Deployment, Service), Error> {
    let deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": NAME },
        "spec": {
            "replicas": REPLICAS,
            "selector": { "matchLabels": { "app": NAME } },
            "template": {
                "metadata": { "labels": { "app": NAME } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "httpd", "image": IMAGE, "imagePullPolicy": "Never",
                        "ports": [{ "containerPort": 80 }],
                        "readinessProbe": { "httpGet": { "path": "/", "port": 80 }, "periodSeconds": 1 },
                    }],
                },
            },
        },
    }))?;
    Ok((deployment, service_manifest(NAME, "NodePort", serde_json::json!({ "app": NAME }))?))
}

fn service_manifest(name: &str, kind: &str, selector: serde_json::Value) -> Result<Service, Error> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": { "type": kind, "selector": selector, "ports": [{ "name": "http", "port": 80, "targetPort": 80 }] },
    }))?)
}

/// Polls `check` until it gives a value, for up to [`SETTLE`].
async fn settle<T, F: std::future::Future<Output = Result<Option<T>, Error>>>(what: &str, mut check: impl FnMut() -> F) -> Result<T, Error> {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Service `service` has `count` ready endpoints; their addresses.
async fn wait_endpoints(client: &kube::Client, service: &str, count: usize) -> Result<Vec<String>, Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    settle(&format!("the Service {service} has {count} ready endpoints"), || {
        let slices = slices.clone();
        async move { Ok(Some(ready_endpoints(&slices, service).await?).filter(|e| e.len() == count)) }
    })
    .await
}

/// The ready endpoint addresses of the Service's EndpointSlices.
async fn ready_endpoints(slices: &Api<EndpointSlice>, service: &str) -> Result<Vec<String>, Error> {
    let selector = format!("kubernetes.io/service-name={service}");
    let mut ready = Vec::new();
    for slice in slices.list(&ListParams::default().labels(&selector)).await?.items {
        for endpoint in slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                ready.extend(endpoint.addresses);
            }
        }
    }
    ready.sort();
    Ok(ready)
}

async fn measure(client: &kube::Client, node: &str, options: &ServiceBenchOptions) -> Result<(), Error> {
    wait_node_ready(client, node).await?;
    let (deployment, service) = manifests()?;
    Api::<Deployment>::namespaced(client.clone(), "default").create(&PostParams::default(), &deployment).await?;
    let service = Api::<Service>::namespaced(client.clone(), "default").create(&PostParams::default(), &service).await?;
    let spec = service.spec.unwrap_or_default();
    let cluster_ip = spec.cluster_ip.ok_or("the Service got no cluster IP")?;
    let node_port = spec.ports.iter().flatten().find_map(|p| p.node_port).ok_or("the Service got no node port")?;
    let endpoints = wait_endpoints(client, NAME, REPLICAS).await?;
    let pod_ip = endpoints[0].clone();
    let one_pod_ip = single_pod_service(client, &pod_ip).await?;
    let targets = [
        ("pod IP (1 pod)".to_owned(), format!("{pod_ip}:80")),
        ("ClusterIP (the same pod)".to_owned(), format!("{one_pod_ip}:80")),
        (format!("ClusterIP ({REPLICAS} pods)"), format!("{cluster_ip}:80")),
        (format!("NodePort ({REPLICAS} pods)"), format!("{NODE_IP}:{node_port}")),
    ];
    for (what, address) in &targets {
        let address = address.clone();
        settle(&format!("the {what} {address} answers"), || {
            let address = address.clone();
            async move { Ok(answers(&address).then_some(())) }
        })
        .await?;
    }

    let script = tempfile::Builder::new().suffix(".lua").tempfile()?;
    std::fs::write(script.path(), WRK_REPORT)?;
    for (_, address) in &targets {
        wrk(&format!("http://{address}/"), 1, options, script.path())?; // warm-up: ARP, conntrack, the pods' page cache
    }
    // Rounds over every target in turn, so a burst of load from elsewhere on
    // the machine does not land on one target only; each figure is a median.
    let mut runs: Vec<Vec<WrkFigures>> = vec![Vec::new(); targets.len()];
    for _ in 0..options.rounds.max(1) {
        for ((_, address), runs) in targets.iter().zip(&mut runs) {
            runs.push(wrk(&format!("http://{address}/"), options.seconds, options, script.path())?);
        }
    }
    let figures: Vec<WrkFigures> = runs.iter().map(|r| median(r)).collect();

    println!(
        "rk bench service: wrk ({} threads, {} connections, {} s per target, median of {} rounds) on the node, against pods of {IMAGE} (busybox httpd, one connection per request): one pod directly, through a ClusterIP Service of that pod alone, and through a NodePort Service of {REPLICAS} pods",
        options.threads,
        options.connections,
        options.seconds,
        options.rounds.max(1)
    );
    println!("{:<26} {:<22} {:>11} {:>10} {:>10} {:>7} {:>9} {:>9}", "target", "address", "requests/s", "p50", "p99", "errors", "req/s vs", "p50 vs");
    let direct = figures[0].clone();
    for ((what, address), f) in targets.iter().zip(&figures) {
        println!(
            "{what:<26} {address:<22} {:>11.0} {:>10} {:>10} {:>7} {:>8.2}x {:>8.2}x",
            f.requests_per_second,
            ms(f.p50),
            ms(f.p99),
            f.errors,
            f.requests_per_second / direct.requests_per_second,
            f.p50.as_secs_f64() / direct.p50.as_secs_f64().max(1e-9),
        );
    }
    Ok(())
}

/// The median of each figure over `runs` (not empty), and all their errors.
fn median(runs: &[WrkFigures]) -> WrkFigures {
    fn middle<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    WrkFigures {
        requests_per_second: middle(runs.iter().map(|r| r.requests_per_second).collect()),
        p50: middle(runs.iter().map(|r| r.p50).collect()),
        p99: middle(runs.iter().map(|r| r.p99).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

/// Puts the pod at `pod_ip` alone behind a ClusterIP Service; that Service's cluster IP.
async fn single_pod_service(client: &kube::Client, pod_ip: &str) -> Result<String, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = pods
        .list(&ListParams::default().labels(&format!("app={NAME}")))
        .await?
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(pod_ip))
        .and_then(|p| p.metadata.name)
        .ok_or_else(|| format!("no pod has the address {pod_ip}"))?;
    let label = serde_json::json!({ "metadata": { "labels": { ONE_POD_LABEL: "true" } } });
    pods.patch(&pod, &PatchParams::default(), &Patch::Merge(&label)).await?;
    let service = service_manifest(ONE_POD, "ClusterIP", serde_json::json!({ "app": NAME, ONE_POD_LABEL: "true" }))?;
    let service = Api::<Service>::namespaced(client.clone(), "default").create(&PostParams::default(), &service).await?;
    wait_endpoints(client, ONE_POD, 1).await?;
    service.spec.and_then(|s| s.cluster_ip).ok_or_else(|| "the single-pod Service got no cluster IP".into())
}

/// Deletes the Deployment and waits until the agent has removed its pods.
async fn remove_workload(client: &kube::Client) -> Result<(), Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    if let Err(e) = deployments.delete(NAME, &DeleteParams::foreground()).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404)
    {
        return Err(e.into());
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    settle("the benchmark's pods are gone", || {
        let pods = pods.clone();
        async move { Ok(pods.list(&ListParams::default()).await?.items.is_empty().then_some(())) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line_gives_rate_percentiles_and_errors() {
        let output = "Running 10s test @ http://10.42.0.2/\n  Latency Distribution\n     50%    1.10ms\nRequests/sec:   1155.28\n\
                      rk-wrk-report requests=2000 duration_us=2000000 p50_us=1102 p99_us=7762 connect=1 read=0 write=0 status=2 timeout=3\n";
        let figures = parse_wrk(output).unwrap();
        assert_eq!(figures, WrkFigures { requests_per_second: 1000.0, p50: Duration::from_micros(1102), p99: Duration::from_micros(7762), errors: 6 });
    }

    #[test]
    fn rounds_give_the_median_of_each_figure_and_every_error() {
        let run = |rate: f64, p50: u64, p99: u64, errors: u64| WrkFigures { requests_per_second: rate, p50: Duration::from_micros(p50), p99: Duration::from_micros(p99), errors };
        let runs = [run(900.0, 30, 900, 1), run(1000.0, 10, 100, 0), run(1100.0, 20, 300, 2)];
        assert_eq!(median(&runs), run(1000.0, 20, 300, 3));
    }

    #[test]
    fn output_without_a_complete_report_is_an_error() {
        assert!(parse_wrk("Requests/sec: 1155.28\n").is_err());
        assert!(parse_wrk("rk-wrk-report requests=10 duration_us=0 p50_us=1 p99_us=2 connect=0 read=0 write=0 status=0 timeout=0").is_err());
        assert!(parse_wrk("rk-wrk-report requests=10 duration_us=100 p50_us=1").is_err());
    }
}

//! Resource usage for `kubectl top`: every 15 seconds the agent samples the
//! CPU and memory of each running app container from Docker's stats (CPU as
//! the rate over Docker's own one-second window, memory as the working set:
//! usage less inactive file pages) and of the node from /proc, and keeps only
//! the latest sample. The endpoint serves it at `/metrics/resource` as a
//! [`Report`]; the API server asks the agents when a client reads
//! `metrics.k8s.io` (see `api::metrics`), so nothing is written to the store.

use super::docker::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, Role, Runtime};
use bollard::models::{ContainerCpuStats, ContainerStatsResponse};
use bollard::query_parameters::StatsOptions;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often usage is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// Usage at one moment: CPU in nanocores (`123n`), memory in bytes (`456Ki`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu: String,
    pub memory: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub name: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub timestamp: String,
    pub window: String,
    pub containers: Vec<ContainerUsage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    pub timestamp: String,
    pub window: String,
    pub usage: Usage,
}

/// What `/metrics/resource` answers: the latest sample of the node and its pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub node: Option<NodeUsage>,
    pub pods: Vec<PodUsage>,
}

/// The latest report, shared by the sampler and the endpoint.
#[derive(Clone, Default)]
pub struct Samples(Arc<RwLock<Report>>);

impl Samples {
    pub fn report(&self) -> Report {
        self.0.read().expect("samples lock").clone()
    }

    fn set(&self, report: Report) {
        *self.0.write().expect("samples lock") = report;
    }
}

fn nanocores(cores: f64) -> String {
    format!("{}n", (cores.max(0.0) * 1e9).round() as u64)
}

fn kibibytes(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// CPU cores used between Docker's previous and current reading.
fn container_cores(now: &ContainerCpuStats, before: &ContainerCpuStats) -> f64 {
    let total = |s: &ContainerCpuStats| s.cpu_usage.as_ref().and_then(|u| u.total_usage).unwrap_or(0);
    let (used, system) = (total(now).saturating_sub(total(before)), now.system_cpu_usage.unwrap_or(0).saturating_sub(before.system_cpu_usage.unwrap_or(0)));
    let cpus = now.online_cpus.map(u64::from).or_else(|| now.cpu_usage.as_ref().and_then(|u| u.percpu_usage.as_ref()).map(|p| p.len() as u64)).unwrap_or(1);
    if system == 0 || before.system_cpu_usage.unwrap_or(0) == 0 { 0.0 } else { used as f64 / system as f64 * cpus as f64 }
}

/// The working set: memory in use less inactive file pages (cgroup v2 or v1 names).
fn working_set(stats: &ContainerStatsResponse) -> u64 {
    let memory = stats.memory_stats.clone().unwrap_or_default();
    let extra = memory.stats.unwrap_or_default();
    let inactive = extra.get("inactive_file").or_else(|| extra.get("total_inactive_file")).copied().unwrap_or(0);
    memory.usage.unwrap_or(0).saturating_sub(inactive)
}

/// Aggregate CPU time from /proc/stat: (busy, total) in clock ticks.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Memory in use from /proc/meminfo: MemTotal less MemAvailable, in bytes.
fn memory_in_use(meminfo: &str) -> Option<u64> {
    let field = |name: &str| meminfo.lines().find_map(|l| l.strip_prefix(name)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

struct NodeReading {
    ticks: (u64, u64),
    at: Instant,
}

fn read_node() -> Option<NodeReading> {
    Some(NodeReading { ticks: cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?, at: Instant::now() })
}

fn node_usage(before: &NodeReading, now: &NodeReading, cpus: usize) -> Option<NodeUsage> {
    let (busy, total) = (now.ticks.0.saturating_sub(before.ticks.0), now.ticks.1.saturating_sub(before.ticks.1));
    let cores = if total == 0 { 0.0 } else { busy as f64 / total as f64 * cpus as f64 };
    Some(NodeUsage {
        timestamp: crate::api::object::format_time(jiff::Timestamp::now()),
        window: seconds(now.at - before.at),
        usage: Usage { cpu: nanocores(cores), memory: kibibytes(memory_in_use(&std::fs::read_to_string("/proc/meminfo").ok()?)?) },
    })
}

/// One stats reading of every running app container, grouped by pod.
async fn pod_usage(runtime: &Runtime) -> Vec<PodUsage> {
    let containers = match runtime.running(Role::App).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "containers not listed for metrics");
            return Vec::new();
        }
    };
    let readings = futures::future::join_all(containers.into_iter().map(|(id, labels)| async move {
        let options = StatsOptions { stream: false, one_shot: false };
        let stats = runtime.docker().stats(&id, Some(options)).next().await?.ok()?;
        Some((labels, stats))
    }))
    .await;
    let mut pods: BTreeMap<(String, String), PodUsage> = BTreeMap::new();
    for (labels, stats) in readings.into_iter().flatten() {
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let cores = match (&stats.cpu_stats, &stats.precpu_stats) {
            (Some(now), Some(before)) => container_cores(now, before),
            _ => 0.0,
        };
        let window = match (stats.read.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()), stats.preread.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok())) {
            (Some(read), Some(preread)) if read > preread => Duration::from_millis((read - preread).total(jiff::Unit::Millisecond).unwrap_or(1000.0) as u64),
            _ => Duration::from_secs(1),
        };
        let pod = pods.entry((label(LABEL_POD_NAMESPACE), label(LABEL_POD_NAME))).or_insert_with(|| PodUsage {
            namespace: label(LABEL_POD_NAMESPACE),
            name: label(LABEL_POD_NAME),
            timestamp: crate::api::object::format_time(jiff::Timestamp::now()),
            window: seconds(window),
            containers: Vec::new(),
        });
        pod.containers.push(ContainerUsage { name: label(LABEL_CONTAINER_NAME), usage: Usage { cpu: nanocores(cores), memory: kibibytes(working_set(&stats)) } });
    }
    pods.into_values().collect()
}

/// Samples the node and its containers until `shutdown`.
pub async fn run(runtime: Runtime, samples: Samples, shutdown: CancellationToken) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut previous = read_node();
    // A first short window, so usage is known soon after start.
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = SAMPLE_EVERY;
        let now = read_node();
        let node = previous.as_ref().zip(now.as_ref()).and_then(|(before, now)| node_usage(before, now, cpus));
        previous = now;
        let pods = pod_usage(&runtime).await;
        samples.set(Report { node, pods });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuUsage, ContainerMemoryStats};

    fn cpu(total: u64, system: u64) -> ContainerCpuStats {
        ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage { total_usage: Some(total), ..Default::default() }),
            system_cpu_usage: Some(system),
            online_cpus: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn container_cpu_is_a_rate_over_dockers_window() {
        // Half of one second of CPU over one second of two CPUs' time: half a core.
        let cores = container_cores(&cpu(1_500_000_000, 4_000_000_000), &cpu(1_000_000_000, 2_000_000_000));
        assert_eq!(nanocores(cores), "500000000n");
        assert_eq!(container_cores(&cpu(5, 5), &cpu(0, 0)), 0.0, "no previous reading");
    }

    #[test]
    fn the_working_set_leaves_out_inactive_files() {
        let stats = ContainerStatsResponse {
            memory_stats: Some(ContainerMemoryStats { usage: Some(10 << 20), stats: Some([("inactive_file".to_owned(), 4 << 20)].into()), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(kibibytes(working_set(&stats)), "6144Ki");
    }

    #[test]
    fn node_usage_comes_from_proc() {
        assert_eq!(cpu_ticks("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n"), Some((150, 1000)));
        assert_eq!(memory_in_use("MemTotal:       2048 kB\nMemFree: 1 kB\nMemAvailable:   1024 kB\n"), Some(1024 * 1024));
        assert_eq!(cpu_ticks("intr 1 2"), None);
    }
}

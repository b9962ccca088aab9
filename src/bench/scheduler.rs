//! `rk bench scheduler`: scheduling throughput on fake nodes. Starts a server
//! with N fake nodes, creates M pods from many concurrent clients over HTTPS,
//! and times the bindings as a watch sees them: pods scheduled per second from
//! the first binding to the last, the create-to-bound latency, and the
//! server's memory. It first times the scheduling algorithm alone, in-process
//! (filter, score, assume; no API), on the same nodes and pods, so the two
//! figures separate the scheduler's own cost from the API's.

use super::{Error, client, ms, percentile, peak_rss_mib, rss_mib, start_server};
use crate::sched::Profile;
use crate::sched::algorithm::Algorithm;
use crate::sched::cache::Cache;
use crate::sched::pod_info::PodInfo;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to measure, and how much.
#[derive(Clone, Debug)]
pub struct SchedulerBenchOptions {
    pub nodes: usize,
    pub pods: usize,
    /// Clients creating pods at once.
    pub creators: usize,
}

/// A pod like a small web replica: 100m CPU and 64Mi requested.
fn bench_pod(index: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("bench-{index}"), "namespace": "default", "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "app", "image": "busybox", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    }))
    .expect("a valid pod")
}

/// A node shaped like a fake node: 32 CPU, 256Gi, 110 pods, Ready.
fn bench_node(index: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("fake-{index}"), "labels": {"kubernetes.io/hostname": format!("fake-{index}")}},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("a valid node")
}

/// Scheduling decisions per second of the algorithm alone, each assumed in the cache.
fn decisions_per_second(nodes: usize, pods: usize) -> Result<f64, Error> {
    let mut cache = Cache::default();
    for index in 0..nodes {
        cache.set_node(Arc::new(bench_node(index)));
    }
    let pods: Vec<Arc<Pod>> = (0..pods).map(|i| Arc::new(bench_pod(i))).collect();
    let mut algorithm = Algorithm::new(Profile::default());
    let started = Instant::now();
    for pod in &pods {
        let info = PodInfo::new(pod.clone(), cache.spread_groups(pod));
        let index = algorithm.schedule(&info, cache.nodes()).map_err(|e| format!("in-process scheduling failed: {e}"))?;
        let node = cache.nodes()[index].name.clone();
        cache.assume(&info, &node);
    }
    Ok(pods.len() as f64 / started.elapsed().as_secs_f64())
}

pub(super) async fn wait_for_nodes(client: &kube::Client, count: usize) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    while nodes.list_metadata(&ListParams::default()).await?.items.len() < count {
        if Instant::now() > deadline {
            return Err(format!("{count} fake nodes did not register within 120s").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// When each bench pod was first seen bound, by index, until all `count` are.
async fn watch_bindings(api: Api<Pod>, resource_version: String, count: usize) -> Result<Vec<Instant>, Error> {
    let params = WatchParams::default().fields("spec.nodeName!=").timeout(290);
    let mut stream = api.watch(&params, &resource_version).await?.boxed();
    let mut bound: Vec<Option<Instant>> = vec![None; count];
    let mut seen = 0;
    while seen < count {
        let pod = match stream.next().await {
            Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => pod,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(format!("the watch ended after {seen} of {count} bindings").into()),
        };
        let index = pod.metadata.name.as_deref().and_then(|n| n.strip_prefix("bench-")?.parse::<usize>().ok());
        if let Some(slot) = index.and_then(|i| bound.get_mut(i)).filter(|s| s.is_none()) {
            *slot = Some(Instant::now());
            seen += 1;
        }
    }
    Ok(bound.into_iter().flatten().collect())
}

/// Creates `count` pods from `creators` concurrent clients; returns when each create returned.
async fn create_pods(api: &Api<Pod>, count: usize, creators: usize) -> Result<Vec<Instant>, Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(Mutex::new(vec![None; count]));
    let mut tasks = Vec::new();
    for _ in 0..creators.max(1) {
        let (api, next, created) = (api.clone(), next.clone(), created.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<(), kube::Error>(());
                }
                api.create(&PostParams::default(), &bench_pod(index)).await?;
                created.lock().expect("created lock")[index] = Some(Instant::now());
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let created = std::mem::take(&mut *created.lock().expect("created lock"));
    Ok(created.into_iter().map(|t| t.unwrap_or_else(Instant::now)).collect())
}

pub async fn run(options: SchedulerBenchOptions) -> Result<(), Error> {
    let SchedulerBenchOptions { nodes, pods, creators } = options;
    println!("rk bench scheduler: {nodes} fake nodes, {pods} pods (100m CPU, 64Mi each) created by {creators} concurrent clients over HTTPS");
    let decisions = decisions_per_second(nodes, pods)?;
    println!("scheduling decisions/s, in-process (no API):      {decisions:.0}");

    let (server, _) = start_server(&["--disable-agent", "--fake-nodes", &nodes.to_string()])?;
    let pid = server.child.id();
    let client = client(&server.kubeconfig).await?;
    wait_for_nodes(&client, nodes).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let resource_version = api.list_metadata(&ListParams::default().limit(1)).await?.metadata.resource_version.unwrap_or_default();
    let watcher = tokio::spawn(watch_bindings(api.clone(), resource_version, pods));

    let started = Instant::now();
    let created = create_pods(&api, pods, creators).await?;
    let creating = started.elapsed();
    let bound = tokio::time::timeout(Duration::from_secs(60 + pods as u64 / 100), watcher)
        .await
        .map_err(|_| "not every pod was bound in time")???;

    let (first, last) = (bound.iter().min().copied(), bound.iter().max().copied());
    let span = match (first, last) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    let mut latencies: Vec<Duration> = bound.iter().zip(&created).map(|(b, c)| b.saturating_duration_since(*c)).collect();
    latencies.sort();
    println!("pods created/s:                                   {:.0}", pods as f64 / creating.as_secs_f64());
    println!(
        "pods scheduled/s (first to last binding):         {:.0}   ({} bindings in {})",
        pods.saturating_sub(1) as f64 / span.as_secs_f64().max(f64::EPSILON),
        bound.len(),
        ms(span)
    );
    println!("last binding after last create:                   {}", ms(last.map_or(Duration::ZERO, |l| l.saturating_duration_since(started + creating))));
    println!("create-to-bound latency p50 / p99:                {} / {}", ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99)));
    println!("server RSS after the run / peak:                  {:.1} MiB / {:.1} MiB", rss_mib(pid), peak_rss_mib(pid));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_process_measurement_places_every_pod() {
        assert!(decisions_per_second(5, 50).unwrap() > 0.0);
    }
}

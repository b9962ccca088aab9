//! `rk bench pods`: pod start latency on the embedded node agent, from the
//! create call to the pod reported Running, one pod at a time and as a burst,
//! next to what a plain `docker run -d` of the same image takes on the same
//! engine. Needs Docker and the test images (tools/test-images.sh).

use super::{Error, client, ms, percentile, start_server, wait_node_ready};
use crate::node::docker::Runtime;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct PodBenchOptions {
    pub pods: usize,
    pub image: String,
}

fn pod(name: &str, node: &str, image: &str) -> Result<Pod, Error> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "main", "image": image, "imagePullPolicy": "Never", "command": ["sleep", "3600"] }],
        },
    }))?)
}

/// Creates `pod` and waits until it is Running; returns how long that took.
async fn start_one(api: &Api<Pod>, pod: Pod) -> Result<Duration, Error> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let started = Instant::now();
    api.create(&PostParams::default(), &pod).await?;
    tokio::time::timeout(Duration::from_secs(120), await_condition(api.clone(), &name, conditions::is_pod_running()))
        .await
        .map_err(|_| format!("pod {name} did not run within 120s"))??;
    Ok(started.elapsed())
}

/// Median time of `docker run -d` of `image`, over `runs` runs.
fn docker_run_median(image: &str, runs: usize, label: &str) -> Result<Duration, Error> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let out = Command::new("docker").args(["run", "-d", "--label", label, image, "sleep", "3600"]).output()?;
        if !out.status.success() {
            return Err(format!("docker run failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        times.push(started.elapsed());
    }
    let ids = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={label}")]).output()?;
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_owned).collect();
    if !ids.is_empty() {
        Command::new("docker").args(["rm", "-f"]).args(&ids).output()?;
    }
    times.sort();
    Ok(percentile(&times, 0.5))
}

pub async fn run(options: PodBenchOptions) -> Result<(), Error> {
    let node = format!("rk-bench-{}", std::process::id());
    let (server, _) = start_server(&["--node-name", &node])?;
    let runtime = Runtime::connect(None, &node, "bridge")?;
    let result = measure(&server.kubeconfig, &node, &options).await;
    drop(server);
    runtime.remove_all().await?;
    result
}

async fn measure(kubeconfig: &std::path::Path, node: &str, options: &PodBenchOptions) -> Result<(), Error> {
    let client = client(kubeconfig).await?;
    wait_node_ready(&client, node).await?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    // The first pod imports the sandbox image; it is not counted.
    start_one(&api, pod("warm-up", node, &options.image)?).await?;

    let mut sequential = Vec::with_capacity(options.pods);
    for i in 0..options.pods {
        sequential.push(start_one(&api, pod(&format!("seq-{i}"), node, &options.image)?).await?);
    }
    sequential.sort();
    api.delete_collection(&DeleteParams::default(), &Default::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api.list(&Default::default()).await?.items.is_empty() {
        if Instant::now() > deadline {
            return Err("the one-at-a-time pods were not gone within 120s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let burst_started = Instant::now();
    let tasks: Vec<_> = (0..options.pods)
        .map(|i| {
            let api = api.clone();
            let pod = pod(&format!("burst-{i}"), node, &options.image);
            tokio::spawn(async move { start_one(&api, pod?).await })
        })
        .collect();
    let mut burst = Vec::with_capacity(options.pods);
    for t in tasks {
        burst.push(t.await??);
    }
    let burst_total = burst_started.elapsed();
    burst.sort();
    let docker = docker_run_median(&options.image, options.pods.min(20), &format!("rk-bench-docker-run={}", std::process::id()))?;

    println!("rk bench pods: {} pods of {} on the embedded node agent (Docker, one sandbox + one container each)", options.pods, options.image);
    println!("pod start, one at a time (create -> Running) p50 / p99: {} / {}", ms(percentile(&sequential, 0.5)), ms(percentile(&sequential, 0.99)));
    println!("pod start, {} created at once          p50 / p99: {} / {}   (all Running after {})", options.pods, ms(percentile(&burst, 0.5)), ms(percentile(&burst, 0.99)), ms(burst_total));
    println!("plain `docker run -d` of the same image, median:  {}", ms(docker));
    Ok(())
}

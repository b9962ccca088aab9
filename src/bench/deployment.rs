//! `rk bench deployment`: the whole control plane on fake nodes, as a user meets
//! it. A Deployment of N replicas is created and timed until every pod runs and
//! until the Deployment reports itself rolled out (what `kubectl rollout status`
//! waits for); then its image is changed and the rolling update (25% surge, 25%
//! unavailable, upstream's defaults) is timed to completion. Each step crosses
//! the Deployment and ReplicaSet controllers, the scheduler, the fake nodes and
//! the store, so the figures add their costs up.

use super::scheduler::wait_for_nodes;
use super::{Error, client, ms, peak_rss_mib, rss_mib, start_server};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct DeploymentBenchOptions {
    pub nodes: usize,
    pub replicas: i32,
}

const NAME: &str = "bench";

fn deployment(replicas: i32) -> Result<Deployment, Error> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {"containers": [{"name": "web", "image": "web:1", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            },
        },
    }))?)
}

/// Whether the Deployment's status says the rollout of its current generation
/// is complete, by the rule `kubectl rollout status` applies.
fn rolled_out(deployment: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (&deployment.spec, &deployment.status) else { return false };
    let wanted = spec.replicas.unwrap_or(1);
    status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas == Some(wanted)
        && status.replicas == Some(wanted)
        && status.available_replicas == Some(wanted)
}

/// Waits, from `resource_version`, until `count` pods running `image` have been
/// seen Running; returns when.
async fn all_running(pods: Api<Pod>, resource_version: String, image: String, count: usize) -> Result<Instant, Error> {
    let params = WatchParams::default().labels(&format!("app={NAME}")).timeout(290);
    let mut stream = pods.watch(&params, &resource_version).await?.boxed();
    let mut running = HashSet::new();
    while running.len() < count {
        let pod = match stream.next().await {
            Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => pod,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(format!("the pod watch ended with {} of {count} pods Running", running.len()).into()),
        };
        let runs_image = pod.spec.as_ref().is_some_and(|s| s.containers.iter().any(|c| c.image.as_deref() == Some(image.as_str())));
        let is_running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if runs_image && is_running {
            running.insert(pod.metadata.name.unwrap_or_default());
        }
    }
    Ok(Instant::now())
}

/// Waits, from `resource_version`, until the Deployment reports its rollout complete; returns when.
async fn until_rolled_out(deployments: Api<Deployment>, resource_version: String) -> Result<Instant, Error> {
    let params = WatchParams::default().fields(&format!("metadata.name={NAME}")).timeout(290);
    let mut stream = deployments.watch(&params, &resource_version).await?.boxed();
    loop {
        match stream.next().await {
            Some(Ok(WatchEvent::Added(d) | WatchEvent::Modified(d))) if rolled_out(&d) => return Ok(Instant::now()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the Deployment watch ended before the rollout completed".into()),
        }
    }
}

/// Starts both waits at the current revision, runs `change`, and returns how
/// long until all pods of `image` ran and until the rollout completed.
async fn time_rollout<F: Future<Output = Result<(), Error>>>(client: &kube::Client, image: &str, replicas: i32, change: F) -> Result<(Duration, Duration), Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let resource_version = pods.list_metadata(&ListParams::default().limit(1)).await?.metadata.resource_version.unwrap_or_default();
    let running = tokio::spawn(all_running(pods, resource_version.clone(), image.to_owned(), replicas as usize));
    let complete = tokio::spawn(until_rolled_out(deployments, resource_version));
    let started = Instant::now();
    change.await?;
    let limit = Duration::from_secs(120 + replicas as u64 / 10);
    let running = tokio::time::timeout(limit, running).await.map_err(|_| format!("not every pod of {image} ran within {limit:?}"))???;
    let complete = tokio::time::timeout(limit, complete).await.map_err(|_| format!("the rollout to {image} did not complete within {limit:?}"))???;
    Ok((running - started, complete - started))
}

pub async fn run(options: DeploymentBenchOptions) -> Result<(), Error> {
    let DeploymentBenchOptions { nodes, replicas } = options;
    println!("rk bench deployment: a Deployment of {replicas} replicas (100m CPU, 64Mi each) on {nodes} fake nodes");
    let (server, _) = start_server(&["--disable-agent", "--fake-nodes", &nodes.to_string()])?;
    let pid = server.child.id();
    let client = client(&server.kubeconfig).await?;
    wait_for_nodes(&client, nodes).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    let create = async {
        deployments.create(&PostParams::default(), &deployment(replicas)?).await?;
        Ok(())
    };
    let (running, complete) = time_rollout(&client, "web:1", replicas, create).await?;
    println!("{:<52}{}", format!("create -> all {replicas} pods Running:"), ms(running));
    println!("{:<52}{}", format!("create -> rollout complete ({replicas}/{replicas} available):"), ms(complete));
    println!("{:<52}{:.1} MiB", "server RSS after the rollout:", rss_mib(pid));

    let set_image = async {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}}});
        deployments.patch(NAME, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
        Ok(())
    };
    let (running, complete) = time_rollout(&client, "web:2", replicas, set_image).await?;
    println!("{:<52}{}", format!("set image -> all {replicas} new pods Running:"), ms(running));
    println!("{:<52}{}", "set image -> rolling update complete:", ms(complete));
    println!("{:<52}{:.1} MiB / {:.1} MiB", "server RSS after the update / peak:", rss_mib(pid), peak_rss_mib(pid));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_is_complete_only_when_every_count_matches_the_current_generation() {
        let mut d = deployment(3).unwrap();
        d.metadata.generation = Some(2);
        let status = |generation, updated, replicas, available| {
            serde_json::from_value(json!({"observedGeneration": generation, "updatedReplicas": updated, "replicas": replicas, "availableReplicas": available})).unwrap()
        };
        d.status = Some(status(2, 3, 3, 3));
        assert!(rolled_out(&d));
        for incomplete in [status(1, 3, 3, 3), status(2, 2, 3, 3), status(2, 3, 4, 3), status(2, 3, 3, 2)] {
            d.status = Some(incomplete);
            assert!(!rolled_out(&d));
        }
    }
}

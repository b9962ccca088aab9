//! The controller manager: control loops that keep the actual state of the
//! cluster equal to the desired state, each on the shared informers and the
//! work-queue runner of `crate::runtime`, talking to the API only.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod discovery;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod ownership;
pub mod podgc;
pub mod pods;
pub mod replicaset;
pub mod resourcequota;
pub mod rollout;
pub mod schedule;
pub mod serviceaccounts;
pub mod statefulset;
pub mod taint_eviction;

use crate::runtime::{Informers, Recorder};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tunables of the controller manager.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Workers per controller.
    pub workers: usize,
    /// How long a node may go without renewing its Lease before it is NotReady.
    pub node_monitor_grace_period: Duration,
    /// Default toleration of pods for an unreachable or not-ready node.
    pub pod_eviction_timeout: Duration,
    /// The pod network; each node gets a /24 of it.
    pub cluster_cidr: ipnet::Ipv4Net,
    /// How often each HorizontalPodAutoscaler is evaluated.
    pub hpa_sync_period: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            workers: 4,
            node_monitor_grace_period: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            cluster_cidr: "10.42.0.0/16".parse().expect("valid CIDR"),
            hpa_sync_period: Duration::from_secs(15),
        }
    }
}

/// What every controller gets.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub informers: Arc<Informers>,
    pub options: ControllerOptions,
    pub shutdown: CancellationToken,
    /// The cluster CA (PEM) that pods are given to trust the API.
    pub cluster_ca: String,
}

impl Context {
    pub fn recorder(&self, component: &str) -> Recorder {
        Recorder::new(self.client.clone(), component, None)
    }
}

/// Starts every controller; they run until `ctx.shutdown`.
pub fn start(ctx: &Context, tasks: &mut tokio::task::JoinSet<()>) {
    tasks.spawn(replicaset::run::<k8s_openapi::api::apps::v1::ReplicaSet>(ctx.clone()));
    tasks.spawn(replicaset::run::<k8s_openapi::api::core::v1::ReplicationController>(ctx.clone()));
    tasks.spawn(endpoints::run(ctx.clone()));
    tasks.spawn(serviceaccounts::run(ctx.clone()));
    tasks.spawn(job::run(ctx.clone()));
    tasks.spawn(cronjob::run(ctx.clone()));
    tasks.spawn(nodeipam::run(ctx.clone()));
    tasks.spawn(hpa::run(ctx.clone()));
    tasks.spawn(deployment::run(ctx.clone()));
    tasks.spawn(daemonset::run(ctx.clone()));
    tasks.spawn(statefulset::run(ctx.clone()));
    tasks.spawn(namespace::run(ctx.clone()));
    tasks.spawn(gc::run(ctx.clone()));
    tasks.spawn(nodelifecycle::run(ctx.clone()));
    tasks.spawn(taint_eviction::run(ctx.clone()));
    tasks.spawn(podgc::run(ctx.clone()));
    tasks.spawn(resourcequota::run(ctx.clone()));
}

//! The controller manager: control loops that keep the actual state of the
//! cluster equal to the desired state, each on the shared informers and the
//! work-queue runner of `crate::runtime`, talking to the API only.

pub mod discovery;
pub mod gc;
pub mod namespace;
pub mod nodelifecycle;
pub mod podgc;
pub mod replicaset;
pub mod resourcequota;
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
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self { workers: 4, node_monitor_grace_period: Duration::from_secs(40), pod_eviction_timeout: Duration::from_secs(300) }
    }
}

/// What every controller gets.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub informers: Arc<Informers>,
    pub options: ControllerOptions,
    pub shutdown: CancellationToken,
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
    tasks.spawn(namespace::run(ctx.clone()));
    tasks.spawn(gc::run(ctx.clone()));
    tasks.spawn(nodelifecycle::run(ctx.clone()));
    tasks.spawn(taint_eviction::run(ctx.clone()));
    tasks.spawn(podgc::run(ctx.clone()));
    tasks.spawn(resourcequota::run(ctx.clone()));
}

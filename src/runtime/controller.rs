//! A control loop: informers feed keys into a work queue; N workers reconcile
//! one key at a time, level-triggered (from the cached state, never from the
//! event), requeueing on failure with back-off.

use super::informer::{Change, Informer, key_of};
use super::queue::WorkQueue;
use async_trait::async_trait;
use kube::Resource;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What a reconcile asks for next.
pub enum Next {
    /// Nothing until something changes.
    Done,
    /// Look again after this long even if nothing changes.
    After(Duration),
}

/// The logic of one controller: bring the object named by `key` to its desired state.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    async fn reconcile(&self, key: &str) -> Result<Next, Error>;
}

/// A controller being wired: its queue and the informers that feed it.
pub struct Controller {
    name: &'static str,
    queue: Arc<WorkQueue>,
    workers: usize,
    /// Completes when every informer feeding the controller has its first list.
    synced: Vec<futures::future::BoxFuture<'static, ()>>,
}

impl Controller {
    pub fn new(name: &'static str, workers: usize) -> Self {
        Self { name, queue: WorkQueue::new(), workers: workers.max(1), synced: Vec::new() }
    }

    pub fn queue(&self) -> Arc<WorkQueue> {
        self.queue.clone()
    }

    /// Queues the keys `to_keys` maps each change of `informer` to.
    pub fn watch<K, F>(mut self, informer: &Informer<K>, to_keys: F) -> Self
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        F: Fn(&Change<K>) -> Vec<String> + Send + 'static,
    {
        let mut changes = informer.subscribe();
        let synced = informer.clone();
        self.synced.push(Box::pin(async move { synced.wait_synced().await }));
        let queue = self.queue.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                for key in to_keys(&change) {
                    queue.add(key);
                }
            }
        });
        self
    }

    /// Queues every change of the controller's own kind by its own key.
    pub fn owns_kind<K>(self, informer: &Informer<K>) -> Self
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.watch(informer, |c| vec![key_of(c.object().as_ref())])
    }

    /// Runs the workers until `shutdown`, once every informer has synced: a
    /// reconcile must never act on a cache that has not seen the world yet (an
    /// object whose owner is merely not cached yet would look orphaned).
    pub async fn run(self, reconciler: Arc<dyn Reconciler>, shutdown: CancellationToken) {
        tokio::select! {
            _ = futures::future::join_all(self.synced) => {}
            _ = shutdown.cancelled() => return,
        }
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.workers {
            let (queue, reconciler, name) = (self.queue.clone(), reconciler.clone(), self.name);
            workers.spawn(async move {
                while let Some(key) = queue.next().await {
                    match reconciler.reconcile(&key).await {
                        Ok(Next::Done) => queue.forget(&key),
                        Ok(Next::After(delay)) => {
                            queue.forget(&key);
                            queue.add_after(key.clone(), delay);
                        }
                        Err(e) => {
                            tracing::debug!(controller = name, key = %key, error = %e, "reconcile failed; retrying");
                            queue.add_rate_limited(key.clone());
                        }
                    }
                    queue.done(&key);
                }
            });
        }
        shutdown.cancelled().await;
        self.queue.shut_down();
        while workers.join_next().await.is_some() {}
    }
}

/// The key of the controlling owner of kind `kind`, if the object has one.
pub fn controller_key<K: Resource>(obj: &K, kind: &str) -> Option<String> {
    let meta = obj.meta();
    let owner = meta.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true) && o.kind == kind)?;
    Some(match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", owner.name),
        _ => owner.name.clone(),
    })
}

/// Maps a change of a child to its controlling owner's key, before and after
/// (an ownership change must wake both owners).
pub fn owner_keys<K: Resource>(change: &Change<K>, kind: &str) -> Vec<String> {
    let mut keys = Vec::new();
    match change {
        Change::Applied { old, new } => {
            keys.extend(controller_key(new.as_ref(), kind));
            if let Some(old) = old {
                keys.extend(controller_key(old.as_ref(), kind).filter(|k| !keys.contains(k)));
            }
        }
        Change::Deleted(old) => keys.extend(controller_key(old.as_ref(), kind)),
    }
    keys
}

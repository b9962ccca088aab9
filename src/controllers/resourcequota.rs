//! ResourceQuota controller: keeps each quota's `status.hard` equal to its
//! `spec.hard` and its `status.used` equal to what the namespace really uses,
//! as upstream's resource quota controller does.
//!
//! Creates are charged by quota admission as they happen; this controller
//! recalculates when a quota's spec changes, when usage goes down (an object
//! deleted, a pod finished, a service changing type) and every five minutes,
//! from the informer caches: pods and services typed, every other counted kind
//! (`configmaps`, `count/deployments.apps`, …) through a metadata informer
//! started when a quota first names it.

use super::Context;
use super::discovery::Discovery;
use crate::api::quantity::Quantity;
use crate::api::quota::{self, ResourceList};
use crate::runtime::{Change, Controller, Error, Informer, Informers, Next, Reconciler, WorkQueue, key_of, split_key};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus, Service};
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COMPONENT: &str = "resourcequota-controller";
/// Full recalculation period (upstream's --resource-quota-sync-period).
const RESYNC: Duration = Duration::from_secs(300);

pub async fn run(ctx: Context) {
    let quotas = ctx.informers.get::<ResourceQuota>();
    let pods = ctx.informers.get::<Pod>();
    let services = ctx.informers.get::<Service>();
    let (by_pod, by_service) = (quotas.clone(), quotas.clone());
    let controller = Controller::new(COMPONENT, ctx.options.workers)
        .watch(&quotas, |change: &Change<ResourceQuota>| match change {
            // Status changes are this controller's and admission's own doing.
            Change::Applied { old: Some(old), new } if old.spec == new.spec => vec![],
            Change::Applied { new, .. } => vec![key_of(new.as_ref())],
            Change::Deleted(_) => vec![],
        })
        .watch(&pods, move |change: &Change<Pod>| {
            let now = jiff::Timestamp::now();
            let released = match change {
                Change::Applied { old: Some(old), new } => quota::pod_counts(old, now) && !quota::pod_counts(new, now),
                Change::Applied { old: None, .. } => false,
                Change::Deleted(_) => true,
            };
            if released { quotas_in(&by_pod, &change.object().namespace().unwrap_or_default()) } else { vec![] }
        })
        .watch(&services, move |change: &Change<Service>| {
            let type_of = |s: &Service| s.spec.as_ref().and_then(|s| s.type_.clone());
            let released = match change {
                Change::Applied { old: Some(old), new } => type_of(old) != type_of(new),
                Change::Applied { old: None, .. } => false,
                Change::Deleted(_) => true,
            };
            if released { quotas_in(&by_service, &change.object().namespace().unwrap_or_default()) } else { vec![] }
        });
    let reconciler = Arc::new(QuotaController {
        quotas,
        pods,
        services,
        informers: ctx.informers.clone(),
        client: ctx.client.clone(),
        queue: controller.queue(),
        counted: Mutex::new(Counted::default()),
    });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

fn quotas_in(quotas: &Informer<ResourceQuota>, namespace: &str) -> Vec<String> {
    quotas.list_namespace(namespace).iter().map(|q| key_of(q.as_ref())).collect()
}

/// The kinds counted through metadata informers.
#[derive(Default)]
struct Counted {
    /// `group/plural` → its informer, for kinds served.
    informers: std::collections::HashMap<String, crate::runtime::MetadataInformer>,
    /// Kinds looked up and not served.
    unserved: HashSet<String>,
}

struct QuotaController {
    quotas: Informer<ResourceQuota>,
    pods: Informer<Pod>,
    services: Informer<Service>,
    informers: Arc<Informers>,
    client: kube::Client,
    queue: Arc<WorkQueue>,
    counted: Mutex<Counted>,
}

#[async_trait]
impl Reconciler for QuotaController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(rq) = self.quotas.get(key) else { return Ok(Next::Done) };
        let (namespace, _) = split_key(key);
        let hard = quota::parse_list(rq.spec.as_ref().and_then(|s| s.hard.as_ref()));
        let used = self.usage(&rq, namespace, &hard).await?;
        let status = rq.status.clone().unwrap_or_default();
        if quota::parse_list(status.hard.as_ref()) == hard && quota::parse_list(status.used.as_ref()) == used {
            return Ok(Next::After(RESYNC));
        }
        let mut updated = (*rq).clone();
        updated.status = Some(ResourceQuotaStatus { hard: Some(quota::to_k8s(&hard)), used: Some(quota::to_k8s(&used)) });
        let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), namespace);
        // The resourceVersion guards against overwriting a charge admission just made.
        api.replace_status(&rq.name_any(), &PostParams::default(), &updated).await?;
        Ok(Next::After(RESYNC))
    }
}

impl QuotaController {
    /// What the namespace uses of each resource `hard` limits (those rk can count).
    async fn usage(&self, rq: &ResourceQuota, namespace: &str, hard: &ResourceList) -> Result<ResourceList, Error> {
        let now = jiff::Timestamp::now();
        let mut kinds: Vec<(String, String)> = hard.keys().filter_map(|n| quota::kind_of(n)).collect();
        kinds.sort();
        kinds.dedup();
        let mut total = ResourceList::new();
        let mut tracked: HashSet<&String> = HashSet::new();
        for (group, plural) in &kinds {
            let names = hard.keys().filter(|n| quota::counts_toward(group, plural, n));
            let usage = match (group.as_str(), plural.as_str()) {
                ("", "pods") => self
                    .pods
                    .list_namespace(namespace)
                    .iter()
                    .filter(|p| quota::quota_matches(rq, "", "pods", Some(p)))
                    .fold(ResourceList::new(), |sum, p| quota::add(&sum, &quota::pod_usage(p, now))),
                ("", "services") => self
                    .services
                    .list_namespace(namespace)
                    .iter()
                    .filter(|_| quota::quota_matches(rq, "", "services", None))
                    .fold(ResourceList::new(), |sum, s| quota::add(&sum, &quota::service_usage(s))),
                _ => match self.counter(group, plural).await {
                    Some(informer) if quota::quota_matches(rq, group, plural, None) => {
                        let count = informer.list_namespace(namespace).len() as i64;
                        quota::count_usage(group, plural).into_keys().map(|n| (n, Quantity::count(count))).collect()
                    }
                    Some(_) => ResourceList::new(),
                    // Claims are always accounted (as upstream), even while rk serves none.
                    None if plural == "persistentvolumeclaims" && group.is_empty() => ResourceList::new(),
                    None => continue,
                },
            };
            for name in names {
                tracked.insert(name);
                total.entry(name.clone()).or_insert_with(|| usage.get(name).copied().unwrap_or_else(Quantity::zero));
            }
        }
        total.retain(|name, _| tracked.contains(name));
        Ok(total)
    }

    /// The metadata informer counting `group`/`plural`, started (and synced)
    /// on first use; `None` when the API does not serve that kind.
    async fn counter(&self, group: &str, plural: &str) -> Option<crate::runtime::MetadataInformer> {
        let id = format!("{group}/{plural}");
        let known = {
            let counted = self.counted.lock().expect("counted lock");
            if counted.unserved.contains(&id) {
                return None;
            }
            counted.informers.get(&id).cloned()
        };
        let informer = match known {
            Some(i) => i,
            None => {
                let discovered = Discovery::run(&self.client).await.ok()?;
                let Some(d) = discovered.by_plural(group, plural).filter(|d| d.namespaced && d.supports(&["list", "watch"])) else {
                    self.counted.lock().expect("counted lock").unserved.insert(id);
                    return None;
                };
                let informer = self.informers.metadata(&d.resource);
                // Deletions lower usage: recalculate the namespace's quotas.
                let (mut changes, quotas, queue) = (informer.subscribe(), self.quotas.clone(), self.queue.clone());
                tokio::spawn(async move {
                    while let Some(change) = changes.recv().await {
                        if let Change::Deleted(gone) = change {
                            for key in quotas_in(&quotas, &gone.namespace().unwrap_or_default()) {
                                queue.add(key);
                            }
                        }
                    }
                });
                self.counted.lock().expect("counted lock").informers.insert(id, informer.clone());
                informer
            }
        };
        informer.wait_synced().await;
        Some(informer)
    }
}

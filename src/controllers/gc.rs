//! The garbage collector: deletes objects whose owners are gone and carries
//! out foreground and orphan deletion, for every kind the API serves, as
//! upstream's pkg/controller/garbagecollector does.
//!
//! Discovery lists the deletable resources; a metadata informer per resource
//! feeds one graph builder task that keeps the owner → dependents graph
//! ([`graph`]). Two work queues act on it:
//! - "attempt to delete": an object whose owners may all be gone is deleted
//!   (each owner is checked with a GET and its uid compared; an object with a
//!   live owner is never deleted, and deletes carry uid and resourceVersion
//!   preconditions); an owner deleted in the foreground loses its
//!   `foregroundDeletion` finalizer once no blocking dependent is left;
//! - "attempt to orphan": an owner deleted with the `orphan` finalizer has its
//!   references removed from its dependents, then the finalizer.

mod graph;

use super::Context;
use super::discovery::{Discovered, Discovery, group_of};
use crate::runtime::{Change, Controller, Error, MetadataInformer, Next, Reconciler, WorkQueue};
use async_trait::async_trait;
use graph::{FOREGROUND, Graph, Identity, ORPHAN, Work};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often discovery is read again, to watch resources served later.
const RESYNC: Duration = Duration::from_secs(30);
/// Owners known to be gone, remembered to spare GETs (then forgotten wholesale).
const ABSENT_OWNERS: usize = 4096;
/// How long a worker waits for an informer to show an object the API has.
const UNOBSERVED_RETRY: Duration = Duration::from_secs(1);
/// Kinds the collector ignores, as upstream does: events have no owners worth tracking.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

type Metadata = PartialObjectMeta<DynamicObject>;

/// A change for the graph builder.
enum GraphEvent {
    Changed { api_version: String, kind: String, change: Change<Metadata> },
    /// The API does not have the object a virtual node names.
    Absent(Identity),
}

struct Shared {
    client: kube::Client,
    graph: RwLock<Graph>,
    /// Deletable resources by `group/kind`.
    resources: RwLock<HashMap<String, Discovered>>,
    /// Owners known not to exist, by their identity.
    absent: Mutex<HashSet<Identity>>,
    events: mpsc::UnboundedSender<GraphEvent>,
}

pub async fn run(ctx: Context) {
    let (events, changes) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        graph: RwLock::new(Graph::default()),
        resources: RwLock::new(HashMap::new()),
        absent: Mutex::new(HashSet::new()),
        events,
    });
    let deleter = Controller::new("garbage-collector", ctx.options.workers);
    let orphaner = Controller::new("garbage-collector-orphaner", ctx.options.workers);
    tokio::spawn(build_graph(shared.clone(), changes, deleter.queue(), orphaner.queue()));
    let mut watched = HashSet::new();
    // Acting before every informer has listed would only cost needless GETs.
    for informer in watch_new_resources(&ctx, &shared, &mut watched).await {
        informer.wait_synced().await;
    }
    tracing::info!(objects = shared.graph.read().expect("graph lock").len(), "garbage collector synced");
    {
        let (ctx, shared) = (ctx.clone(), shared.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RESYNC) => {}
                }
                watch_new_resources(&ctx, &shared, &mut watched).await;
            }
        });
    }
    let orphans = tokio::spawn(orphaner.run(Arc::new(Orphaner(shared.clone())), ctx.shutdown.clone()));
    let queue = deleter.queue();
    deleter.run(Arc::new(Deleter { gc: shared, queue }), ctx.shutdown.clone()).await;
    let _ = orphans.await;
}

/// Discovers the deletable resources and starts forwarding the changes of
/// those not watched yet; returns their informers.
async fn watch_new_resources(ctx: &Context, shared: &Arc<Shared>, watched: &mut HashSet<String>) -> Vec<MetadataInformer> {
    let discovery = match Discovery::run(&shared.client).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "garbage collector: discovery failed");
            return Vec::new();
        }
    };
    if let Some(failure) = discovery.failure() {
        tracing::warn!(failure, "garbage collector: partial discovery");
    }
    let deletable: Vec<Discovered> = discovery
        .resources
        .into_iter()
        .filter(|d| d.supports(&["delete", "list", "watch"]))
        .filter(|d| !IGNORED.contains(&(d.resource.group.as_str(), d.resource.plural.as_str())))
        .collect();
    shared.resources.write().expect("resources lock").extend(deletable.iter().map(|d| (format!("{}/{}", d.resource.group, d.resource.kind), d.clone())));
    let mut started = Vec::new();
    for d in deletable {
        if !watched.insert(d.group_resource()) {
            continue;
        }
        let informer = ctx.informers.metadata(&d.resource);
        let mut changes = informer.subscribe();
        let events = shared.events.clone();
        let (api_version, kind) = (d.resource.api_version.clone(), d.resource.kind.clone());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                if events.send(GraphEvent::Changed { api_version: api_version.clone(), kind: kind.clone(), change }).is_err() {
                    return;
                }
            }
        });
        started.push(informer);
    }
    started
}

/// The single writer of the graph: applies changes in order and queues the work they cause.
async fn build_graph(shared: Arc<Shared>, mut changes: mpsc::UnboundedReceiver<GraphEvent>, deletes: Arc<WorkQueue>, orphans: Arc<WorkQueue>) {
    while let Some(event) = changes.recv().await {
        let work = {
            let mut graph = shared.graph.write().expect("graph lock");
            match event {
                GraphEvent::Changed { api_version, kind, change: Change::Applied { old, new } } => {
                    graph.observe(Identity::of(&api_version, &kind, &new.metadata), &new.metadata, old.as_ref().map(|o| &o.metadata))
                }
                GraphEvent::Changed { api_version, kind, change: Change::Deleted(old) } => {
                    let identity = Identity::of(&api_version, &kind, &old.metadata);
                    shared.remember_absent(identity.clone());
                    graph.remove(&identity.uid)
                }
                GraphEvent::Absent(identity) => {
                    shared.remember_absent(identity.clone());
                    graph.remove_virtual(&identity)
                }
            }
        };
        for w in work {
            match w {
                Work::Delete(uid) => deletes.add(uid),
                Work::Orphan(uid) => orphans.add(uid),
            }
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// How an object's owner references stand.
#[derive(Default)]
struct Owners {
    /// Exist and are not waiting for their dependents.
    solid: Vec<OwnerReference>,
    /// Do not exist (not found, or another object under that name).
    dangling: Vec<OwnerReference>,
    /// Being deleted in the foreground.
    waiting: Vec<OwnerReference>,
    /// A namespaced owner named by a cluster-scoped object: never resolvable,
    /// so the object is left alone, as upstream does.
    unresolvable: bool,
}

impl Shared {
    fn remember_absent(&self, identity: Identity) {
        let mut absent = self.absent.lock().expect("absent lock");
        if absent.len() >= ABSENT_OWNERS {
            absent.clear();
        }
        absent.insert(identity);
    }

    fn resource(&self, api_version: &str, kind: &str) -> Result<Discovered, Error> {
        self.resources
            .read()
            .expect("resources lock")
            .get(&format!("{}/{kind}", group_of(api_version)))
            .cloned()
            .ok_or_else(|| format!("no served resource for kind {kind} in {api_version}").into())
    }

    /// The API for the object `identity` names; `None` when a cluster-scoped
    /// object names a namespaced owner, a reference that can never resolve.
    fn api(&self, identity: &Identity) -> Result<Option<Api<DynamicObject>>, Error> {
        let d = self.resource(&identity.api_version, &identity.kind)?;
        Ok(match (d.namespaced, identity.namespace.is_empty()) {
            (false, _) => Some(Api::all_with(self.client.clone(), &d.resource)),
            (true, false) => Some(Api::namespaced_with(self.client.clone(), &identity.namespace, &d.resource)),
            (true, true) => None,
        })
    }

    /// The object's current metadata, if an object with its uid exists.
    async fn latest(&self, identity: &Identity) -> Result<Option<Metadata>, Error> {
        let Some(api) = self.api(identity)? else { return Ok(None) };
        match api.get_metadata_opt(&identity.name).await? {
            Some(m) if m.metadata.uid.as_deref() == Some(identity.uid.as_str()) => Ok(Some(m)),
            _ => Ok(None),
        }
    }

    /// Sorts `dependent`'s owner references by whether their owners exist, with a GET each.
    async fn classify(&self, dependent: &Identity, references: &[OwnerReference]) -> Result<Owners, Error> {
        let mut owners = Owners::default();
        for reference in references {
            let owner_namespaced = self.resource(&reference.api_version, &reference.kind)?.namespaced;
            if owner_namespaced && dependent.namespace.is_empty() {
                owners.unresolvable = true;
                continue;
            }
            let identity = Identity::owner(reference, if owner_namespaced { &dependent.namespace } else { "" });
            if self.absent.lock().expect("absent lock").contains(&identity) {
                owners.dangling.push(reference.clone());
                continue;
            }
            match self.latest(&identity).await? {
                None => {
                    self.remember_absent(identity);
                    owners.dangling.push(reference.clone());
                }
                Some(owner) => {
                    let m = &owner.metadata;
                    let waiting = m.deletion_timestamp.is_some() && m.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == FOREGROUND));
                    if waiting { owners.waiting.push(reference.clone()) } else { owners.solid.push(reference.clone()) }
                }
            }
        }
        Ok(owners)
    }

    /// Replaces an object's owner references (or finalizers) with a merge
    /// patch guarded by its resourceVersion.
    async fn patch_metadata(&self, identity: &Identity, latest: &Metadata, field: &str, value: serde_json::Value) -> Result<(), Error> {
        let Some(api) = self.api(identity)? else { return Ok(()) };
        let value = if value.as_array().is_some_and(Vec::is_empty) { serde_json::Value::Null } else { value };
        let patch = json!({ "metadata": { field: value, "resourceVersion": latest.metadata.resource_version } });
        match api.patch_metadata(&identity.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_finalizer(&self, identity: &Identity, finalizer: &str) -> Result<(), Error> {
        let Some(latest) = self.latest(identity).await? else { return Ok(()) };
        let finalizers = latest.metadata.finalizers.clone().unwrap_or_default();
        if !finalizers.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        let kept: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
        self.patch_metadata(identity, &latest, "finalizers", json!(kept)).await
    }

    /// Deletes the object as it was read, propagating as `policy` says.
    async fn delete(&self, identity: &Identity, latest: &Metadata, policy: PropagationPolicy) -> Result<(), Error> {
        let Some(api) = self.api(identity)? else { return Ok(()) };
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions { uid: Some(identity.uid.clone()), resource_version: latest.metadata.resource_version.clone() }),
            ..Default::default()
        };
        match api.delete(&identity.name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn has_finalizer(m: &Metadata, finalizer: &str) -> bool {
    m.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == finalizer))
}

fn uids(references: &[OwnerReference]) -> HashSet<&str> {
    references.iter().map(|r| r.uid.as_str()).collect()
}

/// Works the "attempt to delete" queue (keys are uids).
struct Deleter {
    gc: Arc<Shared>,
    queue: Arc<WorkQueue>,
}

#[async_trait]
impl Reconciler for Deleter {
    async fn reconcile(&self, uid: &str) -> Result<Next, Error> {
        let gc = &self.gc;
        let Some((identity, observed, being_deleted, deleting_dependents, has_dependents)) = gc.graph.read().expect("graph lock").node(uid).map(|n| {
            (n.identity.clone(), n.observed, n.being_deleted, n.deleting_dependents, !n.dependents.is_empty())
        }) else {
            return Ok(Next::Done);
        };
        // Being deleted is a one-way trip; its dependents are handled once it is gone.
        if being_deleted && !deleting_dependents {
            return Ok(Next::Done);
        }
        let Some(latest) = gc.latest(&identity).await? else {
            let _ = gc.events.send(GraphEvent::Absent(identity));
            return Ok(Next::Done);
        };
        let unobserved = if observed { Next::Done } else { Next::After(UNOBSERVED_RETRY) };
        if deleting_dependents {
            self.finish_foreground(&identity).await?;
            return Ok(Next::Done);
        }
        let references = latest.metadata.owner_references.clone().unwrap_or_default();
        if references.is_empty() {
            return Ok(unobserved);
        }
        let owners = gc.classify(&identity, &references).await?;
        if owners.unresolvable {
            tracing::debug!(kind = %identity.kind, name = %identity.name, "a cluster-scoped object names a namespaced owner; left alone");
            return Ok(Next::Done);
        }
        if !owners.solid.is_empty() {
            // A live owner keeps the object; references to gone or finishing owners are dropped.
            let drop = uids(&owners.dangling).union(&uids(&owners.waiting)).copied().collect::<HashSet<&str>>();
            if !drop.is_empty() {
                let kept: Vec<&OwnerReference> = references.iter().filter(|r| !drop.contains(r.uid.as_str())).collect();
                gc.patch_metadata(&identity, &latest, "ownerReferences", json!(kept)).await?;
            }
            return Ok(unobserved);
        }
        if !owners.waiting.is_empty() && has_dependents {
            // Owners wait for this object, which has dependents of its own: delete it in
            // the foreground too, unblocking its references first if a dependent waits
            // on it (a cycle would never finish).
            if gc.graph.read().expect("graph lock").has_dependent_deleting_dependents(uid) {
                let unblocked: Vec<OwnerReference> =
                    references.iter().map(|r| OwnerReference { block_owner_deletion: r.block_owner_deletion.map(|_| false), ..r.clone() }).collect();
                gc.patch_metadata(&identity, &latest, "ownerReferences", json!(unblocked)).await?;
                return Ok(Next::After(UNOBSERVED_RETRY));
            }
            gc.delete(&identity, &latest, PropagationPolicy::Foreground).await?;
            return Ok(unobserved);
        }
        let policy = if has_finalizer(&latest, ORPHAN) {
            PropagationPolicy::Orphan
        } else if has_finalizer(&latest, FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::debug!(kind = %identity.kind, namespace = %identity.namespace, name = %identity.name, "garbage collecting: every owner is gone");
        gc.delete(&identity, &latest, policy).await?;
        Ok(unobserved)
    }
}

impl Deleter {
    /// An owner deleted in the foreground: done once no blocking dependent is
    /// left; otherwise make sure the blocking ones are being deleted.
    async fn finish_foreground(&self, owner: &Identity) -> Result<(), Error> {
        let blocking = self.gc.graph.read().expect("graph lock").blocking_dependents(&owner.uid);
        if blocking.is_empty() {
            return self.gc.remove_finalizer(owner, FOREGROUND).await;
        }
        for (uid, deleting_dependents) in blocking {
            if !deleting_dependents {
                self.queue.add(uid);
            }
        }
        Ok(())
    }
}

/// Works the "attempt to orphan" queue (keys are owner uids).
struct Orphaner(Arc<Shared>);

#[async_trait]
impl Reconciler for Orphaner {
    async fn reconcile(&self, uid: &str) -> Result<Next, Error> {
        let gc = &self.0;
        let (owner, dependents) = {
            let graph = gc.graph.read().expect("graph lock");
            let Some(node) = graph.node(uid) else { return Ok(Next::Done) };
            (node.identity.clone(), graph.dependents(uid))
        };
        for dependent in dependents {
            let Some(latest) = gc.latest(&dependent).await? else { continue };
            let references = latest.metadata.owner_references.clone().unwrap_or_default();
            if !references.iter().any(|r| r.uid == uid) {
                continue;
            }
            let kept: Vec<&OwnerReference> = references.iter().filter(|r| r.uid != uid).collect();
            gc.patch_metadata(&dependent, &latest, "ownerReferences", json!(kept)).await?;
        }
        gc.remove_finalizer(&owner, ORPHAN).await?;
        Ok(Next::Done)
    }
}

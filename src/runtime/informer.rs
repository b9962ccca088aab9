//! Informers: one list+watch per resource type (kube-runtime's `watcher` does the
//! listing, watching, resuming and relisting on 410), a local cache, and change
//! notifications with the previous object, fanned out to every subscriber.
//! `Informers` shares them, so each resource is watched once per process: typed
//! ones for the kinds a component knows, metadata-only ones for any kind found
//! by discovery (the garbage collector and quota need those).

use futures::{Stream, StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// `namespace/name`, or `name` for cluster-scoped objects: how caches and work
/// queues name an object.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or("");
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// Splits a key into namespace (empty for cluster-scoped) and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// A change seen by an informer.
pub enum Change<K> {
    /// Created (`old` is None) or updated.
    Applied { old: Option<Arc<K>>, new: Arc<K> },
    Deleted(Arc<K>),
}

impl<K> Change<K> {
    /// The object as it is now (or was, when deleted).
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Applied { new, .. } => new,
            Change::Deleted(old) => old,
        }
    }
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied { old, new } => Change::Applied { old: old.clone(), new: new.clone() },
            Change::Deleted(o) => Change::Deleted(o.clone()),
        }
    }
}

struct Shared<K> {
    cache: RwLock<HashMap<String, Arc<K>>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
}

/// A cached, watched view of one resource type.
pub struct Informer<K> {
    shared: Arc<Shared<K>>,
    synced: watch::Receiver<bool>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), synced: self.synced.clone() }
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching `api` (with `config`'s selectors) until `shutdown`.
    pub fn start(api: Api<K>, config: watcher::Config, shutdown: CancellationToken) -> Self {
        Self::from_stream(K::kind(&()).into_owned(), watcher(api, config), shutdown)
    }
}

/// A metadata-only view of objects of a kind known from discovery.
pub type MetadataInformer = Informer<PartialObjectMeta<DynamicObject>>;

impl<K> Informer<K>
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
{
    /// Caches and fans out the events of a watcher stream until `shutdown`.
    pub fn from_stream(
        kind: String,
        stream: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
        shutdown: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared { cache: RwLock::new(HashMap::new()), subscribers: Mutex::new(Vec::new()) });
        let (synced_tx, synced) = watch::channel(false);
        let task_shared = shared.clone();
        tokio::spawn(async move {
            let mut stream = stream.boxed();
            let mut buffer: Option<HashMap<String, Arc<K>>> = None;
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = stream.next() => event,
                };
                match event {
                    None => return,
                    Some(Err(e)) => {
                        tracing::debug!(kind = %kind, error = %e, "watch failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Some(Ok(watcher::Event::Init)) => buffer = Some(HashMap::new()),
                    Some(Ok(watcher::Event::InitApply(obj))) => {
                        buffer.get_or_insert_with(HashMap::new).insert(key_of(&obj), Arc::new(obj));
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        task_shared.replace_all(buffer.take().unwrap_or_default());
                        let _ = synced_tx.send(true);
                    }
                    Some(Ok(watcher::Event::Apply(obj))) => task_shared.apply(Arc::new(obj)),
                    Some(Ok(watcher::Event::Delete(obj))) => task_shared.delete(&key_of(&obj), Arc::new(obj)),
                }
            }
        });
        Self { shared, synced }
    }

    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.shared.cache.read().expect("cache lock").get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.shared.cache.read().expect("cache lock").values().cloned().collect()
    }

    /// The cached objects that satisfy `keep`.
    pub fn filter(&self, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.shared.cache.read().expect("cache lock").values().filter(|o| keep(o)).cloned().collect()
    }

    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.filter(|o| o.namespace().as_deref() == Some(namespace))
    }

    /// Changes from now on, preceded by an `Applied` for everything cached.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Holding the cache lock orders the snapshot before any later change.
        let cache = self.shared.cache.read().expect("cache lock");
        for obj in cache.values() {
            let _ = tx.send(Change::Applied { old: None, new: obj.clone() });
        }
        self.shared.subscribers.lock().expect("subscribers lock").push(tx);
        rx
    }

    /// Waits until the first list has been cached.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }
}

impl<K: Resource> Shared<K> {
    fn notify(&self, change: Change<K>) {
        self.subscribers.lock().expect("subscribers lock").retain(|s| s.send(change.clone()).is_ok());
    }

    fn apply(&self, new: Arc<K>) {
        let mut cache = self.cache.write().expect("cache lock");
        let old = cache.insert(key_of(new.as_ref()), new.clone());
        self.notify(Change::Applied { old, new });
    }

    fn delete(&self, key: &str, last: Arc<K>) {
        let mut cache = self.cache.write().expect("cache lock");
        cache.remove(key);
        self.notify(Change::Deleted(last));
    }

    /// After a (re)list: the listed state replaces the cache; subscribers hear of
    /// what changed, appeared or vanished meanwhile.
    fn replace_all(&self, listed: HashMap<String, Arc<K>>) {
        let mut cache = self.cache.write().expect("cache lock");
        let previous = std::mem::replace(&mut *cache, listed);
        for (key, new) in cache.iter() {
            let old = previous.get(key).cloned();
            if old.as_ref().is_none_or(|o| o.meta().resource_version != new.meta().resource_version) {
                self.notify(Change::Applied { old, new: new.clone() });
            }
        }
        for (key, old) in previous {
            if !cache.contains_key(&key) {
                self.notify(Change::Deleted(old));
            }
        }
    }
}

/// Shared informers: the first request for a type starts its watch; later ones
/// share the cache.
pub struct Informers {
    client: kube::Client,
    shutdown: CancellationToken,
    started: Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    /// Metadata informers by `group/version/plural`.
    metadata: Mutex<HashMap<String, MetadataInformer>>,
}

impl Informers {
    pub fn new(client: kube::Client, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self { client, shutdown, started: Mutex::new(HashMap::new()), metadata: Mutex::new(HashMap::new()) })
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The all-namespaces informer for `K`.
    pub fn get<K>(&self) -> Informer<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let mut started = self.started.lock().expect("informers lock");
        let entry = started.entry(TypeId::of::<K>()).or_insert_with(|| {
            Box::new(Informer::start(Api::<K>::all(self.client.clone()), watcher::Config::default(), self.shutdown.clone()))
        });
        entry.downcast_ref::<Informer<K>>().expect("informers are stored by their type").clone()
    }

    /// The all-namespaces metadata informer for the kind `resource` (managed
    /// fields dropped: nobody reading metadata needs them, and they are most of it).
    pub fn metadata(&self, resource: &ApiResource) -> MetadataInformer {
        let key = format!("{}/{}/{}", resource.group, resource.version, resource.plural);
        let mut started = self.metadata.lock().expect("informers lock");
        started
            .entry(key)
            .or_insert_with(|| {
                let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), resource);
                let stream = watcher(api, watcher::Config::default())
                    .map_ok(|event| event.modify(|o| o.metadata.managed_fields = None));
                Informer::from_stream(resource.kind.clone(), stream, self.shutdown.clone())
            })
            .clone()
    }
}

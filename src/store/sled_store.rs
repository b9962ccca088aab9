//! The embedded storage engine, on sled.
//!
//! Writes are serialised by one lock held only while the batch is applied in memory
//! (microseconds); durability is shared through [`Committer`]. Lists hold the read
//! side of the same lock so that they see one revision. Older revisions (continued
//! lists, exact reads) are rebuilt from the log, which keeps every event's previous
//! value: MVCC by undo.

use super::codec::{self, Record};
use super::commit::Committer;
use super::watch::WatchStream;
use super::{Event, EventKind, KeyValue, ListPage, ListRequest, Result, Revision, Storage, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much watch history to keep.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Events newer than this are never compacted.
    pub retain_for: Duration,
    /// At least this many of the newest events are never compacted.
    pub retain_events: u64,
    /// How often the compactor runs.
    pub compact_every: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { retain_for: Duration::from_secs(300), retain_events: 10_000, compact_every: Duration::from_secs(60) }
    }
}

pub struct SledStore {
    inner: Arc<Inner>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

pub(super) struct Inner {
    db: sled::Db,
    /// Held for writing while a batch is applied, for reading while a list scans.
    order: RwLock<()>,
    pub(super) committer: Arc<Committer>,
    compacted: AtomicU64,
    options: StoreOptions,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl SledStore {
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            // Durability comes from explicit flushes before acknowledging a write.
            .flush_every_ms(None)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(engine)?;
        let read_counter = |name: &[u8]| -> Result<u64> {
            db.get(name).map_err(engine)?.map_or(Ok(0), |v| codec::decode_u64(&v))
        };
        let revision = read_counter(codec::META_REVISION)?;
        let compacted = read_counter(codec::META_COMPACTED)?;
        let committer = Committer::new(revision);
        let inner = Arc::new(Inner { db, order: RwLock::new(()), committer, compacted: AtomicU64::new(compacted), options });
        let flusher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("store-flusher".into())
                .spawn(move || inner.committer.run(|| inner.db.flush().map(drop).map_err(|e| e.to_string())))
                .map_err(|e| StoreError::Engine(e.to_string()))?
        };
        tracing::info!(path = %path.display(), revision, compacted, "store opened");
        Ok(Self { inner, flusher: Some(flusher) })
    }

    /// Runs the time- and count-based compaction policy forever.
    pub async fn run_compactor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.inner.options.compact_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let inner = self.inner.clone();
            match tokio::task::spawn_blocking(move || inner.compact_by_policy(now_millis())).await {
                Ok(Ok(Some(rev))) => tracing::debug!(revision = rev, "watch log compacted"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "compaction failed"),
                Err(e) => tracing::warn!(error = %e, "compaction task failed"),
            }
        }
    }

    /// Applies the compaction policy as of `now_millis`; returns the new horizon if it moved.
    pub fn compact_now(&self, now_millis: u64) -> Result<Option<Revision>> {
        self.inner.compact_by_policy(now_millis)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.inner.committer.stop();
        if let Some(handle) = self.flusher.take() {
            let _ = handle.join();
        }
    }
}

enum Write {
    Create(Bytes),
    Update(Bytes, Revision),
    Delete(Option<Revision>),
}

impl Inner {
    fn get_current(&self, key: &str) -> Result<Option<KeyValue>> {
        self.db.get(codec::object_key(key)).map_err(engine)?.map(|v| codec::decode_object(key, &v)).transpose()
    }

    /// Applies one write atomically and hands its event to the committer.
    /// Returns the event; the caller waits for durability.
    fn apply(&self, key: &str, write: Write) -> Result<Arc<Event>> {
        let _order = self.order.write().expect("order lock");
        let current = self.get_current(key)?;
        let revision = self.committer.written() + 1;
        let (kind, value) = match (write, &current) {
            (Write::Create(_), Some(_)) => return Err(StoreError::AlreadyExists),
            (Write::Create(v), None) => (EventKind::Created, Some(v)),
            (Write::Update(..) | Write::Delete(_), None) => return Err(StoreError::NotFound),
            (Write::Update(v, expected), Some(cur)) => {
                if cur.mod_revision != expected {
                    return Err(StoreError::Conflict { expected, found: cur.mod_revision });
                }
                (EventKind::Updated, Some(v))
            }
            (Write::Delete(expected), Some(cur)) => {
                if let Some(expected) = expected.filter(|e| *e != cur.mod_revision) {
                    return Err(StoreError::Conflict { expected, found: cur.mod_revision });
                }
                (EventKind::Deleted, None)
            }
        };
        let event = Event { revision, kind, key: key.to_owned(), value, prev: current };
        let mut batch = sled::Batch::default();
        match &event.value {
            Some(v) => batch.insert(codec::object_key(key), codec::encode_object(revision, v)),
            None => batch.remove(codec::object_key(key)),
        }
        let record = Record { event, unix_millis: now_millis() };
        batch.insert(&codec::log_key(revision), codec::encode_record(&record));
        batch.insert(codec::META_REVISION, &codec::encode_u64(revision));
        self.db.apply_batch(batch).map_err(engine)?;
        let event = Arc::new(record.event);
        self.committer.applied(event.clone());
        Ok(event)
    }

    async fn write(&self, key: &str, write: Write) -> Result<Arc<Event>> {
        let event = self.apply(key, write)?;
        self.committer.wait_durable(event.revision).await.map_err(|e| StoreError::Engine(e.to_string()))?;
        Ok(event)
    }

    /// Waits until everything up to `revision` is durable, so a reader never sees a
    /// write that a crash could still take back.
    async fn read_barrier(&self, revision: Revision) -> Result<()> {
        self.committer.wait_durable(revision).await.map_err(|e| StoreError::Engine(e.to_string()))
    }

    /// Reads log entries `from..=to`; fails with `Compacted` if any is gone.
    pub(super) fn read_log(&self, from: Revision, to: Revision) -> Result<Vec<Arc<Event>>> {
        let mut events = Vec::with_capacity((to.saturating_sub(from) + 1).min(1024) as usize);
        let mut expected = from;
        for entry in self.db.range(codec::log_key(from)..=codec::log_key(to)) {
            let (k, v) = entry.map_err(engine)?;
            let revision = codec::revision_from_log_key(&k)?;
            if revision != expected {
                break;
            }
            events.push(Arc::new(codec::decode_record(revision, &v)?.event));
            expected += 1;
        }
        if expected != to + 1 {
            return Err(StoreError::Compacted { requested: from.saturating_sub(1), compacted: self.compacted.load(Ordering::Acquire) });
        }
        Ok(events)
    }

    fn check_not_compacted(&self, revision: Revision) -> Result<()> {
        let compacted = self.compacted.load(Ordering::Acquire);
        if revision < compacted {
            return Err(StoreError::Compacted { requested: revision, compacted });
        }
        Ok(())
    }

    fn list_sync(&self, request: &ListRequest) -> Result<ListPage> {
        let _order = self.order.read().expect("order lock");
        let current = self.committer.written();
        let revision = request.revision.unwrap_or(current);
        if revision > current {
            return Err(StoreError::FutureRevision { requested: revision, current });
        }
        // Values as of `revision` for keys written since: the earliest later event's prev.
        let mut past: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
        if revision < current {
            self.check_not_compacted(revision)?;
            for event in self.read_log(revision + 1, current)? {
                if event.key.starts_with(&request.prefix) && request.after.as_deref().is_none_or(|a| event.key.as_str() > a) {
                    past.entry(event.key.clone()).or_insert_with(|| event.prev.clone());
                }
            }
        }
        let start = codec::object_key(request.after.as_deref().unwrap_or(&request.prefix));
        let prefix = codec::object_key(&request.prefix);
        let mut live = self
            .db
            .range(start..)
            .take_while(|e| e.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(|e| -> Result<KeyValue> {
                let (k, v) = e.map_err(engine)?;
                let key = std::str::from_utf8(&k[1..]).map_err(|_| StoreError::Engine("non-UTF-8 key".into()))?;
                codec::decode_object(key, &v)
            })
            .filter(|kv| kv.as_ref().map_or(true, |kv| request.after.as_deref().is_none_or(|a| kv.key.as_str() > a)))
            .peekable();
        let mut overrides = past.into_iter().peekable();
        let limit = request.limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        // Merge the live keys with the rebuilt past, both in key order.
        loop {
            let next_live = match live.peek() {
                Some(Ok(kv)) => Some(kv.key.clone()),
                Some(Err(_)) => return Err(live.next().expect("peeked").expect_err("peeked error")),
                None => None,
            };
            let next_override = overrides.peek().map(|(k, _)| k.clone());
            let item = match (next_live, next_override) {
                (None, None) => break,
                (Some(l), Some(o)) if o <= l => {
                    if o == l {
                        live.next();
                    }
                    overrides.next().expect("peeked").1
                }
                (Some(_), _) => Some(live.next().expect("peeked")?),
                (None, Some(_)) => overrides.next().expect("peeked").1,
            };
            let Some(item) = item else { continue };
            if items.len() == limit {
                return Ok(ListPage { items, revision, more: true });
            }
            items.push(item);
        }
        Ok(ListPage { items, revision, more: false })
    }

    fn compact_sync(&self, revision: Revision) -> Result<()> {
        if revision <= self.compacted.load(Ordering::Acquire) {
            return Ok(());
        }
        if revision > self.committer.durable().revision {
            return Err(StoreError::FutureRevision { requested: revision, current: self.committer.durable().revision });
        }
        // Publish the new horizon first: a concurrent log reader that misses an entry
        // then reports Compacted rather than a silent gap.
        self.compacted.store(revision, Ordering::Release);
        self.db.insert(codec::META_COMPACTED, &codec::encode_u64(revision)).map_err(engine)?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for key in self.db.range(codec::log_key(0)..=codec::log_key(revision)).keys() {
            batch.remove(key.map_err(engine)?);
            in_batch += 1;
            if in_batch == 10_000 {
                self.db.apply_batch(std::mem::take(&mut batch)).map_err(engine)?;
                in_batch = 0;
            }
        }
        self.db.apply_batch(batch).map_err(engine)?;
        Ok(())
    }

    /// Keeps every event younger than `retain_for` and the newest `retain_events`.
    fn compact_by_policy(&self, now_millis: u64) -> Result<Option<Revision>> {
        let durable = self.committer.durable().revision;
        let by_count = durable.saturating_sub(self.options.retain_events);
        let cutoff = now_millis.saturating_sub(self.options.retain_for.as_millis() as u64);
        let mut by_age = self.compacted.load(Ordering::Acquire);
        for entry in self.db.range(codec::log_key(by_age + 1)..=codec::log_key(by_count)) {
            let (k, v) = entry.map_err(engine)?;
            let millis = v.get(1..9).map(codec::decode_u64).transpose()?.unwrap_or(u64::MAX);
            if millis >= cutoff {
                break;
            }
            by_age = codec::revision_from_log_key(&k)?;
        }
        let horizon = by_age.min(by_count);
        if horizon <= self.compacted.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.compact_sync(horizon)?;
        Ok(Some(horizon))
    }
}

#[async_trait]
impl Storage for SledStore {
    fn revision(&self) -> Revision {
        self.inner.committer.durable().revision
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted.load(Ordering::Acquire)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let kv = self.inner.get_current(key)?;
        if let Some(kv) = &kv {
            self.inner.read_barrier(kv.mod_revision).await?;
        }
        Ok(kv)
    }

    async fn list(&self, request: ListRequest) -> Result<ListPage> {
        let page = self.inner.list_sync(&request)?;
        self.inner.read_barrier(page.revision).await?;
        Ok(page)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision> {
        Ok(self.inner.write(key, Write::Create(value)).await?.revision)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision> {
        Ok(self.inner.write(key, Write::Update(value, expected)).await?.revision)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let event = self.inner.write(key, Write::Delete(expected)).await?;
        let prev = event.prev.clone().ok_or_else(|| StoreError::Engine("deletion without previous value".into()))?;
        Ok((event.revision, prev))
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before checking the horizon so no live event can slip between.
        let live = self.inner.committer.subscribe();
        self.inner.check_not_compacted(after)?;
        Ok(WatchStream::new(self.inner.clone(), prefix.to_owned(), after, live))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.compact_sync(revision))
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))?
    }
}

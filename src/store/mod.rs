//! The store: etcd's role in rk. A key-value space with one global, monotonically
//! increasing revision and a revisioned log of every change that watchers replay.
//!
//! The API server is the only user. It talks to the engine through the narrow
//! [`Storage`] trait so that a second engine (etcd, for several servers) can be added
//! without touching `src/api/`. The embedded engine is [`SledStore`].

mod codec;
mod commit;
mod sled_store;
mod watch;

pub use sled_store::{SledStore, StoreOptions};
pub use watch::WatchStream;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// A position in the store's history. Every successful write gets the next one.
pub type Revision = u64;

/// One stored value and the revision of the write that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub mod_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

/// One entry of the watch log: what changed at `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: Revision,
    pub kind: EventKind,
    pub key: String,
    /// The new value; `None` for deletions.
    pub value: Option<Bytes>,
    /// The value before this write; `None` for creations.
    pub prev: Option<KeyValue>,
}

/// A page of a list, read at one revision.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<KeyValue>,
    /// The revision the page reflects.
    pub revision: Revision,
    /// Whether keys after the last item remain.
    pub more: bool,
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    /// Only keys starting with this prefix.
    pub prefix: String,
    /// Only keys strictly after this one (the continuation point of a previous page).
    pub after: Option<String>,
    /// At most this many items; `None` for all.
    pub limit: Option<usize>,
    /// Read the state as of this revision; `None` for the latest.
    pub revision: Option<Revision>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("key not found")]
    NotFound,
    #[error("key already exists")]
    AlreadyExists,
    /// A compare-and-swap failed: the key was written since the caller read it.
    #[error("revision mismatch: expected {expected}, found {found}")]
    Conflict { expected: Revision, found: Revision },
    /// The requested revision is older than the compacted horizon.
    #[error("required revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    /// The requested revision is newer than the store's current one.
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("storage failure: {0}")]
    Engine(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The contract between the API server and a storage engine.
///
/// Every write is atomic, gets the next revision, appends one [`Event`] to the log
/// and is durable before the call returns. Reads never return a state that could
/// still be lost.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The revision of the newest durable write.
    fn revision(&self) -> Revision;

    /// Events at or below this revision are gone from the log.
    fn compacted_revision(&self) -> Revision;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Lists keys under a prefix, consistent at one revision.
    async fn list(&self, request: ListRequest) -> Result<ListPage>;

    /// Creates `key` if absent; fails with [`StoreError::AlreadyExists`] otherwise.
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision>;

    /// Replaces `key` if its current revision is `expected` (compare-and-swap).
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision>;

    /// Deletes `key`, only if its revision is `expected` when one is given.
    /// Returns the deletion's revision and the deleted value.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)>;

    /// Streams every event under `prefix` with a revision greater than `after`,
    /// in order, with no gap and no duplicate: first from the log, then live.
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Drops log entries at or below `revision`.
    async fn compact(&self, revision: Revision) -> Result<()>;
}

pub type SharedStorage = Arc<dyn Storage>;

#[cfg(test)]
mod tests;

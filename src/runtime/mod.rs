//! The control-loop machinery every component shares (kube-runtime's role,
//! built on its `watcher`): shared informers with local caches, a
//! de-duplicating work queue with per-key back-off, a controller runner with N
//! workers, and an event recorder. The scheduler, the controllers and the node
//! agent are all written against it.

pub mod controller;
pub mod events;
pub mod informer;
pub mod queue;

pub use controller::{Controller, Error, Next, Reconciler, controller_key, owner_keys};
pub use events::{EventType, Recorder, reference};
pub use informer::{Change, Informer, Informers, MetadataInformer, key_of, split_key};
pub use queue::WorkQueue;

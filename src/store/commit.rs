//! Group commit. Writers apply their batch to sled (in memory) and wait here until a
//! flush covers their revision; one flusher thread flushes for everyone who wrote
//! since the last flush, so durability costs one fsync per batch of writers, not per
//! write. Only after a flush are the covered events published to watchers.

use super::Event;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{broadcast, watch};

/// What writers and watchers can observe about durability.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub revision: u64,
    /// Set once a flush failed; the store refuses to acknowledge anything after that.
    pub failure: Option<Arc<str>>,
}

pub struct Committer {
    /// Highest revision applied to the engine (durable or not).
    written: AtomicU64,
    /// Events applied but not yet published, in revision order.
    unpublished: Mutex<VecDeque<Arc<Event>>>,
    work: Mutex<Work>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    events: broadcast::Sender<Arc<Event>>,
}

#[derive(Default)]
struct Work {
    pending: bool,
    stopping: bool,
}

/// Live events are buffered this deep per watcher; a watcher that falls further
/// behind catches up from the log instead.
const BROADCAST_CAPACITY: usize = 4096;

impl Committer {
    pub fn new(revision: u64) -> Arc<Self> {
        Arc::new(Self {
            written: AtomicU64::new(revision),
            unpublished: Mutex::new(VecDeque::new()),
            work: Mutex::new(Work::default()),
            wake: Condvar::new(),
            durable: watch::Sender::new(Durable { revision, failure: None }),
            events: broadcast::Sender::new(BROADCAST_CAPACITY),
        })
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub fn durable(&self) -> Durable {
        self.durable.borrow().clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Records a write that was just applied to the engine. Callers serialise
    /// writes, so events arrive here in revision order.
    pub fn applied(&self, event: Arc<Event>) {
        let revision = event.revision;
        self.unpublished.lock().expect("unpublished lock").push_back(event);
        self.written.store(revision, Ordering::Release);
        self.work.lock().expect("work lock").pending = true;
        self.wake.notify_one();
    }

    /// Waits until `revision` is on disk.
    pub async fn wait_durable(&self, revision: u64) -> Result<(), Arc<str>> {
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| d.revision >= revision || d.failure.is_some())
            .await
            .map_err(|_| Arc::<str>::from("store is shut down"))?;
        match &state.failure {
            Some(f) if state.revision < revision => Err(f.clone()),
            _ => Ok(()),
        }
    }

    /// The flusher loop; runs on its own thread until [`Committer::stop`].
    pub fn run(&self, flush: impl Fn() -> Result<(), String>) {
        loop {
            let stopping = {
                let mut work = self.work.lock().expect("work lock");
                while !work.pending && !work.stopping {
                    work = self.wake.wait(work).expect("work lock");
                }
                work.pending = false;
                work.stopping
            };
            let target = self.written();
            if target > self.durable.borrow().revision {
                if let Err(e) = flush() {
                    tracing::error!(error = %e, "store flush failed; refusing further acknowledgements");
                    self.durable.send_modify(|d| d.failure = Some(e.into()));
                    return;
                }
                self.durable.send_modify(|d| d.revision = target);
                self.publish_up_to(target);
            }
            if stopping && self.written() == self.durable.borrow().revision {
                return;
            }
        }
    }

    fn publish_up_to(&self, revision: u64) {
        let mut unpublished = self.unpublished.lock().expect("unpublished lock");
        while unpublished.front().is_some_and(|e| e.revision <= revision) {
            let event = unpublished.pop_front().expect("front exists");
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(event);
        }
    }

    pub fn stop(&self) {
        self.work.lock().expect("work lock").stopping = true;
        self.wake.notify_one();
    }
}

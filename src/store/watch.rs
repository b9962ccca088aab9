//! A watch: every event under a prefix after a revision, in order, exactly once.
//!
//! The log is the source of truth and the live broadcast only a fast path: whenever
//! the watcher is behind the durable revision (at start, after lagging, after a
//! gap) it reads the missing range from the log, and it drops live events it has
//! already delivered. A watcher too slow for the log's retention gets `Compacted`
//! instead of silently losing events.

use super::sled_store::Inner;
use super::{Event, Result, Revision};
use futures::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::sync::broadcast;

/// How many log entries one catch-up step reads.
const CATCH_UP_CHUNK: u64 = 512;

pub struct WatchStream {
    inner: Pin<Box<dyn Stream<Item = Result<Arc<Event>>> + Send>>,
    progress: Arc<AtomicU64>,
}

struct State {
    store: Arc<Inner>,
    prefix: String,
    /// The next revision this watcher has not yet seen.
    next: Revision,
    live: broadcast::Receiver<Arc<Event>>,
    ready: VecDeque<Arc<Event>>,
    failed: bool,
    /// Every event at or below this revision has been delivered or skipped.
    progress: Arc<AtomicU64>,
}

impl WatchStream {
    pub(super) fn new(store: Arc<Inner>, prefix: String, after: Revision, live: broadcast::Receiver<Arc<Event>>) -> Self {
        let progress = Arc::new(AtomicU64::new(after));
        let state = State { store, prefix, next: after + 1, live, ready: VecDeque::new(), failed: false, progress: progress.clone() };
        let inner = Box::pin(futures::stream::unfold(state, |mut s| async move { s.next_event().await.map(|e| (e, s)) }));
        Self { inner, progress }
    }

    /// The revision up to which this watch has seen everything under its prefix:
    /// what a bookmark may report.
    pub fn progress(&self) -> Revision {
        self.progress.load(Ordering::Acquire)
    }
}

impl State {
    async fn next_event(&mut self) -> Option<Result<Arc<Event>>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(event) = self.ready.pop_front() {
                let through = if self.ready.is_empty() { self.next - 1 } else { event.revision };
                self.progress.store(through, Ordering::Release);
                return Some(Ok(event));
            }
            self.progress.store(self.next - 1, Ordering::Release);
            let durable = self.store.committer.durable().revision;
            if self.next <= durable {
                let to = durable.min(self.next + CATCH_UP_CHUNK - 1);
                match self.store.read_log(self.next, to) {
                    Ok(events) => {
                        self.next = to + 1;
                        self.ready.extend(events.into_iter().filter(|e| e.key.starts_with(&self.prefix)));
                    }
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(event) if event.revision == self.next => {
                    self.next += 1;
                    self.progress.store(event.revision, Ordering::Release);
                    if event.key.starts_with(&self.prefix) {
                        return Some(Ok(event));
                    }
                }
                // Already delivered, or ahead of us: the log fills the gap next turn.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Stream for WatchStream {
    type Item = Result<Arc<Event>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

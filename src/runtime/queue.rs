//! The work queue every control loop drains: keys, not events, so a burst of
//! changes to one object becomes one reconcile (de-duplication); a key is never
//! processed by two workers at once; failures come back after a per-key
//! exponential back-off. The semantics of client-go's rate-limited work queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// First retry delay after a failure, doubling up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    /// Keys waiting to be processed (queued, or re-added while processing).
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    /// When each delayed key is due; one timer per key, the earliest wins.
    delayed: HashMap<String, Instant>,
    shut_down: bool,
}

pub struct WorkQueue {
    state: Mutex<State>,
    ready: Notify,
}

impl WorkQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State::default()), ready: Notify::new() })
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: String) {
        let mut s = self.state.lock().expect("queue lock");
        if s.shut_down || !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`. A key already waiting keeps the earlier of
    /// its two due times, so repeated requests never pile up timers or
    /// reconciles (client-go's delaying queue does the same).
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let due = Instant::now() + delay;
        {
            let mut s = self.state.lock().expect("queue lock");
            match s.delayed.get(&key) {
                Some(waiting) if *waiting <= due => return,
                _ => s.delayed.insert(key.clone(), due),
            };
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let Some(queue) = queue.upgrade() else { return };
            let mut s = queue.state.lock().expect("queue lock");
            // A later request for an earlier time has its own timer.
            if s.delayed.get(&key) == Some(&due) {
                s.delayed.remove(&key);
                drop(s);
                queue.add(key);
            }
        });
    }

    /// Queues `key` after its back-off, which doubles with each failure.
    pub fn add_rate_limited(self: &Arc<Self>, key: String) {
        let failures = {
            let mut s = self.state.lock().expect("queue lock");
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = BASE_BACKOFF.saturating_mul(1u32 << (failures - 1).min(20)).min(MAX_BACKOFF);
        self.add_after(key, delay);
    }

    /// Resets the back-off of `key` after a success.
    pub fn forget(&self, key: &str) {
        self.state.lock().expect("queue lock").failures.remove(key);
    }

    /// The next key to process; `None` once shut down.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if s.shut_down {
                    return None;
                }
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; if it changed meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let mut s = self.state.lock().expect("queue lock");
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.to_owned());
            drop(s);
            self.ready.notify_one();
        }
    }

    pub fn shut_down(&self) {
        self.state.lock().expect("queue lock").shut_down = true;
        self.ready.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_added_many_times_is_processed_once() {
        let q = WorkQueue::new();
        for _ in 0..5 {
            q.add("a".into());
        }
        q.add("b".into());
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await.as_deref(), Some("a"));
        assert_eq!(q.next().await.as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn a_key_changed_while_processing_comes_back_after_done() {
        let q = WorkQueue::new();
        q.add("a".into());
        let key = q.next().await.unwrap();
        q.add("a".into());
        assert!(q.is_empty(), "not handed to a second worker while processing");
        q.done(&key);
        assert_eq!(q.next().await.as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_and_forget_resets() {
        let q = WorkQueue::new();
        let start = tokio::time::Instant::now();
        q.add_rate_limited("a".into());
        q.next().await.unwrap();
        q.done("a");
        q.add_rate_limited("a".into());
        q.next().await.unwrap();
        q.done("a");
        q.add_rate_limited("a".into());
        q.next().await.unwrap();
        assert!(start.elapsed() >= BASE_BACKOFF * 7, "5 + 10 + 20 ms of back-off");
        q.forget("a");
        assert!(q.state.lock().unwrap().failures.is_empty());
    }

    #[tokio::test]
    async fn a_delayed_key_is_queued_once_at_its_earliest_due_time() {
        let q = WorkQueue::new();
        let asked = Instant::now();
        for ms in [300, 50, 600] {
            q.add_after("a".into(), Duration::from_millis(ms));
        }
        let due = q.state.lock().unwrap().delayed.get("a").copied().unwrap();
        assert!(due - asked < Duration::from_millis(300), "the earliest due time wins");
        assert_eq!(q.next().await.as_deref(), Some("a"));
        q.done("a");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(q.is_empty(), "the superseded timers queue nothing");
        q.add_after("a".into(), Duration::from_millis(1));
        assert_eq!(q.next().await.as_deref(), Some("a"), "a key may wait again once its timer fired");
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers() {
        let q = WorkQueue::new();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.shut_down();
        assert_eq!(waiter.await.unwrap(), None);
    }
}

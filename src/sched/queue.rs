//! The scheduling queue (upstream's PriorityQueue): pods waiting for a node, in
//! three sub-queues. *Active* pods are handed out highest priority first, then
//! oldest first. A pod whose attempt failed waits out a back-off (1s doubling
//! to 10s) in *back-off*; a pod no node fits waits in *unschedulable* until the
//! cluster changes in a way that may help (a node added or changed, a pod
//! deleted or finished) or 60s pass, then goes back through back-off.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even if nothing changes.
pub const MAX_UNSCHEDULABLE_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Active,
    Backoff { until: Instant },
    Unschedulable { since: Instant },
    /// Handed out; the scheduler is deciding.
    InFlight,
    /// Placed and being bound; leaves the queue once the informer shows it bound.
    Binding,
}

struct Entry {
    place: Place,
    priority: i32,
    /// Order of arrival in the active queue; stale heap items carry an older one.
    seq: u64,
    attempts: u32,
    last_failure: Option<Instant>,
    /// The cluster changed while the pod was in flight: a failure is retried soon.
    moved_while_in_flight: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    next_seq: u64,
    closed: bool,
}

impl State {
    fn activate(&mut self, key: &str) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.place = Place::Active;
            e.seq = seq;
            self.active.push((e.priority, Reverse(seq), key.to_owned()));
        }
    }

    fn backoff_until(e: &Entry) -> Option<Instant> {
        let doublings = e.attempts.saturating_sub(1).min(16);
        let backoff = INITIAL_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF);
        e.last_failure.map(|at| at + backoff)
    }

    /// Out of unschedulable: to back-off if it is not over yet, else active.
    fn retry(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else { return };
        match Self::backoff_until(e).filter(|until| *until > now) {
            Some(until) => e.place = Place::Backoff { until },
            None => self.activate(key),
        }
    }
}

/// Pods waiting to be scheduled, by key.
pub struct SchedulingQueue {
    state: Mutex<State>,
    ready: Notify,
}

impl Default for SchedulingQueue {
    fn default() -> Self {
        SchedulingQueue { state: Mutex::new(State::default()), ready: Notify::new() }
    }
}

impl SchedulingQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("scheduling queue lock")
    }

    /// A pod that needs a node, new or changed: queued if new; an unschedulable
    /// one is retried (its change may make it fit).
    pub fn add(&self, key: &str, priority: i32) {
        let mut s = self.lock();
        match s.entries.get_mut(key) {
            None => {
                let entry = Entry { place: Place::Active, priority, seq: 0, attempts: 0, last_failure: None, moved_while_in_flight: false };
                s.entries.insert(key.to_owned(), entry);
                s.activate(key);
            }
            Some(e) => {
                e.priority = priority;
                match e.place {
                    Place::Unschedulable { .. } => s.retry(key, Instant::now()),
                    Place::InFlight => e.moved_while_in_flight = true,
                    Place::Active | Place::Backoff { .. } | Place::Binding => return,
                }
            }
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Forgets a pod that was bound, deleted, or no longer ours to schedule.
    pub fn remove(&self, key: &str) {
        self.lock().entries.remove(key);
    }

    /// The next pod to schedule; `None` once closed.
    pub async fn pop(&self) -> Option<String> {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                while let Some((_, Reverse(seq), key)) = s.active.pop() {
                    if let Some(e) = s.entries.get_mut(&key).filter(|e| e.place == Place::Active && e.seq == seq) {
                        e.place = Place::InFlight;
                        e.moved_while_in_flight = false;
                        return Some(key);
                    }
                }
            }
            notified.await;
        }
    }

    /// The pod was placed; it stays out of the way until it shows up bound.
    pub fn binding(&self, key: &str) {
        if let Some(e) = self.lock().entries.get_mut(key) {
            e.place = Place::Binding;
        }
    }

    /// The attempt failed. No node fitting waits for a change; an error (or a
    /// change during the attempt) means another try after the back-off.
    pub fn failed(&self, key: &str, no_node_fits: bool) {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(e) = s.entries.get_mut(key) else { return };
        e.attempts += 1;
        e.last_failure = Some(now);
        e.place = if no_node_fits && !e.moved_while_in_flight {
            Place::Unschedulable { since: now }
        } else {
            Place::Backoff { until: State::backoff_until(e).unwrap_or(now) }
        };
    }

    /// The cluster changed in a way that may let waiting pods fit: every
    /// unschedulable pod is retried.
    pub fn cluster_changed(&self) {
        self.retry_where(Instant::now(), |e| match e.place {
            Place::Unschedulable { .. } => true,
            Place::InFlight => {
                e.moved_while_in_flight = true;
                false
            }
            _ => false,
        });
    }

    /// Periodic upkeep: back-offs that are over go active, and pods unschedulable
    /// for [`MAX_UNSCHEDULABLE_WAIT`] are retried.
    pub fn flush(&self, now: Instant) {
        self.retry_where(now, |e| match e.place {
            Place::Backoff { until } => until <= now,
            Place::Unschedulable { since } => now.duration_since(since) >= MAX_UNSCHEDULABLE_WAIT,
            _ => false,
        });
    }

    /// Retries every pod `due` picks, and wakes the scheduler if there was one.
    fn retry_where(&self, now: Instant, mut due: impl FnMut(&mut Entry) -> bool) {
        let mut s = self.lock();
        let keys: Vec<String> = s.entries.iter_mut().filter_map(|(key, e)| due(e).then(|| key.clone())).collect();
        if keys.is_empty() {
            return;
        }
        for key in keys {
            s.retry(&key, now);
        }
        drop(s);
        self.ready.notify_one();
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Pods waiting in each sub-queue: (active, back-off, unschedulable).
    #[cfg(test)]
    fn lengths(&self) -> (usize, usize, usize) {
        let s = self.lock();
        let count = |f: fn(&Place) -> bool| s.entries.values().filter(|e| f(&e.place)).count();
        (
            count(|p| *p == Place::Active),
            count(|p| matches!(p, Place::Backoff { .. })),
            count(|p| matches!(p, Place::Unschedulable { .. })),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(q: &SchedulingQueue) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(50), q.pop()).await.ok().flatten()
    }

    #[tokio::test]
    async fn higher_priority_first_then_oldest_first() {
        let q = SchedulingQueue::default();
        q.add("default/a", 0);
        q.add("default/b", 10);
        q.add("default/c", 0);
        q.add("default/a", 0);
        assert_eq!(next(&q).await.as_deref(), Some("default/b"));
        assert_eq!(next(&q).await.as_deref(), Some("default/a"));
        assert_eq!(next(&q).await.as_deref(), Some("default/c"));
        assert_eq!(next(&q).await, None, "a pod added twice is handed out once");
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_a_cluster_change_then_back_off() {
        let q = SchedulingQueue::default();
        q.add("p", 0);
        next(&q).await.unwrap();
        q.failed("p", true);
        assert_eq!(q.lengths(), (0, 0, 1));
        q.flush(Instant::now() + Duration::from_secs(5));
        assert_eq!(q.lengths(), (0, 0, 1), "nothing changed and 60s have not passed");
        q.cluster_changed();
        assert_eq!(q.lengths(), (0, 1, 0), "the first back-off (1s) is not over yet");
        q.flush(Instant::now() + INITIAL_BACKOFF);
        assert_eq!(next(&q).await.as_deref(), Some("p"));
    }

    #[tokio::test]
    async fn unschedulable_pods_are_retried_after_a_minute_anyway() {
        let q = SchedulingQueue::default();
        q.add("p", 0);
        next(&q).await.unwrap();
        q.failed("p", true);
        q.flush(Instant::now() + MAX_UNSCHEDULABLE_WAIT);
        assert_eq!(next(&q).await.as_deref(), Some("p"));
    }

    #[tokio::test]
    async fn a_change_to_the_pod_itself_retries_it() {
        let q = SchedulingQueue::default();
        q.add("p", 0);
        next(&q).await.unwrap();
        q.failed("p", true);
        q.add("p", 0);
        assert_eq!(q.lengths(), (0, 1, 0));
    }

    #[tokio::test]
    async fn a_change_during_the_attempt_sends_a_failed_pod_to_back_off() {
        let q = SchedulingQueue::default();
        q.add("p", 0);
        next(&q).await.unwrap();
        q.cluster_changed();
        q.failed("p", true);
        assert_eq!(q.lengths(), (0, 1, 0), "not unschedulable: the change may already have made room");
    }

    #[tokio::test]
    async fn back_off_doubles_up_to_ten_seconds() {
        let q = SchedulingQueue::default();
        q.add("p", 0);
        let mut waits = Vec::new();
        for _ in 0..6 {
            next(&q).await.unwrap();
            q.failed("p", false);
            let s = q.lock();
            let e = &s.entries["p"];
            let Place::Backoff { until } = e.place else { panic!("backing off") };
            waits.push((until - e.last_failure.unwrap()).as_secs());
            drop(s);
            q.flush(Instant::now() + MAX_BACKOFF);
        }
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }

    #[tokio::test]
    async fn pods_being_bound_or_removed_are_not_handed_out() {
        let q = SchedulingQueue::default();
        q.add("p", 0);
        q.add("gone", 0);
        q.remove("gone");
        next(&q).await.unwrap();
        q.binding("p");
        q.add("p", 0);
        q.cluster_changed();
        assert_eq!(next(&q).await, None);
        q.failed("p", false);
        assert_eq!(q.lengths(), (0, 1, 0), "a failed binding backs off");
    }
}

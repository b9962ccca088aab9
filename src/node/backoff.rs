//! Per-key exponential back-off with the kubelet's semantics, for restarting
//! crashed containers (CrashLoopBackOff) and retrying failed image pulls
//! (ImagePullBackOff): 10s doubling to 5 min; an entry untouched for twice the
//! maximum (a container that ran for 10 minutes) starts over.

use jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

struct Entry {
    delay: Duration,
    last_update: Timestamp,
}

pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

fn since(earlier: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(earlier).max(SignedDuration::ZERO)).unwrap_or_default()
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, entries: Mutex::new(HashMap::new()) }
    }

    fn expired(&self, entry: &Entry, now: Timestamp) -> bool {
        since(entry.last_update, now) > self.max * 2
    }

    /// How much longer `key` must wait, counting from `event` (when the
    /// container finished), or `None` if it may go ahead now.
    pub fn remaining_since(&self, key: &str, event: Timestamp, now: Timestamp) -> Option<Duration> {
        let entries = self.entries.lock().expect("backoff lock");
        let entry = entries.get(key).filter(|e| !self.expired(e, now))?;
        entry.delay.checked_sub(since(event, now)).filter(|d| !d.is_zero())
    }

    /// How much longer `key` must wait, counting from its last failure.
    pub fn remaining(&self, key: &str, now: Timestamp) -> Option<Duration> {
        let last = self.entries.lock().expect("backoff lock").get(key).map(|e| e.last_update)?;
        self.remaining_since(key, last, now)
    }

    /// The current delay of `key`, if it has one.
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.lock().expect("backoff lock").get(key).map(|e| e.delay)
    }

    /// Records another attempt: the delay starts at the initial one, then doubles.
    pub fn next(&self, key: &str, now: Timestamp) {
        let mut entries = self.entries.lock().expect("backoff lock");
        let delay = match entries.get(key) {
            Some(e) if !self.expired(e, now) => (e.delay * 2).min(self.max),
            _ => self.initial,
        };
        entries.insert(key.to_owned(), Entry { delay, last_update: now });
    }

    pub fn reset(&self, key: &str) {
        self.entries.lock().expect("backoff lock").remove(key);
    }

    /// Forgets entries whose key starts with `prefix` (a pod that is gone).
    pub fn forget_prefix(&self, prefix: &str) {
        self.entries.lock().expect("backoff lock").retain(|k, _| !k.starts_with(prefix));
    }

    /// Drops entries that have expired anyway, so memory stays flat.
    pub fn gc(&self, now: Timestamp) {
        let mut entries = self.entries.lock().expect("backoff lock");
        let max = self.max;
        entries.retain(|_, e| since(e.last_update, now) <= max * 2);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL, MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    #[test]
    fn the_first_restart_is_immediate_then_waits_double() {
        let b = Backoff::default();
        assert_eq!(b.remaining_since("c", at(0), at(0)), None);
        b.next("c", at(0));
        // Crashed again at 1s: waits 10s from the crash.
        assert_eq!(b.remaining_since("c", at(1), at(5)), Some(Duration::from_secs(6)));
        assert_eq!(b.remaining_since("c", at(1), at(11)), None);
        b.next("c", at(11));
        assert_eq!(b.delay("c"), Some(Duration::from_secs(20)));
    }

    #[test]
    fn the_delay_is_capped_at_five_minutes() {
        let b = Backoff::default();
        for i in 0..10 {
            b.next("c", at(i));
        }
        assert_eq!(b.delay("c"), Some(MAX));
    }

    #[test]
    fn ten_minutes_without_a_failure_start_over() {
        let b = Backoff::default();
        for i in 0..5 {
            b.next("c", at(i));
        }
        b.next("c", at(700));
        assert_eq!(b.delay("c"), Some(INITIAL));
        b.gc(at(2000));
        assert_eq!(b.delay("c"), None);
    }

    #[test]
    fn remaining_counts_from_the_last_failure() {
        let b = Backoff::default();
        b.next("pull", at(0));
        assert_eq!(b.remaining("pull", at(4)), Some(Duration::from_secs(6)));
        assert_eq!(b.remaining("pull", at(10)), None);
        b.forget_prefix("pu");
        assert_eq!(b.remaining("pull", at(4)), None);
    }
}

//! Behaviour of the store, engine-independent where possible.

use super::*;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

fn open(dir: &tempfile::TempDir) -> SledStore {
    SledStore::open(dir.path(), StoreOptions::default()).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next(w: &mut WatchStream) -> Arc<Event> {
    tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("watch event in time").expect("stream open").expect("no error")
}

#[tokio::test]
async fn every_write_gets_the_next_revision_and_they_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(&dir);
        assert_eq!(s.create("/a", b("1")).await.unwrap(), 1);
        assert_eq!(s.create("/b", b("1")).await.unwrap(), 2);
        assert_eq!(s.update("/a", b("2"), 1).await.unwrap(), 3);
        assert_eq!(s.delete("/b", None).await.unwrap().0, 4);
    }
    let s = open(&dir);
    assert_eq!(s.revision(), 4);
    assert_eq!(s.get("/a").await.unwrap().unwrap(), KeyValue { key: "/a".into(), value: b("2"), mod_revision: 3 });
    assert_eq!(s.get("/b").await.unwrap(), None);
    assert_eq!(s.create("/c", b("1")).await.unwrap(), 5);
}

#[tokio::test]
async fn failed_preconditions_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.create("/a", b("1")).await.unwrap();
    assert_eq!(s.create("/a", b("x")).await, Err(StoreError::AlreadyExists));
    assert_eq!(s.update("/a", b("x"), 7).await, Err(StoreError::Conflict { expected: 7, found: 1 }));
    assert_eq!(s.delete("/a", Some(7)).await.unwrap_err(), StoreError::Conflict { expected: 7, found: 1 });
    assert_eq!(s.update("/missing", b("x"), 1).await, Err(StoreError::NotFound));
    assert_eq!(s.delete("/missing", None).await.unwrap_err(), StoreError::NotFound);
    assert_eq!(s.revision(), 1);
    assert_eq!(s.get("/a").await.unwrap().unwrap().value, b("1"));
}

#[tokio::test]
async fn lists_are_by_prefix_and_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for k in ["/p/b", "/p/a", "/q/a", "/p/c", "/pp/a"] {
        s.create(k, b(k)).await.unwrap();
    }
    let page = s.list(ListRequest { prefix: "/p/".into(), ..Default::default() }).await.unwrap();
    let keys: Vec<_> = page.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/p/a", "/p/b", "/p/c"]);
    assert_eq!(page.revision, 5);
    assert!(!page.more);
}

#[tokio::test]
async fn a_past_revision_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.create("/p/a", b("a1")).await.unwrap(); // 1
    s.create("/p/b", b("b1")).await.unwrap(); // 2
    let at = s.revision();
    s.update("/p/a", b("a2"), 1).await.unwrap(); // 3
    s.delete("/p/b", None).await.unwrap(); // 4
    s.create("/p/c", b("c1")).await.unwrap(); // 5
    s.update("/p/a", b("a3"), 3).await.unwrap(); // 6
    let page = s.list(ListRequest { prefix: "/p/".into(), revision: Some(at), ..Default::default() }).await.unwrap();
    let seen: Vec<_> = page.items.iter().map(|kv| (kv.key.as_str(), kv.value.clone(), kv.mod_revision)).collect();
    assert_eq!(seen, [("/p/a", b("a1"), 1), ("/p/b", b("b1"), 2)]);
    assert_eq!(page.revision, at);
}

#[tokio::test]
async fn pages_continue_at_the_revision_of_the_first_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 0..5 {
        s.create(&format!("/p/{i}"), b("v")).await.unwrap();
    }
    let first = s.list(ListRequest { prefix: "/p/".into(), limit: Some(2), ..Default::default() }).await.unwrap();
    assert!(first.more);
    // Changes after the first page must not show in the next ones.
    s.delete("/p/3", None).await.unwrap();
    s.create("/p/5", b("v")).await.unwrap();
    let mut keys: Vec<String> = first.items.iter().map(|kv| kv.key.clone()).collect();
    let mut after = keys.last().cloned();
    loop {
        let page = s
            .list(ListRequest { prefix: "/p/".into(), after: after.clone(), limit: Some(2), revision: Some(first.revision) })
            .await
            .unwrap();
        keys.extend(page.items.iter().map(|kv| kv.key.clone()));
        after = keys.last().cloned();
        if !page.more {
            break;
        }
    }
    assert_eq!(keys, ["/p/0", "/p/1", "/p/2", "/p/3", "/p/4"]);
}

#[tokio::test]
async fn a_watch_replays_history_then_streams_live_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.create("/p/a", b("1")).await.unwrap();
    s.create("/q/a", b("1")).await.unwrap();
    s.update("/p/a", b("2"), 1).await.unwrap();
    let mut w = s.watch("/p/", 0).unwrap();
    let e = next(&mut w).await;
    assert_eq!((e.revision, e.kind), (1, EventKind::Created));
    let e = next(&mut w).await;
    assert_eq!((e.revision, e.kind, e.prev.as_ref().unwrap().value.clone()), (3, EventKind::Updated, b("1")));
    s.delete("/p/a", None).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!((e.revision, e.kind, e.value.clone()), (4, EventKind::Deleted, None));
    assert_eq!(e.prev.as_ref().unwrap().mod_revision, 3);
}

#[tokio::test]
async fn a_watcher_that_lags_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut w = s.watch("/", 0).unwrap();
    // Far more than the live buffer holds, without reading the watch meanwhile.
    let writes = 6000;
    for i in 0..writes {
        s.create(&format!("/k/{i}"), b("v")).await.unwrap();
    }
    for expected in 1..=writes {
        assert_eq!(next(&mut w).await.revision, expected);
    }
}

#[tokio::test]
async fn a_watch_below_the_compacted_horizon_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 0..10 {
        s.create(&format!("/k/{i}"), b("v")).await.unwrap();
    }
    s.compact(6).await.unwrap();
    assert!(matches!(s.watch("/", 5), Err(StoreError::Compacted { requested: 5, compacted: 6 })));
    let mut w = s.watch("/", 6).unwrap();
    assert_eq!(next(&mut w).await.revision, 7);
    assert!(matches!(
        s.list(ListRequest { prefix: "/".into(), revision: Some(3), ..Default::default() }).await,
        Err(StoreError::Compacted { .. })
    ));
    drop((w, s));
    let s = open(&dir);
    assert_eq!(s.compacted_revision(), 6);
    assert!(s.watch("/", 5).is_err());
}

#[tokio::test]
async fn a_watch_open_across_compaction_reports_it_instead_of_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut w = s.watch("/", 0).unwrap();
    for i in 0..10 {
        s.create(&format!("/k/{i}"), b("v")).await.unwrap();
    }
    s.compact(5).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap();
    assert!(matches!(first, Err(StoreError::Compacted { .. })));
    assert!(w.next().await.is_none());
}

#[tokio::test]
async fn compaction_keeps_recent_events_and_a_minimum_count() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { retain_for: Duration::from_secs(60), retain_events: 3, ..Default::default() };
    let s = SledStore::open(dir.path(), options).unwrap();
    for i in 0..10 {
        s.create(&format!("/k/{i}"), b("v")).await.unwrap();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(s.compact_now(now).unwrap(), None, "everything is younger than a minute");
    assert_eq!(s.compact_now(now + 120_000).unwrap(), Some(7), "the newest three stay");
    assert_eq!(s.compacted_revision(), 7);
    assert!(s.watch("/", 7).is_ok());
}

/// Concurrent writers and watchers over random operations: every watcher sees each
/// revision exactly once and in order, and the final state matches a model.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_random_writes_are_watched_in_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<SledStore> = Arc::new(open(&dir));
    let watchers: Vec<_> = (0..4).map(|_| s.watch("/", 0).unwrap()).collect();
    let writers = 8;
    let ops_per_writer = 300;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ w;
            let mut acked = 0u64;
            for _ in 0..ops_per_writer {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let key = format!("/k/{}", seed % 16);
                let ok = match seed % 3 {
                    0 => s.create(&key, b("c")).await.is_ok(),
                    1 => match s.get(&key).await.unwrap() {
                        Some(kv) => s.update(&key, b(&format!("u{w}")), kv.mod_revision).await.is_ok(),
                        None => false,
                    },
                    _ => s.delete(&key, None).await.is_ok(),
                };
                acked += ok as u64;
            }
            acked
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    assert_eq!(s.revision(), acked, "one revision per acknowledged write");
    let mut model: BTreeMap<String, Bytes> = BTreeMap::new();
    for (i, mut w) in watchers.into_iter().enumerate() {
        let mut state: BTreeMap<String, Bytes> = BTreeMap::new();
        for expected in 1..=acked {
            let e = next(&mut w).await;
            assert_eq!(e.revision, expected, "watcher {i}");
            match &e.value {
                Some(v) => state.insert(e.key.clone(), v.clone()),
                None => state.remove(&e.key),
            };
        }
        if i == 0 {
            model = state;
        } else {
            assert_eq!(state, model);
        }
    }
    let listed: BTreeMap<String, Bytes> = s
        .list(ListRequest { prefix: "/".into(), ..Default::default() })
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    assert_eq!(listed, model);
}

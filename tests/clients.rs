//! The kube crate and the official Python client list and watch `rk server`, and
//! recover from a compacted resourceVersion (410) by relisting.

mod common;

use common::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher};
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

/// A tiny watch history, so a restart compacts everything but the newest event.
const TINY_HISTORY: &[&str] = &["--watch-history-seconds", "0", "--watch-history-events", "1"];

fn configmap(name: &str) -> ConfigMap {
    ConfigMap { metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() }
}

async fn churn_secrets(client: &kube::Client, count: usize) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    for i in 0..count {
        let s = Secret { metadata: kube::api::ObjectMeta { name: Some(format!("churn-{i}")), ..Default::default() }, ..Default::default() };
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn kube_reflector_follows_changes_and_relists_after_410() {
    let mut server = Server::start_with(TINY_HISTORY);
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        cms.create(&PostParams::default(), &configmap(name)).await.unwrap();
    }
    let (reader, writer) = reflector::store();
    let inits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = inits.clone();
    let stream = reflector(writer, watcher(cms.clone(), watcher::Config::default()));
    tokio::spawn(stream.for_each(move |event| {
        if matches!(event, Ok(watcher::Event::Init)) {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        async {}
    }));
    // Every namespace also holds the root CA ConfigMap; leave it out.
    let names = |r: &reflector::Store<ConfigMap>| {
        let mut n: Vec<String> = r.state().iter().map(|c| c.metadata.name.clone().unwrap()).filter(|n| n != "kube-root-ca.crt").collect();
        n.sort();
        n
    };
    reader.wait_until_ready().await.unwrap();
    assert_eq!(names(&reader), ["a", "b"]);
    cms.create(&PostParams::default(), &configmap("c")).await.unwrap();
    until("the reflector to see c", || names(&reader) == ["a", "b", "c"]).await;
    let stale = cms.get("c").await.unwrap().metadata.resource_version.unwrap();

    // The reflector's watch resumes after the restart from a revision that the restart compacted away.
    churn_secrets(&client, 20).await;
    server.restart();
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.delete("a", &Default::default()).await.unwrap();
    cms.create(&PostParams::default(), &configmap("d")).await.unwrap();
    until("the reflector to relist and see d", || names(&reader) == ["b", "c", "d"]).await;
    assert!(inits.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the watcher relisted after 410");

    // A raw watch from the compacted revision gets a 410 ERROR event inside a 200 stream.
    let mut events = cms.watch(&WatchParams::default().timeout(5), &stale).await.unwrap().boxed();
    match events.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[test]
fn python_client_lists_watches_and_relists_after_410() {
    let mut server = Server::start_with(TINY_HISTORY);
    let mut child = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_test.py"))
        .env("KUBECONFIG", server.kubeconfig())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("STALE"), "the script reached its restart point: {line:?}");
    server.restart();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success() && line.trim() == "OK", "python client test failed ({status}): {line}\n{}", server.log());
}

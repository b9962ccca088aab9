//! No acknowledged write is lost: the server is SIGKILLed in the middle of a
//! stream of concurrent writes, many times; after each restart every write that
//! was acknowledged is there, and revisions keep increasing.

mod common;

use common::Server;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CYCLES: usize = 12;
const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_and_revisions_continue() {
    let mut server = Server::start();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut highest_rv = 0u64;
    for cycle in 0..CYCLES {
        let client = server.client().await;
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        let acks = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (cms, acks) = (cms.clone(), acks.clone());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("c{cycle}-w{w}-{i}");
                    let cm = ConfigMap {
                        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
                        data: Some([("i".to_owned(), i.to_string())].into()),
                        ..Default::default()
                    };
                    match cms.create(&PostParams::default(), &cm).await {
                        Ok(created) => {
                            let rv = created.metadata.resource_version.unwrap().parse::<u64>().unwrap();
                            acks.lock().unwrap().push((name, rv));
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + 40 * cycle as u64)).await;
        server.kill();
        for w in writers {
            let _ = w.await;
        }
        let new_acks = std::mem::take(&mut *acks.lock().unwrap());
        assert!(!new_acks.is_empty(), "cycle {cycle}: some writes were acknowledged before the kill");
        for (name, rv) in new_acks {
            assert!(rv > highest_rv || acked.values().all(|r| *r != rv), "revisions are unique");
            acked.insert(name, rv);
        }
        eprintln!("cycle {cycle}: {} acknowledged writes so far", acked.len());
        server.restart();
        let client = server.client().await;
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        let list = cms.list(&ListParams::default()).await.unwrap();
        let present: BTreeMap<String, u64> = list
            .items
            .iter()
            .map(|c| (c.metadata.name.clone().unwrap(), c.metadata.resource_version.clone().unwrap().parse().unwrap()))
            .collect();
        for (name, rv) in &acked {
            assert_eq!(present.get(name), Some(rv), "cycle {cycle}: acknowledged write {name} at revision {rv} is there");
        }
        let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
        let max_acked = acked.values().copied().max().unwrap();
        assert!(list_rv >= max_acked, "cycle {cycle}: the store's revision {list_rv} is not behind an acknowledged one {max_acked}");
        let probe = ConfigMap { metadata: kube::api::ObjectMeta { name: Some(format!("probe-{cycle}")), ..Default::default() }, ..Default::default() };
        let rv: u64 = cms.create(&PostParams::default(), &probe).await.unwrap().metadata.resource_version.unwrap().parse().unwrap();
        assert!(rv > list_rv, "cycle {cycle}: revisions continue after the restart");
        highest_rv = rv;
        acked.insert(format!("probe-{cycle}"), rv);
    }
}

#[test]
fn sigterm_stops_cleanly_and_keeps_everything() {
    let mut server = Server::start();
    server.ok(&["create", "cm", "kept", "--from-literal=a=b"]);
    let status = server.terminate();
    assert!(status.success(), "rk server exits 0 on SIGTERM: {status}\n{}", server.log());
    server.restart();
    assert_eq!(server.ok(&["get", "cm", "kept", "-o", "jsonpath={.data.a}"]), "b");
}

//! Node IPAM: each node gets a /24 of the cluster CIDR as `spec.podCIDR`, from
//! which its agent hands out pod IPs. One worker allocates, remembering what it
//! gave until the cache shows it, so two nodes never get the same range.

use super::Context;
use crate::runtime::{Controller, Error, EventType, Informer, Next, Reconciler, Recorder, reference};
use async_trait::async_trait;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Each node's share of the cluster CIDR.
const NODE_MASK: u8 = 24;

struct NodeIpam {
    nodes: Informer<Node>,
    client: kube::Client,
    recorder: Recorder,
    cluster_cidr: Ipv4Net,
    /// Ranges given out but perhaps not yet seen in the cache.
    given: Mutex<HashSet<Ipv4Net>>,
}

pub async fn run(ctx: Context) {
    let nodes = ctx.informers.get::<Node>();
    // One worker: allocation decisions are made one at a time.
    let controller = Controller::new("node-ipam-controller", 1).owns_kind(&nodes);
    let reconciler = Arc::new(NodeIpam {
        nodes,
        client: ctx.client.clone(),
        recorder: ctx.recorder("node-ipam-controller"),
        cluster_cidr: ctx.options.cluster_cidr,
        given: Mutex::new(HashSet::new()),
    });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

#[async_trait]
impl Reconciler for NodeIpam {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(node) = self.nodes.get(key) else { return Ok(Next::Done) };
        if pod_cidr(&node).is_some() {
            return Ok(Next::Done);
        }
        let free = {
            let mut given = self.given.lock().expect("given lock");
            let used: HashSet<Ipv4Net> = self.nodes.list().iter().filter_map(|n| pod_cidr(n)).collect();
            given.retain(|c| !used.contains(c));
            let free = self.cluster_cidr.subnets(NODE_MASK.max(self.cluster_cidr.prefix_len()))?.find(|c| !used.contains(c) && !given.contains(c));
            if let Some(c) = free {
                given.insert(c);
            }
            free
        };
        let Some(cidr) = free else {
            self.recorder.record(reference(node.as_ref()), EventType::Warning, "CIDRNotAvailable", format!("Node {} status is now: CIDRNotAvailable", node.name_any()));
            return Ok(Next::Done);
        };
        let patch = json!({ "spec": { "podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()] } });
        Api::<Node>::all(self.client.clone()).patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(Next::Done)
    }
}

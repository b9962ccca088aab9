//! Publishes where served Ingresses are reachable: `status.loadBalancer.ingress`
//! holds the node's address, written through `/status` only when it differs,
//! as ingress controllers report their load balancer.

use super::routes::is_served;
use crate::runtime::{Controller, Error, Informer, Informers, Next, Reconciler, key_of, split_key};
use async_trait::async_trait;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct StatusWriter {
    client: kube::Client,
    ingresses: Informer<Ingress>,
    classes: Informer<IngressClass>,
    address: IpAddr,
}

#[async_trait]
impl Reconciler for StatusWriter {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(ing) = self.ingresses.get(key) else { return Ok(Next::Done) };
        if !is_served(&ing, &self.classes.list()) {
            return Ok(Next::Done);
        }
        let current = ing.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.clone()).unwrap_or_default();
        let address = self.address.to_string();
        if current.len() == 1 && current[0].ip.as_deref() == Some(address.as_str()) && current[0].hostname.is_none() {
            return Ok(Next::Done);
        }
        let (namespace, name) = split_key(key);
        let patch = json!({ "status": { "loadBalancer": { "ingress": [{ "ip": address }] } } });
        Api::<Ingress>::namespaced(self.client.clone(), namespace).patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        Ok(Next::Done)
    }
}

/// Runs until `shutdown`, reporting `address` for every served Ingress.
pub async fn run(client: kube::Client, informers: Arc<Informers>, address: IpAddr, shutdown: CancellationToken) {
    let writer = StatusWriter { client, ingresses: informers.get(), classes: informers.get(), address };
    let all_ingresses = writer.ingresses.clone();
    let controller = Controller::new("ingress-status", 1)
        .owns_kind(&writer.ingresses)
        .watch(&writer.classes, move |_| all_ingresses.list().iter().map(|i| key_of(i.as_ref())).collect());
    controller.run(Arc::new(writer), shutdown).await;
}

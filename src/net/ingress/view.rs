//! What the proxy routes with: the route table and the TLS certificates,
//! rebuilt by a control loop whenever an Ingress, IngressClass or Secret
//! changes, and the ready endpoints of backend Services read live from the
//! EndpointSlice cache (straight to pod addresses, not through cluster IPs),
//! handed out round-robin.

use super::routes::{Backend, RouteTable, ServicePortRef, is_served};
use super::tls::{self, Certificates};
use crate::runtime::{Change, Controller, Error, Informer, Informers, Next, Reconciler};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The single work-queue key of the rebuild loop: every change leads to one rebuild.
const REBUILD: &str = "routes";

pub struct View {
    table: RwLock<Arc<RouteTable>>,
    pub certificates: Arc<Certificates>,
    services: Informer<Service>,
    slices: Informer<EndpointSlice>,
    /// Round-robin position per backend.
    turns: Mutex<HashMap<Backend, usize>>,
}

impl View {
    pub fn new(informers: &Informers) -> Result<Self, String> {
        Ok(Self {
            table: RwLock::new(Arc::default()),
            certificates: Arc::new(Certificates::new()?),
            services: informers.get(),
            slices: informers.get(),
            turns: Mutex::new(HashMap::new()),
        })
    }

    pub fn route(&self, host: &str, path: &str) -> Option<Backend> {
        self.table.read().expect("route table lock").route(host, path).cloned()
    }

    /// The ready endpoints of a backend, starting at the next one's turn.
    pub fn endpoints(&self, backend: &Backend) -> Vec<SocketAddr> {
        let mut all = self.ready_endpoints(backend);
        if all.is_empty() {
            return all;
        }
        let mut turns = self.turns.lock().expect("turns lock");
        let turn = turns.entry(backend.clone()).or_insert(0);
        let start = *turn % all.len();
        all.rotate_left(start);
        *turn = turn.wrapping_add(1);
        all
    }

    fn ready_endpoints(&self, backend: &Backend) -> Vec<SocketAddr> {
        let Some(service) = self.services.get(&format!("{}/{}", backend.namespace, backend.service)) else { return Vec::new() };
        let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
        let Some(port) = ports.iter().find(|p| match &backend.port {
            ServicePortRef::Number(n) => p.port == *n,
            ServicePortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
        }) else {
            return Vec::new();
        };
        let port_name = port.name.clone().unwrap_or_default();
        let slices = self.slices.filter(|s| {
            s.metadata.namespace.as_deref() == Some(backend.namespace.as_str())
                && s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&backend.service)
        });
        let mut out: Vec<SocketAddr> = slices
            .iter()
            .filter_map(|slice| {
                let target = slice.ports.iter().flatten().find(|p| p.name.clone().unwrap_or_default() == port_name && p.protocol.as_deref().unwrap_or("TCP") == "TCP")?;
                let target = u16::try_from(target.port?).ok()?;
                Some(slice.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false)).flat_map(move |e| {
                    e.addresses.iter().filter_map(move |a| a.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, target)))
                }))
            })
            .flatten()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Rebuilds the route table and certificates from the caches.
struct Rebuild {
    view: Arc<View>,
    ingresses: Informer<Ingress>,
    classes: Informer<IngressClass>,
    secrets: Informer<Secret>,
}

#[async_trait]
impl Reconciler for Rebuild {
    async fn reconcile(&self, _key: &str) -> Result<Next, Error> {
        let classes = self.classes.list();
        let served = self.ingresses.filter(|i| is_served(i, &classes));
        let served: Vec<&Ingress> = served.iter().map(Arc::as_ref).collect();
        *self.view.table.write().expect("route table lock") = Arc::new(RouteTable::build(&served));
        self.view.certificates.replace(tls::collect(&served, |key| self.secrets.get(key)));
        Ok(Next::Done)
    }
}

fn to_rebuild<K>(_: &Change<K>) -> Vec<String> {
    vec![REBUILD.to_owned()]
}

/// Keeps `view` current until `shutdown`.
pub async fn keep_current(view: Arc<View>, informers: Arc<Informers>, shutdown: CancellationToken) {
    let rebuild = Rebuild { view, ingresses: informers.get(), classes: informers.get(), secrets: informers.get() };
    let controller = Controller::new("ingress-routes", 1)
        .watch(&rebuild.ingresses, to_rebuild)
        .watch(&rebuild.classes, to_rebuild)
        .watch(&rebuild.secrets, to_rebuild);
    controller.queue().add(REBUILD.to_owned());
    controller.run(Arc::new(rebuild), shutdown).await;
}

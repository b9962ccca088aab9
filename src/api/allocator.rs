//! Cluster IPs and node ports for Services, as upstream's range allocators: a
//! bitmap per range held in the store and changed with compare-and-swap, so
//! concurrent creates never get the same address. A Service's addresses are
//! taken before it is written, given back if the write fails and when it is
//! deleted; `repair` rebuilds the bitmaps from the Services themselves to undo
//! leaks after a crash between the two writes.

use super::error::{ApiError, ApiResult, FieldError};
use super::object::ObjectExt;
use crate::store::{ListRequest, SharedStorage, StoreError};
use base64::Engine;
use bytes::Bytes;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

const SERVICE_IPS_KEY: &str = "/registry/ranges/serviceips";
const NODE_PORTS_KEY: &str = "/registry/ranges/servicenodeports";
const SERVICES_PREFIX: &str = "/registry/core/services/";
const CAS_RETRIES: usize = 64;

/// The ranges Services are given addresses from.
#[derive(Clone, Debug)]
pub struct Ranges {
    pub service_cidr: Ipv4Net,
    pub node_ports: (u16, u16),
}

impl Default for Ranges {
    fn default() -> Self {
        Self { service_cidr: "10.43.0.0/16".parse().expect("valid CIDR"), node_ports: (30000, 32767) }
    }
}

impl Ranges {
    /// The address of the `kubernetes` Service: the first of the range.
    pub fn api_service_ip(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The address of the cluster DNS Service, as k3s chooses it.
    pub fn dns_service_ip(&self) -> Ipv4Addr {
        self.nth(10)
    }

    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + n)
    }

    fn ip_slots(&self) -> usize {
        1usize << (32 - self.service_cidr.prefix_len()).min(24)
    }

    fn ip_index(&self, ip: &str) -> Option<usize> {
        let ip: Ipv4Addr = ip.parse().ok()?;
        let offset = u32::from(ip).checked_sub(u32::from(self.service_cidr.network()))? as usize;
        // Neither the network nor the broadcast address.
        (offset > 0 && offset < self.ip_slots() - 1).then_some(offset)
    }

    fn port_slots(&self) -> usize {
        usize::from(self.node_ports.1 - self.node_ports.0) + 1
    }

    fn port_index(&self, port: i64) -> Option<usize> {
        let (low, high) = (i64::from(self.node_ports.0), i64::from(self.node_ports.1));
        (low..=high).contains(&port).then(|| (port - low) as usize)
    }
}

/// Addresses taken for one write, to give back if the write fails.
#[derive(Default, Debug)]
pub struct Taken {
    ips: Vec<usize>,
    ports: Vec<usize>,
}

struct Bitmap {
    bits: Vec<u8>,
    revision: Option<u64>,
}

impl Bitmap {
    fn get(&self, i: usize) -> bool {
        self.bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
    fn set(&mut self, i: usize, on: bool) {
        if self.bits.len() <= i / 8 {
            self.bits.resize(i / 8 + 1, 0);
        }
        if on { self.bits[i / 8] |= 1 << (i % 8) } else { self.bits[i / 8] &= !(1 << (i % 8)) }
    }
}

async fn load(store: &SharedStorage, key: &str) -> ApiResult<Bitmap> {
    let kv = store.get(key).await.map_err(ApiError::internal)?;
    let Some(kv) = kv else { return Ok(Bitmap { bits: Vec::new(), revision: None }) };
    let doc: Value = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
    let bits = base64::engine::general_purpose::STANDARD.decode(doc["data"].as_str().unwrap_or("")).map_err(ApiError::internal)?;
    Ok(Bitmap { bits, revision: Some(kv.mod_revision) })
}

async fn save(store: &SharedStorage, key: &str, map: &Bitmap) -> ApiResult<bool> {
    let doc = json!({ "data": base64::engine::general_purpose::STANDARD.encode(&map.bits) });
    let bytes = Bytes::from(doc.to_string());
    let result = match map.revision {
        Some(rev) => store.update(key, bytes, rev).await.map(drop),
        None => store.create(key, bytes).await.map(drop),
    };
    match result {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. } | StoreError::AlreadyExists) => Ok(false),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Applies `change` to the bitmap at `key` atomically; `change` may fail.
async fn modify<T>(store: &SharedStorage, key: &str, mut change: impl FnMut(&mut Bitmap) -> ApiResult<T>) -> ApiResult<T> {
    for _ in 0..CAS_RETRIES {
        let mut map = load(store, key).await?;
        let out = change(&mut map)?;
        if save(store, key, &map).await? {
            return Ok(out);
        }
    }
    Err(ApiError::service_unavailable("the allocator is busy; try again"))
}

fn random_start(size: usize) -> usize {
    let r = uuid::Uuid::new_v4();
    u64::from_le_bytes(r.as_bytes()[..8].try_into().expect("8 bytes")) as usize % size.max(1)
}

/// Takes `wanted` (refused if taken), or a free slot in `from..size`, searching from a random point.
fn take(map: &mut Bitmap, wanted: Option<usize>, from: usize, size: usize) -> Result<usize, &'static str> {
    if let Some(i) = wanted {
        if map.get(i) {
            return Err("provided IP is already allocated");
        }
        map.set(i, true);
        return Ok(i);
    }
    let span = size - from;
    let start = random_start(span);
    let free = (0..span).map(|k| from + (start + k) % span).find(|i| !map.get(*i)).ok_or("range is full")?;
    map.set(free, true);
    Ok(free)
}

fn wants_cluster_ip(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName") && svc.pointer("/spec/clusterIP").and_then(Value::as_str) != Some("None")
}

fn wants_node_ports(svc: &Value) -> bool {
    matches!(svc.pointer("/spec/type").and_then(Value::as_str), Some("NodePort" | "LoadBalancer"))
        && svc.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool) != Some(false)
}

/// A LoadBalancer Service keeping external traffic on the node it arrives at
/// needs a port where nodes answer whether they have endpoints of it.
fn wants_health_check_port(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer") && svc.pointer("/spec/externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
}

fn health_check_port_of(svc: &Value) -> Option<i64> {
    svc.pointer("/spec/healthCheckNodePort").and_then(Value::as_i64).filter(|p| *p != 0)
}

fn invalid(svc: &Value, field: &str, value: impl std::fmt::Debug, why: String) -> ApiError {
    ApiError::invalid("Service", "", svc.name(), &[FieldError::invalid(field, value, why)])
}

fn node_ports_of(svc: &Value) -> Vec<i64> {
    svc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten().filter_map(|p| p.get("nodePort")?.as_i64()).filter(|p| *p != 0).collect()
}

/// Gives a Service the addresses its type needs (for an update, those it did
/// not already have), writing them into `svc`.
pub async fn allocate(store: &SharedStorage, ranges: &Ranges, svc: &mut Value, old: Option<&Value>) -> ApiResult<Taken> {
    let mut taken = Taken::default();
    let had_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).and_then(Value::as_str).filter(|ip| !ip.is_empty() && *ip != "None").map(str::to_owned);
    if wants_cluster_ip(svc) {
        match had_ip {
            Some(ip) => svc["spec"]["clusterIP"] = json!(ip),
            None => {
                let requested = svc.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
                let wanted = match &requested {
                    Some(ip) => Some(ranges.ip_index(ip).ok_or_else(|| {
                        invalid(svc, "spec.clusterIPs", [ip], format!("failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {}", ranges.service_cidr))
                    })?),
                    None => None,
                };
                // Dynamic addresses come from above the first sixteenth, leaving the bottom for static ones.
                let size = ranges.ip_slots();
                let from = (size / 16).clamp(2, size - 1);
                let index = modify(store, SERVICE_IPS_KEY, |map| {
                    take(map, wanted, from, size - 1).map_err(|why| invalid(svc, "spec.clusterIPs", [requested.clone().unwrap_or_default()], format!("failed to allocate IP {}: {why}", requested.clone().unwrap_or_default())))
                })
                .await?;
                taken.ips.push(index);
                let ip = Ipv4Addr::from(u32::from(ranges.service_cidr.network()) + index as u32).to_string();
                svc["spec"]["clusterIP"] = json!(ip);
            }
        }
        let ip = svc["spec"]["clusterIP"].clone();
        svc["spec"]["clusterIPs"] = json!([ip]);
        svc["spec"]["ipFamilies"] = json!(["IPv4"]);
        svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }
    if wants_node_ports(svc) {
        let kept = old.map(node_ports_of).unwrap_or_default();
        let ports = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut).map(std::mem::take).unwrap_or_default();
        let mut out = Vec::with_capacity(ports.len());
        for mut port in ports {
            let requested = port.get("nodePort").and_then(Value::as_i64).filter(|p| *p != 0);
            if requested.is_some_and(|p| kept.contains(&p)) {
                out.push(port);
                continue;
            }
            let index = match take_node_port(store, ranges, svc, requested, "spec.ports[].nodePort").await {
                Ok(i) => i,
                Err(e) => {
                    release(store, ranges, &taken).await;
                    return Err(e);
                }
            };
            taken.ports.push(index);
            port["nodePort"] = json!(i64::from(ranges.node_ports.0) + index as i64);
            out.push(port);
        }
        svc["spec"]["ports"] = json!(out);
    }
    let had_health_check = old.filter(|o| wants_health_check_port(o)).and_then(health_check_port_of);
    let requested = health_check_port_of(svc);
    if wants_health_check_port(svc) {
        match (requested, had_health_check) {
            (Some(r), Some(h)) if r == h => {}
            // Kept when an update leaves it out, as upstream does.
            (None, Some(h)) => svc["spec"]["healthCheckNodePort"] = json!(h),
            _ => match take_node_port(store, ranges, svc, requested, "spec.healthCheckNodePort").await {
                Ok(index) => {
                    taken.ports.push(index);
                    svc["spec"]["healthCheckNodePort"] = json!(i64::from(ranges.node_ports.0) + index as i64);
                }
                Err(e) => {
                    release(store, ranges, &taken).await;
                    return Err(e);
                }
            },
        }
    } else if let Some(port) = requested {
        if had_health_check != Some(port) {
            release(store, ranges, &taken).await;
            return Err(invalid(svc, "spec.healthCheckNodePort", port, "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'".into()));
        }
        // No longer needed: given back with what the update drops.
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("healthCheckNodePort");
        }
    }
    Ok(taken)
}

/// Takes node port `requested` (or a free one) from the range; its index.
async fn take_node_port(store: &SharedStorage, ranges: &Ranges, svc: &Value, requested: Option<i64>, field: &str) -> ApiResult<usize> {
    let wanted = match requested {
        Some(p) => Some(ranges.port_index(p).ok_or_else(|| {
            invalid(svc, field, p, format!("provided port is not in the valid range. The range of valid ports is {}-{}", ranges.node_ports.0, ranges.node_ports.1))
        })?),
        None => None,
    };
    let size = ranges.port_slots();
    modify(store, NODE_PORTS_KEY, |map| take(map, wanted, 0, size).map_err(|_| invalid(svc, field, requested.unwrap_or(0), "provided port is already allocated".into()))).await
}

/// Gives back addresses taken for a write that did not happen.
pub async fn release(store: &SharedStorage, _ranges: &Ranges, taken: &Taken) {
    for (key, slots) in [(SERVICE_IPS_KEY, &taken.ips), (NODE_PORTS_KEY, &taken.ports)] {
        if slots.is_empty() {
            continue;
        }
        let freed = modify(store, key, |map| {
            slots.iter().for_each(|i| map.set(*i, false));
            Ok(())
        })
        .await;
        if let Err(e) = freed {
            tracing::warn!(error = %e, "addresses not released; the repair loop will");
        }
    }
}

/// What a Service holds, to give back when it is deleted or changes type.
pub fn held(ranges: &Ranges, svc: &Value) -> Taken {
    let ip = svc.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|ip| ranges.ip_index(ip));
    let ports = node_ports_of(svc).into_iter().chain(health_check_port_of(svc));
    Taken { ips: ip.into_iter().collect(), ports: ports.filter_map(|p| ranges.port_index(p)).collect() }
}

/// What `old` held that `new` no longer does.
pub fn dropped(ranges: &Ranges, old: &Value, new: &Value) -> Taken {
    let (was, is) = (held(ranges, old), held(ranges, new));
    Taken { ips: was.ips.into_iter().filter(|i| !is.ips.contains(i)).collect(), ports: was.ports.into_iter().filter(|p| !is.ports.contains(p)).collect() }
}

/// Rebuilds both bitmaps from the Services that exist.
pub async fn repair(store: &SharedStorage, ranges: &Ranges) -> ApiResult<()> {
    let page = store.list(ListRequest { prefix: SERVICES_PREFIX.into(), ..Default::default() }).await.map_err(ApiError::internal)?;
    let mut ips = Bitmap { bits: Vec::new(), revision: None };
    let mut ports = Bitmap { bits: Vec::new(), revision: None };
    for kv in &page.items {
        let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else { continue };
        let holds = held(ranges, &svc);
        holds.ips.iter().for_each(|i| ips.set(*i, true));
        holds.ports.iter().for_each(|i| ports.set(*i, true));
    }
    for (key, rebuilt) in [(SERVICE_IPS_KEY, ips), (NODE_PORTS_KEY, ports)] {
        modify(store, key, |map| {
            map.bits = rebuilt.bits.clone();
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Whether a resource is the one whose writes allocate addresses.
pub fn allocates(resource: &super::registry::Resource) -> bool {
    resource.group.is_empty() && resource.plural == "services"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SledStore, StoreOptions};
    use std::sync::Arc;

    fn store(dir: &tempfile::TempDir) -> SharedStorage {
        Arc::new(SledStore::open(dir.path(), StoreOptions::default()).unwrap())
    }

    fn service(kind: &str, ip: Option<&str>, node_port: Option<i64>) -> Value {
        let mut port = json!({ "port": 80 });
        if let Some(p) = node_port {
            port["nodePort"] = json!(p);
        }
        let mut svc = json!({ "metadata": { "name": "s" }, "spec": { "type": kind, "ports": [port] } });
        if let Some(ip) = ip {
            svc["spec"]["clusterIP"] = json!(ip);
        }
        svc
    }

    #[tokio::test]
    async fn every_service_gets_a_distinct_address_in_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ranges) = (store(&dir), Ranges { service_cidr: "10.43.0.0/28".parse().unwrap(), ..Default::default() });
        let mut seen = std::collections::HashSet::new();
        for _ in 0..13 {
            let mut svc = service("ClusterIP", None, None);
            allocate(&store, &ranges, &mut svc, None).await.unwrap();
            let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();
            assert!(ranges.service_cidr.contains(&ip.parse::<Ipv4Addr>().unwrap()));
            assert!(seen.insert(ip));
        }
        let mut full = service("ClusterIP", None, None);
        assert_eq!(allocate(&store, &ranges, &mut full, None).await.unwrap_err().code, 422, "13 dynamic addresses; .1 is kept for the kubernetes Service");
    }

    #[tokio::test]
    async fn a_requested_address_is_honoured_once_and_released_on_delete() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ranges) = (store(&dir), Ranges::default());
        let mut first = service("ClusterIP", Some("10.43.0.10"), None);
        allocate(&store, &ranges, &mut first, None).await.unwrap();
        let mut second = service("ClusterIP", Some("10.43.0.10"), None);
        let err = allocate(&store, &ranges, &mut second, None).await.unwrap_err();
        assert!(err.message.contains("provided IP is already allocated"), "{}", err.message);
        release(&store, &ranges, &held(&ranges, &first)).await;
        allocate(&store, &ranges, &mut second, None).await.unwrap();
        let mut outside = service("ClusterIP", Some("10.99.0.1"), None);
        assert!(allocate(&store, &ranges, &mut outside, None).await.unwrap_err().message.contains("not in the valid range"));
    }

    #[tokio::test]
    async fn node_ports_are_allocated_for_node_port_services_and_kept_on_update() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ranges) = (store(&dir), Ranges::default());
        let mut svc = service("NodePort", None, None);
        allocate(&store, &ranges, &mut svc, None).await.unwrap();
        let port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&port));
        let mut updated = svc.clone();
        allocate(&store, &ranges, &mut updated, Some(&svc)).await.unwrap();
        assert_eq!(updated["spec"]["ports"][0]["nodePort"], port);
        let mut clash = service("NodePort", None, Some(port));
        assert!(allocate(&store, &ranges, &mut clash, None).await.is_err());
        let mut headless = service("ClusterIP", Some("None"), None);
        allocate(&store, &ranges, &mut headless, None).await.unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[tokio::test]
    async fn local_load_balancers_get_a_health_check_node_port_given_back_when_no_longer_local() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ranges) = (store(&dir), Ranges::default());
        let mut svc = service("LoadBalancer", None, None);
        svc["spec"]["externalTrafficPolicy"] = json!("Local");
        allocate(&store, &ranges, &mut svc, None).await.unwrap();
        let health = svc["spec"]["healthCheckNodePort"].as_i64().expect("a health check node port");
        assert!((30000..=32767).contains(&health) && health != svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap());
        let mut clash = service("NodePort", None, Some(health));
        assert!(allocate(&store, &ranges, &mut clash, None).await.is_err(), "the port is taken");

        // An update that leaves it out keeps it.
        let mut updated = svc.clone();
        updated["spec"].as_object_mut().unwrap().remove("healthCheckNodePort");
        allocate(&store, &ranges, &mut updated, Some(&svc)).await.unwrap();
        assert_eq!(updated["spec"]["healthCheckNodePort"], health);

        // Cluster policy: dropped, and released with what the update drops.
        let mut cluster = updated.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        allocate(&store, &ranges, &mut cluster, Some(&updated)).await.unwrap();
        assert!(cluster["spec"].get("healthCheckNodePort").is_none());
        release(&store, &ranges, &dropped(&ranges, &updated, &cluster)).await;
        let mut reuse = service("NodePort", None, Some(health));
        allocate(&store, &ranges, &mut reuse, None).await.unwrap();

        let mut not_local = service("NodePort", None, None);
        not_local["spec"]["healthCheckNodePort"] = json!(31000);
        assert_eq!(allocate(&store, &ranges, &mut not_local, None).await.unwrap_err().code, 422);
    }
}


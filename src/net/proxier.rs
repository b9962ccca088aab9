//! The service proxy's control loop: Services and EndpointSlices from the shared
//! informers, one Service per reconcile, each turned into its [`Ruleset`] and
//! programmed as the difference from what that Service had, in one nf_tables
//! transaction. The first reconcile (and any after a failed transaction)
//! rebuilds the whole table from the cache against what the kernel lists, so a
//! restart removes whatever no Service wants any more. After its rules, a
//! Service's stale UDP flows are cleared ([`conntrack`](super::conntrack)) and
//! its health check node port kept ([`health`](super::health)).

use super::conntrack::{self, UdpPort};
use super::health::{HealthCheck, HealthChecks};
use super::model::{Existing, Key, Map, Ruleset, Tables};
use super::netlink::{Error as NetlinkError, Nfnetlink};
use super::nft::Batch;
use super::services::{self, SERVICE_NAME_LABEL};
use crate::runtime::{Change, Error, Informer, Next, Reconciler, WorkQueue, key_of, split_key};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use netlink_packet_netfilter::nftables::{ChainAttribute, ChainMessage, NfTablesMessage, SetAttribute, SetMessage};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// The Service key an EndpointSlice belongs to.
pub fn slice_service_key(slice: &EndpointSlice) -> Option<String> {
    let service = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some(format!("{}/{service}", slice.namespace().unwrap_or_default()))
}

/// Maps a slice change to its Service, before and after.
pub fn slice_keys(change: &Change<EndpointSlice>) -> Vec<String> {
    let mut keys: Vec<String> = slice_service_key(change.object()).into_iter().collect();
    if let Change::Applied { old: Some(old), .. } = change
        && let Some(key) = slice_service_key(old)
        && !keys.contains(&key)
    {
        keys.push(key);
    }
    keys
}

struct State {
    netlink: Nfnetlink,
    /// What each Service has in the kernel, by Service key.
    programmed: HashMap<String, Ruleset>,
    /// Which Service holds each map key (two Services may name the same
    /// external address and port; the first one keeps it).
    owners: HashMap<(Map, Key), String>,
    /// Services waiting for a map key another one holds.
    waiting: HashMap<(Map, Key), BTreeSet<String>>,
    /// False until the table has been rebuilt from the cache (at start, and
    /// after a transaction failed and the kernel may differ from `programmed`).
    in_sync: bool,
    /// Each Service's UDP ports as last cleared for, by Service key.
    udp: HashMap<String, BTreeMap<String, UdpPort>>,
    health: HealthChecks,
}

/// What one Service asks of this node.
#[derive(Default)]
struct Wanted {
    rules: Ruleset,
    udp: BTreeMap<String, UdpPort>,
    health: Option<HealthCheck>,
}

pub struct Proxier {
    services: Informer<Service>,
    slices: Informer<EndpointSlice>,
    context: services::Context,
    tables: Tables,
    queue: Arc<WorkQueue>,
    state: tokio::sync::Mutex<State>,
}

impl Proxier {
    pub fn new(
        netlink: Nfnetlink,
        services: Informer<Service>,
        slices: Informer<EndpointSlice>,
        context: services::Context,
        tables: Tables,
        queue: Arc<WorkQueue>,
    ) -> Self {
        let state = State { netlink, programmed: HashMap::new(), owners: HashMap::new(), waiting: HashMap::new(), in_sync: false, udp: HashMap::new(), health: HealthChecks::default() };
        Self { services, slices, context, tables, queue, state: tokio::sync::Mutex::new(state) }
    }

    /// What the Service named `key` wants (its rules less the map keys others hold).
    fn wanted(&self, key: &str, state: &mut State) -> Wanted {
        let Some(service) = self.services.get(key) else { return Default::default() };
        let (namespace, name) = split_key(key);
        let slices = self.slices.filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace) && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
        });
        let udp = services::udp_ports(&service, &slices);
        let health = services::health_check(&service, &slices, &self.context);
        let mut rules = services::service_rules(&service, &slices, &self.context);
        rules.elements.retain(|element, _| match state.owners.get(element) {
            Some(owner) if owner != key => {
                tracing::warn!(service = key, owner = %owner, map = element.0.name(), key = ?element.1, "another Service already uses this address and port");
                state.waiting.entry(*element).or_default().insert(key.to_owned());
                false
            }
            _ => true,
        });
        Wanted { rules, udp, health }
    }

    /// Records what `key` now has in the kernel; wakes Services waiting for keys it let go.
    fn record(&self, key: &str, rules: Ruleset, state: &mut State) {
        let old = state.programmed.remove(key).unwrap_or_default();
        for element in old.elements.keys().filter(|e| !rules.elements.contains_key(*e)) {
            state.owners.remove(element);
            for waiting in state.waiting.remove(element).into_iter().flatten() {
                self.queue.add(waiting);
            }
        }
        for element in rules.elements.keys() {
            state.owners.insert(*element, key.to_owned());
        }
        if !rules.is_empty() {
            state.programmed.insert(key.to_owned(), rules);
        }
    }

    /// Rebuilds every table from the cache in one transaction.
    fn resync(&self, state: &mut State) -> Result<(), NetlinkError> {
        let started = Instant::now();
        let mut existing = BTreeMap::new();
        for table in self.tables.all() {
            existing.insert(table.to_owned(), list_table(&mut state.netlink, table)?);
        }
        state.programmed.clear();
        state.owners.clear();
        state.waiting.clear();
        state.udp.clear();
        let mut keys: Vec<String> = self.services.list().iter().map(|s| key_of(s.as_ref())).collect();
        keys.sort();
        state.health.retain(&keys.iter().cloned().collect());
        for key in keys {
            let Wanted { rules, udp, health } = self.wanted(&key, state);
            self.record(&key, rules, state);
            if let Err(e) = state.health.sync(&key, health) {
                tracing::warn!(service = key, error = %e, "serving the Service's health check node port failed");
            }
            if !udp.is_empty() {
                state.udp.insert(key, udp);
            }
        }
        let mut batch = Batch::new(&self.tables.shared);
        self.tables.resync(&mut batch, &existing, state.programmed.iter().map(|(k, r)| (k.as_str(), r)));
        state.netlink.apply(batch.ops())?;
        state.in_sync = true;
        tracing::info!(
            services = state.programmed.len(),
            messages = batch.ops().len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "service proxy rules rebuilt"
        );
        // Whatever changed while no proxy watched: every UDP port's flows are
        // checked. A failure is logged and not retried (the rules are right).
        let ports: Vec<UdpPort> = state.udp.values().flat_map(|ports| ports.values().cloned()).collect();
        let _ = clear_stale_flows("*", &ports, &mut state.netlink);
        Ok(())
    }
}

/// The names of the chains of `table` (none if it does not exist).
pub fn list_chains(netlink: &mut Nfnetlink, table: &str) -> Result<BTreeSet<String>, NetlinkError> {
    let mut names = BTreeSet::new();
    let chains = netlink.dump(NfTablesMessage::GetChain(ChainMessage { attributes: vec![ChainAttribute::Table(table.to_owned())] }))?;
    for message in chains {
        let NfTablesMessage::NewChain(chain) = message else { continue };
        let in_table = chain.attributes.iter().any(|a| matches!(a, ChainAttribute::Table(t) if t == table));
        if let Some(name) = chain.attributes.iter().find_map(|a| if let ChainAttribute::Name(n) = a { Some(n) } else { None }).filter(|_| in_table) {
            names.insert(name.clone());
        }
    }
    Ok(names)
}

/// The chains and named sets of `table` (empty if it does not exist yet).
pub fn list_table(netlink: &mut Nfnetlink, table: &str) -> Result<Existing, NetlinkError> {
    let mut existing = Existing { chains: list_chains(netlink, table)?, ..Default::default() };
    let sets = match netlink.dump(NfTablesMessage::GetSet(SetMessage { attributes: vec![SetAttribute::Table(table.to_owned())] })) {
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(existing), // no such table yet
        other => other?,
    };
    for message in sets {
        let NfTablesMessage::NewSet(set) = message else { continue };
        let in_table = set.attributes.iter().any(|a| matches!(a, SetAttribute::Table(t) if t == table));
        if let Some(name) = set.attributes.iter().find_map(|a| if let SetAttribute::Name(n) = a { Some(n) } else { None }).filter(|n| in_table && !n.starts_with("__")) {
            existing.sets.insert(name.clone());
        }
    }
    Ok(existing)
}

#[async_trait]
impl Reconciler for Proxier {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        // A table rebuilt from a partial cache would drop Services' rules.
        self.services.wait_synced().await;
        self.slices.wait_synced().await;
        let mut state = self.state.lock().await;
        let state = &mut *state;
        if !state.in_sync {
            if let Err(e) = self.resync(state) {
                tracing::warn!(error = %e, "rebuilding the service proxy's rules failed; retrying");
                return Err(e.into());
            }
            return Ok(Next::Done);
        }
        let Wanted { rules: wanted, udp, health } = self.wanted(key, state);
        let old = state.programmed.get(key).cloned().unwrap_or_default();
        if wanted != old {
            let mut batch = Batch::new(&self.tables.shared);
            self.tables.update(&mut batch, key, &old, &wanted);
            if let Err(e) = state.netlink.apply(batch.ops()) {
                tracing::warn!(service = key, error = %e, "programming a Service failed; the rules will be rebuilt");
                state.in_sync = false;
                return Err(e.into());
            }
            self.record(key, wanted, state);
        }
        // After the rules: a flow deleted before could be NATed the old way again.
        let old_udp = state.udp.remove(key).unwrap_or_default();
        if let Err(e) = clear_stale_flows(key, &conntrack::to_check(&old_udp, &udp), &mut state.netlink) {
            // Retried from the same starting point.
            if !old_udp.is_empty() {
                state.udp.insert(key.to_owned(), old_udp);
            }
            return Err(e.into());
        }
        if !udp.is_empty() {
            state.udp.insert(key.to_owned(), udp);
        }
        if let Err(e) = state.health.sync(key, health) {
            tracing::warn!(service = key, error = %e, "serving the Service's health check node port failed; retrying");
            return Err(e.into());
        }
        Ok(Next::Done)
    }
}

/// Deletes the flows stale for `ports` of Service `key` (`*`: every Service).
fn clear_stale_flows(key: &str, ports: &[UdpPort], netlink: &mut Nfnetlink) -> Result<(), NetlinkError> {
    if ports.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    match conntrack::clear_stale(netlink, ports) {
        Ok(deleted) => {
            tracing::debug!(service = key, deleted, elapsed_ms = started.elapsed().as_millis() as u64, "stale UDP flows cleared");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(service = key, error = %e, "clearing stale UDP conntrack entries failed; clients may keep reaching removed endpoints until their flows time out");
            Err(e)
        }
    }
}

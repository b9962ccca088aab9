//! The scheduler's view of the cluster (upstream's scheduler cache): one
//! `NodeInfo` per node with running totals of what the pods bound or assumed
//! there request, the host ports they hold and how many pods of each spread
//! group (controller, Service) they count. Totals change incrementally with
//! each informer change and each assumption, so filtering a node never walks
//! its pods.
//!
//! Assume-then-bind: a pod the scheduler has placed is counted on its node at
//! once ("assumed"), while the binding is still in flight; the assumption is
//! replaced by the real pod when the informer shows it bound, or forgotten if
//! the binding fails.

use super::pod_info::{HostPort, PodInfo};
use super::resources::{PodRequests, Resources};
use crate::api::quantity;
use crate::api::selector::LabelSelector;
use crate::runtime::key_of;
use k8s_openapi::api::core::v1::{Node, Pod, Service, Taint};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The kinds whose pods are spread across nodes (as upstream's SelectorSpread).
const SPREAD_OWNER_KINDS: [&str; 3] = ["ReplicaSet", "ReplicationController", "StatefulSet"];

/// One node and the running totals of the pods on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: Arc<str>,
    pub node: Arc<Node>,
    /// False while pods are bound to a node the informer does not (or no longer) show.
    pub present: bool,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    pub ready: bool,
    pub unschedulable: bool,
    pub requested: Resources,
    /// Requests with the defaults for missing CPU and memory requests (for scoring).
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub pod_count: i64,
    host_ports: Vec<(HostPort, u32)>,
    spread: HashMap<Arc<str>, u32>,
}

impl NodeInfo {
    fn new(name: Arc<str>) -> Self {
        let node = Node { metadata: kube::api::ObjectMeta { name: Some(name.to_string()), ..Default::default() }, ..Default::default() };
        NodeInfo {
            name,
            node: Arc::new(node),
            present: false,
            allocatable: Resources::default(),
            allowed_pods: 0,
            ready: false,
            unschedulable: false,
            requested: Resources::default(),
            non_zero_milli_cpu: 0,
            non_zero_memory: 0,
            pod_count: 0,
            host_ports: Vec::new(),
            spread: HashMap::new(),
        }
    }

    /// Takes in a new version of the node; true if it may now fit pods it did not fit before.
    fn set_node(&mut self, node: Arc<Node>) -> bool {
        let status = node.status.as_ref();
        let allocatable = status.and_then(|s| s.allocatable.as_ref());
        let ready = status.and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
        let new_allocatable = allocatable.map(Resources::from_list).unwrap_or_default();
        let allowed_pods = allocatable.and_then(|a| a.get("pods")).and_then(|q| quantity::value(&q.0)).unwrap_or(0);
        let may_help = !self.present
            || new_allocatable != self.allocatable
            || allowed_pods != self.allowed_pods
            || ready != self.ready
            || unschedulable != self.unschedulable
            || node.metadata.labels != self.node.metadata.labels
            || node.spec.as_ref().and_then(|s| s.taints.as_ref()) != self.node.spec.as_ref().and_then(|s| s.taints.as_ref());
        self.allocatable = new_allocatable;
        self.allowed_pods = allowed_pods;
        self.ready = ready;
        self.unschedulable = unschedulable;
        self.node = node;
        self.present = true;
        may_help
    }

    pub fn taints(&self) -> &[Taint] {
        self.node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default()
    }

    /// Whether a pod on this node already holds a port that `wanted` would conflict with.
    pub fn port_taken(&self, wanted: &HostPort) -> bool {
        self.host_ports.iter().any(|(held, _)| held.conflicts_with(wanted))
    }

    /// How many pods of spread group `group` are on this node.
    pub fn spread_count(&self, group: &str) -> u32 {
        self.spread.get(group).copied().unwrap_or(0)
    }

    fn add(&mut self, p: &Placed) {
        self.requested.add(&p.requests.exact);
        self.non_zero_milli_cpu += p.requests.non_zero_milli_cpu;
        self.non_zero_memory += p.requests.non_zero_memory;
        self.pod_count += 1;
        for port in &p.host_ports {
            match self.host_ports.iter_mut().find(|(held, _)| held == port) {
                Some((_, n)) => *n += 1,
                None => self.host_ports.push((port.clone(), 1)),
            }
        }
        for group in &p.groups {
            *self.spread.entry(group.clone()).or_default() += 1;
        }
    }

    fn remove(&mut self, p: &Placed) {
        self.requested.subtract(&p.requests.exact);
        self.non_zero_milli_cpu -= p.requests.non_zero_milli_cpu;
        self.non_zero_memory -= p.requests.non_zero_memory;
        self.pod_count -= 1;
        for port in &p.host_ports {
            if let Some(i) = self.host_ports.iter().position(|(held, _)| held == port) {
                self.host_ports[i].1 -= 1;
                if self.host_ports[i].1 == 0 {
                    self.host_ports.swap_remove(i);
                }
            }
        }
        for group in &p.groups {
            if let Some(n) = self.spread.get_mut(group) {
                *n -= 1;
                if *n == 0 {
                    self.spread.remove(group);
                }
            }
        }
    }
}

/// What one pod contributes to its node's totals.
struct Placed {
    node: Arc<str>,
    requests: PodRequests,
    host_ports: Vec<HostPort>,
    groups: Vec<Arc<str>>,
    /// Placed by this scheduler, not yet seen bound by the informer.
    assumed: bool,
    pod: Arc<Pod>,
}

/// Nodes, the pods placed on them, and the Services that define spread groups.
#[derive(Default)]
pub struct Cache {
    slots: Vec<NodeInfo>,
    slot_of: HashMap<Arc<str>, usize>,
    placed: HashMap<String, Placed>,
    /// Per namespace: each Service's spread group and selector.
    services: HashMap<String, BTreeMap<String, (Arc<str>, LabelSelector)>>,
}

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("")
}

impl Cache {
    /// Every node slot, including ones only kept for pods bound to a node that is gone
    /// (`present == false`).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.slots
    }

    #[cfg(test)]
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.slot_of.get(name).map(|i| &self.slots[*i])
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(i) = self.slot_of.get(name) {
            return *i;
        }
        let name: Arc<str> = Arc::from(name);
        self.slots.push(NodeInfo::new(name.clone()));
        self.slot_of.insert(name, self.slots.len() - 1);
        self.slots.len() - 1
    }

    /// Drops a slot that has neither a node nor pods.
    fn release_if_empty(&mut self, name: &str) {
        let Some(&i) = self.slot_of.get(name) else { return };
        if self.slots[i].present || self.slots[i].pod_count > 0 {
            return;
        }
        self.slot_of.remove(name);
        self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.slot_of.insert(moved.name.clone(), i);
        }
    }

    /// Adds or updates a node; true if pods that did not fit before may fit now.
    pub fn set_node(&mut self, node: Arc<Node>) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        let i = self.slot(&name);
        self.slots[i].set_node(node)
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(&i) = self.slot_of.get(name) {
            self.slots[i].present = false;
            self.release_if_empty(name);
        }
    }

    /// The groups a pod spreads with: its controller (ReplicaSet, ReplicationController,
    /// StatefulSet) and every Service of its namespace that selects it.
    pub fn spread_groups(&self, pod: &Pod) -> Vec<Arc<str>> {
        let namespace = namespace_of(pod);
        let mut groups: Vec<Arc<str>> = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.controller == Some(true) && SPREAD_OWNER_KINDS.contains(&o.kind.as_str()))
            .map(|o| Arc::from(format!("{namespace}/{}/{}", o.kind, o.name)))
            .collect();
        if let Some(services) = self.services.get(namespace) {
            let empty = BTreeMap::new();
            let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
            groups.extend(services.values().filter(|(_, s)| s.matches(labels)).map(|(g, _)| g.clone()));
        }
        groups
    }

    fn placed_from(&self, pod: &Arc<Pod>, node: Arc<str>, assumed: bool) -> Placed {
        // Pods on their way out no longer count for spreading, as upstream.
        let groups = if pod.metadata.deletion_timestamp.is_some() { Vec::new() } else { self.spread_groups(pod) };
        let requests = pod.spec.as_ref().map(PodRequests::of).unwrap_or_default();
        Placed { node, requests, host_ports: HostPort::of(pod), groups, assumed, pod: pod.clone() }
    }

    fn place(&mut self, key: String, placed: Placed) {
        self.unplace(&key);
        let i = self.slot(&placed.node);
        self.slots[i].add(&placed);
        self.placed.insert(key, placed);
    }

    fn unplace(&mut self, key: &str) -> Option<Placed> {
        let placed = self.placed.remove(key)?;
        if let Some(&i) = self.slot_of.get(&placed.node) {
            self.slots[i].remove(&placed);
            let name = placed.node.clone();
            self.release_if_empty(&name);
        }
        Some(placed)
    }

    /// Takes in a pod the informer shows bound to a node: it replaces any
    /// assumption; a finished pod stops counting. True if room was freed.
    pub fn set_bound_pod(&mut self, pod: &Arc<Pod>) -> bool {
        let key = key_of(pod.as_ref());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return self.unplace(&key).is_some();
        }
        let node: Arc<str> = Arc::from(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or(""));
        let placed = self.placed_from(pod, node, false);
        self.place(key, placed);
        false
    }

    /// Forgets a deleted pod; true if it was counted on a node.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        self.unplace(key).is_some()
    }

    /// Counts `pod` on `node` before its binding is confirmed.
    pub fn assume(&mut self, pod: &PodInfo, node: &Arc<str>) {
        let placed = Placed {
            node: node.clone(),
            requests: pod.requests.clone(),
            host_ports: pod.host_ports.clone(),
            groups: pod.spread_groups.clone(),
            assumed: true,
            pod: pod.pod.clone(),
        };
        self.place(pod.key.clone(), placed);
    }

    /// Drops an assumption whose binding failed; a pod already seen bound stays.
    pub fn forget(&mut self, key: &str) {
        if self.placed.get(key).is_some_and(|p| p.assumed) {
            self.unplace(key);
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.placed.get(key).is_some_and(|p| p.assumed)
    }

    /// Adds or updates a Service; pods it selects form a spread group.
    pub fn set_service(&mut self, service: &Service) {
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty())
            .and_then(|s| LabelSelector::from_match(s, &[]).ok());
        let services = self.services.entry(namespace.clone()).or_default();
        match selector {
            Some(selector) => {
                let group: Arc<str> = Arc::from(format!("{namespace}/Service/{name}"));
                if services.get(&name).is_some_and(|(_, s)| *s == selector) {
                    return;
                }
                services.insert(name, (group, selector));
            }
            None => {
                if services.remove(&name).is_none() {
                    return;
                }
            }
        }
        self.regroup(&namespace);
    }

    pub fn remove_service(&mut self, service: &Service) {
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        if self.services.get_mut(&namespace).is_some_and(|s| s.remove(name).is_some()) {
            self.regroup(&namespace);
        }
    }

    /// Recounts the spread groups of the pods in `namespace` after its Services changed.
    fn regroup(&mut self, namespace: &str) {
        let keys: Vec<String> = self.placed.iter().filter(|(_, p)| namespace_of(&p.pod) == namespace).map(|(k, _)| k.clone()).collect();
        for key in keys {
            let Some(old) = self.placed.get(&key) else { continue };
            let placed = self.placed_from(&old.pod.clone(), old.node.clone(), old.assumed);
            self.place(key, placed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
                "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap(),
        )
    }

    fn pod(name: &str, node: &str, cpu: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
                "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}},
                    "ports": [{"containerPort": 80, "hostPort": 80}]}]}}))
            .unwrap(),
        )
    }

    #[test]
    fn totals_follow_pods_bound_updated_and_deleted() {
        let mut cache = Cache::default();
        assert!(cache.set_node(node("n1")));
        assert!(!cache.set_node(node("n1")), "an identical update cannot make room");
        cache.set_bound_pod(&pod("a", "n1", "500m", json!({})));
        cache.set_bound_pod(&pod("b", "n1", "1", json!({})));
        let n = cache.node("n1").unwrap();
        assert_eq!((n.requested.milli_cpu, n.pod_count, n.spread_count("default/ReplicaSet/web")), (1500, 2, 2));
        assert!(n.port_taken(&HostPort { protocol: "TCP".into(), ip: "10.1.1.1".into(), port: 80 }));
        cache.set_bound_pod(&pod("b", "n1", "2", json!({})));
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 2500, "an update replaces, never adds twice");
        assert!(cache.remove_pod("default/a"));
        assert!(cache.remove_pod("default/b"));
        let n = cache.node("n1").unwrap();
        assert_eq!((n.requested.milli_cpu, n.pod_count, n.spread_count("default/ReplicaSet/web")), (0, 0, 0));
        assert!(!n.port_taken(&HostPort { protocol: "TCP".into(), ip: "0.0.0.0".into(), port: 80 }));
    }

    #[test]
    fn finished_pods_free_their_node() {
        let mut cache = Cache::default();
        cache.set_node(node("n1"));
        let p = pod("a", "n1", "1", json!({}));
        cache.set_bound_pod(&p);
        let mut done = (*p).clone();
        done.status = Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
        assert!(cache.set_bound_pod(&Arc::new(done)));
        assert_eq!(cache.node("n1").unwrap().pod_count, 0);
    }

    #[test]
    fn an_assumption_is_replaced_when_seen_bound_and_forgotten_on_failure() {
        let mut cache = Cache::default();
        cache.set_node(node("n1"));
        let unbound = pod("a", "", "1", json!({}));
        let info = PodInfo::new(unbound.clone(), cache.spread_groups(&unbound));
        cache.assume(&info, &Arc::from("n1"));
        assert!(cache.is_assumed("default/a"));
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 1000);
        cache.forget("default/a");
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 0);

        cache.assume(&info, &Arc::from("n1"));
        cache.set_bound_pod(&pod("a", "n1", "1", json!({})));
        assert!(!cache.is_assumed("default/a"));
        cache.forget("default/a");
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 1000, "a confirmed pod is not forgotten");
    }

    #[test]
    fn pods_on_unknown_nodes_are_kept_until_they_go() {
        let mut cache = Cache::default();
        cache.set_bound_pod(&pod("a", "ghost", "1", json!({})));
        assert!(!cache.node("ghost").unwrap().present, "no such node, only its pod");
        assert_eq!(cache.node("ghost").unwrap().requested.milli_cpu, 1000);
        assert!(cache.set_node(node("ghost")), "the node appearing is news");
        assert_eq!(cache.node("ghost").unwrap().requested.milli_cpu, 1000, "its pods were kept");
        cache.remove_node("ghost");
        assert!(cache.node("ghost").is_some(), "kept while a pod is bound there");
        cache.remove_pod("default/a");
        assert!(cache.node("ghost").is_none());
    }

    #[test]
    fn services_define_spread_groups_of_the_pods_they_select() {
        let mut cache = Cache::default();
        cache.set_node(node("n1"));
        cache.set_bound_pod(&pod("a", "n1", "1", json!({"app": "web"})));
        let service: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"selector": {"app": "web"}}})).unwrap();
        cache.set_service(&service);
        assert_eq!(cache.node("n1").unwrap().spread_count("default/Service/web"), 1, "pods already placed join the new group");
        let groups = cache.spread_groups(&pod("b", "", "1", json!({"app": "web"})));
        assert_eq!(groups.iter().map(|g| g.as_ref()).collect::<Vec<_>>(), ["default/ReplicaSet/web", "default/Service/web"]);
        cache.remove_service(&service);
        assert_eq!(cache.node("n1").unwrap().spread_count("default/Service/web"), 0);
    }
}

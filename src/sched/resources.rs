//! What pods request and nodes offer, in the scheduler's integer units
//! (millicores, bytes, counts), computed like upstream's `PodRequests`: the sum
//! of the containers, raised to what any init container needs while it runs
//! (sidecars, init containers with `restartPolicy: Always`, keep running and
//! add up), plus the pod's overhead.

use crate::api::quantity;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// The CPU a container without a CPU request counts as when spreading load (upstream's 100m).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory a container without a memory request counts as when spreading load (200Mi).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Amounts of resources: requested by a pod, requested on a node, or allocatable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Every other named resource (`nvidia.com/gpu`, `hugepages-2Mi`, …) in whole units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a resource list; `pods` is a node's capacity, not a resource pods request, so it is left out.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut out = Resources::default();
        for (name, q) in list {
            match name.as_str() {
                "cpu" => out.milli_cpu = quantity::milli_value(&q.0).unwrap_or(0),
                "memory" => out.memory = quantity::value(&q.0).unwrap_or(0),
                "ephemeral-storage" => out.ephemeral_storage = quantity::value(&q.0).unwrap_or(0),
                "pods" => {}
                other => {
                    out.scalar.insert(other.to_owned(), quantity::value(&q.0).unwrap_or(0));
                }
            }
        }
        out
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_default();
            *slot = slot.saturating_add(*v);
        }
    }

    pub fn subtract(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_default();
            *slot = slot.saturating_sub(*v);
            if *slot == 0 {
                self.scalar.remove(name);
            }
        }
    }

    /// Raises each amount to at least `other`'s.
    fn raise_to(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_default();
            *slot = (*slot).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0 && self.memory == 0 && self.ephemeral_storage == 0 && self.scalar.values().all(|v| *v == 0)
    }
}

/// A pod's requests, exact and with the defaults for missing CPU and memory
/// requests (what spreading by load counts, upstream's "non-zero" requests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRequests {
    pub exact: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
}

impl PodRequests {
    pub fn of(spec: &PodSpec) -> Self {
        let with_defaults = total(spec, true);
        PodRequests { exact: total(spec, false), non_zero_milli_cpu: with_defaults.milli_cpu, non_zero_memory: with_defaults.memory }
    }
}

fn container_requests(c: &Container, defaults: bool) -> Resources {
    let list = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let mut r = list.map(Resources::from_list).unwrap_or_default();
    if defaults {
        if !list.is_some_and(|l| l.contains_key("cpu")) {
            r.milli_cpu += DEFAULT_MILLI_CPU_REQUEST;
        }
        if !list.is_some_and(|l| l.contains_key("memory")) {
            r.memory += DEFAULT_MEMORY_REQUEST;
        }
    }
    r
}

fn total(spec: &PodSpec, defaults: bool) -> Resources {
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c, defaults));
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let own = container_requests(c, defaults);
        let while_running = if c.restart_policy.as_deref() == Some("Always") {
            sum.add(&own);
            sidecars.add(&own);
            sidecars.clone()
        } else {
            let mut r = own;
            r.add(&sidecars);
            r
        };
        init_peak.raise_to(&while_running);
    }
    sum.raise_to(&init_peak);
    if let Some(overhead) = &spec.overhead {
        sum.add(&Resources::from_list(overhead));
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    fn container(name: &str, requests: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "image": "x", "resources": {"requests": requests}})
    }

    #[test]
    fn containers_add_up_and_units_are_millicores_and_bytes() {
        let r = PodRequests::of(&spec(json!({"containers": [
            container("a", json!({"cpu": "250m", "memory": "64Mi", "ephemeral-storage": "1Gi", "example.com/dongle": "2"})),
            container("b", json!({"cpu": "1", "memory": "1Gi"})),
        ]})));
        assert_eq!(r.exact.milli_cpu, 1250);
        assert_eq!(r.exact.memory, (64 << 20) + (1 << 30));
        assert_eq!(r.exact.ephemeral_storage, 1 << 30);
        assert_eq!(r.exact.scalar.get("example.com/dongle"), Some(&2));
    }

    #[test]
    fn missing_requests_count_as_defaults_only_for_spreading() {
        let r = PodRequests::of(&spec(json!({"containers": [{"name": "a", "image": "x"}, container("b", json!({"cpu": "0"}))]})));
        assert!(r.exact.is_zero());
        assert_eq!(r.non_zero_milli_cpu, DEFAULT_MILLI_CPU_REQUEST, "an explicit 0 stays 0");
        assert_eq!(r.non_zero_memory, 2 * DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn init_containers_raise_the_peak_and_sidecars_add_up() {
        let r = PodRequests::of(&spec(json!({
            "initContainers": [container("setup", json!({"cpu": "2"}))],
            "containers": [container("app", json!({"cpu": "500m"}))],
        })));
        assert_eq!(r.exact.milli_cpu, 2000, "the init container needs more than the app");
        let r = PodRequests::of(&spec(json!({
            "initContainers": [
                {"name": "proxy", "image": "x", "restartPolicy": "Always", "resources": {"requests": {"cpu": "300m"}}},
                container("migrate", json!({"cpu": "1"})),
            ],
            "containers": [container("app", json!({"cpu": "500m"}))],
            "overhead": {"cpu": "10m"},
        })));
        assert_eq!(r.exact.milli_cpu, 1310, "the migration runs beside the sidecar (1300m) > app + sidecar (800m), plus overhead");
    }

    #[test]
    fn subtracting_what_was_added_gives_back_the_start() {
        let mut node = Resources { milli_cpu: 100, memory: 10, ephemeral_storage: 1, scalar: BTreeMap::new() };
        let pod = Resources { milli_cpu: 50, memory: 5, ephemeral_storage: 1, scalar: [("x".to_owned(), 1)].into() };
        let before = node.clone();
        node.add(&pod);
        node.subtract(&pod);
        assert_eq!(node, before);
    }
}

//! The schemas of the served kinds, generated from k8s-openapi's types, plus the
//! list and patch semantics Kubernetes declares on its Go types (merge keys, list
//! types). One source feeds the OpenAPI documents kubectl reads, strategic merge
//! patch and server-side apply, so all three agree on how a list merges.

use super::registry::Registry;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ListMeta, Status};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// How Kubernetes merges one list field of one schema.
struct ListSemantics {
    schema: &'static str,
    field: &'static str,
    patch_strategy: &'static str,
    merge_key: &'static str,
    list_type: &'static str,
    map_keys: &'static [&'static str],
}

const fn list(
    schema: &'static str,
    field: &'static str,
    patch_strategy: &'static str,
    merge_key: &'static str,
    list_type: &'static str,
    map_keys: &'static [&'static str],
) -> ListSemantics {
    ListSemantics { schema, field, patch_strategy, merge_key, list_type, map_keys }
}

/// Lists absent here are atomic: replaced whole by patches and owned whole by one manager.
const LIST_SEMANTICS: &[ListSemantics] = &[
    list("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", "merge", "", "set", &[]),
    list("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", "merge", "uid", "map", &["uid"]),
    list("io.k8s.api.core.v1.PodSpec", "volumes", "merge,retainKeys", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.PodSpec", "initContainers", "merge", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.PodSpec", "containers", "merge", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "merge", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "merge", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.PodSpec", "hostAliases", "merge", "ip", "map", &["ip"]),
    list("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", "merge", "topologyKey", "map", &["topologyKey", "whenUnsatisfiable"]),
    list("io.k8s.api.core.v1.PodSpec", "schedulingGates", "merge", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.PodSpec", "resourceClaims", "merge,retainKeys", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.Container", "ports", "merge", "containerPort", "map", &["containerPort", "protocol"]),
    list("io.k8s.api.core.v1.Container", "env", "merge", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.Container", "volumeMounts", "merge", "mountPath", "map", &["mountPath"]),
    list("io.k8s.api.core.v1.Container", "volumeDevices", "merge", "devicePath", "map", &["devicePath"]),
    list("io.k8s.api.core.v1.EphemeralContainer", "ports", "merge", "containerPort", "map", &["containerPort", "protocol"]),
    list("io.k8s.api.core.v1.EphemeralContainer", "env", "merge", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", "merge", "mountPath", "map", &["mountPath"]),
    list("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", "merge", "devicePath", "map", &["devicePath"]),
    list("io.k8s.api.core.v1.PodStatus", "conditions", "merge", "type", "map", &["type"]),
    list("io.k8s.api.core.v1.PodStatus", "podIPs", "merge", "ip", "map", &["ip"]),
    list("io.k8s.api.core.v1.PodStatus", "hostIPs", "merge", "ip", "map", &["ip"]),
    list("io.k8s.api.core.v1.ServiceSpec", "ports", "merge", "port", "map", &["port", "protocol"]),
    list("io.k8s.api.core.v1.ServiceStatus", "conditions", "merge", "type", "map", &["type"]),
    list("io.k8s.api.core.v1.NodeSpec", "podCIDRs", "merge", "", "set", &[]),
    list("io.k8s.api.core.v1.NodeStatus", "conditions", "merge", "type", "map", &["type"]),
    list("io.k8s.api.core.v1.NodeStatus", "addresses", "merge", "type", "map", &["type"]),
    list("io.k8s.api.core.v1.NamespaceStatus", "conditions", "merge", "type", "map", &["type"]),
    list("io.k8s.api.core.v1.ServiceAccount", "secrets", "merge", "name", "map", &["name"]),
    list("io.k8s.api.core.v1.ReplicationControllerStatus", "conditions", "merge", "type", "map", &["type"]),
    list("io.k8s.api.apps.v1.DeploymentStatus", "conditions", "merge", "type", "map", &["type"]),
    list("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", "merge", "type", "map", &["type"]),
    list("io.k8s.api.apps.v1.DaemonSetStatus", "conditions", "merge", "type", "map", &["type"]),
    list("io.k8s.api.apps.v1.StatefulSetStatus", "conditions", "merge", "type", "map", &["type"]),
];

/// Struct fields Kubernetes treats as retain-keys unions (patching one member clears the others).
const RETAIN_KEYS: &[(&str, &str)] = &[("io.k8s.api.apps.v1.DeploymentSpec", "strategy")];

/// Structs that are replaced and owned as a whole rather than field by field.
const ATOMIC_STRUCTS: &[&str] = &["io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"];

const REF_PREFIX: &str = "#/components/schemas/";

/// All component schemas of the served kinds, with Kubernetes' extensions.
pub struct Types {
    defs: Map<String, Value>,
}

impl Types {
    pub fn new(registry: &Registry) -> Self {
        let mut generator = SchemaSettings::openapi3().into_generator();
        for r in registry.all() {
            r.strategy.schema(&mut generator);
        }
        // Shared types the OpenAPI documents reference besides the kinds.
        generator.subschema_for::<ListMeta>();
        generator.subschema_for::<Status>();
        generator.subschema_for::<DeleteOptions>();
        // Bodies of subresources.
        generator.subschema_for::<k8s_openapi::api::core::v1::Binding>();
        generator.subschema_for::<k8s_openapi::api::authentication::v1::TokenRequest>();
        Self::from_definitions(generator.take_definitions(true))
    }

    /// Types from generated definitions (`components.schemas`), adding Kubernetes'
    /// list and patch semantics.
    pub fn from_definitions(mut defs: Map<String, Value>) -> Self {
        for l in LIST_SEMANTICS {
            if let Some(prop) = defs.get_mut(l.schema).and_then(|s| s.pointer_mut(&format!("/properties/{}", l.field))) {
                prop["x-kubernetes-patch-strategy"] = json!(l.patch_strategy);
                if !l.merge_key.is_empty() {
                    prop["x-kubernetes-patch-merge-key"] = json!(l.merge_key);
                }
                prop["x-kubernetes-list-type"] = json!(l.list_type);
                if !l.map_keys.is_empty() {
                    prop["x-kubernetes-list-map-keys"] = json!(l.map_keys);
                }
            }
        }
        for (schema, field) in RETAIN_KEYS {
            if let Some(prop) = defs.get_mut(*schema).and_then(|s| s.pointer_mut(&format!("/properties/{field}"))) {
                prop["x-kubernetes-patch-strategy"] = json!("retainKeys");
            }
        }
        for schema in ATOMIC_STRUCTS {
            if let Some(s) = defs.get_mut(*schema) {
                s["x-kubernetes-map-type"] = json!("atomic");
            }
        }
        Self { defs }
    }

    pub fn definitions(&self) -> &Map<String, Value> {
        &self.defs
    }

    /// The schema of a named definition (a kind's top-level type).
    pub fn root(&self, schema_name: &str) -> Node<'_> {
        Node { types: self, schema: self.defs.get(schema_name) }
    }

    fn deref<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        // `$ref`, possibly wrapped in `allOf` beside a description; bounded to avoid cycles.
        for _ in 0..8 {
            let target = schema
                .get("$ref")
                .or_else(|| schema.get("allOf")?.get(0)?.get("$ref"))
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
                .and_then(|name| self.defs.get(name));
            match target {
                Some(t) => schema = t,
                None => break,
            }
        }
        schema
    }
}

/// How a list merges, for patches and ownership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// Scalars merged as a set.
    Set,
    /// Objects merged by these key fields.
    Map(Vec<String>),
}

/// A position in a schema while walking an object. An unknown position (`schema`
/// is `None`) behaves as free-form data: objects merge, lists are atomic.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    types: &'a Types,
    schema: Option<&'a Value>,
}

impl<'a> Node<'a> {
    fn with(&self, schema: Option<&'a Value>) -> Self {
        Node { types: self.types, schema }
    }

    /// The schema after following references (extensions stay on the referring side).
    fn resolved(&self) -> Option<&'a Value> {
        self.schema.map(|s| self.types.deref(s))
    }

    /// The schema of a field of an object, or of any value of a map.
    pub fn field(&self, name: &str) -> Self {
        let Some(s) = self.resolved() else { return self.with(None) };
        let child = s.get("properties").and_then(|p| p.get(name)).or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
        self.with(child)
    }

    /// The field of an object whose name satisfies `matches`, with its schema.
    pub fn find_field(&self, matches: impl Fn(&str) -> bool) -> Option<(&'a str, Self)> {
        let properties = self.resolved()?.get("properties")?.as_object()?;
        properties.iter().find(|(name, _)| matches(name)).map(|(name, schema)| (name.as_str(), self.with(Some(schema))))
    }

    /// Whether a struct lists `field` as required.
    pub fn requires(&self, field: &str) -> bool {
        self.resolved()
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|f| f.as_str() == Some(field)))
    }

    /// Whether this is a map (`additionalProperties`) rather than a struct.
    pub fn is_map(&self) -> bool {
        self.resolved().is_some_and(|s| s.get("additionalProperties").is_some_and(Value::is_object))
    }

    /// The schema of a list's items.
    pub fn items(&self) -> Self {
        self.with(self.resolved().and_then(|s| s.get("items")))
    }

    fn extension(&self, name: &str) -> Option<&'a Value> {
        let s = self.schema?;
        s.get(name).or_else(|| self.resolved()?.get(name))
    }

    pub fn list_type(&self) -> ListType {
        match self.extension("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                self.extension("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|keys| keys.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default(),
            ),
            _ => ListType::Atomic,
        }
    }

    /// The strategic-merge-patch strategies of this field (`merge`, `retainKeys`, `replace`).
    pub fn patch_strategies(&self) -> Vec<&'a str> {
        self.extension("x-kubernetes-patch-strategy").and_then(Value::as_str).map(|s| s.split(',').collect()).unwrap_or_default()
    }

    pub fn patch_merge_key(&self) -> Option<&'a str> {
        self.extension("x-kubernetes-patch-merge-key").and_then(Value::as_str)
    }

    /// Whether this is a struct owned and replaced as one unit.
    pub fn is_atomic_struct(&self) -> bool {
        self.extension("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
    }
}

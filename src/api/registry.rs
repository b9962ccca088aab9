//! The resource registry: what rk serves, as data. A kind is a [`Resource`]
//! descriptor (names, scope, subresources, table columns) plus a few typed hooks
//! (defaulting, validation, lifecycle); the generic REST machinery in `rest.rs`
//! does everything else the same way for every kind, as Kubernetes' generic
//! registry store does.

use super::error::FieldError;
use super::object::human_age;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// Subresources the generic machinery knows how to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes change only `.status`; main writes never do.
    Status,
    /// `/scale` as an `autoscaling/v1` Scale over `spec.replicas`.
    Scale,
    /// `pods/binding`: assigns a pod to a node.
    Binding,
    /// `namespaces/finalize`: writes `spec.finalizers` only.
    Finalize,
    /// `serviceaccounts/token`: issues a TokenRequest.
    Token,
    /// `pods/log`, `pods/exec`, `pods/attach`, `pods/portforward`: streams
    /// served by the node agent running the pod (`nodeproxy.rs`).
    Log,
    Exec,
    Attach,
    PortForward,
}

impl Subresource {
    pub fn path(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
            Self::Binding => "binding",
            Self::Finalize => "finalize",
            Self::Token => "token",
            Self::Log => "log",
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portforward",
        }
    }

    /// Whether the node agent running the object (a pod) serves it.
    pub fn streams(self) -> bool {
        matches!(self, Self::Log | Self::Exec | Self::Attach | Self::PortForward)
    }
}

/// How object names of a kind are validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces, services).
    Label,
    /// Anything usable as a URL path segment (events, leases).
    PathSegment,
}

/// One column of a kind's Table.
#[derive(Clone, Debug)]
pub struct ColumnDef {
    pub name: &'static str,
    pub kind: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
}

impl ColumnDef {
    pub fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

type Cell<T> = fn(&T) -> Value;
/// How long a deletion of this object waits, given the grace the client asked for.
type GracePeriod<T> = fn(&T, Option<i64>) -> Option<i64>;

/// A typed column: its definition and how to render a cell.
pub struct Column<T> {
    pub def: ColumnDef,
    pub cell: Cell<T>,
}

impl<T: k8s_openapi::Metadata<Ty = ObjectMeta>> Column<T> {
    pub fn name() -> Self {
        Self {
            def: ColumnDef {
                name: "Name",
                kind: "string",
                format: "name",
                description: "Name must be unique within a namespace.",
                priority: 0,
            },
            cell: |o| json!(o.metadata().name.clone().unwrap_or_default()),
        }
    }

    pub fn age() -> Self {
        Self {
            def: ColumnDef {
                name: "Age",
                kind: "string",
                format: "",
                description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
                priority: 0,
            },
            cell: |o| {
                json!(o.metadata().creation_timestamp.as_ref().map_or("<unknown>".into(), |t| human_age(&t.0.to_string())))
            },
        }
    }
}

impl<T> Column<T> {
    pub fn new(name: &'static str, kind: &'static str, description: &'static str, cell: Cell<T>) -> Self {
        Self { def: ColumnDef { name, kind, format: "", description, priority: 0 }, cell }
    }

    /// Shown only with `-o wide`.
    pub fn wide(mut self) -> Self {
        self.def.priority = 1;
        self
    }
}

/// Why a write was refused by a kind's hooks.
#[derive(Debug)]
pub enum AdmitError {
    /// The body is not a valid object of this kind (wrong types).
    Decode(String),
    /// The object decoded but breaks the kind's rules.
    Invalid(Vec<FieldError>),
}

/// The per-kind behaviour the generic machinery calls, over untyped objects.
pub trait Strategy: Send + Sync {
    /// Decodes into the typed form and back: checks field types and drops fields
    /// the kind does not have.
    fn round_trip(&self, obj: &Value) -> Result<Value, String>;
    /// Applies defaults, creation-time preparation (on create) and validation.
    fn admit(&self, obj: Value, old: Option<&Value>) -> Result<Value, AdmitError>;
    /// Applies defaults only (used to compare a patch result with the stored object).
    fn default(&self, obj: Value) -> Result<Value, String>;
    /// The Table cells of one object.
    fn cells(&self, obj: &Value) -> Vec<Value>;
    /// The grace period a deletion waits for, if the kind deletes gracefully.
    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64>;
    /// The typed schema, for OpenAPI.
    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
    fn schema_name(&self) -> String;
}

/// Everything rk knows about one kind it serves.
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: String,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    pub subresources: &'static [Subresource],
    /// Whether `metadata.generation` counts spec changes.
    pub tracks_generation: bool,
    pub name_rule: NameRule,
    /// Whether an update of a missing object creates it (leases, endpoints).
    pub create_on_update: bool,
    /// Whether an immediate delete answers with the deleted object rather than
    /// a success Status (upstream's `ReturnDeletedObject`: pods, services).
    pub returns_deleted_object: bool,
    /// Whether a create may set `.status` (nodes); other kinds with a status
    /// subresource start with an empty one, as upstream's strategies do.
    pub status_on_create: bool,
    /// Fields usable in field selectors besides metadata.name and metadata.namespace.
    pub selectable_fields: &'static [&'static str],
    pub columns: Vec<ColumnDef>,
    pub strategy: Box<dyn Strategy>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    pub fn error_name(&self) -> super::error::ResourceName<'_> {
        super::error::ResourceName { group: self.group, plural: self.plural }
    }

    /// The store key prefix for all objects of this kind, or those of one namespace.
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() { "core" } else { self.group };
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("/registry/{group}/{}/{ns}/", self.plural),
            None => format!("/registry/{group}/{}/", self.plural),
        }
    }

    pub fn key(&self, namespace: &str, name: &str) -> String {
        format!("{}{name}", self.key_prefix(Some(namespace)))
    }
}

/// Builds a [`Resource`] for a k8s-openapi type with typed hooks.
pub struct ResourceBuilder<T> {
    resource: Descriptor,
    hooks: Hooks<T>,
}

/// A [`Resource`] before its strategy is built.
struct Descriptor {
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
    tracks_generation: bool,
    name_rule: NameRule,
    create_on_update: bool,
    returns_deleted_object: bool,
    status_on_create: bool,
    selectable_fields: &'static [&'static str],
}

struct Hooks<T> {
    defaults: Vec<fn(&mut T)>,
    on_create: Option<fn(&mut T)>,
    validate: Option<fn(&T) -> Vec<FieldError>>,
    validate_update: Option<fn(&T, &T) -> Vec<FieldError>>,
    grace_period: Option<GracePeriod<T>>,
    columns: Vec<Column<T>>,
}

pub trait Object:
    k8s_openapi::Resource<Scope: 'static>
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + schemars::JsonSchema
    + Send
    + Sync
    + 'static
{
}

impl<T> Object for T where
    T: k8s_openapi::Resource<Scope: 'static>
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + schemars::JsonSchema
        + Send
        + Sync
        + 'static
{
}

fn is_namespaced<T: Object>() -> bool {
    std::any::TypeId::of::<T::Scope>() == std::any::TypeId::of::<k8s_openapi::NamespaceResourceScope>()
}

impl<T: Object> ResourceBuilder<T> {
    pub fn new() -> Self {
        Self {
            resource: Descriptor {
                short_names: &[],
                categories: &[],
                subresources: &[],
                tracks_generation: false,
                name_rule: NameRule::Subdomain,
                create_on_update: false,
                returns_deleted_object: false,
                status_on_create: false,
                selectable_fields: &[],
            },
            hooks: Hooks {
                defaults: Vec::new(),
                on_create: None,
                validate: None,
                validate_update: None,
                grace_period: None,
                columns: Vec::new(),
            },
        }
    }

    pub fn short_names(mut self, names: &'static [&'static str]) -> Self {
        self.resource.short_names = names;
        self
    }
    pub fn categories(mut self, categories: &'static [&'static str]) -> Self {
        self.resource.categories = categories;
        self
    }
    pub fn subresources(mut self, subresources: &'static [Subresource]) -> Self {
        self.resource.subresources = subresources;
        self
    }
    pub fn tracks_generation(mut self) -> Self {
        self.resource.tracks_generation = true;
        self
    }
    pub fn names(mut self, rule: NameRule) -> Self {
        self.resource.name_rule = rule;
        self
    }
    pub fn create_on_update(mut self) -> Self {
        self.resource.create_on_update = true;
        self
    }
    pub fn returns_deleted_object(mut self) -> Self {
        self.resource.returns_deleted_object = true;
        self
    }
    pub fn status_on_create(mut self) -> Self {
        self.resource.status_on_create = true;
        self
    }
    pub fn selectable_fields(mut self, fields: &'static [&'static str]) -> Self {
        self.resource.selectable_fields = fields;
        self
    }
    /// Adds a defaulting function; several run in order.
    pub fn default(mut self, f: fn(&mut T)) -> Self {
        self.hooks.defaults.push(f);
        self
    }
    /// Runs once when an object is created, after defaulting (e.g. initial status).
    pub fn on_create(mut self, f: fn(&mut T)) -> Self {
        self.hooks.on_create = Some(f);
        self
    }
    pub fn validate(mut self, f: fn(&T) -> Vec<FieldError>) -> Self {
        self.hooks.validate = Some(f);
        self
    }
    /// Extra rules for updates (immutable fields), given the new and the old object.
    pub fn validate_update(mut self, f: fn(&T, &T) -> Vec<FieldError>) -> Self {
        self.hooks.validate_update = Some(f);
        self
    }
    pub fn grace_period(mut self, f: GracePeriod<T>) -> Self {
        self.hooks.grace_period = Some(f);
        self
    }
    /// The Table columns; Name and Age are not implied so each kind orders them as kubectl users know.
    pub fn columns(mut self, columns: Vec<Column<T>>) -> Self {
        self.hooks.columns = columns;
        self
    }

    pub fn build(mut self) -> Resource {
        if self.hooks.columns.is_empty() {
            self.hooks.columns = vec![Column::name(), Column::age()];
        }
        let d = self.resource;
        Resource {
            group: T::GROUP,
            version: T::VERSION,
            kind: T::KIND,
            plural: T::URL_PATH_SEGMENT,
            singular: T::KIND.to_ascii_lowercase(),
            short_names: d.short_names,
            categories: d.categories,
            namespaced: is_namespaced::<T>(),
            subresources: d.subresources,
            tracks_generation: d.tracks_generation,
            name_rule: d.name_rule,
            create_on_update: d.create_on_update,
            returns_deleted_object: d.returns_deleted_object,
            status_on_create: d.status_on_create,
            selectable_fields: d.selectable_fields,
            columns: self.hooks.columns.iter().map(|c| c.def.clone()).collect(),
            strategy: Box::new(Typed { hooks: self.hooks, _t: PhantomData }),
        }
    }
}

impl<T: Object> Default for ResourceBuilder<T> {
    fn default() -> Self {
        Self::new()
    }
}

struct Typed<T> {
    hooks: Hooks<T>,
    _t: PhantomData<fn() -> T>,
}

fn decode<T: DeserializeOwned>(obj: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { e.into_inner().to_string() } else { format!("{path}: {}", e.into_inner()) }
    })
}

fn encode<T: Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).expect("typed objects always serialize")
}

impl<T: Object> Typed<T> {
    fn defaulted(&self, obj: &Value) -> Result<T, String> {
        let mut typed: T = decode(obj)?;
        for f in &self.hooks.defaults {
            f(&mut typed);
        }
        Ok(typed)
    }
}

impl<T: Object> Strategy for Typed<T> {
    fn round_trip(&self, obj: &Value) -> Result<Value, String> {
        decode::<T>(obj).map(|t| encode(&t))
    }

    fn admit(&self, obj: Value, old: Option<&Value>) -> Result<Value, AdmitError> {
        let mut typed = self.defaulted(&obj).map_err(AdmitError::Decode)?;
        let mut errors = Vec::new();
        match old {
            None => {
                if let Some(f) = self.hooks.on_create {
                    f(&mut typed);
                }
            }
            Some(old) => {
                if let Some(f) = self.hooks.validate_update {
                    let old: T = decode(old).map_err(AdmitError::Decode)?;
                    errors.extend(f(&typed, &old));
                }
            }
        }
        if let Some(f) = self.hooks.validate {
            errors.extend(f(&typed));
        }
        if !errors.is_empty() {
            return Err(AdmitError::Invalid(errors));
        }
        Ok(encode(&typed))
    }

    fn default(&self, obj: Value) -> Result<Value, String> {
        self.defaulted(&obj).map(|t| encode(&t))
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        match decode::<T>(obj) {
            Ok(typed) => self.hooks.columns.iter().map(|c| (c.cell)(&typed)).collect(),
            Err(_) => self.hooks.columns.iter().map(|_| Value::Null).collect(),
        }
    }

    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        let f = self.hooks.grace_period?;
        f(&decode::<T>(obj).ok()?, requested)
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<T>()
    }

    fn schema_name(&self) -> String {
        T::schema_name().into_owned()
    }
}

/// All served resources, looked up by URL and by kind.
pub struct Registry {
    resources: Vec<Arc<Resource>>,
    /// Keyed by `group/version/plural`.
    by_path: HashMap<String, Arc<Resource>>,
}

impl Registry {
    pub fn new(resources: Vec<Resource>) -> Self {
        let resources: Vec<Arc<Resource>> = resources.into_iter().map(Arc::new).collect();
        let by_path = resources.iter().map(|r| (format!("{}/{}/{}", r.group, r.version, r.plural), r.clone())).collect();
        Self { resources, by_path }
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<Resource>> {
        self.by_path.get(&format!("{group}/{version}/{plural}"))
    }

    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&Arc<Resource>> {
        self.resources.iter().find(|r| r.group == group && r.kind == kind)
    }

    pub fn all(&self) -> &[Arc<Resource>] {
        &self.resources
    }

    /// Served group-versions in registration order, the core group first.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&'static str, &'static str)> = Vec::new();
        for r in &self.resources {
            if !out.contains(&(r.group, r.version)) {
                out.push((r.group, r.version));
            }
        }
        out
    }
}

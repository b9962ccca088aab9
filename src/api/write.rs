//! The write verbs of the generic machinery: create, update, patch, delete and
//! deletecollection. Every write goes through the same steps: decode and check the
//! body, merge with the stored object as the subresource dictates, default and
//! validate through the kind's strategy, track field ownership, then a
//! compare-and-swap in the store, retried on conflict unless the client gave a
//! resourceVersion precondition.

use super::admission;
use super::allocator;
use super::codec::{self, Output};
use super::error::{ApiError, ApiResult, FieldError};
use super::fields::{self, Manager};
use super::object::{ObjectExt, format_time, now_rfc3339};
use super::patch::{self, PatchType};
use super::registry::{AdmitError, Subresource};
use super::rest::{Ctx, decode_stored};
use super::validation;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

/// How many times a write without a precondition is retried after losing a race.
const MAX_CONFLICT_RETRIES: usize = 64;

/// `DeleteOptions` from the body and query.
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Propagation,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

/// What one attempt at a read-modify-write produced.
enum Attempt {
    Done(Value),
    /// The object changed underneath; read it again.
    Retry,
}

/// Fields a client may not set: the server owns them.
const SYSTEM_META: &[&str] =
    &["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "selfLink"];

impl Ctx {
    fn field_manager(&self, default_prefix: &str) -> String {
        if let Some(m) = self.query.get("fieldManager") {
            return m.to_owned();
        }
        let agent = self.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let name = agent.split('/').next().unwrap_or("").trim();
        if name.is_empty() { default_prefix.to_owned() } else { name.to_owned() }
    }

    fn manager<'a>(&self, name: &'a str, api_version: &'a str, time: &'a str, sub: Option<Subresource>) -> Manager<'a> {
        Manager { name, api_version, subresource: if sub == Some(Subresource::Status) { "status" } else { "" }, time }
    }

    /// Checks a body's kind and field types against the resource and drops (or
    /// refuses, with `fieldValidation=Strict`) fields the kind does not have.
    pub fn decode_body(&mut self, mut body: Value) -> ApiResult<Value> {
        let r = self.resource.clone();
        let api_version = r.api_version();
        match body.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => body["apiVersion"] = json!(api_version),
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        match body.get("kind").and_then(Value::as_str) {
            None | Some("") => body["kind"] = json!(r.kind),
            Some(k) if k == r.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    r.kind
                )));
            }
        }
        let typed = r.strategy.round_trip(&body).map_err(|e| {
            ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {e}", r.kind, r.version, r.kind))
        })?;
        let mut unknown = Vec::new();
        unknown_fields(&body, &typed, "", &mut unknown);
        if !unknown.is_empty() {
            let described: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
            match self.query.get("fieldValidation").unwrap_or("Warn") {
                "Strict" => return Err(ApiError::bad_request(format!("strict decoding error: {}", described.join(", ")))),
                "Ignore" => {}
                "Warn" => self.warnings.extend(described),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
                    )));
                }
            }
        }
        Ok(typed)
    }

    /// Defaults and validates through the kind's strategy, plus the metadata rules every kind shares.
    fn admit(&self, obj: Value, old: Option<&Value>) -> ApiResult<Value> {
        let r = &self.resource;
        let mut errors = obj.meta().map(|m| validation::object_meta(m, r.name_rule, r.namespaced)).unwrap_or_default();
        let name = if obj.name().is_empty() { obj.meta_str("generateName").unwrap_or("").to_owned() } else { obj.name().to_owned() };
        match r.strategy.admit(obj, old) {
            Ok(v) if errors.is_empty() => Ok(v),
            Ok(_) => Err(ApiError::invalid(r.kind, r.group, &name, &errors)),
            Err(AdmitError::Decode(m)) => Err(ApiError::bad_request(m)),
            Err(AdmitError::Invalid(e)) => {
                errors.extend(e);
                Err(ApiError::invalid(r.kind, r.group, &name, &errors))
            }
        }
    }

    /// Creates an object from a decoded-or-raw body. Used by POST, by PUT on kinds
    /// that create on update, and by server-side apply of a missing object.
    pub async fn create(&mut self, body: Value) -> ApiResult<Value> {
        let mut obj = self.decode_body(body)?;
        let namespace = self.namespace().to_owned();
        let r = self.resource.clone();
        if r.namespaced {
            match obj.meta_str("namespace") {
                None | Some("") => obj.set_meta("namespace", namespace.clone()),
                Some(ns) if ns == namespace => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        } else {
            obj.remove_meta("namespace");
        }
        for f in SYSTEM_META.iter().chain(&["resourceVersion"]) {
            obj.remove_meta(f);
        }
        if r.has(Subresource::Status) && !r.status_on_create {
            obj.as_object_mut().map(|o| o.remove("status"));
        }
        obj.set_meta("uid", uuid::Uuid::new_v4().to_string());
        obj.set_meta("creationTimestamp", now_rfc3339());
        if r.tracks_generation {
            obj.set_meta("generation", 1);
        }
        let display_name = if obj.name().is_empty() { obj.meta_str("generateName").unwrap_or("").to_owned() } else { obj.name().to_owned() };
        if obj.name().is_empty()
            && let Some(prefix) = obj.meta_str("generateName").filter(|p| !p.is_empty()) {
                let name = generate_name(prefix);
                obj.set_meta("name", name);
            }
        admission::check_create(self, &obj).await?;
        admission::mutate_create(self, &mut obj).await?;
        let mut obj = self.admit(obj, None)?;
        admission::check_quota(self, &obj, &display_name).await?;
        if !self.is_apply() {
            let (now, manager_name, api_version) = (now_rfc3339(), self.field_manager("unknown"), r.api_version());
            fields::track_update(None, &mut obj, &self.manager(&manager_name, &api_version, &now, None), self.schema_node());
        }
        let name = obj.name().to_owned();
        if self.query.dry_run()? {
            return Ok(obj);
        }
        let taken = match allocator::allocates(&r) {
            true => allocator::allocate(&self.api.store, &self.api.ranges, &mut obj, None).await?,
            false => allocator::Taken::default(),
        };
        let created = self.api.store.create(&self.key(&name), encode_for_store(&obj)).await;
        let rev = match created {
            Ok(rev) => rev,
            Err(e) => {
                allocator::release(&self.api.store, &self.api.ranges, &taken).await;
                return Err(ApiError::from_store(e, r.error_name(), &name));
            }
        };
        obj.set_meta("resourceVersion", rev.to_string());
        Ok(obj)
    }

    fn is_apply(&self) -> bool {
        codec::content_type(&self.headers) == PatchType::Apply.media_type()
    }

    pub fn schema_node(&self) -> crate::api::schema::Node<'_> {
        self.api.types.root(&self.resource.strategy.schema_name())
    }

    /// PUT: replaces an object (or its status, or a namespace's finalizers).
    pub async fn update(&mut self, body: Value, sub: Option<Subresource>) -> ApiResult<(StatusCode, Value)> {
        let name = self.name()?.to_owned();
        if let Some(body_name) = body.meta_str("name").filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body = self.decode_body(body)?;
        let precondition = body.meta_str("resourceVersion").map(str::to_owned);
        let resource = self.resource.clone();
        let result = self
            .guaranteed_update(&name, sub, |old| {
                check_precondition(&resource, old, precondition.as_deref())?;
                Ok(body.clone())
            })
            .await;
        match result {
            Err(e) if e.code == 404 && self.resource.create_on_update && sub.is_none() => {
                let mut body = body;
                body.set_meta("name", name);
                Ok((StatusCode::CREATED, self.create(body).await?))
            }
            other => other.map(|o| (StatusCode::OK, o)),
        }
    }

    /// Read-modify-write of one object: `mutate` turns the stored object into the
    /// desired one; the result then goes through the common update steps. Retries
    /// when the object changes underneath.
    pub async fn guaranteed_update(
        &mut self,
        name: &str,
        sub: Option<Subresource>,
        mut mutate: impl FnMut(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let r = self.resource.clone();
        for _ in 0..MAX_CONFLICT_RETRIES {
            let kv = self
                .api
                .store
                .get(&self.key(name))
                .await
                .map_err(|e| ApiError::from_store(e, r.error_name(), name))?
                .ok_or_else(|| ApiError::not_found(r.error_name(), name))?;
            let old = decode_stored(&kv)?;
            let desired = mutate(&old)?;
            match self.commit_update(&old, kv.mod_revision, desired, sub).await? {
                Attempt::Done(v) => return Ok(v),
                Attempt::Retry => continue,
            }
        }
        Err(ApiError::modified(r.error_name(), name))
    }

    /// The common tail of every update: subresource rules, system metadata,
    /// admission, generation, field ownership, no-op detection, finalization, CAS.
    async fn commit_update(&mut self, old: &Value, old_rev: u64, desired: Value, sub: Option<Subresource>) -> ApiResult<Attempt> {
        let r = self.resource.clone();
        let mut new = compose_update(old, desired, sub, r.has(Subresource::Status));
        let mut new_meta = new.meta_mut().clone();
        for f in SYSTEM_META.iter().chain(&["name", "namespace"]) {
            match old.meta().and_then(|m| m.get(*f)) {
                Some(v) => new_meta.insert((*f).to_owned(), v.clone()),
                None => new_meta.remove(*f),
            };
        }
        if !new_meta.contains_key("managedFields")
            && let Some(mf) = old.meta().and_then(|m| m.get("managedFields")) {
                new_meta.insert("managedFields".into(), mf.clone());
            }
        new_meta.insert("resourceVersion".into(), old_rev.to_string().into());
        *new.meta_mut() = new_meta;
        // A binding only assigns the node, as upstream's binding storage does: the
        // pod's update rules (which forbid changing spec.nodeName) do not apply.
        let mut new = if sub == Some(Subresource::Binding) { new } else { self.admit(new, Some(old))? };
        if r.tracks_generation && spec_of(&new) != spec_of(old) {
            let generation = old.meta().and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(0);
            new.set_meta("generation", generation + 1);
        }
        if !self.is_apply() {
            let (now, manager_name, api_version) = (now_rfc3339(), self.field_manager("unknown"), r.api_version());
            fields::track_update(Some(old), &mut new, &self.manager(&manager_name, &api_version, &now, sub), self.schema_node());
        }
        if unchanged(old, &new) {
            return Ok(Attempt::Done(old.clone()));
        }
        let name = new.name().to_owned();
        let key = self.key(&name);
        let dry_run = self.query.dry_run()?;
        if new.is_deleting() && !finalizers_pending(&new, r.has(Subresource::Finalize)) {
            if dry_run {
                return Ok(Attempt::Done(new));
            }
            return match self.api.store.delete(&key, Some(old_rev)).await {
                Ok(_) => {
                    if allocator::allocates(&r) {
                        allocator::release(&self.api.store, &self.api.ranges, &allocator::held(&self.api.ranges, old)).await;
                    }
                    Ok(Attempt::Done(new))
                }
                Err(crate::store::StoreError::Conflict { .. }) => Ok(Attempt::Retry),
                Err(e) => Err(ApiError::from_store(e, r.error_name(), &name)),
            };
        }
        if dry_run {
            return Ok(Attempt::Done(new));
        }
        let taken = match allocator::allocates(&r) {
            true => allocator::allocate(&self.api.store, &self.api.ranges, &mut new, Some(old)).await?,
            false => allocator::Taken::default(),
        };
        match self.api.store.update(&key, encode_for_store(&new), old_rev).await {
            Ok(rev) => {
                if allocator::allocates(&r) {
                    allocator::release(&self.api.store, &self.api.ranges, &allocator::dropped(&self.api.ranges, old, &new)).await;
                }
                new.set_meta("resourceVersion", rev.to_string());
                Ok(Attempt::Done(new))
            }
            Err(e) => {
                allocator::release(&self.api.store, &self.api.ranges, &taken).await;
                match e {
                    crate::store::StoreError::Conflict { .. } => Ok(Attempt::Retry),
                    e => Err(ApiError::from_store(e, r.error_name(), &name)),
                }
            }
        }
    }

    /// PATCH with any of the four patch types.
    pub async fn patch(&mut self, media: &str, bytes: &Bytes, sub: Option<Subresource>) -> ApiResult<Response> {
        let patch_type = PatchType::from_media(media)?;
        let name = self.name()?.to_owned();
        if patch_type == PatchType::Apply {
            return self.server_side_apply(&name, bytes, sub).await;
        }
        let patch = patch::parse(patch_type, bytes)?;
        let scale = sub == Some(Subresource::Scale);
        let api = self.api.clone();
        let node = api.types.root(&self.resource.strategy.schema_name());
        let r = self.resource.clone();
        let mut warnings = Vec::new();
        let obj = self
            .guaranteed_update(&name, if scale { None } else { sub }, |old| {
                if scale {
                    let patched = patch::apply(patch_type, &super::rest::scale_of(old), &patch, None)?;
                    let mut new = old.clone();
                    new["spec"]["replicas"] = json!(super::rest::scale_replicas(&patched)?);
                    return Ok(new);
                }
                let patched = patch::apply(patch_type, old, &patch, Some(node))?;
                check_precondition(&r, old, patched.meta_str("resourceVersion"))?;
                let (typed, unknown) = check_patched(&r, patched)?;
                warnings = unknown;
                Ok(typed)
            })
            .await?;
        self.warnings.extend(warnings);
        if scale {
            return Ok(codec::respond(StatusCode::OK, &super::rest::scale_of(&obj), self.output));
        }
        Ok(self.respond(StatusCode::OK, &obj))
    }

    async fn server_side_apply(&mut self, name: &str, bytes: &Bytes, sub: Option<Subresource>) -> ApiResult<Response> {
        let applied = codec::parse_body(bytes, "application/yaml")?;
        for required in ["apiVersion", "kind"] {
            if applied.get(required).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(format!("{required} must be set")));
            }
        }
        if applied.meta_str("name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                applied.name()
            )));
        }
        let Some(manager_name) = self.query.get("fieldManager").map(str::to_owned) else {
            return Err(ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                &[FieldError::required("fieldManager", "is required for apply patch")],
            ));
        };
        let force = self.query.flag("force")?;
        let applied = self.decode_body(applied)?;
        let now = now_rfc3339();
        let api = self.api.clone();
        let node = api.types.root(&self.resource.strategy.schema_name());
        let api_version = self.resource.api_version();
        let manager = self.manager(&manager_name, &api_version, &now, sub);
        let exists = self.api.store.get(&self.key(name)).await.map_err(|e| ApiError::from_store(e, self.resource.error_name(), name))?.is_some();
        if !exists && sub.is_none() {
            let mut created = fields::apply(None, &applied, &manager, force, node).map_err(|c| apply_conflict(&c))?;
            created.set_meta("name", name);
            let obj = self.create(created).await?;
            return Ok(self.respond(StatusCode::CREATED, &obj));
        }
        let obj = self
            .guaranteed_update(name, sub, |old| fields::apply(Some(old), &applied, &manager, force, node).map_err(|c| apply_conflict(&c)))
            .await?;
        Ok(self.respond(StatusCode::OK, &obj))
    }

    pub fn delete_options(&self, body: &[u8]) -> ApiResult<DeleteOptions> {
        let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            codec::parse_body(body, &codec::content_type(&self.headers))?
        };
        let mut options = DeleteOptions {
            grace_period: body.get("gracePeriodSeconds").and_then(Value::as_i64),
            uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned),
            resource_version: body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_owned),
            dry_run: body.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v == "All")) || self.query.dry_run()?,
            ..Default::default()
        };
        if let Some(g) = self.query.number("gracePeriodSeconds")? {
            options.grace_period = Some(g);
        }
        let policy = self.query.get("propagationPolicy").or_else(|| body.get("propagationPolicy").and_then(Value::as_str));
        options.propagation = match policy {
            None => match body.get("orphanDependents").and_then(Value::as_bool).or(self.query.flag("orphanDependents").ok().filter(|b| *b)) {
                Some(true) => Propagation::Orphan,
                _ => Propagation::Background,
            },
            Some("Background") => Propagation::Background,
            Some("Foreground") => Propagation::Foreground,
            Some("Orphan") => Propagation::Orphan,
            Some(other) => {
                return Err(ApiError::invalid(
                    "DeleteOptions",
                    "meta.k8s.io",
                    "",
                    &[FieldError::not_supported("propagationPolicy", other, &["Foreground", "Background", "Orphan", "nil"])],
                ));
            }
        };
        if let Some(g) = options.grace_period.filter(|g| *g < 0) {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                &[FieldError::invalid("gracePeriodSeconds", g, "must be greater than or equal to 0")],
            ));
        }
        Ok(options)
    }

    /// DELETE of one object: immediate, graceful (pods), or pending finalizers.
    pub async fn delete(&mut self, name: String, options: &DeleteOptions) -> ApiResult<(StatusCode, Value)> {
        let r = self.resource.clone();
        admission::check_delete(self, &name)?;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let key = self.key(&name);
            let kv = self
                .api
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::from_store(e, r.error_name(), &name))?
                .ok_or_else(|| ApiError::not_found(r.error_name(), &name))?;
            let old = decode_stored(&kv)?;
            if let Some(uid) = options.uid.as_deref().filter(|u| *u != old.uid()) {
                return Err(ApiError::conflict(r.error_name(), &name, &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old.uid()
                )));
            }
            if let Some(rv) = options.resource_version.as_deref().filter(|rv| Some(*rv) != old.meta_str("resourceVersion")) {
                return Err(ApiError::conflict(r.error_name(), &name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in meta: {}",
                    old.meta_str("resourceVersion").unwrap_or("")
                )));
            }
            let mut new = old.clone();
            let mut pending = false;
            if let Some(grace) = r.strategy.grace_period(&old, options.grace_period).filter(|g| *g > 0) {
                let current = old.meta().and_then(|m| m.get("deletionGracePeriodSeconds")).and_then(Value::as_i64);
                if old.is_deleting() && current.is_some_and(|c| c <= grace) {
                    return Ok((StatusCode::ACCEPTED, old));
                }
                let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                new.set_meta("deletionTimestamp", format_time(deadline));
                new.set_meta("deletionGracePeriodSeconds", grace);
                pending = true;
            }
            let mut finalizers: Vec<String> = new.finalizers().into_iter().map(str::to_owned).collect();
            let added = match options.propagation {
                Propagation::Orphan => Some("orphan"),
                Propagation::Foreground => Some("foregroundDeletion"),
                Propagation::Background => None,
            };
            if let Some(f) = added.filter(|f| !finalizers.iter().any(|x| x == f)).filter(|_| !old.is_deleting()) {
                finalizers.push(f.to_owned());
                new.set_meta("finalizers", finalizers.clone());
            }
            if !finalizers.is_empty() || finalizers_pending(&new, r.has(Subresource::Finalize)) {
                if old.is_deleting() && !pending && new == old {
                    return Ok((StatusCode::ACCEPTED, old));
                }
                if !new.is_deleting() {
                    new.set_meta("deletionTimestamp", now_rfc3339());
                    new.set_meta("deletionGracePeriodSeconds", 0);
                }
                if r.has(Subresource::Finalize) {
                    new["status"]["phase"] = json!("Terminating");
                }
                pending = true;
            }
            if pending {
                if options.dry_run {
                    return Ok((StatusCode::ACCEPTED, new));
                }
                match self.api.store.update(&key, encode_for_store(&new), kv.mod_revision).await {
                    Ok(rev) => {
                        new.set_meta("resourceVersion", rev.to_string());
                        return Ok((StatusCode::ACCEPTED, new));
                    }
                    Err(crate::store::StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_store(e, r.error_name(), &name)),
                }
            }
            if options.dry_run {
                return Ok((StatusCode::OK, old));
            }
            match self.api.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(_) => {
                    if allocator::allocates(&r) {
                        allocator::release(&self.api.store, &self.api.ranges, &allocator::held(&self.api.ranges, &old)).await;
                    }
                    return Ok((StatusCode::OK, deleted_response(&r, old)));
                }
                Err(crate::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, r.error_name(), &name)),
            }
        }
        Err(ApiError::modified(r.error_name(), &name))
    }

    pub async fn delete_collection(&mut self, options: &DeleteOptions) -> ApiResult<Response> {
        let selectors = self.selectors()?;
        let (prefix, _) = self.list_range(&selectors);
        let page = self
            .api
            .store
            .list(crate::store::ListRequest { prefix, ..Default::default() })
            .await
            .map_err(|e| ApiError::from_store(e, self.resource.error_name(), ""))?;
        let mut deleted = Vec::new();
        for kv in &page.items {
            let obj = decode_stored(kv)?;
            if !selectors.matches(&self.resource, &obj) {
                continue;
            }
            match self.delete(obj.name().to_owned(), options).await {
                Ok((_, v)) => deleted.push(if v.get("kind") == Some(&json!("Status")) { obj } else { v }),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let list = json!({
            "kind": format!("{}List", self.resource.kind),
            "apiVersion": self.resource.api_version(),
            "metadata": { "resourceVersion": self.api.store.revision().to_string() },
            "items": deleted,
        });
        Ok(codec::respond(StatusCode::OK, &list, if self.output == Output::Yaml { Output::Yaml } else { Output::Json }))
    }
}

/// Upstream answers an immediate delete with the object for kinds that say so
/// and with a success Status for the others.
fn deleted_response(r: &super::registry::Resource, old: Value) -> Value {
    if r.returns_deleted_object {
        return old;
    }
    let mut details = json!({ "name": old.name(), "kind": r.plural, "uid": old.uid() });
    if !r.group.is_empty() {
        details["group"] = json!(r.group);
    }
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details })
}

fn apply_conflict(conflicts: &[fields::Conflict]) -> ApiError {
    let mut e = ApiError::bad_request(fields::conflict_message(conflicts));
    e.code = 409;
    e.reason = "Conflict";
    e.details = Some(json!({
        "causes": conflicts.iter().map(|c| json!({
            "type": "FieldManagerConflict",
            "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version),
            "field": c.path,
        })).collect::<Vec<_>>()
    }));
    e
}

fn check_precondition(r: &super::registry::Resource, old: &Value, rv: Option<&str>) -> ApiResult<()> {
    match rv {
        Some(rv) if Some(rv) != old.meta_str("resourceVersion") => Err(ApiError::modified(r.error_name(), old.name())),
        _ => Ok(()),
    }
}

/// Type-checks a patched object; unknown fields introduced by a patch are dropped with a warning.
fn check_patched(r: &super::registry::Resource, patched: Value) -> ApiResult<(Value, Vec<String>)> {
    let typed = r.strategy.round_trip(&patched).map_err(|e| {
        ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {e}", r.kind, r.version, r.kind))
    })?;
    let mut unknown = Vec::new();
    unknown_fields(&patched, &typed, "", &mut unknown);
    Ok((typed, unknown.into_iter().map(|f| format!("unknown field \"{f}\"")).collect()))
}

/// Builds the object an update stores, from the stored one and the client's.
fn compose_update(old: &Value, desired: Value, sub: Option<Subresource>, has_status: bool) -> Value {
    match sub {
        Some(Subresource::Status) => {
            let mut new = old.clone();
            match desired.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
            if let Some(mf) = desired.meta().and_then(|m| m.get("managedFields")) {
                new.set_meta("managedFields", mf.clone());
            }
            new
        }
        Some(Subresource::Binding) => desired,
        Some(Subresource::Finalize) => {
            let mut new = old.clone();
            new["spec"]["finalizers"] = desired.pointer("/spec/finalizers").cloned().unwrap_or_else(|| json!([]));
            new
        }
        _ => {
            let mut new = desired;
            if has_status {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            }
            new
        }
    }
}

/// Everything but metadata and status: what `metadata.generation` counts changes of.
fn spec_of(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|o| o.iter().filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status")).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Whether an update changes nothing but bookkeeping (resourceVersion, managed-field times).
fn unchanged(old: &Value, new: &Value) -> bool {
    fn normalized(v: &Value) -> Value {
        let mut v = v.clone();
        let meta = v.meta_mut();
        meta.remove("resourceVersion");
        if let Some(Value::Array(entries)) = meta.get_mut("managedFields") {
            for e in entries {
                if let Some(o) = e.as_object_mut() {
                    o.remove("time");
                }
            }
        }
        v
    }
    normalized(old) == normalized(new)
}

/// Whether finalizers still hold a deleting object: `metadata.finalizers`, or a
/// namespace's `spec.finalizers` for kinds with the finalize subresource.
fn finalizers_pending(obj: &Value, spec_finalizers: bool) -> bool {
    !obj.finalizers().is_empty()
        || (spec_finalizers && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty()))
}

/// The bytes stored for an object: everything but its resourceVersion, which the store's revision is.
pub fn encode_for_store(obj: &Value) -> Bytes {
    let mut obj = obj.clone();
    obj.remove_meta("resourceVersion");
    Bytes::from(serde_json::to_vec(&obj).expect("JSON values always serialize"))
}

/// Appends a random suffix to a `generateName` prefix, as upstream does (5 characters, no vowels).
fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let prefix: String = prefix.chars().take(63 - 5).collect();
    let random = uuid::Uuid::new_v4();
    let suffix: String = random.as_bytes().iter().take(5).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    format!("{prefix}{suffix}")
}

/// Collects paths of fields present in `input` but dropped by the typed round trip.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &child, out),
                    None if !v.is_null() => out.push(child),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, (iv, tv)) in i.iter().zip(t).enumerate() {
                unknown_fields(iv, tv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_reported_with_their_paths() {
        let input = json!({"spec": {"replicas": 1, "bogus": 2, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}, "extra": null});
        let typed = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}]}}}});
        let mut out = Vec::new();
        unknown_fields(&input, &typed, "", &mut out);
        assert_eq!(out, ["spec.bogus", "spec.template.spec.containers[0].imagee"]);
    }

    #[test]
    fn generated_names_extend_the_prefix_with_five_safe_characters() {
        let name = generate_name("web-");
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert!(name[4..].chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn bookkeeping_only_changes_are_no_ops() {
        let old = json!({"metadata": {"name": "a", "resourceVersion": "5", "managedFields": [{"manager": "m", "time": "t1"}]}, "data": {"k": "v"}});
        let mut new = old.clone();
        new["metadata"]["resourceVersion"] = json!("9");
        new["metadata"]["managedFields"][0]["time"] = json!("t2");
        assert!(unchanged(&old, &new));
        new["data"]["k"] = json!("w");
        assert!(!unchanged(&old, &new));
    }

    #[test]
    fn status_updates_keep_everything_but_status() {
        let old = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}, "status": {"replicas": 0}});
        let desired = json!({"metadata": {"labels": {"a": "2"}}, "spec": {"replicas": 5}, "status": {"replicas": 3}});
        let new = compose_update(&old, desired.clone(), Some(Subresource::Status), true);
        assert_eq!(new, json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}, "status": {"replicas": 3}}));
        let new = compose_update(&old, desired, None, true);
        assert_eq!(new["status"], json!({"replicas": 0}));
        assert_eq!(new["spec"]["replicas"], 5);
    }
}

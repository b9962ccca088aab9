//! The generic REST machinery: one implementation of get, list, watch, create,
//! update, patch and delete for every registered kind. A request is resolved to a
//! [`Resource`] and a verb; kind-specific behaviour comes only from the resource's
//! descriptor and strategy.

use super::Api;
use super::auth::Identity;
use super::codec::{self, Output};
use super::error::{ApiError, ApiResult};
use super::object::ObjectExt;
use super::registry::{Resource, Subresource};
use super::request::{Query, ResourcePath, Verb};
use super::selector::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use crate::store::{KeyValue, ListRequest, Revision};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

/// One request to a resource, with everything the verbs need.
pub struct Ctx {
    pub api: Arc<Api>,
    pub resource: Arc<Resource>,
    pub path: ResourcePath,
    pub query: Query,
    pub output: Output,
    pub user: Identity,
    pub headers: HeaderMap,
    /// Warnings for the `Warning` response header (unknown fields, deprecations).
    pub warnings: Vec<String>,
}

/// Serves any request under `/api` and `/apis` that names a resource.
pub async fn serve(api: Arc<Api>, user: Identity, request: http::Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    tracing::debug!(
        method = %parts.method,
        uri = %parts.uri,
        content_type = ?parts.headers.get(http::header::CONTENT_TYPE),
        accept = ?parts.headers.get(http::header::ACCEPT),
        user = %user.user,
        "request"
    );
    let Some(path) = super::request::parse_path(parts.uri.path()) else {
        return not_found_path().into_response();
    };
    let Some(resource) = api.registry.lookup(&path.group, &path.version, &path.plural).cloned() else {
        return not_found_path().into_response();
    };
    let streaming = path.subresource.as_deref().and_then(|s| resource.subresources.iter().copied().find(|r| r.path() == s)).filter(|s| s.streams());
    if let (Some(sub), Some(name), Some(namespace)) = (streaming, path.name.as_deref(), path.namespace.as_deref()) {
        return super::nodeproxy::serve(api, sub, namespace, name, http::Request::from_parts(parts, body)).await;
    }
    let query = Query::parse(parts.uri.query());
    let output = match Output::negotiate(&parts.headers) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let mut ctx = Ctx { api, resource, path, query, output, user, headers: parts.headers, warnings: Vec::new() };
    let result = ctx.dispatch(&parts.method, body).await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    for w in &ctx.warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {}", serde_json::to_string(w).unwrap_or_default())) {
            response.headers_mut().append(http::header::WARNING, v);
        }
    }
    response
}

pub fn not_found_path() -> ApiError {
    let mut e = ApiError::bad_request("the server could not find the requested resource");
    e.code = 404;
    e.reason = "NotFound";
    e.details = Some(json!({}));
    e
}

impl Ctx {
    async fn dispatch(&mut self, method: &http::Method, body: Body) -> ApiResult<Response> {
        let verb = super::request::verb(method, &self.path, &self.query)?;
        self.check_scope(verb)?;
        let sub = match self.path.subresource.as_deref() {
            None => None,
            Some(s) => Some(
                self.resource
                    .subresources
                    .iter()
                    .copied()
                    .find(|r| r.path() == s)
                    .ok_or_else(not_found_path)?,
            ),
        };
        match (verb, sub) {
            (Verb::Get, None | Some(Subresource::Status | Subresource::Finalize)) => self.get().await,
            (Verb::Get, Some(Subresource::Scale)) => self.get_scale().await,
            (Verb::List, None) => self.list().await,
            (Verb::Watch, None) => self.watch().await,
            (Verb::Create, None) => {
                let body = self.read_object(body).await?;
                let obj = self.create(body).await?;
                Ok(self.respond(StatusCode::CREATED, &obj))
            }
            (Verb::Create, Some(Subresource::Binding)) => {
                let body = self.read_body_as(body, "io.k8s.api.core.v1.Binding").await?;
                self.bind(body).await
            }
            (Verb::Create, Some(Subresource::Token)) => {
                let body = self.read_body_as(body, "io.k8s.api.authentication.v1.TokenRequest").await?;
                self.token_request(body).await
            }
            (Verb::Update, None | Some(Subresource::Status | Subresource::Finalize)) => {
                let body = self.read_object(body).await?;
                let (code, obj) = self.update(body, sub).await?;
                Ok(self.respond(code, &obj))
            }
            (Verb::Update, Some(Subresource::Scale)) => {
                let body = self.read_object(body).await?;
                self.update_scale(body).await
            }
            (Verb::Patch, None | Some(Subresource::Status | Subresource::Scale)) => {
                let media = codec::content_type(&self.headers);
                let bytes = codec::read_body(body).await?;
                self.patch(&media, &bytes, sub).await
            }
            (Verb::Delete, None) => {
                let bytes = codec::read_body(body).await?;
                let options = self.delete_options(&bytes)?;
                let (code, obj) = self.delete(self.name()?.to_owned(), &options).await?;
                Ok(self.respond(code, &obj))
            }
            (Verb::DeleteCollection, None) => {
                let bytes = codec::read_body(body).await?;
                let options = self.delete_options(&bytes)?;
                self.delete_collection(&options).await
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "{} is not supported on {}{}",
                method,
                self.resource.plural,
                sub.map(|s| format!("/{}", s.path())).unwrap_or_default()
            ))),
        }
    }

    /// Namespaced kinds need a namespace to name or create an object; cluster-scoped ones never take one.
    fn check_scope(&self, verb: Verb) -> ApiResult<()> {
        match (self.resource.namespaced, self.path.namespace.is_some()) {
            (false, true) => Err(not_found_path()),
            (true, false) if !matches!(verb, Verb::List | Verb::Watch) => Err(not_found_path()),
            _ => Ok(()),
        }
    }

    pub fn namespace(&self) -> &str {
        self.path.namespace.as_deref().unwrap_or("")
    }

    pub fn name(&self) -> ApiResult<&str> {
        self.path.name.as_deref().ok_or_else(not_found_path)
    }

    pub fn key(&self, name: &str) -> String {
        self.resource.key(self.namespace(), name)
    }

    pub fn respond(&self, code: StatusCode, obj: &Value) -> Response {
        let body = match self.output {
            Output::Table(v) => {
                let include = IncludeObject::parse(self.query.get("includeObject")).unwrap_or(IncludeObject::Metadata);
                table::table(&self.resource, std::slice::from_ref(obj), json!({}), include, v, true)
            }
            Output::Metadata(v) if obj.get("kind").and_then(Value::as_str) == Some(self.resource.kind) => {
                table::partial_metadata(obj, v)
            }
            _ => obj.clone(),
        };
        codec::respond(code, &body, self.output)
    }

    async fn read_object(&self, body: Body) -> ApiResult<Value> {
        self.read_body_as(body, &self.resource.strategy.schema_name()).await
    }

    /// Reads a JSON, YAML or protobuf body holding an object of `schema`.
    async fn read_body_as(&self, body: Body, schema: &str) -> ApiResult<Value> {
        let bytes = codec::read_body(body).await?;
        let media = codec::content_type(&self.headers);
        if media == super::protobuf::MEDIA_TYPE {
            return super::protobuf::decode(&bytes, &self.api.types, schema)
                .map_err(|e| ApiError::bad_request(format!("the protobuf body could not be decoded: {e}")));
        }
        codec::parse_body(&bytes, &media)
    }

    /// Decodes a stored object and stamps its resourceVersion.
    pub fn decode_stored(&self, kv: &KeyValue) -> ApiResult<Value> {
        decode_stored(kv)
    }

    async fn get(&self) -> ApiResult<Response> {
        let obj = self.get_object(self.name()?).await?;
        Ok(self.respond(StatusCode::OK, &obj))
    }

    pub async fn get_object(&self, name: &str) -> ApiResult<Value> {
        let kv = self
            .api
            .store
            .get(&self.key(name))
            .await
            .map_err(|e| ApiError::from_store(e, self.resource.error_name(), name))?
            .ok_or_else(|| ApiError::not_found(self.resource.error_name(), name))?;
        self.decode_stored(&kv)
    }

    /// The label and field selectors of a list or watch.
    pub fn selectors(&self) -> ApiResult<Selectors> {
        let labels = LabelSelector::parse(self.query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(self.query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
        for (field, _, _) in fields.requirements() {
            if !matches!(field, "metadata.name" | "metadata.namespace") && !self.resource.selectable_fields.contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
        }
        Ok(Selectors { labels, fields })
    }

    async fn list(&self) -> ApiResult<Response> {
        let selectors = self.selectors()?;
        let limit = self.query.number("limit")?.filter(|l| *l > 0).map(|l| l as usize);
        let (prefix, start) = self.list_range(&selectors);
        let mut after = start;
        let mut revision = self.list_revision().await?;
        if let Some(token) = self.query.get("continue") {
            let (rv, key) = decode_continue(token, &prefix)?;
            revision = Some(rv);
            after = Some(key);
        }
        let mut items = Vec::new();
        let mut next_key = None;
        let page_rev = loop {
            let want = limit.map(|l| l - items.len());
            let page = self
                .api
                .store
                .list(ListRequest { prefix: prefix.clone(), after: after.clone(), limit: want, revision })
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::Compacted { .. } if self.query.get("continue").is_some() => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    e => ApiError::from_store(e, self.resource.error_name(), ""),
                })?;
            revision = Some(page.revision);
            let last = page.items.last().map(|kv| kv.key.clone());
            for kv in &page.items {
                let obj = self.decode_stored(kv)?;
                if selectors.matches(&self.resource, &obj) {
                    items.push(obj);
                }
            }
            match (page.more, limit) {
                (false, _) => break page.revision,
                (true, Some(l)) if items.len() >= l => {
                    next_key = last;
                    break page.revision;
                }
                _ => after = last,
            }
        };
        let mut meta = json!({ "resourceVersion": page_rev.to_string() });
        if let Some(key) = next_key {
            meta["continue"] = json!(encode_continue(page_rev, &key, &prefix));
        }
        let body = match self.output {
            Output::Table(v) => {
                let include = IncludeObject::parse(self.query.get("includeObject")).map_err(ApiError::bad_request)?;
                table::table(&self.resource, &items, meta, include, v, true)
            }
            Output::Metadata(v) => table::partial_metadata_list(&items, meta, v),
            _ => json!({
                "kind": format!("{}List", self.resource.kind),
                "apiVersion": self.resource.api_version(),
                "metadata": meta,
                "items": items,
            }),
        };
        Ok(codec::respond(StatusCode::OK, &body, self.output))
    }

    /// The store range a list covers, narrowed by namespace and `metadata.name`.
    pub fn list_range(&self, selectors: &Selectors) -> (String, Option<String>) {
        let namespace = self.path.namespace.as_deref().or(selectors.fields.single_value("metadata.namespace"));
        let prefix = self.resource.key_prefix(namespace);
        (prefix, None)
    }

    /// The revision a list reads at, from `resourceVersion` and `resourceVersionMatch`.
    async fn list_revision(&self) -> ApiResult<Option<Revision>> {
        let rv = self.query.get("resourceVersion");
        let exact = match self.query.get("resourceVersionMatch") {
            None | Some("NotOlderThan") => false,
            Some("Exact") => true,
            Some(other) => return Err(ApiError::bad_request(format!("invalid resourceVersionMatch {other:?}"))),
        };
        let Some(rv) = rv else {
            if exact {
                return Err(ApiError::bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided"));
            }
            return Ok(None);
        };
        let rv = parse_rv(rv)?;
        if exact {
            if rv == 0 {
                return Err(ApiError::bad_request("resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\""));
            }
            return Ok(Some(rv));
        }
        self.wait_for_revision(rv).await?;
        Ok(None)
    }

    /// Waits briefly for the store to reach `rv` (a client may have seen a newer
    /// revision from a watch); upstream answers 504 if it never does.
    pub async fn wait_for_revision(&self, rv: Revision) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.api.store.revision() < rv {
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::timeout(
                    format!("Too large resource version: {rv}, current: {}", self.api.store.revision()),
                    1,
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn get_scale(&self) -> ApiResult<Response> {
        let obj = self.get_object(self.name()?).await?;
        Ok(codec::respond(StatusCode::OK, &scale_of(&obj), self.output))
    }

    async fn update_scale(&mut self, body: Value) -> ApiResult<Response> {
        let replicas = scale_replicas(&body)?;
        let precondition = body.meta_str("resourceVersion").map(str::to_owned);
        let name = self.name()?.to_owned();
        let resource = self.resource.clone();
        let obj = self
            .guaranteed_update(&name, None, move |old| {
                if precondition.as_deref().is_some_and(|rv| old.meta_str("resourceVersion") != Some(rv)) {
                    return Err(ApiError::modified(resource.error_name(), old.name()));
                }
                let mut new = old.clone();
                new["spec"]["replicas"] = json!(replicas);
                Ok(new)
            })
            .await?;
        Ok(codec::respond(StatusCode::OK, &scale_of(&obj), self.output))
    }

    /// `pods/binding`: sets `spec.nodeName` of an unassigned pod and marks it
    /// `PodScheduled=True`.
    async fn bind(&mut self, body: Value) -> ApiResult<Response> {
        let name = self.name()?.to_owned();
        let target = body.pointer("/target/name").and_then(Value::as_str).unwrap_or("").to_owned();
        if target.is_empty() {
            return Err(ApiError::invalid("Binding", "", &name, &[super::error::FieldError::required("target.name", "")]));
        }
        let resource = self.resource.clone();
        let conflict_name = name.clone();
        self.guaranteed_update(&name, Some(Subresource::Binding), move |old| {
            if old.is_deleting() {
                return Err(ApiError::conflict(resource.error_name(), &conflict_name, "pod is being deleted, cannot be assigned to a host"));
            }
            match old.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                Some(node) => Err(ApiError::conflict(
                    resource.error_name(),
                    &conflict_name,
                    &format!("pod {conflict_name} is already assigned to node \"{node}\""),
                )),
                None => {
                    let mut new = old.clone();
                    new["spec"]["nodeName"] = json!(target);
                    mark_scheduled(&mut new);
                    Ok(new)
                }
            }
        })
        .await?;
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
        Ok(codec::respond(StatusCode::CREATED, &status, Output::Json))
    }
}

/// Sets the pod's `PodScheduled` condition to `True` (a new transition time only if it was not).
fn mark_scheduled(pod: &mut Value) {
    let now = super::object::now_rfc3339();
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let conditions = &mut pod["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(list) = conditions.as_array_mut() else { return };
    let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    match list.iter_mut().find(|c| c["type"] == "PodScheduled") {
        Some(c) if c["status"] == "True" => {}
        Some(c) => *c = scheduled,
        None => list.push(scheduled),
    }
}

/// Label and field selectors, matched against objects.
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn matches(&self, resource: &Resource, obj: &Value) -> bool {
        self.labels.matches_json(obj.labels()) && self.fields.matches(|f| field_value(resource, obj, f))
    }
}

/// A field's value for field selectors; `source` on events is the reporting component.
fn field_value(_resource: &Resource, obj: &Value, field: &str) -> Option<String> {
    match field {
        "metadata.name" => Some(obj.name().to_owned()),
        "metadata.namespace" => Some(obj.namespace().to_owned()),
        "source" => super::object::field_as_string(obj, "source.component"),
        other => super::object::field_as_string(obj, other),
    }
}

pub fn decode_stored(kv: &KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(format!("stored object {}: {e}", kv.key)))?;
    obj.set_meta("resourceVersion", kv.mod_revision.to_string());
    Ok(obj)
}

pub fn parse_rv(rv: &str) -> ApiResult<Revision> {
    rv.parse::<Revision>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

fn encode_continue(rv: Revision, key: &str, prefix: &str) -> String {
    let start = key.strip_prefix(prefix).unwrap_or(key);
    let token = json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": format!("{start}\u{0}") });
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(Revision, String)> {
    let bad = || ApiError::bad_request("continue key is not valid: the continue token is malformed");
    let bytes = base64::engine::general_purpose::URL_SAFE.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    let last = start.strip_suffix('\u{0}').ok_or_else(bad)?;
    if last.contains("..") || last.starts_with('/') {
        return Err(bad());
    }
    Ok((rv, format!("{prefix}{last}")))
}

/// The autoscaling/v1 Scale of a scalable object.
pub(super) fn scale_of(obj: &Value) -> Value {
    let meta = obj.meta().cloned().unwrap_or_default();
    let selector = obj.pointer("/spec/selector").map(selector_string).unwrap_or_default();
    let mut scale_meta = json!({});
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta.get(k) {
            scale_meta[k] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": { "replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0) },
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// A selector (a LabelSelector or a ReplicationController's plain map) as a string.
fn selector_string(selector: &Value) -> String {
    LabelSelector::from_json(selector).map(|s| s.to_string()).unwrap_or_default()
}

pub(super) fn scale_replicas(body: &Value) -> ApiResult<i64> {
    match body.pointer("/spec/replicas") {
        None => Ok(0),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=i32::MAX as i64).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                body.name(),
                &[super::error::FieldError::invalid("spec.replicas", n, "must be greater than or equal to 0")],
            )),
            None => Err(ApiError::bad_request(format!("Scale.spec.replicas must be an integer, not {}", codec::json_type(v)))),
        },
    }
}

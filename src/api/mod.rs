//! The API server: the only door to the store. Requests are authenticated, routed
//! to discovery/OpenAPI or to the generic REST machinery (`rest.rs`, `write.rs`,
//! `watch.rs`), which serves every kind in the registry (`kinds/`) the same way.
//!
//! A request's path: TLS (`serve.rs`) → authentication (`auth.rs`) → `rest::serve`
//! → the kind's strategy (defaults, validation) → admission → `store` → and back
//! out to every watcher through `watch.rs`.

pub mod admission;
pub mod allocator;
pub mod auth;
pub mod codec;
pub mod discovery;
pub mod error;
pub mod fields;
pub mod kinds;
pub mod metrics;
pub mod nodeproxy;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod request;
pub mod rest;
pub mod schema;
pub mod selector;
pub mod serve;
pub mod table;
pub mod taints;
pub mod tokens;
pub mod validation;
pub mod watch;
mod write;

use crate::store::SharedStorage;
use auth::{Identity, Tokens};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use codec::Output;
use error::ApiError;
use http::{HeaderMap, StatusCode, header};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Shared state of the API server.
pub struct Api {
    pub store: SharedStorage,
    pub registry: registry::Registry,
    pub types: schema::Types,
    pub openapi: openapi::OpenApi,
    pub tokens: Tokens,
    /// Signs and verifies service account tokens.
    pub signer: tokens::TokenSigner,
    /// Cancelled when the server stops: ends open watches.
    pub shutdown: CancellationToken,
    /// `host:port` clients reach this server at, for `/api`.
    pub advertise_address: String,
    /// Where Service addresses come from.
    pub ranges: allocator::Ranges,
    /// How pods' streams and node metrics are fetched from node agents;
    /// `None` when this server has no client certificate for them.
    pub nodes: Option<nodeproxy::NodeClient>,
}

impl Api {
    pub fn new(
        store: SharedStorage,
        tokens: Tokens,
        signer: tokens::TokenSigner,
        shutdown: CancellationToken,
        advertise_address: String,
        ranges: allocator::Ranges,
        nodes: Option<nodeproxy::NodeClient>,
    ) -> Arc<Self> {
        let registry = kinds::registry();
        let types = schema::Types::new(&registry);
        let openapi = openapi::OpenApi::new(&registry, &types);
        Arc::new(Self { store, registry, types, openapi, tokens, signer, shutdown, advertise_address, ranges, nodes })
    }
}

/// The HTTP application: every route of the API server.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/version", get(|| async { json_ok(&discovery::version()) }))
        .route("/api", get(|State(api): State<Arc<Api>>| async move { json_ok(&discovery::core_versions(&api.advertise_address)) }))
        .route("/apis", get(|State(api): State<Arc<Api>>| async move { json_ok(&groups(&api)) }))
        .route("/api/{version}", get(core_resources))
        .route("/apis/{group}", get(group))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/openapi/v3", get(|State(api): State<Arc<Api>>| async move { json_ok(&api.openapi.index()) }))
        .route("/openapi/v3/{*path}", get(openapi_document))
        .merge(metrics::routes())
        .fallback(resources)
        .layer(axum::middleware::from_fn_with_state(api.clone(), auth::authenticate))
        .with_state(api)
}

/// `/apis`: the registry's groups and `metrics.k8s.io`, served from the agents.
fn groups(api: &Api) -> serde_json::Value {
    let mut groups = discovery::groups(&api.registry);
    if let Some(list) = groups["groups"].as_array_mut() {
        list.push(metrics::group_entry());
    }
    groups
}

fn json_ok(value: &serde_json::Value) -> Response {
    codec::respond(StatusCode::OK, value, Output::Json)
}

async fn core_resources(State(api): State<Arc<Api>>, Path(version): Path<String>) -> Response {
    discovery::resources(&api.registry, "", &version).map_or_else(|| rest::not_found_path().into_response(), |v| json_ok(&v))
}

async fn group(State(api): State<Arc<Api>>, Path(group): Path<String>) -> Response {
    discovery::group(&api.registry, &group).map_or_else(|| rest::not_found_path().into_response(), |v| json_ok(&v))
}

async fn group_resources(State(api): State<Arc<Api>>, Path((group, version)): Path<(String, String)>) -> Response {
    discovery::resources(&api.registry, &group, &version).map_or_else(|| rest::not_found_path().into_response(), |v| json_ok(&v))
}

async fn openapi_document(State(api): State<Arc<Api>>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some((hash, body)) = api.openapi.document(&path) else {
        return rest::not_found_path().into_response();
    };
    let etag = format!("\"{hash}\"");
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json".to_owned()), (header::ETAG, etag), (header::CACHE_CONTROL, "public, immutable".to_owned())],
        body.clone(),
    )
        .into_response()
}

async fn resources(State(api): State<Arc<Api>>, request: Request) -> Response {
    let path = request.uri().path();
    if !(path.starts_with("/api/") || path.starts_with("/apis/")) {
        return health(path).unwrap_or_else(|| rest::not_found_path().into_response());
    }
    let Some(user) = request.extensions().get::<Identity>().cloned() else {
        return ApiError::unauthorized().into_response();
    };
    rest::serve(api, user, request.map(Body::new)).await
}

/// `/healthz`, `/livez`, `/readyz` and their `?verbose` forms.
fn health(path: &str) -> Option<Response> {
    matches!(path, "/healthz" | "/livez" | "/readyz").then(|| (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
}

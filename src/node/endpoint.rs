//! The agent's HTTPS endpoint, the kubelet's role on port 10250: the API
//! server reaches a pod's streams through it — `/containerLogs`, `/exec`,
//! `/attach`, `/portForward` — and reads the node's resource usage at
//! `/metrics/resource`. TLS uses a serving certificate from the cluster CA and
//! requires a client certificate from that CA in `system:masters` (the API
//! server's), so only the control plane can open pods' streams.

use super::docker::{Observed, Role, Runtime};
use super::metrics::Samples;
use super::status::instances;
use crate::api::auth::PeerIdentity;
use crate::runtime::Informer;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use std::sync::Arc;

/// The group whose members may use the endpoint.
const ALLOWED_GROUP: &str = "system:masters";

/// The TLS material of the endpoint, PEM.
#[derive(Clone)]
pub struct ServingTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for ServingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingTls").finish_non_exhaustive()
    }
}

/// What the endpoint's handlers share.
#[derive(Clone)]
pub struct Endpoint {
    pub runtime: Runtime,
    pub pods: Informer<Pod>,
    pub samples: Samples,
}

/// A refused request: its code and message, answered as a Kubernetes Status.
#[derive(Debug)]
pub struct Refusal {
    pub code: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { code: StatusCode::BAD_REQUEST, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self { code: StatusCode::NOT_FOUND, message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self { code: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let reason = match self.code {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::FORBIDDEN => "Forbidden",
            _ => "InternalError",
        };
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": reason, "code": self.code.as_u16(),
        });
        (self.code, [(http::header::CONTENT_TYPE, "application/json")], status.to_string()).into_response()
    }
}

/// The query string as ordered pairs (`command` repeats).
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Self {
        Self(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }

    /// `true`/`1` in any case (the Python client sends `True`).
    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }

    pub fn number(&self, key: &str) -> Result<Option<i64>, Refusal> {
        self.get(key).map(|v| v.parse().map_err(|_| Refusal::bad_request(format!("invalid value for {key}: {v:?}")))).transpose()
    }
}

impl Endpoint {
    /// The pod `namespace/name` if it is bound to this node.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<Arc<Pod>, Refusal> {
        self.pods.get(&format!("{namespace}/{name}")).ok_or_else(|| Refusal::not_found(format!("pod {namespace}/{name} is not on this node")))
    }

    /// The instances of container `container` of `pod` in Docker, newest first.
    pub async fn instances(&self, pod: &Pod, container: &str) -> Result<Vec<Observed>, Refusal> {
        let m = &pod.metadata;
        let uid = m.uid.as_deref().unwrap_or_default();
        let all = self
            .runtime
            .pod_containers(m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default())
            .await
            .map_err(|e| Refusal::internal(format!("listing containers: {e}")))?;
        let mine: Vec<Observed> = all.into_iter().filter(|c| c.pod_uid == uid).collect();
        let mut found: Vec<Observed> = instances(&mine, Role::App, container).into_iter().cloned().collect();
        if found.is_empty() {
            found = instances(&mine, Role::Init, container).into_iter().cloned().collect();
        }
        Ok(found)
    }

    /// The running instance of `container`, for exec and attach.
    pub async fn running(&self, namespace: &str, pod: &str, container: &str) -> Result<Observed, Refusal> {
        let pod = self.pod(namespace, pod)?;
        let newest = self.instances(&pod, container).await?.into_iter().next();
        newest.filter(Observed::running).ok_or_else(|| Refusal::bad_request(format!("container not found ({container:?})")))
    }
}

/// Only the API server (a `system:masters` certificate) may use the endpoint.
async fn authorize(request: Request, next: Next) -> Response {
    let allowed = matches!(
        request.extensions().get::<PeerIdentity>(),
        Some(PeerIdentity(Some(identity))) if identity.groups.iter().any(|g| g == ALLOWED_GROUP)
    );
    if !allowed {
        return Refusal { code: StatusCode::FORBIDDEN, message: "only the API server may use the node's endpoint".into() }.into_response();
    }
    next.run(request).await
}

/// The endpoint's routes.
pub fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/containerLogs/{namespace}/{pod}/{container}", get(super::logs::serve))
        .route("/exec/{namespace}/{pod}/{container}", get(super::exec::exec).post(super::exec::exec))
        .route("/attach/{namespace}/{pod}/{container}", get(super::exec::attach).post(super::exec::attach))
        .route("/portForward/{namespace}/{pod}", get(super::portforward::serve).post(super::portforward::serve))
        .route("/metrics/resource", get(|State(e): State<Endpoint>| async move {
            let body = serde_json::to_vec(&e.samples.report()).unwrap_or_default();
            ([(http::header::CONTENT_TYPE, "application/json")], body)
        }))
        .layer(axum::middleware::from_fn(authorize))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(endpoint)
}

/// The path parameters of the container-addressed routes.
pub type ContainerPath = Path<(String, String, String)>;

/// Binds the endpoint's listener (port 0 picks one) before anything reports the port.
pub async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await
}

//! Authentication: who is asking. A request is authenticated by the client
//! certificate its TLS connection presented (signed by the cluster CA) or by a
//! bearer token; anything else is refused with 401 before it can reach data.
//! Every authenticated user is authorized for everything (no RBAC yet).

use super::error::ApiError;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn new(user: &str, groups: &[&str]) -> Self {
        Self { user: user.to_owned(), groups: groups.iter().map(|g| (*g).to_owned()).collect() }
    }

    /// The identity of rk's own components when they call the API in-process.
    pub fn system(component: &str) -> Self {
        Self::new(&format!("system:{component}"), &["system:masters", "system:authenticated"])
    }
}

/// The identity a TLS connection's client certificate established, if any.
/// Inserted into each request's extensions by the connection handler.
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub Option<Identity>);

/// Bearer tokens the server accepts.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Arc<RwLock<HashMap<String, Identity>>>,
}

impl Tokens {
    pub fn insert(&self, token: String, identity: Identity) {
        self.tokens.write().expect("tokens lock").insert(token, identity);
    }

    pub fn lookup(&self, token: &str) -> Option<Identity> {
        self.tokens.read().expect("tokens lock").get(token).cloned()
    }
}

/// Middleware: resolves the request's [`Identity`] or answers 401.
pub async fn authenticate(tokens: Tokens, mut request: Request, next: Next) -> Response {
    // Health checks are for load balancers and supervisors; they reveal no data.
    if matches!(request.uri().path(), "/healthz" | "/livez" | "/readyz") {
        return next.run(request).await;
    }
    if let Some(identity) = identify(&tokens, &request) {
        request.extensions_mut().insert(identity);
        return next.run(request).await;
    }
    ApiError::unauthorized().into_response()
}

fn identify(tokens: &Tokens, request: &Request) -> Option<Identity> {
    // A component calling in-process already carries its identity.
    if let Some(identity) = request.extensions().get::<Identity>() {
        return Some(identity.clone());
    }
    if let Some(PeerIdentity(Some(identity))) = request.extensions().get::<PeerIdentity>() {
        return Some(identity.clone());
    }
    let header = request.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    tokens.lookup(token.trim())
}

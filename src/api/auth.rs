//! Authentication: who is asking. A request is authenticated by the client
//! certificate its TLS connection presented (signed by the cluster CA) or by a
//! bearer token; anything else is refused with 401 before it can reach data.
//! Service account tokens (`tokens.rs`) are bearer tokens too. Every
//! authenticated user is authorized for everything (no RBAC yet).

use super::error::ApiError;
use axum::extract::{Request, State};
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
pub async fn authenticate(State(api): State<Arc<super::Api>>, mut request: Request, next: Next) -> Response {
    // Health checks are for load balancers and supervisors; they reveal no data.
    if matches!(request.uri().path(), "/healthz" | "/livez" | "/readyz") {
        return next.run(request).await;
    }
    let identity = match presented(&request) {
        Presented::Identity(identity) => Some(identity),
        Presented::Token(token) => match api.tokens.lookup(&token) {
            Some(identity) => Some(identity),
            None => super::tokens::authenticate(&api, &token).await,
        },
        Presented::Nothing => None,
    };
    match identity {
        Some(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// The credentials a request carries.
enum Presented {
    Identity(Identity),
    Token(String),
    Nothing,
}

fn presented(request: &Request) -> Presented {
    // A component calling in-process already carries its identity.
    if let Some(identity) = request.extensions().get::<Identity>() {
        return Presented::Identity(identity.clone());
    }
    if let Some(PeerIdentity(Some(identity))) = request.extensions().get::<PeerIdentity>() {
        return Presented::Identity(identity.clone());
    }
    let bearer = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    bearer.map_or(Presented::Nothing, Presented::Token)
}

//! Joining another machine's agent to the cluster, k3s style. `rk server`
//! keeps a join token in `<data-dir>/node-token`:
//! `K10<sha256 of the cluster CA certificate, hex>::server:<secret>`. A
//! joining agent fetches the CA from the unauthenticated `/cacerts`, trusts
//! it only if its hash is the token's, then presents the secret (HTTP basic
//! authentication, user `server`) to `POST /v1-rk/node-credentials`, which
//! issues the node its client certificate (`system:node:<name>` in
//! `system:nodes`) and the serving certificate of its endpoint.

use crate::pki::{self, Pki};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where `rk server` keeps the join token, under its data directory.
pub const TOKEN_FILE: &str = "node-token";
const TOKEN_PREFIX: &str = "K10";
const TOKEN_USER: &str = "server";
pub const CA_PATH: &str = "/cacerts";
pub const CREDENTIALS_PATH: &str = "/v1-rk/node-credentials";

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex.
    pub ca_hash: String,
    pub secret: String,
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}::{TOKEN_USER}:{}", self.ca_hash, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let malformed = || format!("a join token looks like {TOKEN_PREFIX}<CA hash>::{TOKEN_USER}:<secret>; see `rk token` on the server");
        let rest = s.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(malformed)?;
        let (ca_hash, credentials) = rest.split_once("::").ok_or_else(malformed)?;
        let secret = credentials.strip_prefix(&format!("{TOKEN_USER}:")).ok_or_else(malformed)?;
        let hex = ca_hash.len() == 64 && ca_hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || secret.is_empty() {
            return Err(malformed());
        }
        Ok(Self { ca_hash: ca_hash.to_ascii_lowercase(), secret: secret.to_owned() })
    }
}

/// The server's token: read from `<data_dir>/node-token` (keeping its secret,
/// refreshing the CA hash) or created with a new random secret (mode 0600).
pub fn load_or_create(data_dir: &Path, ca_hash: &str) -> Result<JoinToken, Error> {
    let path = data_dir.join(TOKEN_FILE);
    let secret = match std::fs::read_to_string(&path).ok().and_then(|t| t.parse::<JoinToken>().ok()) {
        Some(existing) if existing.ca_hash == ca_hash => return Ok(existing),
        Some(existing) => existing.secret,
        None => {
            let mut bytes = [0u8; 24];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| "no randomness available")?;
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    let token = JoinToken { ca_hash: ca_hash.to_owned(), secret };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    Ok(token)
}

/// What a joining node asks for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRequest {
    pub node_name: String,
    /// Host names and addresses its endpoint is reached at.
    pub names: Vec<String>,
}

/// What a joined node gets: its client and serving certificates, PEM.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
    pub serving_cert: String,
    pub serving_key: String,
}

#[derive(Clone)]
struct Issuer {
    pki: Arc<Pki>,
    token: JoinToken,
}

/// The server's joining routes (outside the API's authentication).
pub fn router(pki: Arc<Pki>, token: JoinToken) -> Router {
    Router::new()
        .route(CA_PATH, get(|State(issuer): State<Issuer>| async move { ([(header::CONTENT_TYPE, "text/plain")], issuer.pki.ca_pem().to_owned()) }))
        .route(CREDENTIALS_PATH, post(issue))
        .with_state(Issuer { pki, token })
}

/// Whether `headers` carry the token's secret. Digests of both are compared
/// byte by byte without stopping early, so timing tells nothing.
fn presents_secret(headers: &HeaderMap, secret: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let expected = format!("{TOKEN_USER}:{secret}");
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    presented.is_some_and(|p| digest(&p).as_ref().iter().zip(digest(&expected).as_ref()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

async fn issue(State(issuer): State<Issuer>, headers: HeaderMap, body: Bytes) -> Response {
    if !presents_secret(&headers, &issuer.token.secret) {
        return (StatusCode::UNAUTHORIZED, "the join token's secret is not this cluster's\n").into_response();
    }
    let Ok(request) = serde_json::from_slice::<CredentialsRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected {\"nodeName\": ..., \"names\": [...]}\n").into_response();
    };
    let node = &request.node_name;
    if !crate::api::validation::dns1123_subdomain(node).is_empty() {
        return (StatusCode::BAD_REQUEST, format!("{node:?} is not a valid node name\n")).into_response();
    }
    let issued = (|| {
        let (client_cert, client_key) = issuer.pki.issue_client_cert(&format!("system:node:{node}"), Some("system:nodes"))?;
        let (serving_cert, serving_key) = issuer.pki.issue_serving_cert(node, &request.names)?;
        Ok::<_, pki::PkiError>(Credentials { ca: issuer.pki.ca_pem().to_owned(), client_cert, client_key, serving_cert, serving_key })
    })();
    match issued {
        Ok(credentials) => {
            tracing::info!(node, "issued credentials to a joining node");
            ([(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(&credentials).unwrap_or_default()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// Why joining failed: the server could not be reached (worth retrying), or
/// it answered no.
#[derive(Debug)]
pub enum JoinError {
    Unreachable(String),
    Refused(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Unreachable(m) | JoinError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for JoinError {}

async fn body_text(response: http::Response<hyper::body::Incoming>) -> Result<String, JoinError> {
    let bytes = response.into_body().collect().await.map_err(|e| JoinError::Unreachable(format!("reading the server's answer: {e}")))?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Obtains `node`'s credentials from the server at `host:port` with `token`.
pub async fn join(host: &str, port: u16, token: &JoinToken, node: &str, names: Vec<String>) -> Result<Credentials, JoinError> {
    let unreachable = |e: String| JoinError::Unreachable(format!("reaching the server at {host}:{port}: {e}"));
    // Nothing is trusted yet: the CA is checked against the token's hash below.
    let request = http::Request::get(CA_PATH).header(header::HOST, host).body(Full::new(Bytes::new())).map_err(|e| unreachable(e.to_string()))?;
    let response = crate::client::https(&crate::client::insecure_tls(), host, port, request).await.map_err(unreachable)?;
    if response.status() != StatusCode::OK {
        return Err(JoinError::Refused(format!("the server answered {} for its CA", response.status())));
    }
    let ca = body_text(response).await?;
    match pki::cert_sha256_hex(&ca) {
        Ok(hash) if hash == token.ca_hash => {}
        _ => return Err(JoinError::Refused("the server's CA does not match the token".into())),
    }
    let trusted = pki::tls_client_config(&ca, None).map_err(|e| JoinError::Refused(format!("the server's CA: {e}")))?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_USER}:{}", token.secret));
    let body = serde_json::to_vec(&CredentialsRequest { node_name: node.to_owned(), names }).unwrap_or_default();
    let request = http::Request::post(CREDENTIALS_PATH)
        .header(header::HOST, host)
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| unreachable(e.to_string()))?;
    let response = crate::client::https(&tokio_rustls::TlsConnector::from(Arc::new(trusted)), host, port, request).await.map_err(unreachable)?;
    match response.status() {
        StatusCode::OK => {
            let text = body_text(response).await?;
            serde_json::from_str(&text).map_err(|e| JoinError::Refused(format!("the server's credentials do not parse: {e}")))
        }
        StatusCode::UNAUTHORIZED => Err(JoinError::Refused("the join token was refused".into())),
        other => Err(JoinError::Refused(format!("the server refused to issue credentials ({other}): {}", body_text(response).await?.trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let token = JoinToken { ca_hash: "ab".repeat(32), secret: "s3cret".into() };
        let text = token.to_string();
        assert!(text.starts_with("K10abab") && text.ends_with("::server:s3cret"));
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        for bad in ["", "K10xyz::server:s", "K10abc::server:s", &format!("K10{}::admin:s", "ab".repeat(32)), &format!("K10{}::server:", "ab".repeat(32))] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_secret_survives_a_new_ca_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &"aa".repeat(32)).unwrap();
        assert_eq!(load_or_create(dir.path(), &"aa".repeat(32)).unwrap(), first);
        let moved = load_or_create(dir.path(), &"bb".repeat(32)).unwrap();
        assert_eq!((moved.secret.as_str(), moved.ca_hash.as_str()), (first.secret.as_str(), "bb".repeat(32).as_str()));
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn only_the_tokens_secret_opens_the_door() {
        let mut headers = HeaderMap::new();
        assert!(!presents_secret(&headers, "s"));
        let basic = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s)).parse().unwrap();
        headers.insert(header::AUTHORIZATION, basic("server:wrong"));
        assert!(!presents_secret(&headers, "s"));
        headers.insert(header::AUTHORIZATION, basic("server:s"));
        assert!(presents_secret(&headers, "s"));
    }
}

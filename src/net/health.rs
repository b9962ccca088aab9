//! Health check node ports, as kube-proxy serves them: for each LoadBalancer
//! Service with `externalTrafficPolicy: Local`, an HTTP server on its
//! `healthCheckNodePort` answering any request with how many of the Service's
//! endpoints are ready on this node — 200 when some are, 503 when none — so a
//! load balancer sends traffic only to nodes that keep it.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What one Service's health check serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    /// Ready endpoints on this node.
    pub local_endpoints: usize,
}

struct Server {
    port: u16,
    local_endpoints: Arc<AtomicUsize>,
    stop: CancellationToken,
}

/// The health check servers of this node, by Service key.
#[derive(Default)]
pub struct HealthChecks {
    servers: HashMap<String, Server>,
}

impl HealthChecks {
    /// Makes Service `key`'s server what `wanted` asks: its count updated, or
    /// (re)started on another port, or stopped. Must run inside the runtime.
    pub fn sync(&mut self, key: &str, wanted: Option<HealthCheck>) -> std::io::Result<()> {
        if let (Some(server), Some(wanted)) = (self.servers.get(key), &wanted)
            && server.port == wanted.port
        {
            server.local_endpoints.store(wanted.local_endpoints, Ordering::Relaxed);
            return Ok(());
        }
        if let Some(old) = self.servers.remove(key) {
            old.stop.cancel();
        }
        let Some(wanted) = wanted else { return Ok(()) };
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, wanted.port)))?;
        let listener = socket.listen(128)?;
        let local_endpoints = Arc::new(AtomicUsize::new(wanted.local_endpoints));
        let stop = CancellationToken::new();
        let (namespace, name) = crate::runtime::split_key(key);
        let answer = Arc::new(Answer { namespace: namespace.to_owned(), name: name.to_owned(), local_endpoints: local_endpoints.clone() });
        tokio::spawn(serve(listener, Router::new().fallback(respond).with_state(answer), stop.clone()));
        self.servers.insert(key.to_owned(), Server { port: wanted.port, local_endpoints, stop });
        Ok(())
    }

    /// Stops the servers of Services not in `keys`.
    pub fn retain(&mut self, keys: &BTreeSet<String>) {
        self.servers.retain(|key, server| {
            let keep = keys.contains(key);
            if !keep {
                server.stop.cancel();
            }
            keep
        });
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.servers.values().for_each(|s| s.stop.cancel());
    }
}

struct Answer {
    namespace: String,
    name: String,
    local_endpoints: Arc<AtomicUsize>,
}

/// Upstream's answer: the Service, its local endpoints, and a status saying whether to send traffic here.
async fn respond(State(answer): State<Arc<Answer>>) -> Response {
    let count = answer.local_endpoints.load(Ordering::Relaxed);
    let status = if count > 0 { http::StatusCode::OK } else { http::StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "service": { "namespace": answer.namespace, "name": answer.name },
        "localEndpoints": count,
        "serviceProxyHealthy": true,
    });
    let headers = [
        (http::header::CONTENT_TYPE, "application/json".to_owned()),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        (http::HeaderName::from_static("x-load-balancing-endpoint-weight"), count.to_string()),
    ];
    (status, headers, body.to_string()).into_response()
}

async fn serve(listener: tokio::net::TcpListener, app: Router, stop: CancellationToken) {
    while let Some((stream, _)) = crate::api::serve::accept(&listener, &stop).await {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| app.clone().oneshot(request.map(axum::body::Body::new)));
            let _ = crate::api::serve::serve_http1(TokioIo::new(stream), service, &stop).await;
        });
    }
}

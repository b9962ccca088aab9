//! The reverse proxy: a request is routed by its host and path, sent over a
//! new HTTP/1.1 connection to the backend's next ready endpoint (the next one
//! if that one refuses), and the response streamed back. No matching rule is
//! a 404, a backend without ready endpoints a 503, unreachable endpoints a
//! 502, with the bodies ingress-nginx answers with.

use super::view::View;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long connecting to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"];

/// Answers one request received on a listener for `scheme` from `peer`.
pub async fn handle(view: Arc<View>, request: Request<Incoming>, peer: SocketAddr, scheme: &'static str) -> Response<Body> {
    let host = host_of(&request);
    let Some(backend) = view.route(&host, request.uri().path()) else {
        return page(StatusCode::NOT_FOUND, "default backend - 404");
    };
    let endpoints = view.endpoints(&backend);
    if endpoints.is_empty() {
        return page(StatusCode::SERVICE_UNAVAILABLE, "503 Service Temporarily Unavailable");
    }
    let Some(mut sender) = connect(&endpoints).await else {
        return page(StatusCode::BAD_GATEWAY, "502 Bad Gateway");
    };
    match sender.send_request(upstream_request(request, peer, scheme, &host)).await {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            response.map(BodyExt::boxed)
        }
        Err(e) => {
            tracing::debug!(error = %e, "backend request failed");
            page(StatusCode::BAD_GATEWAY, "502 Bad Gateway")
        }
    }
}

/// An HTTP/1.1 connection to the first endpoint that accepts one.
async fn connect(endpoints: &[SocketAddr]) -> Option<hyper::client::conn::http1::SendRequest<Incoming>> {
    for endpoint in endpoints {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%endpoint, error = %e, "backend endpoint refused; trying the next");
                continue;
            }
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let Ok((sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else { continue };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        return Some(sender);
    }
    None
}

/// The request as the backend gets it: origin-form target, the client's
/// Host kept, hop-by-hop headers dropped, X-Forwarded-* added.
fn upstream_request(mut request: Request<Incoming>, peer: SocketAddr, scheme: &'static str, host: &str) -> Request<Incoming> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if let Ok(uri) = target.parse() {
        *request.uri_mut() = uri;
    }
    *request.version_mut() = http::Version::HTTP_11;
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    let client = peer.ip().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client.clone(),
    };
    for (name, value) in [("x-forwarded-for", forwarded_for), ("x-real-ip", client), ("x-forwarded-proto", scheme.to_owned()), ("x-forwarded-host", host.to_owned())] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    request
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(listed.iter().map(String::as_str)) {
        headers.remove(name);
    }
}

/// The request's host, lowercased and without a port.
fn host_of<B>(request: &Request<B>) -> String {
    let raw = request.uri().authority().map(|a| a.as_str().to_owned()).or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned)).unwrap_or_default();
    strip_port(&raw).to_ascii_lowercase()
}

fn strip_port(authority: &str) -> &str {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A small text answer from the proxy itself.
pub fn page(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(strip_port("Shop.Example.com:8080"), "Shop.Example.com");
        assert_eq!(strip_port("[fd00::1]:443"), "fd00::1");
        assert_eq!(strip_port("example.com"), "example.com");
        let request = Request::builder().uri("/x").header("host", "WEB.example.com:80").body(()).unwrap();
        assert_eq!(host_of(&request), "web.example.com");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }
}

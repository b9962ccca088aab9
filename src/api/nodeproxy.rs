//! The API server's side of pods' streams: `pods/log`, `pods/exec`,
//! `pods/attach` and `pods/portforward` are resolved here (the pod, its node,
//! its container) and carried to the agent running the pod, at the node's
//! InternalIP and the port its Node publishes in
//! `status.daemonEndpoints.kubeletEndpoint`, over TLS with the API server's
//! own client certificate. Log responses stream through chunk by chunk;
//! upgrades (WebSocket or SPDY) are relayed transparently — the request goes
//! out with its upgrade headers, and once both sides switched protocols the
//! bytes are copied both ways — so any sub-protocol works end to end.

use super::Api;
use super::error::{ApiError, ApiResult};
use super::object::ObjectExt;
use super::registry::Subresource;
use super::rest::decode_stored;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::Arc;

const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Request headers that stay with the API server.
const PRIVATE_HEADERS: &[&str] = &["authorization", "cookie", "host", "impersonate-user", "impersonate-group", "content-length"];

/// How the API server reaches node agents: TLS trusting the cluster CA, with
/// the API server's client certificate.
#[derive(Clone)]
pub struct NodeClient {
    tls: tokio_rustls::TlsConnector,
}

impl NodeClient {
    pub fn new(config: rustls::ClientConfig) -> Self {
        Self { tls: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }

    /// Sends `request` to the agent at `host:port` on a connection of its
    /// own, which lives on for an upgrade.
    pub async fn send(&self, host: &str, port: u16, request: http::Request<Empty<bytes::Bytes>>) -> ApiResult<http::Response<hyper::body::Incoming>> {
        crate::client::https(&self.tls, host, port, request)
            .await
            .map_err(|e| ApiError::service_unavailable(format!("error dialing the node agent at {host}:{port}: {e}")))
    }
}

/// The address and endpoint port of node `name`, from its status.
pub async fn node_endpoint(api: &Api, name: &str) -> ApiResult<(String, u16)> {
    let resource = api.registry.lookup("", "v1", "nodes").expect("nodes are served");
    let kv = api
        .store
        .get(&resource.key("", name))
        .await
        .map_err(|e| ApiError::from_store(e, resource.error_name(), name))?
        .ok_or_else(|| ApiError::not_found(resource.error_name(), name))?;
    endpoint_of(&decode_stored(&kv)?).ok_or_else(|| ApiError::service_unavailable(format!("node {name} publishes no address and endpoint port")))
}

/// A Node's InternalIP (or host name) and published endpoint port.
pub fn endpoint_of(node: &Value) -> Option<(String, u16)> {
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).filter(|p| (1..=65535).contains(p))?;
    let addresses = node.pointer("/status/addresses").and_then(Value::as_array)?;
    let of_type = |t: &str| addresses.iter().find(|a| a["type"] == t).and_then(|a| a["address"].as_str());
    Some((of_type("InternalIP").or_else(|| of_type("Hostname"))?.to_owned(), port as u16))
}

/// The container a request names, or the pod's default one.
fn container_of(pod: &Value, requested: Option<&str>) -> ApiResult<String> {
    let names = |list: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    let name = pod.name();
    if let Some(requested) = requested {
        if containers.iter().chain(init.iter()).chain(names("ephemeralContainers").iter()).any(|c| c == requested) {
            return Ok(requested.to_owned());
        }
        return Err(ApiError::bad_request(format!("container {requested} is not valid for pod {name}")));
    }
    let annotated = pod.pointer(&format!("/metadata/annotations/{}", DEFAULT_CONTAINER_ANNOTATION.replace('/', "~1"))).and_then(Value::as_str);
    if let Some(default) = annotated.filter(|d| containers.iter().any(|c| c == d)) {
        return Ok(default.to_owned());
    }
    match containers.as_slice() {
        [only] => Ok(only.clone()),
        _ => {
            let mut message = format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" "));
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The agent path for a stream of `pod`, with the client's query (less `container`).
fn agent_path(pod: &Value, sub: Subresource, container: Option<&str>, query: Option<&str>) -> String {
    let (namespace, name) = (pod.namespace(), pod.name());
    let base = match (sub, container) {
        (Subresource::Log, Some(c)) => format!("/containerLogs/{namespace}/{name}/{c}"),
        (Subresource::Exec, Some(c)) => format!("/exec/{namespace}/{name}/{c}"),
        (Subresource::Attach, Some(c)) => format!("/attach/{namespace}/{name}/{c}"),
        _ => format!("/portForward/{namespace}/{name}"),
    };
    let kept: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().filter(|(k, _)| k != "container").collect();
    if kept.is_empty() {
        return base;
    }
    let mut encoded = form_urlencoded::Serializer::new(String::new());
    encoded.extend_pairs(kept);
    format!("{base}?{}", encoded.finish())
}

/// Serves a streaming subresource of `namespace/name` (a pod).
pub async fn serve(api: Arc<Api>, sub: Subresource, namespace: &str, name: &str, request: http::Request<Body>) -> Response {
    match relay(api, sub, namespace, name, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn relay(api: Arc<Api>, sub: Subresource, namespace: &str, name: &str, mut request: http::Request<Body>) -> ApiResult<Response> {
    let allowed = match sub {
        Subresource::Log => request.method() == Method::GET,
        _ => request.method() == Method::GET || request.method() == Method::POST,
    };
    if !allowed {
        return Err(ApiError::method_not_allowed(format!("{} is not supported on pods/{}", request.method(), sub.path())));
    }
    let client = api.nodes.clone().ok_or_else(|| ApiError::service_unavailable("this server does not reach node agents"))?;
    let resource = api.registry.lookup("", "v1", "pods").expect("pods are served");
    let kv = api
        .store
        .get(&resource.key(namespace, name))
        .await
        .map_err(|e| ApiError::from_store(e, resource.error_name(), name))?
        .ok_or_else(|| ApiError::not_found(resource.error_name(), name))?;
    let pod = decode_stored(&kv)?;
    let query = request.uri().query().map(str::to_owned);
    let requested = form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()).find(|(k, _)| k == "container").map(|(_, v)| v.into_owned());
    let container = match sub {
        Subresource::PortForward => None,
        _ => Some(container_of(&pod, requested.as_deref().filter(|c| !c.is_empty()))?),
    };
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    if sub != Subresource::Log && matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!("cannot {} a container in a completed pod; current phase is {phase}", if sub == Subresource::PortForward { "port-forward to" } else { "exec into" })));
    }
    let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty());
    let node = node.ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?;
    let (host, port) = node_endpoint(&api, node).await?;

    let mut outgoing = http::Request::builder().method(request.method()).uri(agent_path(&pod, sub, container.as_deref(), query.as_deref()));
    for (key, value) in request.headers() {
        if !PRIVATE_HEADERS.contains(&key.as_str()) {
            outgoing = outgoing.header(key, value);
        }
    }
    let outgoing = outgoing.header(header::HOST, format!("{host}:{port}")).body(Empty::new()).map_err(ApiError::internal)?;
    let upgrading = wants_upgrade(request.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
    let mut response = client.send(&host, port, outgoing).await?;
    let (status, headers) = (response.status(), response.headers().clone());
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let client_upgrade = client_upgrade.ok_or_else(|| ApiError::internal("the node agent switched protocols unasked"))?;
        let agent_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, agent_upgrade) {
                Ok((client, agent)) => {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(agent)).await;
                }
                Err(e) => tracing::debug!(error = %e, "stream upgrade failed"),
            }
        });
        let mut answer = Response::new(Body::empty());
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        return Ok(answer);
    }
    let mut answer = Response::new(Body::new(response.into_body()));
    *answer.status_mut() = status;
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(value) = headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    Ok(answer)
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], init: &[&str]) -> Value {
        let list = |names: &[&str]| names.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>();
        json!({ "metadata": { "name": "web", "namespace": "ns" }, "spec": { "containers": list(containers), "initContainers": list(init) } })
    }

    #[test]
    fn the_only_container_is_the_default_and_others_must_be_named() {
        assert_eq!(container_of(&pod(&["app"], &[]), None).unwrap(), "app");
        let err = container_of(&pod(&["a", "b"], &["setup"]), None).unwrap_err();
        assert_eq!(err.message, "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [setup]");
        assert_eq!(container_of(&pod(&["a", "b"], &["setup"]), Some("setup")).unwrap(), "setup");
        assert_eq!(container_of(&pod(&["a"], &[]), Some("x")).unwrap_err().message, "container x is not valid for pod web");
        let mut annotated = pod(&["a", "b"], &[]);
        annotated["metadata"]["annotations"] = json!({ DEFAULT_CONTAINER_ANNOTATION: "b" });
        assert_eq!(container_of(&annotated, None).unwrap(), "b");
    }

    #[test]
    fn agent_paths_keep_the_query_but_the_container() {
        let p = pod(&["app"], &[]);
        assert_eq!(agent_path(&p, Subresource::Log, Some("app"), Some("container=app&follow=true")), "/containerLogs/ns/web/app?follow=true");
        assert_eq!(
            agent_path(&p, Subresource::Exec, Some("app"), Some("command=sh&command=-c&command=echo+hi&stdout=true")),
            "/exec/ns/web/app?command=sh&command=-c&command=echo+hi&stdout=true"
        );
        assert_eq!(agent_path(&p, Subresource::PortForward, None, None), "/portForward/ns/web");
    }

    #[test]
    fn a_node_is_reached_at_its_internal_ip_and_published_port() {
        let node = json!({ "status": {
            "addresses": [{ "type": "Hostname", "address": "h" }, { "type": "InternalIP", "address": "10.0.0.5" }],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
        }});
        assert_eq!(endpoint_of(&node), Some(("10.0.0.5".to_owned(), 10250)));
        assert_eq!(endpoint_of(&json!({ "status": { "addresses": [] } })), None);
    }
}

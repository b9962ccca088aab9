//! `metrics.k8s.io/v1beta1`, what `kubectl top` reads: NodeMetrics and
//! PodMetrics (get and list; pods by namespace or across all, with label
//! selectors). Nothing is stored: each request asks the agents concerned —
//! the nodes running the pods asked about, or the nodes asked about — for
//! their latest sample (`/metrics/resource`, kept by each agent every 15 s),
//! concurrently and with a short timeout, and answers from what came back.
//! This keeps the store free of a write per pod every few seconds, costs a
//! request no more than one round trip to the nodes that matter, and cannot
//! serve metrics of pods that are gone.

use super::Api;
use super::error::{ApiError, ApiResult};
use super::nodeproxy::endpoint_of;
use super::object::ObjectExt;
use super::rest::decode_stored;
use super::selector::LabelSelector;
use crate::node::metrics::Report;
use crate::store::ListRequest;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The group's entry in `/apis`.
pub fn group_entry() -> Value {
    let version = json!({ "groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION });
    json!({ "name": GROUP, "versions": [version.clone()], "preferredVersion": version })
}

fn resources() -> Value {
    let entry = |name: &str, singular: &str, kind: &str, namespaced: bool| {
        json!({ "name": name, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"] })
    };
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [entry("nodes", "", "NodeMetrics", false), entry("pods", "", "PodMetrics", true)],
    })
}

/// The group's routes.
pub fn routes() -> Router<Arc<Api>> {
    let base = format!("/apis/{GROUP}/{VERSION}");
    Router::new()
        .route(&format!("/apis/{GROUP}"), get(|| async { json_ok(&{ let mut g = group_entry(); g["kind"] = json!("APIGroup"); g["apiVersion"] = json!("v1"); g }) }))
        .route(&base, get(|| async { json_ok(&resources()) }))
        .route(&format!("{base}/nodes"), get(list_nodes))
        .route(&format!("{base}/nodes/{{name}}"), get(get_node))
        .route(&format!("{base}/pods"), get(|State(api): State<Arc<Api>>, RawQuery(q): RawQuery| async move { respond(pods(&api, None, None, q.as_deref()).await) }))
        .route(&format!("{base}/namespaces/{{namespace}}/pods"), get(|State(api): State<Arc<Api>>, Path(ns): Path<String>, RawQuery(q): RawQuery| async move {
            respond(pods(&api, Some(&ns), None, q.as_deref()).await)
        }))
        .route(&format!("{base}/namespaces/{{namespace}}/pods/{{name}}"), get(|State(api): State<Arc<Api>>, Path((ns, name)): Path<(String, String)>| async move {
            respond(pods(&api, Some(&ns), Some(&name), None).await)
        }))
}

fn json_ok(value: &Value) -> Response {
    super::codec::respond(StatusCode::OK, value, super::codec::Output::Json)
}

fn respond(result: ApiResult<Value>) -> Response {
    result.map_or_else(|e| e.into_response(), |v| json_ok(&v))
}

fn selector(query: Option<&str>) -> ApiResult<Option<LabelSelector>> {
    let raw = form_urlencoded::parse(query.unwrap_or("").as_bytes()).find(|(k, _)| k == "labelSelector").map(|(_, v)| v.into_owned());
    raw.filter(|s| !s.is_empty()).map(|s| LabelSelector::parse(&s).map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))).transpose()
}

async fn stored(api: &Api, plural: &str, namespace: Option<&str>) -> ApiResult<Vec<Value>> {
    let resource = api.registry.lookup("", "v1", plural).expect("core kinds are served");
    let page = api
        .store
        .list(ListRequest { prefix: resource.key_prefix(namespace), after: None, limit: None, revision: None })
        .await
        .map_err(|e| ApiError::from_store(e, resource.error_name(), ""))?;
    page.items.iter().map(decode_stored).collect()
}

/// The latest reports of `nodes`; nodes that do not answer in time are left out.
async fn reports(api: &Api, nodes: &[Value]) -> HashMap<String, Report> {
    let Some(client) = api.nodes.clone() else { return HashMap::new() };
    let asks = nodes.iter().filter_map(|node| Some((node.name().to_owned(), endpoint_of(node)?))).map(|(name, (host, port))| {
        let client = client.clone();
        async move {
            let request = http::Request::get("/metrics/resource").header(http::header::HOST, format!("{host}:{port}")).body(Empty::new()).ok()?;
            let fetch = async {
                let response = client.send(&host, port, request).await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                let body = response.into_body().collect().await.ok()?.to_bytes();
                serde_json::from_slice::<Report>(&body).ok()
            };
            Some((name, tokio::time::timeout(AGENT_TIMEOUT, fetch).await.ok()??))
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

fn node_metrics(node: &Value, report: &Report) -> Option<Value> {
    let usage = report.node.as_ref()?;
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": { "name": node.name(), "labels": node.labels().cloned().unwrap_or_default(), "creationTimestamp": usage.timestamp },
        "timestamp": usage.timestamp, "window": usage.window,
        "usage": { "cpu": usage.usage.cpu, "memory": usage.usage.memory },
    }))
}

async fn list_nodes(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    let listed = async {
        let selector = selector(query.as_deref())?;
        let nodes: Vec<Value> = stored(&api, "nodes", None).await?.into_iter().filter(|n| selector.as_ref().is_none_or(|s| s.matches_json(n.labels()))).collect();
        let reports = reports(&api, &nodes).await;
        let items: Vec<Value> = nodes.iter().filter_map(|n| node_metrics(n, reports.get(n.name())?)).collect();
        Ok(json!({ "kind": "NodeMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items }))
    };
    respond(listed.await)
}

async fn get_node(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Response {
    let found = async {
        let node = stored(&api, "nodes", None).await?.into_iter().find(|n| n.name() == name);
        let missing = || ApiError::not_found(super::error::ResourceName { group: GROUP, plural: "nodes" }, &name);
        let node = node.ok_or_else(missing)?;
        let reports = reports(&api, std::slice::from_ref(&node)).await;
        reports.get(&name).and_then(|r| node_metrics(&node, r)).ok_or_else(missing)
    };
    respond(found.await)
}

/// PodMetrics of the pods in `namespace` (all when `None`), or of one pod.
async fn pods(api: &Api, namespace: Option<&str>, name: Option<&str>, query: Option<&str>) -> ApiResult<Value> {
    let selector = selector(query)?;
    let pods: Vec<Value> = stored(api, "pods", namespace)
        .await?
        .into_iter()
        .filter(|p| name.is_none_or(|n| p.name() == n) && selector.as_ref().is_none_or(|s| s.matches_json(p.labels())))
        .collect();
    let wanted: BTreeSet<&str> = pods.iter().filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str)).collect();
    let nodes: Vec<Value> = stored(api, "nodes", None).await?.into_iter().filter(|n| wanted.contains(n.name())).collect();
    let reports = reports(api, &nodes).await;
    let items: Vec<Value> = pods
        .iter()
        .filter_map(|pod| {
            let node = pod.pointer("/spec/nodeName").and_then(Value::as_str)?;
            let usage = reports.get(node)?.pods.iter().find(|u| u.namespace == pod.namespace() && u.name == pod.name())?;
            let containers: Vec<Value> = usage.containers.iter().map(|c| json!({ "name": c.name, "usage": { "cpu": c.usage.cpu, "memory": c.usage.memory } })).collect();
            Some(json!({
                "kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": { "name": pod.name(), "namespace": pod.namespace(), "labels": pod.labels().cloned().unwrap_or_default(), "creationTimestamp": usage.timestamp },
                "timestamp": usage.timestamp, "window": usage.window, "containers": containers,
            }))
        })
        .collect();
    match name {
        Some(n) => items.into_iter().next().ok_or_else(|| ApiError::not_found(super::error::ResourceName { group: GROUP, plural: "pods" }, n)),
        None => Ok(json!({ "kind": "PodMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::metrics::{NodeUsage, Usage};

    #[test]
    fn node_metrics_carry_the_agents_sample() {
        let node = json!({ "metadata": { "name": "n1", "labels": { "a": "b" } } });
        let report = Report {
            node: Some(NodeUsage { timestamp: "2024-01-01T00:00:00Z".into(), window: "15s".into(), usage: Usage { cpu: "5n".into(), memory: "1Ki".into() } }),
            pods: vec![],
        };
        let m = node_metrics(&node, &report).unwrap();
        assert_eq!((m["kind"].as_str(), m["usage"]["cpu"].as_str(), m["metadata"]["labels"]["a"].as_str()), (Some("NodeMetrics"), Some("5n"), Some("b")));
        assert_eq!(node_metrics(&node, &Report::default()), None, "no sample yet");
    }

    #[test]
    fn discovery_names_both_resources() {
        let r = resources();
        let names: Vec<&str> = r["resources"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(names, ["nodes", "pods"]);
        assert_eq!(group_entry()["preferredVersion"]["version"], "v1beta1");
    }
}

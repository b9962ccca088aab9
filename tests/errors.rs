//! Bad requests get the Status a Kubernetes client expects, change nothing, and
//! the server keeps serving; nothing reaches data without credentials.

mod common;

use common::Server;
use serde_json::{Value, json};
use std::io::{Read, Write};

/// Sends a raw request with the admin credentials; returns the status code and body.
async fn send(client: &kube::Client, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let request = http::Request::builder().method(method).uri(path).header("content-type", content_type).body(body).unwrap();
    let response = client.send(request.map(kube::client::Body::from)).await.expect("response");
    let code = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())))
}

fn assert_status(got: &(u16, Value), code: u16, reason: &str) {
    assert_eq!(got.0, code, "{}", got.1);
    assert_eq!(got.1["kind"], "Status", "{}", got.1);
    assert_eq!(got.1["reason"], reason, "{}", got.1);
    assert_eq!(got.1["code"], code);
}

/// What the bad requests could have touched: the objects (name and revision) of
/// the collections they aimed at. The global revision is no witness, because the
/// controllers of a fresh server write concurrently (default ServiceAccounts,
/// root CA ConfigMaps, Endpoints).
async fn snapshot(client: &kube::Client) -> Vec<(String, String)> {
    let mut objects = Vec::new();
    for path in ["/api/v1/configmaps", "/apis/apps/v1/deployments", "/api/v1/secrets", "/api/v1/namespaces"] {
        let (_, list) = send(client, "GET", path, "application/json", vec![]).await;
        for item in list["items"].as_array().expect("items") {
            let meta = &item["metadata"];
            objects.push((format!("{path} {}/{}", meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap()), meta["resourceVersion"].as_str().unwrap().to_owned()));
        }
    }
    objects.sort();
    objects
}

#[tokio::test]
async fn bad_requests_get_the_right_status_and_change_nothing() {
    let server = Server::start();
    let client = server.client().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let json = "application/json";
    // Wait for the start-up writes: a root CA ConfigMap in every namespace.
    for _ in 0..100 {
        let (_, namespaces) = send(&client, "GET", "/api/v1/namespaces", json, vec![]).await;
        let (_, roots) = send(&client, "GET", "/api/v1/configmaps?fieldSelector=metadata.name=kube-root-ca.crt", json, vec![]).await;
        if roots["items"].as_array().unwrap().len() == namespaces["items"].as_array().unwrap().len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = snapshot(&client).await;

    let invalid_name = send(&client, "POST", cms, json, br#"{"metadata":{"name":"Bad_Name"}}"#.to_vec()).await;
    assert_status(&invalid_name, 422, "Invalid");
    assert_eq!(invalid_name.1["details"]["causes"][0]["field"], "metadata.name");
    assert!(invalid_name.1["message"].as_str().unwrap().starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));

    let missing = send(&client, "POST", "/apis/apps/v1/namespaces/default/deployments", json, br#"{"metadata":{"name":"d"},"spec":{"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{}}}}"#.to_vec()).await;
    assert_status(&missing, 422, "Invalid");
    let fields: Vec<&str> = missing.1["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"spec.template.spec.containers"), "{fields:?}");

    let wrong_type = send(&client, "POST", cms, json, br#"{"metadata":{"name":"x"},"data":{"a":1}}"#.to_vec()).await;
    assert_status(&wrong_type, 400, "BadRequest");
    assert!(wrong_type.1["message"].as_str().unwrap().contains("data.a"), "{}", wrong_type.1);

    let unknown_field = send(&client, "POST", &format!("{cms}?fieldValidation=Strict"), json, br#"{"metadata":{"name":"x"},"bogus":1}"#.to_vec()).await;
    assert_status(&unknown_field, 400, "BadRequest");
    assert_eq!(unknown_field.1["message"], "strict decoding error: unknown field \"bogus\"");

    let wrong_kind = send(&client, "POST", cms, json, br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#.to_vec()).await;
    assert_status(&wrong_kind, 400, "BadRequest");

    let unknown_resource = send(&client, "GET", "/api/v1/namespaces/default/widgets", json, vec![]).await;
    assert_status(&unknown_resource, 404, "NotFound");

    let broken_json = send(&client, "POST", cms, json, br#"{"metadata": {"name": "x""#.to_vec()).await;
    assert_status(&broken_json, 400, "BadRequest");
    let broken_yaml = send(&client, "POST", cms, "application/yaml", b"metadata:\n  name: [x\n".to_vec()).await;
    assert_status(&broken_yaml, 400, "BadRequest");

    let huge = json!({"metadata": {"name": "huge"}, "data": {"k": "x".repeat(4 * 1024 * 1024)}}).to_string().into_bytes();
    let too_large = send(&client, "POST", cms, json, huge).await;
    assert_status(&too_large, 413, "RequestEntityTooLarge");

    let missing_ns = send(&client, "POST", "/api/v1/namespaces/nowhere/configmaps", json, br#"{"metadata":{"name":"x"}}"#.to_vec()).await;
    assert_status(&missing_ns, 404, "NotFound");
    assert_eq!(missing_ns.1["message"], "namespaces \"nowhere\" not found");

    let method = send(&client, "POST", "/api/v1/namespaces/default/configmaps/x/status", json, b"{}".to_vec()).await;
    assert_eq!(method.0, 404, "configmaps have no status subresource");

    assert_eq!(snapshot(&client).await, before, "nothing was written");
    let (code, _) = send(&client, "GET", "/api/v1/namespaces", json, vec![]).await;
    assert_eq!(code, 200, "the server still serves");
}

#[tokio::test]
async fn conflicting_and_duplicate_writes_are_refused() {
    let server = Server::start();
    let client = server.client().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, created) = send(&client, "POST", cms, "application/json", br#"{"metadata":{"name":"c"},"data":{"v":"1"}}"#.to_vec()).await;
    assert_eq!(code, 201);
    let again = send(&client, "POST", cms, "application/json", br#"{"metadata":{"name":"c"}}"#.to_vec()).await;
    assert_status(&again, 409, "AlreadyExists");
    assert_eq!(again.1["message"], "configmaps \"c\" already exists");

    let rv = created["metadata"]["resourceVersion"].as_str().unwrap();
    let update = |v: &str, rv: &str| json!({"metadata": {"name": "c", "resourceVersion": rv}, "data": {"v": v}}).to_string().into_bytes();
    let (code, updated) = send(&client, "PUT", &format!("{cms}/c"), "application/json", update("2", rv)).await;
    assert_eq!(code, 200, "{updated}");
    let stale = send(&client, "PUT", &format!("{cms}/c"), "application/json", update("3", rv)).await;
    assert_status(&stale, 409, "Conflict");
    assert_eq!(
        stale.1["message"],
        "Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (_, now) = send(&client, "GET", &format!("{cms}/c"), "application/json", vec![]).await;
    assert_eq!(now["data"]["v"], "2");
    let immortal = send(&client, "DELETE", "/api/v1/namespaces/default", "application/json", vec![]).await;
    assert_status(&immortal, 403, "Forbidden");
}

#[tokio::test]
async fn requests_without_credentials_are_refused() {
    let server = Server::start();
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    config.auth_info = Default::default();
    let anonymous = kube::Client::try_from(config).unwrap();
    for path in ["/api/v1/namespaces", "/api/v1/secrets", "/apis", "/openapi/v3"] {
        let got = send(&anonymous, "GET", path, "application/json", vec![]).await;
        assert_status(&got, 401, "Unauthorized");
    }
    let (code, _) = send(&anonymous, "GET", "/readyz", "application/json", vec![]).await;
    assert_eq!(code, 200, "health checks need no credentials");
    // A wrong token is no better than none.
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    config.auth_info = kube::config::AuthInfo { token: Some("not-a-token".to_owned().into()), ..Default::default() };
    let wrong = kube::Client::try_from(config).unwrap();
    assert_status(&send(&wrong, "GET", "/api/v1/namespaces", "application/json", vec![]).await, 401, "Unauthorized");
}

#[test]
fn plain_http_is_refused() {
    let server = Server::start();
    let address = server.url.trim_start_matches("https://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.0 400 Bad Request"), "{reply}");
    assert!(reply.contains("Client sent an HTTP request to an HTTPS server."), "{reply}");
}

/// Clients decode a write's answer as the kind they expect (the Python client's
/// `delete_namespaced_service` returns a V1Service): Services come back from a
/// create with an empty load-balancer status and from a delete as the deleted
/// object, like pods; other kinds answer a delete with a success Status.
#[tokio::test]
async fn create_and_delete_answer_with_the_shapes_upstream_returns() {
    let server = Server::start();
    let client = server.client().await;
    let svcs = "/api/v1/namespaces/default/services";
    let body = br#"{"metadata":{"name":"web"},"spec":{"selector":{"app":"web"},"ports":[{"port":80}]}}"#.to_vec();
    let (code, created) = send(&client, "POST", svcs, "application/json", body).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["status"], json!({"loadBalancer": {}}), "{created}");
    let (code, deleted) = send(&client, "DELETE", &format!("{svcs}/web"), "application/json", vec![]).await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!((deleted["kind"].as_str(), deleted["metadata"]["name"].as_str()), (Some("Service"), Some("web")), "{deleted}");

    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, _) = send(&client, "POST", cms, "application/json", br#"{"metadata":{"name":"c"}}"#.to_vec()).await;
    assert_eq!(code, 201);
    let (code, deleted) = send(&client, "DELETE", &format!("{cms}/c"), "application/json", vec![]).await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!((deleted["kind"].as_str(), deleted["status"].as_str()), (Some("Status"), Some("Success")), "{deleted}");
}

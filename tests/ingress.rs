//! The ingress proxy through the real binary: Ingresses route by host and
//! path to backends the test runs on loopback addresses (published as
//! selector-less Services with EndpointSlices), with TLS from Secrets, the
//! default class, status and kubectl's columns. Requests are made with curl.

mod common;

use common::{Server, eventually, free_port, write_file};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster with its ingress proxy on loopback ports.
struct Cluster {
    server: Server,
    http: u16,
    https: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let (http, https) = (free_port(), free_port());
        let server = Server::start_with(&["--ingress-http", &format!("127.0.0.1:{http}"), "--ingress-https", &format!("127.0.0.1:{https}")]);
        Cluster { server, http, https }
    }

    fn apply(&self, name: &str, yaml: &str) {
        let file = write_file(self.server.dir.path(), name, yaml);
        self.server.ok(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// `(status, body)` of a GET to `host` and `path` over plain HTTP.
    fn get(&self, host: &str, path: &str) -> (u16, String) {
        curl(&["-H", &format!("Host: {host}"), &format!("http://127.0.0.1:{}{path}", self.http)])
    }

    /// Waits until a GET answers `status` with a body containing `body`.
    fn eventually_gets(&self, host: &str, path: &str, status: u16, body: &str) {
        let mut last = (0, String::new());
        let ok = eventually(TIMEOUT, || {
            last = self.get(host, path);
            last.0 == status && last.1.contains(body)
        });
        assert!(ok, "GET {host}{path} answers {status} with {body:?}; last: {last:?}");
    }

    /// Publishes `backends` (name, address, port) as a selector-less Service with one EndpointSlice.
    fn publish(&self, service: &str, backends: &[(Ipv4Addr, u16)]) {
        let port = backends.first().map_or(8080, |b| b.1);
        let endpoints: String = backends.iter().map(|(ip, _)| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n")).collect();
        let endpoints = if endpoints.is_empty() { "[]\n".to_owned() } else { format!("\n{endpoints}") };
        self.apply(
            &format!("{service}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {service}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: {endpoints}"
            ),
        );
    }
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]).args(args).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// Starts an HTTP server per address on one shared port; each answers
/// `<name> <path> host=<Host> proto=<X-Forwarded-Proto>`.
fn backends(name: &str, addresses: &[Ipv4Addr]) -> Vec<(Ipv4Addr, u16)> {
    loop {
        let port = free_port();
        let listeners: Vec<TcpListener> = addresses.iter().filter_map(|ip| TcpListener::bind((*ip, port)).ok()).collect();
        if listeners.len() != addresses.len() {
            continue;
        }
        for (listener, ip) in listeners.into_iter().zip(addresses) {
            let label = format!("{name}@{ip}");
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    answer(stream, &label);
                }
            });
        }
        return addresses.iter().map(|ip| (*ip, port)).collect();
    }
}

fn answer(mut stream: std::net::TcpStream, label: &str) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let (mut host, mut proto) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or(("", ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => host = value.trim().to_owned(),
            "x-forwarded-proto" => proto = value.trim().to_owned(),
            _ => {}
        }
    }
    let body = format!("{label} {path} host={host} proto={proto}");
    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn route(host: &str, path: &str, path_type: &str, service: &str) -> String {
    format!("  - host: \"{host}\"\n    http:\n      paths: [{{path: \"{path}\", pathType: {path_type}, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}]\n")
}

#[test]
fn hosts_and_paths_route_to_their_services() {
    let cluster = Cluster::start();
    for (service, address) in [("web", 2), ("api", 3), ("exact", 4), ("wild", 5)] {
        cluster.publish(service, &backends(service, &[ip(address)]));
    }
    let rules = [
        route("shop.example.com", "/", "Prefix", "web"),
        route("shop.example.com", "/api", "Prefix", "api"),
        route("shop.example.com", "/about", "Exact", "exact"),
        route("*.apps.example.com", "/", "Prefix", "wild"),
    ]
    .concat();
    cluster.apply("shop.yaml", &format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: shop}}\nspec:\n  rules:\n{rules}"));
    cluster.eventually_gets("shop.example.com", "/", 200, "web@127.0.0.2 / host=shop.example.com proto=http");
    cluster.eventually_gets("shop.example.com", "/api/v1/items?x=1", 200, "api@127.0.0.3 /api/v1/items?x=1");
    cluster.eventually_gets("shop.example.com", "/apis", 200, "web@");
    cluster.eventually_gets("shop.example.com", "/about", 200, "exact@");
    cluster.eventually_gets("shop.example.com", "/about/team", 200, "web@");
    cluster.eventually_gets("Shop.Example.com:8080", "/api", 200, "api@");
    cluster.eventually_gets("a.apps.example.com", "/", 200, "wild@");
    cluster.eventually_gets("a.b.apps.example.com", "/", 404, "default backend - 404");
    cluster.eventually_gets("elsewhere.example.com", "/", 404, "default backend - 404");
}

#[test]
fn a_default_backend_takes_what_no_rule_matches() {
    let cluster = Cluster::start();
    cluster.publish("app", &backends("app", &[ip(6)]));
    cluster.publish("fallback", &backends("fallback", &[ip(7)]));
    let rules = route("app.example.com", "/app", "Exact", "app");
    cluster.apply(
        "app.yaml",
        &format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: app}}\nspec:\n  defaultBackend: {{service: {{name: fallback, port: {{name: http}}}}}}\n  rules:\n{rules}"),
    );
    cluster.eventually_gets("app.example.com", "/app", 200, "app@");
    cluster.eventually_gets("app.example.com", "/other", 200, "fallback@");
    cluster.eventually_gets("unknown.example.com", "/", 200, "fallback@");
}

#[test]
fn requests_are_spread_round_robin_over_ready_endpoints() {
    let cluster = Cluster::start();
    cluster.publish("pool", &backends("pool", &[ip(8), ip(9)]));
    cluster.apply("pool.yaml", &format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: pool}}\nspec:\n  rules:\n{}", route("pool.example.com", "/", "Prefix", "pool")));
    cluster.eventually_gets("pool.example.com", "/", 200, "pool@");
    let seen: std::collections::BTreeSet<String> = (0..4).map(|_| cluster.get("pool.example.com", "/").1.split(' ').next().unwrap_or("").to_owned()).collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["pool@127.0.0.8", "pool@127.0.0.9"]);
}

#[test]
fn backends_without_ready_endpoints_answer_503() {
    let cluster = Cluster::start();
    cluster.publish("empty", &[]);
    let rules = [route("empty.example.com", "/", "Prefix", "empty"), route("ghost.example.com", "/", "Prefix", "no-such-service")].concat();
    cluster.apply("empty.yaml", &format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: empty}}\nspec:\n  rules:\n{rules}"));
    cluster.eventually_gets("empty.example.com", "/", 503, "503 Service Temporarily Unavailable");
    cluster.eventually_gets("ghost.example.com", "/", 503, "503");
}

#[test]
fn https_uses_the_certificate_of_the_ingress_tls_secret() {
    let cluster = Cluster::start();
    let dir = cluster.server.dir.path();
    let (ca_pem, cert_pem, key_pem) = issue("secure.example.com");
    let ca = write_file(dir, "ca.pem", &ca_pem);
    let (cert, key) = (write_file(dir, "tls.crt", &cert_pem), write_file(dir, "tls.key", &key_pem));
    cluster.server.ok(&["create", "secret", "tls", "secure-tls", "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    cluster.publish("secure", &backends("secure", &[ip(10)]));
    cluster.apply(
        "secure.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: secure}}\nspec:\n  tls: [{{hosts: [secure.example.com], secretName: secure-tls}}]\n  rules:\n{}",
            route("secure.example.com", "/", "Prefix", "secure")
        ),
    );
    let https = |host: &str, trust: &[&str]| {
        let resolve = format!("{host}:{}:127.0.0.1", cluster.https);
        let url = format!("https://{host}:{}/", cluster.https);
        let mut args = vec!["--resolve", &resolve];
        args.extend_from_slice(trust);
        args.push(&url);
        curl(&args)
    };
    let ca = ca.to_str().unwrap();
    let mut last = (0, String::new());
    assert!(eventually(TIMEOUT, || {
        last = https("secure.example.com", &["--cacert", ca]);
        last.0 == 200 && last.1.starts_with("secure@127.0.0.10 / host=secure.example.com:") && last.1.ends_with("proto=https")
    }), "the Secret's certificate verifies and the request is routed: {last:?}");
    assert_eq!(https("other.example.com", &["--cacert", ca]).0, 0, "a host without a Secret gets the default certificate, which the test CA did not sign");
    let (status, body) = https("other.example.com", &["--insecure"]);
    assert_eq!((status, body.trim()), (404, "default backend - 404"));
}

/// A CA and a certificate it issues for `host`, as PEM: (ca, cert, key).
fn issue(host: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ingress test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn ingresses_get_the_default_class_and_the_node_address_in_their_status() {
    let cluster = Cluster::start();
    let server = &cluster.server;
    let class = server.ok(&["get", "ingressclass", "rk", "-o", "jsonpath={.spec.controller} {.metadata.annotations.ingressclass\\.kubernetes\\.io/is-default-class}"]);
    assert_eq!(class, "rk.io/ingress true");
    cluster.publish("site", &backends("site", &[ip(11)]));
    cluster.apply("site.yaml", &format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: site}}\nspec:\n  rules:\n{}", route("site.example.com", "/", "Prefix", "site")));
    assert_eq!(server.ok(&["get", "ingress", "site", "-o", "jsonpath={.spec.ingressClassName}"]), "rk");
    assert!(eventually(TIMEOUT, || server.ok(&["get", "ing", "site", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]) == "127.0.0.1"));
    let table = server.ok(&["get", "ing", "site"]);
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(&row[..5], ["site", "rk", "site.example.com", "127.0.0.1", "80"]);
}

#[test]
fn ingresses_of_another_class_are_not_served() {
    let cluster = Cluster::start();
    cluster.apply("other-class.yaml", "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: other}\nspec: {controller: example.com/other}\n");
    cluster.publish("theirs", &backends("theirs", &[ip(12)]));
    cluster.publish("ours", &backends("ours", &[ip(13)]));
    let theirs = route("theirs.example.com", "/", "Prefix", "theirs");
    cluster.apply("theirs.yaml", &format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: theirs}}\nspec:\n  ingressClassName: other\n  rules:\n{theirs}"));
    cluster.apply("ours.yaml", &format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: ours}}\nspec:\n  rules:\n{}", route("ours.example.com", "/", "Prefix", "ours")));
    cluster.eventually_gets("ours.example.com", "/", 200, "ours@");
    assert_eq!(cluster.get("theirs.example.com", "/").0, 404);
    let ours_status = || cluster.server.ok(&["get", "ing", "ours", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]) == "127.0.0.1";
    assert!(eventually(TIMEOUT, ours_status));
    assert_eq!(cluster.server.ok(&["get", "ing", "theirs", "-o", "jsonpath={.status.loadBalancer.ingress}"]), "", "no address for another controller's Ingress");
}

#[test]
fn invalid_ingresses_are_refused_with_upstreams_messages() {
    let cluster = Cluster::start();
    let file = write_file(
        cluster.server.dir.path(),
        "bad.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad}\nspec:\n  rules:\n  - host: 10.0.0.1\n    http:\n      paths: [{path: relative, pathType: Prefix, backend: {service: {name: web}}}]\n",
    );
    let err = cluster.server.fails(&["apply", "-f", file.to_str().unwrap()]);
    for expected in ["spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address", "must be an absolute path", "port name or number is required"] {
        assert!(err.contains(expected), "{expected:?} in {err}");
    }
}

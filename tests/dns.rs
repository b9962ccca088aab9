//! The cluster DNS through the real binary: Services, headless endpoints,
//! ExternalName, SRV, pods, reverse lookups and NXDOMAIN answered from the
//! cluster, other names forwarded to an upstream server the test runs, over
//! UDP and TCP, queried with hickory's client as a pod's resolver would.

mod common;

use common::{Server, eventually, free_port, write_file};
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::rdata::{A, PTR, SOA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
/// What the fake upstream knows.
const OUTSIDE_NAME: &str = "outside.example.test.";
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// An address of the service range no Service has: its PTR is the upstream's to answer.
const UNALLOCATED_REVERSE: &str = "99.99.43.10.in-addr.arpa.";
const UPSTREAM_PTR: &str = "upstream-answer.example.test.";

/// A cluster with its DNS on loopback ports, forwarding to a fake upstream.
struct Cluster {
    server: Server,
    dns: SocketAddr,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    fn start(extra: &[&str]) -> Cluster {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let upstream = runtime.block_on(fake_upstream());
        let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (dns_arg, upstream_arg) = (dns.to_string(), upstream.to_string());
        let mut args = vec!["--dns-listen", &dns_arg, "--dns-upstream", &upstream_arg];
        args.extend_from_slice(extra);
        let server = Server::start_with(&args);
        let cluster = Cluster { server, dns, runtime };
        let up = || cluster.query("kubernetes.default.svc.cluster.local.", RecordType::A).is_some_and(|m| !m.answers.is_empty());
        assert!(eventually(TIMEOUT, up), "the DNS answers; log:\n{}", cluster.server.log());
        cluster
    }

    /// One UDP query; None if no answer came.
    fn query(&self, name: &str, rtype: RecordType) -> Option<Message> {
        self.runtime.block_on(async {
            let stream = UdpClientStream::builder(self.dns, TokioRuntimeProvider::default()).build();
            let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(background);
            ask(client, name, rtype).await
        })
    }

    fn query_tcp(&self, name: &str, rtype: RecordType) -> Option<Message> {
        self.runtime.block_on(async {
            let (stream, sender) = TcpClientStream::new(self.dns, None, None, TokioRuntimeProvider::default());
            let (client, background) = Client::<TokioRuntimeProvider>::new(stream.await.ok()?, sender);
            tokio::spawn(background);
            ask(client, name, rtype).await
        })
    }

    fn apply(&self, name: &str, yaml: &str) {
        let file = write_file(self.server.dir.path(), name, yaml);
        self.server.ok(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// Waits until `name` has answers of `rtype`, then returns the response.
    fn answered(&self, name: &str, rtype: RecordType) -> Message {
        let mut last = None;
        let found = eventually(TIMEOUT, || {
            last = self.query(name, rtype);
            last.as_ref().is_some_and(|m| !m.answers.is_empty())
        });
        assert!(found, "{name} {rtype} gets an answer; last: {last:?}");
        last.expect("an answer")
    }
}

async fn ask(mut client: Client<TokioRuntimeProvider>, name: &str, rtype: RecordType) -> Option<Message> {
    let name = Name::from_ascii(name).expect("valid name");
    let response = tokio::time::timeout(Duration::from_secs(5), client.query(name, DNSClass::IN, rtype)).await.ok()?.ok()?;
    Some(response.into_message())
}

/// An authoritative server on loopback for `example.test` and `43.10.in-addr.arpa`.
async fn fake_upstream() -> SocketAddr {
    let zone = |origin: &str, records: Vec<Record>| {
        let origin = Name::from_ascii(origin).unwrap();
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(Name::from_ascii("ns.example.test.").unwrap(), Name::from_ascii("admin.example.test.").unwrap(), 1, 60, 60, 60, 60);
        handler.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
        for record in records {
            handler.upsert_mut(record, 1);
        }
        (origin, handler)
    };
    let mut catalog = Catalog::new();
    let (origin, handler) = zone("example.test.", vec![Record::from_rdata(Name::from_ascii(OUTSIDE_NAME).unwrap(), 60, RData::A(A(OUTSIDE_IP)))]);
    catalog.upsert(origin.into(), vec![Arc::new(handler)]);
    let ptr = Record::from_rdata(Name::from_ascii(UNALLOCATED_REVERSE).unwrap(), 60, RData::PTR(PTR(Name::from_ascii(UPSTREAM_PTR).unwrap())));
    let (origin, handler) = zone("43.10.in-addr.arpa.", vec![ptr]);
    catalog.upsert(origin.into(), vec![Arc::new(handler)]);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
    let address = udp.local_addr().expect("upstream address");
    let tcp = tokio::net::TcpListener::bind(address).await.expect("bind upstream tcp");
    let mut server = hickory_server::Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    tokio::spawn(async move { server.block_until_done().await });
    address
}

fn addresses(message: &Message) -> Vec<String> {
    let mut out: Vec<String> = message.answers.iter().filter_map(|r| match &r.data {
        RData::A(a) => Some(a.0.to_string()),
        _ => None,
    }).collect();
    out.sort();
    out
}

fn kubectl_jsonpath(server: &Server, args: &[&str]) -> String {
    server.ok(args).trim().to_owned()
}

#[test]
fn services_resolve_to_their_cluster_ip_with_srv_for_named_ports() {
    let cluster = Cluster::start(&[]);
    assert_eq!(addresses(&cluster.answered("kubernetes.default.svc.cluster.local.", RecordType::A)), ["10.43.0.1"]);
    cluster.apply("web.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80}, {name: metrics, port: 9090, protocol: TCP}]\n");
    let ip = kubectl_jsonpath(&cluster.server, &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(addresses(&cluster.answered("web.default.svc.cluster.local.", RecordType::A)), std::slice::from_ref(&ip));

    let srv = cluster.answered("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    let RData::SRV(record) = &srv.answers[0].data else { panic!("an SRV record: {srv:?}") };
    assert_eq!((srv.answers.len(), record.port, record.target.to_string()), (1, 80, "web.default.svc.cluster.local.".to_owned()));
    assert!(srv.additionals.iter().any(|r| matches!(&r.data, RData::A(a) if a.0.to_string() == ip)), "the target's address comes along: {srv:?}");
    let all_ports = cluster.answered("web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(all_ports.answers.len(), 2);

    let reverse: Ipv4Addr = ip.parse().unwrap();
    let [a, b, c, d] = reverse.octets();
    let ptr = cluster.answered(&format!("{d}.{c}.{b}.{a}.in-addr.arpa."), RecordType::PTR);
    assert!(matches!(&ptr.answers[0].data, RData::PTR(p) if p.0.to_string() == "web.default.svc.cluster.local."), "{ptr:?}");

    let over_tcp = cluster.query_tcp("web.default.svc.cluster.local.", RecordType::A).expect("a TCP answer");
    assert_eq!(addresses(&over_tcp), [ip]);
}

#[test]
fn missing_names_in_the_zone_are_nxdomain_with_the_zone_soa() {
    let cluster = Cluster::start(&[]);
    for name in ["nothing.default.svc.cluster.local.", "web.nowhere.svc.cluster.local.", "a.b.c.d.e.svc.cluster.local.", "_http._tcp.kubernetes.default.svc.cluster.local."] {
        let answer = cluster.query(name, RecordType::A).expect("an answer");
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain, "{name}: {answer:?}");
        assert!(answer.authorities.iter().any(|r| matches!(&r.data, RData::SOA(s) if s.mname.to_string() == "ns.dns.cluster.local.")), "{name}: {answer:?}");
    }
    let namespace = cluster.query("default.svc.cluster.local.", RecordType::A).expect("an answer");
    assert_eq!((namespace.metadata.response_code, namespace.answers.len()), (ResponseCode::NoError, 0), "an existing namespace has no records: {namespace:?}");
    let no_aaaa = cluster.query("kubernetes.default.svc.cluster.local.", RecordType::AAAA).expect("an answer");
    assert_eq!((no_aaaa.metadata.response_code, no_aaaa.answers.len()), (ResponseCode::NoError, 0));
}

#[test]
fn headless_services_resolve_to_ready_endpoints_and_pod_hostnames() {
    let cluster = Cluster::start(&["--fake-nodes", "1"]);
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: db}}}}\nspec:\n  hostname: {name}\n  subdomain: db\n  nodeName: fake-0\n  containers: [{{name: db, image: postgres, ports: [{{containerPort: 5432}}]}}]\n"
        )
    };
    cluster.apply("db.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: None\n  selector: {app: db}\n  ports: [{name: pg, port: 5432}]\n");
    cluster.apply("db-0.yaml", &pod("db-0"));
    cluster.apply("db-1.yaml", &pod("db-1"));
    let ips = |name: &str| kubectl_jsonpath(&cluster.server, &["get", "pod", name, "-o", "jsonpath={.status.podIP}"]);
    assert!(eventually(TIMEOUT, || !ips("db-0").is_empty() && !ips("db-1").is_empty()));
    let (ip0, ip1) = (ips("db-0"), ips("db-1"));
    let mut both = vec![ip0.clone(), ip1.clone()];
    both.sort();
    assert!(eventually(TIMEOUT, || cluster.query("db.default.svc.cluster.local.", RecordType::A).is_some_and(|m| addresses(&m) == both)));
    assert_eq!(addresses(&cluster.answered("db-0.db.default.svc.cluster.local.", RecordType::A)), std::slice::from_ref(&ip0));

    let srv = cluster.answered("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
    let mut targets: Vec<String> = srv.answers.iter().filter_map(|r| match &r.data { RData::SRV(s) => Some(format!("{} {}", s.target, s.port)), _ => None }).collect();
    targets.sort();
    assert_eq!(targets, ["db-0.db.default.svc.cluster.local. 5432", "db-1.db.default.svc.cluster.local. 5432"]);

    let [a, b, c, d] = ip0.parse::<Ipv4Addr>().unwrap().octets();
    let ptr = cluster.answered(&format!("{d}.{c}.{b}.{a}.in-addr.arpa."), RecordType::PTR);
    assert!(matches!(&ptr.answers[0].data, RData::PTR(p) if p.0.to_string() == "db-0.db.default.svc.cluster.local."), "{ptr:?}");
}

#[test]
fn not_ready_endpoints_are_left_out_of_headless_answers() {
    let cluster = Cluster::start(&[]);
    cluster.apply("cache.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: cache}\nspec:\n  clusterIP: None\n  ports: [{name: redis, port: 6379}]\n");
    cluster.apply(
        "cache-slice.yaml",
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cache-1, labels: {kubernetes.io/service-name: cache}}
addressType: IPv4
ports: [{name: redis, port: 6379, protocol: TCP}]
endpoints:
- addresses: [10.42.0.5]
  conditions: {ready: true}
- addresses: [10.42.0.6]
- addresses: [10.42.0.7]
  conditions: {ready: false}
"#,
    );
    assert!(eventually(TIMEOUT, || cluster.query("cache.default.svc.cluster.local.", RecordType::A).is_some_and(|m| addresses(&m) == ["10.42.0.5", "10.42.0.6"])));
    let by_address = cluster.answered("10-42-0-6.cache.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addresses(&by_address), ["10.42.0.6"]);
}

#[test]
fn external_name_services_answer_with_a_cname_and_the_targets_address() {
    let cluster = Cluster::start(&[]);
    cluster.apply("ext.yaml", &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: ext}}\nspec:\n  type: ExternalName\n  externalName: {}\n", OUTSIDE_NAME.trim_end_matches('.')));
    let answer = cluster.answered("ext.default.svc.cluster.local.", RecordType::A);
    assert!(matches!(&answer.answers[0].data, RData::CNAME(c) if c.0.to_string() == OUTSIDE_NAME), "{answer:?}");
    assert_eq!(addresses(&answer), [OUTSIDE_IP.to_string()]);
    let cname = cluster.answered("ext.default.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(cname.answers.len(), 1);
}

#[test]
fn pod_names_resolve_to_the_address_they_spell() {
    let cluster = Cluster::start(&[]);
    assert_eq!(addresses(&cluster.answered("10-42-3-9.default.pod.cluster.local.", RecordType::A)), ["10.42.3.9"]);
    let other_namespace = cluster.query("10-42-3-9.nowhere.pod.cluster.local.", RecordType::A).expect("an answer");
    assert_eq!(other_namespace.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn names_outside_the_cluster_are_forwarded_upstream() {
    let cluster = Cluster::start(&[]);
    assert_eq!(addresses(&cluster.answered(OUTSIDE_NAME, RecordType::A)), [OUTSIDE_IP.to_string()]);
    let missing = cluster.query("missing.example.test.", RecordType::A).expect("an answer");
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain, "{missing:?}");
    let ptr = cluster.answered(UNALLOCATED_REVERSE, RecordType::PTR);
    assert!(matches!(&ptr.answers[0].data, RData::PTR(p) if p.0.to_string() == UPSTREAM_PTR), "addresses the cluster does not know fall through: {ptr:?}");
}

#[test]
fn the_kube_dns_service_points_at_the_dns_listener() {
    let cluster = Cluster::start(&[]);
    let server = &cluster.server;
    assert_eq!(kubectl_jsonpath(server, &["get", "svc", "-n", "kube-system", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"]), "10.43.0.10");
    let ports = kubectl_jsonpath(server, &["get", "svc", "-n", "kube-system", "kube-dns", "-o", "jsonpath={range .spec.ports[*]}{.name}/{.protocol}/{.port}->{.targetPort} {end}"]);
    let port = cluster.dns.port();
    assert_eq!(ports, format!("dns/UDP/53->{port} dns-tcp/TCP/53->{port}"));
    let slice = kubectl_jsonpath(server, &["get", "endpointslices", "-n", "kube-system", "-l", "kubernetes.io/service-name=kube-dns", "-o", "jsonpath={.items[0].endpoints[0].addresses[0]}"]);
    assert_eq!(slice, "127.0.0.1");
    assert_eq!(addresses(&cluster.answered("ns.dns.cluster.local.", RecordType::A)), ["10.43.0.10"]);
}

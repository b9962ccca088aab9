//! The service proxy on a real kernel (root only; skipped otherwise). Each test
//! builds a lab of network namespaces: a "node" where `rk server` runs with its
//! proxy, a bridge with "pods" (namespaces with veths) running small TCP/UDP
//! servers that answer with their name and the client address they saw, and an
//! "outside" host on the node's LAN. Services are created without selectors,
//! with EndpointSlices of our own, as users do for external endpoints. Deleting
//! the namespaces removes every table and link the test made.

mod common;

use common::Server;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const NODE_IP: &str = "192.168.250.1";
const OUTSIDE_IP: &str = "192.168.250.2";
const BRIDGE_IP: &str = "10.42.0.1";

/// A pod's server: TCP 8080 and UDP 5353 answer "<name> <client address>".
const POD_SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 5353))
    while True:
        _, a = u.recvfrom(100)
        u.sendto(f"{name} {a[0]}".encode(), a)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(128)
while True:
    c, a = s.accept()
    c.sendall(f"{name} {a[0]}\n".encode())
    c.close()
"#;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("command runs");
    assert!(out.status.success(), "{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Network namespaces for one test, removed when dropped.
struct Lab {
    prefix: String,
    pods: usize,
    servers: Vec<Child>,
}

impl Lab {
    /// A node with `pods` pods (10.42.0.11, .12, …) and an outside host; None when not root.
    fn new(pods: usize) -> Option<Lab> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: the proxy tests need root and iproute2");
            return None;
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("rkp{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab { prefix, pods, servers: Vec::new() };
        let (node, outside) = (lab.node(), lab.outside());
        for ns in [&node, &outside] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sh(&["ip", "-n", &node, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &outside]);
        sh(&["ip", "-n", &node, "addr", "add", &format!("{NODE_IP}/24"), "dev", "lan0"]);
        sh(&["ip", "-n", &node, "link", "set", "lan0", "up"]);
        sh(&["ip", "-n", &outside, "addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"]);
        sh(&["ip", "-n", &outside, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &outside, "route", "add", "default", "via", NODE_IP]);
        sh(&["ip", "-n", &node, "route", "add", "default", "via", OUTSIDE_IP]);
        sh(&["ip", "-n", &node, "link", "add", "rk0", "type", "bridge"]);
        sh(&["ip", "-n", &node, "addr", "add", &format!("{BRIDGE_IP}/24"), "dev", "rk0"]);
        sh(&["ip", "-n", &node, "link", "set", "rk0", "up"]);
        for i in 1..=pods {
            let pod = lab.pod(i);
            sh(&["ip", "netns", "add", &pod]);
            sh(&["ip", "-n", &pod, "link", "set", "lo", "up"]);
            let veth = format!("veth{i}");
            sh(&["ip", "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod]);
            sh(&["ip", "-n", &node, "link", "set", &veth, "master", "rk0", "up"]);
            // A pod reaching itself through a Service is bridged back out of its own port.
            sh(&["ip", "-n", &node, "link", "set", &veth, "type", "bridge_slave", "hairpin", "on"]);
            sh(&["ip", "-n", &pod, "addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"]);
            sh(&["ip", "-n", &pod, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &pod, "route", "add", "default", "via", BRIDGE_IP]);
            let server = Command::new("ip")
                .args(["netns", "exec", &pod, "/usr/bin/python3", "-c", POD_SERVER, &format!("pod{i}")])
                .stdout(Stdio::null())
                .spawn()
                .expect("pod server starts");
            lab.servers.push(server);
        }
        for i in 1..=pods {
            let deadline = Instant::now() + Duration::from_secs(10);
            while on(&lab.node(), move || tcp(&format!("{}:8080", pod_ip(i)))).is_err() {
                assert!(Instant::now() < deadline, "pod{i}'s server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(lab)
    }

    fn node(&self) -> String {
        format!("{}-node", self.prefix)
    }

    fn outside(&self) -> String {
        format!("{}-out", self.prefix)
    }

    fn pod(&self, i: usize) -> String {
        format!("{}-pod{i}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let names = [self.node(), self.outside()].into_iter().chain((1..=self.pods).map(|i| self.pod(i)));
        for ns in names {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn pod_ip(i: usize) -> String {
    format!("10.42.0.{}", 10 + i)
}

/// Runs `f` on a thread inside network namespace `ns`; processes and sockets it
/// creates live there.
fn on<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace exists");
        // SAFETY: setns on this thread only, with a namespace file descriptor we hold.
        assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) }, 0, "setns {path}");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Runs an async test body inside namespace `ns`.
fn run_on<F: std::future::Future<Output = ()> + 'static>(ns: &str, body: impl FnOnce() -> F + Send + 'static) {
    on(ns, move || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(body()));
}

/// One TCP request: the answer, trimmed.
fn tcp(address: &str) -> std::io::Result<String> {
    let address: SocketAddr = address.parse().expect("socket address");
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.trim().to_owned())
}

/// One HTTP GET: the status and the JSON body.
fn http_get(address: &str) -> std::io::Result<(u16, serde_json::Value)> {
    let address: SocketAddr = address.parse().expect("socket address");
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    std::io::Write::write_all(&mut stream, b"GET /healthz HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, answer.clone());
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    let body = answer.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).ok_or_else(invalid)?;
    Ok((status, body))
}

/// One UDP request: the answer.
fn udp(address: &str) -> std::io::Result<String> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(address)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send(b"hello")?;
    let mut buffer = [0u8; 200];
    let n = socket.recv(&mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

/// A UDP client that keeps one socket, so all its requests are one conntrack flow.
struct UdpClient(UdpSocket);

impl UdpClient {
    fn connect(address: &str) -> UdpClient {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
        socket.connect(address).expect("connect");
        socket.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        UdpClient(socket)
    }

    /// One request on the socket: the answer.
    fn ask(&self) -> std::io::Result<String> {
        self.0.send(b"hello")?;
        let mut buffer = [0u8; 200];
        let n = self.0.recv(&mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
    }
}

/// The pod names that answered `count` requests (answers are "<pod> <client>").
fn answering(count: usize, request: impl Fn() -> std::io::Result<String>) -> BTreeSet<String> {
    (0..count).filter_map(|_| request().ok()).filter_map(|a| a.split_whitespace().next().map(str::to_owned)).collect()
}

fn names(pods: &[usize]) -> BTreeSet<String> {
    pods.iter().map(|i| format!("pod{i}")).collect()
}

/// A selector-less Service (`ports`: name, port, protocol).
async fn create_service(client: &kube::Client, name: &str, kind: &str, ports: &[(&str, i32, &str)]) -> Service {
    create_service_with(client, name, json!({ "type": kind }), ports).await
}

/// A selector-less Service with more of its `spec` given.
async fn create_service_with(client: &kube::Client, name: &str, mut spec: serde_json::Value, ports: &[(&str, i32, &str)]) -> Service {
    spec["ports"] = ports.iter().map(|(n, p, proto)| json!({ "name": n, "port": p, "protocol": proto })).collect();
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "default" },
        "spec": spec,
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), "default").create(&PostParams::default(), &service).await.expect("service created")
}

/// Our own EndpointSlice for Service `name`: `(pod, ready)` endpoints, ports http→8080/TCP and dns→5353/UDP.
async fn set_endpoints(client: &kube::Client, name: &str, endpoints: &[(usize, bool)]) {
    let endpoints: Vec<_> = endpoints.iter().map(|(i, ready)| (*i, *ready, None)).collect();
    set_endpoints_on(client, name, &endpoints).await;
}

/// [`set_endpoints`] with the node of each endpoint: `(pod, ready, node)`.
async fn set_endpoints_on(client: &kube::Client, name: &str, endpoints: &[(usize, bool, Option<&str>)]) {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(i, ready, node)| json!({ "addresses": [pod_ip(*i)], "nodeName": node, "conditions": { "ready": ready, "serving": ready, "terminating": false } }))
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{name}-manual"), "namespace": "default",
            "labels": { "kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "tests.rk.example" } },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }, { "name": "dns", "port": 5353, "protocol": "UDP" }],
    });
    let api = Api::<EndpointSlice>::namespaced(client.clone(), "default");
    api.patch(&format!("{name}-manual"), &PatchParams::apply("tests").force(), &Patch::Apply(&slice)).await.expect("slice applied");
}

/// Retries `check` until it holds (the proxy works asynchronously).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long after `since` the endpoint `pod` last answered, once 40 requests in a row went elsewhere.
async fn out_of_rotation_after(since: Instant, pod: &str, request: impl Fn() -> std::io::Result<String>) -> Duration {
    let mut last_seen = since;
    let mut elsewhere = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while elsewhere < 40 {
        assert!(Instant::now() < deadline, "{pod} never left the rotation");
        match request() {
            Ok(answer) if answer.starts_with(&format!("{pod} ")) => {
                last_seen = Instant::now();
                elsewhere = 0;
            }
            Ok(_) => elsewhere += 1,
            Err(_) => {}
        }
    }
    last_seen - since
}

fn cluster_ip(service: &Service) -> String {
    service.spec.as_ref().and_then(|s| s.cluster_ip.clone()).expect("cluster IP")
}

#[test]
fn cluster_ips_balance_over_ready_endpoints_from_the_host_and_from_pods() {
    let Some(lab) = Lab::new(3) else { return };
    let client_pod = lab.pod(3);
    run_on(&lab.node(), move || async move {
        let server = Server::start_with_proxy(&[]);
        let client = server.client().await;
        let service = create_service(&client, "web", "ClusterIP", &[("http", 80, "TCP"), ("dns", 53, "UDP")]).await;
        let ip = cluster_ip(&service);
        set_endpoints(&client, "web", &[(1, true), (2, true), (3, true)]).await;
        let http = format!("{ip}:80");
        let dns = format!("{ip}:53");

        let all = names(&[1, 2, 3]);
        eventually("the host reaches every endpoint over TCP", || answering(60, || tcp(&http)) == all).await;
        eventually("the host reaches every endpoint over UDP", || answering(60, || udp(&dns)) == all).await;
        let from_pod = {
            let http = http.clone();
            move || on(&client_pod, move || (0..60).filter_map(|_| tcp(&http).ok()).collect::<Vec<_>>())
        };
        let answers = from_pod();
        let seen: BTreeSet<String> = answers.iter().filter_map(|a| a.split_whitespace().next().map(str::to_owned)).collect();
        assert_eq!(seen, all, "a pod reaches every endpoint, itself included: {answers:?}");
        // Hairpin: pod3 reaching itself is masqueraded to the bridge address, or its reply would never return.
        assert!(answers.contains(&format!("pod3 {BRIDGE_IP}")), "{answers:?}");
        assert!(answers.contains(&format!("pod1 {}", pod_ip(3))), "pod-to-pod traffic keeps the client address: {answers:?}");

        let not_ready = Instant::now();
        set_endpoints(&client, "web", &[(1, true), (2, false), (3, true)]).await;
        let gone = out_of_rotation_after(not_ready, "pod2", || tcp(&http)).await;
        eprintln!("a not-ready endpoint left the rotation within {gone:?}");
        assert!(gone < Duration::from_secs(2), "pod2 still answered {gone:?} after it became not ready");

        let removed = Instant::now();
        set_endpoints(&client, "web", &[(3, true)]).await;
        let gone = out_of_rotation_after(removed, "pod1", || tcp(&http)).await;
        assert!(gone < Duration::from_secs(2), "pod1 still answered {gone:?} after its removal");
        assert_eq!(answering(20, || tcp(&http)), names(&[3]));
    });
}

#[test]
fn node_ports_and_load_balancer_ips_answer_on_node_addresses_localhost_and_from_outside() {
    let Some(lab) = Lab::new(2) else { return };
    let outside = lab.outside();
    run_on(&lab.node(), move || async move {
        let server = Server::start_with_proxy(&[]);
        let client = server.client().await;
        let service = create_service(&client, "edge", "NodePort", &[("http", 80, "TCP"), ("dns", 53, "UDP")]).await;
        let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).expect("ports");
        let node_port = |name: &str| ports.iter().find(|p| p.name.as_deref() == Some(name)).and_then(|p| p.node_port).expect("node port");
        set_endpoints(&client, "edge", &[(1, true), (2, true)]).await;
        let both = names(&[1, 2]);
        let (http, dns) = (node_port("http"), node_port("dns"));

        let on_node = format!("{NODE_IP}:{http}");
        eventually("the node's address answers on the node port", || answering(40, || tcp(&on_node)) == both).await;
        let localhost = format!("127.0.0.1:{http}");
        eventually("localhost answers on the node port", || answering(40, || tcp(&localhost)) == both).await;
        let udp_port = format!("{NODE_IP}:{dns}");
        eventually("the UDP node port answers", || answering(40, || udp(&udp_port)) == both).await;
        let answers = on(&outside, move || (0..40).filter_map(|_| tcp(&on_node).ok()).collect::<Vec<_>>());
        let seen: BTreeSet<String> = answers.iter().filter_map(|a| a.split_whitespace().next().map(str::to_owned)).collect();
        assert_eq!(seen, both, "{answers:?}");
        assert!(answers.iter().all(|a| a.ends_with(&format!(" {BRIDGE_IP}"))), "outside clients are masqueraded: {answers:?}");

        // A node with this address: ServiceLB gives a LoadBalancer Service the node's address.
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": { "name": "lab-node" },
            "status": { "addresses": [{ "type": "InternalIP", "address": NODE_IP }] },
        }))
        .expect("node");
        let node = Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.expect("node created");
        Api::<Node>::all(client.clone())
            .patch_status("lab-node", &PatchParams::default(), &Patch::Merge(json!({ "status": node.status })))
            .await
            .expect("node status");
        create_service(&client, "lb", "LoadBalancer", &[("http", 8000, "TCP")]).await;
        set_endpoints(&client, "lb", &[(2, true)]).await;
        let services = Api::<Service>::namespaced(client.clone(), "default");
        let mut ingress = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while ingress.is_empty() {
            assert!(Instant::now() < deadline, "the LoadBalancer Service got no ingress");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let lb = services.get("lb").await.expect("lb service");
            ingress = lb.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).unwrap_or_default();
        }
        assert_eq!(ingress[0].ip.as_deref(), Some(NODE_IP));
        eventually("the load-balancer address answers from outside", || {
            on(&outside, || answering(10, || tcp(&format!("{NODE_IP}:8000")))) == names(&[2])
        })
        .await;
    });
}

#[test]
fn services_without_endpoints_refuse_connections() {
    let Some(lab) = Lab::new(1) else { return };
    let pod = lab.pod(1);
    run_on(&lab.node(), move || async move {
        let server = Server::start_with_proxy(&[]);
        let client = server.client().await;
        let service = create_service(&client, "empty", "NodePort", &[("http", 80, "TCP"), ("dns", 53, "UDP")]).await;
        let ip = cluster_ip(&service);
        let node_port = service.spec.as_ref().and_then(|s| s.ports.as_ref()).and_then(|p| p[0].node_port).expect("node port");
        let refused = |r: std::io::Result<String>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        let (http, dns, port) = (format!("{ip}:80"), format!("{ip}:53"), format!("{NODE_IP}:{node_port}"));
        eventually("TCP to the cluster IP is refused", || refused(tcp(&http))).await;
        eventually("UDP to the cluster IP is refused to a pod", || {
            let dns = dns.clone();
            on(&pod, move || refused(udp(&dns)))
        })
        .await;
        eventually("the node port is refused", || refused(tcp(&port))).await;
        // Once it has an endpoint, it answers.
        set_endpoints(&client, "empty", &[(1, true)]).await;
        eventually("the Service answers once it has an endpoint", || tcp(&http).is_ok_and(|a| a.starts_with("pod1 "))).await;
    });
}

/// rk's chains in every table of the namespace the caller runs in.
fn rk_chains() -> BTreeSet<String> {
    let mut netlink = rk::net::netlink::Nfnetlink::open().expect("nf_tables");
    let tables = rk::net::model::Tables::new(rk::net::TABLE);
    tables.all().flat_map(|t| rk::net::proxier::list_table(&mut netlink, t).expect("listing").chains).collect()
}

#[test]
fn a_restarted_server_rebuilds_the_rules_and_drops_stale_ones() {
    let Some(lab) = Lab::new(2) else { return };
    run_on(&lab.node(), move || async move {
        // Docker's rules as Docker makes them (iptables-nft), which rk must never touch.
        let docker_rules: [&[&str]; 6] = [
            &["-t", "nat", "-N", "DOCKER"],
            &["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
            &["-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"],
            &["-N", "DOCKER-USER"],
            &["-A", "DOCKER-USER", "-j", "RETURN"],
            &["-A", "FORWARD", "-j", "DOCKER-USER"],
        ];
        for rule in docker_rules {
            sh(&[&["iptables"][..], rule].concat());
        }
        let foreign_before = foreign_ruleset();
        assert!(foreign_before.contains("DOCKER-USER"), "{foreign_before}");

        let mut server = Server::start_with_proxy(&[]);
        let client = server.client().await;
        let kept = cluster_ip(&create_service(&client, "kept", "ClusterIP", &[("http", 80, "TCP")]).await);
        let dropped = cluster_ip(&create_service(&client, "dropped", "ClusterIP", &[("http", 80, "TCP")]).await);
        set_endpoints(&client, "kept", &[(1, true)]).await;
        set_endpoints(&client, "dropped", &[(2, true)]).await;
        let (kept, dropped) = (format!("{kept}:80"), format!("{dropped}:80"));
        eventually("both Services answer", || tcp(&kept).is_ok() && tcp(&dropped).is_ok()).await;
        assert!(rk_chains().iter().any(|c| c.starts_with("svc/default/dropped/")));

        // Rules outlive the server: traffic flows while it is down.
        server.kill();
        assert!(tcp(&kept).is_ok_and(|a| a.starts_with("pod1 ")));
        // While no proxy runs, one Service goes away.
        server.proxy = false;
        server.restart();
        let client = server.client().await;
        Api::<Service>::namespaced(client.clone(), "default").delete("dropped", &DeleteParams::default()).await.expect("deleted");
        server.proxy = true;
        server.restart();
        eventually("the deleted Service's chains are gone", || !rk_chains().iter().any(|c| c.contains("/default/dropped/"))).await;
        assert!(rk_chains().iter().any(|c| c.starts_with("svc/default/kept/")), "{:?}", rk_chains());
        assert_eq!(answering(10, || tcp(&kept)), names(&[1]));
        assert!(tcp(&dropped).is_err());
        assert_eq!(foreign_ruleset(), foreign_before, "tables that are not rk's are untouched");
    });
}

/// `nft list ruleset` without rk's tables and without counters.
fn foreign_ruleset() -> String {
    let out = Command::new("nft").args(["-s", "list", "ruleset"]).output().expect("nft runs");
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    let ruleset = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut foreign = String::new();
    for table in ruleset.split("\ntable ").map(|t| t.trim_start_matches("table ")) {
        let name = table.split_whitespace().nth(1).unwrap_or_default();
        if !name.starts_with("rk") {
            foreign.push_str(table.trim());
            foreign.push('\n');
        }
    }
    foreign
}

#[test]
fn a_udp_flow_leaves_an_endpoint_removed_from_the_service() {
    let Some(lab) = Lab::new(2) else { return };
    run_on(&lab.node(), move || async move {
        let server = Server::start_with_proxy(&[]);
        let client = server.client().await;
        let dns = format!("{}:53", cluster_ip(&create_service(&client, "dns", "ClusterIP", &[("dns", 53, "UDP")]).await));
        set_endpoints(&client, "dns", &[(1, true)]).await;
        eventually("the Service answers over UDP", || udp(&dns).is_ok_and(|a| a.starts_with("pod1 "))).await;
        let flow = UdpClient::connect(&dns);
        eventually("the client's flow reaches pod1", || flow.ask().is_ok_and(|a| a.starts_with("pod1 "))).await;

        // pod1 still answers; only its conntrack entry ties the flow to it.
        set_endpoints(&client, "dns", &[(2, true)]).await;
        eventually("the client's flow moves to pod2", || flow.ask().is_ok_and(|a| a.starts_with("pod2 "))).await;
        assert!(flow.ask().is_ok_and(|a| a.starts_with("pod2 ")));
    });
}

#[test]
fn a_udp_flow_started_before_the_service_had_endpoints_reaches_them_once_it_has() {
    let Some(lab) = Lab::new(1) else { return };
    run_on(&lab.node(), move || async move {
        let server = Server::start_with_proxy(&[]);
        let client = server.client().await;
        let vip: std::net::SocketAddrV4 = "10.43.200.53:53".parse().unwrap();
        // Sent while no rule knows the address: conntrack records the flow
        // without NAT (routed toward the outside host, which does not answer).
        let flow = UdpClient::connect(&vip.to_string());
        for _ in 0..3 {
            assert!(flow.ask().is_err());
        }
        let mut netlink = rk::net::netlink::Nfnetlink::open().expect("netfilter netlink");
        let flows = rk::net::conntrack::udp_flows(&mut netlink).expect("conntrack dump");
        assert!(flows.iter().any(|f| f.destination == vip && f.reply_source == vip), "an un-NATed flow to {vip}: {flows:?}");

        create_service_with(&client, "late", json!({ "type": "ClusterIP", "clusterIP": vip.ip().to_string() }), &[("dns", 53, "UDP")]).await;
        set_endpoints(&client, "late", &[(1, true)]).await;
        eventually("the client's flow reaches the endpoint", || flow.ask().is_ok_and(|a| a.starts_with("pod1 "))).await;
    });
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_uses_this_nodes_endpoints() {
    let Some(lab) = Lab::new(2) else { return };
    let outside = lab.outside();
    run_on(&lab.node(), move || async move {
        let server = Server::start_with_proxy(&["--node-name", "lab-node"]);
        let client = server.client().await;
        let service = create_service_with(&client, "local", json!({ "type": "NodePort", "externalTrafficPolicy": "Local" }), &[("http", 80, "TCP")]).await;
        let node_port = service.spec.as_ref().and_then(|s| s.ports.as_ref()).and_then(|p| p[0].node_port).expect("node port");
        set_endpoints_on(&client, "local", &[(1, true, Some("lab-node")), (2, true, Some("elsewhere"))]).await;
        let address = format!("{NODE_IP}:{node_port}");
        let from_outside = |count: usize| {
            let (outside, address) = (outside.clone(), address.clone());
            on(&outside, move || (0..count).map(|_| tcp(&address)).collect::<Vec<_>>())
        };

        let unmasqueraded = format!("pod1 {OUTSIDE_IP}");
        eventually("outside clients reach only this node's endpoint, which sees their address", || {
            from_outside(20).iter().all(|a| a.as_ref().is_ok_and(|a| *a == unmasqueraded))
        })
        .await;
        // The node itself reaches every endpoint, as through the cluster IP.
        assert_eq!(answering(40, || tcp(&address)), names(&[1, 2]));

        // No endpoint on this node: outside traffic is dropped, the node's own still served.
        set_endpoints_on(&client, "local", &[(2, true, Some("elsewhere"))]).await;
        eventually("outside traffic is dropped", || from_outside(1).iter().all(|a| matches!(a, Err(e) if e.kind() == std::io::ErrorKind::TimedOut))).await;
        assert_eq!(answering(10, || tcp(&address)), names(&[2]));
    });
}

#[test]
fn local_load_balancers_answer_health_checks_with_this_nodes_ready_endpoints() {
    let Some(lab) = Lab::new(2) else { return };
    run_on(&lab.node(), move || async move {
        let server = Server::start_with_proxy(&["--node-name", "lab-node"]);
        let client = server.client().await;
        let service = create_service_with(&client, "lb", json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Local" }), &[("http", 80, "TCP")]).await;
        let port = service.spec.as_ref().and_then(|s| s.health_check_node_port).expect("a health check node port");
        let health = format!("{NODE_IP}:{port}");
        set_endpoints_on(&client, "lb", &[(1, true, Some("lab-node")), (2, true, Some("elsewhere"))]).await;
        eventually("the node reports its one endpoint", || {
            http_get(&health).is_ok_and(|(status, body)| status == 200 && body["localEndpoints"] == 1 && body["service"]["name"] == "lb")
        })
        .await;
        set_endpoints_on(&client, "lb", &[(2, true, Some("elsewhere"))]).await;
        eventually("the node reports none", || http_get(&health).is_ok_and(|(status, body)| status == 503 && body["localEndpoints"] == 0)).await;
        Api::<Service>::namespaced(client.clone(), "default").delete("lb", &DeleteParams::default()).await.expect("deleted");
        eventually("the health check port closes", || matches!(http_get(&health), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)).await;
    });
}

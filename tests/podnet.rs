//! rk's pod network on a real kernel with Docker (root, iproute2, iptables and
//! Docker; skipped otherwise). Each test builds a lab of network namespaces: an
//! "outside" host holding a LAN bridge and a TCP server that answers with the
//! address it sees, and one or two "nodes" on that LAN. Each node namespace
//! gets Docker's filter setup as Docker makes it on a host (iptables-nft:
//! FORWARD policy DROP, a DOCKER-USER chain ending in RETURN), so pod traffic
//! flows only if the agent opens it. `rk server` with its node agent and proxy
//! runs in the first node; a second node runs `rk agent --kubeconfig` in the
//! second. Docker's daemon stays on the host: each agent plugs the sandboxes it
//! creates into the bridge of its own namespace. Deleting the namespaces
//! removes every bridge, route and rule the agents made.
//!
//! Every pod runs busybox's httpd with a CGI answering "<hostname> <client
//! address>", so one request tells who answered and whom it saw.

mod common;

use common::{Agent, Server, eventually, in_netns, test_images, unique_node_name};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const OUTSIDE_IP: &str = "192.168.250.1";
const NODE_IPS: [&str; 2] = ["192.168.250.11", "192.168.250.12"];
const OUTSIDE_PORT: &str = "9000";

/// The outside host's server: answers each connection with the client's address.
const OUTSIDE_SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000))
s.listen(64)
while True:
    c, a = s.accept()
    c.sendall(f"{a[0]}\n".encode())
    c.close()
"#;

/// The outside host's resolver: `outside.example.test` is its own address, every
/// other name is NXDOMAIN.
const OUTSIDE_RESOLVER: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
while True:
    query, client = s.recvfrom(512)
    end, labels = 12, []
    while query[end]:
        labels.append(query[end + 1:end + 1 + query[end]].decode().lower())
        end += 1 + query[end]
    qtype = struct.unpack(">H", query[end + 1:end + 3])[0]
    found = labels == ["outside", "example", "test"] and qtype == 1
    header = query[:2] + struct.pack(">HHHHH", 0x8180 if found else 0x8183, 1, int(found), 0, 0)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("192.168.250.1") if found else b""
    s.sendto(header + query[12:end + 5] + answer, client)
"#;

/// A pod's server: `GET /cgi-bin/who` answers "<hostname> <client address>".
const POD_SERVER: &str = r#"mkdir -p /tmp/www/cgi-bin && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $(hostname) $REMOTE_ADDR\n' > /tmp/www/cgi-bin/who && chmod +x /tmp/www/cgi-bin/who && exec httpd -f -p 80 -h /tmp/www"#;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("command runs");
    assert!(out.status.success(), "{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn output(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("command runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Network namespaces for one test, removed when dropped.
struct Lab {
    prefix: String,
    nodes: usize,
    /// The outside host's HTTP server and resolver.
    outside_servers: Vec<Child>,
}

impl Lab {
    /// The outside host and `nodes` nodes on its LAN; None when the tools are missing.
    fn new(nodes: usize) -> Option<Lab> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let works = |tool: &str, arg: &str| Command::new(tool).arg(arg).output().is_ok_and(|o| o.status.success());
        let tools = works("ip", "-V") && works("iptables", "--version") && works("python3", "--version") && works("docker", "info");
        if !root || !tools {
            eprintln!("skipped: the pod network tests need root, iproute2, iptables, python3 and Docker");
            return None;
        }
        test_images();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("rkn{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab { prefix, nodes, outside_servers: Vec::new() };
        let outside = lab.outside();
        sh(&["ip", "netns", "add", &outside]);
        sh(&["ip", "-n", &outside, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &outside, "link", "add", "lan", "type", "bridge"]);
        sh(&["ip", "-n", &outside, "addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "lan"]);
        sh(&["ip", "-n", &outside, "link", "set", "lan", "up"]);
        for (i, node_ip) in NODE_IPS.iter().enumerate().take(nodes) {
            let node = lab.node(i);
            let port = format!("port{i}");
            sh(&["ip", "netns", "add", &node]);
            sh(&["ip", "-n", &node, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", &node, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &outside]);
            sh(&["ip", "-n", &outside, "link", "set", &port, "master", "lan", "up"]);
            sh(&["ip", "-n", &node, "addr", "add", &format!("{node_ip}/24"), "dev", "eth0"]);
            sh(&["ip", "-n", &node, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &node, "route", "add", "default", "via", OUTSIDE_IP]);
            // What Docker does to a host's filter table.
            for rule in [&["-N", "DOCKER-USER"][..], &["-A", "DOCKER-USER", "-j", "RETURN"], &["-P", "FORWARD", "DROP"], &["-A", "FORWARD", "-j", "DOCKER-USER"]] {
                let mut args = vec!["ip", "netns", "exec", &node, "iptables"];
                args.extend_from_slice(rule);
                sh(&args);
            }
        }
        for program in [OUTSIDE_SERVER, OUTSIDE_RESOLVER] {
            let server = in_netns(&mut Command::new("python3"), &outside).args(["-c", program]).stdout(Stdio::null()).spawn().expect("the outside server starts");
            lab.outside_servers.push(server);
        }
        Some(lab)
    }

    fn outside(&self) -> String {
        format!("{}-out", self.prefix)
    }

    fn node(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// Runs a command in node `i`'s namespace; its output.
    fn on_node(&self, i: usize, args: &[&str]) -> String {
        let node = self.node(i);
        let mut all = vec!["ip", "netns", "exec", node.as_str()];
        all.extend_from_slice(args);
        output(&all)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.outside_servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        for ns in (0..self.nodes).map(|i| self.node(i)).chain([self.outside()]) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// A second node: `rk agent` joined with the server's admin kubeconfig, in
/// node namespace 1 of the lab.
fn join_agent(lab: &Lab, server: &Server) -> Agent {
    let kubeconfig = server.kubeconfig();
    Agent::start(&unique_node_name(), Some(&lab.node(1)), &["--kubeconfig", kubeconfig.to_str().expect("a UTF-8 path")])
}

fn apply(server: &Server, manifest: &Value) {
    let out = server.kubectl_with(&["apply", "-f", "-"], Some(&manifest.to_string()), &[]);
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A pod running the "who" server on `node`.
fn who_pod(name: &str, node: &str, extra_spec: Value) -> Value {
    let mut spec = json!({
        "nodeName": node,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "rk-test/busybox:1", "command": ["sh", "-c", POD_SERVER]}],
    });
    spec.as_object_mut().unwrap().extend(extra_spec.as_object().cloned().unwrap_or_default());
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}}, "spec": spec})
}

fn get(server: &Server, args: &[&str]) -> Value {
    let out = server.kubectl(args);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits until the pod runs and is ready; returns it.
fn running(server: &Server, name: &str) -> Value {
    let ready = |p: &Value| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    let ok = eventually(TIMEOUT, || ready(&get(server, &["get", "pod", name, "-o", "json"])));
    let pod = get(server, &["get", "pod", name, "-o", "json"]);
    assert!(ok, "pod {name} never became ready: {}\n{}", pod["status"], server.ok(&["get", "events", "--field-selector", &format!("involvedObject.name={name}")]));
    pod
}

fn pod_ip(pod: &Value) -> String {
    pod["status"]["podIP"].as_str().expect("a pod IP").to_owned()
}

fn container_id(pod: &Value) -> String {
    let id = pod["status"]["containerStatuses"][0]["containerID"].as_str().expect("a container id");
    id.trim_start_matches("docker://").to_owned()
}

/// Runs a shell script in the pod's container.
fn exec(pod: &Value, script: &str) -> String {
    output(&["docker", "exec", &container_id(pod), "sh", "-c", script])
}

/// Asks the "who" server at `address` from inside `pod`: (who answered, whom it saw).
fn who(pod: &Value, address: &str) -> Option<(String, String)> {
    let answer = exec(pod, &format!(r"printf 'GET /cgi-bin/who HTTP/1.0\r\n\r\n' | nc -w 3 {address} 80 | tail -n 1"));
    let (name, client) = answer.split_once(' ')?;
    let client = client.trim_matches(|c| c == '[' || c == ']').trim_start_matches("::ffff:");
    Some((name.to_owned(), client.to_owned()))
}

/// `who`, retried while the network settles (routes, ARP, rules).
fn who_eventually(pod: &Value, address: &str) -> (String, String) {
    let mut answer = None;
    eventually(TIMEOUT, || {
        answer = who(pod, address);
        answer.is_some()
    });
    answer.unwrap_or_else(|| panic!("{address} never answered from pod {}", pod["metadata"]["name"]))
}

/// What the outside host saw as the client address of a connection from `pod`.
fn outside_sees(pod: &Value) -> String {
    let mut seen = String::new();
    eventually(TIMEOUT, || {
        seen = exec(pod, &format!("nc -w 3 {OUTSIDE_IP} {OUTSIDE_PORT}"));
        !seen.is_empty()
    });
    seen
}

fn node_pod_cidr(server: &Server, node: &str) -> ipnet::Ipv4Net {
    let mut cidr = None;
    eventually(TIMEOUT, || {
        cidr = get(server, &["get", "node", node, "-o", "json"])["spec"]["podCIDR"].as_str().and_then(|c| c.parse().ok());
        cidr.is_some()
    });
    cidr.unwrap_or_else(|| panic!("node {node} never got a pod CIDR"))
}

fn cluster_ip(server: &Server, service: &str) -> String {
    get(server, &["get", "service", service, "-o", "json"])["spec"]["clusterIP"].as_str().expect("a cluster IP").to_owned()
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}})
}

/// The host ends of pod veths in a node's namespace.
fn pod_links(lab: &Lab, node: usize) -> Vec<String> {
    lab.on_node(node, &["ip", "-br", "link"]).lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with("rkv")).map(str::to_owned).collect()
}

#[test]
fn pods_get_addresses_of_their_node_reach_each_other_their_services_and_the_outside_masqueraded() {
    let Some(lab) = Lab::new(1) else { return };
    // A simulated node too: its address is on no network of this node.
    // Names outside the cluster go to the outside host's resolver.
    let server = Server::start_in_netns(&lab.node(0), NODE_IPS[0], &["--fake-nodes", "1", "--dns-upstream", OUTSIDE_IP]);
    let node = server.node.clone().expect("an agent");
    apply(&server, &who_pod("web", &node, json!({})));
    apply(&server, &who_pod("client", &node, json!({})));
    apply(&server, &service("web"));
    let web = running(&server, "web");
    let client = running(&server, "client");

    let cidr = node_pod_cidr(&server, &node);
    for pod in [&web, &client] {
        let ip: std::net::Ipv4Addr = pod_ip(pod).parse().expect("an IPv4 pod IP");
        assert!(cidr.contains(&ip) && ip != cidr.hosts().next().unwrap(), "{ip} is a pod address of {cidr}");
    }
    assert_eq!(exec(&client, "ip -4 -o addr show eth0 | awk '{print $4}'"), format!("{}/{}", pod_ip(&client), cidr.prefix_len()));

    // Pod to pod on one bridge, through Docker's FORWARD policy.
    assert_eq!(who_eventually(&client, &pod_ip(&web)), ("web".to_owned(), pod_ip(&client)));
    // Through the Service, from another pod and from the endpoint itself (hairpin).
    let service_ip = cluster_ip(&server, "web");
    assert_eq!(who_eventually(&client, &service_ip).0, "web");
    assert_eq!(who_eventually(&web, &service_ip).0, "web");
    // To the outside: masqueraded to the node's address.
    assert_eq!(outside_sees(&client), NODE_IPS[0]);

    // Names: the cluster DNS for ClusterFirst pods, and the pod's own name on its address.
    let resolv = exec(&client, "cat /etc/resolv.conf");
    assert!(resolv.contains("nameserver 10.43.0.10") && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    assert!(exec(&client, "cat /etc/hosts").contains(&format!("{}\tclient", pod_ip(&client))));
    // The Service's name, short and qualified, through the kube-dns Service and the search path.
    let resolves = |name: &str, fqdn: &str, address: &str| {
        let answer = exec(&client, &format!("nslookup -type=a {name} 2>&1"));
        assert!(answer.lines().any(|l| l.starts_with("Name:") && l.ends_with(fqdn)), "{name}: {answer}");
        assert!(answer.lines().any(|l| l.starts_with("Address") && l.ends_with(address)), "{name}: {answer}");
    };
    for name in ["web", "web.default.svc.cluster.local"] {
        resolves(name, "web.default.svc.cluster.local", &service_ip);
    }
    // busybox's nslookup looks a dotted name up as it is; its C library's
    // resolver follows the search path for names with fewer than five dots.
    for name in ["web", "web.default", "web.default.svc"] {
        assert_eq!(who_eventually(&client, name).0, "web", "{name}");
    }
    // And a name outside the cluster, forwarded.
    resolves("outside.example.test", "outside.example.test", OUTSIDE_IP);

    // No route to a node that cannot be reached directly; a warning instead.
    node_pod_cidr(&server, "fake-0");
    assert!(eventually(TIMEOUT, || server.log().contains("is not on this node's network")), "{}", server.log());
    assert_eq!(lab.on_node(0, &["ip", "route", "show", "proto", "82"]), "");

    // A deleted pod gives back its address and its veth.
    assert_eq!(pod_links(&lab, 0).len(), 2);
    let allocations = server.data_dir().join("pod-network/ipam").join(cidr.to_string().replace('/', "-"));
    assert!(allocations.join(pod_ip(&web)).exists());
    server.ok(&["delete", "pod", "web"]);
    assert!(eventually(TIMEOUT, || !allocations.join(pod_ip(&web)).exists()), "the address of a deleted pod is released");
    assert!(eventually(TIMEOUT, || pod_links(&lab, 0).len() == 1), "{:?}", pod_links(&lab, 0));
}

#[test]
fn pods_on_different_nodes_reach_each_other_by_pod_ip_through_host_gw_routes() {
    let Some(lab) = Lab::new(2) else { return };
    let server = Server::start_in_netns(&lab.node(0), NODE_IPS[0], &[]);
    let first = server.node.clone().expect("an agent");
    let mut agent = join_agent(&lab, &server);
    let second = agent.node.clone();
    let (first_cidr, second_cidr) = (node_pod_cidr(&server, &first), node_pod_cidr(&server, &second));
    assert_ne!(first_cidr, second_cidr);

    apply(&server, &who_pod("a", &first, json!({})));
    apply(&server, &who_pod("b", &second, json!({})));
    apply(&server, &service("a"));
    let a = running(&server, "a");
    let b = running(&server, "b");
    assert!(second_cidr.contains(&pod_ip(&b).parse::<std::net::Ipv4Addr>().unwrap()), "{} in {second_cidr}; agent log:\n{}", pod_ip(&b), agent.log());

    // Each node routes the other's pod CIDR via the other's address.
    let routes = lab.on_node(0, &["ip", "route", "show", "proto", "82"]);
    assert_eq!(routes, format!("{second_cidr} via {} dev eth0", NODE_IPS[1]));
    assert_eq!(lab.on_node(1, &["ip", "route", "show", "proto", "82"]), format!("{first_cidr} via {} dev eth0", NODE_IPS[0]));

    // Pod to pod across nodes, each seeing the other's pod IP (no NAT in between).
    assert_eq!(who_eventually(&a, &pod_ip(&b)), ("b".to_owned(), pod_ip(&a)));
    assert_eq!(who_eventually(&b, &pod_ip(&a)), ("a".to_owned(), pod_ip(&b)));
    // The second node's proxy sends a Service's traffic to the endpoint on the first.
    assert_eq!(who_eventually(&b, &cluster_ip(&server, "a")).0, "a");
    assert_eq!(outside_sees(&b), NODE_IPS[1]);

    // A node that is gone takes its route with it.
    agent.stop();
    server.ok(&["delete", "node", &second]);
    assert!(eventually(TIMEOUT, || lab.on_node(0, &["ip", "route", "show", "proto", "82"]).is_empty()), "the route to a deleted node's pods stays");
}

#[test]
fn a_restarted_agent_keeps_its_pods_addresses_and_never_hands_one_out_twice() {
    let Some(lab) = Lab::new(1) else { return };
    let mut server = Server::start_in_netns(&lab.node(0), NODE_IPS[0], &[]);
    let node = server.node.clone().expect("an agent");
    apply(&server, &who_pod("first", &node, json!({})));
    let first = pod_ip(&running(&server, "first"));

    // SIGKILL: nothing is cleaned up; the new agent adopts the sandbox and plugs it again.
    server.restart();
    apply(&server, &who_pod("second", &node, json!({})));
    let second = running(&server, "second");
    assert_ne!(pod_ip(&second), first, "an address in use is not handed out again");
    assert_eq!(who_eventually(&second, &first), ("first".to_owned(), pod_ip(&second)));
    assert_eq!(pod_ip(&running(&server, "first")), first);
    assert_eq!(pod_links(&lab, 0).len(), 2, "the adopted sandbox keeps its one veth");
}

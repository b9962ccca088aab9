//! Pods' streams and metrics through the API server and the node agent, on a
//! real Docker engine, with unmodified clients: `kubectl logs` (follow,
//! tail, container, previous), `kubectl exec` (exit codes, stdin, a TTY),
//! `kubectl attach`, `kubectl port-forward` (SPDY tunnelled in WebSocket and
//! plain SPDY) to a server on the pod's localhost, the Python client's exec
//! and port-forward, `kubectl top`, and a pod calling the API with its
//! projected service account token. Images come from tools/test-images.sh.

mod common;

use common::{Server, eventually};
use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);

fn agent_server() -> Server {
    common::test_images();
    Server::start_with_agent(&[])
}

/// Applies `yaml` with `NODE` replaced by the agent's node name.
fn apply(server: &Server, yaml: &str) {
    let yaml = yaml.replace("NODE", server.node.as_deref().expect("an agent"));
    let out = server.kubectl_with(&["apply", "-f", "-"], Some(&yaml), &[]);
    assert!(out.status.success(), "apply failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
}

fn wait_running(server: &Server, pod: &str) {
    let running = eventually(TIMEOUT, || server.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]).stdout == b"Running");
    assert!(running, "pod {pod} never ran; log:\n{}", server.log());
}

/// Runs a one-container pod (`labels` as YAML flow mapping) and waits until it runs.
fn run_pod(server: &Server, name: &str, labels: &str, image: &str, command: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {labels}}}\nspec:\n  nodeName: NODE\n  containers:\n  - {{name: app, image: \"{image}\", command: {command}}}\n"
    );
    apply(server, &yaml);
    wait_running(server, name);
}

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn logs_follow_tail_and_pick_containers_and_previous_instances() {
    let server = agent_server();
    apply(
        &server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: chatty}
spec:
  nodeName: NODE
  restartPolicy: OnFailure
  volumes: [{name: state, emptyDir: {}}]
  containers:
  - name: lines
    image: rk-test/busybox:1
    command: ["sh", "-c", "for i in 1 2 3 4 5; do echo line-$i; done; sleep 1; echo to-stderr >&2; sleep 3600"]
  - name: ticker
    image: rk-test/busybox:1
    command: ["sh", "-c", "for i in 1 2 3 4 5 6; do echo tick-$i; sleep 1; done"]
  - name: crash
    image: rk-test/busybox:1
    volumeMounts: [{name: state, mountPath: /state}]
    command: ["sh", "-c", "n=$(($(cat /state/n 2>/dev/null || echo 0) + 1)); echo $n > /state/n; echo attempt-$n; exit 1"]
"#,
    );
    wait_running(&server, "chatty");

    assert!(eventually(TIMEOUT, || server.kubectl(&["logs", "chatty", "-c", "lines"]).stdout.ends_with(b"to-stderr\n")));
    let (stdout, stderr) = text(&server.kubectl(&["logs", "chatty"]));
    assert!(stdout.starts_with("line-1\n") && stderr.contains("Defaulted container \"lines\""), "kubectl picks the first container: {stderr}");
    assert_eq!(server.ok(&["logs", "chatty", "-c", "lines", "--tail=2"]), "line-5\nto-stderr\n");
    let stamped = server.ok(&["logs", "chatty", "-c", "lines", "--tail=1", "--timestamps"]);
    assert!(stamped.ends_with("Z to-stderr\n") && stamped.starts_with("20"), "{stamped}");
    assert_eq!(server.ok(&["logs", "chatty", "-c", "lines", "--limit-bytes=7"]), "line-1\n");

    // Following ends by itself when the container exits, with everything it wrote.
    let followed = server.ok(&["logs", "-f", "chatty", "-c", "ticker"]);
    assert_eq!(followed, "tick-1\ntick-2\ntick-3\ntick-4\ntick-5\ntick-6\n");

    let restarted = eventually(TIMEOUT, || {
        let count = server.kubectl(&["get", "pod", "chatty", "-o", "jsonpath={.status.containerStatuses[?(@.name=='crash')].restartCount}"]);
        String::from_utf8_lossy(&count.stdout).trim().parse::<u32>().unwrap_or(0) >= 1
    });
    assert!(restarted, "the crashing container never restarted");
    let previous = server.ok(&["logs", "chatty", "-c", "crash", "--previous"]);
    let current = server.ok(&["logs", "chatty", "-c", "crash"]);
    assert!(previous.starts_with("attempt-") && current.starts_with("attempt-") && previous != current, "previous {previous:?}, current {current:?}");
    let err = server.fails(&["logs", "chatty", "-c", "lines", "--previous"]);
    assert!(err.contains("previous terminated container \"lines\" in pod \"chatty\" not found"), "{err}");
}

#[test]
fn exec_carries_output_stdin_terminals_and_exit_codes() {
    let server = agent_server();
    run_pod(&server, "shell", "{}", "rk-test/busybox:1", r#"["sleep", "3600"]"#);
    let out = server.kubectl(&["exec", "shell", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (stdout, stderr) = text(&out);
    assert_eq!((out.status.code(), stdout.as_str()), (Some(3), "out\n"));
    assert!(stderr.contains("err\n") && stderr.contains("command terminated with exit code 3"), "{stderr}");
    assert_eq!(server.ok(&["exec", "shell", "--", "hostname"]), "shell\n");
    let out = server.kubectl_with(&["exec", "-i", "shell", "--", "sh", "-c", "tr a-z A-Z; echo done"], Some("piped input\n"), &[]);
    assert_eq!(text(&out).0, "PIPED INPUT\ndone\n", "stdin reaches the command and its end closes it");
    let err = server.fails(&["exec", "shell", "-c", "nope", "--", "true"]);
    assert!(err.contains("container nope is not valid for pod shell"), "{err}");

    // With a terminal (script gives kubectl one): the command sees a TTY, input echoes, the exit code comes back.
    let command = "kubectl exec -it shell -- sh -c 'tty; read line; echo got-$line; exit 4'";
    let mut script = server
        .command("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script runs");
    std::thread::sleep(Duration::from_secs(3));
    script.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = script.wait_with_output().unwrap();
    let stdout = text(&out).0;
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("/dev/pts/") && stdout.contains("got-hello"), "{stdout}");
}

#[test]
fn attach_streams_the_output_of_a_running_container() {
    let server = agent_server();
    run_pod(&server, "talker", "{}", "rk-test/busybox:1", r#"["sh", "-c", "while true; do echo talking; sleep 1; done"]"#);
    let mut attach = server
        .command("kubectl")
        .args(["attach", "talker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl runs");
    let mut lines = std::io::BufReader::new(attach.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok);
    let _ = attach.kill();
    let _ = attach.wait();
    assert_eq!(first.as_deref(), Some("talking"));
}

/// Starts `kubectl port-forward` to `target` and returns it with the local port it chose.
fn port_forward(server: &Server, target: &str, env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let mut child = server
        .command("kubectl")
        .args(["port-forward", target, ":8080"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().and_then(Result::ok).unwrap_or_default();
    let port = line.strip_prefix("Forwarding from 127.0.0.1:").and_then(|l| l.split(' ').next()).and_then(|p| p.parse().ok());
    let Some(port) = port else {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("kubectl port-forward said {line:?}: {err}");
    };
    // Keep draining kubectl's output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, port)
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects to the forwarded port");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn port_forward_reaches_a_server_on_the_pods_localhost() {
    let server = agent_server();
    run_pod(&server, "local-web", "{}", "rk-test/web:1", r#"["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"]"#);
    // kubectl 1.30+ tunnels SPDY through a WebSocket; without that it upgrades to SPDY itself.
    for env in [vec![], vec![("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")]] {
        let (mut child, port) = port_forward(&server, "pod/local-web", &env);
        for _ in 0..3 {
            let response = http_get(port, "/");
            assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("hello from rk-test/web\n"), "{env:?}: {response:?}");
        }
        assert!(http_get(port, "/missing").starts_with("HTTP/1.1 404"), "{env:?}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn the_python_client_execs_and_port_forwards() {
    let server = agent_server();
    run_pod(&server, "py", "{}", "rk-test/web:1", r#"["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"]"#);
    let script = r#"
import sys
from kubernetes import config, client
from kubernetes.stream import stream, portforward
config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
out = stream(v1.connect_get_namespaced_pod_exec, "py", "default", command=["sh", "-c", "echo from-python"], stderr=True, stdin=False, stdout=True, tty=False)
print("exec:" + out.strip())
resp = stream(v1.connect_get_namespaced_pod_exec, "py", "default", command=["sh", "-c", "exit 7"], stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
resp.run_forever(timeout=30)
print("code:%d" % resp.returncode)
pf = portforward(v1.connect_get_namespaced_pod_portforward, "py", "default", ports="8080")
sock = pf.socket(8080)
sock.setblocking(True)
sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
print("forwarded:" + data.decode().splitlines()[-1])
"#;
    let out = Command::new("python3").args(["-c", script]).arg(server.kubeconfig()).output().expect("python3 runs");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "exec:from-python\ncode:7\nforwarded:hello from rk-test/web\n");
}

#[test]
fn kubectl_top_shows_pod_and_node_usage() {
    let server = agent_server();
    run_pod(&server, "busy", "{app: busy}", "rk-test/busybox:1", r#"["sh", "-c", "while true; do :; done"]"#);
    let node = server.node.clone().unwrap();
    let top = eventually(TIMEOUT, || server.kubectl(&["top", "pod", "busy", "--containers"]).status.success());
    assert!(top, "no pod metrics; log:\n{}", server.log());
    let out = server.ok(&["top", "pod", "-l", "app=busy", "--no-headers"]);
    let cpu: u64 = out.split_whitespace().nth(1).and_then(|c| c.trim_end_matches('m').parse().ok()).unwrap_or(0);
    assert!(out.starts_with("busy ") && cpu > 100, "a spinning container uses CPU: {out}");
    let nodes = server.ok(&["top", "node", "--no-headers"]);
    assert!(nodes.lines().any(|l| l.starts_with(&node) && !l.contains("<unknown>")), "{nodes}");
    let raw = server.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/busy"]);
    let metrics: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!((metrics["kind"].as_str(), metrics["containers"][0]["name"].as_str()), (Some("PodMetrics"), Some("app")));
    assert!(server.fails(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/absent"]).contains("NotFound"));
}

#[test]
fn a_pod_lists_pods_with_its_service_account_token() {
    let server = agent_server();
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    // The pod network cannot reach the host's loopback, where the test server listens: host network.
    apply(
        &server,
        &r#"
apiVersion: v1
kind: Pod
metadata: {name: caller}
spec:
  nodeName: NODE
  hostNetwork: true
  restartPolicy: Never
  containers:
  - name: app
    image: rk-test/curl:1
    command: ["sh", "-c", "cd /var/run/secrets/kubernetes.io/serviceaccount && curl -sS --cacert ca.crt -H \"Authorization: Bearer $(cat token)\" https://127.0.0.1:PORT/api/v1/namespaces/$(cat namespace)/pods"]
"#
        .replace("PORT", &port),
    );
    let done = eventually(TIMEOUT, || server.kubectl(&["get", "pod", "caller", "-o", "jsonpath={.status.phase}"]).stdout == b"Succeeded");
    let logs = server.ok(&["logs", "caller"]);
    assert!(done, "the pod did not succeed: {logs}");
    let list: serde_json::Value = serde_json::from_str(&logs).unwrap_or_else(|e| panic!("{e}: {logs}"));
    assert_eq!(list["kind"], "PodList");
    assert!(list["items"].as_array().unwrap().iter().any(|p| p["metadata"]["name"] == "caller"), "{logs}");
}

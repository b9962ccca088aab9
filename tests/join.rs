//! Joining a second node: `rk agent --server … --token …` with the token `rk
//! token` prints registers another node (on the same Docker engine here),
//! runs the pods bound to it, serves their streams, and rides out a restart
//! of the server; a token for another CA or with a wrong secret is refused
//! with a message saying which.

mod common;

use common::{Agent, Server, eventually};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);

fn rk(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rk")).args(args).output().expect("rk runs")
}

fn token(server: &Server) -> String {
    let out = rk(&["token", "--data-dir", server.data_dir().to_str().unwrap()]);
    assert!(out.status.success(), "rk token: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Joins `node` with `token`. Like the test servers' agents, on Docker's
/// bridge and without a proxy: rk's pod network and Service rules in this
/// host's own namespace would outlive the test (tests/podnet.rs and proxy.rs
/// run those in namespaces).
fn join(server: &Server, token: &str, node: &str) -> Agent {
    Agent::start(node, None, &["--server", &server.url, "--token", token, "--kubelet-port", "0", "--disable-pod-network", "--disable-proxy"])
}

fn node_ready(server: &Server, node: &str) -> bool {
    let out = server.kubectl(&["get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"]);
    out.stdout == b"True"
}

#[test]
fn a_second_agent_joins_with_the_token_and_runs_its_pods_through_a_server_restart() {
    common::test_images();
    let mut server = Server::start_with_agent(&[]);
    let joined = format!("{}-joined", server.node.as_deref().unwrap());
    let agent = join(&server, &token(&server), &joined);
    assert!(eventually(TIMEOUT, || node_ready(&server, &joined)), "the joined node never became Ready; agent log:\n{}", agent.log());

    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: remote}}\nspec:\n  nodeName: {joined}\n  containers:\n  - {{name: app, image: \"rk-test/busybox:1\", command: [\"sleep\", \"3600\"]}}\n"
    );
    let out = server.kubectl_with(&["apply", "-f", "-"], Some(&pod), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let running = || server.kubectl(&["get", "pod", "remote", "-o", "jsonpath={.status.phase}"]).stdout == b"Running";
    assert!(eventually(TIMEOUT, running), "the pod never ran on the joined node; agent log:\n{}", agent.log());
    let containers = Command::new("docker").args(["ps", "-q", "--filter", &format!("label=io.rk.node={joined}")]).output().unwrap();
    assert!(!containers.stdout.is_empty(), "the joined agent runs the pod's containers");
    assert_eq!(server.ok(&["exec", "remote", "--", "hostname"]), "remote\n", "streams reach the joined node");
    let id_before = Command::new("docker").args(["ps", "-q", "--filter", &format!("label=io.rk.node={joined}"), "--filter", "label=io.rk.container.role=app"]).output().unwrap().stdout;

    server.restart();
    let again = eventually(TIMEOUT, || server.kubectl(&["exec", "remote", "--", "echo", "after"]).stdout == b"after\n");
    assert!(again, "the joined agent did not come back after the server restarted; agent log:\n{}", agent.log());
    let id_after = Command::new("docker").args(["ps", "-q", "--filter", &format!("label=io.rk.node={joined}"), "--filter", "label=io.rk.container.role=app"]).output().unwrap().stdout;
    assert_eq!(id_before, id_after, "the pod's container ran on through the restart");
    assert!(eventually(TIMEOUT, || node_ready(&server, &joined)));
}

#[test]
fn a_wrong_token_is_refused_with_the_reason() {
    let server = Server::start();
    let good = token(&server);
    let data = tempfile::tempdir().unwrap();
    let join = |token: &str| {
        let out = rk(&["agent", "--server", &server.url, "--token", token, "--node-name", "intruder", "--kubelet-port", "0", "--data-dir", data.path().to_str().unwrap()]);
        assert!(!out.status.success(), "joined with {token}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (prefix, _) = good.rsplit_once(':').unwrap();
    let wrong_secret = format!("{prefix}:not-the-secret");
    assert!(join(&wrong_secret).contains("the join token was refused"));
    let other_ca = format!("K10{}{}", "0".repeat(64), &good[67..]);
    assert!(join(&other_ca).contains("the server's CA does not match the token"));
    assert!(join("nonsense").contains("a join token looks like K10<CA hash>::server:<secret>"));
    let nodes = server.ok(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains("intruder"), "{nodes}");
}

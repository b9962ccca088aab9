//! The scheduler against the real binary with three equal fake nodes: pods get
//! nodes that fit them and spread out; pods that fit nowhere stay Pending and
//! say why, in upstream's words, until the cluster changes so that they fit.

mod common;

use common::{Server, eventually, write_file};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

fn start() -> Server {
    let server = Server::start_with(&["--fake-nodes", "3"]);
    assert!(eventually(TIMEOUT, || server.ok(&["get", "nodes", "--no-headers"]).lines().count() == 3), "three fake nodes register");
    server
}

fn apply(server: &Server, name: &str, manifest: &str) {
    let file = write_file(server.dir.path(), &format!("{name}.yaml"), manifest);
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
}

/// Creates a pod from a YAML `spec:` body (indented by four spaces).
fn create_pod(server: &Server, name: &str, spec: &str) {
    apply(server, name, &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{spec}"));
}

/// Applies an apps/v1 `kind` whose pods are labelled `app: <name>`.
fn apply_workload(server: &Server, kind: &str, name: &str, replicas: Option<u32>) {
    let replicas = replicas.map(|r| format!("  replicas: {r}\n")).unwrap_or_default();
    let template = format!("    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: app, image: busybox}}]\n");
    let manifest = format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{replicas}  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n{template}"
    );
    apply(server, name, &manifest);
}

fn requesting(cpu: &str) -> String {
    format!("    containers:\n    - name: app\n      image: busybox\n      resources:\n        requests:\n          cpu: \"{cpu}\"\n")
}

const PLAIN: &str = "    containers:\n    - name: app\n      image: busybox\n";

fn node_of(server: &Server, pod: &str) -> String {
    server.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

fn lands_on(server: &Server, pod: &str, node: &str) -> bool {
    eventually(TIMEOUT, || node_of(server, pod) == node)
}

/// The message of the pod's latest FailedScheduling event, once there is one.
fn failed_scheduling(server: &Server, pod: &str) -> String {
    let selector = format!("involvedObject.name={pod},reason=FailedScheduling");
    let message = || server.ok(&["get", "events", "--field-selector", &selector, "-o", "jsonpath={.items[-1:].message}"]);
    eventually(TIMEOUT, || !message().is_empty());
    message()
}

#[test]
fn a_six_replica_replicaset_spreads_two_per_node_over_three_equal_nodes() {
    let server = start();
    apply_workload(&server, "ReplicaSet", "web", Some(6));
    let running = || server.ok(&["get", "pods", "-l", "app=web", "--no-headers"]).lines().filter(|l| l.contains("Running")).count() == 6;
    assert!(eventually(TIMEOUT, running), "{}", server.ok(&["get", "pods", "-o", "wide"]));
    let nodes = server.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.nodeName}"]);
    for node in ["fake-0", "fake-1", "fake-2"] {
        assert_eq!(nodes.split_whitespace().filter(|n| *n == node).count(), 2, "{nodes}");
    }
    let pod = server.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]);
    let described = server.ok(&["describe", "pod", &pod]);
    let assigned = format!("Successfully assigned default/{pod} to {}", node_of(&server, &pod));
    assert!(described.contains("Scheduled") && described.contains("default-scheduler") && described.contains(&assigned), "{described}");
}

#[test]
fn a_pod_that_fits_nowhere_stays_pending_and_says_why() {
    let server = start();
    create_pod(&server, "huge", &requesting("64"));
    assert_eq!(failed_scheduling(&server, "huge"), "0/3 nodes are available: 3 Insufficient cpu.");
    let described = server.ok(&["describe", "pod", "huge"]);
    assert!(described.contains("FailedScheduling") && described.contains("0/3 nodes are available: 3 Insufficient cpu."), "{described}");
    let condition = || server.ok(&["get", "pod", "huge", "-o", r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason}"#]);
    assert!(eventually(TIMEOUT, || condition() == "Unschedulable"), "{}", server.ok(&["get", "pod", "huge", "-o", "yaml"]));
    assert_eq!(server.ok(&["get", "pod", "huge", "-o", "jsonpath={.status.phase}"]), "Pending");
    assert_eq!(node_of(&server, "huge"), "");
}

#[test]
fn an_unschedulable_pod_gets_the_node_another_pod_frees() {
    let server = start();
    for name in ["big-0", "big-1", "big-2"] {
        create_pod(&server, name, &requesting("20"));
    }
    let placed = || ["big-0", "big-1", "big-2"].iter().all(|p| !node_of(&server, p).is_empty());
    assert!(eventually(TIMEOUT, placed), "{}", server.ok(&["get", "pods", "-o", "wide"]));
    create_pod(&server, "waiting", &requesting("20"));
    assert_eq!(failed_scheduling(&server, "waiting"), "0/3 nodes are available: 3 Insufficient cpu.");
    let freed = node_of(&server, "big-1");
    server.ok(&["delete", "pod", "big-1"]);
    assert!(lands_on(&server, "waiting", &freed), "{}", server.ok(&["get", "pods", "-o", "wide"]));
}

#[test]
fn node_selector_waits_for_a_node_with_the_label() {
    let server = start();
    server.ok(&["label", "node", "fake-1", "disk=ssd"]);
    create_pod(&server, "on-ssd", &format!("    nodeSelector: {{disk: ssd}}\n{PLAIN}"));
    assert!(lands_on(&server, "on-ssd", "fake-1"));
    create_pod(&server, "on-nvme", &format!("    nodeSelector: {{disk: nvme}}\n{PLAIN}"));
    assert_eq!(failed_scheduling(&server, "on-nvme"), "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.");
    server.ok(&["label", "node", "fake-2", "disk=nvme"]);
    assert!(lands_on(&server, "on-nvme", "fake-2"), "labelling a node retries the pod");
}

#[test]
fn required_node_affinity_chooses_among_matching_nodes_only() {
    let server = start();
    let affinity = |term: &str| {
        format!("    affinity:\n      nodeAffinity:\n        requiredDuringSchedulingIgnoredDuringExecution:\n          nodeSelectorTerms:\n          - {term}\n{PLAIN}")
    };
    create_pod(&server, "not-0-or-1", &affinity("matchExpressions: [{key: kubernetes.io/hostname, operator: NotIn, values: [fake-0, fake-1]}]"));
    create_pod(&server, "by-name", &affinity("matchFields: [{key: metadata.name, operator: In, values: [fake-1]}]"));
    assert!(lands_on(&server, "not-0-or-1", "fake-2"));
    assert!(lands_on(&server, "by-name", "fake-1"));
    create_pod(&server, "nowhere", &affinity("matchExpressions: [{key: rk.io/fake-node, operator: DoesNotExist}]"));
    assert_eq!(failed_scheduling(&server, "nowhere"), "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.");
}

#[test]
fn taints_keep_away_pods_that_do_not_tolerate_them() {
    let server = start();
    server.ok(&["taint", "nodes", "fake-0", "fake-1", "dedicated=gpu:NoSchedule"]);
    for name in ["plain-0", "plain-1", "plain-2"] {
        create_pod(&server, name, PLAIN);
        assert!(lands_on(&server, name, "fake-2"));
    }
    server.ok(&["taint", "nodes", "fake-2", "dedicated=gpu:NoSchedule"]);
    create_pod(&server, "plain-3", PLAIN);
    assert_eq!(failed_scheduling(&server, "plain-3"), "0/3 nodes are available: 3 node(s) had untolerated taint {dedicated: gpu}.");
    let tolerating = format!("    tolerations: [{{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}}]\n{PLAIN}");
    create_pod(&server, "gpu-job", &tolerating);
    assert!(eventually(TIMEOUT, || !node_of(&server, "gpu-job").is_empty()), "a tolerating pod is scheduled");
    server.ok(&["taint", "nodes", "fake-0", "dedicated-"]);
    assert!(lands_on(&server, "plain-3", "fake-0"), "removing the taint retries the pod");
}

#[test]
fn cordoned_nodes_get_no_new_pods() {
    let server = start();
    server.ok(&["cordon", "fake-0", "fake-1", "fake-2"]);
    create_pod(&server, "p", PLAIN);
    assert_eq!(failed_scheduling(&server, "p"), "0/3 nodes are available: 3 node(s) were unschedulable.");
    server.ok(&["uncordon", "fake-1"]);
    assert!(lands_on(&server, "p", "fake-1"));
}

#[tokio::test]
async fn a_binding_assigns_the_node_once_and_marks_the_pod_scheduled() {
    use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
    let server = Server::start();
    create_pod(&server, "manual", &format!("    schedulerName: someone-else\n{PLAIN}"));
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(server.client().await);
    let binding = |node: &str| Binding {
        metadata: kube::api::ObjectMeta { name: Some("manual".into()), ..Default::default() },
        target: ObjectReference { kind: Some("Node".into()), name: Some(node.into()), ..Default::default() },
    };
    let post = kube::api::PostParams::default();
    pods.create_subresource::<_, serde_json::Value>("binding", "manual", &post, &binding("node-a")).await.expect("first binding");
    let pod = pods.get("manual").await.unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-a"));
    let scheduled = pod.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "PodScheduled").unwrap();
    assert_eq!(scheduled.status, "True");
    match pods.create_subresource::<_, serde_json::Value>("binding", "manual", &post, &binding("node-b")).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.message.as_str()), (409, "Operation cannot be fulfilled on pods \"manual\": pod manual is already assigned to node \"node-a\"")),
        other => panic!("a second binding must conflict: {other:?}"),
    }
}

#[test]
fn daemonset_pods_are_bound_to_the_node_their_affinity_names() {
    let server = start();
    apply_workload(&server, "DaemonSet", "agent", None);
    let placements = || {
        let out = server.ok(&["get", "pods", "-l", "app=agent", "-o",
            r#"jsonpath={range .items[*]}{.spec.nodeName}={.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values[0]}{"\n"}{end}"#]);
        let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert!(eventually(TIMEOUT, || placements() == ["fake-0=fake-0", "fake-1=fake-1", "fake-2=fake-2"]), "{:?}", placements());
}

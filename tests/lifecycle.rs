//! Object and node lifecycle through the real binary: namespace deletion,
//! garbage collection (background, foreground, orphan), node health and
//! taint-based eviction, pod garbage collection and resource quotas.

mod common;

use common::{Server, eventually, write_file};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// A ReplicaSet of `replicas` pods pinned to `node` (there is no scheduler in these tests).
fn replicaset(name: &str, replicas: u32, node: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      nodeName: {node}
      containers:
      - name: app
        image: busybox:1.36
"#
    )
}

fn apply(server: &Server, namespace: &str, name: &str, manifest: &str) {
    let file = write_file(server.dir.path(), &format!("{name}.yaml"), manifest);
    server.ok(&["apply", "-n", namespace, "-f", file.to_str().unwrap()]);
}

fn names(server: &Server, args: &[&str]) -> Vec<String> {
    server.ok(args).split_whitespace().map(str::to_owned).collect()
}

fn pods_with_label(server: &Server, namespace: &str, label: &str) -> Vec<String> {
    names(server, &["get", "pods", "-n", namespace, "-l", label, "-o", "jsonpath={.items[*].metadata.name}"])
}

fn wait_for_pods(server: &Server, namespace: &str, label: &str, count: usize) -> Vec<String> {
    assert!(
        eventually(LONG, || pods_with_label(server, namespace, label).len() == count),
        "expected {count} pods with {label}: {:?}",
        pods_with_label(server, namespace, label)
    );
    pods_with_label(server, namespace, label)
}

#[test]
fn deleting_a_namespace_removes_its_content_then_the_namespace() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    server.ok(&["create", "namespace", "doomed"]);
    server.ok(&["create", "configmap", "settings", "-n", "doomed", "--from-literal=a=b"]);
    server.ok(&["create", "secret", "generic", "token", "-n", "doomed", "--from-literal=t=x"]);
    server.ok(&["create", "service", "clusterip", "web", "-n", "doomed", "--tcp=80:80"]);
    apply(&server, "doomed", "web", &replicaset("web", 2, "fake-0"));
    wait_for_pods(&server, "doomed", "app=web", 2);
    // An object with a finalizer holds the namespace until the finalizer goes.
    apply(&server, "doomed", "held", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n");

    server.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    let conditions = || server.ok(&["get", "ns", "doomed", "-o", "jsonpath={range .status.conditions[*]}{.type}={.status}:{.reason}:{.message}{\"\\n\"}{end}"]);
    assert!(
        eventually(LONG, || conditions().contains(
            "NamespaceFinalizersRemaining=True:SomeFinalizersRemain:Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        )),
        "{}",
        conditions()
    );
    let status = conditions();
    assert!(status.contains("NamespaceContentRemaining=True:SomeResourcesRemain:Some resources are remaining: configmaps. has 1 resource instances"), "{status}");
    assert!(status.contains("NamespaceDeletionDiscoveryFailure=False:ResourcesDiscovered:All resources successfully discovered"), "{status}");
    assert_eq!(server.ok(&["get", "ns", "doomed", "-o", "jsonpath={.status.phase}"]), "Terminating");
    let left = names(&server, &["get", "configmaps,secrets,services,replicasets,pods", "-n", "doomed", "-o", "name"]);
    assert_eq!(left, ["configmap/held"], "everything else is gone");
    assert!(server.fails(&["create", "configmap", "late", "-n", "doomed"]).contains("because it is being terminated"));

    server.ok(&["patch", "configmap", "held", "-n", "doomed", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    server.ok(&["wait", "--for=delete", "namespace/doomed", "--timeout=60s"]);
    assert!(server.fails(&["get", "ns", "doomed"]).contains("NotFound"));
}

#[test]
fn background_deletion_of_a_replicaset_removes_its_pods_afterwards() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    apply(&server, "default", "bg", &replicaset("bg", 3, "fake-0"));
    wait_for_pods(&server, "default", "app=bg", 3);
    server.ok(&["delete", "rs", "bg", "--cascade=background"]);
    assert!(server.fails(&["get", "rs", "bg"]).contains("NotFound"), "the owner goes at once");
    wait_for_pods(&server, "default", "app=bg", 0);
}

#[test]
fn foreground_deletion_of_a_replicaset_removes_its_pods_first() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    apply(&server, "default", "fg", &replicaset("fg", 3, "fake-0"));
    let pods = wait_for_pods(&server, "default", "app=fg", 3);
    // One pod is held by a finalizer, so the owner has something to wait for.
    server.ok(&["patch", "pod", &pods[0], "--type=merge", "-p", r#"{"metadata":{"finalizers":["example.com/hold"]}}"#]);
    server.ok(&["delete", "rs", "fg", "--cascade=foreground", "--wait=false"]);
    wait_for_pods(&server, "default", "app=fg", 1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.ok(&["get", "rs", "fg", "-o", "jsonpath={.metadata.finalizers}"]), r#"["foregroundDeletion"]"#, "the owner waits");
    server.ok(&["patch", "pod", &pods[0], "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    // When the owner is gone, its blocking dependents already are.
    server.ok(&["wait", "--for=delete", "rs/fg", "--timeout=60s"]);
    assert!(pods_with_label(&server, "default", "app=fg").is_empty());
}

#[test]
fn orphan_deletion_of_a_replicaset_keeps_its_pods_without_owner() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    apply(&server, "default", "orphans", &replicaset("orphans", 2, "fake-0"));
    let pods = wait_for_pods(&server, "default", "app=orphans", 2);
    server.ok(&["delete", "rs", "orphans", "--cascade=orphan"]);
    assert!(server.fails(&["get", "rs", "orphans"]).contains("NotFound"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pods_with_label(&server, "default", "app=orphans"), pods, "the pods stay");
    for pod in &pods {
        assert_eq!(server.ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.ownerReferences}"]), "", "{pod} lost its owner");
    }
}

#[test]
fn foreground_deletion_cascades_through_a_deployment_to_its_pods() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: app}}\n  template:\n    metadata: {labels: {app: app}}\n    spec:\n      nodeName: fake-0\n      containers: [{name: c, image: busybox:1.36}]\n";
    apply(&server, "default", "app", deployment);
    wait_for_pods(&server, "default", "app=app", 2);
    assert_eq!(names(&server, &["get", "rs", "-l", "app=app", "-o", "name"]).len(), 1);
    server.ok(&["delete", "deploy", "app", "--cascade=foreground", "--wait=false"]);
    server.ok(&["wait", "--for=delete", "deploy/app", "--timeout=60s"]);
    assert!(names(&server, &["get", "rs", "-l", "app=app", "-o", "name"]).is_empty(), "the ReplicaSet went before its Deployment");
    assert!(pods_with_label(&server, "default", "app=app").is_empty(), "and its pods before it");
}

#[test]
fn an_object_is_collected_only_when_every_owner_is_gone() {
    let server = Server::start();
    server.ok(&["create", "configmap", "owner"]);
    let uid = server.ok(&["get", "cm", "owner", "-o", "jsonpath={.metadata.uid}"]);
    let dependent = |name: &str, owners: &[(&str, &str)]| {
        let refs: String = owners.iter().map(|(n, u)| format!("  - {{apiVersion: v1, kind: ConfigMap, name: {n}, uid: {u}}}\n")).collect();
        apply(&server, "default", name, &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences:\n{refs}"));
    };
    dependent("kept", &[("owner", &uid), ("ghost", "00000000-0000-0000-0000-000000000000")]);
    dependent("orphaned", &[("ghost", "00000000-0000-0000-0000-000000000001")]);
    // A live object under the owner's name but with another uid is not the owner.
    dependent("impostor", &[("owner", "00000000-0000-0000-0000-000000000002")]);
    assert!(eventually(LONG, || server.kubectl(&["get", "cm", "orphaned"]).status.code() == Some(1)), "a dependent of a missing owner is collected");
    assert!(eventually(LONG, || server.kubectl(&["get", "cm", "impostor"]).status.code() == Some(1)), "an owner is matched by uid");
    assert!(
        eventually(LONG, || server.ok(&["get", "cm", "kept", "-o", "jsonpath={.metadata.ownerReferences[*].name}"]) == "owner"),
        "the reference to the missing owner is dropped, the live one kept"
    );
    server.ok(&["delete", "cm", "owner"]);
    assert!(eventually(LONG, || server.kubectl(&["get", "cm", "kept"]).status.code() == Some(1)), "collected once its last owner goes");
}

fn running_on(server: &Server, label: &str, node: &str) -> usize {
    let out = server.ok(&["get", "pods", "-l", label, "-o", r#"jsonpath={range .items[*]}{.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{"\n"}{end}"#]);
    out.lines().filter(|l| l.trim_end() == format!("{node} Running")).count()
}

fn node_field(server: &Server, node: &str, jsonpath: &str) -> String {
    server.ok(&["get", "node", node, "-o", &format!("jsonpath={jsonpath}")])
}

#[test]
fn a_node_that_stops_heartbeating_becomes_unknown_and_its_pods_move_after_their_toleration() {
    let server = Server::start_with(&["--fake-nodes", "3", "--node-monitor-grace-period", "4"]);
    let manifest = replicaset("survivor", 2, "fake-0").replace(
        "      containers:\n",
        "      tolerations:\n      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}\n      containers:\n",
    );
    apply(&server, "default", "survivor", &manifest);
    assert!(eventually(LONG, || running_on(&server, "app=survivor", "fake-0") == 2));
    let first = pods_with_label(&server, "default", "app=survivor");
    // With no scheduler here, the template says where replacements go; the running pods stay.
    server.ok(&["patch", "rs", "survivor", "--type=merge", "-p", r#"{"spec":{"template":{"spec":{"nodeName":"fake-1"}}}}"#]);

    server.ok(&["annotate", "node", "fake-0", "rk.io/fake-node-stopped=true"]);
    let ready = || node_field(&server, "fake-0", r#"{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}"#);
    assert!(eventually(LONG, || ready() == "Unknown/NodeStatusUnknown"), "{}", ready());
    assert_eq!(node_field(&server, "fake-0", r#"{.status.conditions[?(@.type=="Ready")].message}"#), "Kubelet stopped posting node status.");
    let taints = || node_field(&server, "fake-0", "{range .spec.taints[*]}{.key}:{.effect}:{.timeAdded} {end}");
    assert!(eventually(LONG, || taints().contains("node.kubernetes.io/unreachable:NoExecute:2")), "{}", taints());
    assert!(taints().contains("node.kubernetes.io/unreachable:NoSchedule: "), "{}", taints());
    for pod in &first {
        // The pods stay (their kubelet is gone) but are no longer Ready, and are evicted after 5 s.
        let state = || server.ok(&["get", "pod", pod, "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="DisruptionTarget")].reason}"#]);
        assert!(eventually(LONG, || state() == "False DeletionByTaintManager"), "{pod}: {}", state());
    }
    assert!(node_field(&server, "fake-1", "{.spec.taints}").is_empty(), "healthy nodes are not tainted");

    // Their ReplicaSet replaces them on another node.
    assert!(eventually(LONG, || running_on(&server, "app=survivor", "fake-1") == 2));

    server.ok(&["annotate", "node", "fake-0", "rk.io/fake-node-stopped-"]);
    assert!(eventually(LONG, || ready().starts_with("True/")), "{}", ready());
    assert!(eventually(LONG, || taints().is_empty()), "taints are removed on recovery: {}", taints());
    // Back, its kubelet finishes the evicted pods.
    assert!(eventually(LONG, || first.iter().all(|p| server.kubectl(&["get", "pod", p]).status.code() == Some(1))));
}

#[test]
fn pods_of_a_deleted_node_are_garbage_collected() {
    let server = Server::start_with(&["--fake-nodes", "2", "--node-monitor-grace-period", "2"]);
    apply(&server, "default", "stranded", &replicaset("stranded", 2, "fake-1"));
    assert!(eventually(LONG, || running_on(&server, "app=stranded", "fake-1") == 2));
    let stranded = pods_with_label(&server, "default", "app=stranded");
    server.ok(&["delete", "node", "fake-1"]);
    for pod in &stranded {
        assert!(eventually(LONG, || server.kubectl(&["get", "pod", pod]).status.code() == Some(1)), "{pod} is collected");
    }
}

#[test]
fn a_resource_quota_refuses_the_pod_that_would_exceed_it() {
    let server = Server::start();
    server.ok(&["create", "namespace", "limited"]);
    server.ok(&["create", "quota", "q", "-n", "limited", "--hard=pods=2,configmaps=5,count/replicasets.apps=1"]);
    let used = || server.ok(&["get", "quota", "q", "-n", "limited", "-o", "jsonpath={.status.used}"]);
    // The controller counts what is there, including the namespace's root CA ConfigMap.
    assert!(eventually(LONG, || used() == r#"{"configmaps":"1","count/replicasets.apps":"0","pods":"0"}"#), "{}", used());
    server.ok(&["run", "p1", "-n", "limited", "--image=busybox:1.36"]);
    server.ok(&["run", "p2", "-n", "limited", "--image=busybox:1.36"]);
    let refused = server.fails(&["run", "p3", "-n", "limited", "--image=busybox:1.36"]);
    assert!(
        refused.contains(r#"pods "p3" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"#),
        "{refused}"
    );
    assert!(server.ok(&["get", "quota", "q", "-n", "limited"]).contains("pods: 2/2"));
    // Deleting a pod gives its share back.
    server.ok(&["delete", "pod", "p1", "-n", "limited", "--wait=false"]);
    assert!(eventually(LONG, || used().contains(r#""pods":"1""#)), "{}", used());
    server.ok(&["run", "p3", "-n", "limited", "--image=busybox:1.36"]);
    // Any kind is counted by count/<resource>.<group>.
    apply(&server, "limited", "one", &replicaset("one", 0, "none"));
    let refused = server.fails(&["create", "-n", "limited", "-f", write_file(server.dir.path(), "two.yaml", &replicaset("two", 0, "none")).to_str().unwrap()]);
    assert!(refused.contains("exceeded quota: q, requested: count/replicasets.apps=1, used: count/replicasets.apps=1, limited: count/replicasets.apps=1"), "{refused}");
}

#[test]
fn a_compute_quota_requires_every_container_to_state_its_limits() {
    let server = Server::start();
    server.ok(&["create", "quota", "compute", "--hard=limits.cpu=1,limits.memory=1Gi,requests.cpu=500m"]);
    let refused = server.fails(&["run", "bare", "--image=busybox:1.36"]);
    assert!(
        refused.contains(r#"pods "bare" is forbidden: failed quota: compute: must specify limits.cpu for: bare; limits.memory for: bare; requests.cpu for: bare"#),
        "{refused}"
    );
    let pod = |name: &str, cpu: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: busybox:1.36\n    resources:\n      limits: {{cpu: {cpu}, memory: 256Mi}}\n")
    };
    apply(&server, "default", "small", &pod("small", "300m"));
    let refused = server.fails(&["create", "-f", write_file(server.dir.path(), "big.yaml", &pod("big", "300m")).to_str().unwrap()]);
    assert!(refused.contains("exceeded quota: compute, requested: requests.cpu=300m, used: requests.cpu=300m, limited: requests.cpu=500m"), "{refused}");
    let used = || server.ok(&["get", "quota", "compute", "-o", "jsonpath={.status.used}"]);
    assert!(eventually(LONG, || used() == r#"{"limits.cpu":"300m","limits.memory":"256Mi","requests.cpu":"300m"}"#), "{}", used());
}

#[test]
fn concurrent_creates_never_exceed_a_quota() {
    let server = Server::start();
    // Six: the namespace's root CA ConfigMap takes one.
    server.ok(&["create", "quota", "five", "--hard=configmaps=6"]);
    let created: usize = std::thread::scope(|s| {
        let attempts: Vec<_> = (0..12).map(|i| { let server = &server; s.spawn(move || server.kubectl(&["create", "configmap", &format!("c{i}")]).status.success()) }).collect();
        attempts.into_iter().map(|a| a.join().unwrap()).filter(|ok| *ok).count()
    });
    assert_eq!(created, 5);
    assert_eq!(names(&server, &["get", "configmaps", "-o", "name"]).len(), 6);
}

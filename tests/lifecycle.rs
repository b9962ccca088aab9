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
    server.ok(&["create", "deployment", "app", "--image=busybox:1.36", "--replicas=0"]);
    let uid = server.ok(&["get", "deploy", "app", "-o", "jsonpath={.metadata.uid}"]);
    let owned = replicaset("app-1", 2, "fake-0").replace(
        "  name: app-1\n",
        &format!("  name: app-1\n  ownerReferences:\n  - {{apiVersion: apps/v1, kind: Deployment, name: app, uid: {uid}, controller: true, blockOwnerDeletion: true}}\n"),
    );
    apply(&server, "default", "app-1", &owned);
    wait_for_pods(&server, "default", "app=app-1", 2);
    server.ok(&["delete", "deploy", "app", "--cascade=foreground", "--wait=false"]);
    server.ok(&["wait", "--for=delete", "deploy/app", "--timeout=60s"]);
    assert!(server.fails(&["get", "rs", "app-1"]).contains("NotFound"));
    assert!(pods_with_label(&server, "default", "app=app-1").is_empty());
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

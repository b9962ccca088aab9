//! Unmodified kubectl against `rk server`: the commands a Kubernetes user types
//! every day give the output they expect.

mod common;

use common::{Server, write_file};
use std::time::Duration;

const MANIFEST: &str = include_str!("../examples/web.yaml");

fn lines_with<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn a_fresh_server_lists_the_four_initial_namespaces() {
    let server = Server::start();
    let out = server.ok(&["get", "ns"]);
    let names: Vec<&str> = out.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(names, ["default", "kube-node-lease", "kube-public", "kube-system"]);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.lines().skip(1).all(|l| l.contains("Active")), "{out}");
}

#[test]
fn apply_creates_then_updates_a_multi_object_manifest() {
    let server = Server::start();
    let file = write_file(server.dir.path(), "web.yaml", MANIFEST);
    let out = server.ok(&["apply", "-f", file.to_str().unwrap()]);
    for created in ["namespace/demo created", "configmap/web-config created", "secret/web-secret created", "deployment.apps/web created", "service/web created"] {
        assert!(out.contains(created), "{out}");
    }
    let edited = write_file(server.dir.path(), "web2.yaml", &MANIFEST.replace("replicas: 3", "replicas: 5").replace("greeting: hello", "greeting: hi"));
    let out = server.ok(&["apply", "-f", edited.to_str().unwrap()]);
    assert!(out.contains("namespace/demo unchanged"), "{out}");
    assert!(out.contains("configmap/web-config configured"), "{out}");
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    assert_eq!(server.ok(&["get", "deploy", "web", "-n", "demo", "-o", "jsonpath={.spec.replicas}"]), "5");
    assert_eq!(server.ok(&["get", "cm", "web-config", "-n", "demo", "-o", "jsonpath={.data.greeting}"]), "hi");
    // Applying the same file again changes nothing.
    let out = server.ok(&["apply", "-f", edited.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
}

#[test]
fn get_prints_tables_wide_yaml_json_names_and_labels() {
    let server = Server::start();
    let file = write_file(server.dir.path(), "web.yaml", MANIFEST);
    server.ok(&["apply", "-f", file.to_str().unwrap()]);

    let table = server.ok(&["get", "deploy", "-n", "demo"]);
    assert!(table.lines().next().unwrap().split_whitespace().eq(["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]), "{table}");
    assert!(table.contains("web    0/3"), "{table}");

    let wide = server.ok(&["get", "deploy", "-n", "demo", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().ends_with("CONTAINERS   IMAGES         SELECTOR"), "{wide}");
    assert!(wide.contains("busybox:1.36") && wide.contains("app=web"), "{wide}");

    let svc = server.ok(&["get", "svc", "web", "-n", "demo", "-o", "wide"]);
    assert!(svc.contains("ClusterIP") && svc.contains("80/TCP") && svc.contains("app=web"), "{svc}");

    let yaml = server.ok(&["get", "cm", "web-config", "-n", "demo", "-o", "yaml"]);
    assert!(yaml.contains("kind: ConfigMap") && yaml.contains("greeting: hello") && yaml.contains("resourceVersion:"), "{yaml}");

    let json: serde_json::Value = serde_json::from_str(&server.ok(&["get", "secret", "web-secret", "-n", "demo", "-o", "json"])).unwrap();
    assert_eq!(json["data"]["password"], "czNjcjN0", "stringData lands base64-encoded in data");
    assert_eq!(json["type"], "Opaque");

    assert_eq!(server.ok(&["get", "deploy,svc", "-n", "demo", "-o", "name"]), "deployment.apps/web\nservice/web\n");

    let labels = server.ok(&["get", "deploy", "-n", "demo", "--show-labels"]);
    assert!(labels.contains("LABELS") && labels.contains("app=web"), "{labels}");

    let all_ns = server.ok(&["get", "cm", "-A"]);
    assert!(all_ns.starts_with("NAMESPACE"), "{all_ns}");
    assert_eq!(lines_with(&all_ns, "web-config").len(), 1);
}

#[test]
fn selectors_filter_by_labels_and_fields() {
    let server = Server::start();
    for (name, tier) in [("a", "web"), ("b", "db"), ("c", "cache")] {
        server.ok(&["create", "cm", name, "--from-literal=k=v"]);
        server.ok(&["label", "cm", name, &format!("tier={tier}")]);
    }
    let names = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["get", "cm", "-o", "name"];
        full.extend_from_slice(args);
        server.ok(&full).lines().map(str::to_owned).collect()
    };
    assert_eq!(names(&["-l", "tier=web"]), ["configmap/a"]);
    // As on any cluster, objects without the label match `!=` and `notin` (here the root CA ConfigMap).
    assert_eq!(names(&["-l", "tier!=web"]), ["configmap/b", "configmap/c", "configmap/kube-root-ca.crt"]);
    assert_eq!(names(&["-l", "tier in (db,cache)"]), ["configmap/b", "configmap/c"]);
    assert_eq!(names(&["-l", "tier notin (db)"]), ["configmap/a", "configmap/c", "configmap/kube-root-ca.crt"]);
    assert_eq!(names(&["-l", "tier,tier notin (db)"]), ["configmap/a", "configmap/c"]);
    assert_eq!(names(&["-l", "!tier"]), ["configmap/kube-root-ca.crt"]);
    assert_eq!(names(&["--field-selector", "metadata.name=b"]), ["configmap/b"]);
    assert_eq!(names(&["--field-selector", "metadata.name!=b", "-l", "tier"]), ["configmap/a", "configmap/c"]);
    let ns = server.ok(&["get", "ns", "--field-selector", "status.phase=Active", "-o", "name"]);
    assert_eq!(ns.lines().count(), 4, "{ns}");
    let err = server.fails(&["get", "cm", "--field-selector", "data.k=v"]);
    assert!(err.contains("field label not supported: data.k"), "{err}");
}

#[test]
fn get_all_describe_and_api_resources() {
    let server = Server::start();
    let file = write_file(server.dir.path(), "web.yaml", MANIFEST);
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    let all = server.ok(&["get", "all", "-n", "demo"]);
    assert!(all.contains("service/web") && all.contains("deployment.apps/web"), "{all}");

    let describe = server.ok(&["describe", "deploy", "web", "-n", "demo"]);
    for expected in ["Name:                   web", "Namespace:              demo", "Selector:               app=web", "StrategyType:           RollingUpdate", "Image:      busybox:1.36", "Port:       8080/TCP"] {
        assert!(describe.contains(expected), "missing {expected:?} in:\n{describe}");
    }
    let describe = server.ok(&["describe", "ns", "demo"]);
    assert!(describe.contains("Status:       Active"), "{describe}");

    let resources = server.ok(&["api-resources"]);
    for line in [
        ("pods", "po", "v1", "true", "Pod"),
        ("deployments", "deploy", "apps/v1", "true", "Deployment"),
        ("namespaces", "ns", "v1", "false", "Namespace"),
        ("leases", "", "coordination.k8s.io/v1", "true", "Lease"),
    ] {
        let row = resources.lines().find(|l| l.starts_with(&format!("{} ", line.0))).unwrap_or_else(|| panic!("{} missing:\n{resources}", line.0));
        let cells: Vec<&str> = row.split_whitespace().collect();
        let expected: Vec<&str> = [line.0, line.1, line.2, line.3, line.4].into_iter().filter(|c| !c.is_empty()).collect();
        assert_eq!(cells, expected);
    }
}

#[test]
fn label_annotate_and_every_patch_type() {
    let server = Server::start();
    let file = write_file(server.dir.path(), "web.yaml", MANIFEST);
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    let d = ["deploy", "web", "-n", "demo"];
    let with = |extra: &[&str]| -> Vec<String> { d.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |verb: &str, extra: &[&str]| {
        let mut args = vec![verb.to_owned()];
        args.extend(with(extra));
        server.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert!(run("label", &["tier=frontend"]).contains("labeled"));
    assert!(run("annotate", &["owner=team-a"]).contains("annotated"));
    run("patch", &["--type=merge", "-p", r#"{"spec":{"replicas":4}}"#]);
    run("patch", &["--type=json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"busybox:1.37"}]"#]);
    run("patch", &["-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.37"}]}}}}"#]);
    let obj: serde_json::Value = serde_json::from_str(&run("get", &["-o", "json"])).unwrap();
    assert_eq!(obj["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(obj["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(obj["spec"]["replicas"], 4);
    let containers: Vec<(&str, &str)> = obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["image"].as_str().unwrap()))
        .collect();
    assert_eq!(containers.len(), 2, "strategic merge adds a container by name: {containers:?}");
    assert!(containers.contains(&("web", "busybox:1.37")) && containers.contains(&("sidecar", "busybox:1.37")));
    assert_eq!(obj["metadata"]["generation"], 4, "three spec changes after creation");
    // Removing a label is a merge patch with null.
    run("label", &["tier-"]);
    assert_eq!(run("get", &["-o", "jsonpath={.metadata.labels}"]), r#"{"app":"web"}"#);
}

#[test]
fn edit_scale_and_rollout_restart() {
    let server = Server::start();
    let file = write_file(server.dir.path(), "web.yaml", MANIFEST);
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    let out = server.kubectl_with(&["edit", "cm", "web-config", "-n", "demo"], None, &[("KUBE_EDITOR", "sed -i s/greeting:\\ hello/greeting:\\ edited/")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configmap/web-config edited"));
    assert_eq!(server.ok(&["get", "cm", "web-config", "-n", "demo", "-o", "jsonpath={.data.greeting}"]), "edited");

    assert!(server.ok(&["scale", "deploy", "web", "-n", "demo", "--replicas=7"]).contains("deployment.apps/web scaled"));
    assert_eq!(server.ok(&["get", "deploy", "web", "-n", "demo", "-o", "jsonpath={.spec.replicas}"]), "7");
    let err = server.fails(&["scale", "deploy", "web", "-n", "demo", "--replicas=-1"]);
    assert!(err.contains("replicas") && err.contains("0"), "{err}");

    assert!(server.ok(&["rollout", "restart", "deploy", "web", "-n", "demo"]).contains("restarted"));
    let annotations = server.ok(&["get", "deploy", "web", "-n", "demo", "-o", "jsonpath={.spec.template.metadata.annotations}"]);
    assert!(annotations.contains("kubectl.kubernetes.io/restartedAt"), "{annotations}");
}

#[test]
fn delete_and_wait_for_delete() {
    let server = Server::start();
    server.ok(&["create", "cm", "gone", "--from-literal=a=b"]);
    assert!(server.ok(&["delete", "cm", "gone"]).contains("configmap \"gone\" deleted"));
    server.ok(&["wait", "--for=delete", "cm/gone", "--timeout=10s"]);
    let err = server.fails(&["get", "cm", "gone"]);
    assert!(err.contains("Error from server (NotFound): configmaps \"gone\" not found"), "{err}");
    // A deletion blocked by a finalizer completes when the finalizer is removed.
    server.ok(&["create", "cm", "held", "--from-literal=a=b"]);
    server.ok(&["patch", "cm", "held", "--type=merge", "-p", r#"{"metadata":{"finalizers":["example.com/hold"]}}"#]);
    server.ok(&["delete", "cm", "held", "--wait=false"]);
    assert!(!server.ok(&["get", "cm", "held", "-o", "jsonpath={.metadata.deletionTimestamp}"]).is_empty());
    server.ok(&["patch", "cm", "held", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#]);
    server.ok(&["wait", "--for=delete", "cm/held", "--timeout=10s"]);
}

#[test]
fn get_watch_shows_later_changes() {
    let server = Server::start();
    server.ok(&["create", "cm", "first", "--from-literal=a=b"]);
    let mut watch = std::process::Command::new("kubectl")
        .args(["get", "cm", "-w", "--request-timeout=8s"])
        .env("KUBECONFIG", server.kubeconfig())
        .env("KUBECACHEDIR", server.dir.path().join("kubecache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    server.ok(&["create", "cm", "second", "--from-literal=a=b"]);
    server.ok(&["label", "cm", "second", "x=y"]);
    server.ok(&["delete", "cm", "first"]);
    std::thread::sleep(Duration::from_millis(1000));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.lines().next().unwrap().starts_with("NAME"), "{out}");
    assert!(lines_with(&out, "first").len() >= 2, "initial row and the deletion: {out}");
    assert!(lines_with(&out, "second").len() >= 2, "creation and the label change: {out}");
}

#[test]
fn explain_reads_the_openapi_documents() {
    let server = Server::start();
    let out = server.ok(&["explain", "pod.spec.containers"]);
    assert!(out.contains("KIND:       Pod") && out.contains("FIELD: containers <[]Container>"), "{out}");
    assert!(out.contains("image\t<string>") && out.contains("name\t<string> -required-"), "{out}");
    let out = server.ok(&["explain", "deployments.spec.strategy"]);
    assert!(out.contains("GROUP:      apps") && out.contains("rollingUpdate"), "{out}");
}

#[test]
fn create_configmap_from_literals_and_other_generators() {
    let server = Server::start();
    assert!(server.ok(&["create", "configmap", "lit", "--from-literal=a=1", "--from-literal=b=2"]).contains("configmap/lit created"));
    assert_eq!(server.ok(&["get", "cm", "lit", "-o", "jsonpath={.data}"]), r#"{"a":"1","b":"2"}"#);
    server.ok(&["create", "deployment", "nginx", "--image=nginx:1.25", "--replicas=2", "--port=80"]);
    let d: serde_json::Value = serde_json::from_str(&server.ok(&["get", "deploy", "nginx", "-o", "json"])).unwrap();
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0], serde_json::json!({"containerPort": 80, "protocol": "TCP"}));
    assert!(d["spec"]["template"]["metadata"].get("creationTimestamp").is_none(), "no zero-valued Go fields: {d}");
    server.ok(&["create", "secret", "generic", "s", "--from-literal=user=admin"]);
    assert_eq!(server.ok(&["get", "secret", "s", "-o", "jsonpath={.data.user}"]), "YWRtaW4=");
    server.ok(&["create", "namespace", "team"]);
    server.ok(&["create", "serviceaccount", "robot", "-n", "team"]);
    assert!(server.ok(&["get", "sa", "-n", "team"]).contains("robot"));
}

#[test]
fn server_side_apply_tracks_managers_and_reports_conflicts() {
    let server = Server::start();
    let file = write_file(server.dir.path(), "web.yaml", MANIFEST);
    let out = server.ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/web serverside-applied"), "{out}");
    let fields = server.ok(&["get", "deploy", "web", "-n", "demo", "--show-managed-fields", "-o", "jsonpath={.metadata.managedFields[0].manager} {.metadata.managedFields[0].operation}"]);
    assert_eq!(fields, "kubectl Apply");
    // Another manager takes spec.replicas; re-applying a different value conflicts.
    server.ok(&["scale", "deploy", "web", "-n", "demo", "--replicas=2"]);
    let changed = write_file(server.dir.path(), "web4.yaml", &MANIFEST.replace("replicas: 3", "replicas: 4"));
    let err = server.fails(&["apply", "--server-side", "-f", changed.to_str().unwrap()]);
    assert!(err.contains("conflict") && err.contains(".spec.replicas"), "{err}");
    let out = server.ok(&["apply", "--server-side", "--force-conflicts", "-f", changed.to_str().unwrap()]);
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(server.ok(&["get", "deploy", "web", "-n", "demo", "-o", "jsonpath={.spec.replicas}"]), "4");
}

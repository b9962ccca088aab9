//! Control loops against the real binary with fake nodes: replica controllers
//! keep their pods, Endpoints and EndpointSlices follow pod readiness, and
//! components record Events that `kubectl describe` shows.

mod common;

use common::{Server, eventually, write_file};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

fn replicaset(name: &str, replicas: u32, node: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeName: {node}
      containers: [{{name: web, image: busybox, ports: [{{name: http, containerPort: 8080}}]}}]
"#
    )
}

fn count_lines(out: &str, needle: &str) -> usize {
    out.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_replicaset_keeps_its_pods_running_and_replaces_deleted_ones() {
    let server = Server::start_with(&["--fake-nodes", "2"]);
    let file = write_file(server.dir.path(), "rs.yaml", &replicaset("web", 3, "fake-0"));
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    let ready = || server.ok(&["get", "rs", "web", "-o", "jsonpath={.status.readyReplicas}"]) == "3";
    assert!(eventually(TIMEOUT, ready), "3 ready replicas: {}", server.ok(&["get", "rs,pods", "-o", "wide"]));
    let victim = server.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]);
    server.ok(&["delete", "pod", &victim]);
    assert!(eventually(TIMEOUT, || {
        let pods = server.ok(&["get", "pods", "-l", "app=web", "--no-headers"]);
        count_lines(&pods, "Running") == 3 && !pods.contains(&victim)
    }));
    server.ok(&["scale", "rs", "web", "--replicas=1"]);
    assert!(eventually(TIMEOUT, || count_lines(&server.ok(&["get", "pods", "-l", "app=web", "--no-headers"]), "web-") == 1));
    let events = server.ok(&["describe", "rs", "web"]);
    assert!(events.contains("SuccessfulCreate") && events.contains("SuccessfulDelete") && events.contains("replicaset-controller"), "{events}");
}

#[test]
fn orphan_pods_that_match_are_adopted() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    server.ok(&["run", "stray", "--image=busybox", "--labels=app=web", "--overrides", r#"{"spec":{"nodeName":"fake-0"}}"#]);
    let file = write_file(server.dir.path(), "rs.yaml", &replicaset("web", 2, "fake-0"));
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(eventually(TIMEOUT, || server.ok(&["get", "pod", "stray", "-o", "jsonpath={.metadata.ownerReferences[0].name}"]) == "web"));
    assert!(eventually(TIMEOUT, || count_lines(&server.ok(&["get", "pods", "-l", "app=web", "--no-headers"]), "Running") == 2));
}

#[test]
fn endpoints_and_slices_list_exactly_the_ready_pods() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    let file = write_file(server.dir.path(), "rs.yaml", &replicaset("web", 3, "fake-0"));
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    server.ok(&["create", "service", "clusterip", "web", "--tcp=80:http"]);
    // `kubectl create service` selects app=web.
    let addresses = || server.ok(&["get", "endpoints", "web", "-o", "jsonpath={.subsets[*].addresses[*].ip}"]);
    assert!(eventually(TIMEOUT, || addresses().split_whitespace().count() == 3), "{}", addresses());
    assert_eq!(server.ok(&["get", "endpoints", "web", "-o", "jsonpath={.subsets[0].ports[0].port}"]), "8080", "the named port resolves");
    let slice_ready = || server.ok(&["get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}"]);
    assert!(eventually(TIMEOUT, || slice_ready().split_whitespace().count() == 3), "{}", slice_ready());

    // One pod stops being ready: it moves to notReadyAddresses and its slice endpoint is not ready.
    let pod = server.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]);
    let ip = server.ok(&["get", "pod", &pod, "-o", "jsonpath={.status.podIP}"]);
    server.ok(&["patch", "pod", &pod, "--subresource=status", "--type=strategic", "-p", r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#]);
    assert!(eventually(TIMEOUT, || !addresses().contains(&ip) && addresses().split_whitespace().count() == 2), "{}", addresses());
    assert_eq!(server.ok(&["get", "endpoints", "web", "-o", "jsonpath={.subsets[*].notReadyAddresses[*].ip}"]), ip);
    assert!(eventually(TIMEOUT, || slice_ready().split_whitespace().count() == 2 && !slice_ready().contains(&ip)));

    // Deleting the Service removes what was made for it.
    server.ok(&["delete", "service", "web"]);
    assert!(eventually(TIMEOUT, || server.kubectl(&["get", "endpoints", "web"]).status.code() == Some(1)));
}

#[test]
fn service_accounts_get_default_accounts_ca_and_working_tokens() {
    let server = Server::start();
    server.ok(&["create", "namespace", "team"]);
    assert!(eventually(TIMEOUT, || server.kubectl(&["get", "sa", "default", "-n", "team"]).status.success()));
    assert!(eventually(TIMEOUT, || server.ok(&["get", "cm", "kube-root-ca.crt", "-n", "team", "-o", "jsonpath={.data.ca\\.crt}"]).contains("BEGIN CERTIFICATE")));
    server.ok(&["create", "serviceaccount", "robot", "-n", "team"]);
    let token = server.ok(&["create", "token", "robot", "-n", "team"]).trim().to_owned();
    let as_robot = |args: &[&str]| {
        let mut full = vec!["--token", &token, "--kubeconfig=/dev/null", "--server", &server.url, "--insecure-skip-tls-verify"];
        full.extend_from_slice(args);
        server.kubectl(&full)
    };
    assert!(as_robot(&["get", "sa", "-n", "team"]).status.success(), "the token authenticates");
    // A legacy token Secret is filled in and works too.
    let secret = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"robot-token","annotations":{"kubernetes.io/service-account.name":"robot"}},"type":"kubernetes.io/service-account-token"}"#;
    server.kubectl_with(&["apply", "-n", "team", "-f", "-"], Some(secret), &[]);
    assert!(eventually(TIMEOUT, || !server.ok(&["get", "secret", "robot-token", "-n", "team", "-o", "jsonpath={.data.token}"]).is_empty()));
    // Deleting the account revokes its tokens.
    server.ok(&["delete", "serviceaccount", "robot", "-n", "team"]);
    let denied = as_robot(&["get", "sa", "-n", "team"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Unauthorized"), "{}", String::from_utf8_lossy(&denied.stderr));
    // Pods run as an account that must exist, with its credentials mounted.
    let err = server.fails(&["run", "p", "--image=busybox", "-n", "team", "--overrides", r#"{"spec":{"serviceAccountName":"nope"}}"#]);
    assert!(err.contains("error looking up service account team/nope"), "{err}");
    server.ok(&["run", "p", "--image=busybox", "-n", "team"]);
    let mounts = server.ok(&["get", "pod", "p", "-n", "team", "-o", "jsonpath={.spec.containers[0].volumeMounts[0].mountPath}"]);
    assert_eq!(mounts, "/var/run/secrets/kubernetes.io/serviceaccount");
}

#[test]
fn a_job_runs_to_completion_with_parallelism() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    let job = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: batch}
spec:
  completions: 4
  parallelism: 2
  template:
    metadata: {annotations: {rk.io/fake-run-seconds: "1"}}
    spec:
      nodeName: fake-0
      restartPolicy: Never
      containers: [{name: work, image: busybox}]
"#;
    server.kubectl_with(&["apply", "-f", "-"], Some(job), &[]);
    // Never more than `parallelism` pods at once.
    let mut most_running = 0;
    let done = eventually(Duration::from_secs(60), || {
        let running = count_lines(&server.ok(&["get", "pods", "-l", "job-name=batch", "--no-headers"]), "Running");
        most_running = most_running.max(running);
        server.ok(&["get", "job", "batch", "-o", "jsonpath={.status.succeeded}"]) == "4"
    });
    assert!(done, "{}", server.ok(&["get", "job,pods", "-o", "wide"]));
    assert!((1..=2).contains(&most_running), "at most 2 pods ran at once, saw {most_running}");
    server.ok(&["wait", "--for=condition=complete", "job/batch", "--timeout=30s"]);
    assert!(server.ok(&["get", "job", "batch"]).contains("Complete"));
    assert!(server.ok(&["describe", "job", "batch"]).contains("Completed"));
}

#[test]
fn a_failing_job_stops_at_its_backoff_limit() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    let job = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: doomed}
spec:
  backoffLimit: 1
  template:
    metadata: {annotations: {rk.io/fake-run-seconds: "0", rk.io/fake-exit-code: "3"}}
    spec:
      nodeName: fake-0
      restartPolicy: Never
      containers: [{name: work, image: busybox}]
"#;
    server.kubectl_with(&["apply", "-f", "-"], Some(job), &[]);
    server.ok(&["wait", "--for=condition=failed", "job/doomed", "--timeout=60s"]);
    assert_eq!(server.ok(&["get", "job", "doomed", "-o", "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}"]), "BackoffLimitExceeded");
    assert_eq!(server.ok(&["get", "job", "doomed", "-o", "jsonpath={.status.failed}"]), "2");
}

#[test]
fn a_cronjob_starts_the_run_it_missed() {
    let server = Server::start_with(&["--fake-nodes", "1"]);
    let cronjob = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          nodeName: fake-0
          restartPolicy: Never
          containers: [{name: work, image: busybox}]
"#;
    server.kubectl_with(&["apply", "-f", "-"], Some(cronjob), &[]);
    let past = (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(3)).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    server.ok(&["patch", "cronjob", "tick", "--subresource=status", "--type=merge", "-p", &format!(r#"{{"status":{{"lastScheduleTime":"{past}"}}}}"#)]);
    server.ok(&["patch", "cronjob", "tick", "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    assert!(eventually(TIMEOUT, || server.ok(&["get", "jobs", "-o", "name"]).contains("job.batch/tick-")), "{}", server.ok(&["get", "cronjob,jobs"]));
    assert!(eventually(TIMEOUT, || !server.ok(&["get", "cronjob", "tick", "-o", "jsonpath={.status.lastScheduleTime}"]).contains(&past)));
    let job = server.ok(&["get", "jobs", "-o", "jsonpath={.items[0].metadata.ownerReferences[0].kind}"]);
    assert_eq!(job, "CronJob");
}

#[test]
fn services_get_cluster_ips_and_node_ports_and_nodes_get_pod_cidrs() {
    let server = Server::start_with(&["--fake-nodes", "2", "--service-cidr", "10.96.0.0/24"]);
    let kubernetes = server.ok(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP} {.spec.ports[0].port}"]);
    assert_eq!(kubernetes, "10.96.0.1 443");
    assert!(!server.ok(&["get", "endpoints", "kubernetes", "-o", "jsonpath={.subsets[0].addresses[0].ip}"]).is_empty());
    server.ok(&["create", "service", "clusterip", "a", "--tcp=80:80"]);
    server.ok(&["create", "service", "nodeport", "b", "--tcp=80:80"]);
    let ip_a = server.ok(&["get", "svc", "a", "-o", "jsonpath={.spec.clusterIP}"]);
    let ip_b = server.ok(&["get", "svc", "b", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip_a.starts_with("10.96.0.") && ip_b.starts_with("10.96.0.") && ip_a != ip_b, "{ip_a} {ip_b}");
    let node_port: u32 = server.ok(&["get", "svc", "b", "-o", "jsonpath={.spec.ports[0].nodePort}"]).parse().unwrap();
    assert!((30000..=32767).contains(&node_port));
    // A requested address is honoured once; it is free again after a delete.
    let fixed = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"fixed"},"spec":{"clusterIP":"10.96.0.200","ports":[{"port":80}]}}"#;
    let clash = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"clash"},"spec":{"clusterIP":"10.96.0.200","ports":[{"port":80}]}}"#;
    assert!(server.kubectl_with(&["create", "-f", "-"], Some(fixed), &[]).status.success());
    let out = server.kubectl_with(&["create", "-f", "-"], Some(clash), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("provided IP is already allocated"), "{}", String::from_utf8_lossy(&out.stderr));
    server.ok(&["delete", "svc", "fixed"]);
    assert!(server.kubectl_with(&["create", "-f", "-"], Some(clash), &[]).status.success());
    // Each node gets its own /24 of the cluster CIDR.
    assert!(eventually(TIMEOUT, || server.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]).split_whitespace().count() == 2));
    let cidrs = server.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
    let cidrs: Vec<&str> = cidrs.split_whitespace().collect();
    assert!(cidrs[0] != cidrs[1] && cidrs.iter().all(|c| c.starts_with("10.42.") && c.ends_with("/24")), "{cidrs:?}");
}

//! The node agent against a real Docker engine: pods applied with kubectl run
//! as containers in a sandbox, with environment, volumes, init containers,
//! limits, restarts, probes, graceful deletion, restart safety and image
//! pulls. The images come from tools/test-images.sh; nothing is pulled from
//! the internet. These tests need root and a running Docker engine.

mod common;

use common::{Server, eventually, test_images};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);
const BUSYBOX: &str = "rk-test/busybox:1";

fn agent_server() -> Server {
    test_images();
    Server::start_with_agent(&[])
}

fn node(server: &Server) -> &str {
    server.node.as_deref().expect("a server with an agent")
}

fn apply(server: &Server, yaml: &str) {
    let out = server.kubectl_with(&["apply", "-f", "-"], Some(yaml), &[]);
    assert!(out.status.success(), "apply failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
}

fn pod(server: &Server, name: &str) -> Value {
    let out = server.kubectl(&["get", "pod", name, "-o", "json"]);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn phase(server: &Server, name: &str) -> String {
    pod(server, name)["status"]["phase"].as_str().unwrap_or("").to_owned()
}

fn wait_phase(server: &Server, name: &str, wanted: &str) {
    let ok = eventually(TIMEOUT, || phase(server, name) == wanted);
    assert!(ok, "pod {name} never reached {wanted}: {}\nlog:\n{}", pod(server, name)["status"], tail(&server.log()));
}

fn tail(log: &str) -> String {
    log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn container_status(server: &Server, pod_name: &str, container: &str) -> Value {
    let p = pod(server, pod_name);
    let all = p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    all.into_iter().find(|c| c["name"] == container).unwrap_or(Value::Null)
}

fn container_id(server: &Server, pod_name: &str, container: &str) -> String {
    let id = container_status(server, pod_name, container)["containerID"].as_str().unwrap_or("").to_owned();
    id.strip_prefix("docker://").unwrap_or(&id).to_owned()
}

fn condition(server: &Server, pod_name: &str, type_: &str) -> String {
    let p = pod(server, pod_name);
    let conditions = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.iter().find(|c| c["type"] == type_).and_then(|c| c["status"].as_str()).unwrap_or("").to_owned()
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn exec(container: &str, script: &str) -> String {
    docker(&["exec", container, "sh", "-c", script])
}

/// Containers Docker has for a pod uid.
fn containers_of(uid: &str) -> Vec<String> {
    let out = docker(&["ps", "-aq", "--filter", &format!("label=io.rk.pod.uid={uid}")]);
    out.split_whitespace().map(str::to_owned).collect()
}

/// A pod manifest bound to the server's node: `metadata` in flow style, then the rest of the spec.
fn manifest(server: &Server, metadata: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{{metadata}}}\nspec:\n  nodeName: {}\n{spec}", node(server))
}

/// A one-container busybox pod bound to the server's node.
fn busybox_pod(server: &Server, name: &str, script: &str, extra_spec: &str) -> String {
    let spec = format!("  terminationGracePeriodSeconds: 2\n{extra_spec}\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", {script:?}]\n");
    manifest(server, &format!("name: {name}"), &spec)
}

#[test]
fn a_pod_applied_with_kubectl_runs_and_the_node_reports_itself() {
    let server = agent_server();
    let started = Instant::now();
    apply(&server, &busybox_pod(&server, "hello", "sleep 3600", ""));
    wait_phase(&server, "hello", "Running");
    eprintln!("create to Running: {:?}", started.elapsed());
    let p = pod(&server, "hello");
    let status = &p["status"];
    assert!(status["podIP"].as_str().is_some_and(|ip| !ip.is_empty()), "{status}");
    assert!(status["hostIP"].as_str().is_some_and(|ip| !ip.is_empty()), "{status}");
    let c = &status["containerStatuses"][0];
    assert_eq!(c["ready"], true);
    assert_eq!(c["started"], true);
    assert_eq!(c["image"], BUSYBOX);
    assert!(c["imageID"].as_str().unwrap().starts_with("sha256:"), "{c}");
    let id = container_id(&server, "hello", "main");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &id]), "true");
    for condition_type in ["PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&server, "hello", condition_type), "True", "{condition_type}");
    }

    let n: Value = serde_json::from_str(&server.ok(&["get", "node", node(&server), "-o", "json"])).unwrap();
    let info = &n["status"]["nodeInfo"];
    assert!(info["containerRuntimeVersion"].as_str().unwrap().starts_with("docker://"), "{info}");
    assert_eq!(info["kubeletVersion"], "v1.33.0-rk");
    assert_eq!(n["status"]["capacity"]["pods"], "110");
    let ready = n["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("KubeletReady")));
    let types: Vec<&str> = n["status"]["addresses"].as_array().unwrap().iter().filter_map(|a| a["type"].as_str()).collect();
    assert!(types.contains(&"InternalIP") && types.contains(&"Hostname"), "{types:?}");
    let holder = server.ok(&["get", "lease", node(&server), "-n", "kube-node-lease", "-o", "jsonpath={.spec.holderIdentity}"]);
    assert_eq!(holder, node(&server));
}

#[test]
fn containers_of_a_pod_reach_each_other_on_localhost() {
    let server = agent_server();
    apply(
        &server,
        &manifest(&server, "name: duo", &format!(
            r#"
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: rk-test/web:1
    ports: [{{name: http, containerPort: 80}}]
  - name: client
    image: {BUSYBOX}
    command: ["sh", "-c", "until wget -qO /tmp/page http://127.0.0.1:80/; do sleep 0.2; done; sleep 3600"]
    readinessProbe:
      exec: {{command: ["cat", "/tmp/page"]}}
      periodSeconds: 1
"#
        )),
    );
    wait_phase(&server, "duo", "Running");
    assert!(eventually(TIMEOUT, || condition(&server, "duo", "Ready") == "True"), "{}", pod(&server, "duo")["status"]);
    let client = container_id(&server, "duo", "client");
    assert_eq!(exec(&client, "cat /tmp/page"), "hello from rk-test/web");
    let web = container_id(&server, "duo", "web");
    assert_eq!(exec(&web, "hostname"), "duo", "the sandbox gives the pod its hostname");
}

#[test]
fn environment_comes_from_config_maps_secrets_and_the_pod() {
    let server = agent_server();
    server.ok(&["create", "configmap", "settings", "--from-literal=COLOR=blue", "--from-literal=SIZE=large"]);
    server.ok(&["create", "secret", "generic", "creds", "--from-literal=PASSWORD=s3cret"]);
    apply(
        &server,
        &manifest(&server, "name: envy, labels: {app: envy}", &format!(
            r#"
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    resources: {{limits: {{memory: 64Mi}}}}
    envFrom: [{{configMapRef: {{name: settings}}, prefix: CFG_}}]
    env:
    - {{name: COLOR, valueFrom: {{configMapKeyRef: {{name: settings, key: COLOR}}}}}}
    - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: PASSWORD}}}}}}
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
    - {{name: APP, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app']"}}}}}}
    - {{name: MEMORY_MI, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    - {{name: GREETING, value: "$(COLOR) $(POD_NAME)"}}
"#
        )),
    );
    wait_phase(&server, "envy", "Running");
    let id = container_id(&server, "envy", "main");
    let pod_ip = pod(&server, "envy")["status"]["podIP"].as_str().unwrap().to_owned();
    let env = exec(&id, "echo $CFG_SIZE/$COLOR/$PASSWORD/$POD_NAME/$POD_IP/$NODE/$APP/$MEMORY_MI/$GREETING");
    assert_eq!(env, format!("large/blue/s3cret/envy/{pod_ip}/{}/envy/64/blue envy", node(&server)));
}

#[test]
fn a_missing_config_map_holds_the_container_until_it_exists() {
    let server = agent_server();
    let yaml = manifest(
        &server,
        "name: patient",
        &format!(
            r#"
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    env: [{{name: X, valueFrom: {{configMapKeyRef: {{name: later, key: x}}}}}}]
"#
        ),
    );
    apply(&server, &yaml);
    let waiting = || container_status(&server, "patient", "main")["state"]["waiting"].clone();
    assert!(eventually(TIMEOUT, || waiting()["reason"] == "CreateContainerConfigError"), "{}", pod(&server, "patient")["status"]);
    assert_eq!(waiting()["message"], "configmap \"later\" not found");
    server.ok(&["create", "configmap", "later", "--from-literal=x=1"]);
    wait_phase(&server, "patient", "Running");
}

#[test]
fn config_map_and_secret_volumes_follow_updates() {
    let server = agent_server();
    server.ok(&["create", "configmap", "files", "--from-literal=greeting=hello", "--from-literal=other=x"]);
    server.ok(&["create", "secret", "generic", "keys", "--from-literal=token=abc"]);
    apply(
        &server,
        &manifest(&server, "name: mounts, labels: {tier: front}", &format!(
            r#"
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    volumeMounts:
    - {{name: config, mountPath: /etc/config}}
    - {{name: secret, mountPath: /etc/secret}}
    - {{name: picked, mountPath: /etc/picked}}
    - {{name: downward, mountPath: /etc/podinfo}}
    - {{name: projected, mountPath: /etc/projected}}
  volumes:
  - {{name: config, configMap: {{name: files}}}}
  - {{name: secret, secret: {{secretName: keys, defaultMode: 0400}}}}
  - {{name: picked, configMap: {{name: files, items: [{{key: greeting, path: sub/renamed}}]}}}}
  - {{name: downward, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}}}
  - name: projected
    projected:
      sources:
      - configMap: {{name: files, items: [{{key: other, path: other}}]}}
      - secret: {{name: keys}}
"#
        )),
    );
    wait_phase(&server, "mounts", "Running");
    let id = container_id(&server, "mounts", "main");
    assert_eq!(exec(&id, "cat /etc/config/greeting /etc/secret/token /etc/picked/sub/renamed /etc/projected/other /etc/projected/token"), "helloabchelloxabc");
    assert_eq!(exec(&id, "cat /etc/podinfo/labels"), "tier=\"front\"");
    assert_eq!(exec(&id, "stat -L -c %a /etc/secret/token"), "400");
    assert!(exec(&id, "touch /etc/config/new 2>&1; echo $?").ends_with('1'), "projected volumes are read-only");

    server.ok(&["patch", "configmap", "files", "-p", r#"{"data":{"greeting":"updated"}}"#]);
    let updated = eventually(TIMEOUT, || exec(&id, "cat /etc/config/greeting") == "updated");
    assert!(updated, "the configMap volume did not follow the update: {}", exec(&id, "ls -la /etc/config"));
    assert!(eventually(TIMEOUT, || exec(&id, "cat /etc/picked/sub/renamed") == "updated"));
}

#[test]
fn empty_dirs_are_shared_between_containers_and_host_paths_mount() {
    let server = agent_server();
    let host_dir = server.dir.path().join("host-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("from-host"), "host file").unwrap();
    apply(
        &server,
        &manifest(&server, "name: sharing", &format!(
            r#"
  terminationGracePeriodSeconds: 1
  containers:
  - name: writer
    image: {BUSYBOX}
    command: ["sh", "-c", "echo shared > /scratch/note; echo ram > /ram/note; sleep 3600"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}, {{name: ram, mountPath: /ram}}, {{name: host, mountPath: /host}}]
  - name: reader
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    volumeMounts: [{{name: scratch, mountPath: /data}}, {{name: ram, mountPath: /ram}}]
  volumes:
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: ram, emptyDir: {{medium: Memory}}}}
  - {{name: host, hostPath: {{path: {host}, type: Directory}}}}
"#,
            host = host_dir.display(
        ))
        ),
    );
    wait_phase(&server, "sharing", "Running");
    let reader = container_id(&server, "sharing", "reader");
    assert!(eventually(TIMEOUT, || exec(&reader, "cat /data/note /ram/note") == "shared\nram"));
    assert!(exec(&reader, "grep ' /ram ' /proc/mounts").contains("tmpfs"), "medium: Memory is a tmpfs");
    let writer = container_id(&server, "sharing", "writer");
    assert_eq!(exec(&writer, "cat /host/from-host"), "host file");
    exec(&writer, "echo back > /host/from-pod");
    assert_eq!(std::fs::read_to_string(host_dir.join("from-pod")).unwrap(), "back\n");
}

#[test]
fn init_containers_run_in_order_before_the_app_containers() {
    let server = agent_server();
    apply(
        &server,
        &manifest(&server, "name: staged", &format!(
            r#"
  terminationGracePeriodSeconds: 1
  initContainers:
  - {{name: first, image: {BUSYBOX}, command: ["sh", "-c", "sleep 1; echo one > /work/log"], volumeMounts: [{{name: work, mountPath: /work}}]}}
  - {{name: second, image: {BUSYBOX}, command: ["sh", "-c", "echo two >> /work/log"], volumeMounts: [{{name: work, mountPath: /work}}]}}
  containers:
  - {{name: main, image: {BUSYBOX}, command: ["sh", "-c", "echo main >> /work/log; sleep 3600"], volumeMounts: [{{name: work, mountPath: /work}}]}}
  volumes: [{{name: work, emptyDir: {{}}}}]
"#
        )),
    );
    assert!(eventually(TIMEOUT, || condition(&server, "staged", "Initialized") == "False" || phase(&server, "staged") == "Running"));
    wait_phase(&server, "staged", "Running");
    let id = container_id(&server, "staged", "main");
    assert!(eventually(TIMEOUT, || exec(&id, "cat /work/log") == "one\ntwo\nmain"), "{}", exec(&id, "cat /work/log"));
    let p = pod(&server, "staged");
    for init in p["status"]["initContainerStatuses"].as_array().unwrap() {
        assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{init}");
    }
    assert_eq!(condition(&server, "staged", "Initialized"), "True");
}

#[test]
fn a_failing_init_container_fails_a_never_restarting_pod() {
    let server = agent_server();
    apply(
        &server,
        &manifest(&server, "name: doomed", &format!(
            r#"
  restartPolicy: Never
  initContainers: [{{name: setup, image: {BUSYBOX}, command: ["sh", "-c", "exit 7"]}}]
  containers: [{{name: main, image: {BUSYBOX}, command: ["sleep", "3600"]}}]
"#
        )),
    );
    wait_phase(&server, "doomed", "Failed");
    let init = &pod(&server, "doomed")["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 7);
    assert!(container_status(&server, "doomed", "main")["state"]["waiting"]["reason"] == "PodInitializing");
}

#[test]
fn resource_limits_reach_docker_and_an_oom_kill_is_reported() {
    let server = agent_server();
    apply(
        &server,
        &manifest(&server, "name: limited", &format!(
            r#"
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    resources: {{limits: {{cpu: 250m, memory: 32Mi}}, requests: {{cpu: 100m, memory: 16Mi}}}}
    securityContext: {{runAsUser: 1000, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
"#
        )),
    );
    wait_phase(&server, "limited", "Running");
    let id = container_id(&server, "limited", "main");
    let host = docker(&["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.CpuQuota}} {{.HostConfig.CpuPeriod}} {{.HostConfig.CpuShares}} {{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{.HostConfig.CapDrop}}", &id]);
    assert_eq!(host, "33554432 25000 100000 102 true 1000 [ALL]");
    assert_eq!(exec(&id, "id -u"), "1000");

    apply(&server, &busybox_pod(&server, "hog", "tail /dev/zero", "  restartPolicy: Never").replace("command:", "resources: {limits: {memory: 16Mi}}\n    command:"));
    wait_phase(&server, "hog", "Failed");
    let terminated = container_status(&server, "hog", "main")["state"]["terminated"].clone();
    assert_eq!(terminated["reason"], "OOMKilled", "{terminated}");
}

#[test]
fn a_crashing_container_backs_off_and_keeps_its_last_state() {
    let server = agent_server();
    apply(&server, &busybox_pod(&server, "crasher", "echo bye > /dev/termination-log; exit 3", ""));
    let status = || container_status(&server, "crasher", "main");
    let looping = eventually(Duration::from_secs(90), || {
        let s = status();
        s["restartCount"].as_i64().unwrap_or(0) >= 1 && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    assert!(looping, "{}", status());
    let s = status();
    let last = &s["lastState"]["terminated"];
    assert_eq!((last["exitCode"].as_i64(), last["reason"].as_str(), last["message"].as_str()), (Some(3), Some("Error"), Some("bye\n")), "{s}");
    assert!(s["state"]["waiting"]["message"].as_str().unwrap().starts_with("back-off 10s restarting failed container=main pod=crasher_default("), "{s}");
    assert_eq!(phase(&server, "crasher"), "Running");
    let uid = pod(&server, "crasher")["metadata"]["uid"].as_str().unwrap().to_owned();
    assert!(containers_of(&uid).len() <= 3, "dead instances are collected: {:?}", containers_of(&uid));

    apply(&server, &busybox_pod(&server, "done", "exit 0", "  restartPolicy: OnFailure"));
    wait_phase(&server, "done", "Succeeded");
    apply(&server, &busybox_pod(&server, "failed", "exit 1", "  restartPolicy: Never"));
    wait_phase(&server, "failed", "Failed");
    assert_eq!(container_status(&server, "failed", "main")["restartCount"], 0);
}

#[test]
fn a_failing_liveness_probe_restarts_the_container() {
    let server = agent_server();
    let yaml = busybox_pod(&server, "sick", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600", "").replace(
        "command:",
        "livenessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 1}\n    command:",
    );
    apply(&server, &yaml);
    let restarted = eventually(Duration::from_secs(90), || container_status(&server, "sick", "main")["restartCount"].as_i64().unwrap_or(0) >= 1);
    assert!(restarted, "{}", pod(&server, "sick")["status"]);
    let events = server.ok(&["get", "events", "--field-selector", "involvedObject.name=sick"]);
    assert!(events.contains("Liveness probe failed"), "{events}");
}

#[test]
fn readiness_probes_flip_the_ready_condition() {
    let server = agent_server();
    let yaml = busybox_pod(&server, "gated", "sleep 3600", "")
        .replace("command:", "readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}\n    command:");
    apply(&server, &yaml);
    wait_phase(&server, "gated", "Running");
    assert_eq!(condition(&server, "gated", "Ready"), "False");
    let id = container_id(&server, "gated", "main");
    exec(&id, "touch /tmp/ready");
    assert!(eventually(TIMEOUT, || condition(&server, "gated", "Ready") == "True"));
    assert_eq!(container_status(&server, "gated", "main")["ready"], true);
    exec(&id, "rm /tmp/ready");
    assert!(eventually(TIMEOUT, || condition(&server, "gated", "Ready") == "False"));
}

#[test]
fn deleting_a_pod_stops_its_containers_within_the_grace_period() {
    let server = agent_server();
    let marker = server.dir.path().join("prestop");
    std::fs::create_dir_all(&marker).unwrap();
    apply(
        &server,
        &manifest(&server, "name: leaving", &format!(
            r#"
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'echo term > /marker/signal; exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: marker, mountPath: /marker}}]
    lifecycle: {{preStop: {{exec: {{command: ["sh", "-c", "echo hook > /marker/hook"]}}}}}}
  volumes: [{{name: marker, hostPath: {{path: {marker}}}}}]
"#,
            marker = marker.display(
        ))
        ),
    );
    wait_phase(&server, "leaving", "Running");
    let uid = pod(&server, "leaving")["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(containers_of(&uid).len(), 2, "a sandbox and the container");
    let started = Instant::now();
    server.ok(&["delete", "pod", "leaving"]);
    assert!(started.elapsed() < Duration::from_secs(15), "the container exits on SIGTERM, well within its grace: {:?}", started.elapsed());
    assert_eq!(pod(&server, "leaving"), Value::Null);
    assert!(containers_of(&uid).is_empty(), "{:?}", containers_of(&uid));
    assert_eq!(std::fs::read_to_string(marker.join("hook")).unwrap(), "hook\n");
    assert_eq!(std::fs::read_to_string(marker.join("signal")).unwrap(), "term\n");
    assert!(!server.data_dir().join("pods").join(&uid).exists(), "the pod's volumes are removed");
}

#[test]
fn a_killed_agent_adopts_its_containers_and_removes_those_of_deleted_pods() {
    let mut server = agent_server();
    apply(&server, &busybox_pod(&server, "stays", "sleep 3600", ""));
    apply(&server, &busybox_pod(&server, "goes", "sleep 3600", ""));
    wait_phase(&server, "stays", "Running");
    wait_phase(&server, "goes", "Running");
    let stays_uid = pod(&server, "stays")["metadata"]["uid"].as_str().unwrap().to_owned();
    let goes_uid = pod(&server, "goes")["metadata"]["uid"].as_str().unwrap().to_owned();
    let mut before = containers_of(&stays_uid);
    before.sort();

    // SIGKILL with pods running; while no agent runs, a pod is force-deleted.
    let agent_args = server.args();
    server.restart_with_args(&["--disable-agent"]);
    server.ok(&["delete", "pod", "goes", "--grace-period=0", "--force"]);
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    server.restart_with_args(&agent_args);

    assert!(eventually(TIMEOUT, || containers_of(&goes_uid).is_empty()), "{:?}", containers_of(&goes_uid));
    std::thread::sleep(Duration::from_secs(3));
    let mut after = containers_of(&stays_uid);
    after.sort();
    assert_eq!(before, after, "the same containers, adopted, not duplicated");
    assert_eq!(phase(&server, "stays"), "Running");
    assert_eq!(container_status(&server, "stays", "main")["restartCount"], 0);
    assert_eq!(container_status(&server, "stays", "main")["ready"], true);
}

#[test]
fn a_missing_image_reports_err_image_pull_then_back_off() {
    let server = agent_server();
    let yaml = busybox_pod(&server, "nowhere", "true", "").replace(BUSYBOX, "127.0.0.1:1/rk-test/absent:1");
    apply(&server, &yaml);
    let waiting = || container_status(&server, "nowhere", "main")["state"]["waiting"].clone();
    // ErrImagePull shows until the next sync, which finds the pull backing off.
    let events = || server.ok(&["get", "events", "--field-selector", "involvedObject.name=nowhere", "-o", "jsonpath={.items[*].message}"]);
    let failed = "Failed to pull image \"127.0.0.1:1/rk-test/absent:1\": ";
    assert!(eventually(TIMEOUT, || events().contains(failed) && events().contains("Error: ErrImagePull")), "{}", events());
    assert!(eventually(TIMEOUT, || waiting()["reason"] == "ImagePullBackOff"), "{}", waiting());
    assert_eq!(waiting()["message"], "Back-off pulling image \"127.0.0.1:1/rk-test/absent:1\"");

    let never = busybox_pod(&server, "never", "true", "").replace(BUSYBOX, "rk-test/absent:1").replace("command:", "imagePullPolicy: Never\n    command:");
    apply(&server, &never);
    let waiting = || container_status(&server, "never", "main")["state"]["waiting"].clone();
    assert!(eventually(TIMEOUT, || waiting()["reason"] == "ErrImageNeverPull"), "{}", waiting());
    assert_eq!(waiting()["message"], "Container image \"rk-test/absent:1\" is not present with pull policy of Never");
}

/// A Docker registry (Debian's docker-registry) on a free loopback port,
/// stopped when dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
    _storage: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let storage = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = storage.path().join("config.yml");
        std::fs::write(&config, format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", storage.path().join("data").display())).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's docker-registry package) runs");
        assert!(eventually(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()), "the registry listens");
        Registry { child, port, _storage: storage }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_image_is_pulled_from_a_registry() {
    let server = agent_server();
    let registry = Registry::start();
    let image = format!("127.0.0.1:{}/rk-test/pulled:{}", registry.port, std::process::id());
    docker(&["tag", BUSYBOX, &image]);
    let pushed = Command::new("docker").args(["push", &image]).output().unwrap();
    assert!(pushed.status.success(), "push: {}", String::from_utf8_lossy(&pushed.stderr));
    docker(&["rmi", &image]);
    assert!(docker(&["images", "-q", &image]).is_empty(), "the image is gone locally");

    let yaml = busybox_pod(&server, "pulled", "sleep 3600", "").replace(BUSYBOX, &image).replace("command:", "imagePullPolicy: Always\n    command:");
    apply(&server, &yaml);
    wait_phase(&server, "pulled", "Running");
    let status = container_status(&server, "pulled", "main");
    assert!(status["imageID"].as_str().unwrap().contains("@sha256:"), "a pulled image reports its digest: {status}");
    let events = server.ok(&["get", "events", "--field-selector", "involvedObject.name=pulled"]);
    assert!(events.contains("Successfully pulled image"), "{events}");
    server.ok(&["delete", "pod", "pulled"]);
    docker(&["rmi", &image]);
}

#[test]
fn agents_of_different_nodes_on_one_engine_leave_each_other_alone() {
    let first = agent_server();
    apply(&first, &busybox_pod(&first, "mine", "sleep 3600", ""));
    wait_phase(&first, "mine", "Running");
    let uid = pod(&first, "mine")["metadata"]["uid"].as_str().unwrap().to_owned();
    let before = containers_of(&uid);

    // A second agent with its own API and node name: the first one's pod is
    // not in its API, so a careless agent would remove the containers as strays.
    let second = agent_server();
    apply(&second, &busybox_pod(&second, "theirs", "sleep 3600", ""));
    wait_phase(&second, "theirs", "Running");
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(containers_of(&uid), before, "a resync of the other agent went by");
    assert_eq!(phase(&first, "mine"), "Running");
    let labels = docker(&["inspect", "-f", "{{index .Config.Labels \"io.rk.node\"}}", &container_id(&first, "mine", "main")]);
    assert_eq!(labels, node(&first));
}

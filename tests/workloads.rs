//! The workload controllers through the real binary and kubectl: Deployments
//! (scale, rolling update bounds observed pod by pod, Recreate, pause, undo,
//! status and progress deadline), DaemonSets (a pod per node) and
//! StatefulSets (ordered start and reverse stop, partitioned updates). Pods are
//! pinned to fake nodes, which make them Running and Ready at once; DaemonSet
//! pods are pinned by node affinity and wait for the scheduler.

mod common;

use common::{Server, eventually};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(60);

fn with_fake_nodes() -> Server {
    Server::start_with(&["--fake-nodes", "3"])
}

fn apply(server: &Server, manifest: &str) {
    let out = server.kubectl_with(&["apply", "-f", "-"], Some(manifest), &[]);
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn get(server: &Server, what: &str, jsonpath: &str) -> String {
    server.ok(&["get", what, "-o", &format!("jsonpath={jsonpath}")])
}

fn rollout_status(server: &Server, what: &str) -> String {
    server.ok(&["rollout", "status", what, "--timeout=60s"])
}

/// A Deployment `web` of `replicas` nginx pods on fake-0; `strategy` is YAML at spec level.
fn deployment(replicas: u32, image: &str, strategy: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
{strategy}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      nodeName: fake-0
      containers:
      - name: nginx
        image: {image}
"
    )
}

fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn image(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.as_deref()).unwrap_or("")
}

/// Pods by name, as a watch has shown them so far.
type Pods = BTreeMap<String, Pod>;

/// Every change to the pods matching a selector, in the store's order, from a
/// consistent list onwards.
struct PodWatch {
    pods: Pods,
    events: mpsc::UnboundedReceiver<WatchEvent<Pod>>,
}

impl PodWatch {
    async fn start(client: kube::Client, selector: &str) -> PodWatch {
        let api: Api<Pod> = Api::namespaced(client, "default");
        let list = api.list(&ListParams::default().labels(selector)).await.expect("list pods");
        let version = list.metadata.resource_version.clone().expect("list resourceVersion");
        let pods = list.items.into_iter().map(|p| (p.metadata.name.clone().unwrap(), p)).collect();
        let (tx, events) = mpsc::unbounded_channel();
        let params = WatchParams::default().labels(selector).timeout(290);
        let mut stream = api.watch(&params, &version).await.expect("watch pods").boxed();
        tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        PodWatch { pods, events }
    }

    /// Applies events in order, calling `check` with each and the pods before
    /// and after it, until `done` holds for the pods.
    async fn follow(&mut self, mut check: impl FnMut(&Pods, &WatchEvent<Pod>, &Pods), done: impl Fn(&Pods) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.pods) {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out; pods now: {:?}", self.pods.keys().collect::<Vec<_>>()))
                .expect("watch ended");
            let before = self.pods.clone();
            match &event {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                    self.pods.insert(p.metadata.name.clone().unwrap(), p.clone());
                }
                WatchEvent::Deleted(p) => {
                    self.pods.remove(p.metadata.name.as_deref().unwrap());
                }
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watch error: {e:?}"),
            }
            check(&before, &event, &self.pods);
        }
    }
}

/// Pods that count: not on their way out.
fn live(pods: &Pods) -> impl Iterator<Item = &Pod> {
    pods.values().filter(|p| !is_terminating(p))
}

/// Rolls `web` from nginx:1 to nginx:2 and asserts, at every pod event, at
/// most `max_total` live pods and at least `min_available` available ones.
async fn assert_rollout_bounds(strategy: &str, replicas: usize, max_total: usize, min_available: usize) {
    let server = with_fake_nodes();
    apply(&server, &deployment(replicas as u32, "nginx:1", strategy));
    rollout_status(&server, "deployment/web");
    let mut watch = PodWatch::start(server.client().await, "app=web").await;
    assert_eq!(live(&watch.pods).filter(|p| is_ready(p)).count(), replicas);
    server.ok(&["set", "image", "deployment/web", "nginx=nginx:2"]);
    let (mut peak, mut trough) = (0, usize::MAX);
    watch
        .follow(
            |_, event, pods| {
                let total = live(pods).count();
                let available = live(pods).filter(|p| is_ready(p)).count();
                (peak, trough) = (peak.max(total), trough.min(available));
                assert!(total <= max_total, "{total} live pods > {max_total} after {event:?}");
                assert!(available >= min_available, "{available} available pods < {min_available} after {event:?}");
            },
            |pods| pods.len() == replicas && pods.values().all(|p| image(p) == "nginx:2" && is_ready(p) && !is_terminating(p)),
        )
        .await;
    assert!(peak > replicas || trough < replicas, "the rollout used its room: peak {peak}, trough {trough}");
    assert!(rollout_status(&server, "deployment/web").contains("successfully rolled out"));
}

#[test]
fn a_deployment_reaches_its_replicas_and_replaces_a_deleted_pod() {
    let server = with_fake_nodes();
    apply(&server, &deployment(3, "nginx:1", ""));
    assert!(rollout_status(&server, "deployment/web").contains("deployment \"web\" successfully rolled out"));
    assert_eq!(get(&server, "deployment/web", "{.status.availableReplicas}/{.status.readyReplicas}/{.status.updatedReplicas}"), "3/3/3");
    let rs = get(&server, "rs", "{.items[*].metadata.name}");
    let hash = get(&server, "rs", "{.items[0].metadata.labels.pod-template-hash}");
    assert_eq!(rs, format!("web-{hash}"), "one ReplicaSet named by the template hash");
    assert_eq!(get(&server, &format!("rs/{rs}"), "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"), "1");
    assert_eq!(get(&server, "deployment/web", "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"), "1");
    let conditions = get(&server, "deployment/web", "{range .status.conditions[*]}{.type}={.reason};{end}");
    assert!(conditions.contains("Available=MinimumReplicasAvailable") && conditions.contains("Progressing=NewReplicaSetAvailable"), "{conditions}");
    let events = server.ok(&["get", "events", "--field-selector", "reason=ScalingReplicaSet", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains(&format!("Scaled up replica set {rs} from 0 to 3")), "{events}");

    let victim = get(&server, "pods", "{.items[0].metadata.name}");
    server.ok(&["delete", "pod", &victim, "--wait=false"]);
    assert!(
        eventually(WAIT, || {
            let names = get(&server, "pods", "{range .items[*]}{.metadata.name} {.status.phase}\n{end}");
            names.lines().filter(|l| l.ends_with("Running")).count() == 3 && !names.contains(&victim)
        }),
        "a replacement pod runs: {}",
        server.ok(&["get", "pods"])
    );
}

#[test]
fn kubectl_scale_grows_and_shrinks_a_deployment() {
    let server = with_fake_nodes();
    apply(&server, &deployment(2, "nginx:1", ""));
    rollout_status(&server, "deployment/web");
    let running = || get(&server, "pods", "{range .items[*]}{.status.phase}{\"\\n\"}{end}").lines().filter(|l| *l == "Running").count();
    server.ok(&["scale", "deployment/web", "--replicas=5"]);
    assert!(eventually(WAIT, || running() == 5 && get(&server, "deployment/web", "{.status.availableReplicas}") == "5"), "{}", server.ok(&["get", "pods"]));
    assert_eq!(get(&server, "rs", "{.items[0].metadata.annotations.deployment\\.kubernetes\\.io/desired-replicas}"), "5");
    server.ok(&["scale", "deployment/web", "--replicas=1"]);
    assert!(eventually(WAIT, || running() == 1 && get(&server, "deployment/web", "{.status.replicas}") == "1"), "{}", server.ok(&["get", "pods"]));
    let events = server.ok(&["get", "events", "--field-selector", "reason=ScalingReplicaSet", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("from 2 to 5") && events.contains("Scaled down replica set") && events.contains("from 5 to 1"), "{events}");

    // A restart is a new template: a second ReplicaSet takes over.
    server.ok(&["rollout", "restart", "deployment/web"]);
    assert!(rollout_status(&server, "deployment/web").contains("successfully rolled out"));
    assert!(eventually(WAIT, || get(&server, "rs", "{.items[*].spec.replicas}").split(' ').count() == 2));
    assert_eq!(get(&server, "deployment/web", "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_image_rolls_within_max_surge_and_max_unavailable_as_percentages() {
    // 25% of 4: surge rounds up to 1, unavailability down to 1.
    assert_rollout_bounds("  strategy:\n    rollingUpdate: {maxSurge: 25%, maxUnavailable: 25%}", 4, 5, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_image_rolls_with_surge_only_and_never_loses_availability() {
    assert_rollout_bounds("  strategy:\n    rollingUpdate: {maxSurge: 2, maxUnavailable: 0}", 3, 5, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_removes_every_old_pod_before_starting_new_ones() {
    let server = with_fake_nodes();
    apply(&server, &deployment(3, "nginx:1", "  strategy:\n    type: Recreate"));
    rollout_status(&server, "deployment/web");
    let mut watch = PodWatch::start(server.client().await, "app=web").await;
    server.ok(&["set", "image", "deployment/web", "nginx=nginx:2"]);
    watch
        .follow(
            |before, event, _| {
                if let WatchEvent::Added(pod) = event {
                    assert_eq!(image(pod), "nginx:2");
                    assert!(before.values().all(|p| image(p) == "nginx:2"), "a new pod started beside old ones: {:?}", before.keys());
                }
            },
            |pods| pods.len() == 3 && pods.values().all(|p| image(p) == "nginx:2" && is_ready(p)),
        )
        .await;
    assert!(rollout_status(&server, "deployment/web").contains("successfully rolled out"));
}

#[test]
fn rollout_undo_returns_to_the_previous_template_and_history_shows_change_causes() {
    let server = with_fake_nodes();
    apply(&server, &deployment(2, "nginx:1", ""));
    rollout_status(&server, "deployment/web");
    server.ok(&["set", "image", "deployment/web", "nginx=nginx:2"]);
    server.ok(&["annotate", "deployment/web", "kubernetes.io/change-cause=move to nginx 2"]);
    rollout_status(&server, "deployment/web");
    assert!(eventually(WAIT, || server.ok(&["rollout", "history", "deployment/web"]).contains("move to nginx 2")));
    let history = server.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.lines().any(|l| l.starts_with('1')) && history.lines().any(|l| l.starts_with("2 ") && l.contains("move to nginx 2")), "{history}");

    assert!(server.ok(&["rollout", "undo", "deployment/web"]).contains("rolled back"));
    rollout_status(&server, "deployment/web");
    assert_eq!(get(&server, "deployment/web", "{.spec.template.spec.containers[0].image}"), "nginx:1");
    assert!(eventually(WAIT, || get(&server, "pods", "{.items[*].spec.containers[0].image}") == "nginx:1 nginx:1"));
    // The first template's ReplicaSet is reused and becomes revision 3.
    let revisions = get(&server, "rs", "{range .items[*]}{.spec.template.spec.containers[0].image}={.metadata.annotations.deployment\\.kubernetes\\.io/revision};{end}");
    assert!(revisions.contains("nginx:1=3;") && revisions.contains("nginx:2=2;"), "{revisions}");
    assert_eq!(get(&server, "rs", "{.items[*].metadata.name}").split(' ').count(), 2);
    assert_eq!(get(&server, "deployment/web", "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"), "3");
    let skipped = server.ok(&["rollout", "undo", "deployment/web", "--to-revision=3"]);
    assert!(skipped.contains("skipped rollback (current template already matches revision 3)"), "{skipped}");
}

#[test]
fn rollout_status_waits_for_available_pods_and_reports_a_missed_deadline() {
    let server = with_fake_nodes();
    // Bound to a node nothing runs: the pods never become ready.
    let stuck = deployment(2, "nginx:1", "  progressDeadlineSeconds: 4").replace("fake-0", "nowhere");
    apply(&server, &stuck);
    let waiting = server.kubectl(&["rollout", "status", "deployment/web", "--timeout=1s"]);
    assert!(!waiting.status.success());
    assert!(String::from_utf8_lossy(&waiting.stdout).contains("Waiting for deployment \"web\" rollout to finish"), "{waiting:?}");
    assert!(
        eventually(WAIT, || get(&server, "deployment/web", "{.status.conditions[?(@.type==\"Progressing\")].reason}") == "ProgressDeadlineExceeded"),
        "{}",
        server.ok(&["get", "deployment/web", "-o", "yaml"])
    );
    let failed = server.kubectl(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(String::from_utf8_lossy(&failed.stderr).contains("deployment \"web\" exceeded its progress deadline"), "{failed:?}");
    assert_eq!(get(&server, "deployment/web", "{.status.conditions[?(@.type==\"Available\")].reason}"), "MinimumReplicasUnavailable");

    server.ok(&["patch", "deployment/web", "-p", r#"{"spec":{"template":{"spec":{"nodeName":"fake-0"}}}}"#]);
    assert!(rollout_status(&server, "deployment/web").contains("successfully rolled out"));
    assert_eq!(get(&server, "deployment/web", "{.status.conditions[?(@.type==\"Progressing\")].reason}"), "NewReplicaSetAvailable");
}

#[test]
fn a_paused_deployment_holds_its_template_until_resumed() {
    let server = with_fake_nodes();
    apply(&server, &deployment(2, "nginx:1", ""));
    rollout_status(&server, "deployment/web");
    server.ok(&["rollout", "pause", "deployment/web"]);
    server.ok(&["set", "image", "deployment/web", "nginx=nginx:2"]);
    assert!(eventually(WAIT, || get(&server, "deployment/web", "{.status.conditions[?(@.type==\"Progressing\")].reason}") == "DeploymentPaused"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(get(&server, "rs", "{.items[*].spec.template.spec.containers[0].image}"), "nginx:1", "no ReplicaSet for the new template");
    assert_eq!(get(&server, "pods", "{.items[*].spec.containers[0].image}"), "nginx:1 nginx:1");
    // A paused Deployment still scales.
    server.ok(&["scale", "deployment/web", "--replicas=3"]);
    assert!(eventually(WAIT, || get(&server, "rs", "{.items[0].spec.replicas}") == "3"));

    server.ok(&["rollout", "resume", "deployment/web"]);
    assert!(rollout_status(&server, "deployment/web").contains("successfully rolled out"));
    assert!(eventually(WAIT, || get(&server, "pods", "{.items[*].spec.containers[0].image}") == "nginx:2 nginx:2 nginx:2"));
}

#[test]
fn a_daemonset_puts_one_pod_on_each_node_pinned_by_affinity() {
    let server = with_fake_nodes();
    apply(
        &server,
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: agent:1
",
    );
    let targets = || {
        let out = get(&server, "pods", "{range .items[*]}{.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values[0]}{\"\\n\"}{end}");
        let mut nodes: Vec<String> = out.lines().map(str::to_owned).collect();
        nodes.sort();
        nodes
    };
    assert!(eventually(WAIT, || targets() == ["fake-0", "fake-1", "fake-2"]), "{:?}", targets());
    assert!(eventually(WAIT, || get(&server, "ds/agent", "{.status.desiredNumberScheduled}/{.status.currentNumberScheduled}/{.status.observedGeneration}") == "3/3/1"));
    let tolerations = get(&server, "pods", "{.items[0].spec.tolerations[*].key}");
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "node.kubernetes.io/unschedulable", "node.kubernetes.io/disk-pressure"] {
        assert!(tolerations.contains(key), "{tolerations}");
    }
    let revision = get(&server, "controllerrevisions", "{.items[0].metadata.labels.controller-revision-hash}");
    assert_eq!(get(&server, "pods", "{.items[*].metadata.labels.controller-revision-hash}"), [revision.as_str(); 3].join(" "));
    assert!(server.ok(&["get", "ds"]).lines().next().unwrap().contains("NODE SELECTOR"));

    // Narrowed to one node by a node selector, the other pods go.
    server.ok(&["patch", "ds/agent", "-p", r#"{"spec":{"template":{"spec":{"nodeSelector":{"kubernetes.io/hostname":"fake-1"}}}}}"#]);
    assert!(eventually(WAIT, || targets() == ["fake-1"] && get(&server, "ds/agent", "{.status.desiredNumberScheduled}") == "1"), "{:?}", targets());
    assert_eq!(get(&server, "pods", "{.items[0].spec.nodeSelector.kubernetes\\.io/hostname}"), "fake-1");
}

#[test]
fn a_daemonset_with_on_delete_updates_only_the_pods_deleted() {
    let server = with_fake_nodes();
    apply(
        &server,
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  updateStrategy: {type: OnDelete}
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: agent:1
",
    );
    let images = || get(&server, "pods", "{range .items[*]}{.spec.containers[0].image}{\"\\n\"}{end}");
    assert!(eventually(WAIT, || images().lines().filter(|i| *i == "agent:1").count() == 3));
    server.ok(&["set", "image", "ds/agent", "agent=agent:2"]);
    assert!(eventually(WAIT, || get(&server, "controllerrevisions", "{.items[*].revision}").split(' ').count() == 2));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(images().lines().filter(|i| *i == "agent:1").count(), 3, "nothing replaced by itself");
    let victim = get(&server, "pods", "{.items[0].metadata.name}");
    server.ok(&["delete", "pod", &victim]);
    assert!(eventually(WAIT, || {
        let now = images();
        now.lines().filter(|i| *i == "agent:2").count() == 1 && now.lines().filter(|i| *i == "agent:1").count() == 2
    }), "{}", images());
    assert!(eventually(WAIT, || get(&server, "ds/agent", "{.status.updatedNumberScheduled}") == "1"));
}

fn statefulset(replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: {replicas}
  selector:
    matchLabels: {{app: db}}
  template:
    metadata:
      labels: {{app: db}}
    spec:
      nodeName: fake-0
      containers:
      - name: db
        image: {image}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_starts_pods_in_order_and_stops_them_in_reverse() {
    let server = with_fake_nodes();
    let mut watch = PodWatch::start(server.client().await, "app=db").await;
    apply(&server, &statefulset(3, "db:1"));
    let mut started = Vec::new();
    watch
        .follow(
            |before, event, _| {
                if let WatchEvent::Added(pod) = event {
                    let name = pod.metadata.name.clone().unwrap();
                    for earlier in &started {
                        assert!(before.get(earlier).is_some_and(is_ready), "{name} started before {earlier} was ready");
                    }
                    started.push(name);
                }
            },
            |pods| pods.len() == 3 && pods.values().all(is_ready),
        )
        .await;
    assert_eq!(started, ["web-0", "web-1", "web-2"]);
    assert!(rollout_status(&server, "statefulset/web").contains("3 new pods have been updated"));
    assert_eq!(get(&server, "sts/web", "{.status.readyReplicas}/{.status.currentReplicas}/{.status.updatedReplicas}"), "3/3/3");
    assert_eq!(get(&server, "pod/web-1", "{.spec.hostname}.{.spec.subdomain} {.metadata.labels.apps\\.kubernetes\\.io/pod-index}"), "web-1.web 1");

    server.ok(&["scale", "statefulset/web", "--replicas=0"]);
    let mut stopping = Vec::new();
    watch
        .follow(
            |before, event, after| {
                let (WatchEvent::Modified(pod) | WatchEvent::Deleted(pod)) = event else { return };
                let name = pod.metadata.name.clone().unwrap();
                let newly_going = before.get(&name).is_some_and(|p| !is_terminating(p)) && after.get(&name).is_none_or(is_terminating);
                if newly_going {
                    let ordinal: u32 = name.trim_start_matches("web-").parse().unwrap();
                    assert!(before.keys().all(|other| other.trim_start_matches("web-").parse::<u32>().unwrap() <= ordinal), "{name} stopped while {:?} remained", before.keys());
                    stopping.push(name);
                }
            },
            |pods| pods.is_empty(),
        )
        .await;
    assert_eq!(stopping, ["web-2", "web-1", "web-0"]);
}

#[test]
fn a_statefulset_rolls_its_pods_down_to_the_partition() {
    let server = with_fake_nodes();
    apply(&server, &statefulset(3, "db:1"));
    rollout_status(&server, "statefulset/web");
    server.ok(&["patch", "sts/web", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":1}}}}"#]);
    server.ok(&["set", "image", "sts/web", "db=db:2"]);
    let images = || get(&server, "pods", "{range .items[*]}{.metadata.name}={.spec.containers[0].image};{end}");
    assert!(eventually(WAIT, || images() == "web-0=db:1;web-1=db:2;web-2=db:2;"), "{}", images());
    let status = rollout_status(&server, "statefulset/web");
    assert!(status.contains("partitioned roll out complete: 2 new pods have been updated"), "{status}");
    let mut revisions: Vec<String> = get(&server, "controllerrevisions", "{.items[*].revision}").split(' ').map(str::to_owned).collect();
    revisions.sort();
    assert_eq!(revisions, ["1", "2"]);

    server.ok(&["patch", "sts/web", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#]);
    assert!(eventually(WAIT, || images() == "web-0=db:2;web-1=db:2;web-2=db:2;"), "{}", images());
    assert!(eventually(WAIT, || get(&server, "sts/web", "{.status.currentRevision}") == get(&server, "sts/web", "{.status.updateRevision}")));
}

#[test]
fn ordered_statefulsets_wait_for_each_pod_and_parallel_ones_do_not() {
    let server = with_fake_nodes();
    // Bound to a node nothing runs: no pod ever becomes ready.
    apply(&server, &statefulset(3, "db:1").replace("fake-0", "nowhere"));
    let parallel = statefulset(3, "db:1").replace("name: web", "name: fast").replace("app: db", "app: fast").replace("fake-0", "nowhere").replace("  serviceName: web", "  serviceName: fast\n  podManagementPolicy: Parallel");
    apply(&server, &parallel);
    assert!(eventually(WAIT, || get(&server, "pods", "{.items[*].metadata.name}") == "fast-0 fast-1 fast-2 web-0"), "{}", server.ok(&["get", "pods"]));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(get(&server, "pods", "{.items[*].metadata.name}"), "fast-0 fast-1 fast-2 web-0", "web-1 waits for web-0 to be ready");
    assert_eq!(get(&server, "sts/fast", "{.status.replicas}/{.status.readyReplicas}"), "3/", "three pods, none ready");
}

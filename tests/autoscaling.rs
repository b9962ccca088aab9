//! HorizontalPodAutoscalers end to end, as a user tries them: Deployments on
//! the real node agent (Docker), `kubectl autoscale` or an applied HPA, usage
//! from the agents' samples through metrics.k8s.io (`kubectl top`), and the
//! controller scaling the Deployment up under load and down when idle, with
//! upstream's status, conditions, events and `kubectl get`/`describe` output.
//! The server runs with a 1 s HPA sync period so the tests wait for the
//! agents' samples (every 15 s), not for the controller. These tests need
//! root and a running Docker engine.

mod common;

use common::{Server, eventually, test_images};
use serde_json::{Value, json};
use std::time::Duration;

/// Long enough for pods to start and two rounds of the agent's 15 s samples.
const TIMEOUT: Duration = Duration::from_secs(60);

fn server() -> Server {
    test_images();
    Server::start_with_agent(&["--horizontal-pod-autoscaler-sync-period", "1s"])
}

fn apply(server: &Server, yaml: &str) {
    let out = server.kubectl_with(&["apply", "-f", "-"], Some(yaml), &[]);
    assert!(out.status.success(), "apply failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
}

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = server.kubectl(&all);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// A Deployment of `replicas` pods running `command`, each requesting 50m of CPU (limited to 100m).
fn deployment(name: &str, replicas: u32, command: &str) -> String {
    let container = json!({
        "name": "main", "image": "rk-test/busybox:1", "command": ["sh", "-c", command],
        "resources": { "requests": { "cpu": "50m" }, "limits": { "cpu": "100m" } },
    });
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": { "terminationGracePeriodSeconds": 1, "containers": [container] } },
        },
    })
    .to_string()
}

/// The HPA's condition of `kind`: (status, reason, message).
fn condition(hpa: &Value, kind: &str) -> (String, String, String) {
    let conditions = hpa["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let found = conditions.into_iter().find(|c| c["type"] == kind).unwrap_or(Value::Null);
    let text = |field: &str| found[field].as_str().unwrap_or("").to_owned();
    (text("status"), text("reason"), text("message"))
}

/// The messages of the HPA's events with `reason`.
fn events(server: &Server, hpa: &str, reason: &str) -> Vec<String> {
    let selector = format!("involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={hpa},reason={reason}");
    let list = get_json(server, &["get", "events", "--field-selector", &selector]);
    list["items"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str().map(str::to_owned)).collect()
}

fn replicas(server: &Server, deployment: &str) -> (i64, i64) {
    let d = get_json(server, &["get", "deployment", deployment]);
    (d["spec"]["replicas"].as_i64().unwrap_or(-1), d["status"]["readyReplicas"].as_i64().unwrap_or(0))
}

/// Millicores in a `kubectl top` CPU cell (`99m`, `1`).
fn millicores(cell: &str) -> Option<u64> {
    match cell.strip_suffix('m') {
        Some(milli) => milli.parse().ok(),
        None => cell.parse::<u64>().ok().map(|cores| cores * 1000),
    }
}

#[test]
fn a_busy_deployment_scales_up_to_its_maximum() {
    let server = server();
    apply(&server, &deployment("busy", 1, "while :; do :; done"));
    let created = server.ok(&["autoscale", "deployment", "busy", "--cpu-percent=50", "--min=1", "--max=3"]);
    assert!(created.contains("horizontalpodautoscaler.autoscaling/busy autoscaled"), "{created}");

    // The pod's usage reaches kubectl top from the agent's samples: well above its 50m request.
    let mut top = String::new();
    let busy = eventually(TIMEOUT, || {
        top = String::from_utf8_lossy(&server.kubectl(&["top", "pod", "-l", "app=busy", "--no-headers"]).stdout).into_owned();
        top.lines().any(|l| l.split_whitespace().nth(1).and_then(millicores).is_some_and(|m| m > 50))
    });
    assert!(busy, "kubectl top never showed the busy pod's usage: {top}\nlog:\n{}", server.log());

    // The controller scales the Deployment to its maximum, and all three pods run.
    let scaled = eventually(TIMEOUT, || replicas(&server, "busy") == (3, 3));
    assert!(scaled, "deployment at {:?}, HPA: {}", replicas(&server, "busy"), get_json(&server, &["get", "hpa", "busy"])["status"]);

    // Its status: the replica counts, the measured utilization and the conditions upstream sets
    // (three busy pods ask for more than the maximum allows).
    let mut hpa = Value::Null;
    let settled = eventually(TIMEOUT, || {
        hpa = get_json(&server, &["get", "hpa", "busy"]);
        hpa["status"]["currentReplicas"] == 3 && condition(&hpa, "ScalingLimited").1 == "TooManyReplicas"
    });
    assert!(settled, "HPA status: {}", hpa["status"]);
    assert_eq!(hpa["status"]["desiredReplicas"], 3);
    let metric = &hpa["status"]["currentMetrics"][0];
    assert_eq!((metric["type"].as_str(), metric["resource"]["name"].as_str()), (Some("Resource"), Some("cpu")));
    let utilization = metric["resource"]["current"]["averageUtilization"].as_i64().unwrap_or(0);
    assert!(utilization > 50, "utilization {utilization}% is not above the 50% target: {}", hpa["status"]);
    assert!(metric["resource"]["current"]["averageValue"].as_str().is_some_and(|v| v.ends_with('m')), "{metric}");
    assert_eq!(condition(&hpa, "AbleToScale").0, "True");
    let active = condition(&hpa, "ScalingActive");
    assert_eq!(
        active,
        ("True".into(), "ValidMetricFound".into(), "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)".into())
    );
    assert_eq!(condition(&hpa, "ScalingLimited"), ("True".into(), "TooManyReplicas".into(), "the desired replica count is more than the maximum replica count".into()));
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{}", hpa["status"]);

    // Each rescale is an event worded as upstream's.
    let rescales = events(&server, "busy", "SuccessfulRescale");
    let reason = "reason: cpu resource utilization (percentage of request) above target";
    assert!(rescales.iter().any(|m| m == &format!("New size: 3; {reason}")), "{rescales:?}");
    assert!(rescales.iter().all(|m| m.ends_with(reason)), "{rescales:?}");

    // kubectl get: upstream's columns, the target as "cpu: N%/50%".
    let table = server.ok(&["get", "hpa", "busy"]);
    let mut lines = table.lines();
    assert_eq!(lines.next().map(|h| h.split_whitespace().collect::<Vec<_>>()), Some(vec!["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"]), "{table}");
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(row[..3], ["busy", "Deployment/busy", "cpu:"], "{table}");
    let (now, target) = row[3].split_once('/').unwrap_or_default();
    assert!(now.trim_end_matches('%').parse::<i64>().is_ok_and(|n| n > 50) && target == "50%", "{table}");
    assert_eq!(row[4..7], ["1", "3", "3"], "{table}");

    // kubectl describe reads the same status.
    let described = server.ok(&["describe", "hpa", "busy"]);
    for expected in [
        "Reference:",
        "Deployment/busy",
        "resource cpu on pods  (as a percentage of request):",
        "Min replicas:",
        "Max replicas:",
        "Deployment pods:",
        "3 current / 3 desired",
        "ScalingActive   True    ValidMetricFound",
        "ScalingLimited  True    TooManyReplicas",
        "SuccessfulRescale",
    ] {
        assert!(described.contains(expected), "describe lacks {expected:?}:\n{described}");
    }
}

#[test]
fn idle_pods_scale_down_to_the_minimum() {
    let server = server();
    apply(&server, &deployment("idle", 3, "sleep 3600"));
    apply(
        &server,
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: idle
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: idle}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Resource
    resource:
      name: cpu
      target: {type: Utilization, averageUtilization: 50}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 0
"#,
    );

    // Until the agent has sampled the new pods there is nothing to measure, and the HPA says so.
    let mut hpa = Value::Null;
    let waiting = eventually(TIMEOUT, || {
        hpa = get_json(&server, &["get", "hpa", "idle"]);
        condition(&hpa, "ScalingActive").1 == "FailedGetResourceMetric" || replicas(&server, "idle").0 == 1
    });
    assert!(waiting, "HPA status: {}", hpa["status"]);
    let (status, _, message) = condition(&hpa, "ScalingActive");
    if status == "False" {
        assert!(message.starts_with("the HPA was unable to compute the replica count: "), "{message}");
        assert_eq!(condition(&hpa, "AbleToScale").0, "True");
        let warned = eventually(TIMEOUT, || !events(&server, "idle", "FailedComputeMetricsReplicas").is_empty());
        assert!(warned, "no FailedComputeMetricsReplicas event");
    }

    // Idle pods ask for none (ceil(0) replicas); the minimum keeps one.
    let scaled = eventually(TIMEOUT, || replicas(&server, "idle") == (1, 1));
    assert!(scaled, "deployment at {:?}, HPA: {}", replicas(&server, "idle"), get_json(&server, &["get", "hpa", "idle"])["status"]);
    let rescales = events(&server, "idle", "SuccessfulRescale");
    assert!(rescales.iter().any(|m| m == "New size: 1; reason: All metrics below target"), "{rescales:?}");

    // Once the remaining pod is measured: 0% of its request, held at the minimum.
    let settled = eventually(TIMEOUT, || {
        hpa = get_json(&server, &["get", "hpa", "idle"]);
        hpa["status"]["currentReplicas"] == 1 && condition(&hpa, "ScalingActive").0 == "True" && condition(&hpa, "ScalingLimited").1 == "TooFewReplicas"
    });
    assert!(settled, "HPA status: {}", hpa["status"]);
    assert_eq!(hpa["status"]["desiredReplicas"], 1);
    assert_eq!(hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"], 0);
    assert_eq!(condition(&hpa, "AbleToScale"), ("True".into(), "ReadyForNewScale".into(), "recommended size matches current size".into()));
    assert_eq!(condition(&hpa, "ScalingLimited"), ("True".into(), "TooFewReplicas".into(), "the desired replica count is less than the minimum replica count".into()));
    let row = server.ok(&["get", "hpa", "idle", "--no-headers"]);
    assert_eq!(row.split_whitespace().take(7).collect::<Vec<_>>(), ["idle", "Deployment/idle", "cpu:", "0%/50%", "1", "5", "1"], "{row}");
}

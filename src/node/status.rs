//! A pod's status computed from what Docker reports, as the kubelet computes
//! it: each container's state (waiting with the reason the last sync gave,
//! running, or terminated with exit code and reason), last state, restart
//! count, readiness; the pod's phase (upstream's `getPhase`), its conditions
//! with stable transition times, addresses and start time. Pure, so it is
//! tested without Docker.

use super::docker::{Observed, Role, RunState};
use super::images::Waiting;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP,
    Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::HashMap;

/// The pod conditions the node agent sets.
pub const OWNED_CONDITIONS: [&str; 5] = ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"];

/// What the last sync learned about a pod, beyond Docker's view.
pub struct Snapshot<'a> {
    pub pod: &'a Pod,
    /// This pod's containers (its uid only), any order.
    pub containers: &'a [Observed],
    /// The sandbox the pod runs in now, if any.
    pub sandbox: Option<&'a Observed>,
    /// Containers that cannot run yet, and why.
    pub waiting: &'a HashMap<String, Waiting>,
    /// Per container id: (started, ready) from the probes.
    pub probes: &'a HashMap<String, (bool, bool)>,
    /// Per image as the spec names it: the imageID to report.
    pub image_ids: &'a HashMap<String, String>,
    /// Termination messages read from the containers' message files, by container id.
    pub messages: &'a HashMap<String, String>,
    pub host_ip: Option<&'a str>,
    pub now: Timestamp,
}

/// The instances of one container of the pod, newest first.
pub fn instances<'a>(containers: &'a [Observed], role: Role, name: &str) -> Vec<&'a Observed> {
    let mut out: Vec<&Observed> = containers.iter().filter(|c| c.role == role && c.name == name).collect();
    out.sort_by(|a, b| b.attempt.cmp(&a.attempt).then(b.created_at.cmp(&a.created_at)));
    out
}

fn time(t: Option<Timestamp>) -> Option<Time> {
    t.map(Time)
}

impl Snapshot<'_> {
    fn terminated(&self, c: &Observed) -> ContainerStateTerminated {
        let start_failed = c.state == RunState::Created && !c.error.is_empty();
        let reason = if c.oom_killed {
            "OOMKilled"
        } else if start_failed {
            "StartError"
        } else if c.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let message = self.messages.get(&c.id).cloned().filter(|m| !m.is_empty()).or_else(|| (!c.error.is_empty()).then(|| c.error.clone()));
        ContainerStateTerminated {
            exit_code: c.exit_code as i32,
            reason: Some(reason.into()),
            message,
            started_at: time(c.started_at),
            finished_at: time(c.finished_at),
            container_id: Some(format!("docker://{}", c.id)),
            signal: None,
        }
    }

    fn has_terminated(c: &Observed) -> bool {
        c.state == RunState::Exited || (c.state == RunState::Created && !c.error.is_empty())
    }

    fn container_status(&self, spec: &Container, role: Role, default_waiting: &str) -> ContainerStatus {
        let all = instances(self.containers, role, &spec.name);
        let (latest, previous) = (all.first().copied(), all.get(1).copied());
        let image = spec.image.clone().unwrap_or_default();
        let mut status = ContainerStatus {
            name: spec.name.clone(),
            image: image.clone(),
            restart_count: latest.map_or(0, |l| l.attempt as i32),
            started: Some(false),
            ..Default::default()
        };
        let waiting = |reason: &str, message: Option<String>| ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message }),
            ..Default::default()
        };
        let terminated_state = |c: &Observed| ContainerState { terminated: Some(self.terminated(c)), ..Default::default() };
        if let Some(l) = latest {
            status.container_id = Some(format!("docker://{}", l.id));
            status.image_id = self.image_ids.get(&l.spec_image).cloned().unwrap_or_else(|| l.image_id.clone());
        }
        match (self.waiting.get(&spec.name), latest) {
            (Some(w), latest) => {
                status.state = Some(waiting(w.reason, Some(w.message.clone()).filter(|m| !m.is_empty())));
                status.last_state = latest.filter(|l| Self::has_terminated(l)).map(terminated_state);
            }
            (None, None) => status.state = Some(waiting(default_waiting, None)),
            (None, Some(l)) if l.running() => {
                let (started, ready) = self.probes.get(&l.id).copied().unwrap_or((true, true));
                status.state = Some(ContainerState { running: Some(ContainerStateRunning { started_at: time(l.started_at) }), ..Default::default() });
                status.ready = ready;
                status.started = Some(started);
                status.last_state = previous.filter(|p| Self::has_terminated(p)).map(terminated_state);
            }
            (None, Some(l)) if Self::has_terminated(l) => {
                status.state = Some(terminated_state(l));
                status.last_state = previous.filter(|p| Self::has_terminated(p)).map(terminated_state);
            }
            (None, Some(_)) => status.state = Some(waiting("ContainerCreating", None)),
        }
        status.last_state.get_or_insert_with(Default::default);
        status
    }

    /// The status to report; `previous` keeps transition times and fields the
    /// node does not own.
    pub fn pod_status(&self) -> PodStatus {
        let pod = self.pod;
        let spec = pod.spec.clone().unwrap_or_default();
        let previous = pod.status.clone().unwrap_or_default();
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let init_specs = spec.init_containers.clone().unwrap_or_default();
        let init_statuses: Vec<ContainerStatus> = init_specs.iter().map(|c| self.container_status(c, Role::Init, "PodInitializing")).collect();
        let succeeded = |s: &ContainerStatus| s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0);
        let incomplete: Vec<&str> = init_statuses.iter().filter(|s| !succeeded(s)).map(|s| s.name.as_str()).collect();
        let initialized = incomplete.is_empty();
        let app_waiting = if initialized { "ContainerCreating" } else { "PodInitializing" };
        let app_statuses: Vec<ContainerStatus> = spec.containers.iter().map(|c| self.container_status(c, Role::App, app_waiting)).collect();

        let init_failed = policy == "Never"
            && init_statuses.iter().any(|s| s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code != 0));
        let phase = if init_failed {
            "Failed"
        } else if !initialized {
            "Pending"
        } else {
            phase(policy, &app_statuses)
        };

        let unready: Vec<&str> = app_statuses.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
        let sandbox_up = self.sandbox.is_some_and(|s| s.running());
        let pod_ip = if spec.host_network == Some(true) { self.host_ip.map(str::to_owned) } else { self.sandbox.filter(|s| s.running()).and_then(|s| s.ip.clone()) };
        let completed = phase == "Succeeded";
        let list = |names: &[&str]| format!("[{}]", names.join(" "));
        let mut conditions = vec![
            ("PodReadyToStartContainers", sandbox_up && (pod_ip.is_some() || completed), None, None),
            ("Initialized", initialized, (!initialized).then_some("ContainersNotInitialized"), (!initialized).then(|| format!("containers with incomplete status: {}", list(&incomplete)))),
        ];
        let gates = readiness_gates(pod);
        let containers_ready = unready.is_empty() && !completed;
        let unready_message = (!unready.is_empty()).then(|| format!("containers with unready status: {}", list(&unready)));
        let containers_reason = if completed { Some("PodCompleted") } else { unready_message.as_ref().map(|_| "ContainersNotReady") };
        conditions.push(("ContainersReady", containers_ready, containers_reason, unready_message.clone()));
        let (ready_reason, ready_message) = match (&gates, containers_ready) {
            (Some(message), true) => (Some("ReadinessGatesNotReady"), Some(message.clone())),
            _ => (containers_reason, unready_message),
        };
        conditions.push(("Ready", containers_ready && gates.is_none(), ready_reason, ready_message));
        conditions.push(("PodScheduled", true, None, None));

        let old_conditions = previous.conditions.clone().unwrap_or_default();
        let mut merged: Vec<PodCondition> = conditions
            .into_iter()
            .map(|(type_, ok, reason, message)| {
                let status = if ok { "True" } else { "False" };
                let since = old_conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .and_then(|c| c.last_transition_time.clone())
                    .unwrap_or(Time(self.now));
                PodCondition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: reason.map(Into::into),
                    message,
                    last_transition_time: Some(since),
                    last_probe_time: None,
                    observed_generation: None,
                }
            })
            .collect();
        // Conditions others own (readiness gates, disruption targets) stay.
        let foreign: Vec<PodCondition> = old_conditions.iter().filter(|c| !merged.iter().any(|m| m.type_ == c.type_)).cloned().collect();
        merged.extend(foreign);

        PodStatus {
            phase: Some(phase.into()),
            conditions: Some(merged),
            host_ip: self.host_ip.map(str::to_owned),
            host_ips: self.host_ip.map(|ip| vec![HostIP { ip: ip.to_owned() }]),
            pod_ip: pod_ip.clone(),
            pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
            start_time: previous.start_time.clone().or(Some(Time(self.now))),
            init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
            container_statuses: Some(app_statuses),
            ..previous
        }
    }
}

/// Why the pod's readiness gates are not satisfied, if they are not.
fn readiness_gates(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let messages: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .filter_map(|gate| match conditions.iter().find(|c| c.type_ == gate.condition_type) {
            None => Some(format!("corresponding condition of pod readiness gate \"{}\" does not exist.", gate.condition_type)),
            Some(c) if c.status != "True" => Some(format!("the status of pod readiness gate \"{}\" is not \"True\", but {}", gate.condition_type, c.status)),
            Some(_) => None,
        })
        .collect();
    (!messages.is_empty()).then(|| messages.join(", "))
}

/// Upstream's phase of a pod whose init containers are done.
fn phase(policy: &str, statuses: &[ContainerStatus]) -> &'static str {
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = &state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped == 0 {
        "Pending"
    } else if policy == "Always" {
        "Running"
    } else if stopped == succeeded {
        "Succeeded"
    } else if policy == "Never" {
        "Failed"
    } else {
        "Running"
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    pub(in crate::node) fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    pub(in crate::node) fn observed(role: Role, name: &str, attempt: u32, state: RunState, exit_code: i64) -> Observed {
        Observed {
            id: format!("{name}-{attempt}"),
            role,
            pod_uid: "u".into(),
            name: name.into(),
            attempt,
            sandbox: "sb".into(),
            spec_image: "img".into(),
            image_id: "sha256:1".into(),
            state,
            created_at: Some(at(attempt as i64)),
            started_at: Some(at(attempt as i64)),
            finished_at: (state == RunState::Exited).then(|| at(attempt as i64 + 1)),
            exit_code,
            oom_killed: false,
            error: String::new(),
            ip: (role == Role::Sandbox).then(|| "172.17.0.9".into()),
            pid: None,
            grace_seconds: None,
            termination_message_file: None,
        }
    }

    fn pod(policy: &str, init: &[&str], apps: &[&str]) -> Pod {
        let c = |n: &&str| Container { name: n.to_string(), image: Some("img".into()), ..Default::default() };
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
                containers: apps.iter().map(c).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn status(pod: &Pod, containers: &[Observed], waiting: &[(&str, &'static str)]) -> PodStatus {
        let sandbox = containers.iter().find(|c| c.role == Role::Sandbox);
        let waiting: HashMap<String, Waiting> = waiting.iter().map(|(n, r)| (n.to_string(), Waiting { reason: r, message: String::new() })).collect();
        let empty_probes = HashMap::new();
        let empty = HashMap::new();
        Snapshot { pod, containers, sandbox, waiting: &waiting, probes: &empty_probes, image_ids: &empty, messages: &empty, host_ip: Some("192.0.2.2"), now: at(100) }.pod_status()
    }

    fn condition(s: &PodStatus, type_: &str) -> (String, Option<String>) {
        let c = s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_running_pod_is_running_ready_with_the_sandbox_ip() {
        let p = pod("Always", &[], &["a"]);
        let s = status(&p, &[observed(Role::Sandbox, "", 0, RunState::Running, 0), observed(Role::App, "a", 0, RunState::Running, 0)], &[]);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("172.17.0.9"));
        assert_eq!(condition(&s, "Ready").0, "True");
        assert_eq!(condition(&s, "PodReadyToStartContainers").0, "True");
        let cs = &s.container_statuses.unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("docker://a-0"));
    }

    #[test]
    fn a_crash_looping_container_waits_with_its_last_termination() {
        let p = pod("Always", &[], &["a"]);
        let s = status(&p, &[observed(Role::Sandbox, "", 0, RunState::Running, 0), observed(Role::App, "a", 0, RunState::Exited, 1), observed(Role::App, "a", 1, RunState::Exited, 2)], &[("a", "CrashLoopBackOff")]);
        let cs = &s.container_statuses.clone().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&s, "Ready"), ("False".into(), Some("ContainersNotReady".into())));
    }

    #[test]
    fn phases_follow_the_restart_policy() {
        let done = |code| vec![observed(Role::Sandbox, "", 0, RunState::Running, 0), observed(Role::App, "a", 0, RunState::Exited, code)];
        assert_eq!(status(&pod("Never", &[], &["a"]), &done(0), &[]).phase.as_deref(), Some("Succeeded"));
        assert_eq!(status(&pod("Never", &[], &["a"]), &done(3), &[]).phase.as_deref(), Some("Failed"));
        assert_eq!(status(&pod("OnFailure", &[], &["a"]), &done(0), &[]).phase.as_deref(), Some("Succeeded"));
        let succeeded = status(&pod("Never", &[], &["a"]), &done(0), &[]);
        assert_eq!(condition(&succeeded, "Ready"), ("False".into(), Some("PodCompleted".into())));
        assert_eq!(status(&pod("Always", &[], &["a"]), &[], &[]).phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn init_containers_gate_initialization_and_fail_the_pod_under_never() {
        let p = pod("Always", &["i1", "i2"], &["a"]);
        let s = status(&p, &[observed(Role::Sandbox, "", 0, RunState::Running, 0), observed(Role::Init, "i1", 0, RunState::Exited, 0), observed(Role::Init, "i2", 0, RunState::Running, 0)], &[]);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(condition(&s, "Initialized"), ("False".into(), Some("ContainersNotInitialized".into())));
        let app = &s.container_statuses.unwrap()[0];
        assert_eq!(app.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));
        let p = pod("Never", &["i1"], &["a"]);
        let s = status(&p, &[observed(Role::Sandbox, "", 0, RunState::Running, 0), observed(Role::Init, "i1", 0, RunState::Exited, 1)], &[]);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn transition_times_stay_while_a_condition_holds() {
        let mut p = pod("Always", &[], &["a"]);
        let running = [observed(Role::Sandbox, "", 0, RunState::Running, 0), observed(Role::App, "a", 0, RunState::Running, 0)];
        let first = status(&p, &running, &[]);
        p.status = Some(first.clone());
        let empty = HashMap::new();
        let probes = HashMap::new();
        let waiting = HashMap::new();
        let later = Snapshot { pod: &p, containers: &running, sandbox: Some(&running[0]), waiting: &waiting, probes: &probes, image_ids: &empty, messages: &empty, host_ip: Some("192.0.2.2"), now: at(500) }.pod_status();
        assert_eq!(later, first, "nothing changed, so nothing is written");
    }

    #[test]
    fn an_oom_kill_is_reported_as_such() {
        let p = pod("Never", &[], &["a"]);
        let mut killed = observed(Role::App, "a", 0, RunState::Exited, 137);
        killed.oom_killed = true;
        let s = status(&p, &[observed(Role::Sandbox, "", 0, RunState::Running, 0), killed], &[]);
        let t = s.container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
    }
}

//! Syncing a live pod with Docker, the kubelet's `SyncPod`: make sure the
//! sandbox runs (recreating it, and everything in it, if it died), set up
//! volumes, run init containers one at a time to completion, then keep app
//! containers running as the restart policy says, with the crash-loop
//! back-off, liveness-probe restarts and restart of a container whose image
//! changed. Containers created but never started (an agent killed in between)
//! are started, never created twice.

use super::backoff;
use super::containers::{self, ContainerPlan, pod_description};
use super::docker::{self, Observed, Role, RunState};
use super::env;
use super::images::credentials_for;
use super::network::EtcFiles;
use super::pods::{Outcome, PodReconciler, grace_period};
use super::probes::{self, PodProbes};
use super::sources::PodAddresses;
use super::status::instances;
use super::volumes::{self, Prepared};
use crate::api::object::go_duration;
use crate::runtime::{Error, EventType, Next, reference};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// How soon a pod whose setup failed (volumes, configuration) is tried again.
const RETRY_SETUP: Duration = Duration::from_secs(5);

/// How long a container killed by SIGKILL may wait for Docker's OOM verdict.
const OOM_VERDICT_WAIT: Duration = Duration::from_secs(1);

/// Docker's `oom` and `die` events race: a container the kernel killed for
/// memory can be seen exited by SIGKILL (137) before Docker marks it
/// OOMKilled. Writing its status then would fix a wrong reason for good (a
/// finished pod's status never changes), so a container SIGKILLed less than
/// [`OOM_VERDICT_WAIT`] ago without the verdict holds the status back; this is
/// how much longer it should wait.
fn oom_verdict_pending(containers: &[Observed], now: Timestamp) -> Option<Duration> {
    containers
        .iter()
        .filter(|c| c.role == Role::App && c.state == RunState::Exited && c.exit_code == 137 && !c.oom_killed)
        .filter_map(|c| {
            let since = now.duration_since(c.finished_at?).unsigned_abs();
            OOM_VERDICT_WAIT.checked_sub(since).filter(|left| !left.is_zero())
        })
        .max()
}

/// One sync of one pod: its identity and where its containers run.
struct PodCtx<'a> {
    pod: &'a Pod,
    uid: String,
    pod_ref: ObjectReference,
    sandbox: &'a Observed,
    volumes: &'a HashMap<String, Prepared>,
    etc: &'a EtcFiles,
}

impl PodReconciler {
    async fn relist(&self, pod: &Pod) -> Result<Vec<Observed>, Error> {
        let m = &pod.metadata;
        let uid = m.uid.as_deref().unwrap_or_default();
        let all = self.observe(m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or("")).await?;
        Ok(all.into_iter().filter(|c| c.pod_uid == uid).collect())
    }

    pub(super) async fn sync(&self, pod: &Pod, key: &str, mut mine: Vec<Observed>) -> Result<Next, Error> {
        let spec = pod.spec.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pod_ref = reference(pod);
        let mut outcome = Outcome::default();
        let host_network = spec.host_network == Some(true);

        let sandboxes = instances(&mine, Role::Sandbox, "");
        let mut sandbox = sandboxes.first().filter(|s| s.running()).map(|s| (*s).clone());
        let addresses = PodAddresses {
            pod_ip: if host_network { self.host_ip.clone() } else { sandbox.as_ref().and_then(|s| s.ip.clone()) },
            host_ip: self.host_ip.clone(),
        };
        let prepared = match self.tokens.for_pod(pod).await {
            Ok((tokens, due)) => {
                if let Some(due) = due {
                    outcome.requeue_after(due);
                }
                let context = volumes::Context { pod, lookup: &self.sources, addresses: &addresses, allocatable: &self.allocatable, tokens: &tokens };
                context.prepare(&self.data_dir)
            }
            Err(message) => Err(message),
        };
        let prepared = match prepared {
            Ok(v) => Some(v),
            Err(message) => {
                self.recorder.record(pod_ref.clone(), EventType::Warning, "FailedMount", message);
                outcome.requeue_after(RETRY_SETUP);
                None
            }
        };
        let ran_before = mine.iter().any(|c| c.role == Role::App);
        let finished_for_good = spec.restart_policy.as_deref() == Some("Never") && ran_before;
        if sandbox.is_none() && !finished_for_good && prepared.is_some() {
            // Whatever ran in a dead sandbox goes with it.
            for c in mine.iter().filter(|c| c.running()) {
                self.runtime.stop(&c.id, grace_period(pod)).await?;
            }
            let attempt = sandboxes.first().map_or(0, |s| s.attempt + 1);
            match self.start_sandbox(pod, attempt).await {
                Ok(()) => {
                    if attempt > 0 {
                        self.recorder.record(pod_ref.clone(), EventType::Normal, "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.");
                    }
                    mine = self.relist(pod).await?;
                    sandbox = instances(&mine, Role::Sandbox, "").first().filter(|s| s.running()).map(|s| (*s).clone());
                }
                Err(message) => {
                    self.recorder.record(pod_ref.clone(), EventType::Warning, "FailedCreatePodSandBox", format!("Failed to create pod sandbox: {message}"));
                    outcome.requeue_after(RETRY_SETUP);
                }
            }
        }
        if let Some(running) = sandbox.as_mut().filter(|_| !host_network) {
            if let Err(message) = self.networking.plug(running).await {
                let message = format!("Failed to set up the network of pod sandbox {}: {message}", running.id);
                self.recorder.record(pod_ref.clone(), EventType::Warning, "FailedCreatePodSandBox", message);
                outcome.requeue_after(RETRY_SETUP);
                sandbox = None;
            }
            self.networking.fill_addresses(&mut mine);
        }
        if let (Some(sandbox), Some(volumes)) = (&sandbox, &prepared) {
            let pod_dir = volumes::pod_dir(&self.data_dir, &uid);
            let etc = self.networking.write_etc_files(pod, &pod_dir, sandbox.ip.as_deref()).map_err(|e| format!("writing the pod's resolv.conf and hosts: {e}"))?;
            let ctx = PodCtx { pod, uid: uid.clone(), pod_ref: pod_ref.clone(), sandbox, volumes, etc: &etc };
            if self.sync_containers(&ctx, &mine, &mut outcome).await? {
                mine = self.relist(pod).await?;
            }
        }
        self.collect_garbage(&mine).await?;

        let pod_ip = addresses.pod_ip.clone().or_else(|| sandbox.as_ref().and_then(|s| s.ip.clone())).unwrap_or_default();
        let running: Vec<(&Container, &str)> = spec
            .containers
            .iter()
            .filter_map(|c| {
                let latest = instances(&mine, Role::App, &c.name).into_iter().next()?;
                latest.running().then_some((c, latest.id.as_str()))
            })
            .collect();
        self.prober.sync(&PodProbes { key, uid: &uid, pod_ip: &pod_ip, pod_ref: &pod_ref }, &running);
        if let Some(wait) = oom_verdict_pending(&mine, Timestamp::now()) {
            // Its oom event (or the verdict's delay running out) brings the status.
            outcome.requeue_after(wait);
            return Ok(outcome.requeue.map_or(Next::Done, Next::After));
        }
        self.write_status(pod, &mine, &outcome).await?;
        Ok(outcome.requeue.map_or(Next::Done, Next::After))
    }

    async fn start_sandbox(&self, pod: &Pod, attempt: u32) -> Result<(), String> {
        let image = self.images.ensure_pause().await.map_err(|e| e.to_string())?;
        let (name, body) = containers::sandbox(&self.runtime.base_labels(), pod, &image, self.networking.sandbox_network(), attempt);
        let id = match self.runtime.create(&name, body).await {
            Ok(id) => id,
            // Created already (by an earlier sync); the next one finds it.
            Err(e) if docker::is_conflict(&e) => return Ok(()),
            Err(e) => return Err(docker::message(&e)),
        };
        self.runtime.start(&id).await.map_err(|e| docker::message(&e))
    }

    /// Runs init containers in order, then the app containers; returns
    /// whether anything changed in Docker.
    async fn sync_containers(&self, ctx: &PodCtx<'_>, mine: &[Observed], outcome: &mut Outcome) -> Result<bool, Error> {
        let spec = ctx.pod.spec.clone().unwrap_or_default();
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let mut changed = false;
        for c in spec.init_containers.iter().flatten() {
            let all = instances(mine, Role::Init, &c.name);
            let next_attempt = all.first().map_or(0, |l| l.attempt + 1);
            match all.iter().find(|i| i.sandbox == ctx.sandbox.id) {
                None => return Ok(self.start(ctx, c, Role::Init, next_attempt, outcome).await),
                Some(i) if i.state == RunState::Created && i.error.is_empty() => return Ok(self.resume(i).await),
                Some(i) if i.running() => return Ok(false),
                Some(i) if i.state == RunState::Exited && i.exit_code == 0 => continue,
                // A failed init container fails the pod under Never.
                Some(_) if policy == "Never" => return Ok(false),
                Some(i) => return Ok(self.restart_after_backoff(ctx, c, Role::Init, i, outcome).await),
            }
        }
        for c in &spec.containers {
            let all = instances(mine, Role::App, &c.name);
            match all.first() {
                None => changed |= self.start(ctx, c, Role::App, 0, outcome).await,
                Some(l) if l.state == RunState::Created && l.error.is_empty() => changed |= self.resume(l).await,
                Some(l) if l.running() && l.sandbox != ctx.sandbox.id => {
                    self.runtime.stop(&l.id, grace_period(ctx.pod)).await?;
                    changed = true;
                }
                Some(l) if l.running() => changed |= self.check_running(ctx, c, l).await?,
                Some(l) => {
                    let failed = l.exit_code != 0 || !l.error.is_empty() || l.sandbox != ctx.sandbox.id;
                    let restart = match policy {
                        "Always" => true,
                        "OnFailure" => failed,
                        _ => false,
                    };
                    if restart {
                        changed |= self.restart_after_backoff(ctx, c, Role::App, l, outcome).await;
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Restarts a running container whose image changed, or kills one that
    /// failed its liveness or startup probe (it is restarted once it exits).
    async fn check_running(&self, ctx: &PodCtx<'_>, c: &Container, l: &Observed) -> Result<bool, Error> {
        let object = probes::container_ref(&ctx.pod_ref, &c.name);
        let wanted_image = c.image.clone().unwrap_or_default();
        let reason = if l.spec_image != wanted_image {
            format!("Container {} definition changed, will be restarted", c.name)
        } else if let Some(kind) = self.prober.failed(&ctx.uid, c, &l.id) {
            format!("Container {} failed {} probe, will be restarted", c.name, format!("{kind:?}").to_lowercase())
        } else {
            return Ok(false);
        };
        self.recorder.record(object, EventType::Normal, "Killing", reason);
        self.runtime.stop(&l.id, grace_period(ctx.pod)).await?;
        Ok(true)
    }

    /// Starts a container created by an earlier sync that never started.
    async fn resume(&self, c: &Observed) -> bool {
        if let Err(e) = self.runtime.start(&c.id).await {
            tracing::debug!(container = c.id, error = %e, "starting an adopted container failed");
        }
        true
    }

    /// Restarts `last`'s container unless it is in its crash-loop back-off.
    async fn restart_after_backoff(&self, ctx: &PodCtx<'_>, c: &Container, role: Role, last: &Observed, outcome: &mut Outcome) -> bool {
        let key = format!("{}/{}", ctx.uid, c.name);
        let now = Timestamp::now();
        if let Some(remaining) = self.restarts.remaining_since(&key, last.finished_at.unwrap_or(now), now) {
            let delay = self.restarts.delay(&key).unwrap_or(backoff::INITIAL);
            let description = pod_description(ctx.pod);
            outcome.wait(&c.name, "CrashLoopBackOff", format!("back-off {} restarting failed container={} pod={description}", go_duration(delay.as_nanos() as i64), c.name));
            let object = probes::container_ref(&ctx.pod_ref, &c.name);
            self.recorder.record(object, EventType::Warning, "BackOff", format!("Back-off restarting failed container {} in pod {description}", c.name));
            outcome.requeue_after(remaining);
            return false;
        }
        self.restarts.next(&key, now);
        self.start(ctx, c, role, last.attempt + 1, outcome).await
    }

    /// Pulls the image, creates and starts one container instance, runs its
    /// postStart hook; returns whether a container was created.
    async fn start(&self, ctx: &PodCtx<'_>, c: &Container, role: Role, attempt: u32, outcome: &mut Outcome) -> bool {
        let pod = ctx.pod;
        let spec = pod.spec.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let object = probes::container_ref(&ctx.pod_ref, &c.name);
        let image = c.image.clone().unwrap_or_default();
        let secrets: Vec<_> = spec.image_pull_secrets.iter().flatten().filter_map(|s| self.sources_secret(namespace, &s.name)).collect();
        let pull_key = format!("{}/{image}", ctx.uid);
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let info = match self.images.ensure(&image, policy, &pull_key, credentials_for(&image, &secrets), &self.recorder, &object).await {
            Ok(info) => info,
            Err(waiting) => {
                outcome.requeue_after(self.images.pull_retry_in(&pull_key));
                outcome.waiting.insert(c.name.clone(), waiting);
                return false;
            }
        };
        let host_network = spec.host_network == Some(true);
        let addresses = PodAddresses {
            pod_ip: if host_network { self.host_ip.clone() } else { ctx.sandbox.ip.clone() },
            host_ip: self.host_ip.clone(),
        };
        let config_error = |outcome: &mut Outcome, message: String| {
            self.recorder.record(object.clone(), EventType::Warning, "Failed", format!("Error: {message}"));
            outcome.wait(&c.name, "CreateContainerConfigError", message);
            outcome.requeue_after(RETRY_SETUP);
            false
        };
        let env = match env::resolve(pod, c, &self.sources, &addresses, &self.allocatable) {
            Ok(env) => env,
            Err(message) => return config_error(outcome, message),
        };
        let message_file = volumes::pod_dir(&self.data_dir, &ctx.uid).join("containers").join(&c.name).join(attempt.to_string());
        let prepared = message_file.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| {
            std::fs::write(&message_file, b"")?;
            std::fs::set_permissions(&message_file, std::fs::Permissions::from_mode(0o666))
        });
        if let Err(e) = prepared {
            return config_error(outcome, format!("creating the termination message file: {e}"));
        }
        let plan = ContainerPlan {
            pod,
            container: c,
            role,
            attempt,
            sandbox_id: &ctx.sandbox.id,
            env,
            volumes: ctx.volumes,
            image_user: &info.user,
            termination_message_file: message_file,
            etc: ctx.etc,
        };
        let (name, body) = match plan.body(&self.runtime.base_labels()) {
            Ok(b) => b,
            Err(message) => return config_error(outcome, message),
        };
        let id = match self.runtime.create(&name, body).await {
            Ok(id) => id,
            Err(e) if docker::is_conflict(&e) => return true,
            Err(e) => {
                let message = docker::message(&e);
                self.recorder.record(object.clone(), EventType::Warning, "Failed", format!("Error: {message}"));
                outcome.wait(&c.name, "CreateContainerError", message);
                outcome.requeue_after(RETRY_SETUP);
                return false;
            }
        };
        self.recorder.record(object.clone(), EventType::Normal, "Created", format!("Created container: {}", c.name));
        if let Err(e) = self.runtime.start(&id).await {
            let message = format!("failed to start container \"{}\": {}", c.name, docker::message(&e));
            self.recorder.record(object, EventType::Warning, "Failed", format!("Error: {message}"));
            return true;
        }
        self.recorder.record(object.clone(), EventType::Normal, "Started", format!("Started container {}", c.name));
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let pod_ip = addresses.pod_ip.clone().unwrap_or_default();
            let target = probes::Target { runtime: &self.runtime, container: c, container_id: &id, pod_ip: &pod_ip };
            if let Err(message) = probes::run_hook(hook, &target, grace_period(pod).max(Duration::from_secs(1))).await {
                self.recorder.record(object, EventType::Warning, "FailedPostStartHook", format!("PostStartHook failed: {message}"));
                let _ = self.runtime.stop(&id, grace_period(pod)).await;
            }
        }
        true
    }

    fn sources_secret(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<k8s_openapi::api::core::v1::Secret>> {
        use super::sources::Lookup;
        self.sources.secret(namespace, name)
    }

    /// Removes dead instances beyond the newest two of each container (the
    /// current one and the last state) and dead sandboxes but the newest.
    async fn collect_garbage(&self, mine: &[Observed]) -> Result<(), Error> {
        let mut groups: HashMap<(Role, &str), Vec<&Observed>> = HashMap::new();
        for c in mine {
            groups.entry((c.role, c.name.as_str())).or_default().push(c);
        }
        for ((role, name), _) in groups {
            let keep = if role == Role::Sandbox { 1 } else { 2 };
            for old in instances(mine, role, name).into_iter().skip(keep).filter(|c| !c.running()) {
                self.networking.unplug([old]).await;
                self.runtime.remove(&old.id).await?;
                if let Some(file) = &old.termination_message_file {
                    let _ = std::fs::remove_file(file);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_render_like_go() {
        let go_duration = |d: Duration| go_duration(d.as_nanos() as i64);
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn a_fresh_sigkill_without_docker_verdict_holds_the_status_back() {
        use crate::node::status::tests::{at, observed};
        let killed = observed(Role::App, "main", 0, RunState::Exited, 137);
        let exited = killed.finished_at.unwrap();
        let soon = exited + jiff::SignedDuration::from_millis(400);
        assert_eq!(oom_verdict_pending(std::slice::from_ref(&killed), soon), Some(Duration::from_millis(600)));
        assert_eq!(oom_verdict_pending(std::slice::from_ref(&killed), at(10)), None, "the wait is bounded");
        let verdict = Observed { oom_killed: true, ..killed.clone() };
        let failed = observed(Role::App, "main", 0, RunState::Exited, 1);
        assert_eq!(oom_verdict_pending(&[verdict, failed], soon), None);
    }
}

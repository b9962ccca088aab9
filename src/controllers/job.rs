//! The Job controller: runs pods until `completions` of them succeed, at most
//! `parallelism` at a time, giving up after `backoffLimit` failures or
//! `activeDeadlineSeconds`; deletes finished Jobs after `ttlSecondsAfterFinished`.
//!
//! As upstream, every pod carries the `batch.kubernetes.io/job-tracking`
//! finalizer until its outcome is counted: a finished pod's uid goes into
//! `status.uncountedTerminatedPods` first, then its finalizer is removed, then it
//! moves into the `succeeded`/`failed` counters. Each step is idempotent, so no
//! outcome is counted twice or lost, even across restarts.

use super::Context;
use super::pods::{PodControl, is_active, ready_since};
use crate::api::selector::LabelSelector;
use crate::runtime::{Controller, Error, EventType, Informer, Next, Reconciler, Recorder, owner_keys, reference, split_key};
use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::ResourceExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Delay before replacing a failed pod: 10s doubling per failure, up to 6 minutes.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

struct JobController {
    jobs: Informer<Job>,
    pods: Informer<Pod>,
    client: kube::Client,
    recorder: Recorder,
    /// Creates and deletes pods, remembering it until the cache shows it.
    control: PodControl,
}

pub async fn run(ctx: Context) {
    let jobs = ctx.informers.get::<Job>();
    let pods = ctx.informers.get::<Pod>();
    let controller = Controller::new("job-controller", ctx.options.workers).owns_kind(&jobs).watch(&pods, |c| owner_keys(c, "Job"));
    let recorder = ctx.recorder("job-controller");
    let control = PodControl::new(ctx.client.clone(), pods.clone(), recorder.clone());
    let reconciler = Arc::new(JobController { jobs, pods, client: ctx.client.clone(), recorder, control });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

fn condition_true(job: &Job, kind: &str) -> bool {
    job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn finished(job: &Job) -> bool {
    condition_true(job, "Complete") || condition_true(job, "Failed")
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let now = crate::api::object::now_rfc3339();
    json!({ "type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now })
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.annotations().get(COMPLETION_INDEX_ANNOTATION)?.parse().ok()
}

/// Upstream's compact form of a set of indexes: `0-2,5`.
fn index_ranges(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

fn parse_index_ranges(s: &str) -> BTreeSet<i32> {
    s.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?..=b.parse().ok()?).collect::<Vec<i32>>()),
            None => part.parse().ok().map(|v| vec![v]),
        })
        .flatten()
        .collect()
}

impl JobController {
    fn owned_pods(&self, job: &Job) -> Vec<Arc<Pod>> {
        let uid = job.uid().unwrap_or_default();
        let selector = job.spec.as_ref().and_then(|s| s.selector.as_ref()).and_then(|s| LabelSelector::from_k8s(s).ok());
        self.pods
            .list_namespace(&job.namespace().unwrap_or_default())
            .into_iter()
            .filter(|p| p.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true)))
            .filter(|p| selector.as_ref().is_none_or(|s| s.matches(&p.labels().clone())))
            .collect()
    }

    /// The pod a Job runs (for `index` in Indexed mode), tracked by the finalizer.
    fn pod_for(job: &Job, index: Option<i32>) -> Pod {
        let spec = job.spec.clone().unwrap_or_default();
        let template = spec.template;
        let meta = template.metadata.unwrap_or_default();
        let mut pod_spec = template.spec.unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        let name = job.name_any();
        if let Some(i) = index {
            annotations.insert(COMPLETION_INDEX_ANNOTATION.into(), i.to_string());
            pod_spec.hostname.get_or_insert_with(|| format!("{name}-{i}"));
            for c in pod_spec.containers.iter_mut().chain(pod_spec.init_containers.iter_mut().flatten()) {
                c.env.get_or_insert_with(Vec::new).push(EnvVar { name: "JOB_COMPLETION_INDEX".into(), value: Some(i.to_string()), value_from: None });
            }
        }
        Pod {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(match index {
                    Some(i) => format!("{name}-{i}-"),
                    None => format!("{name}-"),
                }),
                labels: meta.labels,
                annotations: Some(annotations),
                finalizers: Some(vec![TRACKING_FINALIZER.into()]),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: name.clone(),
                    uid: job.uid().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(pod_spec),
            status: None,
        }
    }

    async fn delete_pods(&self, job: &Job, key: &str, pods: &[Arc<Pod>]) -> Result<(), Error> {
        self.control.delete(job, key, pods.iter().map(|p| p.name_any()).collect()).await
    }

    async fn remove_finalizer(&self, pod: &Pod) -> Result<(), Error> {
        let remaining: Vec<&String> = pod.finalizers().iter().filter(|f| *f != TRACKING_FINALIZER).collect();
        let patch = json!({ "metadata": { "finalizers": remaining, "resourceVersion": pod.resource_version() } });
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn patch_status(&self, job: &Job, status: Value) -> Result<(), Error> {
        let api = Api::<Job>::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        api.patch_status(&job.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
        Ok(())
    }
}

#[async_trait]
impl Reconciler for JobController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(job) = self.jobs.get(key) else {
            self.control.forget(key);
            return Ok(Next::Done);
        };
        let spec = job.spec.clone().unwrap_or_default();
        let pods = self.owned_pods(&job);
        let current = serde_json::to_value(job.as_ref())?.get("status").cloned().unwrap_or(json!({}));
        let mut status = current.clone();
        let uncounted = |kind: &str| -> BTreeSet<String> {
            status.pointer(&format!("/uncountedTerminatedPods/{kind}")).and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        };
        let (mut uncounted_ok, mut uncounted_failed) = (uncounted("succeeded"), uncounted("failed"));
        let mut succeeded = status["succeeded"].as_i64().unwrap_or(0);
        let mut failed = status["failed"].as_i64().unwrap_or(0);
        let mut completed_indexes = parse_index_ranges(status["completedIndexes"].as_str().unwrap_or(""));

        // Step 3 of tracking: outcomes whose finalizer is gone move into the counters.
        let tracked = |uid: &String| pods.iter().find(|p| p.uid().as_ref() == Some(uid)).is_some_and(|p| has_finalizer(p));
        for uid in uncounted_ok.clone().iter().filter(|u| !tracked(u)) {
            uncounted_ok.remove(uid);
            succeeded += 1;
        }
        for uid in uncounted_failed.clone().iter().filter(|u| !tracked(u)) {
            uncounted_failed.remove(uid);
            failed += 1;
        }
        // Step 1: newly finished pods are recorded as uncounted.
        for pod in pods.iter().filter(|p| has_finalizer(p)) {
            let uid = pod.uid().unwrap_or_default();
            match phase(pod) {
                "Succeeded" => {
                    uncounted_ok.insert(uid);
                    if let Some(i) = index_of(pod) {
                        completed_indexes.insert(i);
                    }
                }
                "Failed" => {
                    uncounted_failed.insert(uid);
                }
                // A pod deleted before it finished failed, unless the Job is over.
                _ if pod.metadata.deletion_timestamp.is_some() && !finished(&job) => {
                    uncounted_failed.insert(uid);
                }
                _ => {}
            }
        }
        let active: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
        let restarts: i64 = if spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure") {
            active.iter().flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten())).map(|c| i64::from(c.restart_count)).sum()
        } else {
            0
        };
        let total_ok = succeeded + uncounted_ok.len() as i64;
        let total_failed = failed + uncounted_failed.len() as i64;
        let now = jiff::Timestamp::now();
        if status.get("startTime").is_none_or(Value::is_null) && spec.suspend != Some(true) {
            status["startTime"] = json!(crate::api::object::now_rfc3339());
        }
        let started = status["startTime"].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
        let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        let mut next = Next::Done;
        if !finished(&job) {
            let indexed = spec.completion_mode.as_deref() == Some("Indexed");
            let complete = match spec.completions {
                Some(c) if indexed => completed_indexes.len() as i64 >= i64::from(c),
                Some(c) => total_ok >= i64::from(c),
                None => total_ok > 0 && active.is_empty(),
            };
            let failure = if total_failed + restarts > i64::from(spec.backoff_limit.unwrap_or(6)) {
                Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            } else if let (Some(deadline), Some(start)) = (spec.active_deadline_seconds, started) {
                (now.as_second() - start.as_second() >= deadline).then_some(("DeadlineExceeded", "Job was active longer than specified deadline"))
            } else {
                None
            };
            if let Some((reason, message)) = failure {
                self.delete_pods(&job, key, &active).await?;
                conditions.push(condition("FailureTarget", reason, message));
                conditions.push(condition("Failed", reason, message));
                self.recorder.record(reference(job.as_ref()), EventType::Warning, reason, message);
            } else if complete {
                self.delete_pods(&job, key, &active).await?;
                conditions.push(condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"));
                conditions.push(condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"));
                status["completionTime"] = json!(crate::api::object::now_rfc3339());
                self.recorder.record(reference(job.as_ref()), EventType::Normal, "Completed", "Job completed");
            } else if !self.control.satisfied(key) {
                // What was just created or deleted is not in the cache yet; look again when it is.
            } else if spec.suspend == Some(true) {
                self.delete_pods(&job, key, &active).await?;
            } else {
                let parallelism = i64::from(spec.parallelism.unwrap_or(1));
                let remaining = spec.completions.map_or(parallelism, |c| i64::from(c) - if indexed { completed_indexes.len() as i64 } else { total_ok });
                let want = parallelism.min(remaining).max(0) as usize;
                if active.len() > want {
                    self.delete_pods(&job, key, &active[want..]).await?;
                } else if active.len() < want {
                    let delay = if total_failed > 0 { BACKOFF_BASE.saturating_mul(1 << (total_failed - 1).min(8) as u32).min(BACKOFF_MAX) } else { Duration::ZERO };
                    let last_failure = pods.iter().filter(|p| phase(p) == "Failed").filter_map(|p| p.metadata.creation_timestamp.as_ref()).map(|t| t.0).max();
                    let wait = last_failure.map(|t| delay.saturating_sub(Duration::from_secs(now.as_second().saturating_sub(t.as_second()).max(0) as u64)));
                    match wait.filter(|w| !w.is_zero()) {
                        Some(w) => next = Next::After(w),
                        None => {
                            let busy: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                            let mut free = (0..spec.completions.unwrap_or(0)).filter(|i| !completed_indexes.contains(i) && !busy.contains(i));
                            let pods = (active.len()..want).map(|_| Self::pod_for(&job, if indexed { free.next() } else { None })).collect();
                            self.control.create(job.as_ref(), key, pods).await?;
                        }
                    }
                }
                if let (Some(deadline), Some(start)) = (spec.active_deadline_seconds, started) {
                    let left = (start.as_second() + deadline - now.as_second()).max(0) as u64;
                    next = Next::After(Duration::from_secs(left + 1));
                }
            }
        }
        let still_active = if finished(&job) || conditions.iter().any(|c| c["type"] == "Complete" || c["type"] == "Failed") { 0 } else { active.len() };
        status["active"] = json!(still_active);
        status["ready"] = json!(active.iter().filter(|p| ready_since(p).is_some()).count());
        status["terminating"] = json!(pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some()).count());
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        status["uncountedTerminatedPods"] = json!({ "succeeded": uncounted_ok, "failed": uncounted_failed });
        if spec.completion_mode.as_deref() == Some("Indexed") {
            status["completedIndexes"] = json!(index_ranges(&completed_indexes));
        }
        status["conditions"] = json!(conditions);
        if status != current {
            self.patch_status(&job, status).await?;
        }
        // Step 2: once recorded, finished pods lose their finalizer; after the Job
        // is over, so do pods being deleted, which no longer count.
        for pod in pods.iter().filter(|p| has_finalizer(p)) {
            let uid = pod.uid().unwrap_or_default();
            let over = finished(&job) && (pod.metadata.deletion_timestamp.is_some() || !is_active(pod));
            if uncounted_ok.contains(&uid) || uncounted_failed.contains(&uid) || over {
                self.remove_finalizer(pod).await?;
            }
        }
        // Finished Jobs with a TTL are deleted (their pods by the garbage collector).
        if let Some(ttl) = spec.ttl_seconds_after_finished.filter(|_| finished(&job)) {
            let finished_at = job
                .status
                .as_ref()
                .and_then(|s| s.completion_time.clone().or_else(|| s.conditions.as_ref()?.iter().find(|c| c.type_ == "Failed")?.last_transition_time.clone()))
                .map(|t| t.0)
                .unwrap_or(now);
            let left = finished_at.as_second() + i64::from(ttl) - now.as_second();
            if left > 0 {
                return Ok(Next::After(Duration::from_secs(left as u64)));
            }
            let (namespace, name) = split_key(key);
            let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
            match Api::<Job>::namespaced(self.client.clone(), namespace).delete(name, &params).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_render_as_ranges_and_parse_back() {
        let set: BTreeSet<i32> = [0, 1, 2, 5, 7, 8].into();
        assert_eq!(index_ranges(&set), "0-2,5,7-8");
        assert_eq!(parse_index_ranges("0-2,5,7-8"), set);
        assert!(parse_index_ranges("").is_empty());
    }
}

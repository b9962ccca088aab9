//! The CronJob controller: creates a Job from `jobTemplate` at each scheduled
//! time (in `timeZone`), honouring `suspend`, `startingDeadlineSeconds` and the
//! concurrency policy (Allow, Forbid, Replace), keeps `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`, and prunes finished Jobs beyond
//! the history limits. Job names are `<cronjob>-<scheduled minute>`, so a retry
//! never creates a second Job for the same time.

use super::Context;
use super::schedule::Schedule;
use crate::runtime::{Controller, Error, EventType, Informer, Next, Reconciler, Recorder, owner_keys, reference};
use async_trait::async_trait;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::ResourceExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

struct CronJobController {
    cronjobs: Informer<CronJob>,
    jobs: Informer<Job>,
    client: kube::Client,
    recorder: Recorder,
}

pub async fn run(ctx: Context) {
    let cronjobs = ctx.informers.get::<CronJob>();
    let jobs = ctx.informers.get::<Job>();
    let controller = Controller::new("cronjob-controller", ctx.options.workers).owns_kind(&cronjobs).watch(&jobs, |c| owner_keys(c, "CronJob"));
    let reconciler = Arc::new(CronJobController { cronjobs, jobs, client: ctx.client.clone(), recorder: ctx.recorder("cronjob-controller") });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

fn job_finished(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().filter(|c| c.status == "True").find_map(|c| match c.type_.as_str() {
        "Complete" => Some("Complete"),
        "Failed" => Some("Failed"),
        _ => None,
    })
}

fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

impl CronJobController {
    async fn delete_job(&self, job: &Job) -> Result<(), Error> {
        let api = Api::<Job>::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match api.delete(&job.name_any(), &params).await {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl Reconciler for CronJobController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(cronjob) = self.cronjobs.get(key) else { return Ok(Next::Done) };
        let spec = cronjob.spec.clone().unwrap_or_default();
        let namespace = cronjob.namespace().unwrap_or_default();
        let uid = cronjob.uid().unwrap_or_default();
        let mut jobs: Vec<Arc<Job>> = self
            .jobs
            .list_namespace(&namespace)
            .into_iter()
            .filter(|j| j.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true)))
            .collect();
        jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let active: Vec<&Arc<Job>> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();
        let last_successful = jobs
            .iter()
            .filter(|j| job_finished(j) == Some("Complete"))
            .filter_map(|j| j.status.as_ref()?.completion_time.clone())
            .max_by_key(|t| t.0);

        // Prune finished Jobs beyond the history limits, oldest first.
        for (outcome, limit) in [("Complete", spec.successful_jobs_history_limit.unwrap_or(3)), ("Failed", spec.failed_jobs_history_limit.unwrap_or(1))] {
            let finished: Vec<&Arc<Job>> = jobs.iter().filter(|j| job_finished(j) == Some(outcome)).collect();
            for job in finished.iter().take(finished.len().saturating_sub(limit.max(0) as usize)) {
                self.delete_job(job).await?;
            }
        }

        let tz = match spec.time_zone.as_deref() {
            Some(name) => jiff::tz::TimeZone::get(name)?,
            None => jiff::tz::TimeZone::system(),
        };
        let schedule = Schedule::parse(&spec.schedule)?;
        let now = jiff::Timestamp::now();
        let last_schedule = cronjob.status.as_ref().and_then(|s| s.last_schedule_time.as_ref()).map(|t| t.0);
        let since = last_schedule.or_else(|| cronjob.metadata.creation_timestamp.as_ref().map(|t| t.0)).unwrap_or(now);
        let mut status = json!({
            "active": active.iter().map(|j| job_reference(j)).collect::<Vec<_>>(),
            "lastSuccessfulTime": last_successful,
        });
        if spec.suspend != Some(true)
            && let Some(scheduled) = schedule.most_recent(since, now, &tz) {
                let too_late = spec.starting_deadline_seconds.is_some_and(|d| now.as_second() - scheduled.as_second() > d);
                let forbid = spec.concurrency_policy.as_deref() == Some("Forbid") && !active.is_empty();
                if too_late {
                    self.recorder.record(reference(cronjob.as_ref()), EventType::Warning, "MissSchedule", format!("Missed scheduled time to start a job: {scheduled}"));
                    status["lastScheduleTime"] = json!(crate::api::object::format_time(scheduled));
                } else if forbid {
                    self.recorder.record(reference(cronjob.as_ref()), EventType::Normal, "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid");
                } else {
                    if spec.concurrency_policy.as_deref() == Some("Replace") {
                        for job in &active {
                            self.delete_job(job).await?;
                            self.recorder.record(reference(cronjob.as_ref()), EventType::Normal, "SuccessfulDelete", format!("Deleted job {}", job.name_any()));
                        }
                        status["active"] = json!([]);
                    }
                    let template = spec.job_template.clone();
                    let meta = template.metadata.unwrap_or_default();
                    let name = format!("{}-{}", cronjob.name_any(), scheduled.as_second() / 60);
                    let mut annotations = meta.annotations.unwrap_or_default();
                    annotations.insert(SCHEDULED_TIMESTAMP_ANNOTATION.into(), scheduled.to_string());
                    let job = Job {
                        metadata: kube::api::ObjectMeta {
                            name: Some(name.clone()),
                            labels: meta.labels,
                            annotations: Some(annotations),
                            owner_references: Some(vec![OwnerReference {
                                api_version: "batch/v1".into(),
                                kind: "CronJob".into(),
                                name: cronjob.name_any(),
                                uid: uid.clone(),
                                controller: Some(true),
                                block_owner_deletion: Some(true),
                            }]),
                            ..Default::default()
                        },
                        spec: template.spec,
                        status: None,
                    };
                    match Api::<Job>::namespaced(self.client.clone(), &namespace).create(&PostParams::default(), &job).await {
                        Ok(created) => {
                            self.recorder.record(reference(cronjob.as_ref()), EventType::Normal, "SuccessfulCreate", format!("Created job {name}"));
                            if let Some(list) = status["active"].as_array_mut() {
                                list.push(json!(job_reference(&created)));
                            }
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                    status["lastScheduleTime"] = json!(crate::api::object::format_time(scheduled));
                }
            }
        let current = serde_json::to_value(cronjob.as_ref())?.get("status").cloned().unwrap_or(json!({}));
        let mut merged = current.clone();
        for (k, v) in status.as_object().into_iter().flatten() {
            merged[k] = v.clone();
        }
        if merged != current {
            let api = Api::<CronJob>::namespaced(self.client.clone(), &namespace);
            api.patch_status(&cronjob.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
        }
        // Look again at the next scheduled time.
        Ok(match schedule.next_after(now, &tz) {
            Some(next) => Next::After(Duration::from_millis((next.as_millisecond() - now.as_millisecond()).max(0) as u64 + 100)),
            None => Next::Done,
        })
    }
}

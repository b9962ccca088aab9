//! batch/v1: Jobs (pods that run to completion) and CronJobs (Jobs on a schedule).

use super::pods;
use super::{containers_and_images, or_none, selector_string};
use crate::api::error::FieldError;
use crate::api::object::human_duration;
use crate::api::registry::{Column, Resource, ResourceBuilder, Subresource};
use crate::controllers::schedule::Schedule;
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

/// Labels the API puts on a Job's pods so its generated selector finds them.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

pub fn resources() -> Vec<Resource> {
    vec![jobs(), cronjobs()]
}

fn default_job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit.get_or_insert(6);
    spec.completion_mode.get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    spec.pod_replacement_policy.get_or_insert_with(|| "TerminatingOrFailed".into());
    if let Some(template) = spec.template.spec.as_mut() {
        pods::default_pod_spec(template);
    }
}

fn validate_job_spec(spec: &JobSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (field, value) in [("parallelism", spec.parallelism), ("completions", spec.completions), ("backoffLimit", spec.backoff_limit)] {
        if let Some(v) = value.filter(|v| *v < 0) {
            errors.push(FieldError::invalid(format!("{path}.{field}"), v, "must be greater than or equal to 0"));
        }
    }
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        errors.push(FieldError::invalid(format!("{path}.activeDeadlineSeconds"), d, "must be greater than 0"));
    }
    if let Some(mode) = spec.completion_mode.as_deref().filter(|m| !["NonIndexed", "Indexed"].contains(m)) {
        errors.push(FieldError::not_supported(format!("{path}.completionMode"), mode, &["NonIndexed", "Indexed"]));
    }
    if spec.completion_mode.as_deref() == Some("Indexed") && spec.completions.is_none() {
        errors.push(FieldError::required(format!("{path}.completions"), "when completion mode is Indexed"));
    }
    let restart = spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("");
    if !["Never", "OnFailure"].contains(&restart) {
        errors.push(FieldError::not_supported(format!("{path}.template.spec.restartPolicy"), restart, &["OnFailure", "Never"]));
    }
    if let Some(spec) = &spec.template.spec {
        errors.extend(pods::validate_pod_spec(spec, &format!("{path}.template.spec")));
    }
    errors
}

fn has_condition(job: &Job, kind: &str) -> bool {
    job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn jobs() -> Resource {
    ResourceBuilder::<Job>::new()
        .categories(&["all"])
        .subresources(&[Subresource::Status])
        .tracks_generation()
        .on_create(|job| {
            // Without a manual selector, the Job selects its pods by its own uid.
            let uid = job.metadata.uid.clone().unwrap_or_default();
            let name = job.metadata.name.clone().unwrap_or_default();
            let Some(spec) = job.spec.as_mut() else { return };
            if spec.manual_selector != Some(true) {
                spec.selector = Some(LabelSelector { match_labels: Some([(CONTROLLER_UID_LABEL.to_owned(), uid.clone())].into()), match_expressions: None });
                let labels = spec.template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
                for (k, v) in [(CONTROLLER_UID_LABEL, &uid), ("controller-uid", &uid), (JOB_NAME_LABEL, &name), ("job-name", &name)] {
                    labels.insert(k.to_owned(), v.clone());
                }
            }
        })
        .default(|job| {
            if let Some(spec) = job.spec.as_mut() {
                default_job_spec(spec);
            }
        })
        .validate(|job| match &job.spec {
            Some(spec) => validate_job_spec(spec, "spec"),
            None => vec![FieldError::required("spec", "")],
        })
        .validate_update(|new, old| {
            let (Some(n), Some(o)) = (&new.spec, &old.spec) else { return vec![] };
            let mut errors = Vec::new();
            if n.selector != o.selector {
                errors.push(FieldError::invalid("spec.selector", n.selector.as_ref().map(selector_string).unwrap_or_default(), "field is immutable"));
            }
            if n.template != o.template {
                errors.push(FieldError::invalid("spec.template", "", "field is immutable"));
            }
            if n.completions != o.completions {
                errors.push(FieldError::invalid("spec.completions", n.completions.unwrap_or(0), "field is immutable"));
            }
            errors
        })
        .columns(vec![
            Column::name(),
            Column::new("Status", "string", "Status of the job.", |j: &Job| {
                json!(if has_condition(j, "Failed") {
                    "Failed"
                } else if has_condition(j, "Complete") {
                    "Complete"
                } else if j.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
                    "Suspended"
                } else if has_condition(j, "FailureTarget") {
                    "FailureTarget"
                } else if has_condition(j, "SuccessCriteriaMet") {
                    "SuccessCriteriaMet"
                } else {
                    "Running"
                })
            }),
            Column::new("Completions", "string", "The completion status of the job.", |j: &Job| {
                let succeeded = j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
                let spec = j.spec.as_ref();
                json!(match spec.and_then(|s| s.completions) {
                    Some(c) => format!("{succeeded}/{c}"),
                    None => format!("{succeeded}/1 of {}", spec.and_then(|s| s.parallelism).unwrap_or(1)),
                })
            }),
            Column::new("Duration", "string", "Time required to complete the job.", |j: &Job| {
                let status = j.status.as_ref();
                let start = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
                let end = status.and_then(|s| s.completion_time.as_ref()).map(|t| t.0).unwrap_or_else(jiff::Timestamp::now);
                json!(start.map_or(String::new(), |s| human_duration(end.as_second() - s.as_second())))
            }),
            Column::age(),
            Column::new("Containers", "string", "Names of each container in the template.", |j: &Job| {
                json!(j.spec.as_ref().map(|s| containers_and_images(Some(&s.template)).0).unwrap_or_default())
            })
            .wide(),
            Column::new("Images", "string", "Images referenced by each container in the template.", |j: &Job| {
                json!(j.spec.as_ref().map(|s| containers_and_images(Some(&s.template)).1).unwrap_or_default())
            })
            .wide(),
            Column::new("Selector", "string", "Selector that selects the pods of the job.", |j: &Job| {
                or_none(j.spec.as_ref().and_then(|s| s.selector.as_ref()).map(selector_string).unwrap_or_default())
            })
            .wide(),
        ])
        .build()
}

fn cronjobs() -> Resource {
    ResourceBuilder::<CronJob>::new()
        .short_names(&["cj"])
        .categories(&["all"])
        .subresources(&[Subresource::Status])
        .tracks_generation()
        .default(|cj| {
            let Some(spec) = cj.spec.as_mut() else { return };
            spec.concurrency_policy.get_or_insert_with(|| "Allow".into());
            spec.suspend.get_or_insert(false);
            spec.successful_jobs_history_limit.get_or_insert(3);
            spec.failed_jobs_history_limit.get_or_insert(1);
            if let Some(job_spec) = spec.job_template.spec.as_mut() {
                default_job_spec(job_spec);
            }
        })
        .validate(|cj| {
            let Some(spec) = &cj.spec else { return vec![FieldError::required("spec", "")] };
            let mut errors = Vec::new();
            if let Err(e) = Schedule::parse(&spec.schedule) {
                errors.push(FieldError::invalid("spec.schedule", &spec.schedule, e));
            }
            if let Some(tz) = spec.time_zone.as_deref().filter(|tz| jiff::tz::TimeZone::get(tz).is_err()) {
                errors.push(FieldError::invalid("spec.timeZone", tz, "unknown time zone"));
            }
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            if !["Allow", "Forbid", "Replace"].contains(&policy) {
                errors.push(FieldError::not_supported("spec.concurrencyPolicy", policy, &["Allow", "Forbid", "Replace"]));
            }
            if let Some(job_spec) = &spec.job_template.spec {
                errors.extend(validate_job_spec(job_spec, "spec.jobTemplate.spec"));
            }
            errors
        })
        .columns(vec![
            Column::name(),
            Column::new("Schedule", "string", "The schedule for running the job.", |c: &CronJob| json!(c.spec.as_ref().map(|s| s.schedule.clone()).unwrap_or_default())),
            Column::new("Timezone", "string", "The time zone the schedule is interpreted in.", |c: &CronJob| {
                or_none(c.spec.as_ref().and_then(|s| s.time_zone.clone()).unwrap_or_default())
            }),
            Column::new("Suspend", "boolean", "Whether new jobs are suspended.", |c: &CronJob| json!(c.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false))),
            Column::new("Active", "integer", "The number of active jobs.", |c: &CronJob| {
                json!(c.status.as_ref().and_then(|s| s.active.as_ref()).map_or(0, Vec::len))
            }),
            Column::new("Last Schedule", "string", "When the job was last scheduled.", |c: &CronJob| {
                or_none(c.status.as_ref().and_then(|s| s.last_schedule_time.as_ref()).map(|t| crate::api::object::human_age(&t.0.to_string())).unwrap_or_default())
            }),
            Column::age(),
            Column::new("Containers", "string", "Names of each container in the template.", |c: &CronJob| {
                json!(c.spec.as_ref().and_then(|s| s.job_template.spec.as_ref()).map(|s| containers_and_images(Some(&s.template)).0).unwrap_or_default())
            })
            .wide(),
            Column::new("Images", "string", "Images referenced by each container in the template.", |c: &CronJob| {
                json!(c.spec.as_ref().and_then(|s| s.job_template.spec.as_ref()).map(|s| containers_and_images(Some(&s.template)).1).unwrap_or_default())
            })
            .wide(),
            Column::new("Selector", "string", "Selector that selects the pods of the jobs.", |c: &CronJob| {
                or_none(c.spec.as_ref().and_then(|s| s.job_template.spec.as_ref()).and_then(|s| s.selector.as_ref()).map(selector_string).unwrap_or_default())
            })
            .wide(),
        ])
        .build()
}

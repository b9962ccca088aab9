//! A Deployment's status: replica counts summed over its ReplicaSets, and the
//! Available and Progressing conditions with upstream's reasons, including the
//! progress deadline (pure functions; the controller writes the result).

use super::sizing::{ReplicaSets, actual, available, desired, max_unavailable, ready, replicas, sum};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use std::time::Duration;

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const NEW_REPLICA_SET_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_REPLICA_SET: &str = "FoundNewReplicaSet";
pub const REPLICA_SET_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_REPLICA_SET_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const MINIMUM_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MINIMUM_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
pub const REPLICA_SET_CREATE_ERROR: &str = "ReplicaSetCreateError";

/// Now, to the second: what the API stores, so recomputed statuses compare equal.
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("the current second is a valid timestamp")
}

pub fn condition(type_: &str, status: &str, reason: &str, message: String, now: jiff::Timestamp) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

pub fn get_condition<'a>(status: Option<&'a DeploymentStatus>, type_: &str) -> Option<&'a DeploymentCondition> {
    status?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// Sets a condition unless one with the same status and reason is there; the
/// transition time survives when only the reason changes.
pub fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = get_condition(Some(status), &condition.type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &condition.type_);
    status.conditions.get_or_insert_with(Vec::new).push(condition);
}

pub fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
        if conditions.is_empty() {
            status.conditions = None;
        }
    }
}

pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec.as_ref()?.progress_deadline_seconds.filter(|s| *s != i32::MAX)
}

/// Zero counts are left out, as upstream's `omitempty` fields are.
fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// Counts summed over the ReplicaSets, and the Available condition.
pub fn calculate(sets: &ReplicaSets, d: &Deployment, now: jiff::Timestamp) -> DeploymentStatus {
    let all = sets.all();
    let available_count = sum(&all, available);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nonzero(sum(&all, actual)),
        updated_replicas: nonzero(sets.new.as_ref().map_or(0, actual)),
        ready_replicas: nonzero(sum(&all, ready)),
        available_replicas: nonzero(available_count),
        unavailable_replicas: nonzero((sum(&all, replicas) - available_count).max(0)),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        conditions: d.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    if available_count >= desired(d) - max_unavailable(d) {
        set_condition(&mut status, condition(AVAILABLE, "True", MINIMUM_AVAILABLE, "Deployment has minimum availability.".into(), now));
    } else {
        set_condition(&mut status, condition(AVAILABLE, "False", MINIMUM_UNAVAILABLE, "Deployment does not have minimum availability.".into(), now));
    }
    status
}

/// Every desired pod is updated and available, and the latest spec is observed.
pub fn complete(d: &Deployment, status: Option<&DeploymentStatus>) -> bool {
    let Some(s) = status else { return false };
    let wanted = desired(d);
    s.updated_replicas.unwrap_or(0) == wanted
        && s.replicas.unwrap_or(0) == wanted
        && s.available_replicas.unwrap_or(0) == wanted
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether `new` shows progress over the Deployment's current status.
fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_pods = |s: &DeploymentStatus| n(s.replicas) - n(s.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || old_pods(new) < old_pods(&old)
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

fn timed_out(d: &Deployment, status: &DeploymentStatus, now: jiff::Timestamp) -> bool {
    let Some(deadline) = progress_deadline(d) else { return false };
    let Some(condition) = get_condition(Some(status), PROGRESSING) else { return false };
    match condition.reason.as_deref() {
        Some(NEW_REPLICA_SET_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => condition.last_update_time.as_ref().is_some_and(|t| t.0 + jiff::SignedDuration::from_secs(deadline.into()) < now),
    }
}

/// The status of a Deployment in the middle of (or done with) a rollout:
/// counts, Available, and Progressing measured against the deadline.
pub fn rollout(sets: &ReplicaSets, d: &Deployment, now: jiff::Timestamp) -> DeploymentStatus {
    let mut status = calculate(sets, d, now);
    let deadline = progress_deadline(d);
    if deadline.is_none() {
        remove_condition(&mut status, PROGRESSING);
    }
    let current = get_condition(Some(&status), PROGRESSING).cloned();
    let done_before = status.replicas == status.updated_replicas && current.as_ref().is_some_and(|c| c.reason.as_deref() == Some(NEW_REPLICA_SET_AVAILABLE));
    if deadline.is_some() && !done_before {
        let subject = match &sets.new {
            Some(rs) => format!("ReplicaSet {:?}", rs.name_any()),
            None => format!("Deployment {:?}", d.name_any()),
        };
        if complete(d, Some(&status)) {
            set_condition(&mut status, condition(PROGRESSING, "True", NEW_REPLICA_SET_AVAILABLE, format!("{subject} has successfully progressed."), now));
        } else if progressing(d, &status) {
            let mut progress = condition(PROGRESSING, "True", REPLICA_SET_UPDATED, format!("{subject} is progressing."), now);
            if let Some(current) = current {
                if current.status == "True" {
                    progress.last_transition_time = current.last_transition_time;
                }
                remove_condition(&mut status, PROGRESSING);
            }
            set_condition(&mut status, progress);
        } else if timed_out(d, &status, now) {
            set_condition(&mut status, condition(PROGRESSING, "False", TIMED_OUT, format!("{subject} has timed out progressing."), now));
        }
    }
    match replica_failure(sets) {
        Some(failure) => set_condition(&mut status, failure),
        None => remove_condition(&mut status, REPLICA_FAILURE),
    }
    status
}

/// A ReplicaFailure condition of the new ReplicaSet, or else of an old one.
fn replica_failure(sets: &ReplicaSets) -> Option<DeploymentCondition> {
    let failure_of = |rs: &ReplicaSet| {
        let c = rs.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == REPLICA_FAILURE)?.clone();
        Some(DeploymentCondition {
            type_: c.type_,
            status: c.status,
            reason: c.reason,
            message: c.message,
            last_update_time: c.last_transition_time.clone(),
            last_transition_time: c.last_transition_time,
        })
    };
    sets.new.as_ref().and_then(failure_of).or_else(|| sets.old.iter().find_map(failure_of))
}

/// When to look again at a rollout that has not progressed, to notice its deadline pass.
pub fn recheck_after(d: &Deployment, new: &DeploymentStatus, now: jiff::Timestamp) -> Option<Duration> {
    let deadline = progress_deadline(d)?;
    let current = get_condition(d.status.as_ref(), PROGRESSING)?;
    if complete(d, Some(new)) || current.reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let updated = current.last_update_time.as_ref()?.0;
    let after = (updated + jiff::SignedDuration::from_secs(deadline.into())).duration_since(now);
    Some(Duration::try_from(after).unwrap_or_default().max(Duration::from_secs(1)))
}

/// The Progressing condition a pause or resume calls for, if it is not there yet.
/// A reported timeout is left alone.
pub fn pause_condition(d: &Deployment, now: jiff::Timestamp) -> Option<DeploymentCondition> {
    progress_deadline(d)?;
    let reason = get_condition(d.status.as_ref(), PROGRESSING).and_then(|c| c.reason.as_deref());
    if reason == Some(TIMED_OUT) {
        return None;
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    match (paused, reason == Some(PAUSED)) {
        (true, false) => Some(condition(PROGRESSING, "Unknown", PAUSED, "Deployment is paused".into(), now)),
        (false, true) => Some(condition(PROGRESSING, "Unknown", RESUMED, "Deployment is resumed".into(), now)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetSpec, ReplicaSetStatus};

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(second).unwrap()
    }

    fn deployment(replicas: i32) -> Deployment {
        Deployment {
            metadata: kube::api::ObjectMeta { name: Some("web".into()), generation: Some(2), ..Default::default() },
            spec: Some(DeploymentSpec { replicas: Some(replicas), progress_deadline_seconds: Some(600), ..Default::default() }),
            status: None,
        }
    }

    fn rs(name: &str, spec: i32, actual: i32, available: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(ReplicaSetSpec { replicas: Some(spec), ..Default::default() }),
            status: Some(ReplicaSetStatus { replicas: actual, ready_replicas: Some(available), available_replicas: Some(available), ..Default::default() }),
        }
    }

    #[test]
    fn a_finished_rollout_is_available_and_has_progressed() {
        let d = deployment(3);
        let sets = ReplicaSets { new: Some(rs("web-abc", 3, 3, 3)), old: vec![rs("web-old", 0, 0, 0)] };
        let status = rollout(&sets, &d, at(100));
        assert_eq!((status.replicas, status.updated_replicas, status.available_replicas, status.unavailable_replicas), (Some(3), Some(3), Some(3), None));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(get_condition(Some(&status), AVAILABLE).unwrap().reason.as_deref(), Some(MINIMUM_AVAILABLE));
        let progressing = get_condition(Some(&status), PROGRESSING).unwrap();
        assert_eq!(progressing.reason.as_deref(), Some(NEW_REPLICA_SET_AVAILABLE));
        assert_eq!(progressing.message.as_deref(), Some("ReplicaSet \"web-abc\" has successfully progressed."));
        assert!(complete(&d, Some(&status)));
    }

    #[test]
    fn a_rollout_without_progress_times_out_after_the_deadline() {
        let mut d = deployment(3);
        let sets = ReplicaSets { new: Some(rs("web-abc", 3, 3, 0)), old: vec![] };
        let mut status = DeploymentStatus::default();
        set_condition(&mut status, condition(PROGRESSING, "True", REPLICA_SET_UPDATED, "x".into(), at(0)));
        status.updated_replicas = Some(3);
        status.replicas = Some(3);
        d.status = Some(status);
        let early = rollout(&sets, &d, at(300));
        assert_eq!(get_condition(Some(&early), PROGRESSING).unwrap().reason.as_deref(), Some(REPLICA_SET_UPDATED));
        assert_eq!(get_condition(Some(&early), AVAILABLE).unwrap().status, "False");
        assert_eq!(recheck_after(&d, &early, at(300)), Some(Duration::from_secs(300)));
        let late = rollout(&sets, &d, at(601));
        let cond = get_condition(Some(&late), PROGRESSING).unwrap();
        assert_eq!((cond.status.as_str(), cond.reason.as_deref()), ("False", Some(TIMED_OUT)));
    }

    #[test]
    fn progress_refreshes_the_update_time_but_keeps_the_transition_time() {
        let mut d = deployment(3);
        let mut status = DeploymentStatus { replicas: Some(3), updated_replicas: Some(1), ..Default::default() };
        set_condition(&mut status, condition(PROGRESSING, "True", NEW_REPLICA_SET_CREATED, "x".into(), at(10)));
        d.status = Some(status);
        let sets = ReplicaSets { new: Some(rs("web-abc", 2, 2, 1)), old: vec![rs("web-old", 2, 2, 2)] };
        let now = rollout(&sets, &d, at(20));
        let cond = get_condition(Some(&now), PROGRESSING).unwrap();
        assert_eq!(cond.reason.as_deref(), Some(REPLICA_SET_UPDATED));
        assert_eq!(cond.last_update_time.as_ref().unwrap().0, at(20));
        assert_eq!(cond.last_transition_time.as_ref().unwrap().0, at(10));
    }

    #[test]
    fn pausing_and_resuming_mark_progress_unknown() {
        let mut d = deployment(1);
        d.spec.as_mut().unwrap().paused = Some(true);
        let paused = pause_condition(&d, at(1)).unwrap();
        assert_eq!((paused.status.as_str(), paused.reason.as_deref()), ("Unknown", Some(PAUSED)));
        d.status = Some(DeploymentStatus { conditions: Some(vec![paused]), ..Default::default() });
        assert!(pause_condition(&d, at(2)).is_none());
        d.spec.as_mut().unwrap().paused = Some(false);
        assert_eq!(pause_condition(&d, at(3)).unwrap().reason.as_deref(), Some(RESUMED));
    }
}

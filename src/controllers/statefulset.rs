//! The StatefulSet controller (upstream's pkg/controller/statefulset): pods
//! with stable names `<set>-<ordinal>`. OrderedReady creates them one at a
//! time in ordinal order, each Running and Ready (and available) before the
//! next, and removes them highest ordinal first; Parallel does both at once.
//! Template changes roll out through ControllerRevisions, by RollingUpdate
//! (highest ordinal first, down to the partition) or OnDelete. Claim
//! templates are accepted and referenced, but no PersistentVolumeClaims are
//! made: rk has no volume subsystem yet (see `identity`).

mod identity;

use super::Context;
use super::history::{self, POD_REVISION_LABEL};
use super::ownership::{Owner, api_near, claim, nonempty_selector, owners_to_wake, write_status};
use super::pods::{available, is_terminating, phase, ready_since, sooner};
use crate::api::selector::LabelSelector;
use crate::runtime::{Change, Controller, Error, EventType, Informer, Next, Reconciler, Recorder, reference, split_key};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "statefulset-controller";
/// The label naming a revision's hash.
const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";

impl Owner for StatefulSet {
    fn selector(&self) -> Option<LabelSelector> {
        nonempty_selector(&self.spec.as_ref()?.selector)
    }
}

struct StatefulSetController {
    sets: Informer<StatefulSet>,
    pods: Informer<Pod>,
    revisions: Informer<ControllerRevision>,
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the StatefulSet controller until shutdown.
pub async fn run(ctx: Context) {
    let sets = ctx.informers.get::<StatefulSet>();
    let pods = ctx.informers.get::<Pod>();
    let revisions = ctx.informers.get::<ControllerRevision>();
    let (for_pods, for_revisions) = (sets.clone(), sets.clone());
    let controller = Controller::new(COMPONENT, ctx.options.workers)
        .owns_kind(&sets)
        .watch(&pods, move |change: &Change<Pod>| owners_to_wake(change, &for_pods))
        .watch(&revisions, move |change: &Change<ControllerRevision>| owners_to_wake(change, &for_revisions));
    let reconciler = Arc::new(StatefulSetController { sets, pods, revisions, client: ctx.client.clone(), recorder: ctx.recorder(COMPONENT) });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && ready_since(pod).is_some()
}

/// Running, available for minReadySeconds and not on its way out.
fn healthy(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    phase(pod) == "Running" && available(pod, min_ready_seconds, now).is_ok() && !is_terminating(pod)
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(POD_REVISION_LABEL).map(String::as_str)
}

/// The template a revision restores.
fn template_of(revision: &ControllerRevision) -> Result<PodTemplateSpec, Error> {
    let mut template = history::data(revision).and_then(|d| d.pointer("/spec/template")).cloned().unwrap_or_default();
    if let Some(fields) = template.as_object_mut() {
        fields.remove("$patch");
    }
    Ok(serde_json::from_value(template)?)
}

fn min_ready_seconds(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
}

fn is_rolling_update(set: &StatefulSet) -> bool {
    set.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate"
}

/// Ordinals below this keep the current revision during a rolling update.
fn partition(set: &StatefulSet) -> Option<i32> {
    set.spec.as_ref()?.update_strategy.as_ref()?.rolling_update.as_ref()?.partition
}

/// Pod counts over the set's pods, and when one becomes available.
fn count(status: &mut StatefulSetStatus, pods: &[&Arc<Pod>], min_ready_seconds: i32, now: jiff::Timestamp) -> Option<Duration> {
    let (mut replicas, mut ready, mut ready_and_available, mut current, mut updated, mut next_check) = (0, 0, 0, 0, 0, None);
    for pod in pods {
        replicas += 1;
        if running_and_ready(pod) {
            ready += 1;
            match available(pod, min_ready_seconds, now) {
                Ok(()) => ready_and_available += 1,
                Err(wait) => next_check = sooner(next_check, wait),
            }
        }
        if !is_terminating(pod) {
            current += i32::from(revision_of(pod) == status.current_revision.as_deref());
            updated += i32::from(revision_of(pod) == status.update_revision.as_deref());
        }
    }
    let nonzero = |n: i32| (n != 0).then_some(n);
    status.replicas = replicas;
    status.ready_replicas = nonzero(ready);
    status.available_replicas = Some(ready_and_available);
    status.current_replicas = nonzero(current);
    status.updated_replicas = nonzero(updated);
    next_check
}

/// The revisions of one pass: what pods run now, and what they should run.
struct Revisions {
    current: ControllerRevision,
    update: ControllerRevision,
    collision_count: i32,
}

#[async_trait]
impl Reconciler for StatefulSetController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(cached) = self.sets.get(key) else { return Ok(Next::Done) };
        let mut set = (*cached).clone();
        let Some(selector) = set.selector() else { return Ok(Next::Done) };
        let (namespace, _) = split_key(key);
        let members = self.pods.filter(|p| p.metadata.namespace.as_deref() == Some(namespace) && identity::ordinal(&set, p).is_some());
        let pods = claim(&self.client, &set, &selector, members).await?;
        let mut revisions = history::owned(&self.client, &self.revisions, &set).await?;
        let chosen = self.revisions(&set, &mut revisions).await?;
        let now = jiff::Timestamp::now();
        let (mut status, next_check) = self.update_set(&set, &chosen, pods.clone(), now).await?;
        if is_rolling_update(&set) && status.updated_replicas.unwrap_or(0) == identity::replicas(&set) && status.ready_replicas.unwrap_or(0) == status.replicas && status.replicas == identity::replicas(&set) {
            status.current_replicas = status.updated_replicas;
            status.current_revision = status.update_revision.clone();
        }
        status.conditions = set.status.as_ref().and_then(|s| s.conditions.clone());
        if set.status.as_ref() != Some(&status) {
            set.status = Some(status.clone());
            write_status(&self.client, &mut set).await?;
        }
        self.truncate_history(&set, &revisions, &status, &pods).await?;
        Ok(next_check.map_or(Next::Done, |wait| Next::After(wait + Duration::from_millis(50))))
    }
}

impl StatefulSetController {
    /// The current and update revisions: the update revision holds the set's
    /// template (an equal older revision is renumbered, which is a rollback;
    /// none is created); the current one is what status last named, else the
    /// update revision.
    async fn revisions(&self, set: &StatefulSet, revisions: &mut Vec<ControllerRevision>) -> Result<Revisions, Error> {
        let mut collision_count = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
        let template = set.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let data = history::template_patch(&template);
        let next = revisions.last().map_or(1, |r| r.revision + 1);
        let update = match revisions.iter().rposition(|r| history::data(r) == Some(&data)) {
            Some(i) if i + 1 == revisions.len() => revisions[i].clone(),
            Some(i) => {
                let mut renumbered = revisions[i].clone();
                renumbered.revision = next;
                let renumbered = api_near::<ControllerRevision, _>(&self.client, set).replace(&renumbered.name_any(), &PostParams::default(), &renumbered).await?;
                revisions[i] = renumbered.clone();
                renumbered
            }
            None => {
                let revision = history::new_revision(set, &template, data.clone(), next);
                let created = history::create(&self.client, revision, &mut collision_count, |r, count| {
                    let hash = history::revision_hash(&data, count);
                    r.metadata.name = Some(format!("{}-{hash}", set.name_any()));
                    r.labels_mut().insert(REVISION_HASH_LABEL.into(), hash);
                })
                .await?;
                revisions.push(created.clone());
                created
            }
        };
        history::sort(revisions);
        let named = set.status.as_ref().and_then(|s| s.current_revision.clone());
        let current = revisions.iter().find(|r| Some(r.name_any()) == named).cloned().unwrap_or_else(|| update.clone());
        Ok(Revisions { current, update, collision_count })
    }

    fn record(&self, set: &StatefulSet, kind: EventType, reason: &str, message: String) {
        self.recorder.record(reference(set), kind, reason, message);
    }

    async fn create_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<Arc<Pod>, Error> {
        match api_near::<Pod, _>(&self.client, set).create(&PostParams::default(), pod).await {
            Ok(created) => {
                self.record(set, EventType::Normal, "SuccessfulCreate", format!("create Pod {} in StatefulSet {} successful", pod.name_any(), set.name_any()));
                Ok(Arc::new(created))
            }
            Err(e) => {
                self.record(set, EventType::Warning, "FailedCreate", format!("create Pod {} in StatefulSet {} failed error: {e}", pod.name_any(), set.name_any()));
                Err(e.into())
            }
        }
    }

    async fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), Error> {
        match api_near::<Pod, _>(&self.client, set).delete(&pod.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                self.record(set, EventType::Normal, "SuccessfulDelete", format!("delete Pod {} in StatefulSet {} successful", pod.name_any(), set.name_any()));
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => {
                self.record(set, EventType::Warning, "FailedDelete", format!("delete Pod {} in StatefulSet {} failed error: {e}", pod.name_any(), set.name_any()));
                Err(e.into())
            }
        }
    }

    /// The pod for `ordinal` at the revision it should have: the current one
    /// below the partition of a rolling update, else the update revision.
    fn versioned_pod(&self, set: &StatefulSet, chosen: &Revisions, templates: &(PodTemplateSpec, PodTemplateSpec), ordinal: i32) -> Pod {
        let start = identity::start_ordinal(set);
        let keeps_current = is_rolling_update(set)
            && match partition(set) {
                Some(p) => ordinal < start + p,
                None => ordinal < start + set.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0),
            };
        if keeps_current {
            identity::new_pod(set, &templates.0, &chosen.current.name_any(), ordinal)
        } else {
            identity::new_pod(set, &templates.1, &chosen.update.name_any(), ordinal)
        }
    }

    /// One pass of upstream's updateStatefulSet: create missing pods, replace
    /// finished ones, remove those beyond the replica count, then roll one pod
    /// to the update revision. Returns the status it leaves.
    async fn update_set(&self, set: &StatefulSet, chosen: &Revisions, pods: Vec<Arc<Pod>>, now: jiff::Timestamp) -> Result<(StatefulSetStatus, Option<Duration>), Error> {
        let mut status = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            current_revision: Some(chosen.current.name_any()),
            update_revision: Some(chosen.update.name_any()),
            collision_count: Some(chosen.collision_count),
            ..Default::default()
        };
        let min_ready = min_ready_seconds(set);
        let (start, count_wanted) = (identity::start_ordinal(set), identity::replicas(set));
        let mut replicas: BTreeMap<i32, Option<Arc<Pod>>> = (start..start + count_wanted).map(|o| (o, None)).collect();
        let mut condemned = Vec::new();
        for pod in pods {
            let Some(ordinal) = identity::ordinal(set, &pod) else { continue };
            match replicas.get_mut(&ordinal) {
                Some(slot) => *slot = Some(pod),
                None => condemned.push((ordinal, pod)),
            }
        }
        condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        let counted = |replicas: &BTreeMap<i32, Option<Arc<Pod>>>, condemned: &[(i32, Arc<Pod>)], status: &mut StatefulSetStatus| {
            let all: Vec<&Arc<Pod>> = replicas.values().flatten().chain(condemned.iter().map(|(_, p)| p)).collect();
            count(status, &all, min_ready, now)
        };
        // The first pod that is not healthy (missing ones included), low ordinals first.
        let first_unhealthy: Option<i32> = replicas
            .iter()
            .find(|(_, p)| p.as_ref().is_none_or(|p| !healthy(p, min_ready, now)))
            .map(|(o, _)| *o)
            .or_else(|| condemned.iter().rev().find(|(_, p)| !healthy(p, min_ready, now)).map(|(o, _)| *o));
        if set.metadata.deletion_timestamp.is_some() {
            let next = counted(&replicas, &condemned, &mut status);
            return Ok((status, next));
        }
        let ordered = set.spec.as_ref().and_then(|s| s.pod_management_policy.as_deref()) != Some("Parallel");
        let templates = (template_of(&chosen.current)?, template_of(&chosen.update)?);
        for ordinal in start..start + count_wanted {
            let slot = replicas.get(&ordinal).cloned().flatten();
            let blocked = match slot {
                Some(pod) if matches!(phase(&pod), "Failed" | "Succeeded") => {
                    if !is_terminating(&pod) {
                        let (reason, what) = if phase(&pod) == "Failed" { ("RecreatingFailedPod", "failed") } else { ("RecreatingTerminatedPod", "terminated") };
                        self.record(set, EventType::Warning, reason, format!("StatefulSet {}/{} is recreating {what} Pod {}", set.namespace().unwrap_or_default(), set.name_any(), pod.name_any()));
                        self.delete_pod(set, &pod).await?;
                    }
                    // It is made anew once it is gone.
                    true
                }
                None => {
                    let created = self.create_pod(set, &self.versioned_pod(set, chosen, &templates, ordinal)).await?;
                    replicas.insert(ordinal, Some(created));
                    ordered
                }
                Some(pod) => {
                    if let Some(fixes) = identity::identity_fix(set, &pod) {
                        let labels: serde_json::Map<String, serde_json::Value> = fixes.into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
                        api_near::<Pod, _>(&self.client, set).patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": labels}}))).await?;
                    }
                    ordered && !healthy(&pod, min_ready, now)
                }
            };
            if blocked && ordered {
                let next = counted(&replicas, &condemned, &mut status);
                return Ok((status, next));
            }
        }
        // Scale down, highest ordinal first; in order, only once everything below is healthy.
        for (ordinal, pod) in condemned.clone() {
            if is_terminating(&pod) {
                if ordered {
                    let next = counted(&replicas, &condemned, &mut status);
                    return Ok((status, next));
                }
                continue;
            }
            if ordered && !healthy(&pod, min_ready, now) && first_unhealthy != Some(ordinal) {
                let next = counted(&replicas, &condemned, &mut status);
                return Ok((status, next));
            }
            self.delete_pod(set, &pod).await?;
            if ordered {
                let next = counted(&replicas, &condemned, &mut status);
                return Ok((status, next));
            }
        }
        let next = counted(&replicas, &condemned, &mut status);
        if !is_rolling_update(set) {
            return Ok((status, next));
        }
        // Roll the highest ordinal not at the update revision, one pod at a time.
        let update = chosen.update.name_any();
        let lowest = start + partition(set).unwrap_or(0);
        for (_, pod) in replicas.iter().rev().filter(|(o, _)| **o >= lowest) {
            let Some(pod) = pod else { continue };
            if revision_of(pod) != Some(update.as_str()) && !is_terminating(pod) {
                self.delete_pod(set, pod).await?;
                status.current_replicas = status.current_replicas.map(|c| c - 1).filter(|c| *c != 0);
                return Ok((status, next));
            }
            if !healthy(pod, min_ready, now) {
                break;
            }
        }
        Ok((status, next))
    }

    /// Deletes the oldest revisions no pod or status uses, beyond revisionHistoryLimit.
    async fn truncate_history(&self, set: &StatefulSet, revisions: &[ControllerRevision], status: &StatefulSetStatus, pods: &[Arc<Pod>]) -> Result<(), Error> {
        let mut live: HashSet<&str> = pods.iter().filter_map(|p| revision_of(p)).collect();
        live.extend(status.current_revision.as_deref());
        live.extend(status.update_revision.as_deref());
        let history: Vec<&ControllerRevision> = revisions.iter().filter(|r| !live.contains(r.name_any().as_str())).collect();
        let limit = set.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
        for revision in history.iter().take(history.len().saturating_sub(limit)) {
            match api_near::<ControllerRevision, _>(&self.client, set).delete(&revision.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

//! The Deployment controller (upstream's pkg/controller/deployment): a
//! Deployment owns one ReplicaSet per pod template it has had, named
//! `<deployment>-<pod-template-hash>`. It creates the ReplicaSet of the
//! current template, moves replicas to it by the strategy (RollingUpdate
//! within maxSurge/maxUnavailable, or Recreate), keeps the revision
//! annotations `kubectl rollout history|undo` read, prunes old ReplicaSets
//! beyond revisionHistoryLimit, honours pauses, and reports Available and
//! Progressing conditions against the progress deadline.

mod progress;
mod sizing;
mod strategy;

use super::Context;
use super::ownership::{Owner, api_near, claim, controller_reference, is_controlled_by, nonempty_selector, owners_to_wake, write_status};
use crate::api::selector::LabelSelector;
use crate::runtime::{Change, Controller, Error, EventType, Informer, Next, Reconciler, Recorder, controller_key, reference, split_key};
use crate::controllers::rollout::template_hash;
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use sizing::{POD_TEMPLATE_HASH, REVISION, ReplicaSets};
use std::sync::Arc;

const COMPONENT: &str = "deployment-controller";

impl Owner for Deployment {
    fn selector(&self) -> Option<LabelSelector> {
        nonempty_selector(&self.spec.as_ref()?.selector)
    }
}

struct DeploymentController {
    deployments: Informer<Deployment>,
    replica_sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the Deployment controller until shutdown.
pub async fn run(ctx: Context) {
    let deployments = ctx.informers.get::<Deployment>();
    let replica_sets = ctx.informers.get::<ReplicaSet>();
    let pods = ctx.informers.get::<Pod>();
    let wake = deployments.clone();
    let owners_of_pods = replica_sets.clone();
    let controller = Controller::new(COMPONENT, ctx.options.workers)
        .owns_kind(&deployments)
        .watch(&replica_sets, move |change: &Change<ReplicaSet>| owners_to_wake(change, &wake))
        // A Recreate rollout waits for the old pods to be gone.
        .watch(&pods, move |change: &Change<Pod>| match change {
            Change::Deleted(pod) => controller_key(pod.as_ref(), "ReplicaSet")
                .and_then(|rs| owners_of_pods.get(&rs))
                .and_then(|rs| controller_key(rs.as_ref(), "Deployment"))
                .into_iter()
                .collect(),
            Change::Applied { .. } => Vec::new(),
        });
    let reconciler = Arc::new(DeploymentController { deployments, replica_sets, pods, client: ctx.client.clone(), recorder: ctx.recorder(COMPONENT) });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

#[async_trait]
impl Reconciler for DeploymentController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(cached) = self.deployments.get(key) else { return Ok(Next::Done) };
        let mut d = (*cached).clone();
        let Some(selector) = d.selector() else {
            self.recorder.record(reference(&d), EventType::Warning, "SelectingAll", "This deployment is selecting all pods. A non-empty selector is required.");
            if observed_generation(&d) < d.metadata.generation.unwrap_or(0) {
                d.status.get_or_insert_with(Default::default).observed_generation = d.metadata.generation;
                write_status(&self.client, &mut d).await?;
            }
            return Ok(Next::Done);
        };
        let (namespace, _) = split_key(key);
        let candidates = self.replica_sets.list_namespace(namespace);
        let owned: Vec<ReplicaSet> = claim(&self.client, &d, &selector, candidates).await?.into_iter().map(|rs| (*rs).clone()).collect();
        let mut sets = sizing::split(&d, owned);
        self.sync_new_replica_set(&mut d, &mut sets, false).await?;
        if d.metadata.deletion_timestamp.is_some() {
            return self.sync_status(&mut d, &sets).await;
        }
        if let Some(condition) = progress::pause_condition(&d, progress::now()) {
            progress::set_condition(d.status.get_or_insert_with(Default::default), condition);
            write_status(&self.client, &mut d).await?;
        }
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || is_scaling_event(&d, &sets) {
            return self.sync(&mut d, sets).await;
        }
        if sizing::is_rolling_update(&d) { self.rollout_rolling(&mut d, sets).await } else { self.rollout_recreate(&mut d, sets).await }
    }
}

fn observed_generation(d: &Deployment) -> i64 {
    d.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0)
}

/// Whether the Deployment was resized since its active ReplicaSets were scaled for it.
fn is_scaling_event(d: &Deployment, sets: &ReplicaSets) -> bool {
    let desired = sizing::desired(d).to_string();
    sets.all().iter().filter(|rs| sizing::replicas(rs) > 0).any(|rs| rs.annotations().get(sizing::DESIRED_REPLICAS).is_some_and(|v| *v != desired))
}

impl DeploymentController {
    /// Records the revision the Deployment is at (an annotation, so not through `/status`).
    async fn set_revision(&self, d: &mut Deployment, revision: &str) -> Result<(), Error> {
        if d.annotations().get(REVISION).map(String::as_str) == Some(revision) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        *d = api_near::<Deployment, _>(&self.client, d).patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    async fn replace_replica_set(&self, d: &Deployment, rs: &ReplicaSet) -> Result<ReplicaSet, Error> {
        Ok(api_near::<ReplicaSet, _>(&self.client, d).replace(&rs.name_any(), &PostParams::default(), rs).await?)
    }

    /// Finds the new ReplicaSet up to date (annotations, minReadySeconds, the
    /// Deployment's revision), or creates it when `create` and there is none.
    async fn sync_new_replica_set(&self, d: &mut Deployment, sets: &mut ReplicaSets, create: bool) -> Result<(), Error> {
        let new_revision = sizing::max_revision(&sets.old.iter().collect::<Vec<_>>()) + 1;
        let min_ready = sizing::min_ready_seconds(d);
        if let Some(existing) = sets.new.as_mut() {
            let mut copy = existing.clone();
            let annotated = sizing::set_new_replica_set_annotations(d, &mut copy, new_revision, true);
            let spec = copy.spec.get_or_insert_with(Default::default);
            if annotated || spec.min_ready_seconds.unwrap_or(0) != min_ready {
                spec.min_ready_seconds = Some(min_ready);
                *existing = self.replace_replica_set(d, &copy).await?;
                return Ok(());
            }
            let revision = existing.annotations().get(REVISION).cloned().unwrap_or_default();
            let name = existing.name_any();
            self.set_revision(d, &revision).await?;
            if progress::progress_deadline(d).is_some() && progress::get_condition(d.status.as_ref(), progress::PROGRESSING).is_none() {
                let found = progress::condition(progress::PROGRESSING, "True", progress::FOUND_NEW_REPLICA_SET, format!("Found new replica set {name:?}"), progress::now());
                progress::set_condition(d.status.get_or_insert_with(Default::default), found);
                write_status(&self.client, d).await?;
            }
            return Ok(());
        }
        if !create {
            return Ok(());
        }
        let (new, created) = self.create_new_replica_set(d, sets, new_revision).await?;
        let name = new.name_any();
        sets.new = Some(new);
        self.set_revision(d, &new_revision.to_string()).await?;
        if created && progress::progress_deadline(d).is_some() {
            let condition = progress::condition(progress::PROGRESSING, "True", progress::NEW_REPLICA_SET_CREATED, format!("Created new replica set {name:?}"), progress::now());
            progress::set_condition(d.status.get_or_insert_with(Default::default), condition);
            write_status(&self.client, d).await?;
        }
        Ok(())
    }

    /// Creates the ReplicaSet of the Deployment's template (or finds it made by
    /// an earlier attempt: the flag says which). If the name is taken by another
    /// template (a hash collision), the collision count goes up so the next
    /// attempt hashes to another name.
    async fn create_new_replica_set(&self, d: &mut Deployment, sets: &ReplicaSets, revision: i64) -> Result<(ReplicaSet, bool), Error> {
        let spec = d.spec.clone().unwrap_or_default();
        let hash = template_hash(&spec.template, d.status.as_ref().and_then(|s| s.collision_count));
        let mut template = spec.template.clone();
        template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default).insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector.match_labels.get_or_insert_with(Default::default).insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut rs = ReplicaSet {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{}-{hash}", d.name_any())),
                namespace: d.namespace(),
                owner_references: Some(vec![controller_reference(d)]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec { replicas: Some(0), min_ready_seconds: Some(spec.min_ready_seconds.unwrap_or(0)), selector, template: Some(template) }),
            status: None,
        };
        let size = sizing::new_replica_set_size(d, &sets.old.iter().chain([&rs]).collect::<Vec<_>>(), &rs);
        rs.spec.as_mut().expect("set above").replicas = Some(size);
        sizing::set_new_replica_set_annotations(d, &mut rs, revision, false);
        let api = api_near::<ReplicaSet, _>(&self.client, d);
        match api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                if size > 0 {
                    self.recorder.record(reference(d), EventType::Normal, "ScalingReplicaSet", format!("Scaled up replica set {} from 0 to {size}", created.name_any()));
                }
                Ok((created, true))
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = api.get(&rs.name_any()).await?;
                let same = existing.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| sizing::equal_ignore_hash(t, &spec.template));
                if is_controlled_by(&existing, &d.uid().unwrap_or_default()) && same {
                    return Ok((existing, false));
                }
                let status = d.status.get_or_insert_with(Default::default);
                status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                write_status(&self.client, d).await?;
                Err(format!("replica set {} exists with another template; collision count is now {:?}", rs.name_any(), d.status.as_ref().and_then(|s| s.collision_count)).into())
            }
            Err(e) => {
                let message = format!("Failed to create new replica set {:?}: {e}", rs.name_any());
                if progress::progress_deadline(d).is_some() {
                    let failed = progress::condition(progress::PROGRESSING, "False", progress::REPLICA_SET_CREATE_ERROR, message.clone(), progress::now());
                    progress::set_condition(d.status.get_or_insert_with(Default::default), failed);
                    if let Err(write) = write_status(&self.client, d).await {
                        tracing::debug!(error = %write, "deployment status not written");
                    }
                }
                self.recorder.record(reference(d), EventType::Warning, progress::REPLICA_SET_CREATE_ERROR, message);
                Err(e.into())
            }
        }
    }

    /// Scales one ReplicaSet and refreshes its replica-count annotations;
    /// whether its size changed.
    async fn scale_replica_set(&self, d: &Deployment, sets: &mut ReplicaSets, name: &str, size: i32, direction: &str) -> Result<bool, Error> {
        let (desired, max) = (sizing::desired(d), sizing::desired(d) + sizing::max_surge(d));
        let Some(rs) = sets.find_mut(name) else { return Ok(false) };
        let from = sizing::replicas(rs);
        if from == size && !sizing::replicas_annotations_need_update(rs, desired, max) {
            return Ok(false);
        }
        let mut copy = rs.clone();
        copy.spec.get_or_insert_with(Default::default).replicas = Some(size);
        sizing::set_replicas_annotations(&mut copy, desired, max);
        *rs = self.replace_replica_set(d, &copy).await?;
        if from != size {
            self.recorder.record(reference(d), EventType::Normal, "ScalingReplicaSet", format!("Scaled {direction} replica set {name} from {from} to {size}"));
        }
        Ok(from != size)
    }

    /// Scales one ReplicaSet to `size`, if that changes it.
    async fn scale_to(&self, d: &Deployment, sets: &mut ReplicaSets, name: &str, size: i32) -> Result<bool, Error> {
        let Some(rs) = sets.find_mut(name) else { return Ok(false) };
        let from = sizing::replicas(rs);
        if from == size {
            return Ok(false);
        }
        self.scale_replica_set(d, sets, name, size, if from < size { "up" } else { "down" }).await
    }

    /// Deletes the oldest scaled-down ReplicaSets beyond revisionHistoryLimit.
    async fn clean_up(&self, d: &Deployment, sets: &ReplicaSets) -> Result<(), Error> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit).filter(|l| *l != i32::MAX) else { return Ok(()) };
        let mut cleanable: Vec<&ReplicaSet> = sets.old.iter().filter(|rs| rs.metadata.deletion_timestamp.is_none()).collect();
        let excess = cleanable.len().saturating_sub(limit.max(0) as usize);
        cleanable.sort_by_key(|rs| (sizing::revision(rs), sizing::by_age(rs)));
        for rs in cleanable.into_iter().take(excess) {
            let settled = rs.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0) >= rs.metadata.generation.unwrap_or(0);
            if sizing::actual(rs) != 0 || sizing::replicas(rs) != 0 || !settled {
                continue;
            }
            match api_near::<ReplicaSet, _>(&self.client, d).delete(&rs.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes counts and the Available condition only (paused, resized or deleted Deployments).
    async fn sync_status(&self, d: &mut Deployment, sets: &ReplicaSets) -> Result<Next, Error> {
        let status = progress::calculate(sets, d, progress::now());
        if d.status.as_ref() != Some(&status) {
            d.status = Some(status);
            write_status(&self.client, d).await?;
        }
        Ok(Next::Done)
    }

    /// Writes the status of a rollout, and asks to look again when its deadline may pass.
    async fn sync_rollout_status(&self, d: &mut Deployment, sets: &ReplicaSets) -> Result<Next, Error> {
        let now = progress::now();
        let status = progress::rollout(sets, d, now);
        if d.status.as_ref() == Some(&status) {
            return Ok(progress::recheck_after(d, &status, now).map_or(Next::Done, Next::After));
        }
        d.status = Some(status);
        write_status(&self.client, d).await?;
        Ok(Next::Done)
    }
}

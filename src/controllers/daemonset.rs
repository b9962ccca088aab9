//! The DaemonSet controller (upstream's pkg/controller/daemon): one pod on
//! every node the template fits (node selector, node affinity, taints with
//! the tolerations daemon pods always get). As upstream since 1.12, pods are
//! created pinned to their node by node affinity and the scheduler binds them.
//! Template changes roll out by RollingUpdate (maxUnavailable or maxSurge) or
//! OnDelete, tracked by ControllerRevisions; status counts nodes, not pods.

mod placement;
mod plan;

use super::Context;
use super::history::{self, POD_REVISION_LABEL};
use super::ownership::{Owner, api_near, claim, controller_reference, nonempty_selector, owners_to_wake, write_status};
use super::pods::{PodControl, available, from_template, is_terminating, phase, ready_since, sooner};
use super::rollout::{scaled_value, template_hash};
use crate::api::selector::LabelSelector;
use crate::runtime::{Change, Controller, Error, EventType, Informer, Next, Reconciler, key_of, reference, split_key};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use plan::{Budget, Fit, Plan, PodsByNode};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "daemonset-controller";
/// At most this many pods are created or deleted per pass.
const BURST: usize = 250;

impl Owner for DaemonSet {
    fn selector(&self) -> Option<LabelSelector> {
        nonempty_selector(&self.spec.as_ref()?.selector)
    }
}

struct DaemonSetController {
    daemon_sets: Informer<DaemonSet>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    revisions: Informer<ControllerRevision>,
    client: kube::Client,
    control: PodControl,
}

/// Whether a node change can change where daemon pods belong.
fn placement_changed(change: &Change<Node>) -> bool {
    match change {
        Change::Applied { old: Some(old), new } => {
            old.metadata.labels != new.metadata.labels || old.spec.as_ref().map(|s| (&s.taints, s.unschedulable)) != new.spec.as_ref().map(|s| (&s.taints, s.unschedulable))
        }
        _ => true,
    }
}

/// Runs the DaemonSet controller until shutdown.
pub async fn run(ctx: Context) {
    let daemon_sets = ctx.informers.get::<DaemonSet>();
    let pods = ctx.informers.get::<Pod>();
    let nodes = ctx.informers.get::<Node>();
    let revisions = ctx.informers.get::<ControllerRevision>();
    let (for_pods, for_revisions, for_nodes) = (daemon_sets.clone(), daemon_sets.clone(), daemon_sets.clone());
    let controller = Controller::new(COMPONENT, ctx.options.workers)
        .owns_kind(&daemon_sets)
        .watch(&pods, move |change: &Change<Pod>| owners_to_wake(change, &for_pods))
        .watch(&revisions, move |change: &Change<ControllerRevision>| owners_to_wake(change, &for_revisions))
        .watch(&nodes, move |change: &Change<Node>| {
            if placement_changed(change) { for_nodes.list().iter().map(|ds| key_of(ds.as_ref())).collect() } else { Vec::new() }
        });
    let control = PodControl::new(ctx.client.clone(), pods.clone(), ctx.recorder(COMPONENT));
    let reconciler = Arc::new(DaemonSetController { daemon_sets, pods, nodes, revisions, client: ctx.client.clone(), control });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

fn template(ds: &DaemonSet) -> PodTemplateSpec {
    ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default()
}

/// The template pods are made from: the DaemonSet's, with the default
/// tolerations and the revision label.
fn pod_template(ds: &DaemonSet, hash: &str) -> PodTemplateSpec {
    let mut template = template(ds);
    placement::add_default_tolerations(template.spec.get_or_insert_with(Default::default));
    template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default).insert(POD_REVISION_LABEL.into(), hash.into());
    template
}

fn rolling_update(ds: &DaemonSet) -> Option<(IntOrString, IntOrString)> {
    let strategy = ds.spec.as_ref()?.update_strategy.as_ref()?;
    if strategy.type_.as_deref() != Some("RollingUpdate") {
        return None;
    }
    let rolling = strategy.rolling_update.clone().unwrap_or_default();
    Some((rolling.max_surge.unwrap_or(IntOrString::Int(0)), rolling.max_unavailable.unwrap_or(IntOrString::Int(1))))
}

/// maxSurge and maxUnavailable for `desired` nodes, both rounded up; when both
/// are zero, one node may be unavailable.
fn budget(ds: &DaemonSet, desired: usize) -> Result<Budget, Error> {
    let (surge, unavailable) = rolling_update(ds).unwrap_or((IntOrString::Int(0), IntOrString::Int(1)));
    let total = i32::try_from(desired).unwrap_or(i32::MAX);
    let max_surge = scaled_value(&surge, total, true)?.max(0) as usize;
    let mut max_unavailable = scaled_value(&unavailable, total, true)?.max(0) as usize;
    if desired > 0 && max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    Ok(Budget { max_surge, max_unavailable, desired, min_ready_seconds: min_ready_seconds(ds) })
}

fn min_ready_seconds(ds: &DaemonSet) -> i32 {
    ds.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
}

fn allows_surge(ds: &DaemonSet) -> bool {
    rolling_update(ds).is_some_and(|(surge, _)| scaled_value(&surge, 1, true).is_ok_and(|s| s != 0))
}

/// Node counts for the status, and when a pod's becoming available is due.
fn status(ds: &DaemonSet, fits: &BTreeMap<String, Fit>, pods: &PodsByNode, hash: &str, now: jiff::Timestamp) -> (DaemonSetStatus, Option<Duration>) {
    let previous = ds.status.clone().unwrap_or_default();
    let mut s = DaemonSetStatus { collision_count: previous.collision_count, conditions: previous.conditions, observed_generation: previous.observed_generation, ..Default::default() };
    let (mut available_count, mut updated, mut next_check) = (0, 0, None);
    for (node, fit) in fits {
        let on_node = pods.get(node).filter(|p| !p.is_empty());
        if !fit.should_run {
            s.number_misscheduled += i32::from(on_node.is_some());
            continue;
        }
        s.desired_number_scheduled += 1;
        let Some(pod) = on_node.and_then(|p| plan::representative(p)) else { continue };
        s.current_number_scheduled += 1;
        if ready_since(pod).is_some() {
            s.number_ready += 1;
            match available(pod, min_ready_seconds(ds), now) {
                Ok(()) => available_count += 1,
                Err(wait) => next_check = sooner(next_check, wait),
            }
        }
        updated += i32::from(plan::is_updated(pod, hash));
    }
    let nonzero = |n: i32| (n != 0).then_some(n);
    s.number_available = nonzero(available_count);
    s.number_unavailable = nonzero(s.desired_number_scheduled - available_count);
    s.updated_number_scheduled = nonzero(updated);
    (s, next_check)
}

#[async_trait]
impl Reconciler for DaemonSetController {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(cached) = self.daemon_sets.get(key) else {
            self.control.forget(key);
            return Ok(Next::Done);
        };
        let mut ds = (*cached).clone();
        let Some(selector) = ds.selector() else {
            let message = "This daemon set is selecting all pods. A non-empty selector is required.";
            self.control.recorder().record(reference(&ds), EventType::Warning, "SelectingAll", message);
            return Ok(Next::Done);
        };
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let (current, old) = self.construct_history(&mut ds).await?;
        let hash = current.labels().get(POD_REVISION_LABEL).cloned().unwrap_or_else(|| current.name_any());
        let template = pod_template(&ds, &hash);
        let spec = template.spec.clone().unwrap_or_default();
        let fits: BTreeMap<String, Fit> = self
            .nodes
            .list()
            .iter()
            .map(|node| {
                let (should_run, may_continue) = placement::should_run(&spec, node);
                (node.name_any(), Fit { should_run, may_continue })
            })
            .collect();
        let (namespace, _) = split_key(key);
        let candidates = self.pods.filter(|p| p.metadata.namespace.as_deref() == Some(namespace) && !(matches!(phase(p), "Failed" | "Succeeded") && is_terminating(p)));
        let mut pods = PodsByNode::new();
        for pod in claim(&self.client, &ds, &selector, candidates).await? {
            if let Some(node) = placement::target_node(&pod) {
                pods.entry(node).or_default().push(pod);
            }
        }
        let now = jiff::Timestamp::now();
        let settled = self.control.satisfied(key);
        if settled {
            let manage = plan::manage(&fits, &pods, &hash, allows_surge(&ds), min_ready_seconds(&ds), now);
            let failed = manage.failed;
            self.carry_out(&ds, key, &template, manage).await?;
            if failed > 0 {
                return Err(format!("deleted {failed} failed pods of DaemonSet {key}").into());
            }
            if self.control.satisfied(key) && rolling_update(&ds).is_some() {
                let mut wanted = pods.clone();
                fits.iter().filter(|(_, f)| f.should_run).for_each(|(node, _)| {
                    wanted.entry(node.clone()).or_default();
                });
                let budget = budget(&ds, fits.values().filter(|f| f.should_run).count())?;
                let should_run = |node: &str| fits.get(node).is_some_and(|f| f.should_run);
                self.carry_out(&ds, key, &template, plan::rolling_update(&wanted, should_run, &hash, &budget, now)).await?;
            }
            self.clean_up_history(&ds, old, &pods).await?;
        }
        let (mut new_status, next_check) = status(&ds, &fits, &pods, &hash, now);
        if settled {
            new_status.observed_generation = ds.metadata.generation;
        }
        if ds.status.as_ref() != Some(&new_status) {
            ds.status = Some(new_status);
            write_status(&self.client, &mut ds).await?;
        }
        Ok(next_check.map_or(Next::Done, |wait| Next::After(wait + Duration::from_millis(50))))
    }
}

impl DaemonSetController {
    /// Deletes and creates what `plan` says, a burst at a time.
    async fn carry_out(&self, ds: &DaemonSet, key: &str, template: &PodTemplateSpec, plan: Plan) -> Result<(), Error> {
        if !plan.delete.is_empty() {
            self.control.delete(ds, key, plan.delete.into_iter().take(BURST).collect()).await?;
        }
        let pods: Vec<Pod> = plan
            .create_on
            .iter()
            .take(BURST)
            .map(|node| {
                let mut pod = from_template(template, controller_reference(ds));
                pod.metadata.generate_name = Some(format!("{}-", ds.name_any()));
                let spec = pod.spec.get_or_insert_with(Default::default);
                spec.affinity = Some(placement::pin_to_node(spec.affinity.take(), node));
                pod
            })
            .collect();
        if !pods.is_empty() {
            self.control.create(ds, key, pods).await?;
        }
        Ok(())
    }

    /// The revision of the DaemonSet's current template (made if missing,
    /// renumbered after a rollback, de-duplicated) and the older ones.
    async fn construct_history(&self, ds: &mut DaemonSet) -> Result<(ControllerRevision, Vec<ControllerRevision>), Error> {
        let template = template(ds);
        let data = history::template_patch(&template);
        let (mut current, old): (Vec<ControllerRevision>, Vec<ControllerRevision>) =
            history::owned(&self.client, &self.revisions, ds).await?.into_iter().partition(|r| history::data(r) == Some(&data));
        let next = old.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let Some(keep) = current.pop() else {
            let base = ds.status.as_ref().and_then(|s| s.collision_count);
            let mut count = base.unwrap_or(0);
            let revision = history::new_revision(ds, &template, data, next);
            let created = history::create(&self.client, revision, &mut count, |r, count| {
                let hash = template_hash(&template, (base.is_some() || count > 0).then_some(count));
                r.metadata.name = Some(format!("{}-{hash}", ds.name_any()));
                r.labels_mut().insert(POD_REVISION_LABEL.into(), hash);
            })
            .await?;
            if count != base.unwrap_or(0) {
                ds.status.get_or_insert_with(Default::default).collision_count = Some(count);
                write_status(&self.client, ds).await?;
            }
            return Ok((created, old));
        };
        // Several revisions with the current template: keep the newest, move its pods to it.
        let keep_hash = keep.labels().get(POD_REVISION_LABEL).cloned().unwrap_or_default();
        for duplicate in current {
            for pod in self.pods.filter(|p| p.labels().get(POD_REVISION_LABEL) == duplicate.labels().get(POD_REVISION_LABEL) && p.namespace() == ds.namespace()) {
                let patch = json!({"metadata": {"labels": {POD_REVISION_LABEL: keep_hash}}});
                api_near::<Pod, _>(&self.client, ds).patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            self.delete_revision(ds, &duplicate).await?;
        }
        if keep.revision >= next {
            return Ok((keep, old));
        }
        let mut renumbered = keep.clone();
        renumbered.revision = next;
        Ok((api_near::<ControllerRevision, _>(&self.client, ds).replace(&keep.name_any(), &PostParams::default(), &renumbered).await?, old))
    }

    async fn delete_revision(&self, ds: &DaemonSet, revision: &ControllerRevision) -> Result<(), Error> {
        match api_near::<ControllerRevision, _>(&self.client, ds).delete(&revision.name_any(), &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the oldest old revisions beyond revisionHistoryLimit, but never
    /// one a pod still runs.
    async fn clean_up_history(&self, ds: &DaemonSet, mut old: Vec<ControllerRevision>, pods: &PodsByNode) -> Result<(), Error> {
        let limit = ds.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
        let mut excess = old.len().saturating_sub(limit);
        if excess == 0 {
            return Ok(());
        }
        let live: HashSet<&String> = pods.values().flatten().filter_map(|p| p.labels().get(POD_REVISION_LABEL)).collect();
        history::sort(&mut old);
        for revision in &old {
            if excess == 0 {
                break;
            }
            if revision.labels().get(POD_REVISION_LABEL).is_some_and(|h| live.contains(h)) {
                continue;
            }
            self.delete_revision(ds, revision).await?;
            excess -= 1;
        }
        Ok(())
    }
}

//! Namespace controller: empties a namespace that is being deleted, then
//! releases it. The API marks a deleted namespace Terminating and keeps it while
//! `spec.finalizers` holds "kubernetes"; this controller deletes every
//! namespaced resource the API serves (found through discovery, so any kind
//! is covered), reports progress in the namespace's conditions as upstream
//! does, waits for what is still going away (graceful pods, finalizers), and
//! finally removes its finalizer through `namespaces/finalize`, after which the
//! API deletes the namespace.

use super::Context;
use super::discovery::{Discovered, Discovery};
use crate::runtime::{Change, Controller, Error, Informer, Next, Reconciler};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "namespace-controller";
/// The finalizer this controller owns in `spec.finalizers`.
const FINALIZER: &str = "kubernetes";
/// How long objects held by finalizers are assumed to take (upstream's guess).
const FINALIZER_ESTIMATE_SECONDS: i64 = 15;
/// Upstream's default pod grace period, for pods that do not say.
const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// The condition types this controller maintains, in upstream's order, with
/// the reason and message each has when all is well.
const CONDITIONS: [(&str, &str, &str); 5] = [
    ("NamespaceDeletionDiscoveryFailure", "ResourcesDiscovered", "All resources successfully discovered"),
    ("NamespaceDeletionGroupVersionParsingFailure", "ParsedGroupVersions", "All legacy kube types successfully parsed"),
    ("NamespaceDeletionContentFailure", "ContentDeleted", "All content successfully deleted, may be waiting on finalization"),
    ("NamespaceContentRemaining", "ContentRemoved", "All content successfully removed"),
    ("NamespaceFinalizersRemaining", "ContentHasNoFinalizers", "All content-preserving finalizers finished"),
];

pub async fn run(ctx: Context) {
    let namespaces = ctx.informers.get::<Namespace>();
    let pods = ctx.informers.get::<Pod>();
    let watched = namespaces.clone();
    // A pod that finishes terminating may be the last thing its namespace waits for.
    let controller = Controller::new(COMPONENT, ctx.options.workers).owns_kind(&namespaces).watch(&pods, move |change: &Change<Pod>| {
        let Change::Deleted(pod) = change else { return vec![] };
        let namespace = pod.namespace().unwrap_or_default();
        match watched.get(&namespace) {
            Some(ns) if ns.metadata.deletion_timestamp.is_some() => vec![namespace],
            _ => vec![],
        }
    });
    let reconciler = Arc::new(NamespaceController { namespaces, pods, client: ctx.client.clone() });
    controller.run(reconciler, ctx.shutdown.clone()).await;
}

struct NamespaceController {
    namespaces: Informer<Namespace>,
    pods: Informer<Pod>,
    client: kube::Client,
}

/// What one pass over a namespace's content found.
#[derive(Default)]
struct Content {
    /// Seconds until what remains is expected to be gone.
    estimate: i64,
    discovery_failure: Option<String>,
    /// Failures to delete, one per resource.
    errors: Vec<String>,
    /// Objects left per `resource.group`.
    remaining: BTreeMap<String, usize>,
    /// Objects left per finalizer.
    finalizers: BTreeMap<String, usize>,
}

/// What is left of one resource after deleting its collection.
struct Leftover {
    estimate: i64,
    count: usize,
    finalizers: BTreeMap<String, usize>,
}

fn has_finalizer(ns: &Namespace) -> bool {
    ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()).is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

fn is_not_found_or_unsupported(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 405)
}

#[async_trait]
impl Reconciler for NamespaceController {
    async fn reconcile(&self, name: &str) -> Result<Next, Error> {
        if self.namespaces.get(name).is_none_or(|ns| ns.metadata.deletion_timestamp.is_none()) {
            return Ok(Next::Done);
        }
        // Several parties edit a terminating namespace: work from its latest state.
        let api: Api<Namespace> = Api::all(self.client.clone());
        let Some(ns) = api.get_opt(name).await? else { return Ok(Next::Done) };
        let Some(deleted_at) = ns.metadata.deletion_timestamp.clone() else { return Ok(Next::Done) };
        if !has_finalizer(&ns) {
            return Ok(Next::Done);
        }
        let content = self.delete_all_content(name, &deleted_at).await;
        if let Err(e) = self.update_conditions(&api, &ns, &content).await {
            tracing::debug!(namespace = name, error = %e, "namespace conditions not updated");
        }
        if let Some(failure) = content.discovery_failure.as_ref().or(content.errors.first()) {
            return Err(failure.clone().into());
        }
        if content.estimate > 0 {
            return Ok(Next::After(Duration::from_secs((content.estimate / 2 + 1) as u64)));
        }
        self.finalize(&api, ns).await?;
        Ok(Next::Done)
    }
}

impl NamespaceController {
    /// Deletes every namespaced resource in `namespace` and reports what is left.
    async fn delete_all_content(&self, namespace: &str, deleted_at: &Time) -> Content {
        let mut content = Content::default();
        let discovery = match Discovery::run(&self.client).await {
            Ok(d) => d,
            Err(e) => {
                content.discovery_failure = Some(e.to_string());
                return content;
            }
        };
        if let Some(failure) = discovery.failure() {
            content.discovery_failure = Some(format!("Discovery failed for some groups, {} failing: {failure}", discovery.failed.len()));
        }
        for resource in discovery.resources.iter().filter(|d| d.namespaced && d.supports(&["delete"])) {
            match self.delete_resource(resource, namespace, deleted_at).await {
                Ok(left) => content.note(resource, left),
                Err((left, e)) => {
                    content.errors.push(e);
                    if let Some(left) = left {
                        content.note(resource, left);
                    }
                }
            }
        }
        content
    }

    /// Deletes the collection of one resource in `namespace`, one by one where
    /// deletecollection is not served, and lists what remains.
    async fn delete_resource(&self, resource: &Discovered, namespace: &str, deleted_at: &Time) -> Result<Leftover, (Option<Leftover>, String)> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource.resource);
        let is_pods = resource.resource.group.is_empty() && resource.resource.plural == "pods";
        let estimate = if is_pods { self.pod_termination_estimate(namespace, deleted_at) } else { 0 };
        let params = DeleteParams::background();
        let collection_deleted = resource.supports(&["deletecollection"])
            && match api.delete_collection(&params, &ListParams::default()).await {
                Ok(_) => true,
                Err(e) if is_not_found_or_unsupported(&e) => false,
                Err(e) => return Err((None, e.to_string())),
            };
        if !resource.supports(&["list"]) {
            return Ok(Leftover { estimate, count: 0, finalizers: BTreeMap::new() });
        }
        let items = match api.list_metadata(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) if is_not_found_or_unsupported(&e) => return Ok(Leftover { estimate, count: 0, finalizers: BTreeMap::new() }),
            Err(e) => return Err((None, e.to_string())),
        };
        if !collection_deleted {
            for item in &items {
                match api.delete(&item.name_any(), &params).await {
                    Ok(_) => {}
                    Err(e) if is_not_found_or_unsupported(&e) => {}
                    Err(e) => return Err((None, e.to_string())),
                }
            }
        }
        let mut finalizers = BTreeMap::new();
        for finalizer in items.iter().flat_map(|i| i.finalizers()) {
            *finalizers.entry(finalizer.clone()).or_insert(0) += 1;
        }
        let left = Leftover { estimate, count: items.len(), finalizers };
        if left.count == 0 || left.estimate > 0 {
            return Ok(left);
        }
        if !left.finalizers.is_empty() {
            return Ok(Leftover { estimate: FINALIZER_ESTIMATE_SECONDS, ..left });
        }
        let message = format!("unexpected items still remain in namespace: {namespace} for gvr: {}", resource.gvr_string());
        Err((Some(left), message))
    }

    /// How long the namespace's pods may still take to terminate gracefully,
    /// counted from when the namespace was deleted.
    fn pod_termination_estimate(&self, namespace: &str, deleted_at: &Time) -> i64 {
        let longest = self
            .pods
            .list_namespace(namespace)
            .iter()
            .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
            .map(|p| p.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(DEFAULT_POD_GRACE_SECONDS))
            .max()
            .unwrap_or(0);
        let elapsed = jiff::Timestamp::now().duration_since(deleted_at.0).as_secs();
        if elapsed >= longest { 0 } else { longest }
    }

    /// Writes the deletion conditions when they changed (upstream's updateConditions).
    async fn update_conditions(&self, api: &Api<Namespace>, ns: &Namespace, content: &Content) -> Result<(), kube::Error> {
        let mut conditions = ns.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        if !merge_conditions(&mut conditions, &content.conditions(), Time(jiff::Timestamp::now())) {
            return Ok(());
        }
        let patch = json!({ "metadata": { "resourceVersion": ns.resource_version() }, "status": { "conditions": conditions } });
        api.patch_status(&ns.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
    }

    /// Removes this controller's finalizer; the API deletes the namespace once none is left.
    async fn finalize(&self, api: &Api<Namespace>, mut ns: Namespace) -> Result<(), kube::Error> {
        let name = ns.name_any();
        if let Some(finalizers) = ns.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
            finalizers.retain(|f| f != FINALIZER);
        }
        match api.replace_subresource("finalize", &name, &PostParams::default(), &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Content {
    fn note(&mut self, resource: &Discovered, left: Leftover) {
        self.estimate = self.estimate.max(left.estimate);
        if left.count > 0 {
            let r = &resource.resource;
            self.remaining.insert(format!("{}.{}", r.plural, r.group), left.count);
        }
        for (finalizer, count) in left.finalizers {
            *self.finalizers.entry(finalizer).or_insert(0) += count;
        }
    }

    /// The failing conditions (type, reason, message); the others are reported as fine.
    fn conditions(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut failing = Vec::new();
        if let Some(message) = &self.discovery_failure {
            failing.push(("NamespaceDeletionDiscoveryFailure", "DiscoveryFailed", message.clone()));
        }
        if !self.errors.is_empty() {
            let mut errors = self.errors.clone();
            errors.sort();
            let message = format!("Failed to delete all resource types, {} remaining: {}", errors.len(), errors.join(", "));
            failing.push(("NamespaceDeletionContentFailure", "ContentDeletionFailed", message));
        }
        if !self.remaining.is_empty() {
            let mut parts: Vec<String> = self.remaining.iter().map(|(r, n)| format!("{r} has {n} resource instances")).collect();
            parts.sort();
            failing.push(("NamespaceContentRemaining", "SomeResourcesRemain", format!("Some resources are remaining: {}", parts.join(", "))));
        }
        if !self.finalizers.is_empty() {
            let mut parts: Vec<String> = self.finalizers.iter().map(|(f, n)| format!("{f} in {n} resource instances")).collect();
            parts.sort();
            let message = format!("Some content in the namespace has finalizers remaining: {}", parts.join(", "));
            failing.push(("NamespaceFinalizersRemaining", "SomeFinalizersRemain", message));
        }
        failing
    }
}

/// Sets each maintained condition to its failing or fine variant; a condition's
/// transition time changes only with its status. Returns whether anything changed.
fn merge_conditions(conditions: &mut Vec<NamespaceCondition>, failing: &[(&str, &str, String)], now: Time) -> bool {
    let mut changed = false;
    for (type_, ok_reason, ok_message) in CONDITIONS {
        let (status, reason, message) = match failing.iter().find(|(t, _, _)| *t == type_) {
            Some((_, reason, message)) => ("True", *reason, message.clone()),
            None => ("False", ok_reason, ok_message.to_owned()),
        };
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => {
                conditions.push(NamespaceCondition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(message),
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
            Some(c) if c.status != status || c.reason.as_deref() != Some(reason) || c.message.as_deref() != Some(message.as_str()) => {
                if c.status != status {
                    c.last_transition_time = Some(now.clone());
                }
                c.status = status.into();
                c.reason = Some(reason.into());
                c.message = Some(message);
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn remaining_content_is_reported_as_upstream_words_it() {
        let mut content = Content::default();
        content.remaining.insert("pods.".into(), 2);
        content.remaining.insert("deployments.apps".into(), 1);
        content.finalizers.insert("example.com/hold".into(), 1);
        content.errors.push("unexpected items still remain in namespace: ns for gvr: /v1, Resource=pods".into());
        let mut conditions = Vec::new();
        assert!(merge_conditions(&mut conditions, &content.conditions(), time(10)));
        let by_type = |t: &str| conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(conditions.len(), 5);
        assert_eq!(by_type("NamespaceDeletionDiscoveryFailure").status, "False");
        let remaining = by_type("NamespaceContentRemaining");
        assert_eq!(remaining.reason.as_deref(), Some("SomeResourcesRemain"));
        assert_eq!(remaining.message.as_deref(), Some("Some resources are remaining: deployments.apps has 1 resource instances, pods. has 2 resource instances"));
        assert_eq!(
            by_type("NamespaceFinalizersRemaining").message.as_deref(),
            Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
        );
        assert_eq!(
            by_type("NamespaceDeletionContentFailure").message.as_deref(),
            Some("Failed to delete all resource types, 1 remaining: unexpected items still remain in namespace: ns for gvr: /v1, Resource=pods")
        );
    }

    #[test]
    fn transition_times_move_only_when_a_status_changes() {
        let mut conditions = Vec::new();
        let failing = vec![("NamespaceContentRemaining", "SomeResourcesRemain", "Some resources are remaining: pods. has 2 resource instances".to_owned())];
        merge_conditions(&mut conditions, &failing, time(10));
        assert!(!merge_conditions(&mut conditions, &failing, time(20)), "nothing changed");
        let fewer = vec![("NamespaceContentRemaining", "SomeResourcesRemain", "Some resources are remaining: pods. has 1 resource instances".to_owned())];
        assert!(merge_conditions(&mut conditions, &fewer, time(30)));
        let remaining = conditions.iter().find(|c| c.type_ == "NamespaceContentRemaining").unwrap();
        assert_eq!(remaining.last_transition_time, Some(time(10)), "same status keeps its time");
        assert!(merge_conditions(&mut conditions, &[], time(40)));
        let remaining = conditions.iter().find(|c| c.type_ == "NamespaceContentRemaining").unwrap();
        assert_eq!((remaining.status.as_str(), remaining.last_transition_time.clone()), ("False", Some(time(40))));
        assert_eq!(remaining.message.as_deref(), Some("All content successfully removed"));
    }
}

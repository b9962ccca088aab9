//! ControllerRevisions: the template history of DaemonSets and StatefulSets.
//! Each revision holds the strategic merge patch that restores its template
//! (what `kubectl rollout undo` applies) and a revision number; pods name the
//! revision they were made from in their `controller-revision-hash` label.

use super::ownership::{Owner, claim};
use super::rollout::{fnv1_32, safe_encode};
use crate::runtime::{Error, Informer};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// The pod label naming the revision a pod was made from.
pub const POD_REVISION_LABEL: &str = "controller-revision-hash";

/// How many names are tried before giving up on hash collisions.
const MAX_COLLISIONS: i32 = 100;

/// The patch that puts `template` back: `{"spec":{"template":{…,"$patch":"replace"}}}`.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).expect("templates always serialize");
    if let Some(fields) = template.as_object_mut() {
        fields.insert("$patch".into(), json!("replace"));
    }
    json!({ "spec": { "template": template } })
}

/// The data of a revision, as stored.
pub fn data(revision: &ControllerRevision) -> Option<&Value> {
    revision.data.as_ref().map(|d| &d.0)
}

/// Upstream's HashControllerRevision: FNV-1 over the data's JSON, then the
/// collision count in decimal, rendered safely.
pub fn revision_hash(data: &Value, collision_count: i32) -> String {
    let mut bytes = serde_json::to_vec(data).expect("JSON values always serialize");
    bytes.extend_from_slice(collision_count.to_string().as_bytes());
    safe_encode(&fnv1_32(&bytes).to_string())
}

/// Oldest revision first (by number, then age, then name).
pub fn sort(revisions: &mut [ControllerRevision]) {
    revisions.sort_by_key(|r| (r.revision, r.metadata.creation_timestamp.as_ref().map(|t| t.0), r.name_any()));
}

/// The revisions `owner` controls (adopting orphans it selects), oldest first.
pub async fn owned<O: Owner>(client: &kube::Client, informer: &Informer<ControllerRevision>, owner: &O) -> Result<Vec<ControllerRevision>, Error> {
    let Some(selector) = owner.selector() else { return Ok(Vec::new()) };
    let candidates = informer.list_namespace(&owner.namespace().unwrap_or_default());
    let mut revisions: Vec<ControllerRevision> = claim(client, owner, &selector, candidates).await?.into_iter().map(|r| (*r).clone()).collect();
    sort(&mut revisions);
    Ok(revisions)
}

/// A revision of `owner`'s template with `data`, to be named by [`create`].
pub fn new_revision<O: Owner>(owner: &O, template: &PodTemplateSpec, data: Value, revision: i64) -> ControllerRevision {
    ControllerRevision {
        metadata: kube::api::ObjectMeta {
            namespace: owner.namespace(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(owner.annotations().clone()).filter(|a| !a.is_empty()),
            owner_references: Some(vec![super::ownership::controller_reference(owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

/// Creates `revision` under the name (and labels) `name` gives it for a
/// collision count. A name already holding the same data is that revision;
/// one holding other data is a collision, and the count goes up.
pub async fn create(
    client: &kube::Client,
    mut revision: ControllerRevision,
    collision_count: &mut i32,
    name: impl Fn(&mut ControllerRevision, i32),
) -> Result<ControllerRevision, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &revision.namespace().unwrap_or_default());
    for _ in 0..MAX_COLLISIONS {
        name(&mut revision, *collision_count);
        match api.create(&PostParams::default(), &revision).await {
            Ok(created) => return Ok(created),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = api.get(&revision.name_any()).await?;
                if existing.data == revision.data {
                    return Ok(existing);
                }
                *collision_count += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(format!("no free name for a revision of {} after {MAX_COLLISIONS} hash collisions", revision.name_any()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_replaces_the_whole_template() {
        let template = PodTemplateSpec {
            metadata: Some(kube::api::ObjectMeta { labels: Some([("app".to_owned(), "x".to_owned())].into()), ..Default::default() }),
            spec: None,
        };
        let patch = template_patch(&template);
        assert_eq!(patch, json!({"spec": {"template": {"$patch": "replace", "metadata": {"labels": {"app": "x"}}}}}));
        assert_eq!(serde_json::to_string(&patch).unwrap(), r#"{"spec":{"template":{"$patch":"replace","metadata":{"labels":{"app":"x"}}}}}"#, "keys sorted as upstream's encoder sorts them");
    }

    #[test]
    fn revision_hashes_are_stable_and_move_with_collisions() {
        let data = json!({"spec": {"template": {"$patch": "replace"}}});
        assert_eq!(revision_hash(&data, 0), revision_hash(&data, 0));
        assert_ne!(revision_hash(&data, 0), revision_hash(&data, 1));
        assert_ne!(revision_hash(&data, 0), revision_hash(&json!({}), 0));
    }
}

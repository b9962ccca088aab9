//! Who controls what. A workload owns the objects whose controller reference
//! names it; it adopts orphans its selector matches and releases owned objects
//! that stopped matching (upstream's ControllerRefManager), and it is woken by
//! changes to the objects it owns or might adopt.

use crate::api::selector::LabelSelector;
use crate::runtime::{Change, Error, Informer, key_of, owner_keys};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt::Debug;
use std::sync::Arc;

/// A selector that selects something: `None` when empty (it would select
/// everything) or invalid.
pub fn nonempty_selector(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Option<LabelSelector> {
    LabelSelector::from_k8s(selector).ok().filter(|s| !s.is_empty())
}

/// The API of kind `K` in `obj`'s namespace.
pub fn api_near<K: Owned, O: Resource>(client: &kube::Client, obj: &O) -> Api<K> {
    Api::namespaced(client.clone(), obj.meta().namespace.as_deref().unwrap_or_default())
}

/// Writes an owner's status (whole, guarded by its resourceVersion); `owner`
/// becomes what the API returned.
pub async fn write_status<O: Owner>(client: &kube::Client, owner: &mut O) -> Result<(), Error> {
    *owner = api_near::<O, O>(client, owner).replace_status(&owner.name_any(), &kube::api::PostParams::default(), owner).await?;
    Ok(())
}

/// A namespaced kind that controls other objects through a label selector.
pub trait Owner: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static {
    /// The selector of what it controls; `None` when empty or invalid, so it controls nothing.
    fn selector(&self) -> Option<LabelSelector>;
}

/// A namespaced kind that can be owned.
pub trait Owned: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {}

impl<K> Owned for K where K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {}

/// The reference a controller puts on what it controls.
pub fn controller_reference<O: Owner>(owner: &O) -> OwnerReference {
    OwnerReference {
        api_version: O::api_version(&()).into_owned(),
        kind: O::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller reference of an object, if it has one.
pub fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta().owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))
}

pub fn is_controlled_by<K: Resource>(obj: &K, uid: &str) -> bool {
    controller_of(obj).is_some_and(|o| o.uid == uid)
}

/// Keeps what `owner` controls among `candidates` (objects of its namespace):
/// owned objects that still match, plus orphans that match and are adopted now.
/// Owned objects that no longer match are released.
pub async fn claim<O: Owner, K: Owned>(client: &kube::Client, owner: &O, selector: &LabelSelector, candidates: Vec<Arc<K>>) -> Result<Vec<Arc<K>>, Error> {
    let uid = owner.uid().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    let mut owned = Vec::new();
    for obj in candidates {
        let matches = selector.matches(obj.meta().labels.as_ref().unwrap_or(&Default::default()));
        if is_controlled_by(obj.as_ref(), &uid) {
            if matches {
                owned.push(obj);
            } else {
                let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}], "uid": obj.uid()}});
                match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        } else if matches && controller_of(obj.as_ref()).is_none() && obj.meta().deletion_timestamp.is_none() && owner.meta().deletion_timestamp.is_none() {
            let patch = json!({"metadata": {"ownerReferences": [controller_reference(owner)], "uid": obj.uid()}});
            match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await {
                Ok(adopted) => owned.push(Arc::new(adopted)),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(owned)
}

/// The owners of kind `O` a change of `K` concerns: its controller before and
/// after the change, or, for an orphan, every owner in its namespace whose
/// selector matches it (it may be adopted).
pub fn owners_to_wake<K: Resource, O: Owner>(change: &Change<K>, owners: &Informer<O>) -> Vec<String> {
    let mut keys = owner_keys(change, &O::kind(&()));
    let obj = change.object();
    if keys.is_empty() && controller_of(obj.as_ref()).is_none() {
        let labels = obj.meta().labels.clone().unwrap_or_default();
        let namespace = obj.meta().namespace.clone().unwrap_or_default();
        keys.extend(owners.list_namespace(&namespace).iter().filter(|o| o.selector().is_some_and(|s| s.matches(&labels))).map(|o| key_of(o.as_ref())));
    }
    keys
}

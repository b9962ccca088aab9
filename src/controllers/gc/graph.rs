//! The garbage collector's dependency graph (upstream's GraphBuilder state):
//! every object seen by the metadata informers, keyed by uid, with its owner
//! references and the uids of its dependents. Owners that are only named by a
//! dependent are "virtual" nodes until an informer shows them; the collector
//! then checks with the API whether they exist.
//!
//! Changes are applied by one task, in order; each returns the work they
//! cause (uids to check for deletion, owners whose dependents must be orphaned).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::{HashMap, HashSet};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Who an object is: enough to read or delete it through the API.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Identity {
    pub fn of(api_version: &str, kind: &str, meta: &ObjectMeta) -> Self {
        Self {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }

    /// The owner named by `reference` from an object in `namespace`.
    pub fn owner(reference: &OwnerReference, namespace: &str) -> Self {
        Self {
            api_version: reference.api_version.clone(),
            kind: reference.kind.clone(),
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
            uid: reference.uid.clone(),
        }
    }
}

/// What a change asks the collector's workers to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Work {
    /// Check whether the object with this uid should be deleted (or finalized).
    Delete(String),
    /// Remove this owner's references from its dependents, then its finalizer.
    Orphan(String),
}

#[derive(Debug)]
pub struct Node {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    pub dependents: HashSet<String>,
    /// Seen by an informer, not only named by a dependent.
    pub observed: bool,
    pub being_deleted: bool,
    /// Deleted in the foreground: waits for its blocking dependents.
    pub deleting_dependents: bool,
}

#[derive(Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
}

fn is_deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

fn has_finalizer(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == finalizer))
}

/// Whether `new` is being deleted with `finalizer` and `old` was not.
fn deletion_starts_with(old: Option<&ObjectMeta>, new: &ObjectMeta, finalizer: &str) -> bool {
    is_deleting(new) && has_finalizer(new, finalizer) && old.is_none_or(|o| !is_deleting(o) || !has_finalizer(o, finalizer))
}

impl Graph {
    pub fn node(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// An informer saw `meta` (created or updated from `old`).
    pub fn observe(&mut self, identity: Identity, meta: &ObjectMeta, old: Option<&ObjectMeta>) -> Vec<Work> {
        let uid = identity.uid.clone();
        if uid.is_empty() {
            return Vec::new();
        }
        let mut work = Vec::new();
        let owners = meta.owner_references.clone().unwrap_or_default();
        let namespace = identity.namespace.clone();
        let previous_owners = match self.nodes.get_mut(&uid) {
            None => {
                self.nodes.insert(
                    uid.clone(),
                    Node {
                        identity,
                        owners: owners.clone(),
                        dependents: HashSet::new(),
                        observed: true,
                        being_deleted: false,
                        deleting_dependents: false,
                    },
                );
                Vec::new()
            }
            Some(node) => {
                if !node.observed {
                    node.observed = true;
                    // Dependents named this object by another identity: let them check again.
                    if node.identity != identity {
                        work.extend(node.dependents.iter().cloned().map(Work::Delete));
                    }
                }
                node.identity = identity;
                std::mem::replace(&mut node.owners, owners.clone())
            }
        };
        if previous_owners != owners {
            for removed in previous_owners.iter().filter(|p| !owners.iter().any(|o| o.uid == p.uid)) {
                if let Some(owner) = self.nodes.get_mut(&removed.uid) {
                    owner.dependents.remove(&uid);
                }
            }
            // An owner waiting for its dependents may have just been unblocked.
            for previous in &previous_owners {
                if self.nodes.get(&previous.uid).is_some_and(|o| o.deleting_dependents) {
                    work.push(Work::Delete(previous.uid.clone()));
                }
            }
            for reference in &owners {
                match self.nodes.get_mut(&reference.uid) {
                    Some(owner) => {
                        owner.dependents.insert(uid.clone());
                    }
                    None => {
                        let mut owner = Node {
                            identity: Identity::owner(reference, &namespace),
                            owners: Vec::new(),
                            dependents: HashSet::new(),
                            observed: false,
                            being_deleted: false,
                            deleting_dependents: false,
                        };
                        owner.dependents.insert(uid.clone());
                        self.nodes.insert(reference.uid.clone(), owner);
                        // Does the owner exist at all? The workers ask the API.
                        work.push(Work::Delete(reference.uid.clone()));
                    }
                }
            }
        }
        let node = self.nodes.get_mut(&uid).expect("just inserted");
        node.being_deleted |= is_deleting(meta);
        if deletion_starts_with(old, meta, ORPHAN) {
            work.push(Work::Orphan(uid.clone()));
        }
        if deletion_starts_with(old, meta, FOREGROUND) {
            node.deleting_dependents = true;
            work.extend(node.dependents.iter().cloned().map(Work::Delete));
            work.push(Work::Delete(uid));
        }
        work
    }

    /// An informer saw the object go away.
    pub fn remove(&mut self, uid: &str) -> Vec<Work> {
        let Some(node) = self.nodes.remove(uid) else { return Vec::new() };
        let mut work: Vec<Work> = node.dependents.iter().cloned().map(Work::Delete).collect();
        for reference in &node.owners {
            if let Some(owner) = self.nodes.get_mut(&reference.uid) {
                owner.dependents.remove(uid);
                if owner.deleting_dependents {
                    work.push(Work::Delete(reference.uid.clone()));
                }
            }
        }
        work
    }

    /// The API says the object `identity` names does not exist. A node only
    /// named by dependents goes away; an observed one stays (its informer will
    /// tell), but dependents that named it this way check their owners again.
    pub fn remove_virtual(&mut self, identity: &Identity) -> Vec<Work> {
        match self.nodes.get(&identity.uid) {
            Some(node) if node.observed => node.dependents.iter().cloned().map(Work::Delete).collect(),
            Some(_) => self.remove(&identity.uid),
            None => Vec::new(),
        }
    }

    /// Dependents that hold up the foreground deletion of `uid`: those whose
    /// reference to it has `blockOwnerDeletion`, with whether each is itself
    /// deleting its dependents.
    pub fn blocking_dependents(&self, uid: &str) -> Vec<(String, bool)> {
        let Some(node) = self.nodes.get(uid) else { return Vec::new() };
        node.dependents
            .iter()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| d.owners.iter().any(|o| o.uid == uid && o.block_owner_deletion == Some(true)))
            .map(|d| (d.identity.uid.clone(), d.deleting_dependents))
            .collect()
    }

    /// The identities of the dependents of `uid`.
    pub fn dependents(&self, uid: &str) -> Vec<Identity> {
        let Some(node) = self.nodes.get(uid) else { return Vec::new() };
        node.dependents.iter().filter_map(|d| self.nodes.get(d)).map(|d| d.identity.clone()).collect()
    }

    /// Whether any dependent of `uid` is itself deleting its dependents.
    pub fn has_dependent_deleting_dependents(&self, uid: &str) -> bool {
        self.nodes.get(uid).is_some_and(|n| n.dependents.iter().filter_map(|d| self.nodes.get(d)).any(|d| d.deleting_dependents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn meta(name: &str, uid: &str, owners: &[(&str, bool)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            owner_references: (!owners.is_empty()).then(|| {
                owners
                    .iter()
                    .map(|(uid, block)| OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: format!("owner-{uid}"),
                        uid: (*uid).into(),
                        controller: Some(true),
                        block_owner_deletion: Some(*block),
                    })
                    .collect()
            }),
            ..Default::default()
        }
    }

    fn deleting(mut m: ObjectMeta, finalizer: &str) -> ObjectMeta {
        m.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        m.finalizers = Some(vec![finalizer.into()]);
        m
    }

    fn observe(g: &mut Graph, kind: &str, m: &ObjectMeta, old: Option<&ObjectMeta>) -> Vec<Work> {
        g.observe(Identity::of("v1", kind, m), m, old)
    }

    #[test]
    fn a_dependent_of_an_unseen_owner_makes_the_owner_virtual_and_checked() {
        let mut g = Graph::default();
        let work = observe(&mut g, "Pod", &meta("p", "p1", &[("rs1", true)]), None);
        assert_eq!(work, [Work::Delete("rs1".into())]);
        let owner = g.node("rs1").unwrap();
        assert!(!owner.observed);
        assert_eq!(owner.identity.kind, "ReplicaSet");
        assert_eq!(owner.identity.namespace, "ns");
        // The owner shows up: no more work, it is now real.
        assert!(g.observe(Identity::of("apps/v1", "ReplicaSet", &meta("owner-rs1", "rs1", &[])), &meta("owner-rs1", "rs1", &[]), None).is_empty());
        assert!(g.node("rs1").unwrap().observed);
        assert_eq!(g.dependents("rs1").len(), 1);
    }

    #[test]
    fn a_deleted_owner_sends_its_dependents_to_be_checked() {
        let mut g = Graph::default();
        observe(&mut g, "ReplicaSet", &meta("rs", "rs1", &[]), None);
        observe(&mut g, "Pod", &meta("a", "p1", &[("rs1", true)]), None);
        observe(&mut g, "Pod", &meta("b", "p2", &[("rs1", true)]), None);
        let mut work = g.remove("rs1");
        work.sort_by_key(|w| format!("{w:?}"));
        assert_eq!(work, [Work::Delete("p1".into()), Work::Delete("p2".into())]);
        assert!(g.node("rs1").is_none());
    }

    #[test]
    fn foreground_deletion_checks_dependents_and_waits_for_blocking_ones() {
        let mut g = Graph::default();
        let rs = meta("rs", "rs1", &[]);
        observe(&mut g, "ReplicaSet", &rs, None);
        observe(&mut g, "Pod", &meta("a", "p1", &[("rs1", true)]), None);
        observe(&mut g, "Pod", &meta("b", "p2", &[("rs1", false)]), None);
        let work = observe(&mut g, "ReplicaSet", &deleting(rs.clone(), FOREGROUND), Some(&rs));
        assert!(work.contains(&Work::Delete("p1".into())) && work.contains(&Work::Delete("p2".into())));
        assert_eq!(work.last(), Some(&Work::Delete("rs1".into())));
        assert!(g.node("rs1").unwrap().deleting_dependents);
        assert_eq!(g.blocking_dependents("rs1"), [("p1".to_owned(), false)]);
        // The blocking pod goes: the owner is checked again.
        assert_eq!(g.remove("p1"), [Work::Delete("rs1".into())]);
        assert!(g.blocking_dependents("rs1").is_empty());
        // The same state seen again starts nothing new.
        let again = deleting(rs, FOREGROUND);
        assert!(observe(&mut g, "ReplicaSet", &again, Some(&again)).is_empty());
    }

    #[test]
    fn orphan_deletion_is_handed_to_the_orphan_workers_once() {
        let mut g = Graph::default();
        let rs = meta("rs", "rs1", &[]);
        observe(&mut g, "ReplicaSet", &rs, None);
        let orphaning = deleting(rs.clone(), ORPHAN);
        assert_eq!(observe(&mut g, "ReplicaSet", &orphaning, Some(&rs)), [Work::Orphan("rs1".into())]);
        assert!(observe(&mut g, "ReplicaSet", &orphaning, Some(&orphaning)).is_empty());
    }

    #[test]
    fn dropping_a_reference_detaches_the_dependent_and_wakes_a_waiting_owner() {
        let mut g = Graph::default();
        let rs = meta("rs", "rs1", &[]);
        observe(&mut g, "ReplicaSet", &rs, None);
        let pod = meta("a", "p1", &[("rs1", true)]);
        observe(&mut g, "Pod", &pod, None);
        observe(&mut g, "ReplicaSet", &deleting(rs.clone(), FOREGROUND), Some(&rs));
        let released = meta("a", "p1", &[]);
        assert_eq!(observe(&mut g, "Pod", &released, Some(&pod)), [Work::Delete("rs1".into())]);
        assert!(g.dependents("rs1").is_empty());
    }

    #[test]
    fn a_virtual_removal_leaves_an_observed_object_in_place() {
        let mut g = Graph::default();
        observe(&mut g, "Pod", &meta("a", "p1", &[("rs1", true)]), None);
        let virtual_owner = g.node("rs1").unwrap().identity.clone();
        assert_eq!(g.remove_virtual(&virtual_owner), [Work::Delete("p1".into())]);
        assert!(g.node("rs1").is_none());
        let rs = meta("rs", "rs2", &[]);
        observe(&mut g, "ReplicaSet", &rs, None);
        let identity = g.node("rs2").unwrap().identity.clone();
        assert!(g.remove_virtual(&identity).is_empty());
        assert!(g.node("rs2").is_some());
    }
}

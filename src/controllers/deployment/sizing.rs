//! The bookkeeping of a Deployment's ReplicaSets, as pure functions so it is
//! unit-tested: which ReplicaSet is new, the revision and replica-count
//! annotations, the surge and unavailability fenceposts, how far the new
//! ReplicaSet may grow, and how a resize is shared out proportionally.

use crate::controllers::rollout::scaled_value;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::cmp::Reverse;
use std::collections::BTreeMap;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells the ReplicaSets (and pods) of one Deployment apart.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Deployment annotations that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] =
    &["kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, "deprecated.deployment.rollback.to"];
/// Upstream's bound on the revision-history annotation.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// A Deployment's ReplicaSets: the one running its current template, if any, and the others.
#[derive(Clone, Debug, Default)]
pub struct ReplicaSets {
    pub new: Option<ReplicaSet>,
    pub old: Vec<ReplicaSet>,
}

impl ReplicaSets {
    /// Old first, then the new one.
    pub fn all(&self) -> Vec<&ReplicaSet> {
        self.old.iter().chain(self.new.as_ref()).collect()
    }

    /// The old ReplicaSets that still want pods.
    pub fn active_old(&self) -> Vec<&ReplicaSet> {
        self.old.iter().filter(|rs| replicas(rs) > 0).collect()
    }

    pub fn find_mut(&mut self, name: &str) -> Option<&mut ReplicaSet> {
        self.old.iter_mut().chain(self.new.as_mut()).find(|rs| rs.metadata.name.as_deref() == Some(name))
    }
}

pub fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

pub fn actual(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

pub fn ready(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)
}

pub fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

pub fn sum(rss: &[&ReplicaSet], count: fn(&ReplicaSet) -> i32) -> i32 {
    rss.iter().map(|rs| count(rs)).sum()
}

pub fn is_rolling_update(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate"
}

pub fn min_ready_seconds(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
}

/// Resolves maxSurge (rounded up) and maxUnavailable (rounded down) for
/// `desired` replicas; when both come to zero, one pod may be unavailable so
/// the rollout can progress (upstream's ResolveFenceposts).
pub fn resolve_fenceposts(max_surge: Option<&IntOrString>, max_unavailable: Option<&IntOrString>, desired: i32) -> Result<(i32, i32), String> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    Ok(if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) })
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let rolling = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let surge = rolling.and_then(|r| r.max_surge.as_ref());
    let unavailable = rolling.and_then(|r| r.max_unavailable.as_ref());
    resolve_fenceposts(surge, unavailable, desired(d)).unwrap_or((0, 0))
}

/// How many pods above the desired count a rolling update may run.
pub fn max_surge(d: &Deployment) -> i32 {
    if is_rolling_update(d) { fenceposts(d).0 } else { 0 }
}

/// How many of the desired pods a rolling update may leave unavailable.
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling_update(d) || desired(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(desired(d))
}

/// The pods a ReplicaSet may still have: its target, or more while it has not
/// yet removed pods it was scaled down from.
fn pods_at_most(rs: &ReplicaSet) -> i32 {
    replicas(rs).max(actual(rs))
}

/// The available pods a ReplicaSet surely has: what its status reported, but
/// no more than its target (a scale-down its status does not show yet removes
/// unavailable pods first).
pub fn available_at_least(rs: &ReplicaSet) -> i32 {
    available(rs).min(replicas(rs))
}

/// The size the new ReplicaSet may grow to now. Upstream bounds the sum of the
/// ReplicaSets' targets by replicas + maxSurge; this also counts pods old
/// ReplicaSets have not removed yet, so the bound holds for pods, not only for
/// targets.
pub fn new_replica_set_size(d: &Deployment, all: &[&ReplicaSet], new: &ReplicaSet) -> i32 {
    let wanted = desired(d);
    if !is_rolling_update(d) {
        return wanted;
    }
    let current: i32 = all.iter().map(|rs| pods_at_most(rs)).sum();
    let max_total = wanted + max_surge(d);
    if current >= max_total {
        return replicas(new);
    }
    let scale_up = (max_total - current).min(wanted - replicas(new));
    replicas(new) + scale_up.max(0)
}

/// Templates equal but for the pod-template-hash label (upstream's EqualIgnoreHash).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
        let mut t = t.clone();
        if let Some(meta) = t.metadata.as_mut() {
            let mut labels = meta.labels.take().unwrap_or_default();
            labels.remove(POD_TEMPLATE_HASH);
            // Like upstream's semantic equality, no labels and empty labels are the same.
            meta.labels = (!labels.is_empty()).then_some(labels);
        }
        t
    }
    without_hash(a) == without_hash(b)
}

/// Orders by creation time, then name (upstream's ReplicaSetsByCreationTimestamp).
pub fn by_age(rs: &ReplicaSet) -> (i64, i32, String) {
    let created = rs.metadata.creation_timestamp.as_ref().map_or((0, 0), |t| (t.0.as_second(), t.0.subsec_nanosecond()));
    (created.0, created.1, rs.name_any())
}

/// Splits a Deployment's ReplicaSets into the new one (the oldest whose
/// template is the Deployment's) and the old ones.
pub fn split(d: &Deployment, mut owned: Vec<ReplicaSet>) -> ReplicaSets {
    owned.sort_by_key(by_age);
    let template = d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let new = owned.iter().position(|rs| rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| equal_ignore_hash(t, &template)));
    let new = new.map(|i| owned.remove(i));
    ReplicaSets { new, old: owned }
}

/// The revision number of a ReplicaSet; 0 when absent or unreadable.
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub fn max_revision(rss: &[&ReplicaSet]) -> i64 {
    rss.iter().map(|rs| revision(rs)).max().unwrap_or(0)
}

fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.annotations().get(key)?.parse().ok()
}

/// Records the deployment size (and size with surge) a ReplicaSet was scaled for.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.annotations_mut();
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        if annotations.get(key) != Some(&value.to_string()) {
            annotations.insert(key.to_owned(), value.to_string());
            changed = true;
        }
    }
    changed
}

pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation_i32(rs, DESIRED_REPLICAS) != Some(desired) || annotation_i32(rs, MAX_REPLICAS) != Some(max)
}

/// Brings the new ReplicaSet's annotations up to date: the Deployment's own
/// annotations (change-cause among them, which `kubectl rollout history`
/// shows), the revision it now has and the revisions it had before; for a
/// ReplicaSet being created, the replica-count annotations too.
pub fn set_new_replica_set_annotations(d: &Deployment, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
    let mut changed = false;
    let own: BTreeMap<String, String> = d.annotations().clone();
    let annotations = rs.annotations_mut();
    for (k, v) in own.iter().filter(|(k, _)| !NOT_COPIED.contains(&k.as_str())) {
        if annotations.get(k) != Some(v) {
            annotations.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    let old_revision = annotations.get(REVISION).cloned();
    let old_number = match old_revision.as_deref() {
        None => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return changed,
        },
    };
    if old_number < new_revision {
        annotations.insert(REVISION.to_owned(), new_revision.to_string());
        changed = true;
        if let Some(old) = old_revision {
            let history = annotations.get(REVISION_HISTORY).cloned().unwrap_or_default();
            let mut entries: Vec<&str> = history.split(',').filter(|e| !e.is_empty()).collect();
            entries.push(&old);
            while entries.join(",").len() > MAX_REVISION_HISTORY_CHARS && entries.len() > 1 {
                entries.remove(0);
            }
            annotations.insert(REVISION_HISTORY.to_owned(), entries.join(","));
        }
    }
    if !exists {
        let wanted = desired(d);
        changed |= set_replicas_annotations(rs, wanted, wanted + max_surge(d));
    }
    changed
}

/// The only ReplicaSet with pods, or the newest if none has any; `None` when
/// several have pods.
pub fn active_or_latest<'a>(new: Option<&'a ReplicaSet>, old: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let mut candidates: Vec<&ReplicaSet> = old.iter().collect();
    candidates.sort_by_key(|rs| Reverse(by_age(rs)));
    let active: Vec<&ReplicaSet> = candidates.iter().copied().chain(new).filter(|rs| replicas(rs) > 0).collect();
    match active.as_slice() {
        [] => new.or(candidates.first().copied()),
        [one] => Some(one),
        _ => None,
    }
}

/// Whether the new ReplicaSet alone runs the whole Deployment.
pub fn is_saturated(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let Some(rs) = rs else { return false };
    let wanted = desired(d);
    replicas(rs) == wanted && annotation_i32(rs, DESIRED_REPLICAS) == Some(wanted) && available(rs) == wanted
}

/// The target sizes of the active ReplicaSets when a Deployment is resized
/// mid-rollout: each keeps its share of the new total (by the size it was
/// scaled for), leftovers go to the largest (upstream's proportional scaling).
pub fn proportional_sizes(d: &Deployment, active: &[&ReplicaSet]) -> Vec<(String, i32)> {
    let wanted = desired(d);
    let allowed = if wanted > 0 { wanted + max_surge(d) } else { 0 };
    let to_add = allowed - sum(active, replicas);
    let mut ordered: Vec<&ReplicaSet> = active.to_vec();
    if to_add > 0 {
        ordered.sort_by_key(|rs| (Reverse(replicas(rs)), Reverse(by_age(rs))));
    } else if to_add < 0 {
        ordered.sort_by_key(|rs| (Reverse(replicas(rs)), by_age(rs)));
    }
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = ordered
        .iter()
        .map(|rs| {
            let share = proportion(d, rs, to_add, added);
            added += share;
            (rs.name_any(), replicas(rs) + share)
        })
        .collect();
    if let Some(largest) = sizes.first_mut().filter(|_| to_add != 0) {
        largest.1 = (largest.1 + to_add - added).max(0);
    }
    sizes
}

/// What one ReplicaSet gains (or loses) of `to_add`, `added` being handed out already.
fn proportion(d: &Deployment, rs: &ReplicaSet, to_add: i32, added: i32) -> i32 {
    if replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = fraction(d, rs);
    let allowed = to_add - added;
    if to_add > 0 { fraction.min(allowed) } else { fraction.max(allowed) }
}

fn fraction(d: &Deployment, rs: &ReplicaSet) -> i32 {
    if desired(d) == 0 {
        return -replicas(rs);
    }
    let max_now = desired(d) + max_surge(d);
    let max_before = match annotation_i32(rs, MAX_REPLICAS).filter(|m| *m != 0) {
        Some(m) => m,
        None => match d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0) {
            0 => return 0,
            r => r,
        },
    };
    let size = f64::from(replicas(rs)) * f64::from(max_now) / f64::from(max_before);
    size.round() as i32 - replicas(rs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, ReplicaSetStatus, RollingUpdateDeployment};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment { max_surge: Some(surge), max_unavailable: Some(unavailable) }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rs(name: &str, created: i64, spec: i32, actual: i32, available: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec { replicas: Some(spec), ..Default::default() }),
            status: Some(ReplicaSetStatus { replicas: actual, available_replicas: Some(available), ..Default::default() }),
        }
    }

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        assert_eq!(resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10), Ok((3, 2)));
        assert_eq!(resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 1), Ok((1, 0)));
        assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&pct("50%")), 5), Ok((2, 2)));
    }

    #[test]
    fn fenceposts_that_both_round_to_zero_allow_one_unavailable() {
        assert_eq!(resolve_fenceposts(Some(&pct("0%")), Some(&pct("10%")), 5), Ok((0, 1)));
        assert_eq!(resolve_fenceposts(None, None, 3), Ok((0, 1)));
    }

    #[test]
    fn max_unavailable_never_exceeds_replicas_and_is_zero_for_recreate() {
        assert_eq!(max_unavailable(&deployment(2, IntOrString::Int(0), IntOrString::Int(5))), 2);
        let mut d = deployment(4, IntOrString::Int(1), IntOrString::Int(1));
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None });
        assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 0));
    }

    #[test]
    fn the_new_replica_set_grows_up_to_the_surge() {
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        let old = rs("old", 1, 3, 3, 3);
        let new = rs("new", 2, 0, 0, 0);
        assert_eq!(new_replica_set_size(&d, &[&old, &new], &new), 1);
        let new = rs("new", 2, 1, 1, 1);
        assert_eq!(new_replica_set_size(&d, &[&old, &new], &new), 1, "at replicas + surge already");
    }

    #[test]
    fn the_new_replica_set_waits_for_old_pods_to_go_before_growing() {
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        let new = rs("new", 2, 1, 1, 1);
        // Scaled down to 2 but still running 3 pods: no room yet.
        let old = rs("old", 1, 2, 3, 3);
        assert_eq!(new_replica_set_size(&d, &[&old, &new], &new), 1);
        let old = rs("old", 1, 2, 2, 2);
        assert_eq!(new_replica_set_size(&d, &[&old, &new], &new), 2);
    }

    #[test]
    fn available_pods_of_a_scaled_down_replica_set_count_at_most_its_target() {
        assert_eq!(available_at_least(&rs("old", 1, 2, 3, 3)), 2);
        assert_eq!(available_at_least(&rs("old", 1, 3, 3, 1)), 1);
    }

    #[test]
    fn the_oldest_replica_set_with_the_template_is_new() {
        let mut d = deployment(1, IntOrString::Int(1), IntOrString::Int(0));
        let template = |image: &str, hash: &str| PodTemplateSpec {
            metadata: Some(kube::api::ObjectMeta { labels: Some(BTreeMap::from([(POD_TEMPLATE_HASH.to_owned(), hash.to_owned())])), ..Default::default() }),
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container { name: "c".into(), image: Some(image.into()), ..Default::default() }],
                ..Default::default()
            }),
        };
        d.spec.as_mut().unwrap().template = template("b", "");
        d.spec.as_mut().unwrap().template.metadata.as_mut().unwrap().labels = None;
        let with = |mut r: ReplicaSet, t: PodTemplateSpec| {
            r.spec.as_mut().unwrap().template = Some(t);
            r
        };
        let sets = split(&d, vec![with(rs("x2", 3, 1, 1, 1), template("b", "2")), with(rs("a", 1, 1, 1, 1), template("a", "1")), with(rs("x1", 2, 1, 1, 1), template("b", "3"))]);
        assert_eq!(sets.new.unwrap().name_any(), "x1");
        assert_eq!(sets.old.iter().map(|r| r.name_any()).collect::<Vec<_>>(), ["a", "x2"]);
    }

    #[test]
    fn revisions_move_to_history_and_deployment_annotations_are_copied() {
        let mut d = deployment(2, IntOrString::Int(1), IntOrString::Int(0));
        d.metadata.annotations = Some(BTreeMap::from([
            ("kubernetes.io/change-cause".to_owned(), "kubectl set image".to_owned()),
            (REVISION.to_owned(), "9".to_owned()),
        ]));
        let mut set = rs("r", 1, 0, 0, 0);
        assert!(set_new_replica_set_annotations(&d, &mut set, 1, false));
        assert_eq!(set.annotations().get(REVISION).map(String::as_str), Some("1"));
        assert_eq!(set.annotations().get(DESIRED_REPLICAS).map(String::as_str), Some("2"));
        assert_eq!(set.annotations().get(MAX_REPLICAS).map(String::as_str), Some("3"));
        assert_eq!(set.annotations().get("kubernetes.io/change-cause").map(String::as_str), Some("kubectl set image"));
        assert!(!set_new_replica_set_annotations(&d, &mut set, 1, true), "nothing left to change");
        assert!(set_new_replica_set_annotations(&d, &mut set, 3, true));
        assert!(set_new_replica_set_annotations(&d, &mut set, 5, true));
        assert_eq!(set.annotations().get(REVISION).map(String::as_str), Some("5"));
        assert_eq!(set.annotations().get(REVISION_HISTORY).map(String::as_str), Some("1,3"));
    }

    #[test]
    fn only_one_active_replica_set_is_scaled_directly() {
        let old = vec![rs("a", 1, 0, 0, 0), rs("b", 2, 0, 0, 0)];
        assert_eq!(active_or_latest(None, &old).map(|r| r.name_any()).as_deref(), Some("b"));
        let new = rs("n", 3, 2, 2, 2);
        assert_eq!(active_or_latest(Some(&new), &old).map(|r| r.name_any()).as_deref(), Some("n"));
        let busy = vec![rs("a", 1, 1, 1, 1)];
        assert!(active_or_latest(Some(&new), &busy).is_none());
    }

    #[test]
    fn a_resize_mid_rollout_is_shared_in_proportion() {
        // 10 replicas, surge 3: the sets were scaled for 13 pods; now 20 (+3 surge = 23).
        let d = deployment(20, IntOrString::Int(3), IntOrString::Int(2));
        let annotated = |mut r: ReplicaSet| {
            set_replicas_annotations(&mut r, 10, 13);
            r
        };
        let old = annotated(rs("old", 1, 8, 8, 8));
        let new = annotated(rs("new", 2, 5, 5, 5));
        let sizes: BTreeMap<String, i32> = proportional_sizes(&d, &[&old, &new]).into_iter().collect();
        assert_eq!(sizes.values().sum::<i32>(), 23);
        assert_eq!(sizes["old"], 14);
        assert_eq!(sizes["new"], 9);
    }

    #[test]
    fn scaling_to_zero_empties_every_replica_set() {
        let d = deployment(0, IntOrString::Int(1), IntOrString::Int(0));
        let (a, b) = (rs("a", 1, 2, 2, 2), rs("b", 2, 3, 3, 3));
        let sizes = proportional_sizes(&d, &[&a, &b]);
        assert!(sizes.iter().all(|(_, n)| *n == 0), "{sizes:?}");
    }
}

//! How replicas move between a Deployment's ReplicaSets: a rolling update
//! (grow the new one within maxSurge, shrink old ones within
//! maxUnavailable), Recreate (all old pods gone before the new ones start),
//! and resizing a paused or mid-rollout Deployment proportionally.

use super::sizing::{self, ReplicaSets, available, available_at_least, by_age, desired, max_unavailable, replicas, sum};
use super::{DeploymentController, progress};
use crate::controllers::ownership::controller_of;
use crate::controllers::pods::phase;
use crate::runtime::{Error, Next};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use std::collections::HashSet;

/// Names of ReplicaSets, oldest first.
fn oldest_first(rss: &[&ReplicaSet]) -> Vec<String> {
    let mut rss = rss.to_vec();
    rss.sort_by_key(|rs| by_age(rs));
    rss.iter().map(|rs| rs.name_any()).collect()
}

impl DeploymentController {
    pub(super) async fn rollout_rolling(&self, d: &mut Deployment, mut sets: ReplicaSets) -> Result<Next, Error> {
        self.sync_new_replica_set(d, &mut sets, true).await?;
        if self.grow_new_replica_set(d, &mut sets).await? || self.shrink_old_replica_sets(d, &mut sets).await? {
            return self.sync_rollout_status(d, &sets).await;
        }
        if progress::complete(d, d.status.as_ref()) {
            self.clean_up(d, &sets).await?;
        }
        self.sync_rollout_status(d, &sets).await
    }

    /// Grows the new ReplicaSet as far as the surge allows (or shrinks it to the
    /// Deployment's size); whether it changed.
    async fn grow_new_replica_set(&self, d: &Deployment, sets: &mut ReplicaSets) -> Result<bool, Error> {
        let Some(new) = sets.new.as_ref() else { return Ok(false) };
        let (name, current, wanted) = (new.name_any(), replicas(new), desired(d));
        let size = match current.cmp(&wanted) {
            std::cmp::Ordering::Equal => return Ok(false),
            std::cmp::Ordering::Greater => wanted,
            std::cmp::Ordering::Less => sizing::new_replica_set_size(d, &sets.all(), new),
        };
        self.scale_to(d, sets, &name, size).await
    }

    /// Shrinks old ReplicaSets as far as availability allows: first their
    /// unavailable pods, then available ones down to replicas - maxUnavailable.
    async fn shrink_old_replica_sets(&self, d: &Deployment, sets: &mut ReplicaSets) -> Result<bool, Error> {
        let Some(new) = sets.new.as_ref() else { return Ok(false) };
        if sum(&sets.active_old(), replicas) == 0 {
            return Ok(false);
        }
        let min_available = desired(d) - max_unavailable(d);
        let new_unavailable = replicas(new) - available(new);
        let max_scaled_down = sum(&sets.all(), replicas) - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut shrunk = 0;
        for name in oldest_first(&sets.active_old()) {
            if shrunk >= max_scaled_down {
                break;
            }
            let Some(rs) = sets.find_mut(&name) else { continue };
            let unhealthy = replicas(rs) - available_at_least(rs);
            if unhealthy == 0 {
                continue;
            }
            let down = unhealthy.min(max_scaled_down - shrunk);
            let size = replicas(rs) - down;
            self.scale_to(d, sets, &name, size).await?;
            shrunk += down;
        }
        let available_now = sum(&sets.all(), available_at_least);
        if available_now > min_available {
            let allowed = available_now - min_available;
            let mut scaled = 0;
            for name in oldest_first(&sets.active_old()) {
                if scaled >= allowed {
                    break;
                }
                let Some(rs) = sets.find_mut(&name) else { continue };
                let down = replicas(rs).min(allowed - scaled);
                let size = replicas(rs) - down;
                self.scale_to(d, sets, &name, size).await?;
                scaled += down;
            }
            shrunk += scaled;
        }
        Ok(shrunk > 0)
    }

    pub(super) async fn rollout_recreate(&self, d: &mut Deployment, mut sets: ReplicaSets) -> Result<Next, Error> {
        let mut scaled_down = false;
        for name in oldest_first(&sets.active_old()) {
            scaled_down |= self.scale_to(d, &mut sets, &name, 0).await?;
        }
        if scaled_down || self.old_pods_running(d, &sets) {
            return self.sync_rollout_status(d, &sets).await;
        }
        self.sync_new_replica_set(d, &mut sets, true).await?;
        if let Some(name) = sets.new.as_ref().map(|rs| rs.name_any()) {
            self.scale_to(d, &mut sets, &name, desired(d)).await?;
        }
        if progress::complete(d, d.status.as_ref()) {
            self.clean_up(d, &sets).await?;
        }
        self.sync_rollout_status(d, &sets).await
    }

    /// Whether any pod of an old ReplicaSet is still there and not finished
    /// (terminating pods count: Recreate means no overlap).
    fn old_pods_running(&self, d: &Deployment, sets: &ReplicaSets) -> bool {
        if sum(&sets.old.iter().collect::<Vec<_>>(), sizing::actual) > 0 {
            return true;
        }
        let old: HashSet<String> = sets.old.iter().filter_map(|rs| rs.uid()).collect();
        self.pods
            .list_namespace(&d.namespace().unwrap_or_default())
            .iter()
            .filter(|pod| controller_of(pod.as_ref()).is_some_and(|c| old.contains(&c.uid)))
            .any(|pod| !matches!(phase(pod), "Failed" | "Succeeded"))
    }

    /// A paused or resized Deployment: sizes change, templates do not roll.
    pub(super) async fn sync(&self, d: &mut Deployment, mut sets: ReplicaSets) -> Result<Next, Error> {
        self.scale(d, &mut sets).await?;
        if d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
            self.clean_up(d, &sets).await?;
        }
        self.sync_status(d, &sets).await
    }

    async fn scale(&self, d: &Deployment, sets: &mut ReplicaSets) -> Result<(), Error> {
        if let Some(only) = sizing::active_or_latest(sets.new.as_ref(), &sets.old).map(|rs| rs.name_any()) {
            self.scale_to(d, sets, &only, desired(d)).await?;
            return Ok(());
        }
        if sizing::is_saturated(d, sets.new.as_ref()) {
            for name in oldest_first(&sets.active_old()) {
                self.scale_to(d, sets, &name, 0).await?;
            }
            return Ok(());
        }
        if !sizing::is_rolling_update(d) {
            return Ok(());
        }
        let active: Vec<&ReplicaSet> = sets.all().into_iter().filter(|rs| replicas(rs) > 0).collect();
        let before = sum(&active, replicas);
        let sizes = sizing::proportional_sizes(d, &active);
        let after: i32 = sizes.iter().map(|(_, n)| n).sum();
        let direction = if after > before { "up" } else { "down" };
        for (name, size) in sizes {
            self.scale_replica_set(d, sets, &name, size, direction).await?;
        }
        Ok(())
    }
}

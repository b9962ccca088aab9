//! Pods as the workload controllers see them: whether a pod still counts, is
//! ready or available; building a pod from its owner's template; and creating
//! and deleting pods with "expectations" (upstream's PodControl and
//! ControllerExpectations), so a controller never acts twice on a stale cache.

use crate::runtime::{Error, EventType, Informer, Recorder, reference, split_key};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Expectations older than this are assumed met (an event was lost).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

/// Whether a pod still counts: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = phase(pod);
    phase != "Succeeded" && phase != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The time since which a pod has been Ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let condition = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (condition.status == "True").then(|| condition.last_transition_time.as_ref().map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0))
}

/// Whether a pod has been Ready for `min_ready_seconds`; else how long until it will be.
pub fn available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> Result<(), Option<Duration>> {
    let since = ready_since(pod).ok_or(None)?;
    let ready_for = now.duration_since(since).as_secs_f64();
    if min_ready_seconds <= 0 || ready_for >= f64::from(min_ready_seconds) {
        Ok(())
    } else {
        Err(Some(Duration::from_secs_f64(f64::from(min_ready_seconds) - ready_for)))
    }
}

pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    available(pod, min_ready_seconds, now).is_ok()
}

/// The earlier of two optional delays: when a controller should look again.
pub fn sooner(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A pod as `template` describes it, controlled by `owner` (upstream's
/// GetPodFromTemplate); the caller names it.
pub fn from_template(template: &PodTemplateSpec, owner: OwnerReference) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: kube::api::ObjectMeta {
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// What a controller just did for one owner and waits to see in its cache.
#[derive(Default)]
struct Expected {
    created: HashSet<String>,
    deleted: HashSet<String>,
    at: Option<Instant>,
}

/// Creates and deletes the pods of owners, remembering what it did until the
/// pod informer has seen it.
pub struct PodControl {
    client: kube::Client,
    pods: Informer<Pod>,
    recorder: Recorder,
    expectations: Mutex<HashMap<String, Expected>>,
}

impl PodControl {
    pub fn new(client: kube::Client, pods: Informer<Pod>, recorder: Recorder) -> Self {
        Self { client, pods, recorder, expectations: Mutex::new(HashMap::new()) }
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Whether the cache reflects everything done for the owner `key`.
    pub fn satisfied(&self, key: &str) -> bool {
        let mut all = self.expectations.lock().expect("expectations lock");
        let Some(e) = all.get_mut(key) else { return true };
        if e.at.is_some_and(|at| at.elapsed() > EXPECTATIONS_TTL) {
            all.remove(key);
            return true;
        }
        let (ns, _) = split_key(key);
        e.created.retain(|name| self.pods.get(&format!("{ns}/{name}")).is_none());
        e.deleted.retain(|name| self.pods.get(&format!("{ns}/{name}")).is_some_and(|p| !is_terminating(&p)));
        let met = e.created.is_empty() && e.deleted.is_empty();
        if met {
            all.remove(key);
        }
        met
    }

    /// Drops what was expected for an owner that is gone.
    pub fn forget(&self, key: &str) {
        self.expectations.lock().expect("expectations lock").remove(key);
    }

    fn expect(&self, key: &str, created: impl IntoIterator<Item = String>, deleted: impl IntoIterator<Item = String>) {
        let mut all = self.expectations.lock().expect("expectations lock");
        let e = all.entry(key.to_owned()).or_default();
        e.created.extend(created);
        e.deleted.extend(deleted);
        e.at = Some(Instant::now());
    }

    /// Creates `pods` for `owner` (known as `key`) in slow-start batches of 1,
    /// 2, 4, …: a failure stops the rest, so a quota or admission problem costs
    /// one request, not hundreds.
    pub async fn create<O: Resource<DynamicType = ()>>(&self, owner: &O, key: &str, pods: Vec<Pod>) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &owner.namespace().unwrap_or_default());
        let params = PostParams::default();
        let mut pending = pods.into_iter();
        let mut batch = 1usize;
        loop {
            let chunk: Vec<Pod> = pending.by_ref().take(batch).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            let results = futures::future::join_all(chunk.iter().map(|pod| api.create(&params, pod))).await;
            let mut failure = None;
            let mut created = Vec::new();
            for result in results {
                match result {
                    Ok(pod) => created.push(pod.name_any()),
                    Err(e) => failure = Some(e),
                }
            }
            for name in &created {
                self.recorder.record(reference(owner), EventType::Normal, "SuccessfulCreate", format!("Created pod: {name}"));
            }
            self.expect(key, created, []);
            if let Some(e) = failure {
                self.recorder.record(reference(owner), EventType::Warning, "FailedCreate", format!("Error creating: {e}"));
                return Err(e.into());
            }
            batch *= 2;
        }
    }

    /// Deletes the named pods of `owner` (known as `key`).
    pub async fn delete<O: Resource<DynamicType = ()>>(&self, owner: &O, key: &str, names: Vec<String>) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &owner.namespace().unwrap_or_default());
        self.expect(key, [], names.iter().cloned());
        let params = DeleteParams::default();
        let results = futures::future::join_all(names.iter().map(|name| api.delete(name, &params))).await;
        for (name, result) in names.iter().zip(results) {
            match result {
                Ok(_) => self.recorder.record(reference(owner), EventType::Normal, "SuccessfulDelete", format!("Deleted pod: {name}")),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    self.recorder.record(reference(owner), EventType::Warning, "FailedDelete", format!("Error deleting: {e}"));
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ready_at(second: i64) -> Pod {
        Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(jiff::Timestamp::from_second(second).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_is_available_after_min_ready_seconds() {
        let now = jiff::Timestamp::from_second(1000).unwrap();
        let p = ready_at(995);
        assert!(available(&p, 0, now).is_ok());
        assert_eq!(available(&p, 10, now), Err(Some(Duration::from_secs(5))));
        assert_eq!(available(&Pod::default(), 0, now), Err(None));
    }

    #[test]
    fn sooner_picks_the_earliest_delay() {
        let (a, b) = (Some(Duration::from_secs(1)), Some(Duration::from_secs(2)));
        assert_eq!(sooner(a, b), a);
        assert_eq!(sooner(None, b), b);
        assert_eq!(sooner(None, None), None);
    }
}

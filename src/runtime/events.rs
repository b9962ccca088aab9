//! Recording Events: what components tell users about objects (`kubectl
//! describe` shows them). Repeats of the same event within a while are folded
//! into one Event with a count, as client-go's recorder does; recording never
//! blocks the caller.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a repeat is folded into the earlier Event.
const AGGREGATE_FOR: Duration = Duration::from_secs(600);
/// Bound on remembered events, so memory stays flat.
const REMEMBER: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Recent events by fingerprint: the Event's name, its count, when last seen.
type Seen = HashMap<String, (String, i32, Instant)>;

#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<Seen>>,
}

/// A reference to `obj` for an Event's `involvedObject`.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str, host: Option<String>) -> Self {
        Self { client, component: component.to_owned(), host, seen: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Records an event about `object` in the background.
    pub fn record(&self, object: ObjectReference, kind: EventType, reason: &str, message: impl Into<String>) {
        let this = self.clone();
        let reason = reason.to_owned();
        let message = message.into();
        tokio::spawn(async move {
            if let Err(e) = this.write(object, kind, &reason, message).await {
                tracing::debug!(error = %e, reason, "event not recorded");
            }
        });
    }

    async fn write(&self, object: ObjectReference, kind: EventType, reason: &str, message: String) -> Result<(), kube::Error> {
        let namespace = object.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let fingerprint = format!("{}/{}/{}/{reason}/{message}", object.uid.as_deref().unwrap_or(""), object.kind.as_deref().unwrap_or(""), object.name.as_deref().unwrap_or(""));
        let now = jiff::Timestamp::now();
        let recorded = Instant::now();
        let repeat = {
            let mut seen = self.seen.lock().expect("events lock");
            match seen.get_mut(&fingerprint) {
                Some((name, count, at)) if recorded.duration_since(*at) < AGGREGATE_FOR => {
                    *count += 1;
                    *at = recorded;
                    Some((name.clone(), *count))
                }
                _ => None,
            }
        };
        if let Some((name, count)) = repeat {
            let patch = serde_json::json!({ "count": count, "lastTimestamp": Time(now) });
            if events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
                return Ok(());
            }
        }
        let name = format!("{}.{:x}", object.name.as_deref().unwrap_or("object"), now.as_nanosecond() as u64);
        let event = Event {
            metadata: kube::api::ObjectMeta { name: Some(name.clone()), namespace: Some(namespace), ..Default::default() },
            involved_object: object,
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(format!("{kind:?}")),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            source: Some(EventSource { component: Some(self.component.clone()), host: self.host.clone() }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            action: Some(reason.to_owned()),
            ..Default::default()
        };
        events.create(&PostParams::default(), &event).await?;
        let mut seen = self.seen.lock().expect("events lock");
        // Pruning only when full keeps recording cheap when every event is new
        // (a scheduler records one per pod).
        if seen.len() >= REMEMBER {
            seen.retain(|_, (_, _, at)| recorded.duration_since(*at) < AGGREGATE_FOR);
        }
        if seen.len() < REMEMBER {
            seen.insert(fingerprint, (name, 1, recorded));
        }
        Ok(())
    }
}

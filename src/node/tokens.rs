//! Projected service account tokens (`serviceAccountToken` sources, as in
//! every pod's `kube-api-access-*` volume): the agent asks the TokenRequest
//! API for a token of the pod's service account bound to the pod, with the
//! source's audience and lifetime, and keeps it until 80% of its lifetime has
//! passed; then the next sync fetches a new one and the volume is rewritten
//! atomically like its other files.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token's lifetime when the source names none (upstream's default).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The share of a token's lifetime after which it is replaced.
const REFRESH_AT: f64 = 0.8;

/// The tokens a pod's volumes need, by (volume, path).
pub type PodTokens = HashMap<(String, String), String>;

struct Issued {
    token: String,
    refresh_at: Instant,
}

/// The agent's tokens, by pod uid, volume and path.
pub struct Tokens {
    client: kube::Client,
    issued: Mutex<HashMap<(String, String, String), Issued>>,
}

impl Tokens {
    pub fn new(client: kube::Client) -> Self {
        Self { client, issued: Mutex::default() }
    }

    /// The tokens `pod`'s projected volumes need (fetching those missing or
    /// due), and how soon the first of them is due again.
    pub async fn for_pod(&self, pod: &Pod) -> Result<(PodTokens, Option<Duration>), String> {
        let m = &pod.metadata;
        let (namespace, name, uid) = (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default(), m.uid.clone().unwrap_or_default());
        let spec = pod.spec.clone().unwrap_or_default();
        let account = spec.service_account_name.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| "default".into());
        let mut tokens = PodTokens::new();
        let mut next: Option<Duration> = None;
        for volume in spec.volumes.iter().flatten() {
            for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()).filter_map(|s| s.service_account_token.as_ref()) {
                let key = (uid.clone(), volume.name.clone(), source.path.clone());
                let now = Instant::now();
                let cached = self.issued.lock().expect("tokens lock").get(&key).filter(|t| t.refresh_at > now).map(|t| (t.token.clone(), t.refresh_at));
                let (token, refresh_at) = match cached {
                    Some(c) => c,
                    None => {
                        let seconds = source.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS);
                        let request = TokenRequest {
                            spec: TokenRequestSpec {
                                audiences: source.audience.iter().filter(|a| !a.is_empty()).cloned().collect(),
                                expiration_seconds: Some(seconds),
                                bound_object_ref: Some(BoundObjectReference { kind: Some("Pod".into()), api_version: Some("v1".into()), name: Some(name.clone()), uid: Some(uid.clone()) }),
                            },
                            ..Default::default()
                        };
                        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &namespace);
                        let issued = accounts
                            .create_token_request(&account, &PostParams::default(), &request)
                            .await
                            .map_err(|e| format!("MountVolume.SetUp failed for volume \"{}\" : failed to fetch token: {e}", volume.name))?;
                        let status = issued.status.ok_or_else(|| "the TokenRequest came back without a token".to_owned())?;
                        let lifetime = (status.expiration_timestamp.0.as_second() - jiff::Timestamp::now().as_second()).max(1);
                        let refresh_at = now + Duration::from_secs_f64(lifetime as f64 * REFRESH_AT);
                        self.issued.lock().expect("tokens lock").insert(key, Issued { token: status.token.clone(), refresh_at });
                        (status.token, refresh_at)
                    }
                };
                let due = refresh_at.saturating_duration_since(now);
                next = Some(next.map_or(due, |n| n.min(due)));
                tokens.insert((volume.name.clone(), source.path.clone()), token);
            }
        }
        Ok((tokens, next))
    }

    /// Drops the tokens of a pod that is gone.
    pub fn forget_pod(&self, uid: &str) {
        self.issued.lock().expect("tokens lock").retain(|(u, _, _), _| u != uid);
    }
}

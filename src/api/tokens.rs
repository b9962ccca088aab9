//! Service account tokens: JWTs (ES256) the API server signs for TokenRequests
//! and accepts as bearer tokens, as upstream's bound service account tokens.
//! The compact JWS form is a few lines of base64 and JSON; the cryptography is
//! ring's. The signing key lives in the data directory and survives restarts.

use super::auth::Identity;
use super::codec::{self, Output};
use super::error::{ApiError, ApiResult, FieldError};
use super::object::{ObjectExt, format_time};
use super::rest::{Ctx, decode_stored};
use super::Api;
use axum::response::Response;
use base64::Engine;
use http::StatusCode;
use serde_json::{Value, json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The issuer rk writes into tokens and requires of tokens it accepts.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audience tokens carry unless the request names others.
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What a token says about its holder, in upstream's claim layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectClaim,
    /// The pod a token is bound to: it stops working when the pod is gone.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<ObjectClaim>,
    /// The Secret a long-lived token lives in: it stops working when the Secret is gone.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret: Option<ObjectClaim>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectClaim {
    pub name: String,
    pub uid: String,
}

pub struct TokenSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl TokenSigner {
    /// Loads the signing key from `path`, creating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| "generating the token signing key")?;
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                file.write_all(doc.as_ref()).and_then(|_| file.sync_all()).map_err(|e| format!("writing {}: {e}", path.display()))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|e| format!("{} is not a P-256 PKCS#8 key: {e}", path.display()))?;
        Ok(Self { key, rng })
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{payload}");
        let signature = self.key.sign(&self.rng, signing_input.as_bytes()).expect("ECDSA signing does not fail with a valid key");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// The claims of a token this signer issued, if its signature, issuer and
    /// validity period check out at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Option<Claims> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, payload) = signing_input.split_once('.')?;
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg")?.as_str()? != "ES256" {
            return None;
        }
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        public.verify(signing_input.as_bytes(), &URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (claims.iss == ISSUER && claims.nbf <= now && now < claims.exp).then_some(claims)
    }
}

/// Shortest and default lifetimes of requested tokens, as upstream.
const MIN_EXPIRATION_SECONDS: i64 = 600;
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Claims for a token of service account `sa` (a stored object) valid for `seconds`.
pub fn claims_for(sa: &Value, audiences: Vec<String>, seconds: i64, pod: Option<ObjectClaim>, secret: Option<ObjectClaim>) -> Claims {
    let now = now_seconds();
    Claims {
        iss: ISSUER.into(),
        sub: format!("system:serviceaccount:{}:{}", sa.namespace(), sa.name()),
        aud: if audiences.is_empty() { vec![DEFAULT_AUDIENCE.into()] } else { audiences },
        exp: now + seconds,
        iat: now,
        nbf: now,
        kubernetes: KubernetesClaims {
            namespace: sa.namespace().to_owned(),
            serviceaccount: ObjectClaim { name: sa.name().to_owned(), uid: sa.uid().to_owned() },
            pod,
            secret,
        },
    }
}

impl Ctx {
    /// `POST serviceaccounts/<name>/token`: a signed token for the account,
    /// optionally bound to a pod or secret.
    pub async fn token_request(&mut self, request: Value) -> ApiResult<Response> {
        let name = self.name()?.to_owned();
        let sa = self.get_object(&name).await?;
        let seconds = request.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(DEFAULT_EXPIRATION_SECONDS);
        if seconds < MIN_EXPIRATION_SECONDS {
            return Err(ApiError::invalid(
                "TokenRequest",
                "authentication.k8s.io",
                &name,
                &[FieldError::invalid("spec.expirationSeconds", seconds, "may not specify a duration less than 10 minutes")],
            ));
        }
        let audiences: Vec<String> = request
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let bound = request.pointer("/spec/boundObjectRef").filter(|b| b.is_object());
        let (mut pod, mut secret) = (None, None);
        if let Some(bound) = bound {
            let kind = bound.get("kind").and_then(Value::as_str).unwrap_or("");
            let bound_name = bound.get("name").and_then(Value::as_str).unwrap_or("");
            let plural = match kind {
                "Pod" => "pods",
                "Secret" => "secrets",
                other => {
                    return Err(ApiError::invalid(
                        "TokenRequest",
                        "authentication.k8s.io",
                        &name,
                        &[FieldError::not_supported("spec.boundObjectRef.kind", other, &["Pod", "Secret"])],
                    ));
                }
            };
            let resource = self.api.registry.lookup("", "v1", plural).expect("pods and secrets are served");
            let kv = self
                .api
                .store
                .get(&resource.key(self.namespace(), bound_name))
                .await
                .map_err(|e| ApiError::from_store(e, resource.error_name(), bound_name))?
                .ok_or_else(|| ApiError::not_found(resource.error_name(), bound_name))?;
            let object = decode_stored(&kv)?;
            let claim = ObjectClaim { name: bound_name.to_owned(), uid: object.uid().to_owned() };
            if kind == "Pod" { pod = Some(claim) } else { secret = Some(claim) }
        }
        let claims = claims_for(&sa, audiences, seconds, pod, secret);
        let token = self.api.signer.sign(&claims);
        let mut response = request.clone();
        response["apiVersion"] = json!("authentication.k8s.io/v1");
        response["kind"] = json!("TokenRequest");
        response["metadata"] = json!({ "name": name, "namespace": self.namespace(), "creationTimestamp": null });
        response["spec"]["audiences"] = json!(claims.aud);
        response["spec"]["expirationSeconds"] = json!(seconds);
        response["status"] = json!({
            "token": token,
            "expirationTimestamp": format_time(jiff::Timestamp::from_second(claims.exp).unwrap_or(jiff::Timestamp::MAX)),
        });
        Ok(codec::respond(StatusCode::CREATED, &response, if self.output == Output::Yaml { Output::Yaml } else { Output::Json }))
    }
}

/// The identity behind a service account token, if it is valid and the account
/// (and the pod or secret it is bound to) still exists with the same uid.
pub async fn authenticate(api: &Api, token: &str) -> Option<Identity> {
    let claims = api.signer.verify(token, now_seconds())?;
    let k = &claims.kubernetes;
    let exists = |plural: &'static str, name: String, uid: String| async move {
        let resource = api.registry.lookup("", "v1", plural)?;
        let kv = api.store.get(&resource.key(&k.namespace, &name)).await.ok()??;
        (decode_stored(&kv).ok()?.uid() == uid).then_some(())
    };
    exists("serviceaccounts", k.serviceaccount.name.clone(), k.serviceaccount.uid.clone()).await?;
    if let Some(pod) = &k.pod {
        exists("pods", pod.name.clone(), pod.uid.clone()).await?;
    }
    if let Some(secret) = &k.secret {
        exists("secrets", secret.name.clone(), secret.uid.clone()).await?;
    }
    Some(Identity {
        user: claims.sub.clone(),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{}", k.namespace), "system:authenticated".into()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:default:robot".into(),
            aud: vec![DEFAULT_AUDIENCE.into()],
            exp,
            iat: 100,
            nbf: 100,
            kubernetes: KubernetesClaims {
                namespace: "default".into(),
                serviceaccount: ObjectClaim { name: "robot".into(), uid: "u1".into() },
                pod: None,
                secret: None,
            },
        }
    }

    #[test]
    fn tokens_verify_until_they_expire_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.key");
        let signer = TokenSigner::load_or_create(&path).unwrap();
        let token = signer.sign(&claims(200));
        assert_eq!(signer.verify(&token, 150), Some(claims(200)));
        assert_eq!(signer.verify(&token, 200), None, "expired");
        assert_eq!(signer.verify(&token, 50), None, "not yet valid");
        let reloaded = TokenSigner::load_or_create(&path).unwrap();
        assert!(reloaded.verify(&token, 150).is_some());
    }

    #[test]
    fn tampered_or_foreign_tokens_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let signer = TokenSigner::load_or_create(&dir.path().join("a.key")).unwrap();
        let other = TokenSigner::load_or_create(&dir.path().join("b.key")).unwrap();
        let token = signer.sign(&claims(200));
        assert_eq!(other.verify(&token, 150), None);
        let mut forged = claims(200);
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        let (head, _) = token.split_once('.').unwrap();
        let sig = token.rsplit_once('.').unwrap().1;
        let tampered = format!("{head}.{}.{sig}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()));
        assert_eq!(signer.verify(&tampered, 150), None);
        for junk in ["", "a.b", "a.b.c", "not a token"] {
            assert_eq!(signer.verify(junk, 150), None);
        }
    }
}

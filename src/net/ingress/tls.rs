//! TLS for the ingress proxy: the certificate for each host comes from the
//! `kubernetes.io/tls` Secret an Ingress's `tls` section names (chosen by SNI,
//! exact host first, then `*.` wildcard); connections naming no such host get
//! a self-signed default certificate, as ingress controllers serve a fake one.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The name in the default certificate.
const DEFAULT_CERT_NAME: &str = "rk-ingress.invalid";

/// Certificates by host name (wildcards stored as `*.example.com`).
pub type HostCertificates = HashMap<String, Arc<CertifiedKey>>;

#[derive(Debug)]
pub struct Certificates {
    by_host: RwLock<Arc<HostCertificates>>,
    fallback: Arc<CertifiedKey>,
}

impl Certificates {
    pub fn new() -> Result<Self, String> {
        Ok(Self { by_host: RwLock::new(Arc::default()), fallback: Arc::new(self_signed()?) })
    }

    pub fn replace(&self, by_host: HostCertificates) {
        *self.by_host.write().expect("certificates lock") = Arc::new(by_host);
    }

    /// The certificate for an SNI name: the host's, its wildcard's, or the default.
    fn for_name(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let by_host = self.by_host.read().expect("certificates lock").clone();
        let found = name.map(str::to_ascii_lowercase).and_then(|name| {
            let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            by_host.get(&name).or_else(|| wildcard.and_then(|w| by_host.get(&w))).cloned()
        });
        found.unwrap_or_else(|| self.fallback.clone())
    }

    /// A rustls configuration (ring provider, HTTP/1.1) choosing certificates by SNI.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.for_name(hello.server_name()))
    }
}

/// The certificates the served Ingresses name, the older Ingress winning a
/// host named twice. `secret` looks a Secret up by `namespace/name`.
pub fn collect(ingresses: &[&Ingress], secret: impl Fn(&str) -> Option<Arc<Secret>>) -> HostCertificates {
    let mut ordered = ingresses.to_vec();
    ordered.sort_by_key(|i| (i.metadata.creation_timestamp.as_ref().map(|t| t.0), i.metadata.namespace.clone(), i.metadata.name.clone()));
    let mut out = HostCertificates::new();
    for ing in ordered {
        let namespace = ing.metadata.namespace.as_deref().unwrap_or("");
        for tls in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
            let Some(name) = tls.secret_name.as_deref().filter(|n| !n.is_empty()) else { continue };
            let key = format!("{namespace}/{name}");
            let certified = match secret(&key).map(|s| certified_key(&s)) {
                Some(Ok(certified)) => Arc::new(certified),
                Some(Err(e)) => {
                    tracing::warn!(secret = %key, error = %e, "ingress TLS secret unusable");
                    continue;
                }
                None => continue,
            };
            for host in tls.hosts.iter().flatten() {
                out.entry(host.to_ascii_lowercase()).or_insert_with(|| certified.clone());
            }
        }
    }
    out
}

/// The chain and key of a `kubernetes.io/tls` Secret.
fn certified_key(secret: &Secret) -> Result<CertifiedKey, String> {
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return Err(format!("type is {:?}, not {TLS_SECRET_TYPE}", secret.type_.as_deref().unwrap_or("")));
    }
    let data = secret.data.as_ref().ok_or("no data")?;
    let (cert, key) = (data.get("tls.crt").ok_or("no tls.crt")?, data.get("tls.key").ok_or("no tls.key")?);
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert.0.as_slice()).collect::<Result<_, _>>().map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = rustls_pemfile::private_key(&mut key.0.as_slice()).map_err(|e| format!("tls.key: {e}"))?.ok_or("tls.key holds no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("tls.key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

fn self_signed() -> Result<CertifiedKey, String> {
    let generated = rcgen::generate_simple_self_signed(vec![DEFAULT_CERT_NAME.to_owned()]).map_err(|e| format!("default ingress certificate: {e}"))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("default ingress key: {e}"))?;
    Ok(CertifiedKey::new(vec![generated.cert.der().clone()], signer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::networking::v1::{IngressSpec, IngressTLS};

    fn tls_secret(host: &str) -> Arc<Secret> {
        let generated = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
        let mut secret = Secret { type_: Some(TLS_SECRET_TYPE.into()), ..Default::default() };
        secret.data = Some(
            [
                ("tls.crt".to_owned(), ByteString(generated.cert.pem().into_bytes())),
                ("tls.key".to_owned(), ByteString(generated.signing_key.serialize_pem().into_bytes())),
            ]
            .into(),
        );
        Arc::new(secret)
    }

    fn ingress_with_tls(hosts: &[&str], secret: &str) -> Ingress {
        let mut ing = Ingress::default();
        ing.metadata.namespace = Some("shop".into());
        ing.spec = Some(IngressSpec {
            tls: Some(vec![IngressTLS { hosts: Some(hosts.iter().map(|h| h.to_string()).collect()), secret_name: Some(secret.into()) }]),
            ..Default::default()
        });
        ing
    }

    #[test]
    fn hosts_get_their_secrets_certificate_and_others_the_default() {
        let ing = ingress_with_tls(&["shop.example.com", "*.apps.example.com"], "shop-tls");
        let secret = tls_secret("shop.example.com");
        let certs = Certificates::new().unwrap();
        certs.replace(collect(&[&ing], |key| (key == "shop/shop-tls").then(|| secret.clone())));
        let fallback = certs.fallback.cert[0].clone();
        assert_ne!(certs.for_name(Some("shop.example.com")).cert[0], fallback);
        assert_ne!(certs.for_name(Some("a.apps.example.com")).cert[0], fallback);
        assert_eq!(certs.for_name(Some("other.example.com")).cert[0], fallback);
        assert_eq!(certs.for_name(None).cert[0], fallback);
    }

    #[test]
    fn secrets_of_the_wrong_type_or_without_keys_are_skipped() {
        let mut opaque = (*tls_secret("a.example.com")).clone();
        opaque.type_ = Some("Opaque".into());
        assert!(certified_key(&opaque).is_err());
        let mut empty = (*tls_secret("a.example.com")).clone();
        empty.data = None;
        assert!(certified_key(&empty).is_err());
    }
}

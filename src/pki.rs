//! Cluster PKI: the certificates rk keeps in its data dir, k3s-style.
//!
//! The API server needs a CA that every node and client can pin, a serving
//! certificate whose SANs match however the server is reached, and client
//! certificates that carry a Kubernetes identity (CN = user, O = groups).
//! This module creates those files once, reuses them on later starts,
//! renews the leaf certificates when they no longer fit, and builds the
//! rustls server config that authenticates clients by certificate while
//! still letting bearer-token clients through.
//!
//! Files under the PKI dir: `ca.{crt,key}`, `server.{crt,key}`,
//! `admin.{crt,key}`. Keys are PKCS#8 PEM with mode 0600; certificates are
//! PEM with mode 0644; every write is atomic (temp file + rename).

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

const DAY_SECS: i64 = 24 * 60 * 60;
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 365;
/// Leaf certificates expiring sooner than this are re-issued on load.
const RENEW_BEFORE_DAYS: i64 = 30;
/// Backdate `notBefore` a little so peers with slightly slow clocks accept new certs.
const BACKDATE_SECS: i64 = 5 * 60;

/// Names the serving certificate always carries, on top of the requested ones.
const DEFAULT_SANS: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

const ADMIN_USER: &str = "system:admin";
const ADMIN_GROUP: &str = "system:masters";
const SERVER_CN: &str = "rk-apiserver";

/// Everything that can go wrong loading, creating or using the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid {what} in {}: {reason}", path.display())]
    InvalidFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{} exists but {} is missing; refusing to replace an existing CA (restore the file or remove both)", present.display(), missing.display())]
    IncompleteCa { present: PathBuf, missing: PathBuf },
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("invalid subject alternative name {name:?}: {reason}")]
    InvalidSan { name: String, reason: String },
    #[error("invalid client certificate subject: {0}")]
    InvalidSubject(String),
    #[error("certificate validity out of range: {0}")]
    Validity(String),
    #[error("failed to generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("failed to build TLS server config: {0}")]
    Tls(#[from] rustls::Error),
    #[error("failed to build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("failed to encode kubeconfig: {0}")]
    Kubeconfig(#[from] serde_yaml::Error),
}

/// The cluster's CA plus the API server's serving and admin client certificates.
pub struct Pki {
    ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    ca_issuer: Issuer<'static, KeyPair>,
    server_cert_pem: String,
    server_key_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Pki")
            .field("ca_sha256", &self.ca_sha256_hex())
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM.
struct Pair {
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    /// Loads the PKI from `dir`, creating whatever is missing.
    ///
    /// The CA is created once and never replaced. The serving certificate is
    /// re-issued when it does not cover `sans` (plus the built-in names), was
    /// not issued by this CA, or expires within 30 days. The admin client
    /// certificate is re-issued only when missing, not from this CA, or close
    /// to expiry. Unreadable or corrupt files, a CA with only one of its two
    /// files, or a key that does not match its certificate are errors.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        ensure_dir(dir)?;
        let wanted_sans = parse_sans(sans)?;

        let (ca_cert_pem, ca_key) = load_or_create_ca(dir)?;
        let ca_cert_der = first_cert_der(&ca_cert_pem, &dir.join("ca.crt"))?;
        let ca_issuer =
            Issuer::from_ca_cert_der(&ca_cert_der, ca_key).map_err(|e| PkiError::InvalidFile {
                what: "CA certificate",
                path: dir.join("ca.crt"),
                reason: e.to_string(),
            })?;
        let ca_subject = parse_cert(&ca_cert_der, &dir.join("ca.crt"))?
            .subject()
            .as_raw()
            .to_vec();

        let ctx = LeafCtx {
            dir,
            issuer: &ca_issuer,
            ca_subject: &ca_subject,
        };
        let server = ctx.load_or_issue(
            "server",
            &|issuer| issue_leaf(&server_params(&wanted_sans)?, issuer),
            &|cert| covers_sans(cert, &wanted_sans),
        )?;
        let admin = ctx.load_or_issue(
            "admin",
            &|issuer| issue_client_leaf(ADMIN_USER, Some(ADMIN_GROUP), issuer),
            &|_| true,
        )?;

        Ok(Pki {
            ca_cert_pem,
            ca_cert_der,
            ca_issuer,
            server_cert_pem: server.cert_pem,
            server_key_pem: server.key_pem,
            admin_cert_pem: admin.cert_pem,
            admin_key_pem: admin.key_pem,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex (the `K10<hash>` part of join tokens).
    pub fn ca_sha256_hex(&self) -> String {
        sha256_hex(self.ca_cert_der.as_ref())
    }

    /// The admin (`system:admin` / `system:masters`) client certificate, PEM.
    pub fn admin_cert_pem(&self) -> &str {
        &self.admin_cert_pem
    }

    /// The admin client certificate's private key, PKCS#8 PEM.
    pub fn admin_key_pem(&self) -> &str {
        &self.admin_key_pem
    }

    /// Issues a fresh one-year client certificate (CN = user, O = groups) signed
    /// by the CA. Returns `(cert_pem, key_pem)`; nothing is written to disk.
    pub fn issue_client_cert(
        &self,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<(String, String), PkiError> {
        let pair = issue_client_leaf(common_name, organization, &self.ca_issuer)?;
        Ok((pair.cert_pem, pair.key_pem))
    }

    /// Issues a fresh one-year serving certificate for `names` only (none of
    /// the API server's names), e.g. a node agent's. Returns `(cert_pem, key_pem)`.
    pub fn issue_serving_cert(&self, common_name: &str, names: &[String]) -> Result<(String, String), PkiError> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut params = server_params(&parse_names(&names)?)?;
        params.distinguished_name = dn(common_name, None);
        let pair = issue_leaf(&params, &self.ca_issuer)?;
        Ok((pair.cert_pem, pair.key_pem))
    }

    /// TLS server config for the API server: the serving certificate, ALPN
    /// `http/1.1`, and optional client certificates verified against the CA.
    ///
    /// Clients without a certificate are let through (they authenticate with
    /// bearer tokens); a presented certificate must chain to the CA, and the
    /// verified leaf is then available from the connection's
    /// `peer_certificates()` for [`identity_from_client_cert`].
    pub fn server_config(&self) -> Result<ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert_der.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;

        let mem = Path::new("<server certificate>");
        let mut chain = vec![first_cert_der(&self.server_cert_pem, mem)?];
        chain.push(self.ca_cert_der.clone());
        let key = private_key_der(&self.server_key_pem, mem)?;

        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A TLS server config (HTTP/1.1) serving `cert_pem` that accepts only
/// clients presenting a certificate issued by `ca_pem`, as a node agent's
/// endpoint does (its callers are identified by their certificate).
pub fn mutual_tls_server_config(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<ServerConfig, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mem = Path::new("<certificate in memory>");
    let mut roots = RootCertStore::empty();
    roots.add(first_cert_der(ca_pem, mem)?)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = vec![first_cert_der(cert_pem, mem)?];
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key_der(key_pem, mem)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS client config trusting only `ca_pem`, presenting `cert_pem` when given.
pub fn tls_client_config(ca_pem: &str, client: Option<(&str, &str)>) -> Result<rustls::ClientConfig, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mem = Path::new("<certificate in memory>");
    let mut roots = RootCertStore::empty();
    roots.add(first_cert_der(ca_pem, mem)?)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(vec![first_cert_der(cert, mem)?], private_key_der(key, mem)?)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// SHA-256 of the first certificate in `pem`, lowercase hex (what join tokens pin).
pub fn cert_sha256_hex(pem: &str) -> Result<String, PkiError> {
    Ok(sha256_hex(first_cert_der(pem, Path::new("<certificate in memory>"))?.as_ref()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The Kubernetes identity in a client certificate: `(user, groups)` from the
/// subject's CN and O values. Returns `None` for unparseable DER or an empty CN.
///
/// This does not verify anything: pass only certificates that the TLS stack
/// has already verified against the CA (e.g. from `peer_certificates()`).
pub fn identity_from_client_cert(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?;
    if user.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    Some((user.to_owned(), groups))
}

/// Writes a kubeconfig whose cluster, user and context are all named
/// `default`, embedding the PEMs as base64 `*-data` fields. The file gets
/// mode 0600, parent directories are created, and the write is atomic.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
) -> Result<(), PkiError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: "default",
            cluster: KubeCluster {
                server: server_url.to_owned(),
                certificate_authority_data: b64(ca_pem),
            },
        }],
        users: vec![NamedUser {
            name: "default",
            user: KubeUser {
                client_certificate_data: b64(client_cert_pem),
                client_key_data: b64(client_key_pem),
            },
        }],
        contexts: vec![NamedContext {
            name: "default",
            context: KubeContext {
                cluster: "default",
                user: "default",
            },
        }],
        current_context: "default",
    };
    let yaml = serde_yaml::to_string(&config)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    }
    write_atomic(path, yaml.as_bytes(), 0o600)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kubeconfig {
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<Named>,
    users: Vec<NamedUser>,
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    current_context: &'static str,
}

#[derive(Serialize)]
struct Named {
    name: &'static str,
    cluster: KubeCluster,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct KubeCluster {
    server: String,
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct NamedUser {
    name: &'static str,
    user: KubeUser,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct KubeUser {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Serialize)]
struct NamedContext {
    name: &'static str,
    context: KubeContext,
}

#[derive(Serialize)]
struct KubeContext {
    cluster: &'static str,
    user: &'static str,
}

// ---------------------------------------------------------------------------
// CA and leaf certificates

fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), PkiError> {
    let (crt_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (read_optional(&crt_path)?, read_optional_key(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => {
            let key = parse_key(&key_pem, &key_path)?;
            let der = first_cert_der(&cert_pem, &crt_path)?;
            let cert = parse_cert(&der, &crt_path)?;
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(PkiError::KeyMismatch {
                    cert: crt_path,
                    key: key_path,
                });
            }
            Ok((cert_pem, key))
        }
        (None, None) => {
            let now = unix_now();
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(&format!("rk-ca@{now}"), None);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
            set_validity(&mut params, now, CA_VALIDITY_DAYS)?;
            let key = generate_key("CA key")?;
            let cert = params
                .self_signed(&key)
                .map_err(|source| PkiError::Generate {
                    what: "CA certificate",
                    source,
                })?;
            let cert_pem = cert.pem();
            // Key first: a crash in between leaves "key without cert", which
            // is reported rather than silently replaced by a new CA.
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomic(&crt_path, cert_pem.as_bytes(), 0o644)?;
            tracing::info!(path = %crt_path.display(), "created cluster CA");
            Ok((cert_pem, key))
        }
        (Some(_), None) => Err(PkiError::IncompleteCa {
            present: crt_path,
            missing: key_path,
        }),
        (None, Some(_)) => Err(PkiError::IncompleteCa {
            present: key_path,
            missing: crt_path,
        }),
    }
}

/// What a leaf certificate needs to be checked against, or issued by.
struct LeafCtx<'a> {
    dir: &'a Path,
    issuer: &'a Issuer<'static, KeyPair>,
    ca_subject: &'a [u8],
}

impl LeafCtx<'_> {
    /// Reuses `<name>.crt`/`<name>.key` when they belong together, were issued
    /// by this CA, are not close to expiry and pass `fits`; else issues anew.
    fn load_or_issue(
        &self,
        name: &str,
        issue: &dyn Fn(&Issuer<'static, KeyPair>) -> Result<Pair, PkiError>,
        fits: &dyn Fn(&X509Certificate<'_>) -> bool,
    ) -> Result<Pair, PkiError> {
        let crt_path = self.dir.join(format!("{name}.crt"));
        let key_path = self.dir.join(format!("{name}.key"));
        if let (Some(cert_pem), Some(key_pem)) =
            (read_optional(&crt_path)?, read_optional_key(&key_path)?)
        {
            let key = parse_key(&key_pem, &key_path)?;
            let der = first_cert_der(&cert_pem, &crt_path)?;
            let cert = parse_cert(&der, &crt_path)?;
            let matches_key =
                cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw();
            let from_ca = cert.issuer().as_raw() == self.ca_subject;
            let fresh =
                cert.validity().not_after.timestamp() > unix_now() + RENEW_BEFORE_DAYS * DAY_SECS;
            if matches_key && from_ca && fresh && fits(&cert) {
                return Ok(Pair { cert_pem, key_pem });
            }
            tracing::info!(
                path = %crt_path.display(),
                matches_key, from_ca, fresh,
                "re-issuing certificate"
            );
        }
        let pair = issue(self.issuer)?;
        write_atomic(&key_path, pair.key_pem.as_bytes(), 0o600)?;
        write_atomic(&crt_path, pair.cert_pem.as_bytes(), 0o644)?;
        Ok(pair)
    }
}

fn server_params(sans: &[SanType]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(SERVER_CN, None);
    params.subject_alt_names = sans.to_vec();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, unix_now(), LEAF_VALIDITY_DAYS)?;
    Ok(params)
}

/// Issues a client certificate with subject O=`organization`, CN=`common_name`.
fn issue_client_leaf(
    common_name: &str,
    organization: Option<&str>,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Pair, PkiError> {
    if common_name.is_empty() {
        return Err(PkiError::InvalidSubject("common name is empty".into()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name, organization);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, unix_now(), LEAF_VALIDITY_DAYS)?;
    issue_leaf(&params, issuer)
}

fn issue_leaf(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>) -> Result<Pair, PkiError> {
    let key = generate_key("certificate key")?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| PkiError::Generate {
            what: "certificate",
            source,
        })?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn generate_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what, source })
}

fn set_validity(params: &mut CertificateParams, now: i64, days: i64) -> Result<(), PkiError> {
    let at = |secs: i64| {
        ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|e| PkiError::Validity(e.to_string()))
    };
    params.not_before = at(now - BACKDATE_SECS)?;
    params.not_after = at(now + days * DAY_SECS)?;
    Ok(())
}

/// The serving certificate's SANs: the requested names plus the built-in ones, deduplicated.
fn parse_sans(requested: &[String]) -> Result<Vec<SanType>, PkiError> {
    let names: Vec<&str> = requested.iter().map(|s| s.as_str()).chain(DEFAULT_SANS.iter().copied()).collect();
    parse_names(&names)
}

/// Host names and IP addresses as SANs, deduplicated.
fn parse_names(names: &[&str]) -> Result<Vec<SanType>, PkiError> {
    let mut out: Vec<SanType> = Vec::new();
    for name in names.iter().map(|s| s.trim()).filter(|n| !n.is_empty()) {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        let san = match bare.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let dns = name.to_ascii_lowercase();
                let valid = dns
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.*_".contains(&b));
                if !valid {
                    return Err(PkiError::InvalidSan {
                        name: name.to_owned(),
                        reason: "not an IP address or a DNS name".into(),
                    });
                }
                SanType::DnsName(dns.try_into().map_err(|e: rcgen::Error| {
                    PkiError::InvalidSan {
                        name: name.to_owned(),
                        reason: e.to_string(),
                    }
                })?)
            }
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    Ok(out)
}

/// Whether every wanted SAN is present in `cert`.
fn covers_sans(cert: &X509Certificate<'_>, wanted: &[SanType]) -> bool {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return false;
    };
    let names = &ext.value.general_names;
    wanted.iter().all(|san| {
        names.iter().any(|have| match (san, have) {
            (SanType::DnsName(want), GeneralName::DNSName(have)) => {
                want.as_str().eq_ignore_ascii_case(have)
            }
            (SanType::IpAddress(want), GeneralName::IPAddress(have)) => {
                ip_from_bytes(have) == Some(*want)
            }
            _ => false,
        })
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Minimal DER editing, for subjects with several O values (Kubernetes groups)

fn parse_key(pem: &str, path: &Path) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|e| PkiError::InvalidFile {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn first_cert_der(pem: &str, path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let invalid = |reason: String| PkiError::InvalidFile {
        what: "certificate",
        path: path.to_owned(),
        reason,
    };
    match rustls_pemfile::certs(&mut pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(invalid(e.to_string())),
        None => Err(invalid("no PEM CERTIFICATE block".into())),
    }
}

fn private_key_der(pem: &str, path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let invalid = |reason: String| PkiError::InvalidFile {
        what: "private key",
        path: path.to_owned(),
        reason,
    };
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("no PEM private key block".into()))
}

fn parse_cert<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::InvalidFile {
            what: "certificate",
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

// ---------------------------------------------------------------------------
// Filesystem helpers

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PkiError {
    let path = path.to_owned();
    move |source| PkiError::Io {
        action,
        path,
        source,
    }
}

fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// Reads a file as UTF-8, `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| PkiError::InvalidFile {
                what: "PEM file",
                path: path.to_owned(),
                reason: "not UTF-8 text".into(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Like [`read_optional`], and tightens the key file's mode to 0600 if it was looser.
fn read_optional_key(path: &Path) -> Result<Option<String>, PkiError> {
    let contents = read_optional(path)?;
    if contents.is_some() {
        let meta = fs::metadata(path).map_err(io_err("stat", path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key was readable by others; setting mode 0600");
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(io_err("set permissions on", path))?;
        }
    }
    Ok(contents)
}

/// Writes `data` to `path` via a temp file in the same directory and a
/// rename, so readers see either the old or the new file, never a partial one.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err("write", path)(io::Error::other("path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);

    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        // The mode given to open() is filtered by the umask; make it exact.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("set permissions on", &tmp))?;
        file.write_all(data).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Persist the rename; best effort.
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    result
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn sans(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap()
    }

    fn der_of(pem: &str) -> CertificateDer<'static> {
        first_cert_der(pem, Path::new("test")).unwrap()
    }

    /// SANs of a PEM certificate as strings ("10.0.0.1", "example.com").
    fn sans_of(pem: &str) -> Vec<String> {
        let der = der_of(pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert.subject_alternative_name().unwrap().unwrap();
        ext.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(b) => ip_from_bytes(b).unwrap().to_string(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect()
    }

    #[test]
    fn ca_is_reused_across_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let first = Pki::load_or_create(&dir, &[]).unwrap();
        let second = Pki::load_or_create(&dir, &sans(&["10.1.2.3"])).unwrap();
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(first.ca_sha256_hex(), second.ca_sha256_hex());
        assert_eq!(first.admin_cert_pem(), second.admin_cert_pem());
        assert_eq!(first.ca_sha256_hex().len(), 64);
        assert!(
            first
                .ca_sha256_hex()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );

        let der = der_of(first.ca_pem());
        let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = ca
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert!(cn.starts_with("rk-ca@"), "{cn}");
        assert!(ca.is_ca());
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn server_cert_regenerated_for_new_san_and_reused_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        Pki::load_or_create(dir, &sans(&["10.0.0.1"])).unwrap();
        let original = read(dir, "server.crt");

        // Same request, and a subset of it (defaults only): reused.
        Pki::load_or_create(dir, &sans(&["10.0.0.1"])).unwrap();
        Pki::load_or_create(dir, &[]).unwrap();
        assert_eq!(read(dir, "server.crt"), original);

        // A new name: re-issued, key replaced too.
        let old_key = read(dir, "server.key");
        Pki::load_or_create(dir, &sans(&["10.0.0.1", "rk.example.com"])).unwrap();
        let renewed = read(dir, "server.crt");
        assert_ne!(renewed, original);
        assert_ne!(read(dir, "server.key"), old_key);
        assert!(sans_of(&renewed).contains(&"rk.example.com".to_string()));
    }

    #[test]
    fn server_cert_regenerated_when_expiring_soon() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pki = Pki::load_or_create(dir, &[]).unwrap();
        let mut params = server_params(&parse_sans(&[]).unwrap()).unwrap();
        set_validity(&mut params, unix_now(), 10).unwrap();
        let short = issue_leaf(&params, &pki.ca_issuer).unwrap();
        fs::write(dir.join("server.crt"), &short.cert_pem).unwrap();
        fs::write(dir.join("server.key"), &short.key_pem).unwrap();

        Pki::load_or_create(dir, &[]).unwrap();
        assert_ne!(read(dir, "server.crt"), short.cert_pem);
    }

    #[test]
    fn server_cert_has_requested_and_default_sans() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(
            tmp.path(),
            &sans(&["192.168.5.10", "node-1.lan", "fd00::5"]),
        )
        .unwrap();
        let got = sans_of(&pki.server_cert_pem);
        for want in [
            "192.168.5.10",
            "node-1.lan",
            "fd00::5",
            "localhost",
            "127.0.0.1",
            "::1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want} in {got:?}");
        }
        let der = der_of(&pki.server_cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
    }

    #[test]
    fn invalid_san_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Pki::load_or_create(tmp.path(), &sans(&["not a name!"])).unwrap_err();
        assert!(matches!(err, PkiError::InvalidSan { .. }), "{err}");
    }

    #[test]
    fn admin_identity_is_system_admin_in_system_masters() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(tmp.path(), &[]).unwrap();
        let id = identity_from_client_cert(&der_of(pki.admin_cert_pem()));
        assert_eq!(
            id,
            Some((
                "system:admin".to_string(),
                vec!["system:masters".to_string()]
            ))
        );
    }

    #[test]
    fn issued_client_cert_carries_identity_and_groups() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(tmp.path(), &[]).unwrap();
        let (cert, key) = pki
            .issue_client_cert("system:node:worker-1", Some("system:nodes"))
            .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let id = identity_from_client_cert(&der_of(&cert)).unwrap();
        assert_eq!(id.0, "system:node:worker-1");
        assert_eq!(id.1, vec!["system:nodes"]);
        assert!(pki.issue_client_cert("", None).is_err());
        assert_eq!(identity_from_client_cert(b"garbage"), None);
    }

    #[test]
    fn key_files_are_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        Pki::load_or_create(dir, &[]).unwrap();
        for name in ["ca.key", "server.key", "admin.key"] {
            let mode = fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        // A loosened key is tightened again on load.
        fs::set_permissions(dir.join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
        Pki::load_or_create(dir, &[]).unwrap();
        let mode = fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn bad_or_incomplete_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        Pki::load_or_create(dir, &[]).unwrap();

        fs::write(dir.join("ca.crt"), "not a certificate").unwrap();
        let err = Pki::load_or_create(dir, &[]).unwrap_err();
        assert!(matches!(err, PkiError::InvalidFile { .. }), "{err}");
        assert!(err.to_string().contains("ca.crt"), "{err}");

        fs::remove_file(dir.join("ca.crt")).unwrap();
        let err = Pki::load_or_create(dir, &[]).unwrap_err();
        assert!(matches!(err, PkiError::IncompleteCa { .. }), "{err}");

        let other = tempfile::tempdir().unwrap();
        Pki::load_or_create(other.path(), &[]).unwrap();
        fs::copy(other.path().join("ca.crt"), dir.join("ca.crt")).unwrap();
        let err = Pki::load_or_create(dir, &[]).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn kubeconfig_parses_back_with_expected_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(&tmp.path().join("pki"), &[]).unwrap();
        let path = tmp.path().join("nested/dir/kubeconfig.yaml");
        write_kubeconfig(
            &path,
            "https://127.0.0.1:6443",
            pki.ca_pem(),
            pki.admin_cert_pem(),
            pki.admin_key_pem(),
        )
        .unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let doc: serde_yaml::Value =
            serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let b64 = |v: &serde_yaml::Value| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            String::from_utf8(bytes).unwrap()
        };
        assert_eq!(doc["apiVersion"], "v1");
        assert_eq!(doc["kind"], "Config");
        assert_eq!(doc["current-context"], "default");
        let cluster = &doc["clusters"][0];
        assert_eq!(cluster["name"], "default");
        assert_eq!(cluster["cluster"]["server"], "https://127.0.0.1:6443");
        assert_eq!(
            b64(&cluster["cluster"]["certificate-authority-data"]),
            pki.ca_pem()
        );
        let user = &doc["users"][0];
        assert_eq!(user["name"], "default");
        assert_eq!(
            b64(&user["user"]["client-certificate-data"]),
            pki.admin_cert_pem()
        );
        assert_eq!(b64(&user["user"]["client-key-data"]), pki.admin_key_pem());
        let ctx = &doc["contexts"][0];
        assert_eq!(ctx["name"], "default");
        assert_eq!(ctx["context"]["cluster"], "default");
        assert_eq!(ctx["context"]["user"], "default");

        // No temp files left behind.
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }

    /// Handshakes with `server_config()`, optionally presenting a client
    /// certificate; returns the identity the server saw.
    async fn handshake(
        pki: &Pki,
        client_ca_pem: &str,
        client_cert: Option<(&str, &str)>,
    ) -> Result<Option<(String, Vec<String>)>, String> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config().unwrap()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            let identity = conn
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| identity_from_client_cert(leaf));
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(identity)
        });

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(der_of(client_ca_pem)).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![der_of(cert)],
                    private_key_der(key, Path::new("test")).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

        let client = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"pong");
            Ok::<_, String>(())
        };
        let client_result = client.await;
        let server_result = server.await.unwrap();
        client_result?;
        server_result
    }

    #[tokio::test]
    async fn tls_accepts_clients_with_and_without_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(tmp.path(), &[]).unwrap();

        let anonymous = handshake(&pki, pki.ca_pem(), None).await.unwrap();
        assert_eq!(anonymous, None);

        let admin = handshake(
            &pki,
            pki.ca_pem(),
            Some((pki.admin_cert_pem(), pki.admin_key_pem())),
        )
        .await
        .unwrap();
        assert_eq!(
            admin,
            Some((
                "system:admin".to_string(),
                vec!["system:masters".to_string()]
            ))
        );

        // A node certificate issued later verifies and carries its identity.
        let (node_cert, node_key) = pki
            .issue_client_cert("system:node:n1", Some("system:nodes"))
            .unwrap();
        let node = handshake(&pki, pki.ca_pem(), Some((&node_cert, &node_key)))
            .await
            .unwrap();
        assert_eq!(
            node,
            Some((
                "system:node:n1".to_string(),
                vec!["system:nodes".to_string()]
            ))
        );

        // A client certificate from a different CA is refused, not ignored.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Pki::load_or_create(other_dir.path(), &[]).unwrap();
        let foreign = handshake(
            &pki,
            pki.ca_pem(),
            Some((other.admin_cert_pem(), other.admin_key_pem())),
        )
        .await;
        assert!(foreign.is_err(), "{foreign:?}");
    }

    #[test]
    fn pki_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pki>();
    }
}

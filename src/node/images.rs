//! Images on the node: the sandbox image rk builds itself (the embedded static
//! `pause` program imported as `rk/pause:<version>`, so nothing is pulled for
//! it), and pulls of pod images by their pull policy, with registry
//! credentials from the pod's `imagePullSecrets` and the kubelet's back-off,
//! waiting reasons and events.

use super::backoff::Backoff;
use super::docker::{self, Runtime};
use crate::runtime::{EventType, Recorder};
use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptions;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The statically linked pause program built by build.rs.
const PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));
const PAUSE_REPOSITORY: &str = "rk/pause";

pub fn pause_image() -> String {
    format!("{PAUSE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Why a container cannot start yet, as its waiting state reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: &'static str,
    pub message: String,
}

/// What a container's status says about its image.
#[derive(Clone, Debug, Default)]
pub struct ImageInfo {
    /// `sha256:…`
    pub id: String,
    /// A pullable reference by digest when the image came from a registry, else its id.
    pub status_id: String,
    /// The user the image runs as by default.
    pub user: String,
}

/// One tar archive holding a single executable file, as `docker import` takes it.
fn single_file_tar(name: &str, mode: u32, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut put = |offset: usize, field: &[u8]| header[offset..offset + field.len()].copy_from_slice(field);
    put(0, name.as_bytes());
    put(100, format!("{mode:07o}\0").as_bytes());
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", content.len()).as_bytes());
    put(136, format!("{:011o}\0", 0).as_bytes());
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let checksum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// `name[:tag]` or `name@digest` split into what Docker's pull API takes; a
/// missing tag is `latest` (an empty tag would pull every tag).
pub fn pull_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_owned(), None);
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (image[..slash + i].to_owned(), Some(image[slash + i + 1..].to_owned())),
        None => (image.to_owned(), Some("latest".to_owned())),
    }
}

/// The registry host an image comes from (`docker.io` for unqualified names).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_owned(),
        _ => "docker.io".to_owned(),
    }
}

fn normalize_registry(key: &str) -> String {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}

/// Credentials for `image` from `kubernetes.io/dockerconfigjson` (or legacy
/// `dockercfg`) secrets, in the order the pod lists them.
pub fn credentials_for(image: &str, secrets: &[Arc<Secret>]) -> Vec<DockerCredentials> {
    use base64::Engine;
    let registry = registry_of(image);
    let mut out = Vec::new();
    for secret in secrets {
        let data = secret.data.clone().unwrap_or_default();
        let auths = if let Some(json) = data.get(".dockerconfigjson") {
            serde_json::from_slice::<serde_json::Value>(&json.0).ok().and_then(|v| v.get("auths").cloned())
        } else {
            data.get(".dockercfg").and_then(|json| serde_json::from_slice(&json.0).ok())
        };
        let Some(serde_json::Value::Object(auths)) = auths else { continue };
        for (key, entry) in auths {
            if normalize_registry(&key) != registry {
                continue;
            }
            let field = |f: &str| entry.get(f).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_owned);
            let (mut username, mut password) = (field("username"), field("password"));
            if let Some(auth) = field("auth")
                && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(auth)
                && let Some((u, p)) = String::from_utf8_lossy(&decoded).split_once(':')
            {
                username.get_or_insert_with(|| u.to_owned());
                password.get_or_insert_with(|| p.to_owned());
            }
            out.push(DockerCredentials { username, password, serveraddress: Some(key.clone()), ..Default::default() });
        }
    }
    out
}

pub struct Images {
    runtime: Runtime,
    pulls: Backoff,
    /// imageID to report per image id, learned from Docker once.
    status_ids: Mutex<HashMap<String, String>>,
    /// One pull per image at a time; the sandbox image is one of them.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Images {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime, pulls: Backoff::default(), status_ids: Mutex::new(HashMap::new()), in_flight: Mutex::new(HashMap::new()) }
    }

    fn lock_for(&self, image: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.in_flight.lock().expect("pulls lock").entry(image.to_owned()).or_default().clone()
    }

    /// The image's details, or `None` if it is not on the node.
    pub async fn inspect(&self, image: &str) -> Result<Option<ImageInfo>, docker::Error> {
        match self.runtime.docker().inspect_image(image).await {
            Ok(i) => {
                let id = i.id.unwrap_or_default();
                let status_id = i.repo_digests.and_then(|d| d.into_iter().next()).unwrap_or_else(|| id.clone());
                let user = i.config.and_then(|c| c.user).unwrap_or_default();
                Ok(Some(ImageInfo { id, status_id, user }))
            }
            Err(e) if docker::is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes sure the sandbox image exists, importing it from the embedded binary.
    pub async fn ensure_pause(&self) -> Result<String, docker::Error> {
        let image = pause_image();
        let lock = self.lock_for(&image);
        let _guard = lock.lock().await;
        if self.inspect(&image).await?.is_some() {
            return Ok(image);
        }
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(PAUSE_REPOSITORY.into()),
            tag: Some(env!("CARGO_PKG_VERSION").into()),
            changes: vec![r#"ENTRYPOINT ["/pause"]"#.into()],
            ..Default::default()
        };
        let tar = single_file_tar("pause", 0o755, PAUSE_BINARY);
        let mut progress = self.runtime.docker().create_image(Some(options), Some(bollard::body_full(tar.into())), None).boxed();
        while let Some(step) = progress.next().await {
            step.map_err(|e| format!("importing the sandbox image {image}: {}", docker::message(&e)))?;
        }
        tracing::info!(image, "sandbox image imported");
        Ok(image)
    }

    /// Makes `image` present as `policy` asks, pulling it with `credentials`;
    /// records the kubelet's events on `object` (the container).
    pub async fn ensure(
        &self,
        image: &str,
        policy: &str,
        backoff_key: &str,
        credentials: Vec<DockerCredentials>,
        recorder: &Recorder,
        object: &ObjectReference,
    ) -> Result<ImageInfo, Waiting> {
        let failed = |message: String| Waiting { reason: "ErrImagePull", message };
        let present = self.inspect(image).await.map_err(|e| failed(e.to_string()))?;
        match (policy, present) {
            ("Always", _) => {}
            (_, Some(info)) => {
                recorder.record(object.clone(), EventType::Normal, "Pulled", format!("Container image \"{image}\" already present on machine"));
                return Ok(info);
            }
            ("Never", None) => {
                let message = format!("Container image \"{image}\" is not present with pull policy of Never");
                recorder.record(object.clone(), EventType::Warning, "ErrImageNeverPull", message.clone());
                return Err(Waiting { reason: "ErrImageNeverPull", message });
            }
            _ => {}
        }
        let now = Timestamp::now();
        if self.pulls.remaining(backoff_key, now).is_some() {
            let message = format!("Back-off pulling image \"{image}\"");
            recorder.record(object.clone(), EventType::Normal, "BackOff", message.clone());
            recorder.record(object.clone(), EventType::Warning, "Failed", "Error: ImagePullBackOff");
            return Err(Waiting { reason: "ImagePullBackOff", message });
        }
        let lock = self.lock_for(image);
        let _guard = lock.lock().await;
        recorder.record(object.clone(), EventType::Normal, "Pulling", format!("Pulling image \"{image}\""));
        let started = Instant::now();
        match self.pull(image, credentials).await {
            Ok(()) => {
                self.pulls.reset(backoff_key);
                let info = self.inspect(image).await.map_err(|e| failed(e.to_string()))?.unwrap_or_default();
                let message = format!("Successfully pulled image \"{image}\" in {:.3}s", started.elapsed().as_secs_f64());
                recorder.record(object.clone(), EventType::Normal, "Pulled", message);
                Ok(info)
            }
            Err(e) => {
                self.pulls.next(backoff_key, Timestamp::now());
                let message = format!("Failed to pull image \"{image}\": {e}");
                recorder.record(object.clone(), EventType::Warning, "Failed", message.clone());
                recorder.record(object.clone(), EventType::Warning, "Failed", "Error: ErrImagePull");
                Err(failed(message))
            }
        }
    }

    /// Pulls with each credential in turn (anonymously when there are none).
    async fn pull(&self, image: &str, credentials: Vec<DockerCredentials>) -> Result<(), String> {
        let (from_image, tag) = pull_reference(image);
        let attempts: Vec<Option<DockerCredentials>> = if credentials.is_empty() { vec![None] } else { credentials.into_iter().map(Some).collect() };
        let mut last_error = String::new();
        for credential in attempts {
            let options = CreateImageOptions { from_image: Some(from_image.clone()), tag: tag.clone(), ..Default::default() };
            let mut progress = self.runtime.docker().create_image(Some(options), None, credential).boxed();
            let mut result = Ok(());
            while let Some(step) = progress.next().await {
                if let Err(e) = step {
                    result = Err(docker::message(&e));
                    break;
                }
            }
            match result {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// When a failed pull is worth trying again.
    pub fn pull_retry_in(&self, backoff_key: &str) -> std::time::Duration {
        self.pulls.remaining(backoff_key, Timestamp::now()).unwrap_or(super::backoff::INITIAL)
    }

    /// The imageID a container status reports for the image with `id`: its
    /// registry digest when it has one.
    pub async fn status_id(&self, id: &str) -> String {
        if let Some(known) = self.status_ids.lock().expect("status ids lock").get(id) {
            return known.clone();
        }
        match self.inspect(id).await {
            Ok(Some(info)) => {
                self.status_ids.lock().expect("status ids lock").insert(id.to_owned(), info.status_id.clone());
                info.status_id
            }
            _ => id.to_owned(),
        }
    }

    /// Forgets pull back-offs of a pod that is gone.
    pub fn forget_pod(&self, uid: &str) {
        self.pulls.forget_prefix(&format!("{uid}/"));
    }

    pub fn gc(&self) {
        self.pulls.gc(Timestamp::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn a_missing_tag_pulls_latest_not_every_tag() {
        assert_eq!(pull_reference("busybox"), ("busybox".into(), Some("latest".into())));
        assert_eq!(pull_reference("127.0.0.1:5000/a/b:1"), ("127.0.0.1:5000/a/b".into(), Some("1".into())));
        assert_eq!(pull_reference("127.0.0.1:5000/a/b"), ("127.0.0.1:5000/a/b".into(), Some("latest".into())));
        assert_eq!(pull_reference("a@sha256:00"), ("a@sha256:00".into(), None));
    }

    #[test]
    fn registries_are_recognized_by_host_like_first_components() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("127.0.0.1:5000/x:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("ghcr.io/o/x"), "ghcr.io");
    }

    #[test]
    fn dockerconfigjson_credentials_match_the_image_registry() {
        let config = serde_json::json!({ "auths": {
            "https://127.0.0.1:5000/v1/": { "auth": "dXNlcjpwYXNz" },
            "other.example": { "username": "o", "password": "p" },
        }});
        let secret = Secret {
            data: Some([(".dockerconfigjson".to_owned(), ByteString(config.to_string().into_bytes()))].into()),
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            ..Default::default()
        };
        let creds = credentials_for("127.0.0.1:5000/app:1", &[Arc::new(secret)]);
        assert_eq!(creds.len(), 1);
        assert_eq!(creds[0].username.as_deref(), Some("user"));
        assert_eq!(creds[0].password.as_deref(), Some("pass"));
        assert!(credentials_for("busybox", &[]).is_empty());
    }

    #[test]
    fn the_sandbox_tar_is_a_valid_single_file_archive() {
        let tar = single_file_tar("pause", 0o755, b"hello");
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[257..262], b"ustar");
        assert_eq!(&tar[512..517], b"hello");
        let stored: u32 = u32::from_str_radix(std::str::from_utf8(&tar[148..154]).unwrap(), 8).unwrap();
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|b| u32::from(*b)).sum::<u32>());
    }
}

//! Pod volumes on the node, under `<data-dir>/pods/<uid>/volumes/`: emptyDir
//! (a directory, or a tmpfs for `medium: Memory`), hostPath with its type
//! checks, and the projected kinds (configMap, secret, downwardAPI,
//! projected) whose files are rewritten atomically whenever their source
//! changes, the kubelet's way: a fresh timestamped directory, a `..data`
//! symlink swapped onto it with one rename, and user-visible names that are
//! symlinks through `..data`.

use super::host::Capacity;
use super::sources::{self, Lookup, PodAddresses};
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIVolumeFile, HostPathVolumeSource, KeyToPath, Pod, SecretProjection, Volume,
};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const DEFAULT_MODE: u32 = 0o644;
const DATA_LINK: &str = "..data";
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A volume ready to be bind-mounted.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub host_path: PathBuf,
    /// Projected content is always mounted read-only.
    pub read_only: bool,
}

pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

fn volume_dir(data_dir: &Path, uid: &str, plugin: &str, name: &str) -> PathBuf {
    pod_dir(data_dir, uid).join("volumes").join(format!("kubernetes.io~{plugin}")).join(name)
}

fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out-pointer.
    unsafe { libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == TMPFS_MAGIC }
}

fn mount_tmpfs(path: &Path, size: Option<i128>) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if is_tmpfs(path) {
        return Ok(());
    }
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut options = "mode=1777".to_owned();
    if let Some(bytes) = size.filter(|b| *b > 0) {
        options.push_str(&format!(",size={bytes}"));
    }
    let options = std::ffi::CString::new(options)?;
    // SAFETY: valid NUL-terminated strings; mount(2) does not keep the pointers.
    let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, options.as_ptr().cast()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A relative path that stays inside the volume.
fn safe_relative(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_))) && !path.starts_with("..")
}

/// Files to project: relative path → (content, mode).
type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Writes `payload` into `dir` atomically; does nothing when it is unchanged.
pub fn write_atomic(dir: &Path, payload: &Payload) -> io::Result<()> {
    create_dir(dir, 0o755)?;
    let current = std::fs::read_link(dir.join(DATA_LINK)).ok();
    if let Some(current) = &current
        && same_content(&dir.join(current), payload)
    {
        return Ok(());
    }
    let stamp = jiff::Timestamp::now().strftime("..%Y_%m_%d_%H_%M_%S.%f").to_string();
    let fresh = dir.join(&stamp);
    create_dir(&fresh, 0o755)?;
    for (path, (content, mode)) in payload {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            create_dir(parent, 0o755)?;
        }
        std::fs::write(&file, content)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, dir.join(DATA_LINK))?;
    let visible: std::collections::BTreeSet<String> =
        payload.keys().filter_map(|p| p.split('/').next()).map(str::to_owned).collect();
    for name in &visible {
        let link = dir.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(&format!("{DATA_LINK}/{name}"))) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("{DATA_LINK}/{name}"), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_visible = !name.starts_with("..") && !visible.contains(&name);
        let stale_data = name.starts_with("..") && name != DATA_LINK && name != stamp;
        if stale_visible {
            std::fs::remove_file(entry.path())?;
        } else if stale_data {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

fn same_content(data: &Path, payload: &Payload) -> bool {
    let mut count = 0;
    let all_same = payload.iter().all(|(path, (content, mode))| {
        let file = data.join(path);
        std::fs::read(&file).ok().as_ref() == Some(content)
            && std::fs::metadata(&file).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode)
    });
    fn count_files(dir: &Path, count: &mut usize) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                count_files(&entry.path(), count);
            } else {
                *count += 1;
            }
        }
    }
    count_files(data, &mut count);
    all_same && count == payload.len()
}

/// Adds `data` to `payload`, through `items` when given.
fn project(
    payload: &mut Payload,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
) -> Result<(), String> {
    match items {
        None => {
            for (key, value) in data {
                payload.insert(key.clone(), (value.clone(), mode));
            }
        }
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    return Err(format!("{what} references non-existent config key: {}", item.key));
                };
                if !safe_relative(&item.path) {
                    return Err(format!("invalid path {:?}", item.path));
                }
                payload.insert(item.path.clone(), (value.clone(), item.mode.map_or(mode, |m| m as u32)));
            }
        }
    }
    Ok(())
}

/// Projects a ConfigMap's or Secret's data (`None` when the object is
/// missing); an optional source may be missing or lack keys.
fn project_source(
    payload: &mut Payload,
    data: Option<BTreeMap<String, Vec<u8>>>,
    (kind, name): (&str, &str),
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    optional: bool,
) -> Result<(), String> {
    match data {
        Some(data) => project(payload, &data, items, mode, kind).or_else(|e| if optional { Ok(()) } else { Err(e) }),
        None if optional => Ok(()),
        None => Err(format!("{kind} \"{name}\" not found")),
    }
}

/// What one pod needs to resolve its projected volumes.
pub struct Context<'a> {
    pub pod: &'a Pod,
    pub lookup: &'a dyn Lookup,
    pub addresses: &'a PodAddresses,
    pub allocatable: &'a Capacity,
    /// Service account tokens fetched for the pod, by (volume, path).
    pub tokens: &'a super::tokens::PodTokens,
}

impl Context<'_> {
    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn config_map(&self, payload: &mut Payload, p: &ConfigMapProjection, mode: u32) -> Result<(), String> {
        let data = self.lookup.config_map(self.namespace(), &p.name).map(|cm| sources::config_map_data(&cm));
        project_source(payload, data, ("configmap", &p.name), p.items.as_ref(), mode, p.optional == Some(true))
    }

    fn secret(&self, payload: &mut Payload, p: &SecretProjection, mode: u32) -> Result<(), String> {
        let data = self.lookup.secret(self.namespace(), &p.name).map(|s| sources::secret_data(&s));
        project_source(payload, data, ("secret", &p.name), p.items.as_ref(), mode, p.optional == Some(true))
    }

    fn downward(&self, payload: &mut Payload, items: &[DownwardAPIVolumeFile], mode: u32) -> Result<(), String> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        for item in items {
            if !safe_relative(&item.path) {
                return Err(format!("invalid path {:?}", item.path));
            }
            let value = if let Some(f) = &item.field_ref {
                sources::field_ref(self.pod, &f.field_path, self.addresses)?
            } else if let Some(r) = &item.resource_field_ref {
                let name = r.container_name.clone().unwrap_or_default();
                let container = spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name);
                let container = container.ok_or_else(|| format!("container {name} not found in the pod"))?;
                sources::resource_field_ref(container, r, self.allocatable)?
            } else {
                continue;
            };
            payload.insert(item.path.clone(), (value.into_bytes(), item.mode.map_or(mode, |m| m as u32)));
        }
        Ok(())
    }

    /// The files of a projected-kind volume, or `None` for other kinds.
    fn payload(&self, volume: &Volume) -> Option<Result<(&'static str, Payload), String>> {
        let mode = |m: Option<i32>| m.map_or(DEFAULT_MODE, |m| m as u32);
        let mut payload = Payload::new();
        let result = if let Some(cm) = &volume.config_map {
            let p = ConfigMapProjection { name: cm.name.clone(), items: cm.items.clone(), optional: cm.optional };
            self.config_map(&mut payload, &p, mode(cm.default_mode)).map(|_| "configmap")
        } else if let Some(s) = &volume.secret {
            let p = SecretProjection { name: s.secret_name.clone().unwrap_or_default(), items: s.items.clone(), optional: s.optional };
            self.secret(&mut payload, &p, mode(s.default_mode)).map(|_| "secret")
        } else if let Some(d) = &volume.downward_api {
            self.downward(&mut payload, d.items.as_deref().unwrap_or_default(), mode(d.default_mode)).map(|_| "downward-api")
        } else if let Some(p) = &volume.projected {
            let default = mode(p.default_mode);
            p.sources.iter().flatten().try_for_each(|source| {
                if let Some(cm) = &source.config_map {
                    self.config_map(&mut payload, cm, default)?;
                }
                if let Some(s) = &source.secret {
                    self.secret(&mut payload, s, default)?;
                }
                if let Some(d) = &source.downward_api {
                    self.downward(&mut payload, d.items.as_deref().unwrap_or_default(), default)?;
                }
                if let Some(t) = &source.service_account_token {
                    if !safe_relative(&t.path) {
                        return Err(format!("invalid path {:?}", t.path));
                    }
                    let token = self.tokens.get(&(volume.name.clone(), t.path.clone()));
                    let token = token.ok_or_else(|| format!("no service account token was fetched for {:?}", t.path))?;
                    payload.insert(t.path.clone(), (token.clone().into_bytes(), default));
                }
                // clusterTrustBundle sources need the trust-bundle API; they are not projected.
                Ok::<(), String>(())
            })
            .map(|_| "projected")
        } else {
            return None;
        };
        Some(result.map(|plugin| (plugin, payload)))
    }

    /// Sets up every volume of the pod (idempotent); the error is the
    /// kubelet's FailedMount message.
    pub fn prepare(&self, data_dir: &Path) -> Result<HashMap<String, Prepared>, String> {
        let uid = self.pod.metadata.uid.as_deref().unwrap_or_default();
        let mut out = HashMap::new();
        for volume in self.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let failed = |e: String| format!("MountVolume.SetUp failed for volume \"{}\" : {e}", volume.name);
            let prepared = if let Some(empty) = &volume.empty_dir {
                let dir = volume_dir(data_dir, uid, "empty-dir", &volume.name);
                create_dir(&dir, 0o777).map_err(|e| failed(e.to_string()))?;
                if empty.medium.as_deref() == Some("Memory") {
                    let size = empty.size_limit.as_ref().and_then(|q| crate::api::kinds::parse_quantity(&q.0)).map(|n| n / 1_000_000_000);
                    mount_tmpfs(&dir, size).map_err(|e| failed(format!("mounting tmpfs: {e}")))?;
                }
                Prepared { host_path: dir, read_only: false }
            } else if let Some(host) = &volume.host_path {
                Prepared { host_path: check_host_path(host).map_err(failed)?, read_only: false }
            } else if let Some(result) = self.payload(volume) {
                let (plugin, payload) = result.map_err(failed)?;
                let dir = volume_dir(data_dir, uid, plugin, &volume.name);
                write_atomic(&dir, &payload).map_err(|e| failed(e.to_string()))?;
                Prepared { host_path: dir, read_only: true }
            } else {
                return Err(failed("this volume type is not supported by rk's node agent".into()));
            };
            out.insert(volume.name.clone(), prepared);
        }
        Ok(out)
    }
}

/// Checks (or creates) a hostPath by its `type`, as the kubelet does.
fn check_host_path(source: &HostPathVolumeSource) -> Result<PathBuf, String> {
    use std::os::unix::fs::FileTypeExt;
    let path = PathBuf::from(&source.path);
    let meta = std::fs::metadata(&path);
    let kind = source.type_.as_deref().unwrap_or("");
    let is = |check: fn(&std::fs::FileType) -> bool| meta.as_ref().is_ok_and(|m| check(&m.file_type()));
    let ok = match kind {
        "" => true,
        "DirectoryOrCreate" => {
            if meta.is_err() {
                create_dir(&path, 0o755).map_err(|e| e.to_string())?;
            }
            std::fs::metadata(&path).is_ok_and(|m| m.is_dir())
        }
        "Directory" => is(|t| t.is_dir()),
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = path.parent() {
                    create_dir(parent, 0o755).map_err(|e| e.to_string())?;
                }
                std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| e.to_string())?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())?;
            }
            std::fs::metadata(&path).is_ok_and(|m| m.is_file())
        }
        "File" => is(|t| t.is_file()),
        "Socket" => is(|t| t.is_socket()),
        "CharDevice" => is(|t| t.is_char_device()),
        "BlockDevice" => is(|t| t.is_block_device()),
        other => return Err(format!("unknown hostPath type {other:?}")),
    };
    if ok {
        Ok(path)
    } else {
        let what = kind.trim_end_matches("OrCreate").to_ascii_lowercase();
        Err(format!("hostPath type check failed: {} is not a {what}", source.path))
    }
}

/// Unmounts a pod's memory-backed volumes and removes its directory.
pub fn cleanup(data_dir: &Path, uid: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let dir = pod_dir(data_dir, uid);
    let empty_dirs = dir.join("volumes").join("kubernetes.io~empty-dir");
    for entry in std::fs::read_dir(&empty_dirs).into_iter().flatten().flatten() {
        if is_tmpfs(&entry.path()) {
            let target = std::ffi::CString::new(entry.path().as_os_str().as_bytes())?;
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The uids of pods that have a directory under the data dir.
pub fn pod_dirs(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("pods")).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str)]) -> Payload {
        files.iter().map(|(p, c)| (p.to_string(), (c.as_bytes().to_vec(), 0o644))).collect()
    }

    #[test]
    fn atomic_writes_swap_the_data_link_and_drop_stale_names() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("v");
        write_atomic(&vol, &payload(&[("a", "1"), ("sub/b", "2")])).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(vol.join("sub/b")).unwrap(), "2");
        assert_eq!(std::fs::read_link(vol.join("a")).unwrap(), Path::new("..data/a"));
        let first = std::fs::read_link(vol.join(DATA_LINK)).unwrap();

        // Unchanged content leaves everything as it is.
        write_atomic(&vol, &payload(&[("a", "1"), ("sub/b", "2")])).unwrap();
        assert_eq!(std::fs::read_link(vol.join(DATA_LINK)).unwrap(), first);

        std::thread::sleep(std::time::Duration::from_millis(2));
        write_atomic(&vol, &payload(&[("a", "changed")])).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "changed");
        assert!(!vol.join("sub").exists(), "names no longer projected are removed");
        let dirs: Vec<_> = std::fs::read_dir(&vol).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(dirs.iter().filter(|n| n.starts_with("..") && *n != DATA_LINK).count(), 1, "{dirs:?}");
    }

    #[test]
    fn items_select_and_rename_keys() {
        let data: BTreeMap<String, Vec<u8>> = [("k".to_owned(), b"v".to_vec())].into();
        let mut p = Payload::new();
        let items = vec![KeyToPath { key: "k".into(), path: "dir/file".into(), mode: Some(0o600) }];
        project(&mut p, &data, Some(&items), 0o644, "configmap").unwrap();
        assert_eq!(p["dir/file"], (b"v".to_vec(), 0o600));
        let missing = vec![KeyToPath { key: "nope".into(), path: "x".into(), mode: None }];
        assert_eq!(project(&mut p, &data, Some(&missing), 0o644, "configmap").unwrap_err(), "configmap references non-existent config key: nope");
        let escape = vec![KeyToPath { key: "k".into(), path: "../x".into(), mode: None }];
        assert!(project(&mut p, &data, Some(&escape), 0o644, "configmap").is_err());
    }

    #[test]
    fn host_path_types_are_checked_or_created() {
        let dir = tempfile::tempdir().unwrap();
        let new_dir = dir.path().join("made");
        let source = |path: &Path, t: &str| HostPathVolumeSource { path: path.display().to_string(), type_: Some(t.into()) };
        check_host_path(&source(&new_dir, "DirectoryOrCreate")).unwrap();
        assert!(new_dir.is_dir());
        let err = check_host_path(&source(&new_dir, "File")).unwrap_err();
        assert!(err.contains("is not a file"), "{err}");
        check_host_path(&source(&dir.path().join("f"), "FileOrCreate")).unwrap();
        assert!(dir.path().join("f").is_file());
        assert!(check_host_path(&source(&dir.path().join("absent"), "Directory")).is_err());
    }
}

//! The Pod-spec rules shared by Pods and the pod templates of workload controllers:
//! upstream's defaulting (`SetDefaults_PodSpec` and friends), the create-time additions
//! its admission chain makes, `ValidatePodSpec` with upstream's wording, the update
//! rules of Pods, and the cells kubectl prints for a pod.

use crate::api::error::FieldError;
use crate::api::validation::{self, check};
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, EnvVar, ObjectFieldSelector, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    Probe, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

const MAX_INT32: i64 = i32::MAX as i64;
const FILE_MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const NEGATIVE_MSG: &str = "must be greater than or equal to 0";
const MORE_THAN_ONE_VOLUME: &str = "may not specify more than 1 volume type";
const QUANTITY_MSG: &str = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const UPDATABLE_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

// ---------------------------------------------------------------------------
// Defaulting
// ---------------------------------------------------------------------------

fn default_str(field: &mut Option<String>, value: &str) {
    if field.as_deref().is_none_or(str::is_empty) {
        *field = Some(value.to_owned());
    }
}

/// Upstream's SetDefaults for a PodSpec and everything nested in it. Runs for pods and templates alike.
pub fn default_pod_spec(spec: &mut PodSpec) {
    default_str(&mut spec.dns_policy, "ClusterFirst");
    default_str(&mut spec.restart_policy, "Always");
    default_str(&mut spec.scheduler_name, "default-scheduler");
    spec.security_context.get_or_insert_with(Default::default);
    spec.termination_grace_period_seconds.get_or_insert(30);
    // The v1 conversion: `serviceAccount` is a deprecated alias; the new field wins.
    if spec.service_account_name.as_deref().is_none_or(str::is_empty) {
        spec.service_account_name = spec.service_account.clone().filter(|s| !s.is_empty());
    }
    spec.service_account = spec.service_account_name.clone();
    for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        default_container(c);
    }
    spec.volumes.iter_mut().flatten().for_each(default_volume);
}

fn default_image_pull_policy(policy: &mut Option<String>, image: Option<&str>) {
    if policy.as_deref().is_none_or(str::is_empty) {
        let always = image_tag(image.unwrap_or_default()).as_deref() == Some("latest");
        *policy = Some(if always { "Always" } else { "IfNotPresent" }.to_owned());
    }
}

/// The tag `kubelet` would pull: `Some("latest")` when none (and no digest) is given,
/// `None` when the reference does not parse or carries only a digest.
fn image_tag(image: &str) -> Option<String> {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let slash = name.rfind('/');
    let (repo, tag) = match name.rfind(':').filter(|i| slash.is_none_or(|s| *i > s)) {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    // The first component is a registry when it looks like a host; the rest must be lowercase.
    let path = match repo.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) => rest,
        _ => repo,
    };
    let path_ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty() && c.starts_with(|ch: char| ch.is_ascii_alphanumeric()) && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        });
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty() && t.len() <= 128 && !t.starts_with(['.', '-']) && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    });
    let digest_ok = digest.is_none_or(|d| d.split_once(':').is_some_and(|(a, h)| !a.is_empty() && h.len() >= 32));
    if !(path_ok && tag_ok && digest_ok) {
        return None;
    }
    match (tag, digest) {
        (Some(t), _) => Some(t.to_owned()),
        (None, None) => Some("latest".to_owned()),
        (None, Some(_)) => None,
    }
}

fn default_container(c: &mut Container) {
    default_image_pull_policy(&mut c.image_pull_policy, c.image.as_deref());
    default_str(&mut c.termination_message_path, "/dev/termination-log");
    default_str(&mut c.termination_message_policy, "File");
    c.resources.get_or_insert_with(Default::default);
    c.ports.iter_mut().flatten().for_each(|p| default_str(&mut p.protocol, "TCP"));
    c.env.iter_mut().flatten().for_each(default_env);
    for probe in [&mut c.liveness_probe, &mut c.readiness_probe, &mut c.startup_probe].into_iter().flatten() {
        default_probe(probe);
    }
    if let Some(l) = &mut c.lifecycle {
        for h in [&mut l.post_start, &mut l.pre_stop].into_iter().flatten() {
            if let Some(g) = &mut h.http_get {
                default_str(&mut g.path, "/");
                default_str(&mut g.scheme, "HTTP");
            }
        }
    }
}

fn default_probe(p: &mut Probe) {
    for (field, value) in [(&mut p.timeout_seconds, 1), (&mut p.period_seconds, 10), (&mut p.success_threshold, 1), (&mut p.failure_threshold, 3)] {
        if field.is_none_or(|v| v == 0) {
            *field = Some(value);
        }
    }
    if let Some(g) = &mut p.http_get {
        default_str(&mut g.path, "/");
        default_str(&mut g.scheme, "HTTP");
    }
    if let Some(g) = &mut p.grpc {
        g.service.get_or_insert_with(String::new);
    }
}

fn default_env(e: &mut EnvVar) {
    if let Some(src) = &mut e.value_from {
        if let Some(f) = &mut src.field_ref {
            default_str(&mut f.api_version, "v1");
        }
        if let Some(r) = &mut src.resource_field_ref {
            r.divisor.get_or_insert_with(|| Quantity("0".into()));
        }
    }
}

fn default_downward_items(items: Option<&mut Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>>) {
    for item in items.into_iter().flatten() {
        if let Some(f) = &mut item.field_ref {
            default_str(&mut f.api_version, "v1");
        }
        if let Some(r) = &mut item.resource_field_ref {
            r.divisor.get_or_insert_with(|| Quantity("0".into()));
        }
    }
}

fn default_volume(v: &mut Volume) {
    if volume_sources(v).iter().all(|(_, set)| !set) {
        v.empty_dir = Some(Default::default());
    }
    if let Some(s) = &mut v.secret {
        s.default_mode.get_or_insert(0o644);
    }
    if let Some(s) = &mut v.config_map {
        s.default_mode.get_or_insert(0o644);
    }
    if let Some(s) = &mut v.downward_api {
        s.default_mode.get_or_insert(0o644);
        default_downward_items(s.items.as_mut());
    }
    if let Some(s) = &mut v.projected {
        s.default_mode.get_or_insert(0o644);
        for src in s.sources.iter_mut().flatten() {
            default_downward_items(src.downward_api.as_mut().and_then(|d| d.items.as_mut()));
            if let Some(t) = &mut src.service_account_token {
                t.expiration_seconds.get_or_insert(3600);
            }
        }
    }
    if let Some(h) = &mut v.host_path {
        h.type_.get_or_insert_with(String::new);
    }
    if let Some(t) = v.ephemeral.as_mut().and_then(|e| e.volume_claim_template.as_mut()) {
        default_str(&mut t.spec.volume_mode, "Filesystem");
    }
}

/// Upstream's SetDefaults_Pod: the spec defaults plus what only materializes on Pods.
pub fn default_pod(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(Default::default);
    default_pod_spec(spec);
    for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        // Requests default to limits where only limits are given.
        if let Some(r) = &mut c.resources
            && let Some(limits) = &r.limits
        {
            let requests = r.requests.get_or_insert_with(Default::default);
            for (k, v) in limits {
                requests.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    spec.enable_service_links.get_or_insert(true);
    if spec.host_network == Some(true) {
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            for p in c.ports.iter_mut().flatten() {
                if p.host_port.unwrap_or(0) == 0 {
                    p.host_port = Some(p.container_port);
                }
            }
        }
    }
}

/// What creation adds: the ServiceAccount, Priority and DefaultTolerationSeconds admission
/// plugins, and the strategy's initial status (any status sent is discarded, as upstream).
pub fn prepare_pod_create(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(Default::default);
    if spec.service_account_name.as_deref().is_none_or(str::is_empty) {
        spec.service_account_name = Some("default".into());
    }
    spec.service_account = spec.service_account_name.clone();
    if spec.priority.is_none() {
        spec.priority = match spec.priority_class_name.as_deref().unwrap_or_default() {
            "" => Some(0),
            "system-node-critical" => Some(2_000_001_000),
            "system-cluster-critical" => Some(2_000_000_000),
            _ => None,
        };
    }
    default_str(&mut spec.preemption_policy, "PreemptLowerPriority");
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let tolerated = tolerations.iter().any(|t| {
            let k = t.key.as_deref().unwrap_or_default();
            (k == key || k.is_empty()) && matches!(t.effect.as_deref().unwrap_or_default(), "" | "NoExecute")
        });
        if !tolerated {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(300),
                value: None,
            });
        }
    }
    let mut status = PodStatus { phase: Some("Pending".into()), qos_class: Some(qos_class(spec).into()), ..Default::default() };
    if spec.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty()) {
        status.conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("SchedulingGated".into()),
            message: Some("Scheduling is blocked due to non-empty scheduling gates".into()),
            ..Default::default()
        }]);
    }
    pod.status = Some(status);
}

/// Upstream's QoS class: Guaranteed when every container limits cpu and memory and requests
/// equal limits; BestEffort when nothing is requested or limited; Burstable otherwise.
fn qos_class(spec: &PodSpec) -> &'static str {
    let (mut requests, mut limits) = (BTreeMap::<&str, i128>::new(), BTreeMap::<&str, i128>::new());
    let mut guaranteed = true;
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        let res = c.resources.as_ref();
        for (name, q) in res.and_then(|r| r.requests.as_ref()).into_iter().flatten() {
            if let ("cpu" | "memory", Some(v)) = (name.as_str(), parse_quantity(&q.0))
                && v > 0
            {
                *requests.entry(if name == "cpu" { "cpu" } else { "memory" }).or_default() += v;
            }
        }
        let mut found = BTreeSet::new();
        for (name, q) in res.and_then(|r| r.limits.as_ref()).into_iter().flatten() {
            if let ("cpu" | "memory", Some(v)) = (name.as_str(), parse_quantity(&q.0))
                && v > 0
            {
                let key = if name == "cpu" { "cpu" } else { "memory" };
                found.insert(key);
                *limits.entry(key).or_default() += v;
            }
        }
        if found.len() < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    guaranteed &= requests.iter().all(|(k, v)| limits.get(k) == Some(v));
    if guaranteed && requests.len() == limits.len() { "Guaranteed" } else { "Burstable" }
}

// ---------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------

pub use crate::api::quantity::parse_nanos as parse_quantity;

// ---------------------------------------------------------------------------
// Validation helpers
// ---------------------------------------------------------------------------

/// A value rendered verbatim (Go's `%#v` of maps and lists).
struct Raw(String);
impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Upstream's `field.NotFound`. FieldError has no NotFound kind yet: until one is added
/// (reason `FieldValueNotFound`, label `Not found`) this is reported as an Invalid value.
fn require(errs: &mut Vec<FieldError>, missing: bool, field: impl Into<String>) {
    if missing {
        errs.push(FieldError::required(field, ""));
    }
}

fn unsupported(errs: &mut Vec<FieldError>, field: String, value: Option<&str>, supported: &[&str]) {
    match value.unwrap_or_default() {
        "" => errs.push(FieldError::required(field, "")),
        v if supported.contains(&v) => {}
        v => errs.push(FieldError::not_supported(field, v, supported)),
    }
}

fn go_map(m: &BTreeMap<String, String>) -> Raw {
    Raw(format!("map[string]string{{{}}}", m.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect::<Vec<_>>().join(", ")))
}

fn port_num(errs: &mut Vec<FieldError>, field: String, port: i64) {
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid(field, port, "must be between 1 and 65535, inclusive"));
    }
}

/// Upstream's IsValidPortName (IANA_SVC_NAME).
pub(super) fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push("must be no more than 15 bytes".into());
    }
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

fn port_num_or_name(errs: &mut Vec<FieldError>, field: String, port: &IntOrString) {
    match port {
        IntOrString::Int(n) => port_num(errs, field, i64::from(*n)),
        IntOrString::String(s) => check(errs, &field, s, port_name),
    }
}

/// RelaxedEnvironmentVariableValidation is on by default in 1.33: printable ASCII but '='.
fn env_var_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.is_empty() {
        errs.push("environment variable name must be non-empty".into());
    }
    if s.chars().any(|c| !(' '..='~').contains(&c) || c == '=') {
        errs.push("a valid environment variable name must consist only of printable ASCII characters other than '='".into());
    }
    errs
}

/// NameIsDNSSubdomain with `prefix`: a trailing '-' is allowed.
fn subdomain_prefix(s: &str) -> Vec<String> {
    match s.strip_suffix('-') {
        Some(head) => validation::dns1123_subdomain(&format!("{head}a")),
        None => validation::dns1123_subdomain(s),
    }
}

fn labels_map(errs: &mut Vec<FieldError>, field: &str, labels: Option<&BTreeMap<String, String>>) {
    for (k, v) in labels.into_iter().flatten() {
        check(errs, field, k, validation::qualified_name);
        check(errs, field, v, validation::label_value);
    }
}

fn local_path(errs: &mut Vec<FieldError>, field: &str, path: &str, non_reserved: bool) {
    if path.starts_with('/') {
        errs.push(FieldError::invalid(field, path, "must be a relative path"));
    }
    if path.split('/').any(|s| s == "..") {
        errs.push(FieldError::invalid(field, path, "must not contain '..'"));
    }
    if non_reserved && path.starts_with("..") {
        errs.push(FieldError::invalid(field, path, "must not start with '..'"));
    }
}

fn file_mode(errs: &mut Vec<FieldError>, field: String, mode: Option<i32>) {
    if let Some(m) = mode.filter(|m| !(0..=0o777).contains(m)) {
        errs.push(FieldError::invalid(field, m, FILE_MODE_MSG));
    }
}

fn nonnegative(errs: &mut Vec<FieldError>, field: String, v: i64) {
    if v < 0 {
        errs.push(FieldError::invalid(field, v, NEGATIVE_MSG));
    }
}

fn id_range(errs: &mut Vec<FieldError>, field: String, id: Option<i64>) {
    if let Some(id) = id.filter(|id| !(0..=MAX_INT32).contains(id)) {
        errs.push(FieldError::invalid(field, id, "must be between 0 and 2147483647, inclusive"));
    }
}

// ---------------------------------------------------------------------------
// Volumes
// ---------------------------------------------------------------------------

/// Volume sources in upstream's checking order, with the field names its errors use.
fn volume_sources(v: &Volume) -> [(&'static str, bool); 30] {
    // `downwarAPI` (sic) is how upstream names that source in this error.
    [
        ("emptyDir", v.empty_dir.is_some()), ("hostPath", v.host_path.is_some()), ("gitRepo", v.git_repo.is_some()), ("gcePersistentDisk", v.gce_persistent_disk.is_some()),
        ("awsElasticBlockStore", v.aws_elastic_block_store.is_some()), ("secret", v.secret.is_some()), ("nfs", v.nfs.is_some()), ("iscsi", v.iscsi.is_some()),
        ("glusterfs", v.glusterfs.is_some()), ("flocker", v.flocker.is_some()), ("persistentVolumeClaim", v.persistent_volume_claim.is_some()), ("rbd", v.rbd.is_some()),
        ("cinder", v.cinder.is_some()), ("cephFS", v.cephfs.is_some()), ("quobyte", v.quobyte.is_some()), ("downwarAPI", v.downward_api.is_some()),
        ("fc", v.fc.is_some()), ("flexVolume", v.flex_volume.is_some()), ("configMap", v.config_map.is_some()), ("azureFile", v.azure_file.is_some()),
        ("vsphereVolume", v.vsphere_volume.is_some()), ("photonPersistentDisk", v.photon_persistent_disk.is_some()), ("portworxVolume", v.portworx_volume.is_some()), ("azureDisk", v.azure_disk.is_some()),
        ("storageos", v.storageos.is_some()), ("projected", v.projected.is_some()), ("scaleIO", v.scale_io.is_some()), ("csi", v.csi.is_some()),
        ("ephemeral", v.ephemeral.is_some()), ("image", v.image.is_some()),
    ]
}

fn key_to_paths(errs: &mut Vec<FieldError>, base: &str, items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>) {
    for (i, kp) in items.into_iter().flatten().enumerate() {
        let p = format!("{base}.items[{i}]");
        require(errs, kp.key.is_empty(), format!("{p}.key"));
        require(errs, kp.path.is_empty(), format!("{p}.path"));
        local_path(errs, &format!("{p}.path"), &kp.path, true);
        file_mode(errs, format!("{p}.mode"), kp.mode);
    }
}

/// The rules of the one source a volume names (only the common kinds are checked in depth).
fn volume_source(errs: &mut Vec<FieldError>, v: &Volume, p: &str) {
    if let Some(e) = &v.empty_dir {
        if e.size_limit.as_ref().is_some_and(|q| parse_quantity(&q.0).is_some_and(|n| n < 0)) {
            errs.push(FieldError::forbidden(format!("{p}.emptyDir.sizeLimit"), "SizeLimit field must be a valid resource quantity"));
        }
    } else if let Some(h) = &v.host_path {
        if h.path.is_empty() {
            errs.push(FieldError::required(format!("{p}.hostPath.path"), ""));
            return;
        }
        if h.path.split('/').any(|s| s == "..") {
            errs.push(FieldError::invalid(format!("{p}.hostPath.path"), &h.path, "must not contain '..'"));
        }
        let types = ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"];
        if let Some(t) = h.type_.as_deref().filter(|t| !types.contains(t)) {
            errs.push(FieldError::not_supported(format!("{p}.hostPath.type"), t, &types));
        }
    } else if let Some(s) = &v.secret {
        require(errs, s.secret_name.as_deref().is_none_or(str::is_empty), format!("{p}.secret.secretName"));
        file_mode(errs, format!("{p}.secret.defaultMode"), s.default_mode);
        key_to_paths(errs, &format!("{p}.secret"), s.items.as_ref());
    } else if let Some(c) = &v.persistent_volume_claim {
        require(errs, c.claim_name.is_empty(), format!("{p}.persistentVolumeClaim.claimName"));
    } else if let Some(d) = &v.downward_api {
        file_mode(errs, format!("{p}.downwardAPI.defaultMode"), d.default_mode);
    } else if let Some(c) = &v.config_map {
        require(errs, c.name.is_empty(), format!("{p}.configMap.name"));
        file_mode(errs, format!("{p}.configMap.defaultMode"), c.default_mode);
        key_to_paths(errs, &format!("{p}.configMap"), c.items.as_ref());
    } else if let Some(pr) = &v.projected {
        file_mode(errs, format!("{p}.projected.defaultMode"), pr.default_mode);
    }
}

const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
    "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs",
];
const CONVERTIBLE_FIELD_PATHS: &[&str] = &[
    "metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace", "metadata.uid",
    "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName", "spec.schedulerName", "status.phase",
    "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs",
];

/// Upstream's validateObjectFieldSelector, with ConvertDownwardAPIFieldLabel folded in.
fn field_selector(errs: &mut Vec<FieldError>, fs: &ObjectFieldSelector, p: &str, allowed: &[&str]) {
    let version = fs.api_version.as_deref().unwrap_or_default();
    if version.is_empty() {
        return errs.push(FieldError::required(format!("{p}.apiVersion"), ""));
    }
    if fs.field_path.is_empty() {
        return errs.push(FieldError::required(format!("{p}.fieldPath"), ""));
    }
    let subscripted = fs.field_path.strip_suffix("']").and_then(|s| s.split_once("['"));
    let conversion = if version != "v1" {
        Err(format!("unsupported pod version: {version}"))
    } else if let Some((path, _)) = subscripted {
        if matches!(path, "metadata.annotations" | "metadata.labels") { Ok(()) } else { Err(format!("field label does not support subscript: {}", fs.field_path)) }
    } else if CONVERTIBLE_FIELD_PATHS.contains(&fs.field_path.as_str()) || fs.field_path == "spec.host" {
        Ok(())
    } else {
        Err(format!("field label not supported: {}", fs.field_path))
    };
    if let Err(e) = conversion {
        return errs.push(FieldError::invalid(format!("{p}.fieldPath"), &fs.field_path, format!("error converting fieldPath: {e}")));
    }
    match subscripted {
        Some(("metadata.annotations", key)) => check(errs, p, &key.to_ascii_lowercase(), validation::qualified_name),
        Some((_, key)) => check(errs, p, key, validation::qualified_name),
        None => {
            let path = if fs.field_path == "spec.host" { "spec.nodeName" } else { fs.field_path.as_str() };
            if !allowed.contains(&path) {
                errs.push(FieldError::not_supported(format!("{p}.fieldPath"), path, allowed));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------

fn container_common(errs: &mut Vec<FieldError>, c: &Container, p: &str, volumes: &HashSet<&str>) {
    if c.name.is_empty() {
        errs.push(FieldError::required(format!("{p}.name"), ""));
    } else {
        check(errs, &format!("{p}.name"), &c.name, validation::dns1123_label);
    }
    require(errs, c.image.as_deref().is_none_or(str::is_empty), format!("{p}.image"));
    unsupported(errs, format!("{p}.terminationMessagePolicy"), c.termination_message_policy.as_deref(), &["File", "FallbackToLogsOnError"]);
    // Ports.
    let mut names = HashSet::new();
    for (i, port) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{p}.ports[{i}]");
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let msgs = port_name(name);
            if !msgs.is_empty() {
                errs.extend(msgs.into_iter().map(|m| FieldError::invalid(format!("{pp}.name"), name, m)));
            } else if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), name));
            }
        }
        if port.container_port == 0 {
            errs.push(FieldError::required(format!("{pp}.containerPort"), ""));
        } else {
            port_num(errs, format!("{pp}.containerPort"), i64::from(port.container_port));
        }
        if let Some(hp) = port.host_port.filter(|hp| *hp != 0) {
            port_num(errs, format!("{pp}.hostPort"), i64::from(hp));
        }
        unsupported(errs, format!("{pp}.protocol"), port.protocol.as_deref(), &["SCTP", "TCP", "UDP"]);
    }
    // Environment.
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ep = format!("{p}.env[{i}]");
        if e.name.is_empty() {
            errs.push(FieldError::required(format!("{ep}.name"), ""));
        } else {
            check(errs, &format!("{ep}.name"), &e.name, env_var_name);
        }
        let Some(src) = &e.value_from else { continue };
        let vp = format!("{ep}.valueFrom");
        let mut sources = 0;
        if let Some(f) = &src.field_ref {
            sources += 1;
            field_selector(errs, f, &format!("{vp}.fieldRef"), ENV_FIELD_PATHS);
        }
        if let Some(r) = &src.resource_field_ref {
            sources += 1;
            const RESOURCES: &[&str] = &["limits.cpu", "limits.ephemeral-storage", "limits.memory", "requests.cpu", "requests.ephemeral-storage", "requests.memory"];
            if r.resource.is_empty() {
                errs.push(FieldError::required(format!("{vp}.resourceFieldRef.resource"), ""));
            } else if !RESOURCES.contains(&r.resource.as_str()) && !r.resource.starts_with("limits.hugepages-") && !r.resource.starts_with("requests.hugepages-") {
                errs.push(FieldError::not_supported(format!("{vp}.resourceFieldRef.resource"), &r.resource, RESOURCES));
            }
        }
        for (kind, sel) in [
            ("configMapKeyRef", src.config_map_key_ref.as_ref().map(|s| (&s.name, &s.key))),
            ("secretKeyRef", src.secret_key_ref.as_ref().map(|s| (&s.name, &s.key))),
        ] {
            let Some((name, key)) = sel else { continue };
            sources += 1;
            check(errs, &format!("{vp}.{kind}.name"), name, validation::dns1123_subdomain);
            if key.is_empty() {
                errs.push(FieldError::required(format!("{vp}.{kind}.key"), ""));
            } else {
                check(errs, &format!("{vp}.{kind}.key"), key, validation::config_map_key);
            }
        }
        if sources == 0 {
            errs.push(FieldError::invalid(&vp, "", "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"));
        } else if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
            errs.push(FieldError::invalid(&vp, "", "may not be specified when `value` is not empty"));
        } else if sources > 1 {
            errs.push(FieldError::invalid(&vp, "", "may not have more than one field specified at a time"));
        }
    }
    for (i, ef) in c.env_from.iter().flatten().enumerate() {
        let ep = format!("{p}.envFrom[{i}]");
        if let Some(prefix) = ef.prefix.as_deref().filter(|x| !x.is_empty()) {
            check(errs, &format!("{ep}.prefix"), prefix, env_var_name);
        }
        let refs = [("configMapRef", ef.config_map_ref.as_ref().map(|r| &r.name)), ("secretRef", ef.secret_ref.as_ref().map(|r| &r.name))];
        for (kind, name) in refs.iter().filter_map(|(k, n)| n.map(|n| (k, n))) {
            if name.is_empty() {
                errs.push(FieldError::required(format!("{ep}.{kind}.name"), ""));
            } else {
                check(errs, &format!("{ep}.{kind}.name"), name, subdomain_prefix);
            }
        }
        match refs.iter().filter(|(_, n)| n.is_some()).count() {
            0 => errs.push(FieldError::invalid(format!("{p}.envFrom"), "", "must specify one of: `configMapRef` or `secretRef`")),
            1 => {}
            _ => errs.push(FieldError::invalid(format!("{p}.envFrom"), "", "may not have more than one field specified at a time")),
        }
    }
    volume_mounts(errs, c.volume_mounts.as_deref().unwrap_or_default(), p, volumes);
    unsupported(errs, format!("{p}.imagePullPolicy"), c.image_pull_policy.as_deref(), &["Always", "IfNotPresent", "Never"]);
    resources(errs, c.resources.as_ref(), &format!("{p}.resources"));
}

fn volume_mounts(errs: &mut Vec<FieldError>, mounts: &[VolumeMount], p: &str, volumes: &HashSet<&str>) {
    let base = format!("{p}.volumeMounts");
    let mut paths = HashSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let mp = format!("{base}[{i}]");
        require(errs, m.name.is_empty(), format!("{mp}.name"));
        if !volumes.contains(m.name.as_str()) {
            errs.push(FieldError::not_found(format!("{mp}.name"), &m.name));
        }
        require(errs, m.mount_path.is_empty(), format!("{mp}.mountPath"));
        if !paths.insert(m.mount_path.as_str()) {
            errs.push(FieldError::invalid(format!("{mp}.mountPath"), &m.mount_path, "must be unique"));
        }
        let sub_path = m.sub_path.as_deref().unwrap_or_default();
        if !sub_path.is_empty() {
            // Upstream reports these at the list's path, not the item's.
            local_path(errs, &format!("{base}.subPath"), sub_path, false);
        }
        if let Some(expr) = m.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
            if !sub_path.is_empty() {
                errs.push(FieldError::invalid(format!("{mp}.subPathExpr"), expr, "subPathExpr and subPath are mutually exclusive"));
            }
            local_path(errs, &format!("{base}.subPathExpr"), expr, false);
        }
    }
}

fn is_standard_resource(name: &str) -> bool {
    const STANDARD: &[&str] = &[
        "cpu", "memory", "ephemeral-storage", "storage", "pods", "services", "replicationcontrollers", "resourcequotas", "secrets",
        "configmaps", "persistentvolumeclaims", "services.nodeports", "services.loadbalancers", "requests.cpu", "requests.memory",
        "requests.ephemeral-storage", "requests.storage", "limits.cpu", "limits.memory", "limits.ephemeral-storage",
    ];
    STANDARD.contains(&name) || name.starts_with("hugepages-") || name.starts_with("requests.hugepages-")
}

fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

fn overcommit_allowed(name: &str) -> bool {
    is_native_resource(name) && !name.starts_with("hugepages-")
}

/// Upstream's validateContainerResourceName plus the quantity rules.
fn resource_entry(errs: &mut Vec<FieldError>, field: String, name: &str, q: &Quantity) {
    let msgs = validation::qualified_name(name);
    if !msgs.is_empty() {
        errs.extend(msgs.into_iter().map(|m| FieldError::invalid(&field, name, m)));
    } else if !name.contains('/') {
        if !is_standard_resource(name) {
            errs.push(FieldError::invalid(&field, name, "must be a standard resource type or fully qualified"));
        }
        if !matches!(name, "cpu" | "memory" | "ephemeral-storage") && !name.starts_with("hugepages-") {
            errs.push(FieldError::invalid(&field, name, "must be a standard resource for containers"));
        }
    } else if !is_native_resource(name) && (name.starts_with("requests.") || !validation::qualified_name(&format!("requests.{name}")).is_empty()) {
        errs.push(FieldError::invalid(&field, name, "doesn't follow extended resource name standard"));
    }
    match parse_quantity(&q.0) {
        None => errs.push(FieldError::invalid(field, &q.0, QUANTITY_MSG)),
        Some(v) if v < 0 => errs.push(FieldError::invalid(field, &q.0, NEGATIVE_MSG)),
        Some(_) => {}
    }
}

fn resources(errs: &mut Vec<FieldError>, r: Option<&ResourceRequirements>, p: &str) {
    let Some(r) = r else { return };
    let empty = BTreeMap::new();
    let limits = r.limits.as_ref().unwrap_or(&empty);
    for (name, q) in limits {
        resource_entry(errs, format!("{p}.limits[{name}]"), name, q);
    }
    for (name, q) in r.requests.iter().flatten() {
        resource_entry(errs, format!("{p}.requests[{name}]"), name, q);
        match limits.get(name) {
            Some(limit) => {
                let (req, lim) = (parse_quantity(&q.0), parse_quantity(&limit.0));
                if req != lim && req.is_some() && lim.is_some() && !overcommit_allowed(name) {
                    errs.push(FieldError::invalid(format!("{p}.requests"), &q.0, format!("must be equal to {name} limit of {}", limit.0)));
                } else if let (Some(req), Some(lim)) = (req, lim)
                    && req > lim
                {
                    errs.push(FieldError::invalid(format!("{p}.requests"), &q.0, format!("must be less than or equal to {name} limit of {}", limit.0)));
                }
            }
            None if !overcommit_allowed(name) => {
                errs.push(FieldError::required(format!("{p}.limits"), "Limit must be set for non overcommitable resources"));
            }
            None => {}
        }
    }
}

/// One handler of a probe or lifecycle hook: exactly one action, each well formed.
fn handler(errs: &mut Vec<FieldError>, p: &str, probe: Option<&Probe>, hook: Option<&k8s_openapi::api::core::v1::LifecycleHandler>, grace: Option<i64>) {
    let (exec, http, tcp) = match (probe, hook) {
        (Some(pr), _) => (pr.exec.as_ref(), pr.http_get.as_ref(), pr.tcp_socket.as_ref()),
        (None, Some(h)) => (h.exec.as_ref(), h.http_get.as_ref(), h.tcp_socket.as_ref()),
        (None, None) => return,
    };
    let grpc = probe.and_then(|pr| pr.grpc.as_ref());
    let sleep = hook.and_then(|h| h.sleep.as_ref());
    let mut n = 0;
    let mut next = |errs: &mut Vec<FieldError>, name: &str| {
        n += 1;
        if n > 1 {
            errs.push(FieldError::forbidden(format!("{p}.{name}"), "may not specify more than 1 handler type"));
        }
        n == 1
    };
    if let Some(e) = exec
        && next(errs, "exec")
        && e.command.as_ref().is_none_or(Vec::is_empty)
    {
        errs.push(FieldError::required(format!("{p}.exec.command"), ""));
    }
    if let Some(h) = http
        && next(errs, "httpGet")
    {
        require(errs, h.path.as_deref().is_none_or(str::is_empty), format!("{p}.httpGet.path"));
        port_num_or_name(errs, format!("{p}.httpGet.port"), &h.port);
        let scheme = h.scheme.as_deref().unwrap_or_default();
        if !matches!(scheme, "HTTP" | "HTTPS") {
            errs.push(FieldError::not_supported(format!("{p}.httpGet.scheme"), scheme, &["HTTP", "HTTPS"]));
        }
    }
    if let Some(t) = tcp
        && next(errs, "tcpSocket")
    {
        port_num_or_name(errs, format!("{p}.tcpSocket.port"), &t.port);
    }
    if let Some(g) = grpc
        && next(errs, "grpc")
    {
        port_num(errs, format!("{p}.grpc.port"), i64::from(g.port));
    }
    if let Some(s) = sleep
        && next(errs, "sleep")
        && let Some(g) = grace.filter(|g| s.seconds < 0 || s.seconds > *g)
    {
        let msg = format!("must be non-negative and less than terminationGracePeriodSeconds ({g})");
        errs.push(FieldError::invalid(format!("{p}.sleep"), s.seconds, msg));
    }
    if n == 0 {
        errs.push(FieldError::required(p, "must specify a handler type"));
    }
}

/// `kind` is "livenessProbe", "readinessProbe" or "startupProbe".
fn probe(errs: &mut Vec<FieldError>, pr: Option<&Probe>, p: &str, kind: &str, grace: Option<i64>) {
    let Some(pr) = pr else { return };
    let p = format!("{p}.{kind}");
    handler(errs, &p, Some(pr), None, grace);
    for (name, v) in [
        ("initialDelaySeconds", pr.initial_delay_seconds),
        ("timeoutSeconds", pr.timeout_seconds),
        ("periodSeconds", pr.period_seconds),
        ("successThreshold", pr.success_threshold),
        ("failureThreshold", pr.failure_threshold),
    ] {
        nonnegative(errs, format!("{p}.{name}"), i64::from(v.unwrap_or(0)));
    }
    if let Some(t) = pr.termination_grace_period_seconds {
        if kind == "readinessProbe" {
            errs.push(FieldError::invalid(format!("{p}.terminationGracePeriodSeconds"), t, "must not be set for readinessProbes"));
        } else if t <= 0 {
            errs.push(FieldError::invalid(format!("{p}.terminationGracePeriodSeconds"), t, "must be greater than 0"));
        }
    }
    let success = pr.success_threshold.unwrap_or(0);
    if kind != "readinessProbe" && success != 1 {
        errs.push(FieldError::invalid(format!("{p}.successThreshold"), success, "must be 1"));
    }
}

fn probes_and_lifecycle(errs: &mut Vec<FieldError>, c: &Container, p: &str, grace: Option<i64>) {
    if let Some(l) = &c.lifecycle {
        handler(errs, &format!("{p}.lifecycle.postStart"), None, l.post_start.as_ref(), grace);
        handler(errs, &format!("{p}.lifecycle.preStop"), None, l.pre_stop.as_ref(), grace);
    }
    probe(errs, c.liveness_probe.as_ref(), p, "livenessProbe", grace);
    probe(errs, c.readiness_probe.as_ref(), p, "readinessProbe", grace);
    probe(errs, c.startup_probe.as_ref(), p, "startupProbe", grace);
}

/// Duplicate `protocol/hostIP/hostPort` triples among `containers`.
fn host_port_conflicts<'a>(errs: &mut Vec<FieldError>, containers: impl Iterator<Item = (usize, &'a Container)>, base: &str) {
    let mut seen = HashSet::new();
    for (ci, c) in containers {
        for (pi, port) in c.ports.iter().flatten().enumerate() {
            let Some(hp) = port.host_port.filter(|hp| *hp != 0) else { continue };
            let key = format!("{}/{}/{hp}", port.protocol.as_deref().unwrap_or_default(), port.host_ip.as_deref().unwrap_or_default());
            if !seen.insert(key.clone()) {
                errs.push(FieldError::duplicate(format!("{base}[{ci}].ports[{pi}].hostPort"), key));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Pod spec
// ---------------------------------------------------------------------------

fn validate_tolerations(errs: &mut Vec<FieldError>, tolerations: &[Toleration], p: &str) {
    for (i, t) in tolerations.iter().enumerate() {
        let tp = format!("{p}[{i}]");
        let (key, op, value, effect) = (
            t.key.as_deref().unwrap_or_default(),
            t.operator.as_deref().unwrap_or_default(),
            t.value.as_deref().unwrap_or_default(),
            t.effect.as_deref().unwrap_or_default(),
        );
        if !key.is_empty() {
            check(errs, &format!("{tp}.key"), key, validation::qualified_name);
        }
        if key.is_empty() && op != "Exists" {
            errs.push(FieldError::invalid(format!("{tp}.operator"), op, "operator must be Exists when `key` is empty, which means \"match all values and all keys\""));
        }
        if t.toleration_seconds.is_some() && effect != "NoExecute" {
            errs.push(FieldError::invalid(format!("{tp}.effect"), effect, "effect must be 'NoExecute' when `tolerationSeconds` is set"));
        }
        match op {
            "" | "Equal" => {
                let msgs = validation::label_value(value);
                if !msgs.is_empty() {
                    errs.push(FieldError::invalid(format!("{tp}.operator"), value, msgs.join(";")));
                }
            }
            "Exists" if !value.is_empty() => {
                errs.push(FieldError::invalid(format!("{tp}.operator"), value, "value must be empty when `operator` is 'Exists'"));
            }
            "Exists" => {}
            other => errs.push(FieldError::not_supported(format!("{tp}.operator"), other, &["Equal", "Exists"])),
        }
        if !effect.is_empty() && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            errs.push(FieldError::not_supported(format!("{tp}.effect"), effect, &["NoSchedule", "PreferNoSchedule", "NoExecute"]));
        }
    }
}

/// Upstream's ValidatePodSpec, every field path prefixed by `path`.
pub fn validate_pod_spec(spec: &PodSpec, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let e = &mut errs;
    let grace = spec.termination_grace_period_seconds;
    require(e, grace.is_none(), format!("{path}.terminationGracePeriodSeconds"));
    // Volumes: a volume with any error is not mountable.
    let mut volumes = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        let mut ve = Vec::new();
        let sources = volume_sources(v);
        let mut present = sources.iter().filter(|(_, set)| *set);
        match present.next() {
            None => ve.push(FieldError::required(&vp, "must specify a volume type")),
            Some(_) => volume_source(&mut ve, v, &vp),
        }
        ve.extend(present.map(|(name, _)| FieldError::forbidden(format!("{vp}.{name}"), MORE_THAN_ONE_VOLUME)));
        if v.name.is_empty() {
            ve.push(FieldError::required(format!("{vp}.name"), ""));
        } else {
            check(&mut ve, &format!("{vp}.name"), &v.name, validation::dns1123_label);
        }
        if volumes.contains(v.name.as_str()) {
            ve.push(FieldError::duplicate(format!("{vp}.name"), &v.name));
        }
        if ve.is_empty() {
            volumes.insert(v.name.as_str());
        }
        e.extend(ve);
    }
    // Containers.
    let cp = format!("{path}.containers");
    if spec.containers.is_empty() {
        e.push(FieldError::required(&cp, ""));
    } else {
        let mut names = HashSet::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let p = format!("{cp}[{i}]");
            container_common(e, c, &p, &volumes);
            if !names.insert(c.name.as_str()) {
                e.push(FieldError::duplicate(format!("{p}.name"), &c.name));
            }
            probes_and_lifecycle(e, c, &p, grace);
            if c.restart_policy.is_some() {
                e.push(FieldError::forbidden(format!("{p}.restartPolicy"), "may not be set for non-init containers"));
            }
        }
        host_port_conflicts(e, spec.containers.iter().enumerate(), &cp);
    }
    let ip = format!("{path}.initContainers");
    let mut names: HashSet<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let p = format!("{ip}[{i}]");
        container_common(e, c, &p, &volumes);
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        if let Some(rp) = c.restart_policy.as_deref().filter(|rp| *rp != "Always") {
            e.push(FieldError::not_supported(format!("{p}.restartPolicy"), rp, &["Always"]));
        }
        if names.contains(c.name.as_str()) {
            e.push(FieldError::duplicate(format!("{p}.name"), &c.name));
        } else if !c.name.is_empty() {
            names.insert(&c.name);
        }
        host_port_conflicts(e, std::iter::once((i, c)), &ip);
        if sidecar {
            probes_and_lifecycle(e, c, &p, grace);
        } else {
            let set = [("lifecycle", c.lifecycle.is_some()), ("livenessProbe", c.liveness_probe.is_some()), ("readinessProbe", c.readiness_probe.is_some()), ("startupProbe", c.startup_probe.is_some())];
            for (name, _) in set.iter().filter(|(_, s)| *s) {
                e.push(FieldError::forbidden(format!("{p}.{name}"), "may not be set for init containers without restartPolicy=Always"));
            }
        }
    }
    unsupported(e, format!("{path}.restartPolicy"), spec.restart_policy.as_deref(), &["Always", "OnFailure", "Never"]);
    unsupported(e, format!("{path}.dnsPolicy"), spec.dns_policy.as_deref(), &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"]);
    labels_map(e, &format!("{path}.nodeSelector"), spec.node_selector.as_ref());
    if let Some(sc) = &spec.security_context {
        let sp = format!("{path}.securityContext");
        id_range(e, format!("{sp}.fsGroup"), sc.fs_group);
        id_range(e, format!("{sp}.runAsUser"), sc.run_as_user);
        id_range(e, format!("{sp}.runAsGroup"), sc.run_as_group);
        for (i, g) in sc.supplemental_groups.iter().flatten().enumerate() {
            id_range(e, format!("{sp}.supplementalGroups[{i}]"), Some(*g));
        }
    }
    // DNS config.
    let dp = format!("{path}.dnsConfig");
    let nameservers = spec.dns_config.as_ref().and_then(|d| d.nameservers.as_deref()).unwrap_or_default();
    if spec.dns_policy.as_deref() == Some("None") && spec.dns_config.is_none() {
        e.push(FieldError::required(&dp, "must provide `dnsConfig` when `dnsPolicy` is None"));
    } else if spec.dns_policy.as_deref() == Some("None") && nameservers.is_empty() {
        e.push(FieldError::required(format!("{dp}.nameservers"), "must provide at least one DNS nameserver when `dnsPolicy` is None"));
    }
    for (i, ns) in nameservers.iter().enumerate().filter(|(_, ns)| ns.parse::<std::net::IpAddr>().is_err()) {
        e.push(FieldError::invalid(format!("{dp}.nameservers[{i}]"), ns, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"));
    }
    for (i, g) in spec.readiness_gates.iter().flatten().enumerate() {
        check(e, &format!("{path}.readinessGates[{i}].conditionType"), &g.condition_type, validation::qualified_name);
    }
    let mut gates = HashSet::new();
    for (i, g) in spec.scheduling_gates.iter().flatten().enumerate() {
        check(e, &format!("{path}.schedulingGates[{i}]"), &g.name, validation::qualified_name);
        if !gates.insert(g.name.as_str()) {
            e.push(FieldError::duplicate(format!("{path}.schedulingGates[{i}]"), &g.name));
        }
    }
    for (field, value) in [("serviceAccountName", &spec.service_account_name), ("nodeName", &spec.node_name)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            check(e, &format!("{path}.{field}"), v, validation::dns1123_subdomain);
        }
    }
    if let Some(ads) = spec.active_deadline_seconds.filter(|v| !(1..=MAX_INT32).contains(v)) {
        e.push(FieldError::invalid(format!("{path}.activeDeadlineSeconds"), ads, "must be between 1 and 2147483647, inclusive"));
    }
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            check(e, &format!("{path}.{field}"), v, validation::dns1123_label);
        }
    }
    validate_tolerations(e, spec.tolerations.as_deref().unwrap_or_default(), &format!("{path}.tolerations"));
    for (field, value) in [("priorityClassName", &spec.priority_class_name), ("runtimeClassName", &spec.runtime_class_name)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty() || field == "runtimeClassName") {
            check(e, &format!("{path}.{field}"), v, validation::dns1123_subdomain);
        }
    }
    if spec.preemption_policy.is_some() {
        unsupported(e, format!("{path}.preemptionPolicy"), spec.preemption_policy.as_deref(), &["PreemptLowerPriority", "Never"]);
    }
    errs
}

/// ValidatePod's spec part, plus the checks that apply to Pods and not to templates.
/// Metadata is validated by the caller; this runs on create and on every update.
pub fn validate_pod(pod: &Pod) -> Vec<FieldError> {
    let default = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default);
    let mut errs = validate_pod_spec(spec, "spec");
    if spec.service_account_name.as_deref().is_none_or(str::is_empty) {
        for (vi, v) in spec.volumes.iter().flatten().enumerate() {
            for (si, s) in v.projected.iter().flat_map(|p| p.sources.iter().flatten()).enumerate() {
                if s.service_account_token.is_some() {
                    let f = format!("spec.volumes[{vi}].projected.sources[{si}].serviceAccountToken");
                    errs.push(FieldError::forbidden(f, "must not be specified when serviceAccountName is not set"));
                }
            }
        }
    }
    for (list, containers) in [("containers", Some(&spec.containers)), ("initContainers", spec.init_containers.as_ref())] {
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let image = c.image.as_deref().unwrap_or_default();
            if image.trim() != image {
                errs.push(FieldError::invalid(format!("spec.{list}[{i}].image"), image, "must not have leading or trailing whitespace"));
            }
        }
    }
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) && spec.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty()) {
        errs.push(FieldError::forbidden("spec.nodeName", "cannot be set until all schedulingGates have been cleared"));
    }
    errs
}

/// A rendering of the top-level spec fields that differ, in the spirit of upstream's `cmp.Diff`.
fn spec_diff(old: &Value, new: &Value) -> String {
    let (empty, mut out) = (serde_json::Map::new(), String::from("  core.PodSpec{\n"));
    let (old, new) = (old.as_object().unwrap_or(&empty), new.as_object().unwrap_or(&empty));
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut same = 0;
    for k in keys {
        let (o, n) = (old.get(k).unwrap_or(&Value::Null), new.get(k).unwrap_or(&Value::Null));
        if o == n {
            same += 1;
            continue;
        }
        let field = format!("{}{}", k[..1].to_ascii_uppercase(), &k[1..]);
        out.push_str(&format!("- \t{field}: {o},\n+ \t{field}: {n},\n"));
    }
    out.push_str(&format!("  \t... // {same} identical fields\n  }}\n"));
    out
}

/// Upstream's ValidatePodUpdate rules beyond the spec validation `validate_pod` repeats.
pub fn validate_pod_update(new: &Pod, old: &Pod) -> Vec<FieldError> {
    let default = PodSpec::default();
    let (ns, os) = (new.spec.as_ref().unwrap_or(&default), old.spec.as_ref().unwrap_or(&default));
    let mut errs = Vec::new();
    let empty = Vec::new();
    for (list, n, o) in [
        ("containers", &ns.containers, &os.containers),
        ("initContainers", ns.init_containers.as_ref().unwrap_or(&empty), os.init_containers.as_ref().unwrap_or(&empty)),
    ] {
        if n.len() != o.len() {
            errs.push(FieldError::forbidden(format!("spec.{list}"), "pod updates may not add or remove containers"));
            return errs;
        }
        for (i, c) in n.iter().enumerate() {
            let image = c.image.as_deref().unwrap_or_default();
            require(&mut errs, image.is_empty(), format!("spec.{list}[{i}].image"));
            if image.trim() != image {
                errs.push(FieldError::invalid(format!("spec.{list}[{i}].image"), image, "must not have leading or trailing whitespace"));
            }
        }
    }
    match (ns.active_deadline_seconds, os.active_deadline_seconds) {
        (Some(n), _) if !(0..=MAX_INT32).contains(&n) => {
            errs.push(FieldError::invalid("spec.activeDeadlineSeconds", n, "must be between 0 and 2147483647, inclusive"));
            return errs;
        }
        (Some(n), Some(o)) if o < n => {
            errs.push(FieldError::invalid("spec.activeDeadlineSeconds", n, "must be less than or equal to previous value"));
            return errs;
        }
        (None, Some(_)) => errs.push(FieldError::invalid("spec.activeDeadlineSeconds", "null", "must not update from a positive integer to nil value")),
        _ => {}
    }
    // Tolerations: existing ones stay (tolerationSeconds may change); additions are validated.
    let new_tolerations = ns.tolerations.as_deref().unwrap_or_default();
    let kept = os.tolerations.iter().flatten().all(|o| {
        new_tolerations.iter().any(|n| Toleration { toleration_seconds: n.toleration_seconds, ..o.clone() } == *n)
    });
    if !kept {
        errs.push(FieldError::forbidden("spec.tolerations", "existing toleration can not be modified except its tolerationSeconds"));
    } else {
        validate_tolerations(&mut errs, new_tolerations, "spec.tolerations");
    }
    // Scheduling gates may only be removed.
    let old_gates: HashSet<&str> = os.scheduling_gates.iter().flatten().map(|g| g.name.as_str()).collect();
    for (i, g) in ns.scheduling_gates.iter().flatten().enumerate() {
        if !old_gates.contains(g.name.as_str()) {
            let msg = format!("only deletion is allowed, but found new scheduling gate '{}'", g.name);
            errs.push(FieldError::forbidden(format!("spec.schedulingGates[{i}].name"), msg));
        }
    }
    if ns == os {
        return errs;
    }
    // Undo the permitted changes; anything left is forbidden.
    let mut munged = ns.clone();
    for (c, o) in munged.containers.iter_mut().zip(&os.containers) {
        c.image.clone_from(&o.image);
    }
    for (c, o) in munged.init_containers.iter_mut().flatten().zip(os.init_containers.iter().flatten()) {
        c.image.clone_from(&o.image);
    }
    munged.active_deadline_seconds = os.active_deadline_seconds;
    munged.scheduling_gates.clone_from(&os.scheduling_gates);
    munged.tolerations.clone_from(&os.tolerations);
    if os.termination_grace_period_seconds.is_some_and(|g| g < 0) && munged.termination_grace_period_seconds == Some(1) {
        munged.termination_grace_period_seconds = os.termination_grace_period_seconds;
    }
    if os.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty()) && munged.node_selector != os.node_selector {
        let new_sel = munged.node_selector.clone().unwrap_or_default();
        if os.node_selector.iter().flatten().any(|(k, v)| new_sel.get(k) != Some(v)) {
            let msg = "only additions to spec.nodeSelector are allowed (no mutations or deletions)";
            errs.push(FieldError::invalid("spec.nodeSelector", go_map(&new_sel), msg));
        }
        munged.node_selector.clone_from(&os.node_selector);
    }
    // Compare as JSON so an absent list equals an empty one, as Go's semantic equality does.
    let normalize = |s: &PodSpec| strip_empty(serde_json::to_value(s).unwrap_or(Value::Null));
    let (o, m) = (normalize(os), normalize(&munged));
    if o != m {
        let msg = format!("pod updates may not change fields other than {UPDATABLE_FIELDS}\n{}", spec_diff(&o, &m));
        errs.push(FieldError::forbidden("spec", msg));
    }
    errs
}

fn strip_empty(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter().map(|(k, v)| (k, strip_empty(v))).filter(|(_, v)| !matches!(v, Value::Null) && v != &Value::Array(vec![]) && v != &Value::Object(Default::default())).collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_empty).collect()),
        other => other,
    }
}

/// ValidatePodTemplateSpec plus the rules `kind` (a workload of long-running
/// pods) adds to its template.
pub fn validate_template(template: &PodTemplateSpec, path: &str, kind: &str) -> Vec<FieldError> {
    let mut errs = validate_template_metadata(template, path);
    let default = PodSpec::default();
    let spec = template.spec.as_ref().unwrap_or(&default);
    let sp = format!("{path}.spec");
    errs.extend(validate_pod_spec(spec, &sp));
    if spec.ephemeral_containers.as_ref().is_some_and(|e| !e.is_empty()) {
        errs.push(FieldError::forbidden(format!("{sp}.ephemeralContainers"), "ephemeral containers not allowed in pod template"));
    }
    errs.extend(validate_long_running(spec, &sp, kind));
    errs
}

/// The labels and annotations of a pod template.
pub fn validate_template_metadata(template: &PodTemplateSpec, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let meta = template.metadata.as_ref();
    labels_map(&mut errs, &format!("{path}.labels"), meta.and_then(|m| m.labels.as_ref()));
    let mut total = 0;
    for (k, v) in meta.and_then(|m| m.annotations.as_ref()).into_iter().flatten() {
        check(&mut errs, &format!("{path}.annotations"), &k.to_ascii_lowercase(), validation::qualified_name);
        total += k.len() + v.len();
    }
    if total > 256 * 1024 {
        errs.push(FieldError::too_long(format!("{path}.annotations"), 256 * 1024));
    }
    errs
}

/// What controllers of long-running pods require of their template (at
/// `spec_path`): restartPolicy Always and no active deadline.
pub fn validate_long_running(spec: &PodSpec, spec_path: &str, kind: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let policy = spec.restart_policy.as_deref().unwrap_or_default();
    if policy != "Always" {
        errs.push(FieldError::not_supported(format!("{spec_path}.restartPolicy"), policy, &["Always"]));
    }
    if spec.active_deadline_seconds.is_some() {
        errs.push(FieldError::forbidden(format!("{spec_path}.activeDeadlineSeconds"), format!("activeDeadlineSeconds in {kind} is not Supported")));
    }
    errs
}

// ---------------------------------------------------------------------------
// Deletion and table cells
// ---------------------------------------------------------------------------

/// The grace period of a pod deletion, as upstream's CheckGracefulDelete computes it.
pub fn grace_period(pod: &Pod, requested: Option<i64>) -> Option<i64> {
    let spec = pod.spec.as_ref();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
    let unbound = spec.and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty);
    let period = if unbound || matches!(phase, "Succeeded" | "Failed") {
        0
    } else {
        requested.or(spec.and_then(|s| s.termination_grace_period_seconds)).unwrap_or(30)
    };
    Some(if period < 0 { 1 } else { period })
}

/// What printPod derives from a pod's status.
struct Summary {
    ready: usize,
    total: usize,
    reason: String,
    restarts: i64,
    last_restart: Option<jiff::Timestamp>,
}

fn finished_at(c: &ContainerStatus) -> Option<jiff::Timestamp> {
    c.last_state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0)
}

fn summarize(pod: &Pod) -> Summary {
    let default_spec = PodSpec::default();
    let default_status = PodStatus::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let status = pod.status.as_ref().unwrap_or(&default_status);
    let phase = status.phase.clone().unwrap_or_default();
    let mut reason = status.reason.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| phase.clone());
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if conditions.iter().any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("SchedulingGated")) {
        reason = "SchedulingGated".into();
    }
    let init_specs: HashMap<&str, &Container> = spec.init_containers.iter().flatten().map(|c| (c.name.as_str(), c)).collect();
    let sidecar = |name: &str| init_specs.get(name).is_some_and(|c| c.restart_policy.as_deref() == Some("Always"));
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")).count();
    let mut s = Summary { ready: 0, total: spec.containers.len() + sidecars, reason, restarts: 0, last_restart: None };
    let (mut sidecar_restarts, mut sidecar_last) = (0, None);
    let mut initializing = false;
    let init_count = spec.init_containers.as_ref().map_or(0, Vec::len);
    for (i, c) in status.init_container_statuses.iter().flatten().enumerate() {
        s.restarts += i64::from(c.restart_count);
        s.last_restart = s.last_restart.max(finished_at(c));
        if sidecar(&c.name) {
            sidecar_restarts += i64::from(c.restart_count);
            sidecar_last = sidecar_last.max(finished_at(c));
        }
        let state = c.state.clone().unwrap_or_default();
        let terminated = state.terminated.as_ref();
        let waiting = state.waiting.as_ref().and_then(|w| w.reason.as_deref()).unwrap_or_default();
        if terminated.is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        if sidecar(&c.name) && c.started == Some(true) {
            s.ready += usize::from(c.ready);
            continue;
        }
        s.reason = match terminated {
            Some(t) => match t.reason.as_deref().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None if t.signal.unwrap_or(0) != 0 => format!("Init:Signal:{}", t.signal.unwrap_or(0)),
                None => format!("Init:ExitCode:{}", t.exit_code),
            },
            None if !waiting.is_empty() && waiting != "PodInitializing" => format!("Init:{waiting}"),
            None => format!("Init:{i}/{init_count}"),
        };
        initializing = true;
        break;
    }
    let initialized = conditions.iter().any(|c| c.type_ == "Initialized" && c.status == "True");
    if !initializing || initialized {
        s.restarts = sidecar_restarts;
        s.last_restart = sidecar_last;
        let mut has_running = false;
        for c in status.container_statuses.iter().flatten().rev() {
            s.restarts += i64::from(c.restart_count);
            s.last_restart = s.last_restart.max(finished_at(c));
            let state = c.state.clone().unwrap_or_default();
            let waiting = state.waiting.as_ref().and_then(|w| w.reason.clone()).unwrap_or_default();
            if !waiting.is_empty() {
                s.reason = waiting;
            } else if let Some(t) = &state.terminated {
                s.reason = match t.reason.clone().filter(|r| !r.is_empty()) {
                    Some(r) => r,
                    None if t.signal.unwrap_or(0) != 0 => format!("Signal:{}", t.signal.unwrap_or(0)),
                    None => format!("ExitCode:{}", t.exit_code),
                };
            } else if c.ready && state.running.is_some() {
                has_running = true;
                s.ready += 1;
            }
        }
        if s.reason == "Completed" && has_running {
            let ready = conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            s.reason = if ready { "Running" } else { "NotReady" }.into();
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        if status.reason.as_deref() == Some("NodeLost") {
            s.reason = "Unknown".into();
        } else if !matches!(phase.as_str(), "Succeeded" | "Failed") {
            s.reason = "Terminating".into();
        }
    }
    s
}

/// kubectl's HumanDuration.
fn human_duration(secs: i64) -> String {
    let (m, h) = (secs / 60, secs / 3600);
    let (d, y) = (h / 24, h / 24 / 365);
    match secs {
        ..-1 => "<invalid>".into(),
        -1 => "0s".into(),
        0..120 => format!("{secs}s"),
        _ if m < 10 => if secs % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", secs % 60) },
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) },
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) },
        _ if h < 24 * 365 * 2 => format!("{d}d"),
        _ if h < 24 * 365 * 8 => if d % 365 == 0 { format!("{y}y") } else { format!("{y}y{}d", d % 365) },
        _ => format!("{y}y"),
    }
}

/// READY: ready containers (and started sidecars) over containers plus sidecars, e.g. "1/2".
pub fn ready_cell(pod: &Pod) -> String {
    let s = summarize(pod);
    format!("{}/{}", s.ready, s.total)
}

/// STATUS: the reason kubectl shows (Running, Init:0/1, CrashLoopBackOff, Completed, Terminating…).
pub fn status_cell(pod: &Pod) -> String {
    summarize(pod).reason
}

/// RESTARTS: "0", or "3 (5m ago)" when the last restart time is known.
pub fn restarts_cell(pod: &Pod) -> String {
    restarts_at(pod, jiff::Timestamp::now())
}

fn restarts_at(pod: &Pod, now: jiff::Timestamp) -> String {
    let s = summarize(pod);
    match s.last_restart {
        Some(t) if s.restarts != 0 => format!("{} ({} ago)", s.restarts, human_duration(now.as_second() - t.as_second())),
        _ => s.restarts.to_string(),
    }
}

/// READINESS GATES: "<none>", or true gates over gates, e.g. "1/2".
pub fn readiness_gates_cell(pod: &Pod) -> String {
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_deref()).unwrap_or_default();
    if gates.is_empty() {
        return "<none>".into();
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let ready = gates.iter().filter(|g| conditions.iter().find(|c| c.type_ == g.condition_type).is_some_and(|c| c.status == "True")).count();
    format!("{ready}/{}", gates.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("valid pod json")
    }

    /// A pod as a client would send it, defaulted as every write is.
    fn defaulted(spec: Value) -> Pod {
        let mut p = pod(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}));
        default_pod(&mut p);
        p
    }

    fn web() -> Value {
        json!({"containers": [{"name": "web", "image": "nginx:1.25"}]})
    }

    fn errors(spec: Value) -> Vec<String> {
        validate_pod(&defaulted(spec)).iter().map(ToString::to_string).collect()
    }

    fn spec_json(p: &Pod) -> Value {
        serde_json::to_value(p.spec.as_ref().unwrap()).unwrap()
    }

    // --- defaults -----------------------------------------------------------

    #[test]
    fn latest_tag_pulls_always() {
        for (image, policy) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("localhost:5000/team/app", "Always"),
            ("nginx:1.25", "IfNotPresent"),
            ("registry.example.com:5000/app:v1", "IfNotPresent"),
            ("nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "IfNotPresent"),
            ("nginx:latest@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "Always"),
            ("Nginx", "IfNotPresent"),
        ] {
            let p = defaulted(json!({"containers": [{"name": "c", "image": image}]}));
            assert_eq!(p.spec.unwrap().containers[0].image_pull_policy.as_deref(), Some(policy), "{image}");
        }
    }

    #[test]
    fn explicit_pull_policy_is_kept() {
        let p = defaulted(json!({"containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "Never"}]}));
        assert_eq!(p.spec.unwrap().containers[0].image_pull_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn pod_spec_defaults_match_upstream() {
        let mut spec: PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}],
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}],
            "initContainers": [{"name": "i", "image": "busybox:1"}]
        }))
        .unwrap();
        default_pod_spec(&mut spec);
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["restartPolicy"], "Always");
        assert_eq!(v["dnsPolicy"], "ClusterFirst");
        assert_eq!(v["schedulerName"], "default-scheduler");
        assert_eq!(v["terminationGracePeriodSeconds"], 30);
        assert_eq!(v["securityContext"], json!({}));
        let c = &v["containers"][0];
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["resources"], json!({}));
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(v["initContainers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(v["initContainers"][0]["terminationMessagePolicy"], "File");
        // Pod-only defaults stay off templates.
        assert!(v.get("enableServiceLinks").is_none());
    }

    #[test]
    fn pods_enable_service_links() {
        assert_eq!(defaulted(web()).spec.unwrap().enable_service_links, Some(true));
        let p = defaulted(json!({"enableServiceLinks": false, "containers": [{"name": "c", "image": "x"}]}));
        assert_eq!(p.spec.unwrap().enable_service_links, Some(false));
    }

    #[test]
    fn volume_sources_get_default_modes() {
        let p = defaulted(json!({"containers": [{"name": "c", "image": "x"}], "volumes": [
            {"name": "cm", "configMap": {"name": "c"}},
            {"name": "s", "secret": {"secretName": "s"}},
            {"name": "d", "downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "pr", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            {"name": "h", "hostPath": {"path": "/data"}},
            {"name": "e", "emptyDir": {}},
            {"name": "bare"},
            {"name": "m", "configMap": {"name": "c", "defaultMode": 256}},
        ]}));
        let v = spec_json(&p)["volumes"].clone();
        assert_eq!(v[0]["configMap"]["defaultMode"], 420);
        assert_eq!(v[1]["secret"]["defaultMode"], 420);
        assert_eq!(v[2]["downwardAPI"]["defaultMode"], 420);
        assert_eq!(v[2]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(v[3]["projected"]["defaultMode"], 420);
        assert_eq!(v[3]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3600);
        assert_eq!(v[4]["hostPath"]["type"], "");
        assert_eq!(v[5], json!({"name": "e", "emptyDir": {}}));
        assert_eq!(v[6], json!({"name": "bare", "emptyDir": {}}));
        assert_eq!(v[7]["configMap"]["defaultMode"], 256);
    }

    #[test]
    fn probes_get_default_timings_and_http_path() {
        let p = defaulted(json!({"containers": [{"name": "c", "image": "x",
            "livenessProbe": {"httpGet": {"port": 8080}}, "readinessProbe": {"grpc": {"port": 9000}, "periodSeconds": 5}}]}));
        let c = &spec_json(&p)["containers"][0];
        assert_eq!(c["livenessProbe"], json!({"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}));
        assert_eq!(c["readinessProbe"]["periodSeconds"], 5);
        assert_eq!(c["readinessProbe"]["grpc"]["service"], "");
    }

    #[test]
    fn requests_default_to_limits_on_pods() {
        let p = defaulted(json!({"containers": [{"name": "c", "image": "x",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}}]}));
        let r = &spec_json(&p)["containers"][0]["resources"];
        assert_eq!(r["requests"], json!({"cpu": "500m", "memory": "1Gi"}));
    }

    #[test]
    fn host_network_ports_default_host_port() {
        let p = defaulted(json!({"hostNetwork": true, "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]}));
        assert_eq!(spec_json(&p)["containers"][0]["ports"][0]["hostPort"], 8080);
    }

    #[test]
    fn deprecated_service_account_is_an_alias() {
        let p = defaulted(json!({"serviceAccount": "builder", "containers": [{"name": "c", "image": "x"}]}));
        let s = p.spec.unwrap();
        assert_eq!((s.service_account_name.as_deref(), s.service_account.as_deref()), (Some("builder"), Some("builder")));
        let p = defaulted(json!({"serviceAccount": "old", "serviceAccountName": "new", "containers": [{"name": "c", "image": "x"}]}));
        assert_eq!(p.spec.unwrap().service_account.as_deref(), Some("new"));
    }

    #[test]
    fn defaulting_is_idempotent() {
        let once = defaulted(web());
        let mut twice = once.clone();
        default_pod(&mut twice);
        assert_eq!(once, twice);
    }

    // --- creation -----------------------------------------------------------

    #[test]
    fn create_adds_service_account_priority_and_not_ready_tolerations() {
        let mut p = defaulted(web());
        prepare_pod_create(&mut p);
        let v = spec_json(&p);
        assert_eq!((v["serviceAccountName"].as_str(), v["serviceAccount"].as_str()), (Some("default"), Some("default")));
        assert_eq!(v["priority"], 0);
        assert_eq!(v["preemptionPolicy"], "PreemptLowerPriority");
        assert_eq!(
            v["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ])
        );
        assert!(validate_pod(&p).is_empty());
    }

    #[test]
    fn own_tolerations_suppress_the_defaults() {
        let mut p = defaulted(json!({"containers": [{"name": "c", "image": "x"}], "tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]}));
        prepare_pod_create(&mut p);
        let t = p.spec.unwrap().tolerations.unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].toleration_seconds, Some(10));
        assert_eq!(t[1].key.as_deref(), Some("node.kubernetes.io/not-ready"));
        let mut p = defaulted(json!({"containers": [{"name": "c", "image": "x"}], "tolerations": [{"operator": "Exists"}]}));
        prepare_pod_create(&mut p);
        assert_eq!(p.spec.unwrap().tolerations.unwrap().len(), 1);
    }

    #[test]
    fn create_resets_status_to_pending() {
        let mut p = defaulted(web());
        p.status = Some(PodStatus { phase: Some("Running".into()), pod_ip: Some("10.0.0.1".into()), ..Default::default() });
        prepare_pod_create(&mut p);
        let s = serde_json::to_value(p.status.unwrap()).unwrap();
        assert_eq!(s, json!({"phase": "Pending", "qosClass": "BestEffort"}));
    }

    #[test]
    fn qos_class_follows_requests_and_limits() {
        let qos = |resources: Value| {
            let mut p = defaulted(json!({"containers": [{"name": "c", "image": "x", "resources": resources}]}));
            prepare_pod_create(&mut p);
            p.status.unwrap().qos_class.unwrap()
        };
        assert_eq!(qos(json!({})), "BestEffort");
        assert_eq!(qos(json!({"requests": {"cpu": "100m"}})), "Burstable");
        assert_eq!(qos(json!({"limits": {"cpu": "1", "memory": "1Gi"}})), "Guaranteed");
        assert_eq!(qos(json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1024Mi"}})), "Guaranteed");
        assert_eq!(qos(json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}})), "Burstable");
        assert_eq!(qos(json!({"limits": {"cpu": "1"}})), "Burstable");
    }

    #[test]
    fn gated_pods_start_with_a_scheduling_gated_condition() {
        let mut p = defaulted(json!({"containers": [{"name": "c", "image": "x"}], "schedulingGates": [{"name": "example.com/wait"}]}));
        prepare_pod_create(&mut p);
        assert_eq!(status_cell(&p), "SchedulingGated");
    }

    // --- validation ---------------------------------------------------------

    #[test]
    fn a_defaulted_pod_is_valid() {
        assert_eq!(errors(web()), Vec::<String>::new());
    }

    #[test]
    fn containers_are_required() {
        assert_eq!(errors(json!({"containers": []})), ["spec.containers: Required value"]);
    }

    #[test]
    fn validation_runs_after_defaulting() {
        let spec: PodSpec = serde_json::from_value(web()).unwrap();
        let errs: Vec<String> = validate_pod_spec(&spec, "spec").iter().map(ToString::to_string).collect();
        assert!(errs.contains(&"spec.restartPolicy: Required value".to_owned()), "{errs:?}");
        assert!(errs.contains(&"spec.containers[0].imagePullPolicy: Required value".to_owned()), "{errs:?}");
    }

    #[test]
    fn container_names_must_be_dns_labels() {
        let errs = errors(json!({"containers": [{"name": "Web_1", "image": "x"}]}));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("spec.containers[0].name: Invalid value: \"Web_1\": a lowercase RFC 1123 label"), "{errs:?}");
        assert_eq!(errors(json!({"containers": [{"name": "", "image": "x"}]})), ["spec.containers[0].name: Required value"]);
    }

    #[test]
    fn container_names_are_unique_across_init_and_app_containers() {
        let errs = errors(json!({"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "x"}],
            "initContainers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}, {"name": "b", "image": "x"}]}));
        assert_eq!(errs, [
            "spec.containers[1].name: Duplicate value: \"a\"",
            "spec.initContainers[0].name: Duplicate value: \"a\"",
            "spec.initContainers[2].name: Duplicate value: \"b\"",
        ]);
    }

    #[test]
    fn image_is_required() {
        assert_eq!(errors(json!({"containers": [{"name": "c"}]})), ["spec.containers[0].image: Required value"]);
        assert_eq!(errors(json!({"containers": [{"name": "c", "image": " x"}]})), [
            "spec.containers[0].image: Invalid value: \" x\": must not have leading or trailing whitespace"
        ]);
    }

    #[test]
    fn container_ports_are_checked() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "ports": [
            {"containerPort": 70000}, {"containerPort": 80, "hostPort": -1}, {"containerPort": 81, "protocol": "HTTP"}]}]}));
        assert_eq!(errs, [
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[1].hostPort: Invalid value: -1: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[2].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ]);
        assert_eq!(errors(json!({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 0}]}]})), [
            "spec.containers[0].ports[0].containerPort: Required value"
        ]);
    }

    #[test]
    fn port_names_are_iana_service_names_and_unique() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "ports": [
            {"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81},
            {"name": "8080", "containerPort": 82}, {"name": "a--b", "containerPort": 83},
            {"name": "very-long-port-name", "containerPort": 84}, {"name": "Web", "containerPort": 85}]}]}));
        assert_eq!(errs, [
            "spec.containers[0].ports[1].name: Duplicate value: \"http\"",
            "spec.containers[0].ports[2].name: Invalid value: \"8080\": must contain at least one letter (a-z)",
            "spec.containers[0].ports[3].name: Invalid value: \"a--b\": must not contain consecutive hyphens",
            "spec.containers[0].ports[4].name: Invalid value: \"very-long-port-name\": must be no more than 15 bytes",
            "spec.containers[0].ports[5].name: Invalid value: \"Web\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        ]);
    }

    #[test]
    fn host_ports_may_not_collide() {
        let errs = errors(json!({"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]},
            {"name": "b", "image": "x", "ports": [{"containerPort": 81, "hostPort": 8080}]}]}));
        assert_eq!(errs, ["spec.containers[1].ports[0].hostPort: Duplicate value: \"TCP//8080\""]);
    }

    #[test]
    fn env_names_are_relaxed_but_exclude_equals() {
        let ok = errors(json!({"containers": [{"name": "c", "image": "x", "env": [{"name": "1st.var-name"}, {"name": "with space"}]}]}));
        assert!(ok.is_empty(), "{ok:?}");
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "env": [{"name": "A=B"}, {"name": ""}]}]}));
        assert_eq!(errs, [
            "spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='",
            "spec.containers[0].env[1].name: Required value",
        ]);
    }

    #[test]
    fn env_value_from_needs_exactly_one_source() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "env": [
            {"name": "A", "valueFrom": {}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}, "secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "C", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "D", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": ""}}},
        ]}]}));
        assert_eq!(errs, [
            "spec.containers[0].env[0].valueFrom: Invalid value: \"\": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            "spec.containers[0].env[1].valueFrom: Invalid value: \"\": may not have more than one field specified at a time",
            "spec.containers[0].env[2].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty",
            "spec.containers[0].env[3].valueFrom.configMapKeyRef.key: Required value",
        ]);
    }

    #[test]
    fn env_field_refs_name_supported_paths() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "env": [
            {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}},
            {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}},
            {"name": "D", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}},
        ]}]}));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: Unsupported value: \"status.phase\": supported values: \"metadata.name\""));
        assert_eq!(errs[1], "spec.containers[0].env[2].valueFrom.fieldRef.fieldPath: Invalid value: \"spec.nope\": error converting fieldPath: field label not supported: spec.nope");
        assert!(errs[2].starts_with("spec.containers[0].env[3].valueFrom.resourceFieldRef.resource: Unsupported value: \"limits.gpu\""));
    }

    #[test]
    fn env_from_needs_one_source() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "envFrom": [{"prefix": "P_"}, {"configMapRef": {"name": "cm"}}]}]}));
        assert_eq!(errs, ["spec.containers[0].envFrom: Invalid value: \"\": must specify one of: `configMapRef` or `secretRef`"]);
    }

    #[test]
    fn volume_mounts_must_name_a_volume() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}));
        let e = validate_pod(&defaulted(json!({"containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]})));
        assert_eq!(errs.len(), 1);
        assert_eq!((e[0].field.as_str(), e[0].value.as_deref()), ("spec.containers[0].volumeMounts[0].name", Some("\"data\"")));
    }

    #[test]
    fn mount_paths_are_required_and_unique() {
        let errs = errors(json!({"volumes": [{"name": "v", "emptyDir": {}}], "containers": [{"name": "c", "image": "x", "volumeMounts": [
            {"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": ""},
            {"name": "v", "mountPath": "/b", "subPath": "../etc"}]}]}));
        assert_eq!(errs, [
            "spec.containers[0].volumeMounts[1].mountPath: Invalid value: \"/a\": must be unique",
            "spec.containers[0].volumeMounts[2].mountPath: Required value",
            "spec.containers[0].volumeMounts.subPath: Invalid value: \"../etc\": must not contain '..'",
        ]);
    }

    #[test]
    fn volume_names_are_unique_dns_labels() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x"}], "volumes": [
            {"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}, {"name": "B", "emptyDir": {}}]}));
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0], "spec.volumes[1].name: Duplicate value: \"a\"");
        assert!(errs[1].starts_with("spec.volumes[2].name: Invalid value: \"B\": a lowercase RFC 1123 label"));
    }

    #[test]
    fn volumes_have_exactly_one_source() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": [{"name": "c", "image": "x"}], "volumes": [
            {"name": "none"}, {"name": "two", "emptyDir": {}, "configMap": {"name": "c"}}]})).unwrap();
        let errs: Vec<String> = validate_pod_spec(&spec, "spec").iter().map(ToString::to_string).collect();
        assert!(errs.contains(&"spec.volumes[0]: Required value: must specify a volume type".to_owned()), "{errs:?}");
        assert!(errs.contains(&"spec.volumes[1].configMap: Forbidden: may not specify more than 1 volume type".to_owned()), "{errs:?}");
    }

    #[test]
    fn volume_sources_are_checked() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x"}], "volumes": [
            {"name": "a", "configMap": {"name": "", "defaultMode": 1000}},
            {"name": "b", "secret": {"items": [{"key": "k", "path": "/abs"}]}},
            {"name": "c", "hostPath": {"path": "/x", "type": "Dir"}},
            {"name": "d", "persistentVolumeClaim": {"claimName": ""}}]}));
        assert_eq!(errs, [
            "spec.volumes[0].configMap.name: Required value",
            "spec.volumes[0].configMap.defaultMode: Invalid value: 1000: must be a number between 0 and 0777 (octal), both inclusive",
            "spec.volumes[1].secret.secretName: Required value",
            "spec.volumes[1].secret.items[0].path: Invalid value: \"/abs\": must be a relative path",
            "spec.volumes[2].hostPath.type: Unsupported value: \"Dir\": supported values: \"\", \"DirectoryOrCreate\", \"Directory\", \"FileOrCreate\", \"File\", \"Socket\", \"CharDevice\", \"BlockDevice\"",
            "spec.volumes[3].persistentVolumeClaim.claimName: Required value",
        ]);
    }

    #[test]
    fn invalid_volumes_cannot_be_mounted() {
        let errs = errors(json!({"volumes": [{"name": "v", "configMap": {"name": ""}}],
            "containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}));
        assert_eq!(errs.len(), 2);
        assert!(errs[1].starts_with("spec.containers[0].volumeMounts[0].name: "));
    }

    #[test]
    fn restart_and_dns_policies_are_enums() {
        let errs = errors(json!({"restartPolicy": "Sometimes", "dnsPolicy": "Google", "containers": [{"name": "c", "image": "x"}]}));
        assert_eq!(errs, [
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            "spec.dnsPolicy: Unsupported value: \"Google\": supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\"",
        ]);
    }

    #[test]
    fn dns_policy_none_requires_nameservers() {
        assert_eq!(errors(json!({"dnsPolicy": "None", "containers": [{"name": "c", "image": "x"}]})), [
            "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"
        ]);
        assert_eq!(errors(json!({"dnsPolicy": "None", "dnsConfig": {}, "containers": [{"name": "c", "image": "x"}]})), [
            "spec.dnsConfig.nameservers: Required value: must provide at least one DNS nameserver when `dnsPolicy` is None"
        ]);
        assert!(errors(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"]}, "containers": [{"name": "c", "image": "x"}]})).is_empty());
        assert_eq!(errors(json!({"dnsConfig": {"nameservers": ["dns"]}, "containers": [{"name": "c", "image": "x"}]})), [
            "spec.dnsConfig.nameservers[0]: Invalid value: \"dns\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        ]);
    }

    #[test]
    fn negative_grace_period_is_accepted_as_upstream() {
        assert!(errors(json!({"terminationGracePeriodSeconds": -1, "containers": [{"name": "c", "image": "x"}]})).is_empty());
    }

    #[test]
    fn active_deadline_must_be_positive() {
        assert_eq!(errors(json!({"activeDeadlineSeconds": 0, "containers": [{"name": "c", "image": "x"}]})), [
            "spec.activeDeadlineSeconds: Invalid value: 0: must be between 1 and 2147483647, inclusive"
        ]);
    }

    #[test]
    fn requests_may_not_exceed_limits() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "resources": {
            "limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1024Mi"}}}]}));
        assert_eq!(errs, ["spec.containers[0].resources.requests: Invalid value: \"1\": must be less than or equal to cpu limit of 500m"]);
    }

    #[test]
    fn extended_resources_need_equal_requests_and_limits() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "resources": {
            "limits": {"example.com/gpu": "2"}, "requests": {"example.com/gpu": "1"}}}]}));
        assert_eq!(errs, ["spec.containers[0].resources.requests: Invalid value: \"1\": must be equal to example.com/gpu limit of 2"]);
    }

    #[test]
    fn resource_names_and_quantities_are_checked() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x", "resources": {
            "limits": {"foo": "1", "pods": "1"}, "requests": {"cpu": "-1", "memory": "lots"}}}]}));
        assert_eq!(errs, [
            "spec.containers[0].resources.limits[foo]: Invalid value: \"foo\": must be a standard resource type or fully qualified",
            "spec.containers[0].resources.limits[foo]: Invalid value: \"foo\": must be a standard resource for containers",
            "spec.containers[0].resources.limits[pods]: Invalid value: \"pods\": must be a standard resource for containers",
            "spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
            // Requests were defaulted from the limits, so the bad names show up there too.
            "spec.containers[0].resources.requests[foo]: Invalid value: \"foo\": must be a standard resource type or fully qualified",
            "spec.containers[0].resources.requests[foo]: Invalid value: \"foo\": must be a standard resource for containers",
            format!("spec.containers[0].resources.requests[memory]: Invalid value: \"lots\": {QUANTITY_MSG}").as_str(),
            "spec.containers[0].resources.requests[pods]: Invalid value: \"pods\": must be a standard resource for containers",
        ]);
    }

    #[test]
    fn probes_need_one_handler_and_sane_timings() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x",
            "livenessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}, "successThreshold": 2},
            "readinessProbe": {"periodSeconds": -5, "httpGet": {"port": "web"}},
            "startupProbe": {}}]}));
        assert_eq!(errs, [
            "spec.containers[0].livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
            "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
            "spec.containers[0].readinessProbe.periodSeconds: Invalid value: -5: must be greater than or equal to 0",
            "spec.containers[0].startupProbe: Required value: must specify a handler type",
        ]);
    }

    #[test]
    fn init_containers_may_have_probes_only_as_sidecars() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x"}], "initContainers": [
            {"name": "i", "image": "x", "readinessProbe": {"exec": {"command": ["true"]}}},
            {"name": "s", "image": "x", "restartPolicy": "Always", "readinessProbe": {"exec": {"command": ["true"]}}},
            {"name": "n", "image": "x", "restartPolicy": "Never"}]}));
        assert_eq!(errs, [
            "spec.initContainers[0].readinessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
            "spec.initContainers[2].restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        ]);
        assert_eq!(errors(json!({"containers": [{"name": "c", "image": "x", "restartPolicy": "Always"}]})), [
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"
        ]);
    }

    #[test]
    fn image_pull_policy_is_an_enum() {
        assert_eq!(errors(json!({"containers": [{"name": "c", "image": "x", "imagePullPolicy": "Sometimes"}]})), [
            "spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\""
        ]);
    }

    #[test]
    fn node_selector_must_be_valid_labels() {
        let errs = errors(json!({"nodeSelector": {"disk": "ssd", "bad key": "v"}, "containers": [{"name": "c", "image": "x"}]}));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("spec.nodeSelector: Invalid value: \"bad key\": name part must consist of"));
    }

    #[test]
    fn tolerations_use_known_operators_and_effects() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x"}], "tolerations": [
            {"key": "k", "operator": "In", "effect": "NoRun"},
            {"operator": "Equal", "value": "v"},
            {"key": "k", "operator": "Exists", "value": "v"},
            {"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]}));
        assert_eq!(errs, [
            "spec.tolerations[0].operator: Unsupported value: \"In\": supported values: \"Equal\", \"Exists\"",
            "spec.tolerations[0].effect: Unsupported value: \"NoRun\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
            "spec.tolerations[1].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            "spec.tolerations[2].operator: Invalid value: \"v\": value must be empty when `operator` is 'Exists'",
            "spec.tolerations[3].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set",
        ]);
    }

    #[test]
    fn names_in_the_spec_are_checked() {
        let errs = errors(json!({"containers": [{"name": "c", "image": "x"}], "hostname": "Host", "serviceAccountName": "a_b",
            "readinessGates": [{"conditionType": "bad gate"}], "securityContext": {"runAsUser": -1}}));
        let fields: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(fields, ["spec.securityContext.runAsUser", "spec.readinessGates[0].conditionType", "spec.serviceAccountName", "spec.hostname"]);
    }

    #[test]
    fn paths_carry_the_given_prefix() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": []})).unwrap();
        assert!(validate_pod_spec(&spec, "spec.template.spec").iter().any(|e| e.field == "spec.template.spec.containers"));
    }

    // --- updates --------------------------------------------------------------

    fn created(spec: Value) -> Pod {
        let mut p = defaulted(spec);
        prepare_pod_create(&mut p);
        p
    }

    fn update_errors(old: &Pod, change: impl FnOnce(&mut PodSpec)) -> Vec<String> {
        let mut new = old.clone();
        change(new.spec.as_mut().unwrap());
        default_pod(&mut new);
        validate_pod_update(&new, old).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn image_updates_are_allowed() {
        let old = created(web());
        assert!(update_errors(&old, |s| s.containers[0].image = Some("nginx:1.26".into())).is_empty());
        assert_eq!(update_errors(&old, |s| s.containers[0].image = Some(String::new())), ["spec.containers[0].image: Required value"]);
    }

    #[test]
    fn other_spec_changes_are_forbidden() {
        let old = created(web());
        let errs = update_errors(&old, |s| s.restart_policy = Some("Never".into()));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with(&format!("spec: Forbidden: pod updates may not change fields other than {UPDATABLE_FIELDS}\n")), "{errs:?}");
        assert!(errs[0].contains("RestartPolicy: \"Never\""));
    }

    #[test]
    fn containers_may_not_be_added_or_removed() {
        let old = created(web());
        let errs = update_errors(&old, |s| s.containers.push(s.containers[0].clone()));
        assert_eq!(errs, ["spec.containers: Forbidden: pod updates may not add or remove containers"]);
    }

    #[test]
    fn active_deadline_may_only_be_set_or_shortened() {
        let old = created(web());
        assert!(update_errors(&old, |s| s.active_deadline_seconds = Some(60)).is_empty());
        let old = created(json!({"activeDeadlineSeconds": 60, "containers": [{"name": "c", "image": "x"}]}));
        assert!(update_errors(&old, |s| s.active_deadline_seconds = Some(30)).is_empty());
        assert_eq!(update_errors(&old, |s| s.active_deadline_seconds = Some(90)), [
            "spec.activeDeadlineSeconds: Invalid value: 90: must be less than or equal to previous value"
        ]);
        assert_eq!(update_errors(&old, |s| s.active_deadline_seconds = None), [
            "spec.activeDeadlineSeconds: Invalid value: \"null\": must not update from a positive integer to nil value"
        ]);
    }

    #[test]
    fn tolerations_may_only_be_added() {
        let old = created(web());
        let extra = Toleration { key: Some("dedicated".into()), operator: Some("Exists".into()), ..Default::default() };
        assert!(update_errors(&old, |s| s.tolerations.as_mut().unwrap().push(extra)).is_empty());
        assert!(update_errors(&old, |s| s.tolerations.as_mut().unwrap()[0].toleration_seconds = Some(60)).is_empty());
        assert_eq!(update_errors(&old, |s| { s.tolerations.as_mut().unwrap().remove(0); }), [
            "spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"
        ]);
    }

    #[test]
    fn negative_grace_period_may_become_one() {
        let old = created(json!({"terminationGracePeriodSeconds": -5, "containers": [{"name": "c", "image": "x"}]}));
        assert!(update_errors(&old, |s| s.termination_grace_period_seconds = Some(1)).is_empty());
        assert_eq!(update_errors(&old, |s| s.termination_grace_period_seconds = Some(2)).len(), 1);
    }

    #[test]
    fn scheduling_gates_may_only_be_removed() {
        let old = created(json!({"schedulingGates": [{"name": "a"}], "containers": [{"name": "c", "image": "x"}]}));
        assert!(update_errors(&old, |s| s.scheduling_gates = None).is_empty());
        assert_eq!(update_errors(&old, |s| s.scheduling_gates.as_mut().unwrap().push(k8s_openapi::api::core::v1::PodSchedulingGate { name: "b".into() })), [
            "spec.schedulingGates[1].name: Forbidden: only deletion is allowed, but found new scheduling gate 'b'"
        ]);
        // Gated pods may gain node selectors, not lose them.
        assert!(update_errors(&old, |s| s.node_selector = Some([("zone".to_owned(), "a".to_owned())].into())).is_empty());
    }

    #[test]
    fn metadata_only_updates_pass() {
        let old = created(web());
        let mut new = old.clone();
        new.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
        assert!(validate_pod_update(&new, &old).is_empty());
    }

    // --- templates ------------------------------------------------------------

    fn template(v: Value) -> PodTemplateSpec {
        let mut t: PodTemplateSpec = serde_json::from_value(v).unwrap();
        default_pod_spec(t.spec.as_mut().unwrap());
        t
    }

    #[test]
    fn template_restart_policy_must_be_always() {
        let t = template(json!({"metadata": {"labels": {"app": "web"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}));
        let errs: Vec<String> = validate_template(&t, "spec.template", "ReplicaSet").iter().map(ToString::to_string).collect();
        assert_eq!(errs, ["spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""]);
    }

    #[test]
    fn template_active_deadline_is_forbidden() {
        let t = template(json!({"spec": {"activeDeadlineSeconds": 30, "containers": [{"name": "c", "image": "x"}]}}));
        let errs: Vec<String> = validate_template(&t, "spec.template", "ReplicaSet").iter().map(ToString::to_string).collect();
        assert_eq!(errs, ["spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicaSet is not Supported"]);
    }

    #[test]
    fn template_labels_and_spec_are_validated() {
        let t = template(json!({"metadata": {"labels": {"app": "bad value"}}, "spec": {"containers": []}}));
        let errs = validate_template(&t, "spec.template", "ReplicaSet");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.template.labels", "spec.template.spec.containers"]);
        assert!(validate_template(&template(json!({"spec": web()})), "spec.template", "ReplicaSet").is_empty());
    }

    // --- deletion -------------------------------------------------------------

    #[test]
    fn grace_period_depends_on_binding_and_phase() {
        let mut p = created(web());
        assert_eq!(grace_period(&p, None), Some(0), "unbound pods go at once");
        p.spec.as_mut().unwrap().node_name = Some("node-1".into());
        assert_eq!(grace_period(&p, None), Some(30));
        assert_eq!(grace_period(&p, Some(0)), Some(0));
        assert_eq!(grace_period(&p, Some(5)), Some(5));
        assert_eq!(grace_period(&p, Some(-3)), Some(1));
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(grace_period(&p, Some(5)), Some(0));
    }

    // --- table cells ----------------------------------------------------------

    fn with_status(spec: Value, status: Value) -> Pod {
        pod(json!({"metadata": {"name": "p"}, "spec": spec, "status": status}))
    }

    fn two() -> Value {
        json!({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]})
    }

    fn cs(name: &str, ready: bool, state: Value) -> Value {
        json!({"name": name, "ready": ready, "restartCount": 0, "image": "x", "imageID": "", "state": state})
    }

    #[test]
    fn running_pod_cells() {
        let p = with_status(two(), json!({"phase": "Running", "containerStatuses": [
            cs("a", true, json!({"running": {}})), cs("b", false, json!({"running": {}}))]}));
        assert_eq!((ready_cell(&p), status_cell(&p), restarts_cell(&p)), ("1/2".into(), "Running".into(), "0".into()));
    }

    #[test]
    fn pending_pod_shows_container_creating() {
        let p = with_status(two(), json!({"phase": "Pending", "containerStatuses": [
            cs("a", false, json!({"waiting": {"reason": "ContainerCreating"}})), cs("b", false, json!({"waiting": {"reason": "ContainerCreating"}}))]}));
        assert_eq!((ready_cell(&p), status_cell(&p)), ("0/2".into(), "ContainerCreating".into()));
        let fresh = with_status(two(), json!({"phase": "Pending"}));
        assert_eq!((ready_cell(&fresh), status_cell(&fresh)), ("0/2".into(), "Pending".into()));
    }

    #[test]
    fn crash_loop_back_off_shows_restarts_with_age() {
        let finished = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(300);
        let mut c = cs("a", false, json!({"waiting": {"reason": "CrashLoopBackOff"}}));
        c["restartCount"] = json!(3);
        c["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": finished.to_string()}});
        let p = with_status(json!({"containers": [{"name": "a", "image": "x"}]}), json!({"phase": "Running", "containerStatuses": [c]}));
        assert_eq!(status_cell(&p), "CrashLoopBackOff");
        assert_eq!(restarts_at(&p, finished + jiff::SignedDuration::from_secs(300)), "3 (5m ago)");
        assert!(restarts_cell(&p).starts_with("3 ("));
    }

    #[test]
    fn completed_and_failed_containers() {
        let done = with_status(json!({"containers": [{"name": "a", "image": "x"}]}), json!({"phase": "Succeeded", "containerStatuses": [
            cs("a", false, json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))]}));
        assert_eq!((ready_cell(&done), status_cell(&done)), ("0/1".into(), "Completed".into()));
        let failed = with_status(json!({"containers": [{"name": "a", "image": "x"}]}), json!({"phase": "Failed", "containerStatuses": [
            cs("a", false, json!({"terminated": {"exitCode": 1, "reason": "Error"}}))]}));
        assert_eq!(status_cell(&failed), "Error");
        let bare = with_status(json!({"containers": [{"name": "a", "image": "x"}]}), json!({"phase": "Failed", "containerStatuses": [
            cs("a", false, json!({"terminated": {"exitCode": 137}}))]}));
        assert_eq!(status_cell(&bare), "ExitCode:137");
    }

    #[test]
    fn completed_with_a_running_container_is_not_ready_or_running() {
        let status = |ready: &str| json!({"phase": "Running", "conditions": [{"type": "Ready", "status": ready}], "containerStatuses": [
            cs("a", true, json!({"running": {}})), cs("b", false, json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))]});
        assert_eq!(status_cell(&with_status(two(), status("False"))), "NotReady");
        assert_eq!(status_cell(&with_status(two(), status("True"))), "Running");
    }

    #[test]
    fn deleted_pods_are_terminating_unless_done() {
        let mut p = with_status(two(), json!({"phase": "Running"}));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        assert_eq!(status_cell(&p), "Terminating");
        p.status.as_mut().unwrap().reason = Some("NodeLost".into());
        assert_eq!(status_cell(&p), "Unknown");
        p.status.as_mut().unwrap().reason = None;
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(status_cell(&p), "Succeeded");
    }

    fn with_init(init_statuses: Value, statuses: Value) -> Pod {
        with_status(
            json!({"initContainers": [{"name": "i1", "image": "x"}, {"name": "i2", "image": "x"}], "containers": [{"name": "a", "image": "x"}]}),
            json!({"phase": "Pending", "initContainerStatuses": init_statuses, "containerStatuses": statuses}),
        )
    }

    #[test]
    fn init_containers_show_progress_and_failures() {
        let waiting = |r: &str| json!({"waiting": {"reason": r}});
        let p = with_init(json!([cs("i1", false, waiting("PodInitializing")), cs("i2", false, waiting("PodInitializing"))]), json!([]));
        assert_eq!(status_cell(&p), "Init:0/2");
        let p = with_init(json!([cs("i1", false, json!({"terminated": {"exitCode": 0}})), cs("i2", false, json!({"running": {}}))]), json!([]));
        assert_eq!(status_cell(&p), "Init:1/2");
        let p = with_init(json!([cs("i1", false, waiting("CrashLoopBackOff"))]), json!([]));
        assert_eq!(status_cell(&p), "Init:CrashLoopBackOff");
        let p = with_init(json!([cs("i1", false, json!({"terminated": {"exitCode": 2, "reason": "Error"}}))]), json!([]));
        assert_eq!(status_cell(&p), "Init:Error");
        let p = with_init(json!([cs("i1", false, json!({"terminated": {"exitCode": 2}}))]), json!([]));
        assert_eq!(status_cell(&p), "Init:ExitCode:2");
        let done = json!([cs("i1", false, json!({"terminated": {"exitCode": 0}})), cs("i2", false, json!({"terminated": {"exitCode": 0}}))]);
        let p = with_init(done, json!([cs("a", false, waiting("PodInitializing"))]));
        assert_eq!(status_cell(&p), "PodInitializing");
    }

    #[test]
    fn init_restarts_count_until_initialized() {
        let mut i1 = cs("i1", false, json!({"waiting": {"reason": "CrashLoopBackOff"}}));
        i1["restartCount"] = json!(4);
        let p = with_init(json!([i1]), json!([]));
        assert_eq!((status_cell(&p), restarts_cell(&p)), ("Init:CrashLoopBackOff".into(), "4".into()));
    }

    #[test]
    fn sidecars_count_towards_ready() {
        let p = with_status(
            json!({"initContainers": [{"name": "s", "image": "x", "restartPolicy": "Always"}], "containers": [{"name": "a", "image": "x"}]}),
            json!({"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}],
                "initContainerStatuses": [{"name": "s", "ready": true, "started": true, "restartCount": 2, "image": "x", "imageID": "", "state": {"running": {}}}],
                "containerStatuses": [cs("a", true, json!({"running": {}}))]}),
        );
        assert_eq!((ready_cell(&p), status_cell(&p), restarts_cell(&p)), ("2/2".into(), "Running".into(), "2".into()));
    }

    #[test]
    fn readiness_gates_cell_counts_true_conditions() {
        assert_eq!(readiness_gates_cell(&with_status(two(), json!({}))), "<none>");
        let p = with_status(
            json!({"containers": [{"name": "a", "image": "x"}], "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}]}),
            json!({"conditions": [{"type": "example.com/lb", "status": "True"}, {"type": "example.com/dns", "status": "False"}]}),
        );
        assert_eq!(readiness_gates_cell(&p), "1/2");
    }

    #[test]
    fn human_durations_read_like_kubectl() {
        for (secs, want) in [(-5, "<invalid>"), (-1, "0s"), (59, "59s"), (119, "119s"), (300, "5m"), (330, "5m30s"), (900, "15m"), (3 * 3600 + 60, "3h1m"), (30 * 3600, "30h"), (3 * 86400 + 3600, "3d1h"), (400 * 86400, "400d"), (3 * 365 * 86400 + 86400, "3y1d")] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn quantities_parse_to_nano_units() {
        assert_eq!(parse_quantity("1"), Some(1_000_000_000));
        assert_eq!(parse_quantity("500m"), Some(500_000_000));
        assert_eq!(parse_quantity("0.5"), parse_quantity("500m"));
        assert_eq!(parse_quantity("1Gi"), parse_quantity("1024Mi"));
        assert_eq!(parse_quantity("1e3"), parse_quantity("1k"));
        assert_eq!(parse_quantity("1.5Gi"), Some(1_610_612_736_000_000_000));
        assert_eq!(parse_quantity("-2"), Some(-2_000_000_000));
        assert_eq!(parse_quantity("1n"), Some(1));
        for bad in ["", "abc", "1.2.3", "5Q", "m"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }
}

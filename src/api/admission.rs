//! Admission rules that span kinds, applied by the generic machinery before a write
//! reaches the store: upstream's NamespaceLifecycle, ServiceAccount and
//! ResourceQuota plugins, and DefaultIngressClass.

use super::error::{ApiError, ApiResult, ResourceName};
use super::object::ObjectExt;
use super::quota::{self, ResourceList};
use super::rest::{Ctx, decode_stored};
use super::write::encode_for_store;
use crate::store::{ListRequest, StoreError};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use serde_json::{Value, json};
use std::collections::HashSet;

/// Namespaces that always exist and may not be deleted.
pub const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// The namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

const NAMESPACES: ResourceName<'static> = ResourceName { group: "", plural: "namespaces" };
const QUOTAS: ResourceName<'static> = ResourceName { group: "", plural: "resourcequotas" };
/// How many times quota admission starts over when a quota changed underneath it.
const QUOTA_RETRIES: usize = 16;

/// Objects may only be created in a namespace that exists and is not terminating.
pub async fn check_create(ctx: &Ctx, obj: &Value) -> ApiResult<()> {
    if !ctx.resource.namespaced {
        return Ok(());
    }
    let namespace = obj.namespace();
    let namespaces = ctx.api.registry.lookup("", "v1", "namespaces").expect("namespaces are always served");
    let key = namespaces.key("", namespace);
    let stored = ctx.api.store.get(&key).await.map_err(|e| ApiError::from_store(e, NAMESPACES, namespace))?;
    let Some(kv) = stored else {
        return Err(ApiError::not_found(NAMESPACES, namespace));
    };
    let ns = decode_stored(&kv)?;
    if ns.is_deleting() || ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
        return Err(ApiError::forbidden(
            ctx.resource.error_name(),
            obj.name(),
            &format!("unable to create new content in namespace {namespace} because it is being terminated"),
        ));
    }
    Ok(())
}

/// The initial namespaces cannot be deleted.
pub fn check_delete(ctx: &Ctx, name: &str) -> ApiResult<()> {
    if ctx.resource.plural == "namespaces" && ctx.resource.group.is_empty() && IMMORTAL_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(NAMESPACES, name, "this namespace may not be deleted"));
    }
    Ok(())
}

/// Where pods find their API credentials, as upstream mounts them.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap in every namespace that carries the cluster CA.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Lifetime the kubelet asks for when it projects a service account token.
const PROJECTED_TOKEN_SECONDS: i64 = 3607;

/// Mutations on create: a pod runs as a service account that must exist, and
/// gets its API credentials mounted unless it or its account opts out.
pub async fn mutate_create(ctx: &Ctx, obj: &mut Value) -> ApiResult<()> {
    if ctx.resource.kind == "Ingress" && ctx.resource.group == "networking.k8s.io" {
        return default_ingress_class(ctx, obj).await;
    }
    if ctx.resource.kind != "Pod" || !ctx.resource.group.is_empty() {
        return Ok(());
    }
    let namespace = obj.namespace().to_owned();
    let account = obj.pointer("/spec/serviceAccountName").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("default").to_owned();
    obj["spec"]["serviceAccountName"] = json!(account);
    obj["spec"]["serviceAccount"] = json!(account);
    let accounts = ctx.api.registry.lookup("", "v1", "serviceaccounts").expect("serviceaccounts are always served");
    let stored = ctx.api.store.get(&accounts.key(&namespace, &account)).await.map_err(|e| ApiError::from_store(e, accounts.error_name(), &account))?;
    let Some(kv) = stored else {
        return Err(ApiError::forbidden(
            ctx.resource.error_name(),
            obj.name(),
            &format!("error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"),
        ));
    };
    let sa = decode_stored(&kv)?;
    let automount = obj
        .pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| sa.get("automountServiceAccountToken").and_then(Value::as_bool))
        .unwrap_or(true);
    if automount {
        mount_service_account_token(obj);
    }
    Ok(())
}

/// Upstream's DefaultIngressClass: an Ingress created without a class gets the
/// IngressClass marked as default (the newest, if several are).
async fn default_ingress_class(ctx: &Ctx, obj: &mut Value) -> ApiResult<()> {
    use super::kinds::networking::{DEFAULT_CLASS_ANNOTATION, LEGACY_CLASS_ANNOTATION};
    let has_class = obj.pointer("/spec/ingressClassName").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
    if has_class || obj.pointer("/metadata/annotations").and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)).is_some() {
        return Ok(());
    }
    let classes = ctx.api.registry.lookup("networking.k8s.io", "v1", "ingressclasses").expect("ingress classes are always served");
    let request = ListRequest { prefix: classes.key_prefix(None), ..Default::default() };
    let page = ctx.api.store.list(request).await.map_err(|e| ApiError::from_store(e, classes.error_name(), ""))?;
    let mut defaults = Vec::new();
    for kv in &page.items {
        let class = decode_stored(kv)?;
        if class.pointer("/metadata/annotations").and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).and_then(Value::as_str) == Some("true") {
            defaults.push((class.meta_str("creationTimestamp").unwrap_or("").to_owned(), class.name().to_owned()));
        }
    }
    if let Some((_, name)) = defaults.into_iter().max() {
        obj["spec"]["ingressClassName"] = json!(name);
    }
    Ok(())
}

/// Adds the projected `kube-api-access-*` volume (token, CA, namespace) and mounts
/// it in every container that does not mount something there already.
fn mount_service_account_token(pod: &mut Value) {
    let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().filter(char::is_ascii_lowercase).take(5).collect();
    let volume_name = format!("kube-api-access-{suffix:a<5}");
    let mount = json!({ "name": volume_name, "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": true });
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        for container in pod["spec"][list].as_array_mut().into_iter().flatten() {
            let mounts = container.as_object_mut().map(|c| c.entry("volumeMounts").or_insert_with(|| json!([])));
            if let Some(Value::Array(mounts)) = mounts
                && !mounts.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_MOUNT)) {
                    mounts.push(mount.clone());
                    mounted = true;
                }
        }
    }
    if !mounted {
        return;
    }
    let volume = json!({
        "name": volume_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                { "serviceAccountToken": { "expirationSeconds": PROJECTED_TOKEN_SECONDS, "path": "token" } },
                { "configMap": { "name": ROOT_CA_CONFIGMAP, "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                { "downwardAPI": { "items": [{ "path": "namespace", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
            ],
        },
    });
    if let Some(spec) = pod["spec"].as_object_mut()
        && let Value::Array(volumes) = spec.entry("volumes").or_insert_with(|| json!([])) {
            volumes.push(volume);
        }
}

/// Quota admission for creates: an object that would take a namespace's usage
/// past a ResourceQuota is refused with upstream's message. Admitting it
/// charges the quotas first: `status.used` is raised with a compare-and-swap on
/// each quota's revision, so concurrent creates cannot both take the last
/// unit; on a lost race the quotas are read again. Usage a quota does not
/// show yet (the quota controller has not run) is computed from the store.
/// `display_name` is the name the client asked for (its generateName if none).
pub async fn check_quota(ctx: &Ctx, obj: &Value, display_name: &str) -> ApiResult<()> {
    if !ctx.resource.namespaced {
        return Ok(());
    }
    let (group, plural) = (ctx.resource.group, ctx.resource.plural);
    let quotas = ctx.api.registry.lookup("", "v1", "resourcequotas").expect("resource quotas are always served");
    let prefix = quotas.key_prefix(Some(obj.namespace()));
    let refuse = |why: String| ApiError::forbidden(ctx.resource.error_name(), display_name, &why);
    // What the object charges, worked out only once a quota is there to charge.
    let mut charge: Option<(ResourceList, Option<Pod>)> = None;
    let now = jiff::Timestamp::now();
    let mut charged: HashSet<String> = HashSet::new();
    for _ in 0..QUOTA_RETRIES {
        let page = ctx.api.store.list(ListRequest { prefix: prefix.clone(), ..Default::default() }).await.map_err(|e| ApiError::from_store(e, QUOTAS, ""))?;
        if page.items.is_empty() {
            return Ok(());
        }
        let (delta, pod) = charge.get_or_insert_with(|| {
            let delta = quota::object_usage(group, plural, obj, now).into_iter().filter(|(_, v)| !v.is_zero()).collect();
            let pod = if group.is_empty() && plural == "pods" { serde_json::from_value(obj.clone()).ok() } else { None };
            (delta, pod)
        });
        let mut charges = Vec::new();
        for kv in page.items.iter().filter(|kv| !charged.contains(&kv.key)) {
            let stored = decode_stored(kv)?;
            let Ok(rq) = serde_json::from_value::<ResourceQuota>(stored.clone()) else { continue };
            if !quota::quota_matches(&rq, group, plural, pod.as_ref()) {
                continue;
            }
            let name = stored.name().to_owned();
            let hard = quota::parse_list(rq.spec.as_ref().and_then(|s| s.hard.as_ref()));
            let limited: Vec<String> = hard.keys().filter(|n| quota::counts_toward(group, plural, n)).cloned().collect();
            if let Some(pod) = &pod {
                quota::pod_constraints(pod, &limited).map_err(|e| refuse(format!("failed quota: {name}: {e}")))?;
            }
            let requested = quota::mask(delta, &limited);
            if requested.is_empty() {
                continue;
            }
            let mut used = quota::parse_list(rq.status.as_ref().and_then(|s| s.used.as_ref()));
            let unknown: Vec<String> = limited.iter().filter(|n| !used.contains_key(*n)).cloned().collect();
            if !unknown.is_empty() {
                used.extend(namespace_usage(ctx, &rq, obj.namespace(), &unknown, now).await?);
            }
            let new_used = quota::add(&used, &requested);
            let over = quota::exceeded(&quota::mask(&new_used, requested.keys()), &hard);
            if !over.is_empty() {
                return Err(refuse(format!(
                    "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                    quota::pretty(&quota::mask(&requested, &over)),
                    quota::pretty(&quota::mask(&used, &over)),
                    quota::pretty(&quota::mask(&hard, &over)),
                )));
            }
            charges.push((kv.key.clone(), kv.mod_revision, stored, new_used));
        }
        if ctx.query.dry_run()? {
            return Ok(());
        }
        let mut lost_race = false;
        for (key, revision, mut stored, used) in charges {
            stored["status"]["used"] = json!(quota::to_k8s(&used));
            match ctx.api.store.update(&key, encode_for_store(&stored), revision).await {
                Ok(_) => {
                    charged.insert(key);
                }
                Err(StoreError::Conflict { .. }) => lost_race = true,
                Err(e) => return Err(ApiError::from_store(e, QUOTAS, stored.name())),
            }
        }
        if !lost_race {
            return Ok(());
        }
    }
    Err(ApiError::modified(QUOTAS, ""))
}

/// The usage of `names` in `namespace` as `rq` counts it, read from the store.
async fn namespace_usage(ctx: &Ctx, rq: &ResourceQuota, namespace: &str, names: &[String], now: jiff::Timestamp) -> ApiResult<ResourceList> {
    let mut kinds: Vec<(String, String)> = names.iter().filter_map(|n| quota::kind_of(n)).collect();
    kinds.sort();
    kinds.dedup();
    let mut total = ResourceList::new();
    for (group, plural) in kinds {
        let Some(resource) = ctx.api.registry.all().iter().find(|r| r.group == group && r.plural == plural && r.namespaced) else { continue };
        let page = ctx
            .api
            .store
            .list(ListRequest { prefix: resource.key_prefix(Some(namespace)), ..Default::default() })
            .await
            .map_err(|e| ApiError::from_store(e, resource.error_name(), ""))?;
        for kv in &page.items {
            let obj = decode_stored(kv)?;
            let pod: Option<Pod> = if resource.kind == "Pod" { serde_json::from_value(obj.clone()).ok() } else { None };
            if quota::quota_matches(rq, &group, &plural, pod.as_ref()) {
                total = quota::add(&total, &quota::object_usage(&group, &plural, &obj, now));
            }
        }
    }
    let mut usage = quota::mask(&total, names);
    for name in names {
        usage.entry(name.clone()).or_insert_with(crate::api::quantity::Quantity::zero);
    }
    Ok(usage)
}

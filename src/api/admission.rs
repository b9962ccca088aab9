//! Admission rules that span kinds, applied by the generic machinery before a write
//! reaches the store: upstream's NamespaceLifecycle and ServiceAccount plugins.

use super::error::{ApiError, ApiResult, ResourceName};
use super::object::ObjectExt;
use super::rest::{Ctx, decode_stored};
use serde_json::{Value, json};

/// Namespaces that always exist and may not be deleted.
pub const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// The namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

const NAMESPACES: ResourceName<'static> = ResourceName { group: "", plural: "namespaces" };

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

//! Admission rules that span kinds, applied by the generic machinery before a write
//! reaches the store (upstream's NamespaceLifecycle plugin).

use super::error::{ApiError, ApiResult, ResourceName};
use super::object::ObjectExt;
use super::rest::{Ctx, decode_stored};
use serde_json::Value;

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

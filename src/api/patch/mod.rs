//! The four patch types of the Kubernetes API. JSON patch (RFC 6902) and JSON merge
//! patch (RFC 7386) come from the `json-patch` crate; strategic merge patch is
//! Kubernetes' own and lives in `strategic.rs`; server-side apply is in `fields.rs`.

pub mod strategic;

use super::error::{ApiError, ApiResult};
use super::schema::Node;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_media(media: &str) -> ApiResult<Self> {
        Ok(match media {
            "application/json-patch+json" => Self::Json,
            "application/merge-patch+json" => Self::Merge,
            "application/strategic-merge-patch+json" => Self::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Self::Apply,
            other => return Err(ApiError::unsupported_media_type(other)),
        })
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Self::Json => "application/json-patch+json",
            Self::Merge => "application/merge-patch+json",
            Self::Strategic => "application/strategic-merge-patch+json",
            Self::Apply => "application/apply-patch+yaml",
        }
    }
}

/// A parsed patch document.
pub enum Patch {
    Json(json_patch::Patch),
    Document(Value),
}

pub fn parse(patch_type: PatchType, bytes: &[u8]) -> ApiResult<Patch> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    match patch_type {
        PatchType::Json => serde_json::from_value(value)
            .map(Patch::Json)
            .map_err(|e| ApiError::bad_request(format!("the JSON patch is invalid: {e}"))),
        _ if value.is_object() => Ok(Patch::Document(value)),
        _ => Err(ApiError::bad_request("the patch must be a JSON object")),
    }
}

/// Applies a patch to an object. `node` is the object's schema, needed by
/// strategic merge patch; without it a strategic patch merges like a merge patch
/// with lists replaced.
pub fn apply(patch_type: PatchType, original: &Value, patch: &Patch, node: Option<Node<'_>>) -> ApiResult<Value> {
    let mut target = original.clone();
    match (patch_type, patch) {
        (PatchType::Json, Patch::Json(ops)) => {
            json_patch::patch(&mut target, ops).map_err(|e| unprocessable(format!("the JSON patch could not be applied: {e}")))?;
            Ok(target)
        }
        (PatchType::Merge, Patch::Document(doc)) => {
            json_patch::merge(&mut target, doc);
            Ok(target)
        }
        (PatchType::Strategic, Patch::Document(doc)) => match node {
            Some(node) => strategic::apply(original, doc, node).map_err(unprocessable),
            None => {
                json_patch::merge(&mut target, doc);
                Ok(target)
            }
        },
        _ => Err(ApiError::bad_request("the patch does not match its content type")),
    }
}

/// Upstream answers patches that cannot be applied with 422.
fn unprocessable(message: String) -> ApiError {
    let mut e = ApiError::bad_request(message);
    e.code = 422;
    e.reason = "Invalid";
    e
}

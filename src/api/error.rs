//! Errors as the Kubernetes API reports them: every failure leaves the server as a
//! `Status` object with the reason and code clients dispatch on. This is the one
//! place where internal errors become HTTP responses.

use crate::store::StoreError;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

/// Identifies a resource in error messages: `pods "web"` or `deployments.apps "web"`.
#[derive(Clone, Copy, Debug)]
pub struct ResourceName<'a> {
    pub group: &'a str,
    pub plural: &'a str,
}

impl ResourceName<'_> {
    fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }
}

/// One field-level validation failure, as upstream's `field.Error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    /// Path in the object, e.g. `spec.containers[0].name`.
    pub field: String,
    /// The offending value rendered as upstream does (quoted strings), if any.
    pub value: Option<String>,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    NotFound,
    Forbidden,
    TooLong,
    TooMany,
}

impl FieldErrorKind {
    fn reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Duplicate => "FieldValueDuplicate",
            Self::NotFound => "FieldValueNotFound",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Duplicate => "Duplicate value",
            Self::NotFound => "Not found",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
        }
    }
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { kind: FieldErrorKind::Required, field: field.into(), value: None, detail: detail.into() }
    }
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Debug, detail: impl Into<String>) -> Self {
        Self { kind: FieldErrorKind::Invalid, field: field.into(), value: Some(format!("{value:?}")), detail: detail.into() }
    }
    pub fn not_supported(field: impl Into<String>, value: impl std::fmt::Debug, supported: &[&str]) -> Self {
        let list = supported.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        Self {
            kind: FieldErrorKind::NotSupported,
            field: field.into(),
            value: Some(format!("{value:?}")),
            detail: format!("supported values: {list}"),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Debug) -> Self {
        Self { kind: FieldErrorKind::Duplicate, field: field.into(), value: Some(format!("{value:?}")), detail: String::new() }
    }
    pub fn not_found(field: impl Into<String>, value: impl std::fmt::Debug) -> Self {
        Self { kind: FieldErrorKind::NotFound, field: field.into(), value: Some(format!("{value:?}")), detail: String::new() }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { kind: FieldErrorKind::Forbidden, field: field.into(), value: None, detail: detail.into() }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self { kind: FieldErrorKind::TooLong, field: field.into(), value: None, detail: format!("must have at most {max} bytes") }
    }

    /// The message without the field path, as in `details.causes[].message`.
    pub fn message(&self) -> String {
        let mut m = self.kind.label().to_owned();
        if let Some(v) = &self.value {
            m.push_str(": ");
            m.push_str(v);
        }
        if !self.detail.is_empty() {
            m.push_str(": ");
            m.push_str(&self.detail);
        }
        m
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

/// A failed API request, carried to the client as a `Status`.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, resource: ResourceName<'_>, name: &str) -> Self {
        let mut d = json!({ "name": name, "kind": resource.plural });
        if !resource.group.is_empty() {
            d["group"] = json!(resource.group);
        }
        self.details = Some(d);
        self
    }

    pub fn not_found(resource: ResourceName<'_>, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", resource.qualified())).with_details(resource, name)
    }

    pub fn already_exists(resource: ResourceName<'_>, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource.qualified()))
            .with_details(resource, name)
    }

    pub fn conflict(resource: ResourceName<'_>, name: &str, why: &str) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": {why}", resource.qualified()))
            .with_details(resource, name)
    }

    /// The optimistic-concurrency failure kubectl knows to retry.
    pub fn modified(resource: ResourceName<'_>, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let listed = match errors {
            [one] => one.to_string(),
            many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({ "reason": e.kind.reason(), "message": e.message(), "field": e.field }))
            .collect();
        let mut details = json!({ "name": name, "kind": kind, "causes": causes });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        Self { code: 422, reason: "Invalid", message: format!("{kind} \"{name}\" is invalid: {listed}"), details: Some(details) }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn forbidden(resource: ResourceName<'_>, name: &str, why: &str) -> Self {
        let subject = if name.is_empty() { resource.qualified() } else { format!("{} \"{name}\"", resource.qualified()) };
        Self::new(403, "Forbidden", format!("{subject} is forbidden: {why}")).with_details(resource, name)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type:?})"))
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {limit}"))
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Gone", message)
    }

    pub fn timeout(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        let mut e = Self::new(504, "Timeout", message);
        e.details = Some(json!({ "retryAfterSeconds": retry_after_seconds }));
        e
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {message}"))
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// Maps a storage failure for one named object.
    pub fn from_store(e: StoreError, resource: ResourceName<'_>, name: &str) -> Self {
        match e {
            StoreError::NotFound => Self::not_found(resource, name),
            StoreError::AlreadyExists => Self::already_exists(resource, name),
            StoreError::Conflict { .. } => Self::modified(resource, name),
            StoreError::Compacted { requested, .. } => Self::expired(format!("too old resource version: {requested}")),
            StoreError::FutureRevision { requested, current } => {
                Self::timeout(format!("Too large resource version: {requested}, current: {current}"), 1)
            }
            StoreError::Engine(m) => Self::internal(m),
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut response = (code, [(http::header::CONTENT_TYPE, "application/json")], body).into_response();
        if code == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: ResourceName<'static> = ResourceName { group: "", plural: "pods" };
    const DEPLOYMENTS: ResourceName<'static> = ResourceName { group: "apps", plural: "deployments" };

    #[test]
    fn not_found_names_the_group_qualified_resource() {
        assert_eq!(ApiError::not_found(PODS, "x").message, "pods \"x\" not found");
        let e = ApiError::not_found(DEPLOYMENTS, "web");
        assert_eq!(e.message, "deployments.apps \"web\" not found");
        assert_eq!(e.status()["details"], json!({"name": "web", "kind": "deployments", "group": "apps"}));
        assert_eq!(e.status()["code"], 404);
    }

    #[test]
    fn invalid_lists_every_cause_with_its_field() {
        let errors = [
            FieldError::required("spec.containers", ""),
            FieldError::not_supported("spec.restartPolicy", "Sometimes", &["Always", "OnFailure", "Never"]),
        ];
        let e = ApiError::invalid("Pod", "", "p", &errors);
        assert_eq!(
            e.message,
            "Pod \"p\" is invalid: [spec.containers: Required value, spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"]"
        );
        let causes = &e.status()["details"]["causes"];
        assert_eq!(causes[0], json!({"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers"}));
        assert_eq!(e.code, 422);
    }
}

//! Bodies in and out: request bodies (JSON or YAML, size-limited) and responses in
//! the representation the client asked for (JSON, YAML, Table, object metadata).

use super::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;

/// Request bodies larger than this are refused, as upstream does.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The representation a client accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
    /// `meta.k8s.io` Table, in the given version (`v1` or `v1beta1`).
    Table(&'static str),
    /// `PartialObjectMetadata` (or its List), in the given version.
    Metadata(&'static str),
}

impl Output {
    /// Picks the first representation in `Accept` that rk can produce.
    pub fn negotiate(headers: &HeaderMap) -> ApiResult<Self> {
        let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(Self::Json) };
        let mut saw_any = false;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let params: Vec<(String, String)> = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            saw_any = true;
            match media.as_str() {
                "application/json" | "application/*" | "*/*" => match (param("as"), param("g"), param("v")) {
                    (None, _, _) => return Ok(Self::Json),
                    (Some("Table"), Some("meta.k8s.io"), Some("v1")) => return Ok(Self::Table("v1")),
                    (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => return Ok(Self::Table("v1beta1")),
                    (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io"), Some(v @ ("v1" | "v1beta1"))) => {
                        return Ok(Self::Metadata(if v == "v1" { "v1" } else { "v1beta1" }));
                    }
                    _ => {}
                },
                "application/yaml" => return Ok(Self::Yaml),
                _ => {}
            }
        }
        if saw_any && !accept.trim().is_empty() {
            return Err(ApiError::not_acceptable(format!(
                "only the following media types are accepted: application/json, application/yaml (got {accept:?})"
            )));
        }
        Ok(Self::Json)
    }
}

/// How much of an oversized body is read and discarded before answering 413, so
/// that a client still sending sees the answer instead of a reset connection.
const MAX_DISCARD_BYTES: usize = 64 * 1024 * 1024;

/// Reads a request body, refusing more than [`MAX_BODY_BYTES`].
pub async fn read_body(mut body: Body) -> ApiResult<Bytes> {
    let mut buffer = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("error reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen > MAX_DISCARD_BYTES {
            break;
        }
        if seen <= MAX_BODY_BYTES {
            buffer.extend_from_slice(&data);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    Ok(buffer.freeze())
}

/// The media type of a request body, without parameters.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Parses a JSON or YAML body into a JSON object.
pub fn parse_body(bytes: &[u8], media: &str) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let value: Value = if media.contains("yaml") {
        serde_yaml::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: yaml: {e}")))?
    } else {
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(format!("the request body must be an object, not {}", json_type(&value))));
    }
    Ok(value)
}

pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Encodes a response body in JSON or YAML.
pub fn respond(code: StatusCode, value: &Value, output: Output) -> Response {
    let (media, body) = match output {
        Output::Yaml => ("application/yaml", serde_yaml::to_string(value).map(String::into_bytes).unwrap_or_default()),
        _ => ("application/json", serde_json::to_vec(value).unwrap_or_default()),
    };
    (code, [(header::CONTENT_TYPE, media)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> ApiResult<Output> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        Output::negotiate(&h)
    }

    #[test]
    fn kubectl_get_gets_a_v1_table() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(accept(kubectl).unwrap(), Output::Table("v1"));
        assert_eq!(accept("application/json;as=Table;v=v1beta1;g=meta.k8s.io").unwrap(), Output::Table("v1beta1"));
    }

    #[test]
    fn protobuf_falls_back_to_json_when_json_is_also_accepted() {
        assert_eq!(accept("application/vnd.kubernetes.protobuf, application/json").unwrap(), Output::Json);
        assert_eq!(accept("application/vnd.kubernetes.protobuf").unwrap_err().code, 406);
        assert_eq!(accept("*/*").unwrap(), Output::Json);
        assert_eq!(accept("application/yaml").unwrap(), Output::Yaml);
    }

    #[test]
    fn broken_bodies_are_bad_requests_with_the_parser_message() {
        let e = parse_body(b"{\"kind\": ", "application/json").unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("json parse error"), "{}", e.message);
        let e = parse_body(b"kind: [unclosed", "application/yaml").unwrap_err();
        assert!(e.message.contains("YAML"), "{}", e.message);
        assert_eq!(parse_body(b"[1]", "application/json").unwrap_err().code, 400);
        assert_eq!(parse_body(b"  ", "application/json").unwrap_err().code, 400);
    }
}

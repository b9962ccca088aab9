//! Turning an HTTP request into what it asks of a resource: the verb, the resource,
//! namespace, name and subresource (as upstream's RequestInfo), and the query
//! options the verbs understand.

use super::error::{ApiError, ApiResult};
use http::Method;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

/// The resource part of a request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Requested through the deprecated `/watch/` path prefix.
    pub watch_prefix: bool,
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...` paths.
/// Returns `None` for paths that are not resource requests (discovery, health).
pub fn parse_path(path: &str) -> Option<ResourcePath> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (watch_prefix, mut rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_owned());
        // namespaces/<ns>/status and /finalize are subresources of the namespace itself.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return None,
    };
    // For `namespaces/<name>`, the namespace segment is the object's name.
    let namespace = if plural == "namespaces" { None } else { namespace };
    Some(ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        plural: plural.to_owned(),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
        watch_prefix,
    })
}

/// The query string, with typed accessors for the options verbs use.
#[derive(Clone, Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Self(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn flag(&self, key: &str) -> ApiResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!("invalid value for {key}: {other:?}, expected true or false"))),
        }
    }

    pub fn number(&self, key: &str) -> ApiResult<Option<i64>> {
        self.get(key)
            .map(|v| v.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}, expected an integer"))))
            .transpose()
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}, supported: \"All\""))),
        }
    }
}

/// The verb of a request to a resource path, as upstream's request-info resolver decides it.
pub fn verb(method: &Method, path: &ResourcePath, query: &Query) -> ApiResult<Verb> {
    let named = path.name.is_some();
    Ok(match *method {
        Method::GET | Method::HEAD if path.watch_prefix || query.flag("watch")? => Verb::Watch,
        Method::GET | Method::HEAD if named => Verb::Get,
        Method::GET | Method::HEAD => Verb::List,
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE if named => Verb::Delete,
        Method::DELETE => Verb::DeleteCollection,
        _ => return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({method})"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> ResourcePath {
        parse_path(path).unwrap_or_else(|| panic!("{path} should parse"))
    }

    #[test]
    fn namespaced_and_cluster_paths_resolve_like_upstream() {
        let r = p("/api/v1/namespaces/default/pods/web/status");
        assert_eq!((r.group.as_str(), r.version.as_str()), ("", "v1"));
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!((r.plural.as_str(), r.name.as_deref(), r.subresource.as_deref()), ("pods", Some("web"), Some("status")));

        let r = p("/apis/apps/v1/deployments");
        assert_eq!((r.group.as_str(), r.plural.as_str(), r.namespace, r.name), ("apps", "deployments", None, None));

        let r = p("/api/v1/nodes/n1");
        assert_eq!((r.plural.as_str(), r.name.as_deref()), ("nodes", Some("n1")));
    }

    #[test]
    fn namespaces_are_their_own_resource_with_status_and_finalize() {
        let r = p("/api/v1/namespaces/dev");
        assert_eq!((r.plural.as_str(), r.name.as_deref(), r.namespace), ("namespaces", Some("dev"), None));
        let r = p("/api/v1/namespaces/dev/finalize");
        assert_eq!((r.plural.as_str(), r.name.as_deref(), r.subresource.as_deref()), ("namespaces", Some("dev"), Some("finalize")));
        let r = p("/api/v1/namespaces");
        assert_eq!((r.plural.as_str(), r.name), ("namespaces", None));
    }

    #[test]
    fn the_watch_prefix_is_understood() {
        let r = p("/api/v1/watch/namespaces/default/pods");
        assert!(r.watch_prefix);
        assert_eq!((r.plural.as_str(), r.namespace.as_deref()), ("pods", Some("default")));
    }

    #[test]
    fn non_resource_paths_are_not_resource_requests() {
        for path in ["/api", "/api/v1", "/apis", "/apis/apps/v1", "/version", "/api/v1/a/b/c/d", "/api/v1//x"] {
            assert_eq!(parse_path(path), None, "{path}");
        }
    }

    #[test]
    fn verbs_follow_method_name_and_watch() {
        let q = Query::parse(Some("watch=true"));
        assert_eq!(verb(&Method::GET, &p("/api/v1/pods"), &q).unwrap(), Verb::Watch);
        assert_eq!(verb(&Method::GET, &p("/api/v1/pods"), &Query::default()).unwrap(), Verb::List);
        assert_eq!(verb(&Method::DELETE, &p("/api/v1/namespaces/a/pods"), &Query::default()).unwrap(), Verb::DeleteCollection);
        assert_eq!(verb(&Method::DELETE, &p("/api/v1/namespaces/a/pods/x"), &Query::default()).unwrap(), Verb::Delete);
        assert_eq!(verb(&Method::OPTIONS, &p("/api/v1/pods"), &Query::default()).unwrap_err().code, 405);
    }
}

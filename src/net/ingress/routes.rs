//! The route table of the ingress proxy: every rule of every Ingress served by
//! rk's class, merged and ordered as upstream's Ingress semantics say. A
//! request's host picks a group (exact host, then `*.wildcard` one label deep,
//! then rules without host); in that group the longest matching path wins,
//! Exact over Prefix on a tie, the older Ingress on a full tie. Prefix paths
//! match element by element (`/foo` matches `/foo/bar`, not `/foobar`). A
//! request matching no rule goes to the default backend, if any Ingress has one.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use std::collections::HashMap;

/// The controller name rk's IngressClass carries.
pub const CONTROLLER: &str = "rk.io/ingress";
/// The name of the IngressClass rk creates.
pub const CLASS_NAME: &str = "rk";

/// The port of a backend Service, by number or by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServicePortRef {
    Number(i32),
    Name(String),
}

/// Where matching requests go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub port: ServicePortRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Exact,
    Prefix,
}

#[derive(Clone, Debug)]
struct PathRoute {
    kind: PathKind,
    /// For Prefix: the path's elements; for Exact: the whole path.
    path: String,
    backend: Backend,
}

impl PathRoute {
    fn matches(&self, request_path: &str) -> bool {
        match self.kind {
            PathKind::Exact => request_path == self.path,
            PathKind::Prefix => {
                let mut wanted = elements(&self.path);
                let mut have = elements(request_path);
                loop {
                    match (wanted.next(), have.next()) {
                        (None, _) => return true,
                        (Some(w), Some(h)) if w == h => continue,
                        _ => return false,
                    }
                }
            }
        }
    }

    /// Longer paths first; Exact before Prefix for the same length.
    fn rank(&self) -> (usize, bool) {
        (self.path.trim_end_matches('/').len(), self.kind == PathKind::Exact)
    }
}

fn elements(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|e| !e.is_empty())
}

/// The rules of the served Ingresses, grouped by host.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<PathRoute>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Vec<PathRoute>>,
    any_host: Vec<PathRoute>,
    default_backend: Option<Backend>,
}

impl RouteTable {
    /// Builds the table from the Ingresses rk serves, oldest first so older rules win ties.
    pub fn build(ingresses: &[&Ingress]) -> Self {
        let mut ordered = ingresses.to_vec();
        ordered.sort_by_key(|i| (i.metadata.creation_timestamp.as_ref().map(|t| t.0), i.metadata.namespace.clone(), i.metadata.name.clone()));
        let mut table = Self::default();
        for ing in ordered {
            let namespace = ing.metadata.namespace.clone().unwrap_or_default();
            let Some(spec) = &ing.spec else { continue };
            if table.default_backend.is_none() {
                table.default_backend = spec.default_backend.as_ref().and_then(|b| backend(&namespace, b));
            }
            for rule in spec.rules.iter().flatten() {
                let group = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                    None => &mut table.any_host,
                    Some(host) => match host.strip_prefix("*.") {
                        Some(suffix) => table.wildcard.entry(suffix.to_owned()).or_default(),
                        None => table.exact.entry(host.to_owned()).or_default(),
                    },
                };
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let Some(backend) = backend(&namespace, &p.backend) else { continue };
                    let kind = if p.path_type == "Exact" { PathKind::Exact } else { PathKind::Prefix };
                    let path = p.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
                    group.push(PathRoute { kind, path, backend });
                }
            }
        }
        for group in table.exact.values_mut().chain(table.wildcard.values_mut()).chain(std::iter::once(&mut table.any_host)) {
            // Stable: among equals the older Ingress stays first.
            group.sort_by_key(|r| std::cmp::Reverse(r.rank()));
        }
        table
    }

    /// The backend for a request to `host` (without port) and `path`, if any.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = host.to_ascii_lowercase();
        let wildcard = host.split_once('.').filter(|(first, _)| !first.is_empty()).and_then(|(_, rest)| self.wildcard.get(rest));
        let group = self.exact.get(&host).or(wildcard).unwrap_or(&self.any_host);
        group.iter().find(|r| r.matches(path)).map(|r| &r.backend).or(self.default_backend.as_ref())
    }
}

fn backend(namespace: &str, b: &IngressBackend) -> Option<Backend> {
    let service = b.service.as_ref()?;
    let port = service.port.as_ref()?;
    let port = match (port.number, port.name.as_deref()) {
        (Some(n), _) if n != 0 => ServicePortRef::Number(n),
        (_, Some(name)) if !name.is_empty() => ServicePortRef::Name(name.to_owned()),
        _ => return None,
    };
    Some(Backend { namespace: namespace.to_owned(), service: service.name.clone(), port })
}

/// Whether rk serves `ing`: its class (by name, or the legacy annotation) is
/// one whose controller is rk's; an Ingress without any class is served when
/// rk's class is the default.
pub fn is_served(ing: &Ingress, classes: &[std::sync::Arc<IngressClass>]) -> bool {
    let ours = |class: &IngressClass| class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER);
    if let Some(name) = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) {
        return classes.iter().any(|c| c.metadata.name.as_deref() == Some(name) && ours(c));
    }
    let legacy = ing.metadata.annotations.as_ref().and_then(|a| a.get(crate::api::kinds::networking::LEGACY_CLASS_ANNOTATION));
    match legacy {
        Some(name) => name == CLASS_NAME,
        None => classes.iter().any(|c| {
            ours(c) && c.metadata.annotations.as_ref().and_then(|a| a.get(crate::api::kinds::networking::DEFAULT_CLASS_ANNOTATION)).map(String::as_str) == Some("true")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{HTTPIngressPath, HTTPIngressRuleValue, IngressRule, IngressServiceBackend, IngressSpec, ServiceBackendPort};

    fn to(service: &str) -> IngressBackend {
        IngressBackend {
            service: Some(IngressServiceBackend { name: service.into(), port: Some(ServiceBackendPort { number: Some(80), name: None }) }),
            resource: None,
        }
    }

    fn ingress(name: &str, host: Option<&str>, paths: &[(&str, &str, &str)], default: Option<&str>) -> Ingress {
        let mut ing = Ingress::default();
        ing.metadata.name = Some(name.into());
        ing.metadata.namespace = Some("shop".into());
        let paths = paths.iter().map(|(path, kind, svc)| HTTPIngressPath { path: Some(path.to_string()), path_type: kind.to_string(), backend: to(svc) }).collect();
        ing.spec = Some(IngressSpec {
            rules: Some(vec![IngressRule { host: host.map(str::to_owned), http: Some(HTTPIngressRuleValue { paths }) }]),
            default_backend: default.map(to),
            ..Default::default()
        });
        ing
    }

    fn service(table: &RouteTable, host: &str, path: &str) -> Option<String> {
        table.route(host, path).map(|b| b.service.clone())
    }

    #[test]
    fn prefix_paths_match_element_by_element() {
        let ing = ingress("a", None, &[("/foo/bar", "Prefix", "bar")], None);
        let table = RouteTable::build(&[&ing]);
        for hit in ["/foo/bar", "/foo/bar/", "/foo/bar/baz"] {
            assert_eq!(service(&table, "x", hit).as_deref(), Some("bar"), "{hit}");
        }
        for miss in ["/foo/barbaz", "/foo", "/"] {
            assert_eq!(service(&table, "x", miss), None, "{miss}");
        }
    }

    #[test]
    fn a_trailing_slash_on_a_prefix_is_ignored_and_root_matches_everything() {
        let ing = ingress("a", None, &[("/aaa/bbb/", "Prefix", "b"), ("/", "Prefix", "root")], None);
        let table = RouteTable::build(&[&ing]);
        assert_eq!(service(&table, "x", "/aaa/bbb").as_deref(), Some("b"));
        assert_eq!(service(&table, "x", "/aaa/bbbc").as_deref(), Some("root"));
    }

    #[test]
    fn exact_paths_match_only_themselves_and_win_ties_over_prefix() {
        let ing = ingress("a", None, &[("/foo", "Prefix", "prefix"), ("/foo", "Exact", "exact")], None);
        let table = RouteTable::build(&[&ing]);
        assert_eq!(service(&table, "x", "/foo").as_deref(), Some("exact"));
        assert_eq!(service(&table, "x", "/foo/").as_deref(), Some("prefix"));
    }

    #[test]
    fn the_longest_matching_path_wins() {
        let ing = ingress("a", None, &[("/", "Prefix", "root"), ("/api/v1", "Prefix", "v1"), ("/api", "Prefix", "api")], None);
        let table = RouteTable::build(&[&ing]);
        assert_eq!(service(&table, "x", "/api/v1/users").as_deref(), Some("v1"));
        assert_eq!(service(&table, "x", "/api/v2").as_deref(), Some("api"));
        assert_eq!(service(&table, "x", "/index.html").as_deref(), Some("root"));
    }

    #[test]
    fn exact_hosts_beat_wildcards_which_match_one_label_only() {
        let exact = ingress("a", Some("foo.example.com"), &[("/", "Prefix", "exact")], None);
        let wild = ingress("b", Some("*.example.com"), &[("/", "Prefix", "wild")], None);
        let table = RouteTable::build(&[&exact, &wild]);
        assert_eq!(service(&table, "FOO.example.com", "/").as_deref(), Some("exact"));
        assert_eq!(service(&table, "bar.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(service(&table, "baz.bar.example.com", "/"), None);
        assert_eq!(service(&table, "example.com", "/"), None);
    }

    #[test]
    fn unmatched_requests_go_to_the_default_backend() {
        let ing = ingress("a", Some("foo.example.com"), &[("/app", "Exact", "app")], Some("fallback"));
        let table = RouteTable::build(&[&ing]);
        assert_eq!(service(&table, "foo.example.com", "/other").as_deref(), Some("fallback"));
        assert_eq!(service(&table, "elsewhere", "/app").as_deref(), Some("fallback"));
    }

    #[test]
    fn the_older_ingress_wins_a_conflict() {
        let mut old = ingress("old", None, &[("/", "Prefix", "old")], None);
        let mut new = ingress("new", None, &[("/", "Prefix", "new")], None);
        old.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2024-01-01T00:00:00Z".parse().unwrap()));
        new.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2025-01-01T00:00:00Z".parse().unwrap()));
        let table = RouteTable::build(&[&new, &old]);
        assert_eq!(service(&table, "x", "/").as_deref(), Some("old"));
    }
}

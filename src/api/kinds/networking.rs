//! networking.k8s.io/v1: Ingresses (HTTP routes from hosts and paths to
//! Services, served by rk's ingress proxy) and IngressClasses (which
//! controller serves an Ingress; one may be the default).

use super::{or_none, pods};
use crate::api::error::FieldError;
use crate::api::registry::{Column, Resource, ResourceBuilder, Subresource};
use crate::api::validation::{check, dns1123_label, dns1123_subdomain};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass, IngressSpec, IngressTLS};
use serde_json::json;

/// The annotation that makes an IngressClass the default for Ingresses without one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation older Ingresses name their class with.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const PATH_TYPES: &[&str] = &["Exact", "Prefix", "ImplementationSpecific"];
/// Sequences a normalized Exact or Prefix path never contains.
const INVALID_PATH_SEQUENCES: &[&str] = &["//", "/./", "/../", "%2f", "%2F"];
const INVALID_PATH_SUFFIXES: &[&str] = &["/..", "/."];
const MAX_CONTROLLER_LENGTH: usize = 250;
/// Hosts shown in the HOSTS column before "+ N more...".
const SHOWN_HOSTS: usize = 3;

pub fn resources() -> Vec<Resource> {
    vec![ingresses(), ingress_classes()]
}

fn ingresses() -> Resource {
    ResourceBuilder::<Ingress>::new()
        .short_names(&["ing"])
        .subresources(&[Subresource::Status])
        .tracks_generation()
        .validate(|ing| {
            let mut errors = match &ing.spec {
                Some(spec) => validate_ingress_spec(spec),
                None => vec![FieldError::invalid("spec", "", "either `defaultBackend` or `rules` must be specified")],
            };
            for (i, lb) in ing.status.iter().flat_map(|s| s.load_balancer.iter()).flat_map(|l| l.ingress.iter().flatten()).enumerate() {
                if let Some(ip) = lb.ip.as_deref().filter(|ip| ip.parse::<std::net::IpAddr>().is_err()) {
                    errors.push(FieldError::invalid(format!("status.loadBalancer.ingress[{i}].ip"), ip, "must be a valid IP address"));
                }
            }
            errors
        })
        .columns(vec![
            Column::name(),
            Column::new("Class", "string", "The name of the IngressClass resource serving the ingress.", |i: &Ingress| {
                or_none(i.spec.as_ref().and_then(|s| s.ingress_class_name.clone()).unwrap_or_default())
            }),
            Column::new("Hosts", "string", "Hosts that incoming requests are matched against.", |i: &Ingress| json!(hosts_cell(i))),
            Column::new("Address", "string", "Address is a list of IPs or host names of the load balancer.", |i: &Ingress| {
                let lb = i.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.clone()).unwrap_or_default();
                json!(lb.iter().filter_map(|l| l.ip.clone().or_else(|| l.hostname.clone())).collect::<Vec<_>>().join(","))
            }),
            Column::new("Ports", "string", "Ports of the load balancer.", |i: &Ingress| {
                json!(if i.spec.as_ref().and_then(|s| s.tls.as_ref()).is_some_and(|t| !t.is_empty()) { "80, 443" } else { "80" })
            }),
            Column::age(),
        ])
        .build()
}

/// kubectl's HOSTS cell: the first three hosts, `*` when no rule names one.
fn hosts_cell(ing: &Ingress) -> String {
    let rules = ing.spec.as_ref().and_then(|s| s.rules.clone()).unwrap_or_default();
    let hosts: Vec<String> = rules.iter().take(SHOWN_HOSTS).filter_map(|r| r.host.clone().filter(|h| !h.is_empty())).collect();
    if hosts.is_empty() {
        return "*".into();
    }
    match rules.len().checked_sub(SHOWN_HOSTS).filter(|more| *more > 0) {
        Some(more) => format!("{} + {more} more...", hosts.join(",")),
        None => hosts.join(","),
    }
}

fn validate_ingress_spec(spec: &IngressSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() && spec.default_backend.is_none() {
        errors.push(FieldError::invalid("spec", "", "either `defaultBackend` or `rules` must be specified"));
    }
    if let Some(class) = &spec.ingress_class_name {
        check(&mut errors, "spec.ingressClassName", class, dns1123_subdomain);
    }
    if let Some(backend) = &spec.default_backend {
        errors.extend(validate_backend(backend, "spec.defaultBackend"));
    }
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        if let Some(host) = rule.host.as_deref().filter(|h| !h.is_empty()) {
            errors.extend(validate_host(host, &format!("{path}.host")));
        }
        let Some(http) = &rule.http else { continue };
        if http.paths.is_empty() {
            errors.push(FieldError::required(format!("{path}.http.paths"), ""));
        }
        for (j, p) in http.paths.iter().enumerate() {
            let at = format!("{path}.http.paths[{j}]");
            let value = p.path.as_deref().unwrap_or("");
            match p.path_type.as_str() {
                "" => errors.push(FieldError::required(format!("{at}.pathType"), "pathType must be specified")),
                "Exact" | "Prefix" => {
                    if !value.starts_with('/') {
                        errors.push(FieldError::invalid(format!("{at}.path"), value, "must be an absolute path"));
                    }
                    for bad in INVALID_PATH_SEQUENCES.iter().filter(|s| value.contains(**s)) {
                        errors.push(FieldError::invalid(format!("{at}.path"), value, format!("must not contain '{bad}'")));
                    }
                    for bad in INVALID_PATH_SUFFIXES.iter().filter(|s| value.ends_with(**s)) {
                        errors.push(FieldError::invalid(format!("{at}.path"), value, format!("cannot end with '{bad}'")));
                    }
                }
                "ImplementationSpecific" if !value.is_empty() && !value.starts_with('/') => {
                    errors.push(FieldError::invalid(format!("{at}.path"), value, "must be an absolute path"));
                }
                "ImplementationSpecific" => {}
                other => errors.push(FieldError::not_supported(format!("{at}.pathType"), other, PATH_TYPES)),
            }
            errors.extend(validate_backend(&p.backend, &format!("{at}.backend")));
        }
    }
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        errors.extend(validate_tls(tls, &format!("spec.tls[{i}]")));
    }
    errors
}

/// A host is a DNS name, optionally with a `*.` wildcard as its first label, never an IP.
fn validate_host(host: &str, field: &str) -> Vec<FieldError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return vec![FieldError::invalid(field, host, "must be a DNS name, not an IP address")];
    }
    let mut errors = Vec::new();
    match host.strip_prefix("*.") {
        Some(rest) if !rest.contains('*') => check(&mut errors, field, rest, dns1123_subdomain),
        _ if host.contains('*') => errors.push(FieldError::invalid(
            field,
            host,
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )),
        _ => check(&mut errors, field, host, dns1123_subdomain),
    }
    errors
}

fn validate_tls(tls: &IngressTLS, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, host) in tls.hosts.iter().flatten().enumerate() {
        errors.extend(validate_host(host, &format!("{path}.hosts[{i}]")));
    }
    if let Some(secret) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) {
        check(&mut errors, &format!("{path}.secretName"), secret, dns1123_subdomain);
    }
    errors
}

/// A backend is a Service (name and one of port number or name) or a resource, never both.
fn validate_backend(backend: &IngressBackend, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match (&backend.service, &backend.resource) {
        (Some(_), Some(_)) => errors.push(FieldError::invalid(path, "", "cannot set both resource and service backends")),
        (None, None) => errors.push(FieldError::invalid(path, "", "resource or service backend is required")),
        (None, Some(resource)) => {
            if resource.kind.is_empty() {
                errors.push(FieldError::required(format!("{path}.resource.kind"), ""));
            }
            if resource.name.is_empty() {
                errors.push(FieldError::required(format!("{path}.resource.name"), ""));
            }
        }
        (Some(service), None) => {
            let at = format!("{path}.service");
            if service.name.is_empty() {
                errors.push(FieldError::required(format!("{at}.name"), ""));
            } else {
                check(&mut errors, &format!("{at}.name"), &service.name, dns1123_label);
            }
            let port = service.port.as_ref();
            let name = port.and_then(|p| p.name.as_deref()).filter(|n| !n.is_empty());
            let number = port.and_then(|p| p.number).filter(|n| *n != 0);
            match (name, number) {
                (Some(_), Some(_)) => errors.push(FieldError::invalid(format!("{at}.port"), "", "cannot set both port name & port number")),
                (Some(name), None) => check(&mut errors, &format!("{at}.port.name"), name, pods::port_name),
                (None, Some(n)) if !(1..=65535).contains(&n) => {
                    errors.push(FieldError::invalid(format!("{at}.port.number"), n, "must be between 1 and 65535, inclusive"));
                }
                (None, Some(_)) => {}
                (None, None) => errors.push(FieldError::required(format!("{at}.port"), "port name or number is required")),
            }
        }
    }
    errors
}

fn ingress_classes() -> Resource {
    ResourceBuilder::<IngressClass>::new()
        .tracks_generation()
        .default(|class| {
            if let Some(params) = class.spec.as_mut().and_then(|s| s.parameters.as_mut()) {
                params.scope.get_or_insert_with(|| "Cluster".into());
            }
        })
        .validate(|class| {
            let mut errors = Vec::new();
            let spec = class.spec.clone().unwrap_or_default();
            match spec.controller.as_deref().unwrap_or("") {
                "" => errors.push(FieldError::required("spec.controller", "")),
                c if c.len() > MAX_CONTROLLER_LENGTH => errors.push(FieldError::too_long("spec.controller", MAX_CONTROLLER_LENGTH)),
                c => errors.extend(domain_prefixed_path(c).into_iter().map(|m| FieldError::invalid("spec.controller", c, m))),
            }
            if let Some(params) = &spec.parameters {
                if params.kind.is_empty() {
                    errors.push(FieldError::required("spec.parameters.kind", ""));
                }
                if params.name.is_empty() {
                    errors.push(FieldError::required("spec.parameters.name", ""));
                }
                match (params.scope.as_deref(), params.namespace.as_deref()) {
                    (Some("Namespace"), None | Some("")) => errors.push(FieldError::required("spec.parameters.namespace", "`parameters.scope` is set to 'Namespace'")),
                    (Some("Cluster"), Some(ns)) if !ns.is_empty() => {
                        errors.push(FieldError::forbidden("spec.parameters.namespace", "`parameters.scope` is set to 'Cluster'"))
                    }
                    (Some("Namespace" | "Cluster") | None, _) => {}
                    (Some(other), _) => errors.push(FieldError::not_supported("spec.parameters.scope", other, &["Cluster", "Namespace"])),
                }
            }
            errors
        })
        .validate_update(|new, old| {
            let (n, o) = (new.spec.as_ref().and_then(|s| s.controller.clone()), old.spec.as_ref().and_then(|s| s.controller.clone()));
            if n == o { vec![] } else { vec![FieldError::invalid("spec.controller", n.unwrap_or_default(), "field is immutable")] }
        })
        .columns(vec![
            Column::name(),
            Column::new("Controller", "string", "Controller that is responsible for handling this class.", |c: &IngressClass| {
                json!(c.spec.as_ref().and_then(|s| s.controller.clone()).unwrap_or_default())
            }),
            Column::new("Parameters", "string", "A reference to a resource with additional parameters.", |c: &IngressClass| {
                let Some(p) = c.spec.as_ref().and_then(|s| s.parameters.as_ref()) else { return json!("<none>") };
                let kind = match p.api_group.as_deref().filter(|g| !g.is_empty()) {
                    Some(group) => format!("{}.{group}", p.kind),
                    None => p.kind.clone(),
                };
                json!(format!("{kind}/{}", p.name))
            }),
            Column::age(),
        ])
        .build()
}

/// Upstream's IsDomainPrefixedPath: `example.com/some-path`.
fn domain_prefixed_path(value: &str) -> Vec<String> {
    let Some((domain, path)) = value.split_once('/') else {
        return vec!["must be a domain-prefixed path (such as \"acme.io/foo\")".into()];
    };
    let mut messages: Vec<String> = dns1123_subdomain(domain);
    if path.is_empty() || !path.chars().all(|c| c.is_ascii_alphanumeric() || "-._~%!$&'()*+,;=:/".contains(c)) {
        messages.push("path must be a valid path segment".into());
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{HTTPIngressPath, HTTPIngressRuleValue, IngressRule, IngressServiceBackend, ServiceBackendPort};

    fn backend(name: &str, number: Option<i32>, port_name: Option<&str>) -> IngressBackend {
        IngressBackend {
            service: Some(IngressServiceBackend {
                name: name.into(),
                port: Some(ServiceBackendPort { number, name: port_name.map(str::to_owned) }),
            }),
            resource: None,
        }
    }

    fn spec(host: &str, path: &str, path_type: &str, backend: IngressBackend) -> IngressSpec {
        IngressSpec {
            rules: Some(vec![IngressRule {
                host: Some(host.into()),
                http: Some(HTTPIngressRuleValue { paths: vec![HTTPIngressPath { path: Some(path.into()), path_type: path_type.into(), backend }] }),
            }]),
            ..Default::default()
        }
    }

    /// The first problem with an Ingress of one rule, as `field: message`.
    fn first_error(path: &str, path_type: &str, backend: IngressBackend) -> String {
        let errors = validate_ingress_spec(&spec("example.com", path, path_type, backend));
        errors.first().map(|e| format!("{}: {}", e.field, e.message())).unwrap_or_default()
    }

    #[test]
    fn a_valid_ingress_has_no_errors() {
        assert!(validate_ingress_spec(&spec("*.example.com", "/api", "Prefix", backend("web", Some(80), None))).is_empty());
        assert!(validate_ingress_spec(&spec("example.com", "/", "Exact", backend("web", None, Some("http")))).is_empty());
    }

    #[test]
    fn an_ingress_needs_rules_or_a_default_backend() {
        assert_eq!(validate_ingress_spec(&IngressSpec::default()).len(), 1);
    }

    #[test]
    fn paths_must_be_absolute_and_normalized_for_exact_and_prefix() {
        assert!(first_error("api", "Prefix", backend("web", Some(80), None)).contains("must be an absolute path"));
        assert!(first_error("/a//b", "Exact", backend("web", Some(80), None)).contains("must not contain '//'"));
        assert!(first_error("/a/..", "Exact", backend("web", Some(80), None)).contains("cannot end with '/..'"));
    }

    #[test]
    fn path_types_are_required_and_limited_to_upstreams() {
        assert!(first_error("/", "", backend("web", Some(80), None)).contains("pathType must be specified"));
        assert!(first_error("/", "Regex", backend("web", Some(80), None)).contains("Unsupported value"));
    }

    #[test]
    fn backends_name_a_service_and_exactly_one_port() {
        assert!(first_error("/", "Prefix", backend("web", Some(80), Some("http"))).contains("cannot set both port name & port number"));
        assert!(first_error("/", "Prefix", backend("web", None, None)).contains("port name or number is required"));
        assert!(first_error("/", "Prefix", backend("", Some(80), None)).contains("spec.rules[0].http.paths[0].backend.service.name"));
        assert!(first_error("/", "Prefix", backend("web", Some(70000), None)).contains("between 1 and 65535"));
    }

    #[test]
    fn hosts_are_dns_names_with_at_most_a_leading_wildcard() {
        assert!(!validate_host("10.0.0.1", "h").is_empty());
        assert!(!validate_host("a.*.example.com", "h").is_empty());
        assert!(!validate_host("Example.com", "h").is_empty());
        assert!(validate_host("*.example.com", "h").is_empty());
    }

    #[test]
    fn tls_secret_names_must_be_object_names() {
        let tls = IngressTLS { hosts: Some(vec!["example.com".into()]), secret_name: Some("Bad_Name".into()) };
        assert_eq!(validate_tls(&tls, "spec.tls[0]").len(), 1);
    }

    #[test]
    fn the_hosts_column_shows_three_hosts_then_a_count() {
        let mut ing = Ingress::default();
        let rule = |h: &str| IngressRule { host: Some(h.into()), http: None };
        ing.spec = Some(IngressSpec { rules: Some(vec![rule("a.io"), rule("b.io"), rule("c.io"), rule("d.io"), rule("e.io")]), ..Default::default() });
        assert_eq!(hosts_cell(&ing), "a.io,b.io,c.io + 2 more...");
        ing.spec = Some(IngressSpec { rules: Some(vec![rule("")]), ..Default::default() });
        assert_eq!(hosts_cell(&ing), "*");
    }

    #[test]
    fn controllers_are_domain_prefixed_paths() {
        assert!(domain_prefixed_path("rk.io/ingress").is_empty());
        assert!(!domain_prefixed_path("ingress").is_empty());
        assert!(!domain_prefixed_path("rk.io/").is_empty());
    }
}

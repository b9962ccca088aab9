//! Core and cluster-infrastructure kinds: namespaces, services, endpoints, config
//! and secrets, service accounts, events, nodes, quotas, leases, endpoint slices.

use super::{labels_string, or_none};
use crate::api::error::FieldError;
use crate::api::object::human_age;
use crate::api::registry::{Column, NameRule, Resource, ResourceBuilder, Subresource};
use crate::api::validation::{self, check};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, NamespaceSpec, NamespaceStatus, Node, ResourceQuota, Secret, Service,
    ServiceAccount, ServicePort, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

pub fn resources() -> Vec<Resource> {
    vec![
        namespaces(),
        configmaps(),
        secrets(),
        serviceaccounts(),
        services(),
        endpoints(),
        events(),
        nodes(),
        resourcequotas(),
        leases(),
        endpointslices(),
    ]
}

fn namespaces() -> Resource {
    ResourceBuilder::<Namespace>::new()
        .short_names(&["ns"])
        .subresources(&[Subresource::Status, Subresource::Finalize])
        .names(NameRule::Label)
        .selectable_fields(&["status.phase"])
        .default(|ns| {
            // Every namespace carries its own name as a label, so selectors can pick namespaces.
            let name = ns.metadata.name.clone().unwrap_or_default();
            if !name.is_empty() {
                ns.metadata.labels.get_or_insert_with(Default::default).insert("kubernetes.io/metadata.name".into(), name);
            }
        })
        .on_create(|ns| {
            ns.spec.get_or_insert_with(NamespaceSpec::default).finalizers = Some(vec!["kubernetes".into()]);
            ns.status = Some(NamespaceStatus { phase: Some("Active".into()), ..Default::default() });
        })
        .columns(vec![
            Column::name(),
            Column::new("Status", "string", "The status of the namespace", |ns: &Namespace| {
                json!(ns.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default())
            }),
            Column::age(),
        ])
        .build()
}

fn data_keys_errors(keys: impl Iterator<Item = String>, field: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for key in keys {
        check(&mut errors, field, &key, validation::config_map_key);
    }
    errors
}

fn configmaps() -> Resource {
    ResourceBuilder::<ConfigMap>::new()
        .short_names(&["cm"])
        .validate(|cm| {
            let mut errors = data_keys_errors(cm.data.iter().flatten().map(|(k, _)| k.clone()), "data");
            errors.extend(data_keys_errors(cm.binary_data.iter().flatten().map(|(k, _)| k.clone()), "binaryData"));
            for key in cm.data.iter().flatten().map(|(k, _)| k) {
                if cm.binary_data.as_ref().is_some_and(|b| b.contains_key(key)) {
                    errors.push(FieldError::invalid("data", key, "duplicate of key present in binaryData"));
                }
            }
            let size: usize = cm.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                + cm.binary_data.iter().flatten().map(|(k, v)| k.len() + v.0.len()).sum::<usize>();
            if size > 1024 * 1024 {
                errors.push(FieldError::too_long("", 1024 * 1024));
            }
            errors
        })
        .validate_update(|new, old| immutable_violations(old.immutable, new.immutable, new.data == old.data && new.binary_data == old.binary_data))
        .columns(vec![
            Column::name(),
            Column::new("Data", "integer", "Number of keys", |cm: &ConfigMap| {
                json!(cm.data.as_ref().map_or(0, |d| d.len()) + cm.binary_data.as_ref().map_or(0, |d| d.len()))
            }),
            Column::age(),
        ])
        .build()
}

/// Objects marked `immutable: true` keep their data and stay immutable.
fn immutable_violations(old: Option<bool>, new: Option<bool>, same_data: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if old == Some(true) {
        if !same_data {
            errors.push(FieldError::forbidden("data", "field is immutable when `immutable` is set"));
        }
        if new != Some(true) {
            errors.push(FieldError::forbidden("immutable", "field is immutable when `immutable` is set"));
        }
    }
    errors
}

fn secrets() -> Resource {
    ResourceBuilder::<Secret>::new()
        .selectable_fields(&["type"])
        .default(|s| {
            if s.type_.as_deref().is_none_or(str::is_empty) {
                s.type_ = Some("Opaque".into());
            }
            // stringData is a write-only convenience: it lands in data, as upstream does.
            if let Some(strings) = s.string_data.take() {
                let data = s.data.get_or_insert_with(Default::default);
                for (k, v) in strings {
                    data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
                }
            }
        })
        .validate(|s| {
            let mut errors = data_keys_errors(s.data.iter().flatten().map(|(k, _)| k.clone()), "data");
            let has = |key: &str| s.data.as_ref().is_some_and(|d| d.contains_key(key));
            match s.type_.as_deref() {
                Some("kubernetes.io/tls") => {
                    for key in ["tls.crt", "tls.key"] {
                        if !has(key) {
                            errors.push(FieldError::required(format!("data[{key}]"), ""));
                        }
                    }
                }
                Some("kubernetes.io/dockerconfigjson") if !has(".dockerconfigjson") => {
                    errors.push(FieldError::required("data[.dockerconfigjson]", ""));
                }
                Some("kubernetes.io/service-account-token")
                    if s.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key("kubernetes.io/service-account.name")) =>
                {
                    errors.push(FieldError::required("metadata.annotations[kubernetes.io/service-account.name]", ""));
                }
                _ => {}
            }
            errors
        })
        .validate_update(|new, old| {
            let mut errors = Vec::new();
            if new.type_ != old.type_ {
                errors.push(FieldError::invalid("type", new.type_.clone().unwrap_or_default(), "field is immutable"));
            }
            errors.extend(immutable_violations(old.immutable, new.immutable, new.data == old.data));
            errors
        })
        .columns(vec![
            Column::name(),
            Column::new("Type", "string", "The type of the secret", |s: &Secret| json!(s.type_.clone().unwrap_or_default())),
            Column::new("Data", "integer", "Number of keys", |s: &Secret| json!(s.data.as_ref().map_or(0, |d| d.len()))),
            Column::age(),
        ])
        .build()
}

fn serviceaccounts() -> Resource {
    ResourceBuilder::<ServiceAccount>::new()
        .short_names(&["sa"])
        .subresources(&[Subresource::Token])
        .columns(vec![
            Column::name(),
            Column::new("Secrets", "string", "Number of secrets", |sa: &ServiceAccount| {
                json!(sa.secrets.as_ref().map_or(0, |s| s.len()))
            }),
            Column::age(),
        ])
        .build()
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn port_string(p: &ServicePort) -> String {
    let protocol = p.protocol.as_deref().unwrap_or("TCP");
    match p.node_port {
        Some(np) if np > 0 => format!("{}:{np}/{protocol}", p.port),
        _ => format!("{}/{protocol}", p.port),
    }
}

fn services() -> Resource {
    ResourceBuilder::<Service>::new()
        .short_names(&["svc"])
        .categories(&["all"])
        .subresources(&[Subresource::Status])
        .names(NameRule::Label)
        .returns_deleted_object()
        .default(|svc| {
            let Some(spec) = svc.spec.as_mut() else { return };
            if spec.type_.is_none() {
                spec.type_ = Some("ClusterIP".into());
            }
            if spec.session_affinity.is_none() {
                spec.session_affinity = Some("None".into());
            }
            if spec.type_.as_deref() != Some("ExternalName") && spec.internal_traffic_policy.is_none() {
                spec.internal_traffic_policy = Some("Cluster".into());
            }
            if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) && spec.external_traffic_policy.is_none() {
                spec.external_traffic_policy = Some("Cluster".into());
            }
            for p in spec.ports.iter_mut().flatten() {
                p.protocol.get_or_insert_with(|| "TCP".into());
                if p.target_port.is_none() {
                    p.target_port = Some(IntOrString::Int(p.port));
                }
            }
        })
        // Upstream's PrepareForCreate resets the status, which serializes as
        // `status: {loadBalancer: {}}`; clients decode the create answer expecting it.
        .on_create(|svc| svc.status = Some(ServiceStatus { load_balancer: Some(Default::default()), ..Default::default() }))
        .validate(validate_service)
        .validate_update(|new, old| {
            let ip = |s: &Service| s.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
            let (new_ip, old_ip) = (ip(new), ip(old));
            if !old_ip.is_empty() && new_ip != old_ip {
                return vec![FieldError::invalid("spec.clusterIPs[0]", new_ip, "may not change once set")];
            }
            Vec::new()
        })
        .columns(vec![
            Column::name(),
            Column::new("Type", "string", "The type of service", |s: &Service| {
                json!(s.spec.as_ref().and_then(|s| s.type_.clone()).unwrap_or_default())
            }),
            Column::new("Cluster-IP", "string", "The cluster IP of the service", |s: &Service| {
                or_none(s.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default())
            }),
            Column::new("External-IP", "string", "External IPs of the service", external_ips),
            Column::new("Port(s)", "string", "The ports of the service", |s: &Service| {
                or_none(s.spec.as_ref().and_then(|s| s.ports.as_ref()).map(|ps| ps.iter().map(port_string).collect::<Vec<_>>().join(",")).unwrap_or_default())
            }),
            Column::age(),
            Column::new("Selector", "string", "The label selector of the service", |s: &Service| {
                or_none(s.spec.as_ref().and_then(|s| s.selector.as_ref()).map(labels_string).unwrap_or_default())
            })
            .wide(),
        ])
        .build()
}

/// kubectl's EXTERNAL-IP: load balancer ingress, external IPs, or `<pending>`.
fn external_ips(s: &Service) -> serde_json::Value {
    let spec = s.spec.as_ref();
    let kind = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
    let external: Vec<String> = spec.and_then(|s| s.external_ips.clone()).unwrap_or_default();
    let ingress: Vec<String> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone())).collect())
        .unwrap_or_default();
    let text = match kind {
        "ExternalName" => spec.and_then(|s| s.external_name.clone()).unwrap_or_default(),
        "LoadBalancer" => {
            let all: Vec<String> = ingress.into_iter().chain(external).collect();
            if all.is_empty() { "<pending>".into() } else { all.join(",") }
        }
        _ => external.join(","),
    };
    or_none(text)
}

fn validate_service(svc: &Service) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(spec) = svc.spec.as_ref() else {
        return vec![FieldError::required("spec", "")];
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&kind) {
        errors.push(FieldError::not_supported("spec.type", kind, SERVICE_TYPES));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if kind == "ExternalName" {
        match spec.external_name.as_deref() {
            None | Some("") => errors.push(FieldError::required("spec.externalName", "")),
            Some(name) => check(&mut errors, "spec.externalName", name.trim_end_matches('.'), validation::dns1123_subdomain),
        }
    } else if ports.is_empty() && !headless {
        errors.push(FieldError::required("spec.ports", ""));
    }
    if let Some(affinity) = spec.session_affinity.as_deref()
        && !["None", "ClientIP"].contains(&affinity) {
            errors.push(FieldError::not_supported("spec.sessionAffinity", affinity, &["ClientIP", "None"]));
        }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => errors.push(FieldError::required(format!("{field}.name"), "")),
            None | Some("") => {}
            Some(name) => {
                check(&mut errors, &format!("{field}.name"), name, validation::dns1123_label);
                if names.contains(&name) {
                    errors.push(FieldError::duplicate(format!("{field}.name"), name));
                }
                names.push(name);
            }
        }
        if !(1..=65535).contains(&p.port) {
            errors.push(FieldError::invalid(format!("{field}.port"), p.port, "must be between 1 and 65535, inclusive"));
        }
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        if !PROTOCOLS.contains(&protocol) {
            errors.push(FieldError::not_supported(format!("{field}.protocol"), protocol, PROTOCOLS));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                errors.push(FieldError::invalid(format!("{field}.targetPort"), t, "must be between 1 and 65535, inclusive"));
            }
            Some(IntOrString::String(s)) if s.is_empty() || s.len() > 15 => {
                errors.push(FieldError::invalid(format!("{field}.targetPort"), s, "must be no more than 15 characters"));
            }
            _ => {}
        }
        if let Some(np) = p.node_port.filter(|np| *np != 0) {
            if kind == "ClusterIP" {
                errors.push(FieldError::forbidden(format!("{field}.nodePort"), "may not be used when `type` is 'ClusterIP'"));
            } else if !(1..=65535).contains(&np) {
                errors.push(FieldError::invalid(format!("{field}.nodePort"), np, "must be between 1 and 65535, inclusive"));
            }
        }
    }
    if let Some(selector) = &spec.selector {
        for (k, v) in selector {
            check(&mut errors, "spec.selector", k, validation::qualified_name);
            check(&mut errors, "spec.selector", v, validation::label_value);
        }
    }
    errors
}

fn endpoints() -> Resource {
    ResourceBuilder::<Endpoints>::new()
        .short_names(&["ep"])
        .create_on_update()
        .columns(vec![
            Column::name(),
            Column::new("Endpoints", "string", "Endpoints of the service", |e: &Endpoints| {
                let mut all = Vec::new();
                for subset in e.subsets.iter().flatten() {
                    for addr in subset.addresses.iter().flatten() {
                        match subset.ports.as_deref() {
                            Some([_, ..]) => all.extend(subset.ports.iter().flatten().map(|p| format!("{}:{}", addr.ip, p.port))),
                            _ => all.push(addr.ip.clone()),
                        }
                    }
                }
                let shown = all.iter().take(3).cloned().collect::<Vec<_>>().join(",");
                or_none(if all.len() > 3 { format!("{shown} + {} more...", all.len() - 3) } else { shown })
            }),
            Column::age(),
        ])
        .build()
}

fn events() -> Resource {
    ResourceBuilder::<Event>::new()
        .short_names(&["ev"])
        .names(NameRule::PathSegment)
        .create_on_update()
        .selectable_fields(&[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ])
        .validate(|e| {
            let mut errors = Vec::new();
            let ns = e.metadata.namespace.as_deref().unwrap_or("");
            if let Some(obj_ns) = e.involved_object.namespace.as_deref().filter(|n| !n.is_empty() && *n != ns) {
                errors.push(FieldError::invalid("involvedObject.namespace", obj_ns, "does not match event.namespace"));
            }
            if let Some(t) = e.type_.as_deref().filter(|t| !["Normal", "Warning"].contains(t)) {
                errors.push(FieldError::not_supported("type", t, &["Normal", "Warning"]));
            }
            errors
        })
        .columns(vec![
            Column::new("Last Seen", "string", "Time of the last occurrence", |e: &Event| {
                json!(event_time(e, true))
            }),
            Column::new("Type", "string", "Type of the event", |e: &Event| json!(e.type_.clone().unwrap_or_default())),
            Column::new("Reason", "string", "Why the event happened", |e: &Event| json!(e.reason.clone().unwrap_or_default())),
            Column::new("Object", "string", "The object the event is about", |e: &Event| {
                json!(format!("{}/{}", e.involved_object.kind.clone().unwrap_or_default().to_ascii_lowercase(), e.involved_object.name.clone().unwrap_or_default()))
            }),
            Column::new("Subobject", "string", "The part of the object", |e: &Event| json!(e.involved_object.field_path.clone().unwrap_or_default())).wide(),
            Column::new("Source", "string", "Who reported the event", |e: &Event| {
                let src = e.source.as_ref();
                let component = src.and_then(|s| s.component.clone()).or_else(|| e.reporting_component.clone()).unwrap_or_default();
                json!(match src.and_then(|s| s.host.clone()) {
                    Some(host) if !host.is_empty() => format!("{component}, {host}"),
                    _ => component,
                })
            })
            .wide(),
            Column::new("Message", "string", "What happened", |e: &Event| json!(e.message.clone().unwrap_or_default())),
            Column::new("First Seen", "string", "Time of the first occurrence", |e: &Event| json!(event_time(e, false))).wide(),
            Column::new("Count", "string", "Number of occurrences", |e: &Event| json!(e.count.unwrap_or(1).to_string())).wide(),
            Column::name().wide(),
        ])
        .build()
}

/// Age of an event's last (or first) occurrence, falling back as kubectl does.
fn event_time(e: &Event, last: bool) -> String {
    let t = if last { e.last_timestamp.as_ref().map(|t| t.0) } else { e.first_timestamp.as_ref().map(|t| t.0) };
    let t = t.or_else(|| e.event_time.as_ref().map(|t| t.0)).or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    t.map_or_else(|| "<unknown>".into(), |t| human_age(&t.to_string()))
}

fn nodes() -> Resource {
    ResourceBuilder::<Node>::new()
        .short_names(&["no"])
        .subresources(&[Subresource::Status])
        .status_on_create()
        .selectable_fields(&["spec.unschedulable"])
        .columns(vec![
            Column::name(),
            Column::new("Status", "string", "The status of the node", |n: &Node| {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.status.as_str());
                let mut status = match ready {
                    Some("True") => "Ready".to_owned(),
                    Some(_) => "NotReady".to_owned(),
                    None => "Unknown".to_owned(),
                };
                if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
                    status.push_str(",SchedulingDisabled");
                }
                json!(status)
            }),
            Column::new("Roles", "string", "The roles of the node", |n: &Node| {
                let roles: Vec<String> = n
                    .metadata
                    .labels
                    .iter()
                    .flatten()
                    .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(str::to_owned))
                    .collect();
                or_none(roles.join(","))
            }),
            Column::age(),
            Column::new("Version", "string", "Kubelet version", |n: &Node| {
                json!(n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.kubelet_version.clone()).unwrap_or_default())
            }),
            Column::new("Internal-IP", "string", "Internal IP", |n: &Node| or_none(node_address(n, "InternalIP"))).wide(),
            Column::new("External-IP", "string", "External IP", |n: &Node| or_none(node_address(n, "ExternalIP"))).wide(),
            Column::new("OS-Image", "string", "OS image", |n: &Node| {
                json!(n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.os_image.clone()).unwrap_or_default())
            })
            .wide(),
            Column::new("Kernel-Version", "string", "Kernel version", |n: &Node| {
                json!(n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.kernel_version.clone()).unwrap_or_default())
            })
            .wide(),
            Column::new("Container-Runtime", "string", "Container runtime", |n: &Node| {
                json!(n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.container_runtime_version.clone()).unwrap_or_default())
            })
            .wide(),
        ])
        .build()
}

fn node_address(n: &Node, kind: &str) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == kind))
        .map(|a| a.address.clone())
        .unwrap_or_default()
}

fn resourcequotas() -> Resource {
    ResourceBuilder::<ResourceQuota>::new()
        .short_names(&["quota"])
        .subresources(&[Subresource::Status])
        .columns(vec![
            Column::name(),
            Column::age(),
            Column::new("Request", "string", "Requests used and their hard limits", |q: &ResourceQuota| {
                json!(quota_usage(q, |name| !name.starts_with("limits.")))
            }),
            Column::new("Limit", "string", "Limits used and their hard limits", |q: &ResourceQuota| {
                json!(quota_usage(q, |name| name.starts_with("limits.")))
            }),
        ])
        .build()
}

/// `name: used/hard` pairs, as kubectl prints quotas.
fn quota_usage(q: &ResourceQuota, pick: fn(&str) -> bool) -> String {
    let hard = q.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    let used = q.status.as_ref().and_then(|s| s.used.clone()).unwrap_or_default();
    hard.iter()
        .filter(|(name, _)| pick(name))
        .map(|(name, h)| format!("{name}: {}/{}", used.get(name).map_or("0", |u| u.0.as_str()), h.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn leases() -> Resource {
    ResourceBuilder::<Lease>::new()
        .names(NameRule::PathSegment)
        .create_on_update()
        .validate(|l| {
            let mut errors = Vec::new();
            if let Some(d) = l.spec.as_ref().and_then(|s| s.lease_duration_seconds).filter(|d| *d <= 0) {
                errors.push(FieldError::invalid("spec.leaseDurationSeconds", d, "must be greater than 0"));
            }
            errors
        })
        .columns(vec![
            Column::name(),
            Column::new("Holder", "string", "The holder of the lease", |l: &Lease| {
                json!(l.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default())
            }),
            Column::age(),
        ])
        .build()
}

const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];

fn endpointslices() -> Resource {
    ResourceBuilder::<EndpointSlice>::new()
        .validate(|s| {
            let mut errors = Vec::new();
            if !ADDRESS_TYPES.contains(&s.address_type.as_str()) {
                errors.push(FieldError::not_supported("addressType", &s.address_type, ADDRESS_TYPES));
            }
            for (i, e) in s.endpoints.iter().enumerate() {
                if e.addresses.is_empty() || e.addresses.len() > 100 {
                    errors.push(FieldError::invalid(format!("endpoints[{i}].addresses"), e.addresses.len(), "must contain at least 1 and at most 100 addresses"));
                }
            }
            errors
        })
        .columns(vec![
            Column::name(),
            Column::new("AddressType", "string", "The type of addresses", |s: &EndpointSlice| json!(s.address_type)),
            Column::new("Ports", "string", "The ports of the slice", |s: &EndpointSlice| {
                let ports: Vec<String> = s.ports.iter().flatten().filter_map(|p| p.port.map(|p| p.to_string())).collect();
                json!(if ports.is_empty() { "<unset>".to_owned() } else { ports.join(",") })
            }),
            Column::new("Endpoints", "string", "The addresses of the slice", |s: &EndpointSlice| {
                let all: Vec<&String> = s.endpoints.iter().flat_map(|e| e.addresses.iter()).collect();
                let shown = all.iter().take(3).map(|a| a.as_str()).collect::<Vec<_>>().join(",");
                or_none(if all.len() > 3 { format!("{shown} + {} more...", all.len() - 3) } else { shown })
            }),
            Column::age(),
        ])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_service_starts_with_an_empty_load_balancer_status() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        let admitted = services().strategy.admit(svc, None).map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(admitted["status"], json!({"loadBalancer": {}}));
    }
}

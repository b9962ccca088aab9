//! Discovery: what clients read to learn which groups, versions and resources the
//! server has (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`) and which
//! Kubernetes version it speaks (`/version`). Built from the registry, so only
//! what is served is advertised.

use super::registry::{Registry, Resource, Subresource};
use serde_json::{Value, json};

/// The Kubernetes minor version rk speaks: the k8s-openapi feature it is built with.
pub const KUBERNETES_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0+rk{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": option_env!("RK_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": option_env!("RK_BUILD_DATE").unwrap_or("1970-01-01T00:00:00Z"),
        "goVersion": "n/a (rk is written in Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

/// Architecture names as Go spells them, which clients print.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions.iter().map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v })).collect();
    json!({ "name": group, "versions": versions, "preferredVersion": versions[0] })
}

/// `/apis`: every named group.
pub fn groups(registry: &Registry) -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (group, _) in registry.group_versions() {
        if !group.is_empty() && !names.contains(&group) {
            names.push(group);
        }
    }
    let groups: Vec<Value> = names
        .iter()
        .map(|g| {
            let versions: Vec<&str> = registry.group_versions().into_iter().filter(|(gg, _)| gg == g).map(|(_, v)| v).collect();
            group_entry(g, &versions)
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/<group>`: one group.
pub fn group(registry: &Registry, group: &str) -> Option<Value> {
    let versions: Vec<&str> = registry.group_versions().into_iter().filter(|(g, _)| *g == group).map(|(_, v)| v).collect();
    if versions.is_empty() || group.is_empty() {
        return None;
    }
    let mut entry = group_entry(group, &versions);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn subresource_entry(r: &Resource, sub: Subresource) -> Value {
    let name = format!("{}/{}", r.plural, sub.path());
    match sub {
        Subresource::Status => {
            json!({ "name": name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"] })
        }
        Subresource::Scale => json!({
            "name": name, "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1",
            "kind": "Scale", "verbs": ["get", "patch", "update"],
        }),
        Subresource::Binding => json!({ "name": name, "singularName": "", "namespaced": r.namespaced, "kind": "Binding", "verbs": ["create"] }),
        Subresource::Finalize => json!({ "name": name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["update"] }),
        Subresource::Token => json!({
            "name": name, "singularName": "", "namespaced": r.namespaced, "group": "authentication.k8s.io", "version": "v1",
            "kind": "TokenRequest", "verbs": ["create"],
        }),
        Subresource::Log => json!({ "name": name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get"] }),
        Subresource::Exec | Subresource::Attach | Subresource::PortForward => {
            let kind = match sub {
                Subresource::Exec => "PodExecOptions",
                Subresource::Attach => "PodAttachOptions",
                _ => "PodPortForwardOptions",
            };
            json!({ "name": name, "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": ["create", "get"] })
        }
    }
}

/// `/api/v1` or `/apis/<group>/<version>`: the resources of one group-version.
pub fn resources(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in registry.all().iter().filter(|r| r.group == group && r.version == version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        resources.extend(r.subresources.iter().map(|s| subresource_entry(r, *s)));
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources }))
}

//! Strategic merge patch (`application/strategic-merge-patch+json`), applied the way the
//! Kubernetes API server applies it: objects merge key by key, lists merge or are
//! replaced as the schema's patch strategy says, and the patch may carry directives:
//!
//! - `$patch: replace | delete | merge` in an object, and `$patch: delete | replace` as
//!   an item of a merging list;
//! - `$retainKeys: [...]`: after merging, only the listed keys of the object are kept;
//! - `$setElementOrder/<field>: [...]`: the order of the merged list;
//! - `$deleteFromPrimitiveList/<field>: [...]`: values to drop from a list of scalars.
//!
//! Directives never reach the result. Ordering follows the API server: with
//! `$setElementOrder`, the named items take that order and items only the server has keep
//! their place relative to the live list (new items count as following it); without it,
//! items named in the patch take the patch's order and new ones go in front of
//! server-only items, as upstream does (`kubectl patch` adding a container lists it first).

use crate::api::schema::Node;
use serde_json::{Map, Value};
use std::collections::{HashSet, VecDeque};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

/// Deeper patches are refused rather than risking the stack. serde_json stops parsing at 128
/// levels, so only documents built in code get here.
const MAX_DEPTH: usize = 150;

/// Applies a strategic merge patch to `original` (both JSON objects) as the Kubernetes API server does.
pub fn apply(original: &Value, patch: &Value, node: Node<'_>) -> Result<Value, String> {
    let original = original.as_object().ok_or("the object to patch is not a JSON object")?;
    let patch = patch.as_object().ok_or("a strategic merge patch must be a JSON object")?;
    merge_map(original.clone(), patch, node, 0).map(Value::Object)
}

fn merge_map(mut original: Map<String, Value>, patch: &Map<String, Value>, node: Node<'_>, depth: usize) -> Result<Map<String, Value>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the patch is nested more than {MAX_DEPTH} levels deep"));
    }
    if let Some(directive) = patch.get(PATCH) {
        match directive.as_str() {
            Some("replace") => {
                let rest: Map<String, Value> = patch.iter().filter(|(k, _)| *k != PATCH).map(|(k, v)| (k.clone(), v.clone())).collect();
                return merge_map(Map::new(), &rest, node, depth + 1);
            }
            Some("delete") => return Ok(Map::new()),
            Some("merge") => {}
            _ => return Err(format!("unknown patch type: {directive} in map: {}", Value::Object(patch.clone()))),
        }
    }

    if let Some(keys) = patch.get(RETAIN_KEYS) {
        let keys = keys
            .as_array()
            .and_then(|keys| keys.iter().map(Value::as_str).collect::<Option<HashSet<&str>>>())
            .ok_or("invalid patch format of retainKeys: $retainKeys must be a list of field names")?;
        if let Some((field, _)) = patch.iter().find(|(k, v)| !v.is_null() && !is_directive(k) && !keys.contains(k.as_str())) {
            return Err(format!("patch content doesn't match retainKeys list: {field} is not in $retainKeys"));
        }
        original.retain(|k, _| keys.contains(k.as_str()));
    }

    // Lists with an explicit order are merged and ordered together, then left out of the plain merge.
    let mut done = HashSet::new();
    for (key, order) in patch.iter().filter(|(k, _)| k.starts_with(SET_ELEMENT_ORDER)) {
        let field = directive_field(key, SET_ELEMENT_ORDER)?;
        let order = order.as_array().ok_or_else(|| format!("invalid patch format of setElementOrder list: {key} must be a list"))?;
        if let Some(list) = order_field(original.get(field), patch.get(field), order, node.field(field), depth)? {
            set_in_place(&mut original, field, Value::Array(list));
        }
        done.insert(field);
    }

    for (key, values) in patch.iter().filter(|(k, _)| k.starts_with(DELETE_FROM_PRIMITIVE_LIST)) {
        let field = directive_field(key, DELETE_FROM_PRIMITIVE_LIST)?;
        let values = values.as_array().ok_or_else(|| format!("invalid patch format of primitive list: {key} must be a list"))?;
        match original.get_mut(field) {
            None => {}
            Some(Value::Array(items)) => items.retain(|item| !values.iter().any(|v| same(item, v))),
            Some(_) => return Err(format!("cannot delete values from {field}: it is not a list")),
        }
    }

    for (key, value) in patch {
        if is_directive(key) || done.contains(key.as_str()) {
            continue;
        }
        if value.is_null() {
            // `retain` keeps the other keys' order whether or not serde_json preserves it.
            if original.contains_key(key) {
                original.retain(|k, _| k != key);
            }
            continue;
        }
        let field = node.field(key);
        match original.get_mut(key) {
            Some(slot) => {
                let current = std::mem::take(slot);
                *slot = merge_value(current, value, field, depth)?;
            }
            None => {
                original.insert(key.clone(), fresh(value, field, depth)?);
            }
        }
    }
    Ok(original)
}

/// Replaces a field's value without moving it (keeps key order when serde_json preserves it).
fn set_in_place(map: &mut Map<String, Value>, field: &str, value: Value) {
    match map.get_mut(field) {
        Some(slot) => *slot = value,
        None => {
            map.insert(field.to_owned(), value);
        }
    }
}

fn is_directive(key: &str) -> bool {
    key == PATCH || key == RETAIN_KEYS || key.starts_with(SET_ELEMENT_ORDER) || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

/// The field a parallel-list directive (`$prefix/field`) is about.
fn directive_field<'k>(key: &'k str, prefix: &str) -> Result<&'k str, String> {
    key.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('/')).ok_or_else(|| format!("invalid patch directive {key:?}: expected {prefix}/<field>"))
}

fn is_merge_list(node: Node<'_>) -> bool {
    node.patch_strategies().contains(&"merge")
}

/// Merges one patch value into the value already present.
fn merge_value(current: Value, patch: &Value, node: Node<'_>, depth: usize) -> Result<Value, String> {
    match (current, patch) {
        (Value::Object(current), Value::Object(patch)) if !node.patch_strategies().contains(&"replace") => {
            merge_map(current, patch, node, depth + 1).map(Value::Object)
        }
        (Value::Array(current), Value::Array(patch)) if is_merge_list(node) => {
            let merged = merge_list(current, patch, node, depth + 1)?;
            order(merged, None, node.patch_merge_key()).map(Value::Array)
        }
        _ => fresh(patch, node, depth),
    }
}

/// A patch value where nothing is merged into: a copy with its directives carried out.
fn fresh(patch: &Value, node: Node<'_>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the patch is nested more than {MAX_DEPTH} levels deep"));
    }
    Ok(match patch {
        Value::Object(patch) => Value::Object(merge_map(Map::new(), patch, node, depth + 1)?),
        Value::Array(patch) if is_merge_list(node) => {
            let merged = merge_list(Vec::new(), patch, node, depth + 1)?;
            Value::Array(order(merged, None, node.patch_merge_key())?)
        }
        Value::Array(patch) => Value::Array(patch.iter().map(|item| fresh(item, node.items(), depth + 1)).collect::<Result<_, _>>()?),
        scalar => scalar.clone(),
    })
}

/// A merged list before ordering: the live items (after deletions, merged in place),
/// then the new ones in patch order.
struct Merged {
    items: Vec<Value>,
    /// How many of `items` were already in the live list.
    live: usize,
    /// The identities of the patch's plain items, in patch order.
    patched: Vec<Value>,
}

fn merge_list(live: Vec<Value>, patch: &[Value], node: Node<'_>, depth: usize) -> Result<Merged, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the patch is nested more than {MAX_DEPTH} levels deep"));
    }
    if element_kind(&live, patch)? != Some("object") {
        // A set of scalars: the union, without duplicates.
        let mut items: Vec<Value> = Vec::with_capacity(live.len() + patch.len());
        for value in live {
            if !items.iter().any(|item| same(item, &value)) {
                items.push(value);
            }
        }
        let known = items.len();
        for value in patch {
            if !items.iter().any(|item| same(item, value)) {
                items.push(value.clone());
            }
        }
        return Ok(Merged { items, live: known, patched: patch.to_vec() });
    }

    let key = node.patch_merge_key().ok_or("cannot merge lists of objects without a merge key")?;
    let item_node = node.items();
    let mut items = live;
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for entry in patch.iter().filter_map(Value::as_object) {
        let Some(directive) = entry.get(PATCH) else {
            plain.push(entry);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let id = entry.get(key).ok_or_else(|| missing_key(entry, key))?;
                items.retain(|item| !item.get(key).is_some_and(|v| same(v, id)));
            }
            Some("replace") => replace = true,
            Some("merge") => return Err("merging lists cannot yet be specified in the patch".into()),
            _ => return Err(format!("unknown patch type: {directive} in map: {}", Value::Object(entry.clone()))),
        }
    }
    if replace {
        let items = plain.iter().map(|entry| merge_map(Map::new(), entry, item_node, depth + 1).map(Value::Object)).collect::<Result<Vec<_>, _>>()?;
        return Ok(Merged { live: items.len(), items, patched: Vec::new() });
    }

    let known = items.len();
    let mut patched = Vec::with_capacity(plain.len());
    for entry in plain {
        let id = entry.get(key).ok_or_else(|| missing_key(entry, key))?;
        patched.push(id.clone());
        match items.iter_mut().find_map(|item| item.as_object_mut().filter(|m| m.get(key).is_some_and(|v| same(v, id)))) {
            Some(existing) => {
                let current = std::mem::take(existing);
                *existing = merge_map(current, entry, item_node, depth + 1)?;
            }
            None => items.push(Value::Object(merge_map(Map::new(), entry, item_node, depth + 1)?)),
        }
    }
    Ok(Merged { items, live: known, patched })
}

/// The one kind of value a list holds (`None` when empty); mixed kinds, nested lists and nulls are errors.
fn element_kind(a: &[Value], b: &[Value]) -> Result<Option<&'static str>, String> {
    let mut kind = None;
    for value in a.iter().chain(b) {
        let this = match value {
            Value::Null => return Err("a merging list may not contain null".into()),
            Value::Array(_) => return Err("lists of lists are not supported".into()),
            Value::Object(_) => "object",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "bool",
        };
        match kind {
            None => kind = Some(this),
            Some(seen) if seen != this => return Err(format!("list element types are not identical: found {seen} and {this}")),
            Some(_) => {}
        }
    }
    Ok(kind)
}

/// Merges and orders a list that has a `$setElementOrder`; `None` when neither side has the list.
fn order_field(live: Option<&Value>, patch: Option<&Value>, wanted: &[Value], node: Node<'_>, depth: usize) -> Result<Option<Vec<Value>>, String> {
    let as_list = |value: &Value| value.as_array().cloned().ok_or_else(|| format!("expected a list to order, but found {value}"));
    let key = node.patch_merge_key();
    let merged = match (live, patch) {
        (None, None) => return Ok(None),
        (Some(live), None) => {
            let items = as_list(live)?;
            Merged { live: items.len(), items, patched: Vec::new() }
        }
        (live, Some(patch)) => {
            let patch = patch.as_array().ok_or_else(|| format!("expected a list to order, but found {patch}"))?;
            check_order(patch, wanted, key)?;
            let live = live.map(as_list).transpose()?;
            if is_merge_list(node) {
                merge_list(live.unwrap_or_default(), patch, node, depth + 1)?
            } else {
                let items = patch.iter().map(|item| fresh(item, node.items(), depth + 1)).collect::<Result<Vec<_>, _>>()?;
                Merged { live: items.len(), items, patched: Vec::new() }
            }
        }
    };
    order(merged, Some(wanted), key).map(Some)
}

/// What identifies a list item: its merge key's value for objects, the value itself for scalars.
fn identity<'v>(item: &'v Value, key: Option<&str>) -> Result<&'v Value, String> {
    match (item, key) {
        (Value::Object(map), Some(key)) => map.get(key).ok_or_else(|| missing_key(map, key)),
        (Value::Object(_), None) => Err("cannot order or merge a list of objects without a merge key".into()),
        (scalar, _) => Ok(scalar),
    }
}

fn missing_key(map: &Map<String, Value>, key: &str) -> String {
    format!("map: {} does not contain declared merge key: {key}", Value::Object(map.clone()))
}

/// Loose JSON equality: `80` and `80.0` are the same number, as in Go's decoded JSON.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn position(ids: &[&Value], id: &Value) -> Option<usize> {
    ids.iter().position(|other| same(other, id))
}

/// The patch's items must appear in `$setElementOrder` in the same relative order.
fn check_order(patch: &[Value], wanted: &[Value], key: Option<&str>) -> Result<(), String> {
    let mut remaining = wanted.iter();
    for item in patch.iter().filter(|item| item.get(PATCH).is_none()) {
        let id = identity(item, key)?;
        let mut found = false;
        for next in remaining.by_ref() {
            if same(identity(next, key)?, id) {
                found = true;
                break;
            }
        }
        if !found {
            return Err(format!(
                "the order in patch list {} doesn't match {SET_ELEMENT_ORDER} list {}",
                Value::Array(patch.to_vec()),
                Value::Array(wanted.to_vec())
            ));
        }
    }
    Ok(())
}

/// Orders a merged list: the items named by `wanted` (or, without it, by the patch) in
/// that order, interleaved with the other items, which keep their relative order. A
/// server-only item goes before a named one only when both have a known position and
/// its position is earlier; known positions are the live list's, and with `wanted`
/// also the new items', which count as following the live ones.
fn order(merged: Merged, wanted: Option<&[Value]>, key: Option<&str>) -> Result<Vec<Value>, String> {
    let Merged { items, live, patched } = merged;
    let ids = items.iter().map(|item| identity(item, key).cloned()).collect::<Result<Vec<_>, _>>()?;
    let (named, known) = match wanted {
        Some(wanted) => (wanted.iter().map(|item| identity(item, key).cloned()).collect::<Result<Vec<_>, _>>()?, ids.len()),
        None => (patched, live),
    };
    let named: Vec<&Value> = named.iter().collect();
    let known: Vec<&Value> = ids[..known].iter().collect();

    let mut chosen = Vec::new();
    let mut others = VecDeque::new();
    for (item, id) in items.into_iter().zip(&ids) {
        match position(&named, id) {
            Some(rank) => chosen.push((rank, id, item)),
            None => others.push_back((id, item)),
        }
    }
    chosen.sort_by_key(|(rank, ..)| *rank);
    let mut chosen: VecDeque<_> = chosen.into_iter().map(|(_, id, item)| (id, item)).collect();

    let mut out = Vec::with_capacity(ids.len());
    loop {
        let take_other = match (others.front(), chosen.front()) {
            (Some((other, _)), Some((named, _))) => matches!((position(&known, other), position(&known, named)), (Some(a), Some(b)) if a < b),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_other { others.pop_front() } else { chosen.pop_front() };
        out.extend(next.map(|(_, item)| item));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::apply;
    use crate::api::schema::Types;
    use serde_json::{Value, json};
    use std::sync::OnceLock;

    fn types() -> &'static Types {
        static TYPES: OnceLock<Types> = OnceLock::new();
        TYPES.get_or_init(|| {
            let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
            g.subschema_for::<k8s_openapi::api::core::v1::Pod>();
            g.subschema_for::<k8s_openapi::api::apps::v1::Deployment>();
            g.subschema_for::<k8s_openapi::api::core::v1::Service>();
            Types::from_definitions(g.take_definitions(true))
        })
    }

    fn patch(kind: &str, original: &Value, p: Value) -> Result<Value, String> {
        apply(original, &p, types().root(kind))
    }

    fn deploy(original: &Value, p: Value) -> Value {
        patch("io.k8s.api.apps.v1.Deployment", original, p).expect("patch applies")
    }

    fn pod(original: &Value, p: Value) -> Value {
        patch("io.k8s.api.core.v1.Pod", original, p).expect("patch applies")
    }

    fn pod_err(original: &Value, p: Value) -> String {
        patch("io.k8s.api.core.v1.Pod", original, p).expect_err("patch is rejected")
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect()
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "frontend"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "app", "image": "nginx:1.25", "imagePullPolicy": "IfNotPresent",
                             "ports": [{"containerPort": 80, "protocol": "TCP"}],
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                            {"name": "sidecar", "image": "busybox:1.36", "args": ["sleep", "3600"]}
                        ],
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}],
                        "restartPolicy": "Always"
                    }
                }
            }
        })
    }

    fn containers(d: &Value) -> &Value {
        &d["spec"]["template"]["spec"]["containers"]
    }

    // kubectl apply (client-side) three-way patches

    #[test]
    fn apply_changes_the_image_of_one_container_and_keeps_the_rest() {
        let out = deploy(
            &deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{"name": "app", "image": "nginx:1.26"}]
            }}}}),
        );
        let c = containers(&out);
        assert_eq!(names(c), ["app", "sidecar"]);
        assert_eq!(c[0]["image"], "nginx:1.26");
        assert_eq!(c[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c[0]["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        assert_eq!(c[1], deployment()["spec"]["template"]["spec"]["containers"][1]);
        assert_eq!(out["spec"]["replicas"], 2);
    }

    #[test]
    fn apply_adds_an_env_var_where_set_element_order_puts_it() {
        let out = deploy(
            &deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{"name": "app",
                    "$setElementOrder/env": [{"name": "A"}, {"name": "C"}, {"name": "B"}],
                    "env": [{"name": "C", "value": "3"}]}]
            }}}}),
        );
        assert_eq!(containers(&out)[0]["env"], json!([{"name": "A", "value": "1"}, {"name": "C", "value": "3"}, {"name": "B", "value": "2"}]));
    }

    #[test]
    fn apply_removes_a_container_with_patch_delete() {
        let out = deploy(
            &deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}],
                "containers": [{"$patch": "delete", "name": "sidecar"}]
            }}}}),
        );
        assert_eq!(names(containers(&out)), ["app"]);
    }

    #[test]
    fn retain_keys_clears_the_other_strategy_member() {
        let out = deploy(&deployment(), json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        // The documented `kubectl patch` form, without the explicit null.
        let out = deploy(&deployment(), json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn retain_keys_keeps_and_merges_listed_keys() {
        let out = deploy(&deployment(), json!({"spec": {"strategy": {"$retainKeys": ["rollingUpdate", "type"], "rollingUpdate": {"maxSurge": 1}}}}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}}));
    }

    #[test]
    fn retain_keys_rejects_a_patched_field_it_does_not_list() {
        let err = patch(
            "io.k8s.api.apps.v1.Deployment",
            &deployment(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}}),
        );
        assert!(err.unwrap_err().contains("retainKeys"));
    }

    #[test]
    fn volume_source_switch_with_retain_keys_drops_the_old_source() {
        let original = json!({"spec": {"containers": [{"name": "a"}], "volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "conf", "configMap": {"name": "cm"}}
        ]}});
        let out = pod(
            &original,
            json!({"spec": {
                "$setElementOrder/volumes": [{"name": "data"}, {"name": "conf"}],
                "volumes": [{"name": "data", "$retainKeys": ["name", "secret"], "secret": {"secretName": "s"}, "emptyDir": null}]
            }}),
        );
        assert_eq!(out["spec"]["volumes"], json!([{"name": "data", "secret": {"secretName": "s"}}, {"name": "conf", "configMap": {"name": "cm"}}]));
    }

    #[test]
    fn set_element_order_reorders_containers_and_env_without_other_changes() {
        let out = deploy(
            &deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
                "containers": [{"name": "app", "$setElementOrder/env": [{"name": "B"}, {"name": "A"}]}]
            }}}}),
        );
        let c = containers(&out);
        assert_eq!(names(c), ["sidecar", "app"]);
        assert_eq!(names(&c[1]["env"]), ["B", "A"]);
    }

    #[test]
    fn set_element_order_places_a_new_container_at_the_end() {
        let out = deploy(
            &deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}, {"name": "metrics"}],
                "containers": [{"name": "metrics", "image": "prom/exporter"}]
            }}}}),
        );
        assert_eq!(names(containers(&out)), ["app", "sidecar", "metrics"]);
    }

    #[test]
    fn set_element_order_keeps_server_only_items_in_place() {
        // Upstream's "add map and delete map from merging list": live [1, 2, 4], the user's
        // config goes from [1, 2] to [2, 3]; 4 was added by someone else.
        let original = json!({"spec": {"containers": [{"name": "1"}, {"name": "2", "image": "b"}, {"name": "4", "image": "c"}]}});
        let out = pod(
            &original,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "2"}, {"name": "3"}],
                "containers": [{"name": "3"}, {"name": "1", "$patch": "delete"}]
            }}),
        );
        assert_eq!(names(&out["spec"]["containers"]), ["2", "4", "3"]);
    }

    #[test]
    fn set_element_order_that_contradicts_the_patch_list_is_rejected() {
        let original = json!({"spec": {"containers": [{"name": "1"}, {"name": "3"}, {"name": "2"}]}});
        let err = pod_err(
            &original,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "1"}, {"name": "2"}, {"name": "3"}],
                "containers": [{"name": "3", "image": "x"}, {"name": "1", "image": "y"}]
            }}),
        );
        assert!(err.contains("doesn't match"), "{err}");
    }

    #[test]
    fn set_element_order_may_name_items_missing_from_the_list() {
        let original = json!({"spec": {"containers": [{"name": "1"}, {"name": "3"}]}});
        let out = pod(
            &original,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "3"}, {"name": "2"}, {"name": "1"}],
                "containers": [{"name": "3", "image": "c"}, {"name": "1", "image": "a"}]
            }}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "3", "image": "c"}, {"name": "1", "image": "a"}]));
    }

    // kubectl patch / edit / rollout restart

    #[test]
    fn containers_merge_by_name_and_new_ones_go_first_without_set_element_order() {
        // As the Kubernetes docs show for `kubectl patch` (the redis container is listed first).
        let out = deploy(&deployment(), json!({"spec": {"template": {"spec": {"containers": [{"name": "redis", "image": "redis"}]}}}}));
        assert_eq!(names(containers(&out)), ["redis", "app", "sidecar"]);
        assert_eq!(containers(&out)[1]["image"], "nginx:1.25");
    }

    #[test]
    fn items_named_by_a_patch_take_the_patch_order() {
        // Upstream's "preserve the order from the patch in a merging list 2".
        let original = json!({"spec": {"containers": [{"name": "1"}, {"name": "2", "image": "b"}, {"name": "3"}]}});
        let out = pod(&original, json!({"spec": {"containers": [{"name": "3", "image": "c"}, {"name": "1", "image": "a"}]}}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "2", "image": "b"}, {"name": "3", "image": "c"}, {"name": "1", "image": "a"}]));
    }

    #[test]
    fn rollout_restart_adds_the_restarted_at_annotation() {
        let at = "2024-05-01T10:00:00Z";
        let out = deploy(&deployment(), json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}}}}));
        assert_eq!(out["spec"]["template"]["metadata"], json!({"labels": {"app": "web"}, "annotations": {"kubectl.kubernetes.io/restartedAt": at}}));
        let mut expected = deployment();
        expected["spec"]["template"]["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/restartedAt": at});
        assert_eq!(out, expected);
    }

    #[test]
    fn label_is_removed_by_null_and_others_kept() {
        let out = deploy(&deployment(), json!({"metadata": {"labels": {"tier": null, "team": "a"}}}));
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "team": "a"}));
    }

    #[test]
    fn null_for_an_absent_field_is_ignored() {
        let out = deploy(&deployment(), json!({"metadata": {"annotations": null, "labels": {"nope": null}}}));
        assert_eq!(out, deployment());
    }

    #[test]
    fn container_ports_merge_by_container_port() {
        let out = deploy(
            &deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "ports": [
                {"containerPort": 80, "name": "http"}, {"containerPort": 9090, "name": "metrics"}
            ]}]}}}}),
        );
        assert_eq!(containers(&out)[0]["ports"], json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 9090, "name": "metrics"}]));
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = json!({"spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
        ]}});
        let out = patch(
            "io.k8s.api.core.v1.Service",
            &svc,
            json!({"spec": {
                "$setElementOrder/ports": [{"port": 80}, {"port": 443}, {"port": 9000}],
                "ports": [{"port": 443, "targetPort": 9443}, {"port": 9000, "name": "admin"}]
            }}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 9443, "protocol": "TCP"},
                {"port": 9000, "name": "admin"}
            ])
        );
        let out = patch("io.k8s.api.core.v1.Service", &svc, json!({"spec": {"ports": [{"port": 80, "$patch": "delete"}]}})).unwrap();
        assert_eq!(names(&out["spec"]["ports"]), ["https"]);
    }

    #[test]
    fn tolerations_have_no_strategy_and_are_replaced_whole() {
        let out =
            deploy(&deployment(), json!({"spec": {"template": {"spec": {"tolerations": [{"key": "disktype", "value": "ssd", "effect": "NoSchedule"}]}}}}));
        assert_eq!(out["spec"]["template"]["spec"]["tolerations"], json!([{"key": "disktype", "value": "ssd", "effect": "NoSchedule"}]));
    }

    #[test]
    fn args_list_is_replaced_not_merged() {
        let out = deploy(&deployment(), json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "args": ["sleep", "10"]}]}}}}));
        assert_eq!(containers(&out)[1]["args"], json!(["sleep", "10"]));
    }

    // Lists of scalars with merge strategy

    #[test]
    fn finalizers_merge_as_a_set() {
        let original = json!({"metadata": {"name": "p", "finalizers": ["a", "b"]}});
        let out = pod(&original, json!({"metadata": {"finalizers": ["b", "c"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        // A new value alone goes first, as upstream orders it without $setElementOrder.
        let out = pod(&original, json!({"metadata": {"finalizers": ["c"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
        let out = pod(&original, json!({"metadata": {"$setElementOrder/finalizers": ["a", "b", "c"], "finalizers": ["c"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
    }

    #[test]
    fn finalizers_are_removed_with_delete_from_primitive_list() {
        let original = json!({"metadata": {"name": "p", "finalizers": ["a", "b", "c", "c", "d"]}});
        let out = pod(&original, json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["c", "x"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "d"]));
        // kubectl apply's form: order, deletions and additions together.
        let out = pod(
            &original,
            json!({"metadata": {
                "$setElementOrder/finalizers": ["a", "b", "e"],
                "$deleteFromPrimitiveList/finalizers": ["c"],
                "finalizers": ["e"]
            }}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "d", "e"]));
    }

    #[test]
    fn delete_from_primitive_list_of_an_absent_list_does_nothing() {
        let out = pod(&json!({"metadata": {"name": "p"}}), json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}));
        assert_eq!(out, json!({"metadata": {"name": "p"}}));
    }

    #[test]
    fn empty_patch_list_leaves_a_merging_list_alone() {
        let original = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [{"name": "a"}]}});
        let out = pod(&original, json!({"metadata": {"finalizers": []}, "spec": {"containers": []}}));
        assert_eq!(out, original);
    }

    // $patch directives

    #[test]
    fn patch_replace_in_a_list_replaces_the_whole_list() {
        let out = deploy(
            &deployment(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"$patch": "replace"}, {"name": "only", "image": "x"}
            ]}}}}),
        );
        assert_eq!(*containers(&out), json!([{"name": "only", "image": "x"}]));
        let out = deploy(&deployment(), json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}]}}}}));
        assert_eq!(*containers(&out), json!([]));
    }

    #[test]
    fn patch_replace_on_a_map_replaces_the_map() {
        let out = deploy(&deployment(), json!({"metadata": {"labels": {"$patch": "replace", "new": "1", "gone": null}}}));
        assert_eq!(out["metadata"]["labels"], json!({"new": "1"}));
        let out = deploy(&json!({"a": 1, "b": 2}), json!({"$patch": "replace", "c": 3}));
        assert_eq!(out, json!({"c": 3}));
    }

    #[test]
    fn patch_delete_on_a_map_empties_it_as_upstream_does() {
        let out = deploy(&deployment(), json!({"metadata": {"labels": {"$patch": "delete"}}}));
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(deploy(&deployment(), json!({"$patch": "delete"})), json!({}));
    }

    #[test]
    fn patch_merge_on_a_map_is_the_default() {
        let out = deploy(&deployment(), json!({"metadata": {"labels": {"$patch": "merge", "new": "1"}}}));
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "tier": "frontend", "new": "1"}));
    }

    #[test]
    fn patch_delete_removes_every_duplicate_entry() {
        let original = json!({"spec": {"containers": [{"name": "1"}, {"name": "1"}, {"name": "2", "image": "a"}, {"name": "3"}, {"name": "3"}]}});
        let out = pod(&original, json!({"spec": {"containers": [{"name": "1", "$patch": "delete"}, {"name": "3", "$patch": "delete"}]}}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "2", "image": "a"}]));
    }

    #[test]
    fn directives_never_leak_into_the_result() {
        let original = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        let out = pod(
            &original,
            json!({
                "metadata": {"labels": {"$patch": "merge", "x": "1", "y": null}, "$setElementOrder/finalizers": ["f"], "finalizers": ["f"]},
                "spec": {
                    "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                    "containers": [{"name": "b", "$setElementOrder/env": [{"name": "E"}],
                                    "env": [{"name": "E", "value": "1"}, {"name": "gone", "$patch": "delete"}]}],
                    "volumes": [{"name": "v", "$retainKeys": ["name", "emptyDir"], "emptyDir": {}}, {"name": "w", "$patch": "delete"}],
                    "securityContext": {"$patch": "replace", "runAsUser": 1000}
                }
            }),
        );
        assert_eq!(
            out,
            json!({
                "metadata": {"name": "p", "labels": {"x": "1"}, "finalizers": ["f"]},
                "spec": {
                    "containers": [{"name": "a"}, {"name": "b", "env": [{"name": "E", "value": "1"}]}],
                    "volumes": [{"name": "v", "emptyDir": {}}],
                    "securityContext": {"runAsUser": 1000}
                }
            })
        );
        assert!(!out.to_string().contains('$'));
    }

    // Free-form values and type changes

    #[test]
    fn a_map_replaces_a_scalar_and_a_scalar_replaces_a_map() {
        let original = json!({"spec": {"nodeSelector": {"a": "b"}, "hostname": "h"}, "extra": "s"});
        let out = pod(&original, json!({"spec": {"nodeSelector": "oops", "hostname": {"x": 1}}, "extra": ["l"]}));
        assert_eq!(out, json!({"spec": {"nodeSelector": "oops", "hostname": {"x": 1}}, "extra": ["l"]}));
    }

    #[test]
    fn unknown_fields_merge_maps_and_replace_lists() {
        let original = json!({"status": {"custom": {"a": 1, "list": [1, 2]}}, "unknown": {"k": {"v": 1}}});
        let out = pod(&original, json!({"status": {"custom": {"b": 2, "list": [3]}}, "unknown": {"k": {"w": 2}}}));
        assert_eq!(out, json!({"status": {"custom": {"a": 1, "b": 2, "list": [3]}}, "unknown": {"k": {"v": 1, "w": 2}}}));
    }

    // Errors

    #[test]
    fn a_patch_item_without_the_merge_key_is_an_error() {
        let err = pod_err(&json!({"spec": {"containers": [{"name": "a"}]}}), json!({"spec": {"containers": [{"image": "x"}]}}));
        assert!(err.contains("does not contain declared merge key: name"), "{err}");
        let err = pod_err(&json!({"spec": {}}), json!({"spec": {"containers": [{"$patch": "delete", "image": "x"}]}}));
        assert!(err.contains("does not contain declared merge key: name"), "{err}");
    }

    #[test]
    fn unknown_patch_directives_are_errors() {
        let err = pod_err(&json!({"metadata": {}}), json!({"metadata": {"labels": {"$patch": "foo"}}}));
        assert!(err.contains("unknown patch type: \"foo\""), "{err}");
        let err = pod_err(&json!({"spec": {"containers": [{"name": "a"}]}}), json!({"spec": {"containers": [{"name": "a", "$patch": "foo"}]}}));
        assert!(err.contains("unknown patch type"), "{err}");
        let err = pod_err(&json!({"spec": {"containers": [{"name": "a"}]}}), json!({"spec": {"containers": [{"$patch": "merge"}]}}));
        assert!(err.contains("merging lists cannot yet be specified"), "{err}");
        let err = pod_err(&json!({"spec": {}}), json!({"spec": {"$patch": 1}}));
        assert!(err.contains("unknown patch type"), "{err}");
    }

    #[test]
    fn malformed_directives_are_errors() {
        let original = json!({"metadata": {"finalizers": ["a"]}});
        for bad in [
            json!({"metadata": {"$setElementOrder": ["a"]}}),
            json!({"metadata": {"$setElementOrderfinalizers": ["a"]}}),
            json!({"metadata": {"$setElementOrder/finalizers": "a"}}),
            json!({"metadata": {"$deleteFromPrimitiveList": ["a"]}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": {"a": 1}}}),
            json!({"metadata": {"$retainKeys": "name"}}),
            json!({"metadata": {"$retainKeys": [1]}}),
            json!({"metadata": {"$setElementOrder/finalizers": ["a"], "finalizers": "a"}}),
            json!({"metadata": {"$deleteFromPrimitiveList/name": ["a"], "name": "x"}, "$deleteFromPrimitiveList/metadata": ["a"]}),
        ] {
            assert!(patch("io.k8s.api.core.v1.Pod", &original, bad.clone()).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn odd_list_contents_are_errors_not_panics() {
        let original = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [{"name": "a"}]}});
        for bad in [
            json!({"metadata": {"finalizers": [null]}}),
            json!({"metadata": {"finalizers": [["x"]]}}),
            json!({"metadata": {"finalizers": [1]}}),
            json!({"metadata": {"finalizers": [{"name": "x"}]}}),
            json!({"spec": {"containers": ["a"]}}),
            json!({"spec": {"containers": [null]}}),
            json!({"spec": {"containers": [{"name": "a"}, 3]}}),
        ] {
            assert!(patch("io.k8s.api.core.v1.Pod", &original, bad.clone()).is_err(), "accepted {bad}");
        }
        // A live list that is already broken is reported too.
        let broken = json!({"spec": {"containers": [{"image": "no-name"}]}});
        assert!(pod_err(&broken, json!({"spec": {"containers": [{"name": "a"}]}})).contains("merge key"));
    }

    #[test]
    fn non_object_documents_are_rejected() {
        assert!(patch("io.k8s.api.core.v1.Pod", &json!({}), json!([1])).is_err());
        assert!(patch("io.k8s.api.core.v1.Pod", &json!({}), json!(null)).is_err());
        assert!(patch("io.k8s.api.core.v1.Pod", &json!("x"), json!({})).is_err());
    }

    #[test]
    fn very_deep_patches_are_rejected_without_overflowing_the_stack() {
        // Deeper than serde_json would parse (128), as a document built in code could be.
        let mut deep = json!({"leaf": 1});
        for _ in 0..260 {
            deep = json!({"n": [deep]});
        }
        let err = pod_err(&json!({}), json!({"metadata": {"labels": {}}, "unknown": deep.clone()}));
        assert!(err.contains("nested"), "{err}");
        let err = pod_err(&json!({"unknown": deep.clone()}), json!({"unknown": deep}));
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn matching_merge_keys_compare_numbers_by_value() {
        let original = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}});
        let out = pod(&original, json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80.0, "name": "http"}]}]}}));
        let ports = out["spec"]["containers"][0]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!((&ports[0]["name"], &ports[0]["protocol"]), (&json!("http"), &json!("TCP")));
    }
}

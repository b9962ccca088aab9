//! Kubernetes' protobuf wire format, which kubectl (1.32 and later) uses to send
//! built-in objects. Bodies are decoded into the same JSON objects every other
//! request produces: field numbers come from `fields.txt` (generated from the
//! k8s-pb crate by `tools/protobuf-fields.py`), JSON names and shapes from the
//! OpenAPI schemas rk already has. Responses stay JSON, which such clients accept.

use super::schema::{Node, Types};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::LazyLock;

/// The 4-byte prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";
/// Guards against hostile nesting.
const MAX_DEPTH: usize = 64;

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Debug)]
enum Kind {
    Scalar(&'static str),
    Message(&'static str),
    Map { key: &'static str, value: &'static str, message: Option<&'static str> },
}

#[derive(Debug)]
struct Field {
    name: &'static str,
    repeated: bool,
    kind: Kind,
}

type Table = HashMap<&'static str, HashMap<u32, Field>>;

static TABLE: LazyLock<Table> = LazyLock::new(|| parse_table(include_str!("fields.txt")));

fn parse_table(text: &'static str) -> Table {
    let mut table = Table::new();
    let mut current: Option<&'static str> = None;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let words: Vec<&'static str> = line.split_whitespace().collect();
        if let ["M", name] = words.as_slice() {
            current = Some(name);
            table.entry(name).or_default();
            continue;
        }
        let (Some(message), [tag, name, rest @ ..]) = (current, words.as_slice()) else { continue };
        let Ok(tag) = tag.parse::<u32>() else { continue };
        let (repeated, rest) = match rest {
            ["repeated", rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        let kind = match rest {
            ["message", t] => Kind::Message(t),
            ["map", key, value] => Kind::Map { key, value, message: None },
            ["map", key, "message", t] => Kind::Map { key, value: "message", message: Some(t) },
            [scalar] => Kind::Scalar(scalar),
            _ => continue,
        };
        table.entry(message).or_default().insert(tag, Field { name, repeated, kind });
    }
    table
}

/// Decodes a protobuf request body into a JSON object of `schema` (e.g. `io.k8s.api.core.v1.ConfigMap`).
pub fn decode(body: &[u8], types: &Types, schema: &str) -> Result<Value, String> {
    let unknown = body.strip_prefix(MAGIC).ok_or("the protobuf body does not start with the Kubernetes magic number")?;
    let envelope = read_fields(unknown)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (tag, value) in envelope {
        match (tag, value) {
            (1, Wire::Bytes(type_meta)) => {
                for (t, v) in read_fields(type_meta)? {
                    if let Wire::Bytes(b) = v {
                        let s = String::from_utf8_lossy(b).into_owned();
                        match t {
                            1 => api_version = s,
                            2 => kind = s,
                            _ => {}
                        }
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut object = message(raw, schema, types.root(schema), 0)?;
    if let Value::Object(map) = &mut object {
        if !api_version.is_empty() {
            map.insert("apiVersion".into(), json!(api_version));
        }
        if !kind.is_empty() {
            map.insert("kind".into(), json!(kind));
        }
    }
    Ok(object)
}

/// One field's raw value as read from the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn read_fields(bytes: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let key = varint(bytes, &mut pos)?;
        let tag = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
            let end = pos.checked_add(n).filter(|e| *e <= bytes.len()).ok_or("truncated field")?;
            let s = &bytes[*pos..end];
            *pos = end;
            Ok(s)
        };
        let value = match key & 7 {
            0 => Wire::Varint(varint(bytes, &mut pos)?),
            1 => Wire::Fixed64(u64::from_le_bytes(take(&mut pos, 8)?.try_into().expect("8 bytes"))),
            2 => {
                let len = usize::try_from(varint(bytes, &mut pos)?).map_err(|_| "length out of range")?;
                Wire::Bytes(take(&mut pos, len)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes"))),
            other => return Err(format!("unsupported protobuf wire type {other}")),
        };
        out.push((tag, value));
    }
    Ok(out)
}

fn scalar(kind: &str, wire: Wire<'_>) -> Result<Value, String> {
    Ok(match (kind, wire) {
        ("string", Wire::Bytes(b)) => json!(String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8")?),
        ("bytes", Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        ("bool", Wire::Varint(v)) => json!(v != 0),
        ("int32", Wire::Varint(v)) => json!(v as i64 as i32),
        ("int64", Wire::Varint(v)) => json!(v as i64),
        ("uint32" | "uint64", Wire::Varint(v)) => json!(v),
        ("double", Wire::Fixed64(v)) => json!(f64::from_bits(v)),
        ("float", Wire::Fixed32(v)) => json!(f32::from_bits(v)),
        (kind, _) => return Err(format!("a {kind} field has the wrong wire type")),
    })
}

/// Repeated scalars may come packed in one length-delimited field.
fn scalars(kind: &str, wire: Wire<'_>) -> Result<Vec<Value>, String> {
    match (kind, wire) {
        ("string" | "bytes", w) => Ok(vec![scalar(kind, w)?]),
        (_, Wire::Bytes(packed)) => {
            let mut out = Vec::new();
            let mut pos = 0;
            while pos < packed.len() {
                out.push(scalar(kind, Wire::Varint(varint(packed, &mut pos)?))?);
            }
            Ok(out)
        }
        (_, w) => Ok(vec![scalar(kind, w)?]),
    }
}

/// Messages whose JSON form is not an object of their fields.
fn special(name: &str, fields: &[(u32, Wire<'_>)]) -> Result<Option<Value>, String> {
    let get = |tag: u32| fields.iter().rev().find(|(t, _)| *t == tag).map(|(_, w)| *w);
    Ok(Some(match name {
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time" | "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let seconds = match get(1) {
                Some(Wire::Varint(v)) => v as i64,
                _ => 0,
            };
            let nanos = match get(2) {
                Some(Wire::Varint(v)) => v as i64 as i32,
                _ => 0,
            };
            if seconds == 0 && nanos == 0 {
                // Go's zero time, which JSON leaves out.
                return Ok(Some(Value::Null));
            }
            let t = jiff::Timestamp::new(seconds, nanos).map_err(|e| format!("invalid time: {e}"))?;
            let format = if name.ends_with("MicroTime") { "%Y-%m-%dT%H:%M:%S.%6fZ" } else { "%Y-%m-%dT%H:%M:%SZ" };
            json!(t.strftime(format).to_string())
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => match get(1) {
            Some(w) => scalar("string", w)?,
            None => json!("0"),
        },
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => match (get(1), get(2), get(3)) {
            (Some(Wire::Varint(1)), _, Some(s)) => scalar("string", s)?,
            (_, Some(i), _) => scalar("int32", i)?,
            _ => json!(0),
        },
        "io.k8s.apimachinery.pkg.apis.meta.v1.Duration" => match get(1) {
            Some(Wire::Varint(ns)) => json!(crate::api::object::go_duration(ns as i64)),
            _ => json!("0s"),
        },
        "io.k8s.apimachinery.pkg.runtime.RawExtension" | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1" => match get(1) {
            Some(Wire::Bytes(raw)) => serde_json::from_slice(raw).map_err(|e| format!("embedded JSON: {e}"))?,
            _ => json!({}),
        },
        _ => return Ok(None),
    }))
}

/// Go writes fields of non-pointer types even when they hold the zero value,
/// which its JSON encoding leaves out (`omitempty`). Zero values are therefore
/// dropped unless the schema requires the field, or it is a replica count, where
/// an explicit 0 is meaningful and would otherwise be defaulted to 1.
fn is_set(value: &Value, json_name: &str, parent: Node<'_>) -> bool {
    let zero = match value {
        Value::Null => return false,
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    };
    !zero || json_name == "replicas" || parent.requires(json_name)
}

/// Lower-case without underscores: how a Rust field name and a JSON name compare (`pod_ip` ~ `podIP`).
fn normalized(s: &str) -> String {
    s.chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect()
}

fn message(bytes: &[u8], name: &str, node: Node<'_>, depth: usize) -> Result<Value, String> {
    let mut out = Map::new();
    decode_into(bytes, name, node, depth, &mut out)?.map_or(Ok(Value::Object(out)), Ok)
}

/// Decodes a message's fields into `out`; returns a value instead when the
/// message has a special JSON form.
fn decode_into(bytes: &[u8], name: &str, node: Node<'_>, depth: usize, out: &mut Map<String, Value>) -> Result<Option<Value>, String> {
    if depth > MAX_DEPTH {
        return Err("protobuf message nested too deeply".into());
    }
    let fields = read_fields(bytes)?;
    if let Some(v) = special(name, &fields)? {
        return Ok(Some(v));
    }
    let Some(table) = TABLE.get(name) else { return Err(format!("unknown protobuf message {name}")) };
    for (tag, wire) in fields {
        let Some(field) = table.get(&tag) else { continue };
        let wanted = normalized(field.name);
        let Some((json_name, child)) = node.find_field(|p| normalized(p) == wanted) else {
            // Go embeds some structs inline (`json:",inline"`): their fields belong to this object.
            if let (Kind::Message(inner), Wire::Bytes(b)) = (&field.kind, wire) {
                decode_into(b, inner, node, depth + 1, out)?;
            }
            continue;
        };
        let value = match (&field.kind, wire) {
            (Kind::Scalar(kind), w) if field.repeated => {
                let list = out.entry(json_name).or_insert_with(|| json!([]));
                if let Value::Array(a) = list {
                    a.extend(scalars(kind, w)?);
                }
                continue;
            }
            (Kind::Scalar(kind), w) => scalar(kind, w)?,
            (Kind::Message(inner), Wire::Bytes(b)) => {
                let item_node = if field.repeated { child.items() } else { child };
                let v = message(b, inner, item_node, depth + 1)?;
                if field.repeated {
                    if let Value::Array(a) = out.entry(json_name).or_insert_with(|| json!([])) {
                        a.push(v);
                    }
                    continue;
                }
                v
            }
            (Kind::Map { key, value, message: inner }, Wire::Bytes(b)) => {
                let (mut k, mut v) = (Value::Null, Value::Null);
                for (t, w) in read_fields(b)? {
                    match (t, inner) {
                        (1, _) => k = scalar(key, w)?,
                        (2, Some(inner)) => {
                            if let Wire::Bytes(mb) = w {
                                v = message(mb, inner, child.field(""), depth + 1)?;
                            }
                        }
                        (2, None) => v = scalar(value, w)?,
                        _ => {}
                    }
                }
                if v.is_null() {
                    v = if *value == "string" { json!("") } else { Value::Null };
                }
                let key = match k {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if let Value::Object(m) = out.entry(json_name).or_insert_with(|| json!({})) {
                    m.insert(key, v);
                }
                continue;
            }
            _ => return Err(format!("field {json_name} of {name} has the wrong wire type")),
        };
        if !is_set(&value, json_name, node) {
            continue;
        }
        out.insert(json_name.to_owned(), value);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(tag: u32, wire: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((tag << 3) | u32::from(wire)) as u8];
        if wire == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
        out
    }

    fn string(tag: u32, s: &str) -> Vec<u8> {
        field(tag, 2, s.as_bytes())
    }

    fn types() -> Types {
        let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
        g.subschema_for::<k8s_openapi::api::core::v1::ConfigMap>();
        g.subschema_for::<k8s_openapi::api::apps::v1::Deployment>();
        Types::from_definitions(g.take_definitions(true))
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [string(1, api_version), string(2, kind)].concat();
        let mut body = MAGIC.to_vec();
        body.extend(field(1, 2, &type_meta));
        body.extend(field(2, 2, raw));
        body
    }

    #[test]
    fn a_configmap_from_kubectl_create_decodes_to_its_json_form() {
        // metadata{name: "lit", namespace: ""}, data{"a": "b"}
        let meta = [string(1, "lit"), string(3, "")].concat();
        let entry = [string(1, "a"), string(2, "b")].concat();
        let raw = [field(1, 2, &meta), field(2, 2, &entry)].concat();
        let body = envelope("v1", "ConfigMap", &raw);
        let obj = decode(&body, &types(), "io.k8s.api.core.v1.ConfigMap").unwrap();
        assert_eq!(obj, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "lit"}, "data": {"a": "b"}}));
    }

    #[test]
    fn inline_structs_int_or_string_and_numbers_land_where_json_has_them() {
        // Deployment{spec{replicas: 2, strategy{rollingUpdate{maxSurge: "50%"}}, template{spec{containers[{name, image}]}}}}
        let max_surge = [field(1, 0, &[1]), string(3, "50%")].concat();
        let rolling = field(2, 2, &max_surge);
        let strategy = [string(1, "RollingUpdate"), field(2, 2, &rolling)].concat();
        let container = [string(1, "web"), string(2, "nginx")].concat();
        let pod_spec = field(2, 2, &container);
        let template = field(2, 2, &pod_spec);
        let spec = [field(1, 0, &[2]), field(3, 2, &template), field(4, 2, &strategy)].concat();
        let raw = field(2, 2, &spec);
        let obj = decode(&envelope("apps/v1", "Deployment", &raw), &types(), "io.k8s.api.apps.v1.Deployment").unwrap();
        assert_eq!(obj["spec"]["replicas"], 2);
        assert_eq!(obj["spec"]["strategy"], json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%"}}));
        assert_eq!(obj["spec"]["template"]["spec"]["containers"], json!([{"name": "web", "image": "nginx"}]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let t = types();
        assert!(decode(b"not protobuf", &t, "io.k8s.api.core.v1.ConfigMap").is_err());
        let mut body = MAGIC.to_vec();
        body.extend([0x12, 0xff, 0xff]);
        assert!(decode(&body, &t, "io.k8s.api.core.v1.ConfigMap").is_err());
        for len in 0..40 {
            let raw: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let _ = decode(&envelope("v1", "ConfigMap", &raw), &t, "io.k8s.api.core.v1.ConfigMap");
        }
    }
}

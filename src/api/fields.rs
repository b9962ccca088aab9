//! Field ownership (`metadata.managedFields`) and server-side apply, with the
//! semantics of Kubernetes' structured-merge-diff:
//!
//! - every write records which manager set which fields, as a tree of path
//!   elements (`fieldsV1`);
//! - a non-apply write (create, update, patch) gives its manager the fields it
//!   changed and takes them from everyone else;
//! - an apply merges the user's configuration into the live object per the
//!   schema, fails on fields another manager owns with a different value (unless
//!   forced), and removes what the applier set last time but no longer does and
//!   nobody else claims.

use crate::api::schema::{ListType, Node};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A struct field or map key (`f:name`).
    Field(String),
    /// An item of a map-list, by its key fields: names with their values as JSON,
    /// sorted by name (`k:{"name":"nginx"}`).
    Key(Vec<(String, String)>),
    /// An item of a set-list, by its value as compact JSON (`v:"a"`).
    Value(String),
    /// An item of a list, by position (`i:0`).
    Index(usize),
}

impl PathElement {
    /// Parses a `fieldsV1` key. Keys of an unknown kind yield `None`; upstream skips them
    /// so that fields written by a newer version survive.
    fn parse(s: &str) -> Result<Option<Self>, String> {
        let Some((kind, rest)) = s.split_once(':') else { return Ok(None) };
        let bad = |e: &dyn fmt::Display| format!("invalid path element {s:?}: {e}");
        Ok(Some(match kind {
            "f" => PathElement::Field(rest.to_owned()),
            "k" => match serde_json::from_str::<Value>(rest).map_err(|e| bad(&e))? {
                Value::Object(m) => key_element(m.iter().map(|(k, v)| (k.as_str(), v))),
                _ => return Err(bad(&"a key must be a JSON object")),
            },
            "v" => PathElement::Value(to_json(&serde_json::from_str(rest).map_err(|e| bad(&e))?)),
            "i" => PathElement::Index(rest.parse().map_err(|e| bad(&e))?),
            _ => return Ok(None),
        }))
    }

    /// The `fieldsV1` key of this element.
    fn serialize(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields.iter().map(|(n, v)| format!("{}:{v}", to_json(&json!(n)))).collect();
                format!("k:{{{}}}", parts.join(","))
            }
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }
}

/// Renders paths as upstream does in conflicts: `.spec.containers[name="nginx"].image`.
impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={v}")).collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

fn to_json(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn key_element<'v>(fields: impl Iterator<Item = (&'v str, &'v Value)>) -> PathElement {
    let mut fields: Vec<(String, String)> = fields.map(|(n, v)| (n.to_owned(), to_json(v))).collect();
    fields.sort();
    PathElement::Key(fields)
}

fn path_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// A set of field paths: the `fieldsV1` tree. A path is in the set when its last
/// element is a member of the node its prefix leads to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    /// Subtrees; never empty.
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    /// Reads a `fieldsV1` tree: keys `f:<field>`, `k:<json of key fields>`, `v:<json value>`,
    /// `i:<index>`, and `.` marking a node that is itself a member. A node with no
    /// (understood) children is a member.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let obj = v.as_object().ok_or("fieldsV1 must be a JSON object")?;
        let mut set = FieldSet::default();
        for (key, child) in obj {
            if key == "." {
                continue;
            }
            let Some(pe) = PathElement::parse(key)? else { continue };
            let sub = FieldSet::from_fields_v1(child).map_err(|e| format!("{key}: {e}"))?;
            if sub.is_empty() || child.get(".").is_some() {
                set.members.insert(pe.clone());
            }
            if !sub.is_empty() {
                set.children.insert(pe, sub);
            }
        }
        Ok(set)
    }

    /// The `fieldsV1` tree: leaves are `{}`, and a node that is both a member and a
    /// parent carries `".": {}`.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.emit(false))
    }

    fn emit(&self, is_member: bool) -> Map<String, Value> {
        let mut out = Map::new();
        for pe in self.members.iter().filter(|pe| !self.children.contains_key(*pe)) {
            out.insert(pe.serialize(), json!({}));
        }
        for (pe, child) in &self.children {
            out.insert(pe.serialize(), Value::Object(child.emit(self.members.contains(pe))));
        }
        if is_member && !out.is_empty() {
            out.insert(".".to_owned(), json!({}));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [pe] => {
                self.members.insert(pe.clone());
            }
            [pe, rest @ ..] => self.children.entry(pe.clone()).or_default().insert(rest),
        }
    }

    pub fn contains(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [pe] => self.members.contains(pe),
            [pe, rest @ ..] => self.children.get(pe).is_some_and(|c| c.contains(rest)),
        }
    }

    pub fn union_with(&mut self, other: &FieldSet) {
        self.members.extend(other.members.iter().cloned());
        for (pe, child) in &other.children {
            self.children.entry(pe.clone()).or_default().union_with(child);
        }
    }

    /// Removes every path of `other` (paths under a removed member stay, as upstream).
    pub fn subtract(&mut self, other: &FieldSet) {
        self.members.retain(|pe| !other.members.contains(pe));
        self.children.retain(|pe, child| {
            if let Some(o) = other.children.get(pe) {
                child.subtract(o);
            }
            !child.is_empty()
        });
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.intersection(&other.members).cloned().collect();
        let children =
            (self.children.iter()).filter_map(|(pe, c)| Some((pe.clone(), c.intersection(other.children.get(pe)?)))).filter(|(_, c)| !c.is_empty()).collect();
        FieldSet { members, children }
    }

    /// Every path in the set, in order, each before the paths below it.
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
        let elements: BTreeSet<&PathElement> = self.members.iter().chain(self.children.keys()).collect();
        for pe in elements {
            prefix.push(pe.clone());
            if self.members.contains(pe) {
                out.push(prefix.clone());
            }
            if let Some(child) = self.children.get(pe) {
                child.collect_paths(prefix, out);
            }
            prefix.pop();
        }
    }

    /// Keeps only the top-level fields `keep` accepts.
    fn retain_top(&mut self, keep: impl Fn(&PathElement) -> bool) {
        self.members.retain(&keep);
        self.children.retain(|pe, _| keep(pe));
    }
}

/// Who is writing: the field manager, the API version it wrote in, the subresource
/// (`""` or `"status"`), and the time of the write (RFC 3339).
#[derive(Clone, Copy, Debug)]
pub struct Manager<'a> {
    pub name: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub time: &'a str,
}

impl Manager<'_> {
    fn name(&self) -> &str {
        if self.name.is_empty() { "unknown" } else { self.name }
    }
}

/// A field another manager owns with a value the apply would change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    /// Like `.spec.replicas` or `.spec.template.spec.containers[name="nginx"].image`.
    pub path: String,
}

impl Conflict {
    /// How upstream names a manager in messages.
    fn manager_label(&self) -> String {
        let mut s = to_json(&json!(self.manager));
        if !self.subresource.is_empty() {
            s += &format!(" with subresource {}", to_json(&json!(self.subresource)));
        }
        if self.operation == UPDATE {
            s += &format!(" using {}", self.api_version);
        }
        s
    }
}

/// Upstream's message, e.g. `Apply failed with 1 conflict: conflict with
/// "kubectl-client-side-apply" using apps/v1: .spec.replicas`; several conflicts are
/// grouped by manager.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", c.manager_label(), c.path);
    }
    let mut by_manager: BTreeMap<String, (String, Vec<&str>)> = BTreeMap::new();
    for c in conflicts {
        let id = identity(&c.manager, &c.operation, &c.api_version, &c.subresource);
        by_manager.entry(id).or_insert_with(|| (c.manager_label(), Vec::new())).1.push(&c.path);
    }
    let mut lines = Vec::new();
    for (label, paths) in by_manager.values() {
        lines.push(format!("conflicts with {label}:"));
        lines.extend(paths.iter().map(|p| format!("- {p}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

/// Fields no write ever owns: identity and server-maintained metadata.
const UNOWNED_TOP: &[&str] = &["apiVersion", "kind"];
const UNOWNED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "selfLink",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "clusterName",
];

/// Fields a typed Kubernetes object always has once their parent exists: structs
/// embedded by value and required lists (Go serializes those even when empty or
/// nil). Upstream never sees them added, so never makes them members (no `"."`).
/// The schema can't tell these from optional fields, so the common ones are named.
const ALWAYS_PRESENT: &[&str] =
    &["metadata", "spec", "status", "template", "strategy", "updateStrategy", "resources", "jobTemplate", "containers", "rules", "endpoints"];

/// One managedFields entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: String,
    time: Option<String>,
    set: FieldSet,
}

/// The key upstream keeps entries under: one entry per manager, operation,
/// subresource, and (for updates only) API version.
fn identity(manager: &str, operation: &str, api_version: &str, subresource: &str) -> String {
    let mut id = format!("{{\"manager\":{},\"operation\":{}", to_json(&json!(manager)), to_json(&json!(operation)));
    if operation != APPLY && !api_version.is_empty() {
        id += &format!(",\"apiVersion\":{}", to_json(&json!(api_version)));
    }
    if !subresource.is_empty() {
        id += &format!(",\"subresource\":{}", to_json(&json!(subresource)));
    }
    id + "}"
}

impl Entry {
    fn new(manager: &Manager, operation: &str, time: String, set: FieldSet) -> Entry {
        Entry {
            manager: manager.name().to_owned(),
            operation: operation.to_owned(),
            api_version: manager.api_version.to_owned(),
            subresource: manager.subresource.to_owned(),
            time: Some(time),
            set,
        }
    }

    fn id(&self) -> String {
        identity(&self.manager, &self.operation, &self.api_version, &self.subresource)
    }

    fn decode(v: &Value) -> Result<Entry, String> {
        let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        let operation = text("operation");
        if operation != APPLY && operation != UPDATE {
            return Err("operation must be `Apply` or `Update`".into());
        }
        let api_version = text("apiVersion");
        if api_version.is_empty() {
            return Err("apiVersion must not be empty".into());
        }
        if text("fieldsType") != "FieldsV1" {
            return Err(format!("invalid fieldsType {:?}", text("fieldsType")));
        }
        let set = match v.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::default(),
            Some(f) => FieldSet::from_fields_v1(f)?,
        };
        let time = v.get("time").and_then(Value::as_str).map(str::to_owned);
        Ok(Entry { manager: text("manager"), operation, api_version, subresource: text("subresource"), time, set })
    }

    fn encode(&self) -> Value {
        let mut e = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.set.to_fields_v1(),
        });
        if let Some(time) = &self.time {
            e["time"] = json!(time);
        }
        if !self.subresource.is_empty() {
            e["subresource"] = json!(self.subresource);
        }
        e
    }
}

fn managed_fields(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?.get("managedFields").filter(|v| !v.is_null())
}

fn take_managed_fields(obj: &mut Value) -> Option<Value> {
    obj.get_mut("metadata")?.as_object_mut()?.remove("managedFields").filter(|v| !v.is_null())
}

/// Decodes managedFields; a later entry with the same identity replaces an earlier one.
/// Unless `strict`, unreadable entries are skipped rather than failing the whole list.
fn decode_entries(v: Option<&Value>, strict: bool) -> Result<Vec<Entry>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let list = v.as_array().ok_or("managedFields must be a list")?;
    let mut entries: Vec<Entry> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let entry = match Entry::decode(item) {
            Ok(entry) => entry,
            Err(e) if strict => return Err(format!("managedFields[{i}]: {e}")),
            Err(_) => continue,
        };
        let id = entry.id();
        entries.retain(|e| e.id() != id);
        entries.push(entry);
    }
    Ok(entries)
}

/// Writes entries into `metadata.managedFields`, dropping empty ones, in upstream's
/// order: `Apply` before `Update`, then oldest first, then by manager, API version
/// and subresource. No entries leave no `managedFields`.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by_cached_key(|e| {
        let secs = e.time.as_deref().and_then(unix_seconds).unwrap_or(0);
        (e.operation.clone(), secs, e.manager.clone(), e.api_version.clone(), e.subresource.clone())
    });
    let Some(root) = obj.as_object_mut() else { return };
    if entries.is_empty() {
        if let Some(Value::Object(metadata)) = root.get_mut("metadata") {
            metadata.remove("managedFields");
        }
        return;
    }
    let metadata = root.entry("metadata").or_insert_with(|| json!({}));
    if let Some(metadata) = metadata.as_object_mut() {
        metadata.insert("managedFields".into(), entries.iter().map(Entry::encode).collect());
    }
}

/// Seconds since the epoch of an RFC 3339 time, for ordering entries.
fn unix_seconds(t: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let zone = t.get(19..)?.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (z.get(1..3)?.parse::<i64>().ok()? * 3600 + z.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// The fields no write owns.
fn unowned() -> FieldSet {
    let field = |name: &str| PathElement::Field(name.to_owned());
    let mut set = FieldSet::default();
    for name in UNOWNED_TOP {
        set.insert(&[field(name)]);
    }
    for name in UNOWNED_METADATA {
        set.insert(&[field("metadata"), field(name)]);
    }
    set
}

/// Drops what no write owns (the `metadata` struct itself included).
fn strip_unowned(set: &mut FieldSet) {
    set.subtract(&unowned());
    let metadata = PathElement::Field("metadata".into());
    set.members.remove(&metadata);
    if let Some(md) = set.children.get_mut(&metadata) {
        md.children.retain(|pe, _| !matches!(pe, PathElement::Field(f) if UNOWNED_METADATA.contains(&f.as_str())));
        if md.is_empty() {
            set.children.remove(&metadata);
        }
    }
}

/// Restricts a set to what a write through `subresource` may own: only `status` for
/// the status subresource, everything but `status` otherwise.
fn restrict_to_subresource(set: &mut FieldSet, subresource: &str) {
    let is_status = |pe: &PathElement| matches!(pe, PathElement::Field(f) if f == "status");
    if subresource == "status" { set.retain_top(is_status) } else { set.retain_top(|pe| !is_status(pe)) }
}

/// The path element of a list item.
fn item_element(item: &Value, list_type: &ListType, index: usize) -> PathElement {
    match list_type {
        ListType::Set => PathElement::Value(to_json(item)),
        ListType::Map(keys) => {
            let Some(obj) = item.as_object() else { return PathElement::Index(index) };
            let tcp = json!("TCP");
            // Upstream fills a missing key from the schema's default; the one that
            // matters in the core API is a port's protocol.
            let fields: Vec<(&str, &Value)> = (keys.iter())
                .filter_map(|k| match obj.get(k) {
                    Some(v) if !v.is_null() => Some((k.as_str(), v)),
                    _ => (k == "protocol").then_some((k.as_str(), &tcp)),
                })
                .collect();
            if fields.is_empty() { PathElement::Index(index) } else { key_element(fields.into_iter()) }
        }
        ListType::Atomic => PathElement::Index(index),
    }
}

/// The items of a granular list with their path elements, first occurrence of each.
fn index_items<'v>(items: &'v [Value], list_type: &ListType) -> (Vec<(PathElement, &'v Value)>, BTreeMap<PathElement, &'v Value>) {
    let mut order = Vec::new();
    let mut by_element = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let pe = item_element(item, list_type, i);
        if !by_element.contains_key(&pe) {
            by_element.insert(pe.clone(), item);
            order.push((pe, item));
        }
    }
    (order, by_element)
}

/// The list type of a list node that merges item by item, or `None` for atomic ones.
fn granular_list(node: &Node) -> Option<ListType> {
    Some(node.list_type()).filter(|t| *t != ListType::Atomic)
}

/// The fields an applied configuration sets: its leaves (scalars, atomic lists and
/// structs, nulls), map-list and set items; not the struct fields leading to them,
/// and nothing for an empty struct.
pub fn fields_of(config: &Value, node: Node) -> FieldSet {
    let mut set = FieldSet::default();
    collect_fields(config, node, &mut Vec::new(), &mut set);
    set
}

fn collect_fields(value: &Value, node: Node, path: &mut Vec<PathElement>, set: &mut FieldSet) {
    match value {
        Value::Object(map) if !node.is_atomic_struct() => {
            for (key, child) in map {
                let child_node = node.field(key);
                path.push(PathElement::Field(key.clone()));
                match child {
                    Value::Object(_) if !child_node.is_atomic_struct() => collect_fields(child, child_node, path, set),
                    Value::Array(_) if granular_list(&child_node).is_some() => collect_fields(child, child_node, path, set),
                    _ => set.insert(path),
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            let Some(list_type) = granular_list(&node) else { return };
            let item_node = node.items();
            for (i, item) in items.iter().enumerate() {
                path.push(item_element(item, &list_type, i));
                set.insert(path);
                if item.is_object() {
                    collect_fields(item, item_node, path, set);
                }
                path.pop();
            }
        }
        _ => {}
    }
}

/// The difference between two versions of an object, as field sets.
#[derive(Default)]
struct Comparison {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

impl Comparison {
    fn of(old: &Value, new: &Value, node: Node, subresource: &str) -> Comparison {
        let mut cmp = Comparison::default();
        compare(Some(old), Some(new), node, &mut Vec::new(), &mut cmp);
        for set in [&mut cmp.added, &mut cmp.modified, &mut cmp.removed] {
            restrict_to_subresource(set, subresource);
        }
        cmp
    }

    fn changed(&self) -> FieldSet {
        let mut changed = self.added.clone();
        changed.union_with(&self.modified);
        changed
    }
}

/// Walks two versions of a value. Leaves (scalars, atomic lists and structs, empty
/// containers) are added, removed or modified; a container that appears or
/// disappears is itself added or removed, which makes it a member of the updater's
/// set. Nulls count as absent.
fn compare(old: Option<&Value>, new: Option<&Value>, node: Node, path: &mut Vec<PathElement>, out: &mut Comparison) {
    let old = old.filter(|v| !v.is_null());
    let new = new.filter(|v| !v.is_null());
    let sides = || old.into_iter().chain(new);
    if old.is_none() && new.is_none() {
        return;
    }
    let non_empty = |v: &Value| v.as_object().is_some_and(|m| !m.is_empty()) || v.as_array().is_some_and(|a| !a.is_empty());
    let granular_map = sides().all(Value::is_object) && sides().any(non_empty) && !node.is_atomic_struct();
    let list_type = if sides().all(Value::is_array) && sides().any(non_empty) { granular_list(&node) } else { None };

    if granular_map {
        let (empty, no_fields, no_items) = (Map::new(), json!({}), json!([]));
        let old_map = old.and_then(Value::as_object);
        let new_map = new.and_then(Value::as_object).unwrap_or(&empty);
        for (key, old_child) in old_map.unwrap_or(&empty) {
            path.push(PathElement::Field(key.clone()));
            compare(Some(old_child), new_map.get(key), node.field(key), path, out);
            path.pop();
        }
        for (key, new_child) in new_map.iter().filter(|(k, _)| !old_map.is_some_and(|m| m.contains_key(*k))) {
            let zero = match new_child {
                _ if old_map.is_none() || !ALWAYS_PRESENT.contains(&key.as_str()) => None,
                Value::Object(_) => Some(&no_fields),
                Value::Array(_) => Some(&no_items),
                _ => None,
            };
            path.push(PathElement::Field(key.clone()));
            compare(zero, Some(new_child), node.field(key), path, out);
            path.pop();
        }
    } else if let Some(list_type) = list_type {
        fn as_items(v: Option<&Value>) -> &[Value] {
            v.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
        }
        let (old_order, old_items) = index_items(as_items(old), &list_type);
        let (new_order, new_items) = index_items(as_items(new), &list_type);
        let item_node = node.items();
        for (pe, item) in &old_order {
            path.push(pe.clone());
            compare(Some(item), new_items.get(pe).copied(), item_node, path, out);
            path.pop();
        }
        for (pe, item) in new_order.iter().filter(|(pe, _)| !old_items.contains_key(pe)) {
            path.push(pe.clone());
            compare(None, Some(item), item_node, path, out);
            path.pop();
        }
    } else {
        match (old, new) {
            (None, Some(_)) => out.added.insert(path),
            (Some(_), None) => out.removed.insert(path),
            (Some(a), Some(b)) if a != b => out.modified.insert(path),
            _ => {}
        }
        return;
    }
    if old.is_none() {
        out.added.insert(path);
    } else if new.is_none() {
        out.removed.insert(path);
    }
}

/// A copy of `v` without null-valued fields (a null in an applied configuration
/// means "unset").
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Merges an applied configuration into the live value: granular structs and maps
/// field by field, granular lists item by item, everything else replaced.
fn merge(live: &Value, config: &Value, node: Node) -> Value {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if !node.is_atomic_struct() => {
            let mut out = Map::new();
            for (key, lv) in l {
                let merged = match c.get(key) {
                    None => lv.clone(),
                    Some(Value::Null) => continue,
                    Some(cv) => merge(lv, cv, node.field(key)),
                };
                out.insert(key.clone(), merged);
            }
            for (key, cv) in c.iter().filter(|(k, v)| !l.contains_key(*k) && !v.is_null()) {
                out.insert(key.clone(), without_nulls(cv));
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => match granular_list(&node) {
            Some(list_type) => Value::Array(merge_list(l, c, &list_type, node.items())),
            None => without_nulls(config),
        },
        _ => without_nulls(config),
    }
}

/// Merges list items by identity. Live items the configuration doesn't mention keep
/// their place; the configuration's items come in its order, so new ones land after
/// the item they follow there.
fn merge_list(live: &[Value], config: &[Value], list_type: &ListType, item_node: Node) -> Vec<Value> {
    let (l, l_items) = index_items(live, list_type);
    let (c, c_items) = index_items(config, list_type);
    let mut shared = c.iter().map(|(pe, _)| pe).filter(|pe| l_items.contains_key(*pe));
    let mut next_shared = shared.next();
    let (mut li, mut ci) = (0, 0);
    let mut out = Vec::with_capacity(l.len().max(c.len()));
    while li < l.len() || ci < c.len() {
        if li < l.len() && ci < c.len() {
            let pe = &l[li].0;
            if *pe == c[ci].0 {
                out.push(merge(l[li].1, c[ci].1, item_node));
                (li, ci) = (li + 1, ci + 1);
                next_shared = shared.next();
                continue;
            }
            if c_items.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                // Shared, but the configuration places it later: emitted there.
                li += 1;
                continue;
            }
        }
        if li < l.len() && !c_items.contains_key(&l[li].0) {
            out.push(l[li].1.clone());
            li += 1;
        } else if ci < c.len() {
            let (pe, cv) = &c[ci];
            out.push(match l_items.get(pe) {
                Some(lv) => merge(lv, cv, item_node),
                None => without_nulls(cv),
            });
            ci += 1;
            if next_shared == Some(pe) {
                next_shared = shared.next();
            }
        } else {
            // A live item the configuration already placed.
            li += 1;
        }
    }
    out
}

/// Removes from `value` what the applier owned last time (`last`) unless some
/// manager, the applier's new configuration included, owns it now (`owned`). A struct
/// field or map key counts as owned when anything below it is; a list item only
/// when the item itself is. Containers emptied this way go too.
fn prune(value: &mut Value, node: Node, last: &FieldSet, owned: &FieldSet) {
    let nobody = FieldSet::default();
    match value {
        Value::Object(map) if !node.is_atomic_struct() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let pe = PathElement::Field(key.clone());
                let in_last = last.members.contains(&pe) || last.children.contains_key(&pe);
                let kept = owned.members.contains(&pe) || owned.children.contains_key(&pe);
                if in_last && !kept {
                    map.remove(&key);
                } else if let (Some(sub_last), Some(child)) = (last.children.get(&pe), map.get_mut(&key)) {
                    let was_empty = is_empty_container(child);
                    prune(child, node.field(&key), sub_last, owned.children.get(&pe).unwrap_or(&nobody));
                    if !was_empty && is_empty_container(child) {
                        map.remove(&key);
                    }
                }
            }
        }
        Value::Array(items) => {
            let Some(list_type) = granular_list(&node) else { return };
            let item_node = node.items();
            for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                let pe = item_element(&item, &list_type, i);
                if last.members.contains(&pe) && !owned.members.contains(&pe) {
                    continue;
                }
                if let Some(sub_last) = last.children.get(&pe) {
                    prune(&mut item, item_node, sub_last, owned.children.get(&pe).unwrap_or(&nobody));
                }
                items.push(item);
            }
        }
        _ => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
}

/// Whether managedFields sent in a write ask to clear them: an empty list, or one
/// empty entry (`[{}]`).
fn is_reset(requested: Option<&Value>) -> bool {
    match requested.and_then(Value::as_array).map(Vec::as_slice) {
        Some([]) => true,
        Some([only]) => only.as_object().is_some_and(|o| o.values().all(|v| v.is_null() || v == "")),
        _ => false,
    }
}

/// After a non-apply write (create, update, patch) whose result is `new`: the
/// manager's `Update` entry gains the fields this write added or changed (on create,
/// every field of the new object), every other manager loses them, and fields the
/// write removed leave every owner. Empty entries are dropped, and only the writer's
/// entry gets a new time, only when the write changed something. The result goes to
/// `new.metadata.managedFields`.
///
/// managedFields sent in `new` are honoured as upstream does: through the main
/// resource, an empty list or `[{}]` clears all ownership (the writer then owns just
/// what this write changed), and any other valid, non-empty list replaces the live
/// entries. Invalid or absent ones (clients that drop the field) keep the live
/// entries. Writes through a subresource always keep the live entries.
pub fn track_update(old: Option<&Value>, new: &mut Value, manager: &Manager, node: Node) {
    let requested = take_managed_fields(new);
    let live_entries = || decode_entries(old.and_then(managed_fields), true).unwrap_or_default();
    let mut entries = if !manager.subresource.is_empty() {
        live_entries()
    } else if is_reset(requested.as_ref()) {
        Vec::new()
    } else {
        match decode_entries(requested.as_ref(), true) {
            Ok(entries) if !entries.is_empty() => entries,
            _ => live_entries(),
        }
    };

    let mut old = old.cloned().unwrap_or_else(|| json!({}));
    take_managed_fields(&mut old);
    let cmp = Comparison::of(&old, new, node, manager.subresource);
    let changed = cmp.changed();
    for entry in &mut entries {
        entry.set.subtract(&changed);
        entry.set.subtract(&cmp.removed);
    }

    let mut mine = changed;
    strip_unowned(&mut mine);
    if !mine.is_empty() {
        let id = identity(manager.name(), UPDATE, manager.api_version, manager.subresource);
        match entries.iter_mut().find(|e| e.id() == id) {
            Some(entry) => {
                entry.set.union_with(&mine);
                entry.time = Some(manager.time.to_owned());
            }
            None => entries.push(Entry::new(manager, UPDATE, manager.time.to_owned(), mine)),
        }
    }
    write_entries(new, entries);
}

/// The part of an applied configuration a write through `subresource` may change:
/// only `status` through the status subresource, everything but `status` otherwise
/// (upstream merges more and lets the resource's strategy reset the rest).
fn applicable_config(applied: &Value, subresource: &str) -> Value {
    let mut config = match applied {
        Value::Object(_) => applied.clone(),
        _ => json!({}),
    };
    take_managed_fields(&mut config);
    if let Some(obj) = config.as_object_mut() {
        if subresource == "status" {
            obj.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "status"));
        } else {
            obj.remove("status");
        }
    }
    config
}

/// Server-side apply of `applied` (the user's configuration) onto `live` (`None` to
/// create). Returns the merged object with its managedFields, or the conflicts:
/// fields the configuration would change that other managers own. With `force` those
/// fields move to the applier instead.
///
/// The applier's `Apply` entry becomes exactly the configuration's fields. What that
/// entry held before but the configuration no longer sets is removed from the object
/// unless another manager owns it. The entry's time changes only when the object did.
/// Unreadable live managedFields entries are skipped.
pub fn apply(live: Option<&Value>, applied: &Value, manager: &Manager, force: bool, node: Node) -> Result<Value, Vec<Conflict>> {
    let config = applicable_config(applied, manager.subresource);
    let mut live = live.cloned().unwrap_or_else(|| json!({}));
    let mut entries = decode_entries(take_managed_fields(&mut live).as_ref(), false).unwrap_or_default();

    let mut set = fields_of(&config, node);
    restrict_to_subresource(&mut set, manager.subresource);
    let id = identity(manager.name(), APPLY, "", manager.subresource);
    let previous = entries.iter().position(|e| e.id() == id).map(|i| entries.remove(i));

    let mut merged = merge(&live, &config, node);
    if let Some(previous) = &previous {
        // What nobody owns but the object must keep (its identity and server-set
        // metadata) counts as owned too.
        let mut owned = unowned();
        owned.union_with(&set);
        for entry in &entries {
            owned.union_with(&entry.set);
        }
        prune(&mut merged, node, &previous.set, &owned);
    }
    strip_unowned(&mut set);

    let cmp = Comparison::of(&live, &merged, node, manager.subresource);
    let changed = cmp.changed();
    let mut conflicts = Vec::new();
    for entry in &entries {
        for path in entry.set.intersection(&changed).paths() {
            conflicts.push((entry.id(), path, entry));
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        return Err(conflicts
            .into_iter()
            .map(|(_, path, e)| Conflict {
                manager: e.manager.clone(),
                operation: e.operation.clone(),
                api_version: e.api_version.clone(),
                subresource: e.subresource.clone(),
                path: path_string(&path),
            })
            .collect());
    }
    for entry in &mut entries {
        entry.set.subtract(&changed);
        entry.set.subtract(&cmp.removed);
    }

    let time = match previous.and_then(|p| p.time) {
        Some(t) if merged == live => t,
        _ => manager.time.to_owned(),
    };
    entries.push(Entry::new(manager, APPLY, time, set));
    write_entries(&mut merged, entries);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::super::schema::Types;
    use super::*;
    use std::sync::OnceLock;

    const T1: &str = "2024-05-01T10:00:00Z";
    const T2: &str = "2024-05-01T11:00:00Z";
    const T3: &str = "2024-05-01T12:00:00Z";

    fn types() -> &'static Types {
        static TYPES: OnceLock<Types> = OnceLock::new();
        TYPES.get_or_init(|| {
            let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
            g.subschema_for::<k8s_openapi::api::apps::v1::Deployment>();
            g.subschema_for::<k8s_openapi::api::core::v1::ConfigMap>();
            Types::from_definitions(g.take_definitions(true))
        })
    }

    fn deploy() -> Node<'static> {
        types().root("io.k8s.api.apps.v1.Deployment")
    }

    fn config_map() -> Node<'static> {
        types().root("io.k8s.api.core.v1.ConfigMap")
    }

    fn manager<'a>(name: &'a str, time: &'a str) -> Manager<'a> {
        Manager { name, api_version: "apps/v1", subresource: "", time }
    }

    /// What `kubectl apply --server-side` sends for a small nginx Deployment.
    fn nginx(replicas: i64, labels: Value, containers: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "default", "labels": labels },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": { "containers": containers },
                },
            },
        })
    }

    fn nginx_container(image: &str) -> Value {
        json!({ "name": "nginx", "image": image })
    }

    fn apply_ok(live: Option<&Value>, applied: &Value, m: &Manager, force: bool) -> Value {
        apply(live, applied, m, force, deploy()).unwrap_or_else(|c| panic!("{}", conflict_message(&c)))
    }

    fn entries(obj: &Value) -> Vec<Value> {
        obj["metadata"]["managedFields"].as_array().cloned().unwrap_or_default()
    }

    fn entry(obj: &Value, name: &str, operation: &str) -> Value {
        let found = entries(obj).into_iter().find(|e| e["manager"] == name && e["operation"] == operation);
        found.unwrap_or_else(|| panic!("no {operation} entry for {name} in {:#}", obj["metadata"]["managedFields"]))
    }

    fn owns(obj: &Value, name: &str, operation: &str, path: &[&str]) -> bool {
        let mut fields = &entry(obj, name, operation)["fieldsV1"];
        for p in path {
            fields = &fields[*p];
        }
        !fields.is_null()
    }

    fn container_names(obj: &Value) -> Vec<String> {
        let containers = obj["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
        containers.iter().map(|c| c["name"].as_str().unwrap_or_default().to_owned()).collect()
    }

    #[test]
    fn create_via_apply_yields_one_apply_entry_with_real_cluster_fields() {
        let containers = json!([{ "name": "nginx", "image": "nginx:1.25", "ports": [{ "containerPort": 80 }] }]);
        let obj = apply_ok(None, &nginx(3, json!({ "app": "web" }), containers), &manager("kubectl", T1), false);

        assert_eq!(
            obj["metadata"]["managedFields"],
            json!([{
                "manager": "kubectl",
                "operation": "Apply",
                "apiVersion": "apps/v1",
                "time": T1,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": { "f:labels": { "f:app": {} } },
                    "f:spec": {
                        "f:replicas": {},
                        "f:selector": {},
                        "f:template": {
                            "f:metadata": { "f:labels": { "f:app": {} } },
                            "f:spec": { "f:containers": { "k:{\"name\":\"nginx\"}": {
                                ".": {},
                                "f:image": {},
                                "f:name": {},
                                "f:ports": { "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": { ".": {}, "f:containerPort": {} } },
                            } } },
                        },
                    },
                },
            }])
        );
        assert_eq!(obj["spec"]["replicas"], 3);
        assert_eq!(obj["metadata"]["name"], "web");
    }

    #[test]
    fn create_via_update_owns_every_field_with_real_cluster_markers() {
        // Roughly what `kubectl create deployment` stores after defaulting.
        let mut obj = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "default", "uid": "u1", "creationTimestamp": T1, "generation": 1, "labels": { "app": "web" } },
            "spec": {
                "replicas": 1,
                "progressDeadlineSeconds": 600,
                "selector": { "matchLabels": { "app": "web" } },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": {
                        "containers": [{ "name": "nginx", "image": "nginx", "imagePullPolicy": "Always", "resources": {}, "terminationMessagePath": "/dev/termination-log" }],
                        "dnsPolicy": "ClusterFirst",
                    },
                },
            },
            "status": {},
        });
        track_update(None, &mut obj, &manager("kubectl-create", T1), deploy());

        let e = entry(&obj, "kubectl-create", "Update");
        assert_eq!(e["time"], T1);
        assert_eq!(
            e["fieldsV1"],
            json!({
                "f:metadata": { "f:labels": { ".": {}, "f:app": {} } },
                "f:spec": {
                    "f:progressDeadlineSeconds": {},
                    "f:replicas": {},
                    "f:selector": {},
                    "f:strategy": { "f:rollingUpdate": { ".": {}, "f:maxSurge": {}, "f:maxUnavailable": {} }, "f:type": {} },
                    "f:template": {
                        "f:metadata": { "f:labels": { ".": {}, "f:app": {} } },
                        "f:spec": {
                            "f:containers": { "k:{\"name\":\"nginx\"}": {
                                ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {}, "f:terminationMessagePath": {},
                            } },
                            "f:dnsPolicy": {},
                        },
                    },
                },
            })
        );
    }

    #[test]
    fn reapply_without_a_label_removes_it() {
        let m = manager("kubectl", T1);
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web", "tier": "front" }), json!([nginx_container("nginx")])), &m, false);
        let v2 = apply_ok(Some(&v1), &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("kubectl", T2), false);

        assert_eq!(v2["metadata"]["labels"], json!({ "app": "web" }));
        assert!(!owns(&v2, "kubectl", "Apply", &["f:metadata", "f:labels", "f:tier"]));
        assert_eq!(entry(&v2, "kubectl", "Apply")["time"], T2);
    }

    #[test]
    fn reapply_dropping_every_label_removes_the_emptied_map() {
        let v1 = apply_ok(None, &nginx(3, json!({ "tier": "front" }), json!([nginx_container("nginx")])), &manager("a", T1), false);
        let mut config = nginx(3, json!({}), json!([nginx_container("nginx")]));
        config["metadata"].as_object_mut().unwrap().remove("labels");
        let v2 = apply_ok(Some(&v1), &config, &manager("a", T2), false);
        assert!(v2["metadata"].get("labels").is_none(), "{:#}", v2["metadata"]);
        assert_eq!(v2["metadata"]["name"], "web");
    }

    #[test]
    fn label_owned_by_an_updater_survives_reapply_without_it() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web", "tier": "front" }), json!([nginx_container("nginx")])), &manager("a", T1), false);
        let mut v2 = v1.clone();
        v2["metadata"]["labels"]["tier"] = json!("back");
        track_update(Some(&v1), &mut v2, &manager("kubectl-label", T2), deploy());
        let v3 = apply_ok(Some(&v2), &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("a", T3), false);
        assert_eq!(v3["metadata"]["labels"], json!({ "app": "web", "tier": "back" }));
    }

    #[test]
    fn two_appliers_with_equal_values_share_the_field_without_conflict() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("a", T1), false);
        let partial = json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" }, "spec": { "replicas": 3 } });
        let v2 = apply_ok(Some(&v1), &partial, &manager("b", T2), false);

        assert!(owns(&v2, "a", "Apply", &["f:spec", "f:replicas"]));
        assert!(owns(&v2, "b", "Apply", &["f:spec", "f:replicas"]));
        // Nothing changed, so b's new entry is stamped but a's keeps its time.
        assert_eq!(entry(&v2, "a", "Apply")["time"], T1);
    }

    #[test]
    fn a_different_value_conflicts_and_force_takes_ownership() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("a", T1), false);
        let partial = json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" }, "spec": { "replicas": 5 } });

        let conflicts = apply(Some(&v1), &partial, &manager("b", T2), false, deploy()).unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!((conflicts[0].manager.as_str(), conflicts[0].operation.as_str()), ("a", "Apply"));
        assert_eq!(conflicts[0].path, ".spec.replicas");
        assert_eq!(conflict_message(&conflicts), "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas");

        let v2 = apply_ok(Some(&v1), &partial, &manager("b", T2), true);
        assert_eq!(v2["spec"]["replicas"], 5);
        assert!(owns(&v2, "b", "Apply", &["f:spec", "f:replicas"]));
        assert!(!owns(&v2, "a", "Apply", &["f:spec", "f:replicas"]));
        assert!(owns(&v2, "a", "Apply", &["f:spec", "f:selector"]));
    }

    #[test]
    fn conflicting_container_field_is_named_by_its_key() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx:1")])), &manager("a", T1), false);
        let v2 = apply(Some(&v1), &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx:2")])), &manager("b", T2), false, deploy());
        let conflicts = v2.unwrap_err();
        assert_eq!(conflicts.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(), [".spec.template.spec.containers[name=\"nginx\"].image"]);
    }

    #[test]
    fn scale_moves_replicas_to_the_updater_and_a_later_apply_conflicts() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("kubectl-client-side-apply", T1), false);
        let mut v2 = v1.clone();
        v2["spec"]["replicas"] = json!(5);
        track_update(Some(&v1), &mut v2, &manager("kubectl", T2), deploy());

        assert!(!owns(&v2, "kubectl-client-side-apply", "Apply", &["f:spec", "f:replicas"]));
        assert_eq!(entry(&v2, "kubectl", "Update")["fieldsV1"], json!({ "f:spec": { "f:replicas": {} } }));
        assert_eq!(entry(&v2, "kubectl", "Update")["time"], T2);
        assert_eq!(entry(&v2, "kubectl-client-side-apply", "Apply")["time"], T1);

        let again = nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")]));
        let conflicts = apply(Some(&v2), &again, &manager("kubectl-client-side-apply", T3), false, deploy()).unwrap_err();
        assert_eq!(conflict_message(&conflicts), "Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas");

        // Applying the live value instead shares it without conflict.
        let v3 = apply_ok(Some(&v2), &nginx(5, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("kubectl-client-side-apply", T3), false);
        assert!(owns(&v3, "kubectl", "Update", &["f:spec", "f:replicas"]));
        assert!(owns(&v3, "kubectl-client-side-apply", "Apply", &["f:spec", "f:replicas"]));
    }

    #[test]
    fn removing_a_container_from_the_config_removes_it_from_the_object() {
        let both = json!([nginx_container("nginx"), { "name": "sidecar", "image": "busybox" }]);
        let v1 = apply_ok(None, &nginx(1, json!({ "app": "web" }), both), &manager("a", T1), false);
        assert_eq!(container_names(&v1), ["nginx", "sidecar"]);
        let v2 = apply_ok(Some(&v1), &nginx(1, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("a", T2), false);
        assert_eq!(container_names(&v2), ["nginx"]);
        assert!(!owns(&v2, "a", "Apply", &["f:spec", "f:template", "f:spec", "f:containers", "k:{\"name\":\"sidecar\"}"]));
    }

    #[test]
    fn map_list_items_owned_by_others_survive() {
        let v1 = apply_ok(None, &nginx(1, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("a", T1), false);
        // Another applier adds a sidecar to the same list.
        let sidecar = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" },
            "spec": { "template": { "spec": { "containers": [{ "name": "sidecar", "image": "busybox" }] } } },
        });
        let v2 = apply_ok(Some(&v1), &sidecar, &manager("b", T2), false);
        assert_eq!(container_names(&v2), ["nginx", "sidecar"]);
        // An updater adds one more.
        let mut v3 = v2.clone();
        v3["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap().push(json!({ "name": "debug", "image": "alpine" }));
        track_update(Some(&v2), &mut v3, &manager("kubectl-edit", T2), deploy());
        assert!(owns(&v3, "kubectl-edit", "Update", &["f:spec", "f:template", "f:spec", "f:containers", "k:{\"name\":\"debug\"}", "."]));

        // a re-applies with a new image: the others' containers stay.
        let v4 = apply_ok(Some(&v3), &nginx(1, json!({ "app": "web" }), json!([nginx_container("nginx:2")])), &manager("a", T3), false);
        assert_eq!(container_names(&v4), ["nginx", "sidecar", "debug"]);
        assert_eq!(v4["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");

        // a drops its container: only its own goes.
        let none = nginx(1, json!({ "app": "web" }), json!([]));
        let v5 = apply_ok(Some(&v4), &none, &manager("a", T3), false);
        assert_eq!(container_names(&v5), ["sidecar", "debug"]);
    }

    #[test]
    fn reapplying_the_same_container_with_a_defaulted_port_protocol_keeps_one_item() {
        let with_port = json!([{ "name": "nginx", "image": "nginx", "ports": [{ "containerPort": 80 }] }]);
        let mut v1 = apply_ok(None, &nginx(1, json!({ "app": "web" }), with_port.clone()), &manager("a", T1), false);
        // The server defaults the protocol.
        v1["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
        let v2 = apply_ok(Some(&v1), &nginx(1, json!({ "app": "web" }), with_port), &manager("a", T2), false);
        assert_eq!(v2["spec"]["template"]["spec"]["containers"][0]["ports"], json!([{ "containerPort": 80, "protocol": "TCP" }]));
        assert_eq!(entry(&v2, "a", "Apply")["time"], T1, "a no-op apply keeps the entry's time");
    }

    #[test]
    fn update_removing_a_field_drops_it_from_every_owner() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web", "tier": "front" }), json!([nginx_container("nginx")])), &manager("a", T1), false);
        let mut v2 = v1.clone();
        v2["metadata"]["labels"].as_object_mut().unwrap().remove("tier");
        track_update(Some(&v1), &mut v2, &manager("kubectl-edit", T2), deploy());
        assert!(!owns(&v2, "a", "Apply", &["f:metadata", "f:labels", "f:tier"]));
        assert!(owns(&v2, "a", "Apply", &["f:metadata", "f:labels", "f:app"]));
        // The edit changed nothing it could own, so it gets no entry.
        assert_eq!(entries(&v2).len(), 1);
    }

    #[test]
    fn status_subresource_updates_track_only_status() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("a", T1), false);
        let mut v2 = v1.clone();
        v2["status"] = json!({ "replicas": 3, "conditions": [{ "type": "Available", "status": "True" }] });
        v2["metadata"]["resourceVersion"] = json!("7");
        let m = Manager { name: "deployment-controller", api_version: "apps/v1", subresource: "status", time: T2 };
        track_update(Some(&v1), &mut v2, &m, deploy());
        let e = entry(&v2, "deployment-controller", "Update");
        assert_eq!(e["subresource"], "status");
        assert_eq!(
            e["fieldsV1"],
            json!({ "f:status": { "f:conditions": { ".": {}, "k:{\"type\":\"Available\"}": { ".": {}, "f:status": {}, "f:type": {} } }, "f:replicas": {} } })
        );

        // A main-resource write owns nothing under status.
        let mut v3 = v2.clone();
        v3["status"]["replicas"] = json!(4);
        v3["spec"]["paused"] = json!(true);
        track_update(Some(&v2), &mut v3, &manager("kubectl-edit", T3), deploy());
        assert_eq!(entry(&v3, "kubectl-edit", "Update")["fieldsV1"], json!({ "f:spec": { "f:paused": {} } }));
        assert!(owns(&v3, "deployment-controller", "Update", &["f:status", "f:replicas"]));
    }

    #[test]
    fn apply_through_the_status_subresource_changes_and_owns_only_status() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("a", T1), false);
        let m = Manager { name: "ctl", api_version: "apps/v1", subresource: "status", time: T2 };
        let mut config = nginx(9, json!({ "app": "web" }), json!([]));
        config["status"] = json!({ "replicas": 3 });
        let v2 = apply(Some(&v1), &config, &m, false, deploy()).unwrap();
        assert_eq!(v2["spec"]["replicas"], 3);
        assert_eq!(v2["status"]["replicas"], 3);
        let e = entry(&v2, "ctl", "Apply");
        assert_eq!((e["subresource"].as_str(), &e["fieldsV1"]), (Some("status"), &json!({ "f:status": { "f:replicas": {} } })));
    }

    #[test]
    fn set_lists_are_owned_per_value_and_merged_as_a_union() {
        let cm = |finalizers: Value| json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c", "finalizers": finalizers } });
        let m = |name| Manager { name, api_version: "v1", subresource: "", time: T1 };
        let v1 = apply(None, &cm(json!(["a.io/x"])), &m("one"), false, config_map()).unwrap();
        let v2 = apply(Some(&v1), &cm(json!(["b.io/y"])), &m("two"), false, config_map()).unwrap();
        assert_eq!(v2["metadata"]["finalizers"], json!(["a.io/x", "b.io/y"]));
        assert_eq!(entry(&v2, "two", "Apply")["fieldsV1"], json!({ "f:metadata": { "f:finalizers": { "v:\"b.io/y\"": {} } } }));
        let mut without = cm(json!(null));
        without["metadata"].as_object_mut().unwrap().remove("finalizers");
        let v3 = apply(Some(&v2), &without, &m("one"), false, config_map()).unwrap();
        assert_eq!(v3["metadata"]["finalizers"], json!(["b.io/y"]));
    }

    #[test]
    fn configmap_data_edited_by_an_updater_changes_hands() {
        let cm = |v: &str| json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c" }, "data": { "k": v, "other": "x" } });
        let m = |name, time| Manager { name, api_version: "v1", subresource: "", time };
        let v1 = apply(None, &cm("1"), &m("kubectl", T1), false, config_map()).unwrap();
        let mut v2 = v1.clone();
        v2["data"]["k"] = json!("2");
        track_update(Some(&v1), &mut v2, &m("kube-controller-manager", T2), config_map());
        assert_eq!(entry(&v2, "kube-controller-manager", "Update")["fieldsV1"], json!({ "f:data": { "f:k": {} } }));
        assert_eq!(entry(&v2, "kubectl", "Apply")["fieldsV1"], json!({ "f:data": { "f:other": {} } }));
    }

    #[test]
    fn several_conflicts_are_grouped_by_manager() {
        let c = |manager: &str, operation: &str, path: &str| Conflict {
            manager: manager.into(),
            operation: operation.into(),
            api_version: "apps/v1".into(),
            subresource: String::new(),
            path: path.into(),
        };
        let conflicts = [c("b", "Update", ".spec.replicas"), c("a", "Apply", ".spec.paused"), c("b", "Update", ".spec.minReadySeconds")];
        assert_eq!(
            conflict_message(&conflicts),
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.paused\nconflicts with \"b\" using apps/v1:\n- .spec.replicas\n- .spec.minReadySeconds"
        );
        let mut status = c("ctl", "Update", ".status.replicas");
        status.subresource = "status".into();
        assert_eq!(
            conflict_message(&[status]),
            "Apply failed with 1 conflict: conflict with \"ctl\" with subresource \"status\" using apps/v1: .status.replicas"
        );
    }

    #[test]
    fn entries_are_ordered_apply_first_then_oldest() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("zeta", T2), false);
        let mut v2 = v1.clone();
        v2["spec"]["paused"] = json!(true);
        track_update(Some(&v1), &mut v2, &manager("late", T3), deploy());
        let mut v3 = v2.clone();
        v3["spec"]["minReadySeconds"] = json!(5);
        track_update(Some(&v2), &mut v3, &manager("early", T1), deploy());
        let order: Vec<_> = entries(&v3).iter().map(|e| e["manager"].as_str().unwrap().to_owned()).collect();
        assert_eq!(order, ["zeta", "early", "late"]);
    }

    #[test]
    fn an_update_that_changes_nothing_keeps_the_time() {
        let mut v1 = nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")]));
        track_update(None, &mut v1, &manager("kubectl", T1), deploy());
        let mut v2 = v1.clone();
        track_update(Some(&v1), &mut v2, &manager("kubectl", T2), deploy());
        assert_eq!(v1, v2);
    }

    #[test]
    fn an_update_may_reset_or_replace_managed_fields() {
        let v1 = apply_ok(None, &nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx")])), &manager("a", T1), false);

        let mut cleared = v1.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        track_update(Some(&v1), &mut cleared, &manager("kubectl", T2), deploy());
        assert!(cleared["metadata"].get("managedFields").is_none());

        let mut cleared_with_change = v1.clone();
        cleared_with_change["metadata"]["managedFields"] = json!([]);
        cleared_with_change["spec"]["paused"] = json!(true);
        track_update(Some(&v1), &mut cleared_with_change, &manager("kubectl", T2), deploy());
        assert_eq!(entries(&cleared_with_change).len(), 1);
        assert_eq!(entry(&cleared_with_change, "kubectl", "Update")["fieldsV1"], json!({ "f:spec": { "f:paused": {} } }));

        let replacement = json!([{ "manager": "someone", "operation": "Update", "apiVersion": "apps/v1", "time": T1, "fieldsType": "FieldsV1", "fieldsV1": { "f:spec": { "f:replicas": {} } } }]);
        let mut replaced = v1.clone();
        replaced["metadata"]["managedFields"] = replacement.clone();
        track_update(Some(&v1), &mut replaced, &manager("kubectl", T2), deploy());
        assert_eq!(replaced["metadata"]["managedFields"], replacement);

        // Unreadable ones are ignored in favour of the live entries.
        let mut garbage = v1.clone();
        garbage["metadata"]["managedFields"] = json!([{ "manager": "x", "operation": "Delete" }]);
        track_update(Some(&v1), &mut garbage, &manager("kubectl", T2), deploy());
        assert_eq!(garbage["metadata"]["managedFields"], v1["metadata"]["managedFields"]);
    }

    #[test]
    fn odd_input_does_not_panic() {
        let m = manager("a", T1);
        let mut live = nginx(3, json!({ "app": "web" }), json!([nginx_container("nginx"), "not-an-object", { "image": "nameless" }]));
        for managed in
            [json!("nope"), json!([1, {}, { "operation": "Apply", "apiVersion": "v", "fieldsType": "FieldsV1", "fieldsV1": "bad" }]), json!({ "a": 1 })]
        {
            live["metadata"]["managedFields"] = managed;
            let applied = nginx(3, json!({ "app": 7 }), json!({ "wrong": "type" }));
            let _ = apply(Some(&live), &applied, &m, false, deploy());
            let _ = apply(Some(&live), &json!("not an object"), &m, true, deploy());
            let mut new = live.clone();
            new["spec"] = json!([1, 2]);
            track_update(Some(&live), &mut new, &m, deploy());
            let mut scalar = json!(42);
            track_update(Some(&live), &mut scalar, &m, deploy());
        }
        assert!(FieldSet::from_fields_v1(&json!({ "f:a": 1 })).is_err());
        assert!(FieldSet::from_fields_v1(&json!({ "k:[1]": {} })).is_err());
        assert!(FieldSet::from_fields_v1(&json!({ "i:x": {} })).is_err());
        assert_eq!(unix_seconds("garbage"), None);
        assert_eq!(unix_seconds("1970-01-02T00:00:01+01:00"), Some(86_401 - 3600));
    }

    #[test]
    fn fields_v1_round_trips() {
        let v = json!({
            "f:metadata": { "f:labels": { ".": {}, "f:app": {} }, "f:finalizers": { "v:\"a.io/x\"": {}, "v:3": {} } },
            "f:spec": {
                "f:containers": { "k:{\"name\":\"nginx\"}": { ".": {}, "f:image": {}, "f:ports": { "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": { ".": {}, "f:containerPort": {} } } } },
                "f:args": { "i:0": {}, "i:10": {} },
            },
        });
        let set = FieldSet::from_fields_v1(&v).unwrap();
        assert_eq!(set.to_fields_v1(), v);
        assert!(set.contains(&[PathElement::Field("metadata".into()), PathElement::Field("labels".into())]));
        assert!(!set.contains(&[PathElement::Field("spec".into())]));

        // Keys are canonicalized, unknown element kinds skipped.
        let loose = json!({ "f:spec": { "k:{ \"protocol\": \"TCP\", \"containerPort\": 80 }": {}, "x:future": {} } });
        assert_eq!(FieldSet::from_fields_v1(&loose).unwrap().to_fields_v1(), json!({ "f:spec": { "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {} } }));
        assert_eq!(FieldSet::from_fields_v1(&json!({})).unwrap(), FieldSet::default());
    }

    #[test]
    fn merged_lists_follow_the_configs_order_for_its_items() {
        let list_type = ListType::Map(vec!["name".into()]);
        let item = |n: &str| json!({ "name": n });
        let merged = merge_list(&[item("a"), item("b")], &[item("c"), item("a")], &list_type, deploy().field("x"));
        assert_eq!(merged, [item("c"), item("a"), item("b")]);
        let merged = merge_list(&[item("a"), item("b")], &[item("b"), item("a")], &list_type, deploy().field("x"));
        assert_eq!(merged, [item("b"), item("a")]);
        let merged = merge_list(&[item("a"), item("b"), item("c")], &[item("c"), item("a")], &list_type, deploy().field("x"));
        assert_eq!(merged, [item("b"), item("c"), item("a")]);
    }
}

//! OpenAPI v3 documents, generated from the served kinds' types: the index at
//! `/openapi/v3` and one document per group-version. kubectl uses them to validate
//! (a `fieldValidation` parameter on PATCH tells it the server validates), to find
//! list merge keys for `apply`, and for `kubectl explain`.

use super::registry::{Registry, Resource};
use super::schema::Types;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const REF_PREFIX: &str = "#/components/schemas/";

/// The documents, rendered once at start-up.
pub struct OpenApi {
    /// Group-version path (`api/v1`, `apis/apps/v1`) → (hash, JSON bytes).
    documents: BTreeMap<String, (String, bytes::Bytes)>,
}

impl OpenApi {
    pub fn new(registry: &Registry, types: &Types) -> Self {
        let mut documents = BTreeMap::new();
        for (group, version) in registry.group_versions() {
            let path = if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") };
            let doc = document(registry, types, group, version);
            let bytes = serde_json::to_vec(&doc).expect("documents serialize");
            let digest = ring::digest::digest(&ring::digest::SHA512, &bytes);
            let hash: String = digest.as_ref().iter().take(32).map(|b| format!("{b:02X}")).collect();
            documents.insert(path, (hash, bytes::Bytes::from(bytes)));
        }
        Self { documents }
    }

    /// `/openapi/v3`: where each group-version's document is.
    pub fn index(&self) -> Value {
        let paths: Map<String, Value> = self
            .documents
            .iter()
            .map(|(path, (hash, _))| (path.clone(), json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}") })))
            .collect();
        json!({ "paths": paths })
    }

    /// One group-version's document and its hash.
    pub fn document(&self, path: &str) -> Option<(&str, &bytes::Bytes)> {
        self.documents.get(path).map(|(h, b)| (h.as_str(), b))
    }
}

fn gvk(r: &Resource) -> Value {
    json!([{ "group": r.group, "version": r.version, "kind": r.kind }])
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("{REF_PREFIX}{name}") })
}

fn query_param(name: &str, description: &str, kind: &str) -> Value {
    json!({ "name": name, "in": "query", "description": description, "schema": { "type": kind, "uniqueItems": true } })
}

fn json_response(schema: &str) -> Value {
    json!({
        "description": "OK",
        "content": {
            "application/json": { "schema": schema_ref(schema) },
            "application/yaml": { "schema": schema_ref(schema) },
        },
    })
}

/// The operations of one resource, in upstream's shape.
fn paths_of(r: &Resource, schema: &str, list_schema: &str) -> Vec<(String, Value)> {
    let prefix = if r.group.is_empty() { format!("/api/{}", r.version) } else { format!("/apis/{}/{}", r.group, r.version) };
    let scope = if r.namespaced { "/namespaces/{namespace}" } else { "" };
    let collection = format!("{prefix}{scope}/{}", r.plural);
    let item = format!("{collection}/{{name}}");
    let op_id = |verb: &str| format!("{verb}{}", r.kind);
    let write_params = || {
        vec![
            query_param("dryRun", "When present, indicates that modifications should not be persisted.", "string"),
            query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes.", "string"),
            query_param(
                "fieldValidation",
                "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default) and Strict.",
                "string",
            ),
        ]
    };
    let body = |types: &[&str]| {
        let content: Map<String, Value> = types.iter().map(|t| ((*t).to_owned(), json!({ "schema": schema_ref(schema) }))).collect();
        json!({ "content": content, "required": true })
    };
    let op = |verb: &str, action: &str, params: Vec<Value>, response: &str| {
        json!({
            "operationId": op_id(verb),
            "parameters": params,
            "responses": { "200": json_response(response), "401": { "description": "Unauthorized" } },
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(r)[0],
        })
    };
    let mut path_params = vec![json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "uniqueItems": true } })];
    if r.namespaced {
        path_params.push(json!({ "name": "namespace", "in": "path", "required": true, "schema": { "type": "string", "uniqueItems": true } }));
    }
    let mut create = op("create", "post", write_params(), schema);
    create["requestBody"] = body(&["application/json", "application/yaml"]);
    let mut update = op("replace", "put", write_params(), schema);
    update["requestBody"] = body(&["application/json", "application/yaml"]);
    let mut patch_params = write_params();
    patch_params.push(query_param("force", "Force is going to \"force\" Apply requests.", "boolean"));
    let mut patch = op("patch", "patch", patch_params, schema);
    patch["requestBody"] = json!({
        "content": {
            "application/apply-patch+yaml": { "schema": { "type": "object" } },
            "application/json-patch+json": { "schema": { "type": "object" } },
            "application/merge-patch+json": { "schema": { "type": "object" } },
            "application/strategic-merge-patch+json": { "schema": { "type": "object" } },
        },
        "required": true,
    });
    let list_params = vec![
        query_param("labelSelector", "A selector to restrict the list of returned objects by their labels.", "string"),
        query_param("fieldSelector", "A selector to restrict the list of returned objects by their fields.", "string"),
        query_param("limit", "limit is a maximum number of responses to return for a list call.", "integer"),
        query_param("continue", "The continue option should be set when retrieving more results from the server.", "string"),
        query_param("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from.", "string"),
        query_param("watch", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.", "boolean"),
    ];
    let collection_ops = json!({
        "get": op("list", "list", list_params, list_schema),
        "post": create,
        "delete": op("deletecollection", "deletecollection", vec![], "io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
        "parameters": if r.namespaced { vec![path_params[1].clone()] } else { vec![] },
    });
    let item_ops = json!({
        "get": op("read", "get", vec![], schema),
        "put": update,
        "patch": patch,
        "delete": op("delete", "delete", vec![], "io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
        "parameters": path_params,
    });
    vec![(collection, collection_ops), (item, item_ops)]
}

/// Every definition reachable from `roots`.
fn closure(types: &Types, roots: &[String]) -> Map<String, Value> {
    let defs = types.definitions();
    let mut out = Map::new();
    let mut queue: Vec<String> = roots.to_vec();
    while let Some(name) = queue.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let Some(schema) = defs.get(&name) else { continue };
        collect_refs(schema, &mut queue);
        out.insert(name, schema.clone());
    }
    out
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(REF_PREFIX)) {
                out.push(r.to_owned());
            }
            m.values().for_each(|c| collect_refs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out)),
        _ => {}
    }
}

fn document(registry: &Registry, types: &Types, group: &str, version: &str) -> Value {
    let served: Vec<&std::sync::Arc<Resource>> = registry.all().iter().filter(|r| r.group == group && r.version == version).collect();
    let mut roots: Vec<String> = vec![
        "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta".into(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".into(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".into(),
    ];
    let mut paths = Map::new();
    let mut lists = Vec::new();
    for r in &served {
        let schema = r.strategy.schema_name();
        let list_schema = format!("{schema}List");
        roots.push(schema.clone());
        for (path, ops) in paths_of(r, &schema, &list_schema) {
            paths.insert(path, ops);
        }
        lists.push((
            list_schema,
            json!({
                "description": format!("{}List is a list of {}.", r.kind, r.kind),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": { "type": "string", "description": "APIVersion defines the versioned schema of this representation of an object." },
                    "kind": { "type": "string", "description": "Kind is a string value representing the REST resource this object represents." },
                    "items": { "type": "array", "items": schema_ref(&schema) },
                    "metadata": { "allOf": [schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")], "default": {} },
                },
                "x-kubernetes-group-version-kind": [{ "group": r.group, "version": r.version, "kind": format!("{}List", r.kind) }],
            }),
        ));
    }
    let mut schemas = closure(types, &roots);
    for r in &served {
        if let Some(s) = schemas.get_mut(&r.strategy.schema_name()) {
            s["x-kubernetes-group-version-kind"] = gvk(r);
        }
    }
    schemas.extend(lists);
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBERNETES_MINOR) },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

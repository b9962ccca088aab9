//! Server-side printing: `meta.k8s.io` Tables with each kind's columns (what
//! `kubectl get` shows) and `PartialObjectMetadata` views.

use super::registry::Resource;
use serde_json::{Value, json};

/// What each Table row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> Result<Self, String> {
        match v {
            None | Some("Metadata") => Ok(Self::Metadata),
            Some("None") => Ok(Self::None),
            Some("Object") => Ok(Self::Object),
            Some(other) => Err(format!("includeObject must be one of None, Metadata or Object, not {other:?}")),
        }
    }
}

/// The `PartialObjectMetadata` of an object.
pub fn partial_metadata(obj: &Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A `PartialObjectMetadataList` of objects.
pub fn partial_metadata_list(objects: &[Value], list_meta: Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "items": objects.iter().map(|o| partial_metadata(o, version)).collect::<Vec<_>>(),
    })
}

fn row(resource: &Resource, obj: &Value, include: IncludeObject, version: &str) -> Value {
    let mut row = json!({ "cells": resource.strategy.cells(obj) });
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => row["object"] = partial_metadata(obj, version),
        IncludeObject::Object => row["object"] = obj.clone(),
    }
    row
}

/// A Table of objects. `with_columns` is false for watch events after the first,
/// which upstream sends without column definitions.
pub fn table(resource: &Resource, objects: &[Value], list_meta: Value, include: IncludeObject, version: &str, with_columns: bool) -> Value {
    let mut t = json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "rows": objects.iter().map(|o| row(resource, o, include, version)).collect::<Vec<_>>(),
    });
    if with_columns {
        t["columnDefinitions"] = resource.columns.iter().map(|c| c.definition()).collect();
    }
    t
}

//! Validation rules shared by every kind: name formats, labels, annotations,
//! finalizers and owner references, with upstream's wording so that messages read
//! the same as on any Kubernetes cluster.

use super::error::FieldError;
use super::registry::NameRule;
use serde_json::{Map, Value};

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const C_IDENTIFIER_MSG: &str = "a valid C identifier must start with alphabetic character or '_', followed by a string of alphanumeric characters or '_' (e.g. 'my_name',  or 'MY_NAME',  or 'MyName', regex used for validation is '[A-Za-z_][A-Za-z0-9_]*')";

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum)
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
}

/// Problems with `s` as an RFC 1123 label (namespace and service names).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(format!("must be no more than {DNS1123_LABEL_MAX} bytes"));
    }
    if !is_dns_label(s) {
        errs.push(DNS1123_LABEL_MSG.to_owned());
    }
    errs
}

/// Problems with `s` as an RFC 1123 subdomain (most object names).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} bytes"));
    }
    if s.is_empty() || !s.split('.').all(is_dns_label) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_owned());
    }
    errs
}

/// Problems with `s` as a path segment name (events, leases).
pub fn path_segment(s: &str) -> Vec<String> {
    if s == "." || s == ".." {
        return vec![format!("may not be '{s}'")];
    }
    ["/", "%"].iter().filter(|bad| s.contains(**bad)).map(|bad| format!("may not contain '{bad}'")).collect()
}

fn is_qualified_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty() && s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// Problems with `s` as a qualified name (`[prefix/]name`): label and annotation keys, finalizers.
pub fn qualified_name(s: &str) -> Vec<String> {
    let (prefix, name) = match s.split('/').collect::<Vec<_>>().as_slice() {
        [name] => (None, *name),
        [prefix, name] => (Some(*prefix), *name),
        _ => {
            return vec![format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    let mut errs = Vec::new();
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else {
            errs.extend(dns1123_subdomain(prefix).into_iter().map(|m| format!("prefix part {m}")));
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            errs.push(format!("name part must be no more than {QUALIFIED_NAME_MAX} bytes"));
        }
        if !is_qualified_part(name) {
            errs.push(QUALIFIED_NAME_MSG.to_owned());
        }
    }
    errs
}

/// Problems with `s` as a label value.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_VALUE_MAX {
        errs.push(format!("must be no more than {LABEL_VALUE_MAX} bytes"));
    }
    if !s.is_empty() && !is_qualified_part(s) {
        errs.push(LABEL_VALUE_MSG.to_owned());
    }
    errs
}

/// Problems with `s` as a C identifier (environment variable names in some fields).
pub fn c_identifier(s: &str) -> Vec<String> {
    let ok = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok { Vec::new() } else { vec![C_IDENTIFIER_MSG.to_owned()] }
}

/// Problems with `s` as a ConfigMap or Secret key.
pub fn config_map_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} bytes"));
    }
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        errs.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".to_owned());
    }
    if s == "." || s == ".." || s.starts_with("..") {
        errs.push(format!("must not be '{s}' or start with '..'"));
    }
    errs
}

/// Checks `value` with `check`, reporting each problem as an Invalid error at `field`.
pub fn check(errors: &mut Vec<FieldError>, field: &str, value: &str, check: fn(&str) -> Vec<String>) {
    errors.extend(check(value).into_iter().map(|m| FieldError::invalid(field, value, m)));
}

pub fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain(name),
        NameRule::Label => dns1123_label(name),
        NameRule::PathSegment => path_segment(name),
    }
}

/// Upstream's `ValidateObjectMeta`: the rules every object's metadata follows.
pub fn object_meta(meta: &Map<String, Value>, rule: NameRule, namespaced: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let str_field = |k: &str| meta.get(k).and_then(Value::as_str).unwrap_or("");
    let name = str_field("name");
    let generate_name = str_field("generateName");
    if name.is_empty() {
        if generate_name.is_empty() {
            errors.push(FieldError::required("metadata.name", "name or generateName is required"));
        } else {
            // A prefix may end in '-'; validate it as if completed.
            let completed = format!("{}a", generate_name.strip_suffix('-').unwrap_or(generate_name));
            errors.extend(
                name_errors(rule, &completed).into_iter().map(|m| FieldError::invalid("metadata.generateName", generate_name, m)),
            );
        }
    } else {
        errors.extend(name_errors(rule, name).into_iter().map(|m| FieldError::invalid("metadata.name", name, m)));
    }
    let namespace = str_field("namespace");
    if namespaced {
        if namespace.is_empty() {
            errors.push(FieldError::required("metadata.namespace", ""));
        } else {
            check(&mut errors, "metadata.namespace", namespace, dns1123_label);
        }
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            check(&mut errors, "metadata.labels", k, qualified_name);
            if let Some(v) = v.as_str() {
                check(&mut errors, "metadata.labels", v, label_value);
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            check(&mut errors, "metadata.annotations", &k.to_ascii_lowercase(), qualified_name);
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX_BYTES {
            errors.push(FieldError::too_long("metadata.annotations", ANNOTATIONS_MAX_BYTES));
        }
    }
    if let Some(finalizers) = meta.get("finalizers").and_then(Value::as_array) {
        for (i, f) in finalizers.iter().enumerate() {
            check(&mut errors, &format!("metadata.finalizers[{i}]"), f.as_str().unwrap_or(""), qualified_name);
        }
    }
    if let Some(owners) = meta.get("ownerReferences").and_then(Value::as_array) {
        let mut controllers = 0;
        for (i, o) in owners.iter().enumerate() {
            for field in ["apiVersion", "kind", "name", "uid"] {
                if o.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                    errors.push(FieldError::required(format!("metadata.ownerReferences[{i}].{field}"), ""));
                }
            }
            controllers += o.get("controller").and_then(Value::as_bool).unwrap_or(false) as usize;
        }
        if controllers > 1 {
            errors.push(FieldError::invalid(
                "metadata.ownerReferences",
                Value::Array(owners.clone()).to_string(),
                "Only one reference can have Controller set to true",
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subdomains_allow_dots_and_labels_do_not() {
        assert!(dns1123_subdomain("web.example-1").is_empty());
        assert!(!dns1123_label("web.example").is_empty());
        assert!(dns1123_label("web-1").is_empty());
        for bad in ["", "Web", "-web", "web-", "we_b", "a..b"] {
            assert!(!dns1123_subdomain(bad).is_empty(), "{bad:?}");
        }
        assert_eq!(dns1123_label(&"a".repeat(64))[0], "must be no more than 63 bytes");
    }

    #[test]
    fn qualified_names_take_an_optional_subdomain_prefix() {
        assert!(qualified_name("app").is_empty());
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(qualified_name("My_Key.1").is_empty());
        assert_eq!(qualified_name("/x"), ["prefix part must be non-empty"]);
        assert!(qualified_name("a/b/c")[0].starts_with("a qualified name must consist"));
        assert!(qualified_name("Example.com/x")[0].starts_with("prefix part a lowercase RFC 1123 subdomain"));
        assert!(!qualified_name("-x").is_empty());
    }

    #[test]
    fn label_values_may_be_empty_but_not_malformed() {
        assert!(label_value("").is_empty());
        assert!(label_value("v1.2_x").is_empty());
        assert!(!label_value("bad value").is_empty());
        assert!(!label_value(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn object_meta_requires_a_name_and_checks_labels() {
        let meta = json!({"labels": {"ok": "yes", "bad key!": "x"}});
        let errors = object_meta(meta.as_object().unwrap(), NameRule::Subdomain, true);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "metadata.namespace", "metadata.labels"]);
        assert_eq!(errors[0].to_string(), "metadata.name: Required value: name or generateName is required");
    }

    #[test]
    fn generate_name_prefixes_may_end_with_a_dash() {
        let meta = json!({"generateName": "web-", "namespace": "default"});
        assert!(object_meta(meta.as_object().unwrap(), NameRule::Subdomain, true).is_empty());
        let meta = json!({"generateName": "Web-", "namespace": "default"});
        assert_eq!(object_meta(meta.as_object().unwrap(), NameRule::Subdomain, true)[0].field, "metadata.generateName");
    }

    #[test]
    fn only_one_owner_may_be_the_controller() {
        let owner = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u", "controller": true});
        let meta = json!({"name": "p", "ownerReferences": [owner.clone(), owner]});
        let errors = object_meta(meta.as_object().unwrap(), NameRule::Subdomain, false);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].detail.contains("Only one reference"));
    }
}

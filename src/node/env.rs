//! A container's environment as the kubelet builds it: `envFrom` sources
//! first, then `env` entries (which win), values from ConfigMaps, Secrets and
//! the downward API, and `$(VAR)` references expanded against what is already
//! defined (also in command and args).

use super::host::Capacity;
use super::sources::{self, Lookup, PodAddresses};
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::HashMap;

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`; unknown references
/// stay as written (upstream's expansion rules).
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// One key of a ConfigMap's or Secret's `data` (`None` if it or its object is
/// missing and optional); `kind` is how messages name the kind.
fn key_of(
    data: Option<std::collections::BTreeMap<String, Vec<u8>>>,
    kind: (&str, &str),
    namespace: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    let (lower, title) = kind;
    match data {
        None if optional => Ok(None),
        None => Err(format!("{lower} \"{name}\" not found")),
        Some(mut data) => match data.remove(key) {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            None if optional => Ok(None),
            None => Err(format!("couldn't find key {key} in {title} {namespace}/{name}")),
        },
    }
}

/// The environment of `container`, in order, or the CreateContainerConfigError message.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    lookup: &dyn Lookup,
    addresses: &PodAddresses,
    allocatable: &Capacity,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut ordered: Vec<(String, String)> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut set = |name: String, value: String, ordered: &mut Vec<(String, String)>| {
        if values.insert(name.clone(), value.clone()).is_some() {
            ordered.retain(|(n, _)| *n != name);
        }
        ordered.push((name, value));
    };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or("");
        let data = if let Some(r) = &source.config_map_ref {
            match lookup.config_map(namespace, &r.name) {
                Some(cm) => sources::config_map_data(&cm),
                None if r.optional == Some(true) => continue,
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        } else if let Some(r) = &source.secret_ref {
            match lookup.secret(namespace, &r.name) {
                Some(s) => sources::secret_data(&s),
                None if r.optional == Some(true) => continue,
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        } else {
            continue;
        };
        for (key, value) in data {
            set(format!("{prefix}{key}"), String::from_utf8_lossy(&value).into_owned(), &mut ordered);
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let known: HashMap<String, String> = ordered.iter().cloned().collect();
                expand(var.value.as_deref().unwrap_or(""), &known)
            }
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let data = lookup.config_map(namespace, &r.name).map(|cm| sources::config_map_data(&cm));
                    match key_of(data, ("configmap", "ConfigMap"), namespace, &r.name, &r.key, r.optional == Some(true))? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let data = lookup.secret(namespace, &r.name).map(|s| sources::secret_data(&s));
                    match key_of(data, ("secret", "Secret"), namespace, &r.name, &r.key, r.optional == Some(true))? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(f) = &from.field_ref {
                    sources::field_ref(pod, &f.field_path, addresses)?
                } else if let Some(r) = &from.resource_field_ref {
                    sources::resource_field_ref(container, r, allocatable)?
                } else {
                    continue;
                }
            }
        };
        set(var.name.clone(), value, &mut ordered);
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMap, ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, Secret,
    };
    use std::sync::Arc;

    struct Fixed(Vec<Arc<ConfigMap>>);

    impl Lookup for Fixed {
        fn config_map(&self, _: &str, name: &str) -> Option<Arc<ConfigMap>> {
            self.0.iter().find(|c| c.metadata.name.as_deref() == Some(name)).cloned()
        }
        fn secret(&self, _: &str, _: &str) -> Option<Arc<Secret>> {
            None
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn references_expand_and_escapes_stay_literal() {
        let v = vars(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &v), "1-two");
        assert_eq!(expand("$$(A) $(MISSING) $", &v), "$(A) $(MISSING) $");
        assert_eq!(expand("x$(A", &v), "x$(A");
    }

    fn env(name: &str, value: Option<&str>, from: Option<EnvVarSource>) -> EnvVar {
        EnvVar { name: name.into(), value: value.map(Into::into), value_from: from }
    }

    #[test]
    fn env_overrides_env_from_and_reads_sources() {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("cfg".into());
        cm.data = Some([("COLOR".to_owned(), "blue".to_owned()), ("SIZE".to_owned(), "l".to_owned())].into());
        let lookup = Fixed(vec![Arc::new(cm)]);
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        let container = Container {
            env_from: Some(vec![EnvFromSource { config_map_ref: Some(ConfigMapEnvSource { name: "cfg".into(), optional: None }), ..Default::default() }]),
            env: Some(vec![
                env("SIZE", Some("xl"), None),
                env("ME", None, Some(EnvVarSource { field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), api_version: None }), ..Default::default() })),
                env("BOTH", Some("$(COLOR)/$(ME)"), None),
            ]),
            ..Default::default()
        };
        let got = resolve(&pod, &container, &lookup, &PodAddresses::default(), &Capacity { cpus: 1, memory: 1, ephemeral_storage: 1 }).unwrap();
        assert_eq!(got, [("COLOR", "blue"), ("SIZE", "xl"), ("ME", "p"), ("BOTH", "blue/p")].map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn a_missing_key_is_the_upstream_error_unless_optional() {
        let lookup = Fixed(vec![]);
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        let from = |optional| EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector { name: "absent".into(), key: "k".into(), optional }),
            ..Default::default()
        };
        let cap = Capacity { cpus: 1, memory: 1, ephemeral_storage: 1 };
        let container = Container { env: Some(vec![env("X", None, Some(from(None)))]), ..Default::default() };
        assert_eq!(resolve(&pod, &container, &lookup, &PodAddresses::default(), &cap).unwrap_err(), "configmap \"absent\" not found");
        let container = Container { env: Some(vec![env("X", None, Some(from(Some(true))))]), ..Default::default() };
        assert!(resolve(&pod, &container, &lookup, &PodAddresses::default(), &cap).unwrap().is_empty());
    }
}

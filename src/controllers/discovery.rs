//! Which resources the API serves, read from its discovery documents (`/api/v1`,
//! `/apis/<group>/<version>`) as upstream's controllers do with
//! ServerPreferredResources: every group at its preferred version, with scope and
//! verbs, subresources left out. A group that does not answer is reported
//! without hiding the others, so callers can act on what is known, so the
//! namespace controller and the garbage collector work for any kind served.

use kube::api::ApiResource;

/// One served resource.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub verbs: Vec<String>,
}

impl Discovered {
    pub fn supports(&self, verbs: &[&str]) -> bool {
        verbs.iter().all(|v| self.verbs.iter().any(|have| have == v))
    }

    /// `pods` or `deployments.apps`, as quota and messages name resources.
    pub fn group_resource(&self) -> String {
        let r = &self.resource;
        if r.group.is_empty() { r.plural.clone() } else { format!("{}.{}", r.plural, r.group) }
    }

    /// Go's rendering of a GroupVersionResource (`apps/v1, Resource=replicasets`).
    pub fn gvr_string(&self) -> String {
        let r = &self.resource;
        format!("{}/{}, Resource={}", r.group, r.version, r.plural)
    }
}

/// The result of one discovery pass.
#[derive(Debug, Default)]
pub struct Discovery {
    pub resources: Vec<Discovered>,
    /// Group-versions whose resource list could not be read, with the error.
    pub failed: Vec<(String, String)>,
}

impl Discovery {
    /// Reads every group's preferred version. Fails only when the group lists
    /// themselves cannot be read.
    pub async fn run(client: &kube::Client) -> Result<Self, kube::Error> {
        let mut versions: Vec<String> = client.list_core_api_versions().await?.versions.into_iter().take(1).collect();
        for group in client.list_api_groups().await?.groups {
            let preferred = group.preferred_version.map(|v| v.group_version).or_else(|| group.versions.first().map(|v| v.group_version.clone()));
            versions.extend(preferred);
        }
        let mut discovery = Discovery::default();
        for group_version in versions {
            let list = if group_version.contains('/') {
                client.list_api_group_resources(&group_version).await
            } else {
                client.list_core_api_resources(&group_version).await
            };
            let list = match list {
                Ok(list) => list,
                Err(e) => {
                    discovery.failed.push((group_version, e.to_string()));
                    continue;
                }
            };
            let (group, version) = match group_version.split_once('/') {
                Some((g, v)) => (g.to_owned(), v.to_owned()),
                None => (String::new(), group_version.clone()),
            };
            for r in list.resources.into_iter().filter(|r| !r.name.contains('/')) {
                discovery.resources.push(Discovered {
                    resource: ApiResource {
                        group: group.clone(),
                        version: version.clone(),
                        api_version: group_version.clone(),
                        kind: r.kind,
                        plural: r.name,
                    },
                    namespaced: r.namespaced,
                    verbs: r.verbs,
                });
            }
        }
        Ok(discovery)
    }

    /// Upstream's message for partial discovery, if some groups failed.
    pub fn failure(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let groups: Vec<String> = self.failed.iter().map(|(gv, e)| format!("{gv}: {e}")).collect();
        Some(format!("unable to retrieve the complete list of server APIs: {}", groups.join(", ")))
    }

    /// The resource serving `kind` in `group`.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&Discovered> {
        self.resources.iter().find(|d| d.resource.group == group && d.resource.kind == kind)
    }

    /// The resource named `plural` in `group`.
    pub fn by_plural(&self, group: &str, plural: &str) -> Option<&Discovered> {
        self.resources.iter().find(|d| d.resource.group == group && d.resource.plural == plural)
    }
}

/// The group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

//! The stable identity of a StatefulSet's pods: the name `<set>-<ordinal>`,
//! hostname and subdomain, the pod-name and pod-index labels, and a volume per
//! claim template naming the claim `<claim>-<set>-<ordinal>`.
//!
//! rk has no PersistentVolume subsystem yet: claim templates are accepted and
//! pods reference their claims as upstream's do, but no PersistentVolumeClaim
//! is created.

use crate::controllers::history::POD_REVISION_LABEL;
use crate::controllers::ownership::controller_reference;
use crate::controllers::pods::from_template;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume};
use kube::ResourceExt;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

/// The set name and ordinal a pod name encodes, if it is `<name>-<digits>`.
pub fn parent_and_ordinal(pod: &Pod) -> Option<(&str, i32)> {
    let name = pod.metadata.name.as_deref()?;
    let (parent, ordinal) = name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, ordinal.parse().ok()?))
}

/// The ordinal of one of `set`'s pods; `None` for pods named otherwise.
pub fn ordinal(set: &StatefulSet, pod: &Pod) -> Option<i32> {
    parent_and_ordinal(pod).filter(|(parent, _)| *parent == set.name_any()).map(|(_, o)| o)
}

pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.ordinals.as_ref()).and_then(|o| o.start).unwrap_or(0)
}

pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0)
}

fn claim_name(claim: &str, set: &StatefulSet, ordinal: i32) -> String {
    format!("{claim}-{}-{ordinal}", set.name_any())
}

/// The claim volumes the pod at `ordinal` mounts, in template order.
fn claim_volumes(set: &StatefulSet, ordinal: i32) -> Vec<Volume> {
    let claims = set.spec.as_ref().and_then(|s| s.volume_claim_templates.as_ref());
    claims
        .into_iter()
        .flatten()
        .map(|claim| {
            let name = claim.name_any();
            Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim_name(&name, set, ordinal), read_only: None }),
                name,
                ..Default::default()
            }
        })
        .collect()
}

/// The pod at `ordinal`, made from `template` (the template of `revision`).
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let mut pod = from_template(template, controller_reference(set));
    let name = pod_name(set, ordinal);
    pod.metadata.name = Some(name.clone());
    pod.metadata.namespace = set.namespace();
    let labels = pod.labels_mut();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(POD_REVISION_LABEL.into(), revision.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name);
    spec.subdomain = set.spec.as_ref().and_then(|s| s.service_name.clone()).filter(|s| !s.is_empty());
    let claims = claim_volumes(set, ordinal);
    let others = spec.volumes.take().unwrap_or_default().into_iter().filter(|v| !claims.iter().any(|c| c.name == v.name));
    let volumes: Vec<Volume> = claims.iter().cloned().chain(others).collect();
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    pod
}

/// The labels a pod of `set` is missing or has wrong (its identity), if any.
pub fn identity_fix(set: &StatefulSet, pod: &Pod) -> Option<Vec<(&'static str, String)>> {
    let ordinal = ordinal(set, pod)?;
    let wanted = [(POD_NAME_LABEL, pod_name(set, ordinal)), (POD_INDEX_LABEL, ordinal.to_string())];
    let fixes: Vec<(&'static str, String)> = wanted.into_iter().filter(|(k, v)| pod.labels().get(*k) != Some(v)).collect();
    (!fixes.is_empty()).then_some(fixes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetSpec;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;

    fn set() -> StatefulSet {
        StatefulSet {
            metadata: kube::api::ObjectMeta { name: Some("web".into()), namespace: Some("default".into()), uid: Some("u".into()), ..Default::default() },
            spec: Some(StatefulSetSpec {
                service_name: Some("nginx".into()),
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: kube::api::ObjectMeta { name: Some("data".into()), ..Default::default() },
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn pods_are_named_by_ordinal_and_carry_their_identity() {
        let pod = new_pod(&set(), &PodTemplateSpec::default(), "web-abc", 2);
        assert_eq!(pod.name_any(), "web-2");
        assert_eq!(pod.labels().get(POD_NAME_LABEL).map(String::as_str), Some("web-2"));
        assert_eq!(pod.labels().get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
        assert_eq!(pod.labels().get(POD_REVISION_LABEL).map(String::as_str), Some("web-abc"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("web-2"), Some("nginx")));
        let claim = spec.volumes.as_ref().unwrap()[0].persistent_volume_claim.as_ref().unwrap();
        assert_eq!(claim.claim_name, "data-web-2");
        assert_eq!(ordinal(&set(), &pod), Some(2));
        assert!(identity_fix(&set(), &pod).is_none());
    }

    #[test]
    fn only_names_of_the_form_set_dash_number_are_members() {
        let named = |n: &str| Pod { metadata: kube::api::ObjectMeta { name: Some(n.into()), ..Default::default() }, ..Default::default() };
        assert_eq!(ordinal(&set(), &named("web-10")), Some(10));
        assert_eq!(ordinal(&set(), &named("web-x")), None);
        assert_eq!(ordinal(&set(), &named("webs-1")), None);
        assert_eq!(ordinal(&set(), &named("web-")), None);
        assert_eq!(parent_and_ordinal(&named("my-web-3")), Some(("my-web", 3)));
    }
}

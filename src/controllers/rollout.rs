//! The arithmetic rollouts share: resolving `maxSurge`/`maxUnavailable`
//! (an int or a percentage of a total, rounded as upstream), and the stable
//! hashes that name what a template became (ReplicaSets, pod-template-hash
//! labels, ControllerRevisions), rendered in upstream's "safe" alphabet so
//! names never spell words.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Resolves an int-or-percent against `total`; percentages round up or down
/// (upstream's GetScaledValueFromIntOrPercent).
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(v) => Ok(*v),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .ok_or_else(|| format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"))?
                .parse()
                .map_err(|_| format!("invalid value for IntOrString: invalid value for percent: {s:?}"))?;
            let scaled = percent * i64::from(total);
            let rounded = if round_up { scaled.div_euclid(100) + i64::from(scaled.rem_euclid(100) != 0) } else { scaled.div_euclid(100) };
            i32::try_from(rounded).map_err(|_| format!("invalid value for IntOrString: {s:?} of {total} is out of range"))
        }
    }
}

/// 32-bit FNV-1a, the hash upstream names templates with.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// 32-bit FNV-1, the hash upstream names ControllerRevisions with.
pub fn fnv1_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| h.wrapping_mul(0x0100_0193) ^ u32::from(*b))
}

/// Consonants and digits only: no vowels, no 0/1/3, so hashes never spell words.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Maps each character to the safe alphabet, as upstream's SafeEncodeString.
pub fn safe_encode(s: &str) -> String {
    s.chars().map(|c| char::from(SAFE_ALPHABET[c as usize % SAFE_ALPHABET.len()])).collect()
}

/// The pod-template-hash of a template (upstream's ComputeHash intent): FNV-1a
/// over the template's canonical JSON (fields in schema order, map keys
/// sorted), then the collision count, rendered safely. Equal templates always
/// hash equally; a collision count moves the name away from a taken one.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).expect("templates always serialize");
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
    }
    safe_encode(&fnv1a_32(&bytes).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use std::collections::BTreeMap;

    fn percent(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn percentages_round_up_for_surge_and_down_for_unavailable() {
        assert_eq!(scaled_value(&percent("25%"), 10, true), Ok(3));
        assert_eq!(scaled_value(&percent("25%"), 10, false), Ok(2));
        assert_eq!(scaled_value(&percent("25%"), 3, true), Ok(1));
        assert_eq!(scaled_value(&percent("25%"), 3, false), Ok(0));
        assert_eq!(scaled_value(&percent("50%"), 4, false), Ok(2));
        assert_eq!(scaled_value(&percent("0%"), 7, true), Ok(0));
        assert_eq!(scaled_value(&percent("100%"), 7, false), Ok(7));
        assert_eq!(scaled_value(&IntOrString::Int(2), 100, false), Ok(2));
    }

    #[test]
    fn a_string_without_percent_sign_is_refused() {
        assert!(scaled_value(&percent("2"), 10, true).unwrap_err().contains("not a percentage"));
        assert!(scaled_value(&percent("x%"), 10, true).is_err());
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1_32(b"foobar"), 0x31f0_b262);
    }

    #[test]
    fn safe_encoding_uses_upstreams_alphabet() {
        // Digits map as upstream's: '0'→'4' … '5'→'9', '6'→'b' … '9'→'f'.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(kube::api::ObjectMeta { labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])), ..Default::default() }),
            spec: Some(PodSpec { containers: vec![Container { name: "c".into(), image: Some(image.into()), ..Default::default() }], ..Default::default() }),
        }
    }

    #[test]
    fn the_template_hash_is_stable_and_depends_on_template_and_collisions() {
        let a = template_hash(&template("nginx:1"), None);
        assert_eq!(a, template_hash(&template("nginx:1"), None));
        assert_ne!(a, template_hash(&template("nginx:2"), None));
        assert_ne!(a, template_hash(&template("nginx:1"), Some(1)));
        assert_ne!(template_hash(&template("nginx:1"), Some(1)), template_hash(&template("nginx:1"), Some(2)));
        assert!(a.chars().all(|c| "456789bcdf".contains(c)), "{a}");
        // Pinned: a change here renames every ReplicaSet of every Deployment.
        assert_eq!(a, "79bfd649dc");
    }
}

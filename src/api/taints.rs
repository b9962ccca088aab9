//! Taints and tolerations, as the API defines them: the scheduler, the
//! DaemonSet controller and taint eviction all ask the same question.

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Whether `toleration` tolerates `taint` (upstream's `ToleratesTaint`): the
/// effect matches (or the toleration names none), the key matches (or the
/// toleration names none), and `Equal` also needs the same value.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    let key = toleration.key.as_deref().unwrap_or("");
    if (!effect.is_empty() && effect != taint.effect) || (!key.is_empty() && key != taint.key) {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toleration(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn tolerations_match_key_value_and_effect_like_upstream() {
        let t = Taint { key: "dedicated".into(), value: Some("gpu".into()), effect: "NoSchedule".into(), time_added: None };
        assert!(tolerates(&toleration(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})), &t));
        assert!(tolerates(&toleration(json!({"key": "dedicated", "operator": "Equal", "value": "gpu"})), &t), "no effect tolerates every effect");
        assert!(tolerates(&toleration(json!({"key": "dedicated", "operator": "Exists"})), &t));
        assert!(tolerates(&toleration(json!({"operator": "Exists"})), &t), "an empty key with Exists tolerates everything");
        assert!(!tolerates(&toleration(json!({"key": "dedicated", "value": "cpu"})), &t));
        assert!(!tolerates(&toleration(json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})), &t));
        assert!(!tolerates(&toleration(json!({"key": "other", "operator": "Exists"})), &t));
    }
}

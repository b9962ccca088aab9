//! Objects as the generic machinery holds them: JSON values with Kubernetes
//! metadata. Typed views (k8s-openapi structs) exist only inside a kind's strategy.

use serde_json::{Map, Value};

/// Read and write access to the well-known parts of an object.
pub trait ObjectExt {
    fn meta(&self) -> Option<&Map<String, Value>>;
    fn meta_mut(&mut self) -> &mut Map<String, Value>;

    fn meta_str(&self, field: &str) -> Option<&str> {
        self.meta()?.get(field)?.as_str()
    }
    fn name(&self) -> &str {
        self.meta_str("name").unwrap_or("")
    }
    fn namespace(&self) -> &str {
        self.meta_str("namespace").unwrap_or("")
    }
    fn uid(&self) -> &str {
        self.meta_str("uid").unwrap_or("")
    }
    fn labels(&self) -> Option<&Map<String, Value>> {
        self.meta()?.get("labels")?.as_object()
    }
    fn finalizers(&self) -> Vec<&str> {
        self.meta()
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
    fn is_deleting(&self) -> bool {
        self.meta().is_some_and(|m| m.get("deletionTimestamp").is_some_and(|v| !v.is_null()))
    }
    fn set_meta(&mut self, field: &str, value: impl Into<Value>) {
        self.meta_mut().insert(field.to_owned(), value.into());
    }
    fn remove_meta(&mut self, field: &str) -> Option<Value> {
        self.meta_mut().remove(field)
    }
}

impl ObjectExt for Value {
    fn meta(&self) -> Option<&Map<String, Value>> {
        self.get("metadata")?.as_object()
    }

    fn meta_mut(&mut self) -> &mut Map<String, Value> {
        if !self.is_object() {
            *self = Value::Object(Map::new());
        }
        let obj = self.as_object_mut().expect("just made an object");
        let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta.as_object_mut().expect("just made an object")
    }
}

/// The current time as Kubernetes renders timestamps (RFC 3339, second precision, UTC).
pub fn now_rfc3339() -> String {
    format_time(jiff::Timestamp::now())
}

pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The current time with microseconds, as `MicroTime` fields (leases, events) use.
pub fn now_rfc3339_micros() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Reads a value by a dotted path such as `spec.nodeName`, rendered as a selector
/// compares it: strings as-is, numbers and booleans in their JSON form.
pub fn field_as_string(obj: &Value, dotted: &str) -> Option<String> {
    let mut cur = obj;
    for part in dotted.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Renders the age of a timestamp as kubectl does: `45s`, `3m12s`, `5h`, `12d`…
pub fn human_age(since: &str) -> String {
    let Ok(t) = since.parse::<jiff::Timestamp>() else { return "<unknown>".into() };
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    human_duration(secs)
}

/// kubectl's `HumanDuration`: two significant units at most, coarser as it grows.
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    let y = d / 365;
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if y < 2 {
        format!("{d}d")
    } else if y < 8 {
        match d % 365 {
            0 => format!("{y}y"),
            dd => format!("{y}y{dd}d"),
        }
    } else {
        format!("{y}y")
    }
}

/// A duration, in nanoseconds, as Go prints it (`1h2m3s`, `500ms`): in
/// metav1.Duration fields and in the kubelet's messages.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    if ns < 1_000_000_000 {
        return format!("{sign}{}ms", ns as f64 / 1e6);
    }
    let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let s = rest as f64 / 1e9;
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

/// Reads a duration as Go writes and parses them (`15s`, `1m30s`, `500ms`,
/// `1.5h`), as metav1.Duration fields and upstream's command-line flags take
/// them; `None` for anything else, a negative duration included.
pub fn parse_go_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        seconds += number.parse::<f64>().ok()? * scale;
        rest = next;
    }
    std::time::Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 5 * 60), "3h5m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(human_duration(40 * 86400), "40d");
        assert_eq!(human_duration(-1), "<invalid>");
    }

    #[test]
    fn go_durations_print_like_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600 * 1_000_000_000), "1h0m0s");
        assert_eq!(go_duration(500_000_000), "500ms");
    }

    #[test]
    fn go_durations_parse_like_go() {
        use std::time::Duration;
        assert_eq!(parse_go_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "15", "s", "-1s", "1x", "1..5s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn dotted_fields_render_scalars_only() {
        let o = json!({"spec": {"nodeName": "n1", "unschedulable": true, "replicas": 3, "x": {}}});
        assert_eq!(field_as_string(&o, "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(field_as_string(&o, "spec.unschedulable").as_deref(), Some("true"));
        assert_eq!(field_as_string(&o, "spec.replicas").as_deref(), Some("3"));
        assert_eq!(field_as_string(&o, "spec.x"), None);
        assert_eq!(field_as_string(&o, "status.phase"), None);
    }
}

//! What changed between two JSON documents, for audit records of configuration and rule
//! changes: one `{path, before, after}` entry per changed leaf (arrays compare whole).

use serde_json::{Value, json};

/// The changed leaves between `before` and `after`, with dotted paths, in key order.
pub fn json_diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

fn walk(path: &str, before: &Value, after: &Value, out: &mut Vec<Value>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                walk(&child, a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), out);
            }
        }
        (a, b) if a != b => out.push(json!({ "path": path, "before": a, "after": b })),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_changed_leaf_with_its_path() {
        let before = json!({ "api": { "listen": "127.0.0.1:8080", "tokens": [] }, "rules": { "x": 1 }, "gone": true });
        let after = json!({ "api": { "listen": "0.0.0.0:8080", "tokens": [] }, "rules": { "x": 1, "y": 2 } });
        let diff = json_diff(&before, &after);
        assert_eq!(
            diff,
            vec![
                json!({ "path": "api.listen", "before": "127.0.0.1:8080", "after": "0.0.0.0:8080" }),
                json!({ "path": "gone", "before": true, "after": null }),
                json!({ "path": "rules.y", "before": null, "after": 2 }),
            ]
        );
        assert!(json_diff(&after, &after).is_empty());
    }
}

//! The flagd file actuator. A kill rewrites the flag's definition so that every evaluation
//! serves the off variant: `defaultVariant` → the rule's control (else `off_variant`) and
//! `targeting` removed. `state: DISABLED` is NOT a kill (evaluation then returns the caller's
//! code default, which may be `true`). Writes are atomic (new file + rename) because flagd's
//! file watcher sees partial writes. A slice (`per: [region]`) cannot be expressed in a plain
//! flag file: such a kill fails permanently and is escalated.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::{ActError, ActionRequest, Actuator, Applied};
use crate::config::FlagdConfig;

pub struct FlagdFile {
    path: PathBuf,
    off_variant: String,
}

impl FlagdFile {
    pub fn new(config: &FlagdConfig) -> FlagdFile {
        FlagdFile { path: config.path.clone(), off_variant: config.off_variant.clone() }
    }
}

/// The flag's key in the file: the part after a `set/` namespace.
fn file_key(flag: &str) -> &str {
    flag.rsplit('/').next().unwrap_or(flag)
}

/// Returns the killed definition of `flag` in `doc` (and whether anything changed).
pub fn killed(doc: &mut Value, flag: &str, off: &str) -> Result<(Value, bool), ActError> {
    let def =
        doc.get_mut("flags").and_then(|f| f.get_mut(file_key(flag))).ok_or_else(|| ActError::Permanent(format!("flag {flag:?} is not in the flagd file")))?;
    let before = def.clone();
    if def.get("variants").and_then(|v| v.get(off)).is_none() {
        return Err(ActError::Permanent(format!("flag {flag:?} has no variant {off:?} to serve after a kill")));
    }
    let obj = def.as_object_mut().ok_or_else(|| ActError::Permanent(format!("flag {flag:?} is not an object")))?;
    obj.insert("defaultVariant".into(), Value::String(off.into()));
    obj.insert("state".into(), Value::String("ENABLED".into()));
    obj.remove("targeting");
    let changed = *def != before;
    Ok((before, changed))
}

fn is_killed(doc: &Value, flag: &str, off: &str) -> bool {
    doc.get("flags")
        .and_then(|f| f.get(file_key(flag)))
        .is_some_and(|d| d.get("defaultVariant").and_then(Value::as_str) == Some(off) && d.get("targeting").is_none())
}

#[async_trait::async_trait]
impl Actuator for FlagdFile {
    async fn kill(&self, request: &ActionRequest, _idempotency_key: &str) -> Result<Applied, ActError> {
        if !request.scope.is_empty() {
            let scope: Vec<String> = request.scope.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(ActError::Permanent(format!(
                "a flagd file cannot express the slice {}; kill the whole flag with a rule without `per`",
                scope.join(",")
            )));
        }
        let off = request.control.clone().unwrap_or_else(|| self.off_variant.clone());
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| ActError::transient(format!("read {}: {e}", self.path.display())))?;
        let mut doc: Value = serde_json::from_str(&text).map_err(|e| ActError::Permanent(format!("{} is not JSON: {e}", self.path.display())))?;
        let (before, changed) = killed(&mut doc, &request.flag, &off)?;
        if changed {
            let tmp = self.path.with_extension(format!("tmp-{}", std::process::id()));
            let out = serde_json::to_vec_pretty(&doc).map_err(|e| ActError::Permanent(e.to_string()))?;
            tokio::fs::write(&tmp, out).await.map_err(|e| ActError::transient(format!("write {}: {e}", tmp.display())))?;
            tokio::fs::rename(&tmp, &self.path).await.map_err(|e| ActError::transient(format!("rename to {}: {e}", self.path.display())))?;
        }
        // Read back: what flagd will load must serve the off variant.
        let reread = tokio::fs::read_to_string(&self.path).await.map_err(|e| ActError::transient(format!("read back: {e}")))?;
        let reread: Value = serde_json::from_str(&reread).map_err(|e| ActError::transient(format!("read back: {e}")))?;
        if !is_killed(&reread, &request.flag, &off) {
            return Err(ActError::transient("read back: the flag does not serve the off variant (concurrent writer?)"));
        }
        let after = reread.get("flags").and_then(|f| f.get(file_key(&request.flag))).cloned();
        Ok(Applied { before: Some(before), after: Some(json!({ "definition": after, "changed": changed, "path": self.path })) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({"flags": {"checkout-v2": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
            "targeting": {"fractional": [["on", 50], ["off", 50]]}}}})
    }

    #[test]
    fn kill_serves_off_and_drops_targeting_not_disabled() {
        let mut d = doc();
        let (before, changed) = killed(&mut d, "checkout-v2", "off").unwrap();
        assert!(changed);
        assert_eq!(before["defaultVariant"], "on");
        let def = &d["flags"]["checkout-v2"];
        assert_eq!(def["defaultVariant"], "off");
        assert_eq!(def["state"], "ENABLED", "DISABLED would serve the code default");
        assert!(def.get("targeting").is_none());
        let (_, again) = killed(&mut d, "checkout-v2", "off").unwrap();
        assert!(!again, "idempotent");
    }

    #[test]
    fn unknown_flag_or_variant_is_permanent() {
        assert!(matches!(killed(&mut doc(), "nope", "off"), Err(ActError::Permanent(_))));
        assert!(matches!(killed(&mut doc(), "checkout-v2", "red"), Err(ActError::Permanent(_))));
        assert!(killed(&mut doc(), "shop/checkout-v2", "off").is_ok(), "set namespace is stripped");
    }
}

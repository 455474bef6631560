//! The flagd file actuator. A kill rewrites the flag's definition so that every evaluation
//! serves the off variant: `defaultVariant` → the rule's control (else `off_variant`) and
//! `targeting` removed. `state: DISABLED` is NOT a kill (evaluation then returns the caller's
//! code default, which may be `true`). A kill of a slice (`per: [region]`, with
//! `slices = { region = "region" }`) wraps the targeting instead:
//! `{"if":[{"in":[{"var":"region"},["eu-west"]]},"off",<previous targeting>]}`. Restore of a
//! whole-flag kill writes back the exact previous definition; restore of a slice kill removes
//! only its own wrapper (wherever later slice kills put it), so it never undoes another kill —
//! and refuses while a later kill holds the whole flag. Either way nothing is overwritten when
//! the flag no longer reads as killed (a human edited it: drift). Writes are atomic (new file + rename) because flagd's file
//! watcher sees partial writes.

use super::verify::VerifyConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::{ActError, ActionRequest, Actuator, Applied, FlagState};

/// A flagd file. A kill sets `defaultVariant` to the rule's control variant (else
/// `off_variant`) and removes `targeting`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagdConfig {
    pub path: PathBuf,
    /// Variant served after a kill when the rule names no control. Default `off`.
    #[serde(default = "default_off")]
    pub off_variant: String,
    /// Dimension → evaluation-context attribute that expresses it in `targeting`
    /// (`slices = { region = "region" }`).
    #[serde(default)]
    pub slices: BTreeMap<String, String>,
    #[serde(default)]
    pub verify: VerifyConfig,
}

impl FlagdConfig {
    /// Every problem of these settings, as `field.key: message`.
    pub fn validate(&self, field: &str, errors: &mut Vec<String>) {
        if self.path.as_os_str().is_empty() {
            errors.push(format!("{field}.path: must not be empty"));
        }
    }
}

fn default_off() -> String {
    "off".into()
}

pub struct FlagdFile {
    path: PathBuf,
    off_variant: String,
    slices: BTreeMap<String, String>,
    /// Read-modify-write of the file, one at a time (actions of different targets may run
    /// concurrently; two writers would undo each other).
    lock: tokio::sync::Mutex<()>,
}

impl FlagdFile {
    pub fn new(config: &FlagdConfig) -> FlagdFile {
        FlagdFile { path: config.path.clone(), off_variant: config.off_variant.clone(), slices: config.slices.clone(), lock: tokio::sync::Mutex::new(()) }
    }

    fn off(&self, request: &ActionRequest) -> String {
        request.control.clone().unwrap_or_else(|| self.off_variant.clone())
    }

    /// The slice as a JsonLogic condition on the context attributes.
    fn condition(&self, request: &ActionRequest) -> Result<Option<Value>, ActError> {
        let mut parts = Vec::new();
        for (dim, value) in request.slice() {
            let var = self.slices.get(&dim).ok_or_else(|| ActError::Permanent(format!("no context attribute is configured for {dim} (slices.{dim})")))?;
            parts.push(json!({ "in": [{ "var": var }, [value]] }));
        }
        Ok(match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(json!({ "and": parts })),
        })
    }

    async fn load(&self) -> Result<Value, ActError> {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| ActError::transient(format!("read {}: {e}", self.path.display())))?;
        serde_json::from_str(&text).map_err(|e| ActError::Permanent(format!("{} is not JSON: {e}", self.path.display())))
    }

    /// Writes a new file beside the old one (an unpredictable name, created exclusively, so a
    /// planted symlink cannot redirect the write) and renames it over the old one: flagd never
    /// reads a half-written file.
    async fn save(&self, doc: &Value) -> Result<(), ActError> {
        let out = serde_json::to_vec_pretty(doc).map_err(|e| ActError::Permanent(e.to_string()))?;
        let path = self.path.clone();
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| ActError::transient(format!("create a file in {}: {e}", dir.display())))?;
            // flagd (often another user) must still read it: keep the old file's permissions,
            // not the temporary file's 0600.
            if let Ok(meta) = std::fs::metadata(&path) {
                use std::os::unix::fs::MetadataExt;
                // Owner and group too where allowed (a 0640 root:flagd file stays readable).
                let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()));
                let _ = tmp.as_file().set_permissions(meta.permissions());
            }
            tmp.write_all(&out).and_then(|_| tmp.as_file().sync_all()).map_err(|e| ActError::transient(format!("write {}: {e}", tmp.path().display())))?;
            tmp.persist(&path).map_err(|e| ActError::transient(format!("rename to {}: {e}", path.display())))?;
            Ok(())
        })
        .await
        .map_err(|e| ActError::transient(e.to_string()))?
    }
}

/// The flag's key in the file: the part after a `set/` namespace.
fn file_key(flag: &str) -> &str {
    flag.rsplit('/').next().unwrap_or(flag)
}

fn definition<'a>(doc: &'a mut Value, flag: &str) -> Result<&'a mut Value, ActError> {
    doc.get_mut("flags").and_then(|f| f.get_mut(file_key(flag))).ok_or_else(|| ActError::Permanent(format!("flag {flag:?} is not in the flagd file")))
}

/// Kills `flag` in `doc` (the whole flag, or only where `condition` holds); returns the
/// previous definition and whether anything changed.
pub fn killed(doc: &mut Value, flag: &str, off: &str, condition: Option<&Value>) -> Result<(Value, bool), ActError> {
    let def = definition(doc, flag)?;
    let before = def.clone();
    if def.get("variants").and_then(|v| v.get(off)).is_none() {
        return Err(ActError::Permanent(format!("flag {flag:?} has no variant {off:?} to serve after a kill")));
    }
    let obj = def.as_object_mut().ok_or_else(|| ActError::Permanent(format!("flag {flag:?} is not an object")))?;
    obj.insert("state".into(), Value::String("ENABLED".into()));
    match condition {
        None => {
            obj.insert("defaultVariant".into(), Value::String(off.into()));
            obj.remove("targeting");
        }
        Some(cond) if is_slice_killed(obj.get("targeting"), cond, off) || has_slice_kill(obj.get("targeting"), cond, off) => {}
        Some(cond) => {
            let previous = obj.remove("targeting").unwrap_or(Value::Null);
            obj.insert("targeting".into(), json!({ "if": [cond, off, previous] }));
        }
    }
    let changed = *def != before;
    Ok((before, changed))
}

fn is_slice_killed(targeting: Option<&Value>, condition: &Value, off: &str) -> bool {
    targeting.and_then(|t| t.get("if")).and_then(Value::as_array).is_some_and(|a| a.len() == 3 && a[0] == *condition && a[1] == json!(off))
}

/// A kill wrapper `{"if":[cond, off, inner]}`: its condition and its inner targeting.
fn wrapper<'a>(targeting: &'a Value, off: &str) -> Option<(&'a Value, &'a Value)> {
    let a = targeting.get("if")?.as_array()?;
    (a.len() == 3 && a[1] == json!(off)).then(|| (&a[0], &a[2]))
}

/// Removes the kill wrapper of `condition` from a chain of kill wrappers (a later slice kill
/// wraps an earlier one); false when it is not there.
fn unwrap_slice(targeting: &mut Value, condition: &Value, off: &str) -> bool {
    let Some((cond, inner)) = wrapper(targeting, off) else { return false };
    if cond == condition {
        *targeting = inner.clone();
        return true;
    }
    targeting.get_mut("if").and_then(|a| a.get_mut(2)).is_some_and(|inner| unwrap_slice(inner, condition, off))
}

/// Whether a kill wrapper of `condition` is anywhere in the chain of kill wrappers.
fn has_slice_kill(targeting: Option<&Value>, condition: &Value, off: &str) -> bool {
    match targeting.and_then(|t| wrapper(t, off)) {
        Some((cond, inner)) => cond == condition || has_slice_kill(Some(inner), condition, off),
        None => false,
    }
}

fn whole_killed(def: &Value, off: &str) -> bool {
    def.get("state").and_then(Value::as_str) != Some("DISABLED")
        && def.get("defaultVariant").and_then(Value::as_str) == Some(off)
        && def.get("targeting").is_none_or(Value::is_null)
}

/// Whether `flag` serves `off` (everywhere, or where `condition` holds). `state: DISABLED`
/// serves the caller's code default: not a kill.
pub fn is_killed(doc: &Value, flag: &str, off: &str, condition: Option<&Value>) -> bool {
    let Some(def) = doc.get("flags").and_then(|f| f.get(file_key(flag))) else { return false };
    if def.get("state").and_then(Value::as_str) == Some("DISABLED") {
        return false;
    }
    whole_killed(def, off) || condition.is_some_and(|c| has_slice_kill(def.get("targeting"), c, off))
}

/// Undoes a kill in `doc`: a whole-flag kill gets `saved` back; a slice kill loses its own
/// wrapper (and gets its saved `state` back). Returns the definition it replaced. Refused
/// (permanent, nothing written) when the flag no longer reads as killed, and for a slice while
/// the whole flag is killed (by a later kill, which this restore must not undo).
pub fn restored(doc: &mut Value, flag: &str, off: &str, condition: Option<&Value>, saved: &Value) -> Result<Value, ActError> {
    let def = definition(doc, flag)?;
    let current = def.clone();
    let changed = || ActError::Permanent("the flag changed since the kill (someone edited it); not overwriting their change".into());
    if current.get("state").and_then(Value::as_str) == Some("DISABLED") {
        return Err(changed());
    }
    match condition {
        None if whole_killed(&current, off) => *def = saved.clone(),
        None => return Err(changed()),
        Some(_) if whole_killed(&current, off) => {
            return Err(ActError::Permanent(
                "the whole flag is killed (by a later kill); restoring this slice would undo that kill — restore the whole-flag kill first".into(),
            ));
        }
        Some(cond) => {
            let obj = def.as_object_mut().ok_or_else(changed)?;
            let targeting = obj.get_mut("targeting").ok_or_else(changed)?;
            if !unwrap_slice(targeting, cond, off) {
                return Err(changed());
            }
            if targeting.is_null() {
                obj.remove("targeting");
            }
            if let Some(state) = saved.get("state") {
                obj.insert("state".into(), state.clone());
            }
        }
    }
    Ok(current)
}

/// The treatment's weight in a top-level `fractional` targeting, in percent.
fn fractional_share(def: &Value, treatment: &[String]) -> Option<f64> {
    let arms = def.get("targeting")?.get("fractional")?.as_array()?;
    let weights: Vec<(String, f64)> = arms
        .iter()
        .filter_map(|a| a.as_array())
        .filter_map(|a| Some((a.first()?.as_str()?.to_owned(), a.get(1).and_then(Value::as_f64).unwrap_or(1.0))))
        .collect();
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    let treated: f64 = weights.iter().filter(|(v, _)| treatment.contains(v)).map(|(_, w)| w).sum();
    (total > 0.0).then(|| 100.0 * treated / total)
}

#[async_trait::async_trait]
impl Actuator for FlagdFile {
    fn unexpressible(&self, scope: &[(String, String)]) -> Option<String> {
        scope
            .iter()
            .find(|(dim, _)| dim != "environment" && !self.slices.contains_key(dim))
            .map(|(dim, value)| format!("no context attribute is configured for {dim} (slices.{dim}), so {dim}={value} cannot be killed alone"))
    }

    async fn snapshot(&self, request: &ActionRequest) -> Result<Option<Value>, ActError> {
        let condition = self.condition(request)?;
        let doc = self.load().await?;
        let def = doc.get("flags").and_then(|f| f.get(file_key(&request.flag))).cloned();
        let def = def.ok_or_else(|| ActError::Permanent(format!("flag {:?} is not in the flagd file", request.flag)))?;
        let serving = !is_killed(&doc, &request.flag, &self.off(request), condition.as_ref());
        Ok(Some(json!({ "serving": serving, "definition": def })))
    }

    async fn kill(&self, request: &ActionRequest, _idempotency_key: &str) -> Result<Applied, ActError> {
        let _writing = self.lock.lock().await;
        let off = self.off(request);
        let condition = self.condition(request)?;
        let mut doc = self.load().await?;
        let serving = !is_killed(&doc, &request.flag, &off, condition.as_ref());
        let (before, changed) = killed(&mut doc, &request.flag, &off, condition.as_ref())?;
        if changed {
            self.save(&doc).await?;
        }
        let after = doc.get("flags").and_then(|f| f.get(file_key(&request.flag))).cloned();
        Ok(Applied {
            before: Some(json!({ "serving": serving, "definition": before })),
            after: Some(json!({ "definition": after, "changed": changed, "path": self.path })),
        })
    }

    async fn restore(&self, request: &ActionRequest, _idempotency_key: &str) -> Result<Applied, ActError> {
        let saved =
            request.saved.as_ref().and_then(|s| s.get("definition")).cloned().ok_or_else(|| ActError::Permanent("no saved definition to restore".into()))?;
        let _writing = self.lock.lock().await;
        let off = self.off(request);
        let condition = self.condition(request)?;
        let mut doc = self.load().await?;
        let current = restored(&mut doc, &request.flag, &off, condition.as_ref(), &saved)?;
        self.save(&doc).await?;
        let after = doc.get("flags").and_then(|f| f.get(file_key(&request.flag))).cloned();
        Ok(Applied { before: Some(current), after: Some(json!({ "definition": after, "path": self.path })) })
    }

    async fn set_rollout(&self, request: &ActionRequest, percent: f64, _idempotency_key: &str) -> Result<Applied, ActError> {
        if !request.slice().is_empty() {
            return Err(ActError::Permanent("a per-slice rollout in a flagd file is not supported".into()));
        }
        let treatment = request.treatment.first().cloned().ok_or_else(|| ActError::Permanent("the rollout names no treatment variant".into()))?;
        let control = self.off(request);
        let _writing = self.lock.lock().await;
        let mut doc = self.load().await?;
        let def = definition(&mut doc, &request.flag)?;
        for v in [&treatment, &control] {
            if def.get("variants").and_then(|vs| vs.get(v.as_str())).is_none() {
                return Err(ActError::Permanent(format!("flag {:?} has no variant {v:?}", request.flag)));
            }
        }
        if def.get("targeting").is_some_and(|t| t.get("fractional").is_none()) {
            return Err(ActError::Permanent("the flag's targeting is not a plain fractional split; change it by hand".into()));
        }
        let before = def.clone();
        def["targeting"] = json!({ "fractional": [[treatment, percent], [control, 100.0 - percent]] });
        let changed = *def != before;
        if changed {
            self.save(&doc).await?;
        }
        Ok(Applied { before: Some(before), after: Some(json!({ "rollout": percent, "changed": changed })) })
    }

    async fn read(&self, request: &ActionRequest) -> Result<FlagState, ActError> {
        let doc = self.load().await?;
        let condition = self.condition(request)?;
        let def = doc.get("flags").and_then(|f| f.get(file_key(&request.flag))).cloned().unwrap_or(Value::Null);
        Ok(FlagState {
            killed: Some(is_killed(&doc, &request.flag, &self.off(request), condition.as_ref())),
            rollout: fractional_share(&def, &request.treatment),
            variants: Vec::new(),
            detail: def,
        })
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
        let (before, changed) = killed(&mut d, "checkout-v2", "off", None).unwrap();
        assert!(changed);
        assert_eq!(before["defaultVariant"], "on");
        let def = &d["flags"]["checkout-v2"];
        assert_eq!(def["defaultVariant"], "off");
        assert_eq!(def["state"], "ENABLED", "DISABLED would serve the code default");
        assert!(def.get("targeting").is_none());
        let (_, again) = killed(&mut d, "checkout-v2", "off", None).unwrap();
        assert!(!again, "idempotent");
    }

    #[test]
    fn unknown_flag_or_variant_is_permanent() {
        assert!(matches!(killed(&mut doc(), "nope", "off", None), Err(ActError::Permanent(_))));
        assert!(matches!(killed(&mut doc(), "checkout-v2", "red", None), Err(ActError::Permanent(_))));
        assert!(killed(&mut doc(), "shop/checkout-v2", "off", None).is_ok(), "set namespace is stripped");
    }

    #[test]
    fn slice_kill_wraps_the_targeting_once() {
        let mut d = doc();
        let eu = json!({"in": [{"var": "region"}, ["eu-west"]]});
        let (before, changed) = killed(&mut d, "checkout-v2", "off", Some(&eu)).unwrap();
        assert!(changed);
        let t = &d["flags"]["checkout-v2"]["targeting"];
        assert_eq!(t["if"][0], eu);
        assert_eq!(t["if"][1], "off");
        assert_eq!(t["if"][2], before["targeting"], "everyone else keeps the previous targeting");
        assert_eq!(d["flags"]["checkout-v2"]["defaultVariant"], "on");
        assert!(is_killed(&d, "checkout-v2", "off", Some(&eu)));
        assert!(!is_killed(&d, "checkout-v2", "off", None), "only the slice is off");
        assert!(!killed(&mut d, "checkout-v2", "off", Some(&eu)).unwrap().1, "idempotent");
        assert_eq!(fractional_share(&before, &["on".into()]), Some(50.0));
    }

    /// Review finding 2: restoring an older regional kill must not undo a newer whole-flag
    /// kill (it used to write back the saved definition whenever the flag read as killed).
    #[test]
    fn an_older_slice_restore_never_undoes_a_newer_whole_kill() {
        let mut d = doc();
        let eu = json!({"in": [{"var": "region"}, ["eu-west"]]});
        let (a_before, _) = killed(&mut d, "checkout-v2", "off", Some(&eu)).unwrap();
        let (b_before, _) = killed(&mut d, "checkout-v2", "off", None).unwrap();
        let refused = restored(&mut d.clone(), "checkout-v2", "off", Some(&eu), &a_before);
        assert!(matches!(refused, Err(ActError::Permanent(m)) if m.contains("whole flag is killed")));
        // Restoring the whole-flag kill brings back the regional kill's definition, not D0.
        restored(&mut d, "checkout-v2", "off", None, &b_before).unwrap();
        assert!(is_killed(&d, "checkout-v2", "off", Some(&eu)), "the older regional kill still holds");
        restored(&mut d, "checkout-v2", "off", Some(&eu), &a_before).unwrap();
        assert_eq!(d, doc(), "both restores together give back the original file");
    }

    #[test]
    fn a_slice_restore_removes_only_its_own_wrapper() {
        let mut d = doc();
        let eu = json!({"in": [{"var": "region"}, ["eu-west"]]});
        let us = json!({"in": [{"var": "region"}, ["us-east"]]});
        let (eu_before, _) = killed(&mut d, "checkout-v2", "off", Some(&eu)).unwrap();
        killed(&mut d, "checkout-v2", "off", Some(&us)).unwrap();
        restored(&mut d, "checkout-v2", "off", Some(&eu), &eu_before).unwrap();
        assert!(!is_killed(&d, "checkout-v2", "off", Some(&eu)));
        assert!(is_killed(&d, "checkout-v2", "off", Some(&us)), "the later us-east kill stays");
        assert_eq!(d["flags"]["checkout-v2"]["targeting"]["if"][2], doc()["flags"]["checkout-v2"]["targeting"]);
        assert!(matches!(restored(&mut d, "checkout-v2", "off", Some(&eu), &eu_before), Err(ActError::Permanent(_))), "not twice");
    }

    /// Review S3: `state: DISABLED` serves the code default, so a killed flag switched to
    /// DISABLED by a human reads as not killed (drift), and is not overwritten by a restore.
    #[test]
    fn disabled_is_not_killed() {
        let mut d = doc();
        let (before, _) = killed(&mut d, "checkout-v2", "off", None).unwrap();
        assert!(is_killed(&d, "checkout-v2", "off", None));
        d["flags"]["checkout-v2"]["state"] = json!("DISABLED");
        assert!(!is_killed(&d, "checkout-v2", "off", None));
        assert!(matches!(restored(&mut d, "checkout-v2", "off", None, &before), Err(ActError::Permanent(_))));
    }
}

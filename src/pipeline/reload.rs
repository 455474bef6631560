//! Rule reloads: on request (`POST /v1/rules/reload`) or when a rule file changed. An invalid
//! set keeps the current one and says why; a valid one is audited with what changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::Pipeline;
use crate::store::AuditEntry;
use crate::telemetry::Metrics;
use crate::view::RulesView;

/// Lists rule files with their modification time and size, to notice edits.
pub(super) fn fingerprint(dir: &std::path::Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter_map(|e| {
            // Follow symlinks (Kubernetes ConfigMaps swap a symlinked directory).
            let meta = std::fs::metadata(e.path()).ok()?;
            Some((e.path(), meta.modified().ok()?, meta.len()))
        })
        .collect();
    out.sort();
    out
}

impl Pipeline {
    /// The file watch: reloads when a rule file changed (added, removed, edited).
    pub(super) fn reload_if_changed(&mut self) {
        let current = fingerprint(&self.settings.rules_dir);
        if current != self.rules_fingerprint {
            self.rules_fingerprint = current;
            let _ = self.reload("system:file-watch");
        }
    }

    /// Reloads the rules directory; an invalid set keeps the current one and says why.
    #[tracing::instrument(name = "flagguard.rules.reload", skip(self))]
    pub fn reload(&mut self, actor: &str) -> Result<usize, Vec<String>> {
        let now = self.clock.now();
        match crate::rulefile::load_dir(&self.settings.rules_dir, &self.settings.actuators) {
            Ok(set) => {
                let n = set.rules.len();
                let before: Vec<String> = self.engine.rules().rules.iter().map(|r| r.name.clone()).collect();
                let after: Vec<String> = set.rules.iter().map(|r| r.name.clone()).collect();
                let old_view = RulesView::of(self.engine.rules(), now, None);
                self.engine.replace_rules(Arc::new(set));
                self.rules_view = RulesView::of(self.engine.rules(), now, None);
                let diff = rules_diff(&old_view, &self.rules_view);
                // Publish at once: the API reads alert mappings from the snapshot.
                self.publish(now);
                Metrics::count(&self.metrics.rule_reloads, &[("result", "ok")]);
                self.metrics.rules_loaded.set(n as i64);
                tracing::info!(rules = n, %actor, "rules reloaded");
                let audit = AuditEntry {
                    at: now,
                    actor: actor.into(),
                    kind: "rules_reloaded".into(),
                    before: Some(serde_json::json!(before)),
                    after: Some(serde_json::json!(after)),
                    // Who changed them: the rules directory's last Git commit, when it is a work tree.
                    evidence: Some(serde_json::json!({ "diff": diff, "git": crate::manifest::git_head(&self.settings.rules_dir) })),
                    ..AuditEntry::default()
                };
                if let Err(e) = self.store.audit(&audit) {
                    tracing::error!(error = %e, "cannot audit the rule reload");
                }
                Ok(n)
            }
            Err(errors) => {
                let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                Metrics::count(&self.metrics.rule_reloads, &[("result", "invalid")]);
                tracing::warn!(errors = ?messages, %actor, "rule reload rejected; keeping the previous rules");
                self.rules_view.last_error = Some(messages.clone());
                Err(messages)
            }
        }
    }
}

/// What a rule reload changed: rules added, removed, and per changed rule its changed settings
/// (lines moving inside a file are not changes).
fn rules_diff(before: &RulesView, after: &RulesView) -> serde_json::Value {
    let by_name = |v: &RulesView| -> std::collections::BTreeMap<String, serde_json::Value> {
        v.rules
            .iter()
            .map(|r| {
                let mut value = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = value.as_object_mut() {
                    o.remove("line");
                }
                (r.name.clone(), value)
            })
            .collect()
    };
    let (old, new) = (by_name(before), by_name(after));
    let added: Vec<&String> = new.keys().filter(|k| !old.contains_key(*k)).collect();
    let removed: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
    let changed: serde_json::Map<String, serde_json::Value> = new
        .iter()
        .filter_map(|(name, rule)| {
            let diff = crate::store::diff::json_diff(old.get(name)?, rule);
            (!diff.is_empty()).then(|| (name.clone(), serde_json::json!(diff)))
        })
        .collect();
    serde_json::json!({ "added": added, "removed": removed, "changed": changed })
}

//! Verified rollback's chores on the full tick: each watched kill one step forward
//! (`act::verify`, written through the outbox), and restored flags starting afresh.

use super::Pipeline;
use crate::action::ActionState;
use crate::time::Timestamp;

impl Pipeline {
    /// Verified rollback, the telemetry half (`act::verify`): moves each watched kill through
    /// drained / recovered (or escalated / unverified / failed), queues auto-restores, audits
    /// and notifies every step, and hands an undrained kill to the fallback actuator.
    pub(super) fn verify_kills(&mut self, now: Timestamp) {
        let rows = match self.store.watched_kills(now.minus(crate::store::WATCH_AFTER_DRAIN)) {
            Ok(rows) => rows,
            Err(e) => return tracing::error!(error = %e, "cannot read the watched kills"),
        };
        let mut wake = false;
        for row in rows {
            // The drain is measured where the kill was carried out (widened, default environment).
            let Ok(request) = serde_json::from_value::<crate::act::ActionRequest>(row.effective_request().clone()) else { continue };
            let cfg = self.settings.verify.get(&request.actuator).cloned().unwrap_or_default();
            let step = crate::act::verify::step(&self.aggregator, &request, row.state, Timestamp(row.state_ms), now, &cfg);
            let stored = match step {
                crate::act::verify::Step::Wait => continue,
                crate::act::verify::Step::Restore if self.store.restore_attempted(row.id).unwrap_or(true) => continue,
                // An auto-restore is automatic too: held while a control says so, tried later.
                crate::act::verify::Step::Restore
                    if self.store.controls().map(|c| c.hold(&request.flag, Some(&request.rule), now).is_some()).unwrap_or(true) =>
                {
                    continue;
                }
                crate::act::verify::Step::Restore => {
                    let actor = format!("rule:{} (auto_restore)", request.rule);
                    self.outbox.restore(&row, &actor, Some("auto_restore after recovery".into()), now).map(|queued| {
                        if let Err(why) = queued {
                            tracing::debug!(action = row.id, %why, "auto-restore not queued yet");
                        }
                    })
                }
                crate::act::verify::Step::To { state, evidence, error } => {
                    self.outbox.verified(&row, &request, state, evidence, error, cfg.fallback.as_deref(), now).map(|moved| {
                        if moved {
                            tracing::info!(action = row.id, target = %row.target, state = %state, "kill verification step");
                        }
                    })
                }
            };
            match stored {
                Ok(()) => wake = true,
                Err(e) => tracing::error!(error = %e, action = row.id, "cannot record the kill's verification step"),
            }
        }
        if wake {
            self.wake_executor.notify_one();
        }
    }

    /// A restored flag starts afresh: its windows and rule slices are cleared, so that evidence
    /// from before the kill cannot kill it again at once (the cooldown was cleared with it).
    pub(super) fn apply_restores(&mut self, now: Timestamp) {
        let rows = match self.store.in_state_since(ActionState::Restored, self.restores_since) {
            Ok(rows) => rows,
            Err(e) => return tracing::error!(error = %e, "cannot read restored actions"),
        };
        for row in rows.iter().filter(|r| !self.restores_seen.contains(&r.id)) {
            let Some(flag) = row.request.get("flag").and_then(serde_json::Value::as_str) else { continue };
            tracing::info!(action = row.id, %flag, "flag restored: its windows and rule slices start afresh");
            self.aggregator.reset(|k| k.flag.as_str() != flag);
            self.engine.forget_flag(flag);
        }
        self.restores_seen = rows.iter().map(|r| r.id).collect();
        // Look back a little: a restore recorded with an earlier timestamp just before now.
        self.restores_since = now.minus(std::time::Duration::from_secs(60)).max(self.restores_since.min(now));
    }
}

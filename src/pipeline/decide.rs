//! Decisions into actions: each decision of a tick through the outbox door, and the slices
//! whose kill an operator control held — remembered (also across restarts) and re-armed as
//! soon as no control holds them.

use super::Pipeline;
use crate::rules::engine::Decision;
use crate::time::Timestamp;

impl Pipeline {
    /// Writes the engine's decisions through the outbox; a decision that cannot be written is
    /// re-armed (the slice fires again once seen Breached for `for`: not lost).
    pub(super) fn decide(&mut self, decisions: &[Decision]) {
        let mut wake = false;
        for decision in decisions {
            tracing::info!(rule = %decision.rule, flag = %decision.flag, slice = %decision.slice_key, kind = ?decision.kind, mode = decision.mode.as_str(), "rule fired");
            match self.outbox.decide(decision) {
                Ok(decided) => {
                    if decided.queued {
                        crate::cluster::failpoint::hit(crate::cluster::failpoint::Point::AfterDecision);
                    }
                    wake |= decided.queued;
                    if decided.held {
                        self.held.insert(decision.slice_key.clone(), (decision.flag.clone(), decision.rule.clone()));
                    }
                }
                Err(crate::store::StoreError::Fenced) => {
                    tracing::warn!(rule = %decision.rule, "the lease was lost before the decision was written; re-armed for the next leader");
                    self.engine.rearm(&decision.slice_key);
                }
                Err(e) => {
                    tracing::error!(error = %e, rule = %decision.rule, "cannot write the decision to the store; re-armed");
                    self.engine.rearm(&decision.slice_key);
                }
            }
        }
        if wake {
            self.wake_executor.notify_one();
        }
    }

    /// The slices whose kill a control held before a restart (persisted with their cooldown).
    pub(super) fn with_held(mut self) -> Self {
        self.load_held();
        self
    }

    pub(super) fn load_held(&mut self) {
        match self.store.held_slices() {
            Ok(held) => self.held.extend(held.into_iter().map(|(slice, flag, rule)| (slice, (flag, rule)))),
            Err(e) => tracing::error!(error = %e, "cannot read the held slices; they re-arm when their cooldown ends"),
        }
    }

    /// Re-arms the slices whose held kill no control holds any more: forgets their cooldown,
    /// so the rule fires again as soon as the slice is still breached for `for`.
    pub(super) fn release_held(&mut self, now: Timestamp) {
        if self.held.is_empty() {
            return;
        }
        let Ok(controls) = self.store.controls() else { return };
        let released: Vec<String> =
            self.held.iter().filter(|(_, (flag, rule))| controls.hold(flag, Some(rule), now).is_none()).map(|(slice, _)| slice.clone()).collect();
        for slice in released {
            self.held.remove(&slice);
            self.engine.rearm(&slice);
            if let Err(e) = self.outbox.rearm(&slice) {
                tracing::error!(error = %e, %slice, "cannot clear the cooldown of a released slice");
            }
            tracing::info!(%slice, "control lifted: the slice is re-armed");
        }
    }
}

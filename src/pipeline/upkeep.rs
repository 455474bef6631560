//! Upkeep: when each flag variant was first and last evaluated (flag hygiene) and audit
//! retention.

use std::time::Duration;

use super::Pipeline;
use crate::time::Timestamp;

/// How often flag usage is written to the store.
const USAGE_FLUSH: Duration = Duration::from_secs(60);
/// How often the audit log is pruned when `audit.retention` is set.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Pipeline {
    /// The store's upkeep on the full tick: flag usage written every minute, the audit log
    /// pruned hourly past `audit.retention`.
    pub(super) fn upkeep(&mut self, now: Timestamp) {
        if now.since(self.usage_flushed) >= USAGE_FLUSH {
            self.flush_usage(now);
        }
        if let Some(retention) = self.settings.audit_retention
            && now.since(self.pruned) >= PRUNE_EVERY
        {
            self.pruned = now;
            match self.store.prune_audit(now.minus(retention), now) {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "audit records past retention deleted"),
                Err(e) => tracing::error!(error = %e, "cannot prune the audit log"),
            }
        }
    }

    /// Writes when each flag variant was first and last evaluated to the store.
    pub(super) fn flush_usage(&mut self, now: Timestamp) {
        let usage = self.usage();
        if let Err(e) = self.store.record_usage(&usage) {
            tracing::error!(error = %e, "cannot record flag usage");
        }
        self.usage_flushed = now;
    }

    pub(super) fn usage(&self) -> Vec<crate::rollout::hygiene::Usage> {
        self.aggregator
            .usage()
            .map(|(f, v, first, last)| crate::rollout::hygiene::Usage {
                flag: f.to_string(),
                variant: v.to_string(),
                first_ms: first.as_millis(),
                last_ms: last.as_millis(),
            })
            .collect()
    }
}

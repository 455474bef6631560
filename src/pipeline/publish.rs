//! The read model: metrics and the snapshot the API serves, published on every full tick, and
//! rules that just went stale audited and notified.

use std::sync::Arc;

use super::Pipeline;
use crate::store::AuditEntry;
use crate::time::Timestamp;
use crate::view::Snapshot;

impl Pipeline {
    pub(super) fn publish(&mut self, now: Timestamp) {
        let m = &self.metrics;
        let counts = self.correlator.counts().clone();
        let delta = |new: u64, old: u64| new.saturating_sub(old);
        for (label, new, old) in [
            ("flagged", counts.attributed, self.counted.attributed),
            ("unflagged", counts.unflagged, self.counted.unflagged),
            ("late", counts.late, self.counted.late),
            ("duplicate", counts.duplicate, self.counted.duplicate),
            ("mixed", counts.mixed, self.counted.mixed),
            ("trace_cap", counts.trace_cap, self.counted.trace_cap),
        ] {
            m.attribution.get_or_create(&vec![("attribution", label.to_owned())]).inc_by(delta(new, old));
        }
        m.traces_evicted.get_or_create(&vec![("reason", "idle".to_owned())]).inc_by(delta(counts.evicted_idle, self.counted.evicted_idle));
        m.traces_evicted.get_or_create(&vec![("reason", "capacity".to_owned())]).inc_by(delta(counts.evicted_capacity, self.counted.evicted_capacity));
        m.traces_evicted.get_or_create(&vec![("reason", "tombstone_cap".to_owned())]).inc_by(delta(counts.tombstones_dropped, self.counted.tombstones_dropped));
        m.evaluation_errors.inc_by(delta(counts.evaluation_errors, self.counted.evaluation_errors));
        m.evaluations_without_variant.inc_by(delta(counts.without_variant, self.counted.without_variant));
        m.series_overflow.inc_by(self.aggregator.overflow().saturating_sub(m.series_overflow.get()));
        self.counted = counts;
        m.traces_in_flight.set(self.correlator.live_traces() as i64);
        m.queue_depth.set(self.queue_depth as i64);
        m.series.set(self.aggregator.series_count() as i64);
        let mut snapshot = Snapshot::build(&self.aggregator, now);
        snapshot.verdicts = self.engine.views();
        snapshot.transitions = self.engine.transitions();
        for label in ["healthy", "breached", "inconclusive", "no_data"] {
            let n = snapshot.verdicts.iter().filter(|v| v.verdict.label() == label).count();
            m.verdicts.get_or_create(&vec![("verdict", label.to_owned())]).set(n as i64);
        }
        snapshot.stale_rules = self.engine.stale_rules(now);
        m.rules_stale.set(snapshot.stale_rules.len() as i64);
        self.report_newly_stale(&snapshot.stale_rules, now);
        snapshot.rules = self.rules_view.clone();
        snapshot.rule_set = self.engine.rules().clone();
        snapshot.traces_in_flight = self.correlator.live_traces();
        snapshot.usage = self.usage();
        snapshot.scale_out = match (&self.shard, &self.merge) {
            (Some(shard), _) => serde_json::json!({ "role": "shard", "seq": shard.seq }),
            (_, Some(merge)) => {
                let mut coverage = merge.coverage_json();
                coverage["role"] = "evaluator".into();
                coverage
            }
            _ => serde_json::Value::Null,
        };
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// Audits (and notifies) rules that just became stale: dead ingest must not quietly turn
    /// protection off.
    pub(super) fn report_newly_stale(&mut self, stale: &[String], now: Timestamp) {
        for rule in stale.iter().filter(|r| !self.stale.contains(r)) {
            let text = format!("rule {rule} is stale: its flag has sent no telemetry for longer than stale_after; it cannot protect anything");
            tracing::warn!(%rule, "rule is stale: no telemetry for its flag");
            let evidence = serde_json::json!({ "rule": rule, "verdict": "stale" });
            let audit = AuditEntry {
                at: now,
                actor: "system".into(),
                kind: "rule_stale".into(),
                rule: Some(rule.clone()),
                evidence: Some(evidence.clone()),
                ..AuditEntry::default()
            };
            match self
                .store
                .audit(&audit)
                .and_then(|_| self.outbox.notify(&crate::act::notify::Note::new(crate::act::notify::Severity::Warning, &text, &evidence, None), now))
            {
                Err(e) => tracing::error!(error = %e, "cannot record the stale rule"),
                Ok(true) => self.wake_executor.notify_one(),
                Ok(false) => {}
            }
        }
        self.stale = stale.to_vec();
    }
}

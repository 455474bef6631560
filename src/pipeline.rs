//! The pipeline shell: one task that owns the correlator, the windows and the rule engine
//! (sync cores) and feeds them from one `select!` — batches from ingest, a short tick for
//! changed series, a slow tick for every slice, snapshots and rule reloads — so nothing in the
//! hot path takes a lock. Decisions are written to the outbox here, synchronously, before the
//! executor is woken: a decided kill is durable before anything else happens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::aggregate::Aggregator;
use crate::aggregate::history::{History, HistoryQuery, history};
use crate::correlate::{CorrelateCounts, Correlator};
use crate::model::Batch;
use crate::rules::engine::RuleEngine;
use crate::store::{AuditEntry, Store};
use crate::telemetry::Metrics;
use crate::time::{Clock, Timestamp};
use crate::view::{RulesView, Snapshot};

/// How often flag usage is written to the store.
const USAGE_FLUSH: Duration = Duration::from_secs(60);
/// How often the audit log is pruned when `audit.retention` is set.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Requests to the pipeline from the API.
pub enum Command {
    /// Reload the rules now; answers the number of rules or every error.
    ReloadRules { actor: String, reply: oneshot::Sender<Result<usize, Vec<String>>> },
    /// One flag's time series from the windows (the dashboard's flag page).
    History { query: HistoryQuery, reply: oneshot::Sender<History> },
}

/// Pipeline timing and rule-loading settings.
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    pub tick: Duration,
    pub snapshot_interval: Duration,
    pub reload_interval: Duration,
    pub rules_dir: PathBuf,
    pub actuators: std::collections::BTreeSet<String>,
    pub notify: bool,
    /// Per actuator: how its kills are verified.
    pub verify: std::collections::HashMap<String, crate::config::VerifyConfig>,
    /// Audit records older than this are deleted (hourly). None: kept forever.
    pub audit_retention: Option<Duration>,
}

pub struct Pipeline {
    pub correlator: Correlator,
    pub aggregator: Aggregator,
    pub engine: RuleEngine,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub wake_executor: Arc<Notify>,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub settings: PipelineSettings,
    pub rules_view: RulesView,
    counted: CorrelateCounts,
    queue_depth: usize,
    /// Rules reported stale at the last snapshot (a newly stale rule is audited and notified).
    stale: Vec<String>,
    rules_fingerprint: Vec<(PathBuf, SystemTime, u64)>,
    /// Restores already applied to the windows (ids), and since when to look for new ones.
    restores_seen: std::collections::HashSet<i64>,
    restores_since: Timestamp,
    /// When flag usage was last written to the store (flag hygiene).
    usage_flushed: Timestamp,
    /// When the audit log was last pruned (retention).
    pruned: Timestamp,
    /// Slices whose kill an operator control held: slice key → (flag, rule).
    held: std::collections::HashMap<String, (String, String)>,
}

/// Lists rule files with their modification time and size, to notice edits.
fn fingerprint(dir: &std::path::Path) -> Vec<(PathBuf, SystemTime, u64)> {
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        correlator: Correlator,
        aggregator: Aggregator,
        engine: RuleEngine,
        store: Store,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        wake_executor: Arc<Notify>,
        snapshots: watch::Sender<Arc<Snapshot>>,
        settings: PipelineSettings,
    ) -> Pipeline {
        let rules_view = RulesView::of(engine.rules(), clock.now(), None);
        let rules_fingerprint = fingerprint(&settings.rules_dir);
        let restores_since = clock.now();
        Pipeline {
            correlator,
            aggregator,
            engine,
            store,
            metrics,
            clock,
            wake_executor,
            snapshots,
            settings,
            rules_view,
            queue_depth: 0,
            stale: Vec::new(),
            counted: CorrelateCounts::default(),
            rules_fingerprint,
            restores_seen: Default::default(),
            restores_since,
            usage_flushed: restores_since,
            pruned: Timestamp(0),
            held: Default::default(),
        }
        .with_held()
    }

    /// The slices whose kill a control held before a restart (persisted with their cooldown).
    fn with_held(mut self) -> Self {
        match self.store.held_slices() {
            Ok(held) => self.held.extend(held.into_iter().map(|(slice, flag, rule)| (slice, (flag, rule)))),
            Err(e) => tracing::error!(error = %e, "cannot read the held slices; they re-arm when their cooldown ends"),
        }
        self
    }

    /// Runs until `shutdown`; then drains the batches already queued, judges once more and
    /// publishes a last snapshot.
    pub async fn run(mut self, mut batches: mpsc::Receiver<Batch>, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_full = Timestamp(0);
        let mut last_reload_check = self.clock.now();
        loop {
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => {
                        self.queue_depth = batches.len();
                        self.ingest(batch);
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let now = self.clock.now();
                    let full = now.since(last_full) >= self.settings.snapshot_interval;
                    let _ = self.on_tick(now, full);
                    if full {
                        last_full = now;
                    }
                    if now.since(last_reload_check) >= self.settings.reload_interval {
                        last_reload_check = now;
                        let current = fingerprint(&self.settings.rules_dir);
                        if current != self.rules_fingerprint {
                            self.rules_fingerprint = current;
                            let _ = self.reload("system:file-watch");
                        }
                    }
                }
                Some(command) = commands.recv() => match command {
                    Command::ReloadRules { actor, reply } => {
                        self.rules_fingerprint = fingerprint(&self.settings.rules_dir);
                        let _ = reply.send(self.reload(&actor));
                    }
                    Command::History { query, reply } => {
                        let _ = reply.send(history(&self.aggregator, &query, self.clock.now()));
                    }
                },
                _ = shutdown.cancelled() => break,
            }
        }
        batches.close();
        while let Some(batch) = batches.recv().await {
            self.ingest(batch);
        }
        let _ = self.on_tick(self.clock.now(), true);
        self.flush_usage(self.clock.now());
    }

    /// Remembers a decision an operator control held (its slice re-arms once the control is
    /// lifted).
    fn held_if_so(&mut self, decision: &crate::rules::engine::Decision, now: Timestamp) {
        let held = self.store.controls().map(|c| c.hold(&decision.flag, Some(&decision.rule), now).is_some()).unwrap_or(false);
        if held {
            self.held.insert(decision.slice_key.clone(), (decision.flag.clone(), decision.rule.clone()));
        }
    }

    /// Re-arms the slices whose held kill no control holds any more: forgets their cooldown,
    /// so the rule fires again as soon as the slice is still breached for `for`.
    fn release_held(&mut self, now: Timestamp) {
        if self.held.is_empty() {
            return;
        }
        let Ok(controls) = self.store.controls() else { return };
        let released: Vec<String> =
            self.held.iter().filter(|(_, (flag, rule))| controls.hold(flag, Some(rule), now).is_none()).map(|(slice, _)| slice.clone()).collect();
        for slice in released {
            self.held.remove(&slice);
            self.engine.rearm(&slice);
            if let Err(e) = self.store.clear_cooldown(&slice) {
                tracing::error!(error = %e, %slice, "cannot clear the cooldown of a released slice");
            }
            tracing::info!(%slice, "control lifted: the slice is re-armed");
        }
    }

    /// Writes when each flag variant was first and last evaluated to the store.
    fn flush_usage(&mut self, now: Timestamp) {
        let usage = self.usage();
        if let Err(e) = self.store.record_usage(&usage) {
            tracing::error!(error = %e, "cannot record flag usage");
        }
        self.usage_flushed = now;
    }

    fn usage(&self) -> Vec<crate::rollout::hygiene::Usage> {
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

    /// Feeds one batch through the correlator into the windows.
    pub fn ingest(&mut self, batch: Batch) {
        let now = self.clock.now();
        self.metrics.queue_items.dec_by((batch.evaluations.len() + batch.outcomes.len()) as i64);
        for evaluation in &batch.evaluations {
            self.correlator.evaluation(evaluation, now, &mut self.aggregator);
        }
        for outcome in batch.outcomes {
            self.correlator.outcome(outcome, now, &mut self.aggregator);
        }
    }

    /// Evicts idle traces, judges changed slices (all of them when `full`), submits decisions,
    /// and when `full` publishes a snapshot.
    pub fn on_tick(&mut self, now: Timestamp, full: bool) -> Vec<crate::rules::engine::Decision> {
        let mut fired = Vec::new();
        self.correlator.evict_idle(now, &mut self.aggregator);
        let changed = self.aggregator.take_changed();
        if full || !changed.is_empty() {
            let decisions = self.engine.evaluate(&mut self.aggregator, (!full).then_some(&changed), now);
            let mut wake = false;
            for decision in &decisions {
                tracing::info!(rule = %decision.rule, flag = %decision.flag, slice = %decision.slice_key, kind = ?decision.kind, mode = decision.mode.as_str(), "rule fired");
                match crate::act::submit(&self.store, decision, self.settings.notify) {
                    Ok(queued) => {
                        wake |= queued;
                        if decision.kind == crate::rules::engine::DecisionKind::Kill && decision.mode == crate::rules::Mode::Enforce {
                            self.held_if_so(decision, now);
                        }
                    }
                    // Re-armed: the slice fires again once seen Breached for `for`: not lost.
                    Err(e) => {
                        tracing::error!(error = %e, rule = %decision.rule, "cannot write the decision to the store; re-armed");
                        self.engine.rearm(&decision.slice_key);
                    }
                }
            }
            if wake {
                self.wake_executor.notify_one();
            }
            fired = decisions;
        }
        if full {
            self.release_held(now);
            self.verify_kills(now);
            self.apply_restores(now);
            self.aggregator.drop_idle(now);
            self.publish(now);
            self.progress(now);
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
        fired
    }

    /// Verified rollback, the telemetry half (`act::verify`): moves each watched kill through
    /// drained / recovered (or escalated / unverified / failed), queues auto-restores, audits
    /// and notifies every step, and hands an undrained kill to the fallback actuator.
    fn verify_kills(&mut self, now: Timestamp) {
        let rows = match self.store.watched_kills(now.minus(crate::store::WATCH_AFTER_DRAIN)) {
            Ok(rows) => rows,
            Err(e) => return tracing::error!(error = %e, "cannot read the watched kills"),
        };
        let mut wake = false;
        for row in rows {
            // The drain is measured where the kill was carried out (widened, default environment).
            let Ok(request) = serde_json::from_value::<crate::act::ActionRequest>(row.effective_request().clone()) else { continue };
            let cfg = self.settings.verify.get(&request.actuator).cloned().unwrap_or_default();
            let step = crate::act::verify::step(&self.aggregator, &request, &row.state, Timestamp(row.state_ms), now, &cfg);
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
                    crate::act::submit_restore(&self.store, &row, &actor, Some("auto_restore after recovery".into()), now).map(|queued| {
                        if let Err(why) = queued {
                            tracing::debug!(action = row.id, %why, "auto-restore not queued yet");
                        }
                    })
                }
                crate::act::verify::Step::To { state, evidence, error } => self.record_step(&row, &request, state, evidence, error, &cfg, now),
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

    #[allow(clippy::too_many_arguments)]
    fn record_step(
        &self,
        row: &crate::store::ActionRow,
        request: &crate::act::ActionRequest,
        state: &str,
        evidence: serde_json::Value,
        error: Option<String>,
        cfg: &crate::config::VerifyConfig,
        now: Timestamp,
    ) -> Result<(), crate::store::StoreError> {
        let audit = AuditEntry {
            at: now,
            actor: "system".into(),
            kind: format!("kill_{state}"),
            rule: Some(request.rule.clone()).filter(|r| !r.is_empty()),
            target: Some(row.target.clone()),
            after: Some(serde_json::json!({ "observed": evidence, "error": error })),
            evidence: Some(request.evidence.clone()),
            ..AuditEntry::default()
        };
        // The step, its fallback kill and its notification in one transaction: none is lost.
        let mut follow_ups = Vec::new();
        if state == "escalated"
            && let Some(fallback) = &cfg.fallback
        {
            follow_ups.push(crate::act::fallback_kill(request, fallback, row.id, &audit, now));
        }
        if self.settings.notify {
            let text = match (state, &error) {
                (_, Some(error)) => format!("ESCALATION ({state}): {} (action {}): {error}", crate::act::describe(request), row.id),
                ("drained", None) => format!("the killed cohort of {} has drained (action {})", crate::act::describe(request), row.id),
                _ => format!("{} is {state} after flagguard's kill (action {})", crate::act::describe(request), row.id),
            };
            follow_ups.push(crate::act::notify::notification(&text, &request.evidence, now));
        }
        if self.store.transition_with(row.id, &[row.state.as_str()], state, error.as_deref(), &audit, &follow_ups)? {
            tracing::info!(action = row.id, target = %row.target, state, "kill verification step");
        }
        Ok(())
    }

    /// A restored flag starts afresh: its windows and rule slices are cleared, so that evidence
    /// from before the kill cannot kill it again at once (the cooldown was cleared with it).
    fn apply_restores(&mut self, now: Timestamp) {
        let rows = match self.store.in_state_since("restored", self.restores_since) {
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

    fn publish(&mut self, now: Timestamp) {
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
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// Audits (and notifies) rules that just became stale: dead ingest must not quietly turn
    /// protection off.
    fn report_newly_stale(&mut self, stale: &[String], now: Timestamp) {
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
            let stored = self
                .store
                .audit(&audit)
                .and_then(|_| if self.settings.notify { crate::act::notify::enqueue(&self.store, &text, &evidence, now) } else { Ok(()) });
            if let Err(e) = stored {
                tracing::error!(error = %e, "cannot record the stale rule");
            } else if self.settings.notify {
                self.wake_executor.notify_one();
            }
        }
        self.stale = stale.to_vec();
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
                    evidence: Some(serde_json::json!({ "diff": diff })),
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

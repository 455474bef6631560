//! The pipeline shell: one task that owns the correlator, the windows and the rule engine
//! (sync cores) and feeds them from one `select!` — batches from ingest, a short tick for
//! changed series, a slow tick for every slice, snapshots and rule reloads — so nothing in the
//! hot path takes a lock. Decisions are written through the outbox door synchronously, before
//! the executor is woken: a decided kill is durable before anything else happens.
//!
//! One file per chore after the tick's evaluation: [`decide`] (decisions and held slices),
//! [`verify`] (watched kills, restores), [`publish`] (the snapshot and stale rules),
//! [`reload`] (rule files), [`upkeep`] (flag usage, audit retention), [`checkpoint`] (the
//! state a restart restores), [`shard`] (scale-out: a shard's deltas, an evaluator's frames);
//! rollout plans move in `rollout::run`, handed what they need.

pub mod checkpoint;
mod decide;
mod publish;
mod reload;
pub mod shard;
mod upkeep;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::act::outbox::Outbox;
use crate::aggregate::Aggregator;
use crate::aggregate::history::{History, HistoryQuery, history};
use crate::correlate::{CorrelateCounts, Correlator};
use crate::model::Batch;
use crate::rules::engine::{Decision, RuleEngine};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::time::{Clock, Timestamp};
use crate::view::{RulesView, Snapshot};

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
    /// Per actuator: how its kills are verified.
    pub verify: std::collections::HashMap<String, crate::config::VerifyConfig>,
    /// Audit records older than this are deleted (hourly). None: kept forever.
    pub audit_retention: Option<Duration>,
}

pub struct Pipeline {
    correlator: Correlator,
    aggregator: Aggregator,
    engine: RuleEngine,
    /// Reads; every action is written through `outbox`.
    store: Store,
    outbox: Outbox,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    wake_executor: Arc<Notify>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    settings: PipelineSettings,
    rules_view: RulesView,
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
    /// Cluster mode: the lease; only its holder decides and runs the chores that act.
    /// `None` (embedded): always the one that acts.
    fence: Option<Arc<crate::store::Fence>>,
    /// Whether this replica acted at the last tick (a takeover reloads the shared state).
    acting: bool,
    /// Checkpoints of the windows and slice state (`None`: off, as in replays).
    checkpointer: Option<checkpoint::Checkpointer>,
    /// Scale-out: a shard publishes its window deltas and judges nothing; an evaluator applies
    /// the shards' deltas (`crate::shard`).
    shard: Option<shard::ShardSide>,
    merge: Option<shard::MergeSide>,
    /// The rollout plans' external checks (`rollout::checks`), run by their own task.
    checks: crate::rollout::checks::CheckResults,
    /// `[governance]`: a plan's step to 100 % in these environments waits for an approval.
    regulated: Vec<String>,
    approval_expiry: Duration,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        correlator: Correlator,
        aggregator: Aggregator,
        engine: RuleEngine,
        outbox: Outbox,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        wake_executor: Arc<Notify>,
        snapshots: watch::Sender<Arc<Snapshot>>,
        settings: PipelineSettings,
    ) -> Pipeline {
        let rules_view = RulesView::of(engine.rules(), clock.now(), None);
        let rules_fingerprint = reload::fingerprint(&settings.rules_dir);
        let restores_since = clock.now();
        Pipeline {
            correlator,
            aggregator,
            engine,
            store: outbox.store().clone(),
            outbox,
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
            fence: None,
            acting: true,
            checkpointer: None,
            shard: None,
            merge: None,
            checks: Default::default(),
            regulated: Vec::new(),
            approval_expiry: Duration::from_secs(24 * 3600),
        }
        .with_held()
    }

    /// Cluster mode: judges always, decides and acts only while `fence` holds the lease.
    pub fn with_fence(mut self, fence: Arc<crate::store::Fence>) -> Self {
        self.fence = Some(fence);
        self.acting = false;
        self
    }

    /// `[governance]`: in `regulated` environments a plan's step to 100 % is a proposal.
    pub fn with_governance(mut self, regulated: Vec<String>, approval_expiry: Duration) -> Self {
        self.regulated = regulated;
        self.approval_expiry = approval_expiry;
        self
    }

    /// The plans' external checks, as the checks task publishes them.
    pub fn with_checks(mut self, checks: crate::rollout::checks::CheckResults) -> Self {
        self.checks = checks;
        self
    }

    /// Writes checkpoints as `settings` say, and restores the last one when run.
    pub fn with_checkpoints(mut self, settings: checkpoint::CheckpointSettings) -> Self {
        self.checkpointer = Some(checkpoint::Checkpointer::new(settings, self.clock.now()));
        self
    }

    /// A shard: publishes window deltas instead of judging.
    pub fn with_shard(mut self, side: shard::ShardSide) -> Self {
        self.shard = Some(side);
        self
    }

    /// An evaluator: judges the shards' merged windows.
    pub fn with_merge(mut self, side: shard::MergeSide) -> Self {
        self.merge = Some(side);
        self
    }

    /// Whether this replica decides now. On a takeover, the state the previous leader shared
    /// through the store is reloaded first: cooldowns (a slice it fired does not fire again)
    /// and held slices. Slices still breached fire at this very tick.
    fn acting(&mut self) -> bool {
        let Some(fence) = &self.fence else { return true };
        let leader = fence.epoch().is_some();
        if leader && !self.acting {
            let since = self.clock.now().minus(self.engine.incident_window());
            match self.store.last_fired().and_then(|fired| Ok((fired, self.store.kills_since(since)?))) {
                Ok((fired, kills)) => {
                    self.engine.load_fired(fired);
                    self.engine.load_recent_kills(kills);
                    self.held.clear();
                    self.load_held();
                    tracing::info!("leader: deciding and acting (cooldowns, recent kills and held slices reloaded)");
                }
                // Not yet: deciding without the previous leader's cooldowns could fire twice.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload the shared rule state; not deciding yet");
                    return false;
                }
            }
        }
        self.acting = leader;
        leader
    }

    /// Restores the last checkpoint, then runs until `shutdown`; then drains the batches
    /// already queued, judges once more, publishes a last snapshot and writes a last checkpoint.
    pub async fn run(mut self, mut batches: mpsc::Receiver<crate::ingest::Queued>, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        self.restore_checkpoint(self.clock.now());
        let mut images = self.shard.as_mut().and_then(|s| s.images.take());
        let mut inputs = self.merge.as_mut().and_then(|m| m.inputs.take());
        if let Some(merge) = &self.merge {
            let _ = merge.ready.send(true);
        }
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_full = Timestamp(0);
        let mut last_reload_check = self.clock.now();
        loop {
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(queued) => {
                        self.queue_depth = batches.len();
                        // The reservation is released once the batch is fed through.
                        self.ingest(queued.batch);
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
                        self.reload_if_changed();
                    }
                }
                Some(reply) = recv(&mut images) => self.answer_image(reply, self.clock.now()),
                Some(input) = recv(&mut inputs) => self.apply_input(input, self.clock.now()),
                Some(command) = commands.recv() => match command {
                    Command::ReloadRules { actor, reply } => {
                        self.rules_fingerprint = reload::fingerprint(&self.settings.rules_dir);
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
        while let Some(queued) = batches.recv().await {
            self.ingest(queued.batch);
        }
        let _ = self.on_tick(self.clock.now(), true);
        self.flush_usage(self.clock.now());
        self.checkpoint_at_stop(self.clock.now()).await;
    }

    /// The rule engine (its rules, verdicts and cooldowns).
    pub fn engine(&self) -> &RuleEngine {
        &self.engine
    }

    /// The rule engine, for replays that read its recorded transitions.
    pub fn engine_mut(&mut self) -> &mut RuleEngine {
        &mut self.engine
    }

    /// Feeds one batch through the correlator into the windows (and, on a shard, the delta).
    pub fn ingest(&mut self, batch: Batch) {
        let now = self.clock.now();
        match &mut self.shard {
            Some(shard) => feed(&mut self.correlator, &mut shard::Tee { windows: &mut self.aggregator, delta: &mut shard.deltas }, batch, now),
            None => feed(&mut self.correlator, &mut self.aggregator, batch, now),
        }
    }

    /// Evicts idle traces, judges changed slices (all of them when `full`), writes the
    /// decisions through the outbox, and when `full` runs every slower chore: re-arming held
    /// slices, verifying kills, applying restores, publishing a snapshot, moving rollout plans
    /// and the store's upkeep.
    pub fn on_tick(&mut self, now: Timestamp, full: bool) -> Vec<Decision> {
        let mut fired = Vec::new();
        if let Some(shard) = &mut self.shard {
            // A shard judges nothing (its windows hold a share of the traffic): it publishes.
            self.correlator.evict_idle(now, &mut shard::Tee { windows: &mut self.aggregator, delta: &mut shard.deltas });
            self.flush_delta(now);
            self.aggregator.take_changed();
            if full {
                self.aggregator.drop_idle(now);
                self.publish(now);
            }
            self.checkpoint_step(now);
            return fired;
        }
        self.correlator.evict_idle(now, &mut self.aggregator);
        let changed = self.aggregator.take_changed();
        let acting = self.acting();
        if full || !changed.is_empty() {
            fired = self.engine.evaluate(&mut self.aggregator, (!full).then_some(&changed), now);
            if let Some(merge) = &self.merge {
                let coverage = merge.coverage_json();
                for decision in &mut fired {
                    decision.record["coverage"] = coverage.clone();
                }
            }
            if acting {
                self.decide(&fired);
            } else {
                // A standby judges (its `for` clocks and tests stay warm) but does not decide:
                // the slice stays armed, so it fires at once if this replica takes over.
                for decision in &fired {
                    self.engine.rearm(&decision.slice_key);
                }
            }
        }
        if full {
            if acting {
                self.release_held(now);
                self.verify_kills(now);
            }
            self.apply_restores(now);
            self.aggregator.drop_idle(now);
            self.publish(now);
            if acting {
                self.progress(now);
                self.upkeep(now);
            }
        }
        self.checkpoint_step(now);
        fired
    }

    /// Moves every running rollout plan one decision forward (`rollout::run`), from the
    /// snapshot just published.
    fn progress(&mut self, now: Timestamp) {
        let plans = self.engine.rules().rollouts.clone();
        if plans.is_empty() {
            return;
        }
        let snapshot = self.snapshots.borrow().clone();
        let progress = crate::rollout::run::Progress {
            outbox: &self.outbox,
            aggregator: &self.aggregator,
            snapshot: &snapshot,
            wake: &self.wake_executor,
            checks: &self.checks,
            regulated: &self.regulated,
            approval_expiry: self.approval_expiry,
        };
        progress.run(&plans, now);
    }
}

/// One batch through the correlator into `sink`.
fn feed(correlator: &mut Correlator, sink: &mut impl crate::correlate::Sink, batch: Batch, now: Timestamp) {
    for evaluation in &batch.evaluations {
        correlator.evaluation(evaluation, now, sink);
    }
    for outcome in batch.outcomes {
        correlator.outcome(outcome, now, sink);
    }
}

/// The next message of an optional receiver (never, without one).
async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

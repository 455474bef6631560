//! The trace join. A flag evaluated anywhere in a trace exposes the whole trace to that cohort;
//! every entry span of the trace is one request of its service. Per trace in flight it keeps a
//! small summary — the cohorts seen and the outcomes seen — never the spans, and records an
//! observation the moment both a cohort and an outcome are known, whatever order they arrive in.
//!
//! Invariants:
//! - an outcome is attributed at most once per cohort (entry spans are deduplicated by span id);
//! - a trace idle for `trace_idle` is evicted: if it never saw a flag its outcomes count as
//!   unflagged; otherwise a tombstone (cohorts + span ids) lives `tombstone_ttl` more so that
//!   late spans are still attributed (counted as late);
//! - the number of live traces is capped at `max_traces`; at the cap the oldest traces *of the
//!   service holding the most live traces* are evicted early and counted, so one flooding sender
//!   (a service with broken propagation, every span its own trace) evicts its own traces, not the
//!   other services' — whose outcomes would otherwise count as unflagged;
//! - the same flag seen with two variants in one trace is mixed: it stops exposing the trace
//!   (observations already recorded stay) and is counted;
//! - evaluation errors and evaluations without a trace id are exposures only.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Dims, Evaluation, FlagKey, Outcome, SpanId, TraceId, Variant};
use crate::time::Timestamp;

/// Correlator settings (see `[correlate]` in the configuration reference).
#[derive(Clone, Debug)]
pub struct CorrelateSettings {
    pub trace_idle: Duration,
    pub tombstone_ttl: Duration,
    pub max_traces: usize,
}

impl Default for CorrelateSettings {
    fn default() -> Self {
        CorrelateSettings { trace_idle: Duration::from_secs(30), tombstone_ttl: Duration::from_secs(120), max_traces: 200_000 }
    }
}

/// Where observations go (the aggregator, or a test recorder).
pub trait Sink {
    /// One request outcome attributed to cohort (flag, variant) in the outcome's slice.
    /// `user` is the trace's user (the first `feature_flag.context.id` hash seen in it), for
    /// the user-level variance of sequential tests.
    fn observe(&mut self, flag: &FlagKey, variant: &Variant, outcome: &Outcome, user: Option<u64>, now: Timestamp);
    /// One request outcome of a trace that evaluated no flag.
    fn unflagged(&mut self, dims: &Dims, error: bool, latency_us: u64, now: Timestamp);
    /// One flag evaluation (an exposure), in the evaluating service's slice.
    fn exposure(&mut self, evaluation: &Evaluation, now: Timestamp);
}

/// Counts of what happened to outcomes and traces, since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorrelateCounts {
    pub attributed: u64,
    pub unflagged: u64,
    pub late: u64,
    pub duplicate: u64,
    pub mixed: u64,
    pub evicted_idle: u64,
    pub evicted_capacity: u64,
    /// Tombstones dropped early because `max_traces` tombstones were already kept.
    pub tombstones_dropped: u64,
    pub evaluation_errors: u64,
    pub without_variant: u64,
    /// Outcomes or flags beyond a trace's caps (`MAX_OUTCOMES_PER_TRACE`,
    /// `MAX_FLAGS_PER_TRACE`): an outcome is still attributed to the flags already seen but not
    /// kept for later ones; a flag is not attributed in that trace.
    pub trace_cap: u64,
}

/// Outcomes (entry spans) one trace keeps for flags evaluated later. Real traces have a few
/// dozen; the cap bounds what one crafted request can cost (every outcome × every flag).
pub const MAX_OUTCOMES_PER_TRACE: usize = 1024;
/// Distinct flags attributed in one trace.
pub const MAX_FLAGS_PER_TRACE: usize = 64;

#[derive(Clone, Debug, PartialEq)]
enum Cohort {
    Exposed(FlagKey, Variant),
    Mixed(FlagKey),
}

impl Cohort {
    fn flag(&self) -> &FlagKey {
        match self {
            Cohort::Exposed(f, _) | Cohort::Mixed(f) => f,
        }
    }
}

#[derive(Debug)]
struct TraceState {
    last_seen: Timestamp,
    cohorts: Vec<Cohort>,
    outcomes: Vec<Outcome>,
    /// Set once evicted: the trace is a tombstone until then; `outcomes` is then empty and
    /// `seen` keeps the span ids for dedupe.
    tombstone_until: Option<Timestamp>,
    seen: Vec<SpanId>,
    /// The trace's user: the first context id hash among its evaluations.
    user: Option<u64>,
    /// The service of the span that opened the trace (capacity is shared per service).
    owner: Arc<str>,
}

impl TraceState {
    fn new(now: Timestamp, owner: Arc<str>) -> Self {
        TraceState { last_seen: now, cohorts: Vec::new(), outcomes: Vec::new(), tombstone_until: None, seen: Vec::new(), user: None, owner }
    }
}

/// Live traces per service, oldest first (entries of traces no longer live are skipped, and
/// compacted away once they are half of a queue).
#[derive(Default)]
struct Owned {
    live: usize,
    queue: std::collections::VecDeque<(Timestamp, TraceId)>,
}

/// Traces evicted per capacity scan beyond the one needed: the scan for the busiest service is
/// linear in the services, so it is amortised over a batch (1 % of `max_traces`).
fn eviction_batch(max_traces: usize) -> usize {
    (max_traces / 100).max(1)
}

/// Traces in flight by id. foldhash (randomly seeded, so client-chosen trace ids cannot
/// collide on purpose) instead of SipHash: SipHash was 5 % of the receiver's CPU under load.
type TraceMap = HashMap<TraceId, TraceState, foldhash::fast::RandomState>;

/// The correlator: a map of traces in flight and a deadline heap for eviction.
pub struct Correlator {
    settings: CorrelateSettings,
    traces: TraceMap,
    /// (deadline, trace): checked lazily, a trace's real deadline may have moved later.
    deadlines: BinaryHeap<Reverse<(Timestamp, TraceId)>>,
    /// Tombstones in the order they were made, which is the order they expire (one TTL): so
    /// they need no heap entry, and at most `max_traces` are kept (oldest dropped first), which
    /// bounds memory at any load.
    tombstones: std::collections::VecDeque<(Timestamp, TraceId)>,
    live: usize,
    /// Per service: its live traces, for capacity eviction.
    owners: HashMap<Arc<str>, Owned, foldhash::fast::RandomState>,
    counts: CorrelateCounts,
}

/// The trace-opening arguments of [`Correlator::state`].
struct Opening<'a> {
    traces: &'a mut TraceMap,
    deadlines: &'a mut BinaryHeap<Reverse<(Timestamp, TraceId)>>,
    owners: &'a mut HashMap<Arc<str>, Owned, foldhash::fast::RandomState>,
    live: &'a mut usize,
    trace_idle: Duration,
}

impl Correlator {
    pub fn new(settings: CorrelateSettings) -> Self {
        Correlator {
            settings,
            traces: TraceMap::default(),
            deadlines: BinaryHeap::new(),
            tombstones: Default::default(),
            live: 0,
            owners: Default::default(),
            counts: CorrelateCounts::default(),
        }
    }

    pub fn counts(&self) -> &CorrelateCounts {
        &self.counts
    }

    /// Traces held (live and tombstones).
    pub fn traces_held(&self) -> usize {
        self.traces.len()
    }

    pub fn live_traces(&self) -> usize {
        self.live
    }

    /// Handles one flag evaluation.
    pub fn evaluation(&mut self, evaluation: &Evaluation, now: Timestamp, sink: &mut impl Sink) {
        sink.exposure(evaluation, now);
        if evaluation.error_type.is_some() {
            self.counts.evaluation_errors += 1;
            return;
        }
        let Some(variant) = &evaluation.variant else {
            self.counts.without_variant += 1;
            return;
        };
        let Some(trace) = evaluation.trace else { return };
        let state = Self::state(
            Opening {
                traces: &mut self.traces,
                deadlines: &mut self.deadlines,
                owners: &mut self.owners,
                live: &mut self.live,
                trace_idle: self.settings.trace_idle,
            },
            trace,
            &evaluation.dims.service,
            now,
        );
        state.last_seen = now;
        state.user = state.user.or(evaluation.context);
        let full = state.cohorts.len() >= MAX_FLAGS_PER_TRACE;
        match state.cohorts.iter_mut().find(|c| c.flag() == &evaluation.flag) {
            Some(Cohort::Exposed(_, seen)) if seen == variant => {}
            Some(cohort @ Cohort::Exposed(..)) => {
                *cohort = Cohort::Mixed(evaluation.flag.clone());
                self.counts.mixed += 1;
            }
            Some(Cohort::Mixed(_)) => {}
            None if full => self.counts.trace_cap += 1,
            None => {
                state.cohorts.push(Cohort::Exposed(evaluation.flag.clone(), variant.clone()));
                for outcome in &state.outcomes {
                    sink.observe(&evaluation.flag, variant, outcome, state.user, now);
                    self.counts.attributed += 1;
                }
            }
        }
        self.enforce_capacity(now, sink);
    }

    /// Handles one entry-span outcome.
    pub fn outcome(&mut self, outcome: Outcome, now: Timestamp, sink: &mut impl Sink) {
        let state = Self::state(
            Opening {
                traces: &mut self.traces,
                deadlines: &mut self.deadlines,
                owners: &mut self.owners,
                live: &mut self.live,
                trace_idle: self.settings.trace_idle,
            },
            outcome.trace,
            &outcome.dims.service,
            now,
        );
        state.last_seen = now;
        let duplicate = state.seen.contains(&outcome.span) || state.outcomes.iter().any(|o| o.span == outcome.span);
        if duplicate {
            self.counts.duplicate += 1;
            return;
        }
        let tombstone = state.tombstone_until.is_some();
        for cohort in &state.cohorts {
            if let Cohort::Exposed(flag, variant) = cohort {
                sink.observe(flag, variant, &outcome, state.user, now);
                self.counts.attributed += 1;
            }
        }
        if state.outcomes.len() + state.seen.len() >= MAX_OUTCOMES_PER_TRACE {
            self.counts.trace_cap += 1;
        } else if tombstone {
            self.counts.late += 1;
            state.seen.push(outcome.span);
        } else {
            state.outcomes.push(outcome);
        }
        self.enforce_capacity(now, sink);
    }

    fn state<'a>(o: Opening<'a>, trace: TraceId, service: &Arc<str>, now: Timestamp) -> &'a mut TraceState {
        let Opening { traces, deadlines, owners, live, trace_idle } = o;
        traces.entry(trace).or_insert_with(|| {
            *live += 1;
            deadlines.push(Reverse((now.plus(trace_idle), trace)));
            let owned = owners.entry(service.clone()).or_default();
            owned.live += 1;
            owned.queue.push_back((now, trace));
            TraceState::new(now, service.clone())
        })
    }

    /// Evicts idle traces and expired tombstones. Call on every tick.
    pub fn evict_idle(&mut self, now: Timestamp, sink: &mut impl Sink) {
        while let Some(Reverse((deadline, trace))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            self.expire(trace, now, false, sink);
        }
        while let Some(&(until, trace)) = self.tombstones.front() {
            if until > now {
                break;
            }
            self.tombstones.pop_front();
            self.drop_tombstone(trace);
        }
    }

    fn drop_tombstone(&mut self, trace: TraceId) {
        if self.traces.get(&trace).is_some_and(|s| s.tombstone_until.is_some()) {
            self.traces.remove(&trace);
        }
    }

    fn enforce_capacity(&mut self, now: Timestamp, sink: &mut impl Sink) {
        if self.live <= self.settings.max_traces {
            return;
        }
        let target = self.settings.max_traces.saturating_sub(eviction_batch(self.settings.max_traces) - 1);
        while self.live > target {
            // The busiest service; among equally busy ones, the one with the oldest trace.
            let busiest = self
                .owners
                .iter()
                .filter(|(_, o)| o.live > 0)
                .max_by_key(|(_, o)| (o.live, Reverse(o.queue.front().map_or(Timestamp(u64::MAX), |(t, _)| *t))))
                .map(|(service, _)| service.clone());
            let Some(service) = busiest else { break };
            let Some(trace) = self.oldest_live(&service) else { break };
            self.expire(trace, now, true, sink);
        }
    }

    /// The oldest live trace `service` opened (stale queue entries are dropped on the way).
    fn oldest_live(&mut self, service: &Arc<str>) -> Option<TraceId> {
        let owned = self.owners.get_mut(service)?;
        while let Some((_, trace)) = owned.queue.pop_front() {
            if self.traces.get(&trace).is_some_and(|s| s.tombstone_until.is_none() && s.owner == *service) {
                return Some(trace);
            }
        }
        None
    }

    /// A trace stops being live: its service's count goes down (and its queue is compacted
    /// once most of it is stale).
    fn release(&mut self, trace: TraceId, owner: &Arc<str>) {
        let traces = &self.traces;
        if let Some(owned) = self.owners.get_mut(owner) {
            owned.live = owned.live.saturating_sub(1);
            if owned.live == 0 {
                self.owners.remove(owner);
            } else if owned.queue.len() > 2 * owned.live + 16 {
                owned.queue.retain(|(_, t)| *t != trace && traces.get(t).is_some_and(|s| s.tombstone_until.is_none() && s.owner == *owner));
            }
        }
    }

    /// Moves a trace one step on: live → tombstone (or gone), tombstone → gone. With `force`
    /// (capacity) a live trace is evicted even if it is not idle yet.
    fn expire(&mut self, trace: TraceId, now: Timestamp, force: bool, sink: &mut impl Sink) {
        let Some(state) = self.traces.get_mut(&trace) else { return };
        if state.tombstone_until.is_some() {
            // Tombstones expire through `tombstones`, not the heap.
            return;
        }
        let idle_deadline = state.last_seen.plus(self.settings.trace_idle);
        if idle_deadline > now && !force {
            self.deadlines.push(Reverse((idle_deadline, trace)));
            return;
        }
        self.live -= 1;
        let owner = state.owner.clone();
        if force {
            self.counts.evicted_capacity += 1;
        } else {
            self.counts.evicted_idle += 1;
        }
        if state.cohorts.is_empty() {
            for outcome in &state.outcomes {
                sink.unflagged(&outcome.dims, outcome.error, outcome.latency_us, now);
                self.counts.unflagged += 1;
            }
            self.traces.remove(&trace);
            self.release(trace, &owner);
            return;
        }
        let until = now.plus(self.settings.tombstone_ttl);
        state.seen.extend(state.outcomes.drain(..).map(|o| o.span));
        state.outcomes = Vec::new();
        state.seen.shrink_to_fit();
        state.tombstone_until = Some(until);
        self.tombstones.push_back((until, trace));
        self.release(trace, &owner);
        while self.tombstones.len() > self.settings.max_traces {
            if let Some((_, oldest)) = self.tombstones.pop_front() {
                self.counts.tombstones_dropped += 1;
                self.drop_tombstone(oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests;

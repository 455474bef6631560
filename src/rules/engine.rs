//! The rule engine: groups series into rule slices, judges them ([`super::evaluate`]), and keeps
//! per-slice state to decide actions.
//!
//! Invariants:
//! - a slice fires only while Breached, once its clock has run for the rule's `for` (Healthy
//!   resets the clock; Inconclusive and NoData pause it but never fire), and not again within
//!   its cooldown; firing restarts the clock, so a killed arm that drains never re-fires;
//! - cooldowns survive restarts (the caller loads and stores `last_fired`);
//! - more than `max_concurrent_kills` distinct flags breaching in one (service, environment)
//!   within `incident_window` is an incident: every one of them becomes a notification, none a
//!   kill; the same when the baseline breaches too;
//! - a rule whose flag sent no telemetry for `stale_after` is reported stale.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

mod gather;
pub mod image;

use super::condition::{Condition, Reads};
use super::evaluate::{BaselineKind, Inputs, Judgement, Verdict, WindowPair, judge};
use super::published::{TransitionView, VerdictView};
use super::{Mode, Rule, RuleSet};
use crate::aggregate::{Aggregator, Summary};
use crate::model::{Dimension, FlagKey, SeriesKey, Slice};
use crate::stats::{Event, UserBuckets};
use crate::time::Timestamp;
use gather::{Arms, Member, Part, Role};

/// Guards from `[rules]` in the configuration.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Control the false-kill rate across every slice with sequential evidence (e-BH).
    pub sequential_fdr: bool,
    pub stale_after: Duration,
    pub max_concurrent_kills: usize,
    pub incident_window: Duration,
}

/// What the engine decided for a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionKind {
    /// Kill the flag (or the slice) through the rule's actuator.
    Kill,
    /// A service-wide problem: notify, do not kill.
    Incident,
}

/// A decided action with its decision record.
#[derive(Clone, Debug)]
pub struct Decision {
    pub kind: DecisionKind,
    pub rule: String,
    pub mode: Mode,
    pub actuator: Option<String>,
    pub flag: String,
    pub treatment: Vec<String>,
    pub control: Option<String>,
    /// The slice judged: dimension values from `per` (and `where`).
    pub service: Option<String>,
    pub environment: Option<String>,
    pub region: Option<String>,
    /// The dimensions the rule sliced by (`per`), as (name, value): what a kill is limited to.
    pub scope: Vec<(String, String)>,
    /// Stable identity of the slice (`rule/flag/dim=value…`): cooldown key.
    pub slice_key: String,
    pub record: Value,
    pub at: Timestamp,
    /// `on_unscoped: widen` and `auto_restore` of the rule's action.
    pub widen: bool,
    pub auto_restore: Option<std::time::Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SliceKey {
    rule: usize,
    flag: FlagKey,
    values: Vec<(Dimension, Arc<str>)>,
}

struct SliceState {
    /// When the slice was first seen: sequential tests use the data since then.
    started: Timestamp,
    /// Per condition: the fixed latency threshold (ms) of a `LatencyAboveControl`.
    thresholds: Vec<Option<f64>>,
    /// Which test segment this is (see [`SEGMENT`]): its alpha is `alpha / 2^segment`.
    segment: u32,
    /// Each member series' user buckets when the segment started (sequential rules only).
    user_base: HashMap<SeriesKey, UserBuckets>,
    /// Each member series' user buckets when it started counting slow requests for the
    /// rule's fixed latency threshold (latency comparisons only).
    slow_base: HashMap<SeriesKey, UserBuckets>,
    verdict: Verdict,
    since: Timestamp,
    breached_since: Option<Timestamp>,
    incident_since: Option<Timestamp>,
    record: Value,
    mode: Mode,
}

/// Per-slice state across evaluations.
pub struct RuleEngine {
    rules: Arc<RuleSet>,
    settings: EngineSettings,
    slices: HashMap<SliceKey, SliceState>,
    flag_matches: HashMap<(usize, FlagKey), bool>,
    last_fired: HashMap<String, Fired>,
    /// (service, environment, flag, at) of recent automatic kills, for the incident limit.
    recent_kills: Vec<(String, String, String, Timestamp)>,
    rule_last_data: HashMap<String, Timestamp>,
    started: Timestamp,
    /// The latest verdict changes (bounded by [`TRANSITIONS_KEPT`]).
    transitions: std::collections::VecDeque<TransitionView>,
    /// Every verdict change, kept only when recording (replay).
    recorded: Option<Vec<TransitionView>>,
    /// The latest sequential evidence (e-value, alpha) per slice, for e-BH across slices.
    evidence: HashMap<SliceKey, (f64, f64)>,
}

/// When a rule slice last fired, and whose flag it is (the key is opaque: never parsed).
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub at: Timestamp,
    /// `None` for state stored before flagguard recorded it (read back from the key).
    pub flag: Option<String>,
}

/// How long a sequential test runs before it restarts (just under the windows' 6 h).
pub const SEGMENT: Duration = Duration::from_secs(5 * 3600 + 50 * 60);

/// How many verdict changes the engine remembers for the dashboard.
pub const TRANSITIONS_KEPT: usize = 500;

impl RuleEngine {
    pub fn new(rules: Arc<RuleSet>, settings: EngineSettings, last_fired: HashMap<String, Fired>, now: Timestamp) -> Self {
        RuleEngine {
            rules,
            settings,
            slices: HashMap::new(),
            flag_matches: HashMap::new(),
            last_fired,
            recent_kills: Vec::new(),
            rule_last_data: HashMap::new(),
            started: now,
            transitions: Default::default(),
            evidence: HashMap::new(),
            recorded: None,
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Swaps in a new rule set; slice state of rules that kept their name survives.
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) {
        let old: Vec<String> = self.rules.rules.iter().map(|r| r.name.clone()).collect();
        let index: HashMap<&str, usize> = rules.rules.iter().enumerate().map(|(i, r)| (r.name.as_str(), i)).collect();
        let slices = std::mem::take(&mut self.slices);
        for (key, state) in slices {
            if let Some(&i) = index.get(old[key.rule].as_str()) {
                self.slices.insert(SliceKey { rule: i, ..key }, state);
            }
        }
        self.flag_matches.clear();
        // Evidence is keyed by rule index: start e-BH afresh with the new set.
        self.evidence.clear();
        self.rules = rules;
    }

    fn matches(&mut self, rule: usize, flag: &FlagKey) -> bool {
        if let Some(&m) = self.flag_matches.get(&(rule, flag.clone())) {
            return m;
        }
        let m = self.rules.rules[rule].flag.is_match(flag.as_str());
        self.flag_matches.insert((rule, flag.clone()), m);
        m
    }

    /// Judges slices and returns the decisions due. With `changed`, only slices containing a
    /// changed series are judged (the fast tick); without, all of them (the slow tick, which
    /// also lets windows slide and finds stale rules).
    ///
    /// The slow-request thresholds of latency comparisons are the engine's: after judging, it
    /// hands the windows the ones that changed (the only write to the aggregator).
    pub fn evaluate(&mut self, aggregator: &mut Aggregator, changed: Option<&crate::aggregate::FastSet<SeriesKey>>, now: Timestamp) -> Vec<Decision> {
        let mut slow_over = HashMap::new();
        let candidates = self.judge_slices(aggregator, changed, &mut slow_over, now);
        for (key, threshold_us) in slow_over {
            aggregator.set_slow_over_us(&key, threshold_us);
        }
        self.limit_concurrent_kills(candidates, now)
    }

    /// Judges the (changed) slices of every rule; `slow_over` collects the slow-request
    /// thresholds to hand to the windows.
    fn judge_slices(
        &mut self,
        aggregator: &Aggregator,
        changed: Option<&crate::aggregate::FastSet<SeriesKey>>,
        slow_over: &mut HashMap<SeriesKey, u64>,
        now: Timestamp,
    ) -> Vec<Decision> {
        let rules = self.rules.clone();
        let mut candidates = Vec::new();
        for (ri, rule) in rules.rules.iter().enumerate() {
            let mut members: Vec<(SliceKey, Member, Role)> = Vec::new();
            let mut dirty: HashSet<SliceKey> = HashSet::new();
            for (key, window) in aggregator.series() {
                if !self.matches(ri, &key.flag) || !rule.filter.matches(&key.dims) {
                    continue;
                }
                let role = if rule.treatment.iter().any(|t| t == key.variant.as_str()) {
                    Role::Treatment
                } else if rule.control.as_deref() == Some(key.variant.as_str()) {
                    Role::Control
                } else {
                    continue;
                };
                let last = self.rule_last_data.entry(rule.name.clone()).or_default();
                *last = (*last).max(window.last_record());
                let slice = SliceKey { rule: ri, flag: key.flag.clone(), values: rule.per.iter().map(|d| (*d, Arc::from(key.dims.get(*d)))).collect() };
                if changed.is_none_or(|c| c.contains(key)) {
                    dirty.insert(slice.clone());
                }
                members.push((slice, (key, window), role));
            }
            let mut groups: HashMap<SliceKey, Vec<(Member, Role)>> = HashMap::new();
            for (slice, member, role) in members {
                if dirty.contains(&slice) {
                    groups.entry(slice).or_default().push((member, role));
                }
            }
            // Slices known before but with no series left.
            if changed.is_none() {
                for key in self.slices.keys().filter(|k| k.rule == ri) {
                    groups.entry(key.clone()).or_default();
                }
            }
            // Sorted, so that e-BH across slices sees them in the same order every run.
            let mut groups: Vec<(SliceKey, Vec<(Member, Role)>)> = groups.into_iter().collect();
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            for (slice, members) in groups {
                if let Some(decision) = self.judge_slice(rule, slice, &members, aggregator, slow_over, now) {
                    candidates.push(decision);
                }
            }
        }
        candidates
    }

    #[allow(clippy::too_many_arguments)]
    fn judge_slice(
        &mut self,
        rule: &Rule,
        slice: SliceKey,
        members: &[(Member, Role)],
        aggregator: &Aggregator,
        slow_over: &mut HashMap<SeriesKey, u64>,
        now: Timestamp,
    ) -> Option<Decision> {
        let arms = Arms(members);
        let reads: Vec<Reads> = rule.when.iter().map(Condition::reads).collect();
        let (started, mut thresholds, segment, fresh) = self.segment(rule, &slice, now);
        let window_since = now.minus(rule.window);
        let treatment = arms.sum(Role::Treatment, window_since, Part::All);
        let control = arms.sum(Role::Control, window_since, Part::All);
        // Sequential conditions use everything since the slice was first seen (≤ 6 h kept).
        // Its latency only for a latency comparison (the decision record then shows no
        // cumulative quantiles for an error-rate rule; the window's are there).
        let cumulative = gather::cumulative_part(&reads).map(|part| (arms.sum(Role::Treatment, started, part), arms.sum(Role::Control, started, part)));
        gather::fix_thresholds(&reads, cumulative.as_ref(), rule.min_samples, &mut thresholds);
        let has_control = rule.control.is_some();
        let starts = gather::pair_starts(&reads, now);
        let pairs = gather::window_pairs(&arms, &starts, has_control);
        // Per arm, the user-level design effect of the error rate: the user buckets recorded
        // since the segment started (each member's reading at the start is kept in the slice
        // state; a member that joined later counts whole), summed over the arm's series. Only
        // sequential conditions use it. Lifetime buckets would have mixed in users from before
        // the test, which made long-lived series' effects too large and recent clustering faint.
        let user_base: Option<HashMap<SeriesKey, UserBuckets>> = (fresh && cumulative.is_some()).then(|| arms.user_base());
        // The error-rate test counts from the same buckets, so that its counts and its design
        // effect cover exactly the segment (the windows' sums are widened to whole buckets).
        let segment_errors = cumulative.as_ref().map(|_| {
            let base = user_base.as_ref().or_else(|| self.slices.get(&slice).map(|s| &s.user_base));
            (arms.user_counts(Role::Treatment, base, Event::Error), arms.user_counts(Role::Control, base, Event::Error))
        });
        // The same for the latency comparison's "slow" indicator, whose threshold is known only
        // once fixed: from then on each member counts its requests above it per user bucket,
        // read from a base taken when the member started counting. One threshold per series:
        // the rule's first latency comparison sets it; two rules with different thresholds on
        // one series re-base each other at every evaluation, so both stay at 1 (requests
        // counted as independent, as without user buckets). The engine owns the threshold and
        // hands it to the windows after the evaluation (`slow_over`).
        let mut slow_base = self.slices.get_mut(&slice).map(|s| std::mem::take(&mut s.slow_base)).unwrap_or_default();
        if fresh {
            slow_base.clear();
        }
        let latency_design_effects = match gather::slow_threshold_us(&reads, &thresholds) {
            Some(us) => arms.slow_design_effects(us, slow_over, &mut slow_base),
            None => (1.0, 1.0),
        };
        let inputs = Inputs {
            segment_errors,
            latency_design_effects,
            treatment: &treatment,
            baseline: has_control.then_some((BaselineKind::Control, &control)),
            cumulative: cumulative.as_ref().map(|(t, c)| (t, c)),
            thresholds: &thresholds,
            pairs: &pairs,
            alpha_scale: 0.5f64.powi(segment.min(60) as i32),
        };
        let mut judgement = judge(rule, &inputs);
        if judgement.verdict == Verdict::Breached && !has_control {
            // Re-judge against the unflagged traffic; the treatment's sums are reused.
            let baseline = self.unflagged_baseline(rule, &slice, aggregator, window_since);
            let unflagged = |since| self.unflagged_baseline(rule, &slice, aggregator, since);
            let pairs: Vec<Vec<WindowPair>> = starts
                .iter()
                .zip(&pairs)
                .map(|(starts, pairs)| {
                    starts.iter().zip(pairs).map(|(&(l, s), w)| WindowPair { baseline: Some((unflagged(l), unflagged(s))), ..w.clone() }).collect()
                })
                .collect();
            judgement = judge(rule, &Inputs { baseline: Some((BaselineKind::Unflagged, &baseline)), pairs: &pairs, ..inputs });
        }
        self.apply_fdr(&slice, &mut judgement);
        sample_ratio(rule, &slice, aggregator, &mut judgement);
        let state = self.slices.entry(slice.clone()).or_insert_with(|| SliceState {
            verdict: Verdict::NoData,
            since: now,
            breached_since: None,
            incident_since: None,
            record: Value::Null,
            mode: rule.mode,
            started,
            thresholds: thresholds.clone(),
            segment,
            user_base: HashMap::new(),
            slow_base: HashMap::new(),
        });
        if let Some(base) = user_base {
            state.user_base = base;
        }
        state.slow_base = slow_base;
        state.thresholds = thresholds;
        state.started = started;
        state.segment = segment;
        if state.verdict.label() != judgement.verdict.label() {
            state.since = now;
            self.transitions.push_back(TransitionView {
                at: now,
                rule: rule.name.clone(),
                flag: slice.flag.to_string(),
                slice: Slice(slice.values.clone()),
                from: state.verdict.label(),
                to: judgement.verdict.label(),
            });
            if let (Some(recorded), Some(last)) = (self.recorded.as_mut(), self.transitions.back()) {
                recorded.push(last.clone());
            }
            if self.transitions.len() > TRANSITIONS_KEPT {
                self.transitions.pop_front();
            }
        }
        state.verdict = judgement.verdict.clone();
        state.record = judgement.record.clone();
        state.mode = rule.mode;
        match judgement.verdict {
            Verdict::Breached => {
                state.breached_since.get_or_insert(now);
                state.incident_since = None;
            }
            Verdict::Healthy => {
                state.breached_since = None;
                state.incident_since = None;
            }
            _ if judgement.incident => {
                state.incident_since.get_or_insert(now);
                state.breached_since = None;
            }
            _ => {}
        }
        self.fire(rule, slice, judgement, now)
    }

    /// The decision due for a slice just judged: only a slice that is Breached (or an
    /// incident) right now fires, once its clock has run for `for`, outside its cooldown.
    fn fire(&mut self, rule: &Rule, slice: SliceKey, judgement: Judgement, now: Timestamp) -> Option<Decision> {
        let state = self.slices.get(&slice)?;
        let kind = match (state.breached_since, state.incident_since) {
            (Some(t), _) if judgement.verdict == Verdict::Breached && now.since(t) >= rule.for_ => DecisionKind::Kill,
            (_, Some(t)) if judgement.incident && now.since(t) >= rule.for_ => DecisionKind::Incident,
            _ => return None,
        };
        rule.kill.as_ref()?;
        let slice_key = self.slice_id(rule, &slice);
        if self.last_fired.get(&slice_key).is_some_and(|f| now < f.at.plus(rule.cooldown)) {
            return None;
        }
        // Firing restarts the `for` clock: after the cooldown, the slice fires again only if it
        // is seen Breached anew for `for` (a drained, killed arm is NoData and never re-fires).
        if let Some(state) = self.slices.get_mut(&slice) {
            state.breached_since = None;
            state.incident_since = None;
        }
        let value = |d: Dimension| slice.values.iter().find(|(k, _)| *k == d).map(|(_, v)| v.to_string()).or_else(|| rule.filter.get(d).map(str::to_owned));
        // What is killed is what was judged: a region pinned in `where` is part of the slice
        // (else the kill would silently take the flag off in every region).
        let mut scope: Vec<(String, String)> = slice.values.iter().map(|(d, v)| (d.as_str().to_owned(), v.to_string())).collect();
        if !scope.iter().any(|(k, _)| k == "region")
            && let Some(region) = rule.filter.get(Dimension::Region)
        {
            scope.push(("region".into(), region.to_owned()));
        }
        let mut record = judgement.record;
        record["for"] = Value::String(humantime::format_duration(rule.for_).to_string());
        record["slice"] = Value::String(slice_key.clone());
        Some(Decision {
            kind,
            rule: rule.name.clone(),
            mode: rule.mode,
            actuator: rule.kill.clone(),
            flag: slice.flag.to_string(),
            treatment: rule.treatment.clone(),
            control: rule.control.clone(),
            service: value(Dimension::Service),
            environment: value(Dimension::Environment),
            region: value(Dimension::Region),
            scope,
            slice_key,
            record,
            at: now,
            widen: rule.widen,
            auto_restore: rule.auto_restore,
        })
    }

    /// The slice's test segment: when it started, its fixed thresholds, its index, and whether
    /// it starts now. The windows keep 6 h: before the oldest data of a sequential test would
    /// fall out of them, the test restarts with half the alpha of the previous segment (alpha
    /// spending: 1/2 + 1/4 + … ≤ 1 of the rule's alpha), so the whole rollout stays within it.
    fn segment(&self, rule: &Rule, slice: &SliceKey, now: Timestamp) -> (Timestamp, Vec<Option<f64>>, u32, bool) {
        let (mut started, mut thresholds, mut segment) =
            self.slices.get(slice).map(|s| (s.started, s.thresholds.clone(), s.segment)).unwrap_or((now, vec![None; rule.when.len()], 0));
        // Whether the sequential tests start a segment now.
        let mut fresh = !self.slices.contains_key(slice);
        // A reloaded rule with other conditions starts its sequential tests afresh.
        if thresholds.len() != rule.when.len() {
            thresholds = vec![None; rule.when.len()];
            started = now;
            fresh = true;
        }
        if now.since(started) >= SEGMENT {
            started = now;
            segment += 1;
            thresholds = vec![None; rule.when.len()];
            fresh = true;
        }
        (started, thresholds, segment, fresh)
    }

    /// e-BH across every slice with sequential evidence: a breach that rests on sequential
    /// conditions alone stands only if e-BH at the condition's alpha rejects this slice among
    /// all of them, which bounds the expected share of false kills among all kills by alpha.
    fn apply_fdr(&mut self, slice: &SliceKey, judgement: &mut Judgement) {
        match judgement.sequential_evidence {
            Some(e) => {
                self.evidence.insert(slice.clone(), e);
            }
            None => {
                self.evidence.remove(slice);
            }
        }
        let Some((_, alpha)) = judgement.sequential_evidence else { return };
        if !self.settings.sequential_fdr || judgement.verdict != Verdict::Breached || judgement.absolute_breach || self.evidence.len() < 2 {
            return;
        }
        let keys: Vec<&SliceKey> = self.evidence.keys().collect();
        let values: Vec<f64> = keys.iter().map(|k| self.evidence[*k].0).collect();
        let rejected = crate::stats::e_bh(&values, alpha);
        let mine = keys.iter().position(|k| *k == slice).is_some_and(|i| rejected[i]);
        judgement.record["fdr"] = serde_json::json!({ "procedure": "e-BH", "alpha": alpha, "series": values.len(), "rejected": mine });
        if !mine {
            let why = format!("sequential evidence not yet strong enough across {} guarded slices (e-BH at {alpha})", values.len());
            judgement.record["verdict"] = Value::String("inconclusive".into());
            judgement.record["reason"] = Value::String(why.clone());
            judgement.verdict = Verdict::Inconclusive(why);
        }
    }

    fn unflagged_baseline(&self, rule: &Rule, slice: &SliceKey, aggregator: &Aggregator, since: Timestamp) -> Summary {
        let mut total = Summary::empty(since);
        for (dims, window) in aggregator.unflagged_iter() {
            if rule.filter.matches(dims) && slice.values.iter().all(|(d, v)| dims.get(*d) == &**v) {
                window.add_since(since, &mut total);
            }
        }
        total
    }

    fn slice_id(&self, rule: &Rule, slice: &SliceKey) -> String {
        let mut id = format!("{}/{}", rule.name, slice.flag);
        for (d, v) in &slice.values {
            id.push_str(&format!("/{}={}", d.as_str(), v));
        }
        id
    }

    /// Applies the concurrent-kill limit per (service, environment) and records what fires.
    fn limit_concurrent_kills(&mut self, candidates: Vec<Decision>, now: Timestamp) -> Vec<Decision> {
        let window_start = now.minus(self.settings.incident_window);
        self.recent_kills.retain(|k| k.3 >= window_start);
        let group = |d: &Decision| (d.service.clone().unwrap_or_else(|| "*".into()), d.environment.clone().unwrap_or_else(|| "*".into()));
        let mut flags_per_group: HashMap<(String, String), HashSet<String>> = HashMap::new();
        for (service, env, flag, _) in &self.recent_kills {
            flags_per_group.entry((service.clone(), env.clone())).or_default().insert(flag.clone());
        }
        for d in candidates.iter().filter(|d| d.kind == DecisionKind::Kill && d.mode == Mode::Enforce) {
            flags_per_group.entry(group(d)).or_default().insert(d.flag.clone());
        }
        let mut out = Vec::new();
        for mut d in candidates {
            if d.kind == DecisionKind::Kill && d.mode == Mode::Enforce {
                let g = group(&d);
                let flags = &flags_per_group[&g];
                if flags.len() > self.settings.max_concurrent_kills {
                    d.kind = DecisionKind::Incident;
                    let mut names: Vec<&String> = flags.iter().collect();
                    names.sort();
                    d.record["incident"] = Value::String(format!(
                        "{} flags breaching in service {} / environment {} within {}: {:?} — an incident, not a flag; not killing (max_concurrent_kills = {})",
                        flags.len(),
                        g.0,
                        g.1,
                        humantime::format_duration(self.settings.incident_window),
                        names,
                        self.settings.max_concurrent_kills
                    ));
                } else {
                    self.recent_kills.push((g.0, g.1, d.flag.clone(), now));
                }
            }
            self.last_fired.insert(d.slice_key.clone(), Fired { at: now, flag: Some(d.flag.clone()) });
            out.push(d);
        }
        out
    }

    /// Current verdicts for the API.
    pub fn views(&self) -> Vec<VerdictView> {
        let mut views: Vec<VerdictView> = self
            .slices
            .iter()
            .map(|(key, s)| {
                let rule = &self.rules.rules[key.rule];
                VerdictView {
                    rule: rule.name.clone(),
                    flag: key.flag.to_string(),
                    slice: Slice(key.values.clone()),
                    verdict: s.verdict.clone(),
                    since: s.since,
                    mode: s.mode,
                    evidence: s.record.clone(),
                }
            })
            .collect();
        // Ordered as their labels were (`region=eu` text), so the API lists them as before.
        views.sort_by_cached_key(|v| (v.rule.clone(), v.flag.clone(), v.slice.to_string()));
        views
    }

    /// Starts keeping every verdict change (replay), to be taken with [`Self::take_recorded`].
    pub fn record_transitions(&mut self) {
        self.recorded = Some(Vec::new());
    }

    /// The verdict changes since the last call (when recording).
    pub fn take_recorded(&mut self) -> Vec<TransitionView> {
        self.recorded.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The latest verdict changes, oldest first.
    pub fn transitions(&self) -> Vec<TransitionView> {
        self.transitions.iter().cloned().collect()
    }

    /// Rules whose guarded flag has sent no telemetry for longer than `stale_after`.
    pub fn stale_rules(&self, now: Timestamp) -> Vec<String> {
        self.rules
            .rules
            .iter()
            .filter(|r| {
                let last = self.rule_last_data.get(&r.name).copied().unwrap_or(self.started).max(self.started);
                now.since(last) > self.settings.stale_after
            })
            .map(|r| r.name.clone())
            .collect()
    }

    /// Replaces the cooldowns with the stored ones (a replica taking over the lease adopts the
    /// previous leader's: a slice it fired does not fire again).
    pub fn load_fired(&mut self, fired: HashMap<String, Fired>) {
        self.last_fired = fired;
    }

    /// How far back the incident limit looks (what a takeover reads from the store).
    pub fn incident_window(&self) -> Duration {
        self.settings.incident_window
    }

    /// Takes the kills the store holds (every replica's, within the incident window) as the
    /// recent kills the incident limit counts: a new leader counts what the old one killed,
    /// not what it judged itself. Kills not decided by a rule of this set (alerts, operators)
    /// are not counted, as they never were.
    pub fn load_recent_kills(&mut self, kills: Vec<crate::store::RecentKill>) {
        let names: HashSet<&str> = self.rules.rules.iter().map(|r| r.name.as_str()).collect();
        self.recent_kills = kills
            .into_iter()
            .filter(|k| names.contains(k.rule.as_str()))
            .map(|k| (k.service.unwrap_or_else(|| "*".into()), k.environment.unwrap_or_else(|| "*".into()), k.flag, k.at))
            .collect();
    }

    /// Re-arms a slice whose decision could not be stored: it may fire again as soon as it is
    /// seen Breached for `for` again, without waiting for the cooldown.
    pub fn rearm(&mut self, slice_key: &str) {
        self.last_fired.remove(slice_key);
    }

    /// Forgets slice state and cooldowns of `flag` (after a restore: pre-kill evidence must not
    /// re-kill at once).
    pub fn forget_flag(&mut self, flag: &str) {
        self.slices.retain(|k, _| k.flag.as_str() != flag);
        self.evidence.retain(|k, _| k.flag.as_str() != flag);
        self.last_fired.retain(|k, f| f.flag.as_deref().map_or_else(|| legacy_flag(k) != Some(flag), |f| f != flag));
    }
}

/// The flag of a cooldown key stored before rule state recorded its flag:
/// `rule/flag[/dim=value…]`, where rule names have no `/` and the dimensions are the known
/// three.
fn legacy_flag(key: &str) -> Option<&str> {
    let (_, mut rest) = key.split_once('/')?;
    while let Some((head, tail)) = rest.rsplit_once('/') {
        if ["service=", "environment=", "region="].iter().any(|d| tail.starts_with(d)) {
            rest = head;
        } else {
            break;
        }
    }
    Some(rest)
}

/// Sample-ratio mismatch on distinct users of the whole flag, into the record: reported, never
/// a kill.
fn sample_ratio(rule: &Rule, slice: &SliceKey, aggregator: &Aggregator, judgement: &mut Judgement) {
    let Some(share) = rule.expected_share else { return };
    let arms: Vec<(f64, f64)> = rule.treatment.iter().map(|v| aggregator.distinct_users(&slice.flag, v)).collect();
    let treatment_users: f64 = arms.iter().map(|a| a.0).sum();
    let treatment_var = arms.iter().map(|a| a.1).fold(0.0, f64::max);
    let (control_users, control_var) = rule.control.as_deref().map_or((0.0, 0.0), |c| aggregator.distinct_users(&slice.flag, c));
    let total = treatment_users + control_users;
    let p = crate::stats::srm(treatment_users, control_users, share, (treatment_var, control_var));
    judgement.record["srm"] = serde_json::json!({
        "expected_share": share,
        "treatment_users": treatment_users.round(),
        "control_users": control_users.round(),
        "p_value": p,
        "mismatch": total >= 100.0 && p < 0.001,
    });
}

#[cfg(test)]
mod tests;

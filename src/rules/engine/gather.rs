//! What a slice's conditions read, gathered from its series' windows: the arms' sums over the
//! rule's window, since the slice started and over each condition's window pairs, the per-user
//! counts of the sequential tests, and the slow-request threshold the engine hands to the
//! windows. The conditions say what they need ([`Reads`]); nothing here names a kind.
//!
//! Invariant: a fixed threshold is taken once per test segment from the control's own
//! cumulative history and never re-estimated (the sequential test stays valid).

use std::collections::{HashMap, HashSet};

use crate::aggregate::{Summary, Window};
use crate::model::SeriesKey;
use crate::rules::condition::Reads;
use crate::rules::inputs::{UserCounts, WindowPair};
use crate::stats::{Event, UserBuckets};
use crate::time::Timestamp;

/// A series of a slice.
pub(super) type Member<'a> = (&'a SeriesKey, &'a Window);

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Role {
    Treatment,
    Control,
}

/// What of a window a sum reads.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Part {
    All,
    /// Leaves the latency histogram empty: only for conditions that never read it (merging
    /// histograms over hours of buckets dominated an evaluation).
    Counts,
}

/// A slice's series with their arm.
pub(super) struct Arms<'m, 'a>(pub &'m [(Member<'a>, Role)]);

impl Arms<'_, '_> {
    /// Sums one arm's windows since `since`.
    pub fn sum(&self, role: Role, since: Timestamp, part: Part) -> Summary {
        let mut total = Summary::empty(since);
        for ((_, window), r) in self.0 {
            match (*r == role, part) {
                (false, _) => {}
                (true, Part::All) => window.add_since(since, &mut total),
                (true, Part::Counts) => window.add_counts_since(since, &mut total),
            }
        }
        total
    }

    /// One arm's requests and `event`s per user bucket since each member's `base` (a member
    /// without one counts whole), with their design effect.
    pub fn user_counts(&self, role: Role, base: Option<&HashMap<SeriesKey, UserBuckets>>, event: Event) -> UserCounts {
        let mut sum = [[0u64; 2]; crate::stats::USER_BUCKETS];
        for ((key, window), r) in self.0 {
            if let (true, Some(buckets)) = (*r == role, window.user_buckets()) {
                buckets.add_since_into(base.and_then(|b| b.get(*key)), event, &mut sum);
            }
        }
        UserCounts::of(&sum)
    }

    /// Each member's user buckets now (the base of a new test segment).
    pub fn user_base(&self) -> HashMap<SeriesKey, UserBuckets> {
        self.0.iter().filter_map(|((key, window), _)| window.user_buckets().map(|b| ((*key).clone(), b.clone()))).collect()
    }

    /// Counts slow requests above `threshold_us` from now on in every member whose window does
    /// not count them yet at that threshold (`slow_over`: what each series counts, with the
    /// engine's pending changes), re-basing those members. Returns both arms' design effects of
    /// the share of slow requests.
    pub fn slow_design_effects(&self, threshold_us: u64, slow_over: &mut HashMap<SeriesKey, u64>, base: &mut HashMap<SeriesKey, UserBuckets>) -> (f64, f64) {
        let keys: HashSet<&SeriesKey> = self.0.iter().map(|((key, _), _)| *key).collect();
        base.retain(|key, _| keys.contains(key));
        for ((key, window), _) in self.0 {
            let counting = slow_over.get(*key).copied().or_else(|| window.slow_over_us());
            if counting != Some(threshold_us) || !base.contains_key(*key) {
                slow_over.insert((*key).clone(), threshold_us);
                base.insert((*key).clone(), window.user_buckets().cloned().unwrap_or_default());
            }
        }
        (self.user_counts(Role::Treatment, Some(base), Event::Slow).design_effect, self.user_counts(Role::Control, Some(base), Event::Slow).design_effect)
    }
}

/// Which part of the cumulative sums the conditions read (`None`: no sequential condition).
pub(super) fn cumulative_part(reads: &[Reads]) -> Option<Part> {
    let wanted: Vec<bool> = reads.iter().filter_map(|r| r.cumulative).collect();
    (!wanted.is_empty()).then(|| if wanted.iter().any(|latency| *latency) { Part::All } else { Part::Counts })
}

/// Fixes each condition's threshold once the control's cumulative history has `min_samples`.
pub(super) fn fix_thresholds(reads: &[Reads], cumulative: Option<&(Summary, Summary)>, min_samples: u64, thresholds: &mut [Option<f64>]) {
    let Some((_, control)) = cumulative else { return };
    for (read, threshold) in reads.iter().zip(thresholds.iter_mut()) {
        if let (Some((quantile, ratio)), None) = (read.fixed_threshold, *threshold)
            && control.requests >= min_samples
        {
            *threshold = control.quantile_ms(quantile).map(|q| q * ratio);
        }
    }
}

/// The threshold (µs, at least 1) the windows count slow requests above: the first fixed one.
pub(super) fn slow_threshold_us(reads: &[Reads], thresholds: &[Option<f64>]) -> Option<u64> {
    reads.iter().zip(thresholds).find_map(|(r, t)| t.filter(|_| r.fixed_threshold.is_some())).map(|ms| ((ms * 1000.0) as u64).max(1))
}

/// Per condition, its window pairs' starts `(long, short)` before `now`.
pub(super) fn pair_starts(reads: &[Reads], now: Timestamp) -> Vec<Vec<(Timestamp, Timestamp)>> {
    reads.iter().map(|r| r.window_pairs.iter().map(|(long, short)| (now.minus(*long), now.minus(*short))).collect()).collect()
}

/// Per condition, its window pairs: the treatment's counts and, with a control, the control's.
pub(super) fn window_pairs(arms: &Arms<'_, '_>, starts: &[Vec<(Timestamp, Timestamp)>], has_control: bool) -> Vec<Vec<WindowPair>> {
    starts
        .iter()
        .map(|pairs| {
            pairs
                .iter()
                .map(|&(l, s)| WindowPair {
                    // Window pairs read error rates only.
                    long: arms.sum(Role::Treatment, l, Part::Counts),
                    short: arms.sum(Role::Treatment, s, Part::Counts),
                    baseline: has_control.then(|| (arms.sum(Role::Control, l, Part::Counts), arms.sum(Role::Control, s, Part::Counts))),
                })
                .collect()
        })
        .collect()
}

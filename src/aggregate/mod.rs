//! Aggregation: per-series windows ([`window`]) with hdrhistogram latency ([`latency`]), the
//! correlator's [`Sink`]. The API's read model built from them is `view`'s.
//!
//! Invariants: the number of flagged series is capped (`max_series`); observations for new
//! series past the cap are counted as overflow, never silently lost. Unflagged traffic is kept
//! per slice (service × environment × region) as the blast-radius baseline. Series idle for
//! longer than the longest window are dropped.

pub mod history;
pub mod image;
pub mod latency;
pub mod window;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::correlate::Sink;
use crate::model::{Dims, Evaluation, FlagKey, Outcome, SeriesKey, Variant};
use crate::time::Timestamp;
pub use window::{Summary, Window};

/// Maps keyed by client-chosen strings (flags, variants, services) on the hot path: foldhash,
/// randomly seeded so that keys cannot be chosen to collide, instead of SipHash (SipHash was
/// 7 % of the daemon's CPU under load).
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// How long an idle series is kept: the longest window (6 h).
pub const SERIES_IDLE: Duration = Duration::from_secs(6 * 3600);

/// All windows.
pub struct Aggregator {
    max_series: usize,
    series: FastMap<SeriesKey, Window>,
    unflagged: FastMap<Dims, Window>,
    /// Distinct users (hashed `feature_flag.context.id`) per cohort since start, bounded per
    /// cohort, for sample-ratio-mismatch checks.
    users: FastMap<(FlagKey, Variant), crate::stats::distinct::Distinct>,
    /// Series touched since the rules last looked.
    changed: FastSet<SeriesKey>,
    /// First and last evaluation of each (flag, variant) since start (flag hygiene), bounded
    /// like the series.
    usage: FastMap<(FlagKey, Variant), (Timestamp, Timestamp)>,
    overflow: u64,
    /// Whether `changed` is kept (not by a shard's delta, which nobody judges: a key clone and
    /// a hash per observation saved).
    track_changes: bool,
}

impl Aggregator {
    pub fn new(max_series: usize) -> Self {
        Aggregator {
            max_series,
            series: FastMap::default(),
            unflagged: FastMap::default(),
            users: FastMap::default(),
            changed: FastSet::default(),
            usage: FastMap::default(),
            overflow: 0,
            track_changes: true,
        }
    }

    /// An aggregator for a shard's delta: the same windows, no record of what changed.
    pub fn for_delta(max_series: usize) -> Self {
        Aggregator { track_changes: false, ..Aggregator::new(max_series) }
    }

    pub fn series(&self) -> impl Iterator<Item = (&SeriesKey, &Window)> {
        self.series.iter()
    }

    /// The series cap.
    pub fn max_series(&self) -> usize {
        self.max_series
    }

    /// Nothing recorded at all (a shard's delta with nothing to send).
    pub fn is_empty(&self) -> bool {
        self.series.is_empty() && self.unflagged.is_empty() && self.users.is_empty() && self.usage.is_empty()
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn unflagged(&self, dims: &Dims) -> Option<&Window> {
        self.unflagged.get(dims)
    }

    pub fn unflagged_iter(&self) -> impl Iterator<Item = (&Dims, &Window)> {
        self.unflagged.iter()
    }

    /// Estimated distinct users of a cohort since start (0 without context ids).
    pub fn distinct_users(&self, flag: &FlagKey, variant: &str) -> (f64, f64) {
        self.users.get(&(flag.clone(), Variant(variant.into()))).map_or((0.0, 0.0), |d| (d.estimate(), d.relative_variance()))
    }

    /// First and last evaluation of each (flag, variant) since start.
    pub fn usage(&self) -> impl Iterator<Item = (&FlagKey, &Variant, Timestamp, Timestamp)> {
        self.usage.iter().map(|((f, v), (first, last))| (f, v, *first, *last))
    }

    /// Observations refused because the series cap was reached.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// Returns and clears the set of series changed since the last call.
    pub fn take_changed(&mut self) -> FastSet<SeriesKey> {
        std::mem::take(&mut self.changed)
    }

    /// Drops series idle for longer than [`SERIES_IDLE`].
    pub fn drop_idle(&mut self, now: Timestamp) {
        let cutoff = now.minus(SERIES_IDLE);
        self.series.retain(|_, w| w.last_record() >= cutoff);
        self.unflagged.retain(|_, w| w.last_record() >= cutoff);
    }

    /// Clears the windows of the given series (after a restore, so that pre-kill evidence
    /// cannot re-kill at once).
    pub fn reset(&mut self, keep: impl Fn(&SeriesKey) -> bool) {
        self.series.retain(|k, _| keep(k));
    }

    /// Hands a series' window the latency (µs) above which it counts slow requests per user
    /// (the rule engine's threshold; see [`Window::set_slow_over_us`]).
    pub fn set_slow_over_us(&mut self, key: &SeriesKey, latency_us: u64) {
        if let Some(window) = self.series.get_mut(key) {
            window.set_slow_over_us(latency_us);
        }
    }

    /// Approximate bytes held by all windows.
    pub fn bytes(&self) -> usize {
        self.series.values().chain(self.unflagged.values()).map(Window::bytes).sum()
    }

    /// A slice's unflagged baseline (created below the cap; past it, counted as overflow).
    fn unflagged_window(&mut self, dims: &Dims) -> Option<&mut Window> {
        if !self.unflagged.contains_key(dims) && self.unflagged.len() >= self.max_series {
            self.overflow += 1;
            return None;
        }
        Some(self.unflagged.entry(dims.clone()).or_default())
    }

    /// A cohort's distinct-user sketch (created below the cap).
    fn cohort_users(&mut self, cohort: (FlagKey, Variant)) -> Option<&mut crate::stats::distinct::Distinct> {
        if self.users.len() >= self.max_series && !self.users.contains_key(&cohort) {
            return None;
        }
        Some(self.users.entry(cohort).or_default())
    }

    /// The series' window (created below the cap), noted as changed.
    fn window(&mut self, key: SeriesKey) -> Option<&mut Window> {
        use std::collections::hash_map::Entry;
        // One lookup (the entry), not a `contains_key` and then the entry.
        let full = self.series.len() >= self.max_series;
        let (changed, track) = (&mut self.changed, self.track_changes);
        let window = match self.series.entry(key) {
            Entry::Vacant(_) if full => {
                self.overflow += 1;
                return None;
            }
            Entry::Occupied(e) => {
                if track {
                    changed.insert(e.key().clone());
                }
                e.into_mut()
            }
            Entry::Vacant(e) => {
                if track {
                    changed.insert(e.key().clone());
                }
                e.insert(Window::default())
            }
        };
        Some(window)
    }
}

impl Sink for Aggregator {
    fn observe(&mut self, flag: &FlagKey, variant: &Variant, outcome: &Outcome, user: Option<u64>, now: Timestamp) {
        let key = SeriesKey { flag: flag.clone(), variant: variant.clone(), dims: outcome.dims.clone() };
        if let Some(w) = self.window(key) {
            w.record_request(now, outcome.error, outcome.latency_us);
            // Without a context id, the trace is its own user: requests count as independent.
            let user = user.unwrap_or_else(|| u64::from_le_bytes(outcome.trace.0[..8].try_into().expect("8 of 16 bytes")));
            w.record_user(user, outcome.error, outcome.latency_us);
        }
    }

    fn unflagged(&mut self, dims: &Dims, error: bool, latency_us: u64, now: Timestamp) {
        if let Some(w) = self.unflagged_window(dims) {
            w.record_request(now, error, latency_us);
        }
    }

    fn exposure(&mut self, evaluation: &Evaluation, now: Timestamp) {
        let Some(variant) = &evaluation.variant else { return };
        if let Some(context) = evaluation.context
            && let Some(users) = self.cohort_users((evaluation.flag.clone(), variant.clone()))
        {
            users.insert(context);
        }
        let room = self.usage.len() < self.max_series;
        match self.usage.entry((evaluation.flag.clone(), variant.clone())) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().1 = e.get().1.max(now),
            std::collections::hash_map::Entry::Vacant(e) if room => {
                e.insert((now, now));
            }
            std::collections::hash_map::Entry::Vacant(_) => {}
        }
        let key = SeriesKey { flag: evaluation.flag.clone(), variant: variant.clone(), dims: evaluation.dims.clone() };
        if let Some(w) = self.window(key) {
            w.record_exposure(now, evaluation.error_type.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpanId, TraceId};

    #[test]
    fn the_series_cap_counts_overflow_instead_of_growing() {
        let mut agg = Aggregator::new(2);
        let dims = Dims { service: "s".into(), environment: "e".into(), region: "r".into() };
        let outcome = Outcome { trace: TraceId([1; 16]), span: SpanId([1; 8]), dims, error: false, latency_us: 10 };
        for flag in ["a", "b", "c", "a"] {
            agg.observe(&FlagKey(flag.into()), &Variant("on".into()), &outcome, None, Timestamp(1));
        }
        assert_eq!(agg.series_count(), 2);
        assert_eq!(agg.overflow(), 1, "only the new series past the cap is refused");
        assert_eq!(agg.take_changed().len(), 2);
        agg.drop_idle(Timestamp(1).plus(SERIES_IDLE).plus(Duration::from_millis(1)));
        assert_eq!(agg.series_count(), 0);
    }
}

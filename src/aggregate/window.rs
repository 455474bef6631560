//! Per-series windows: time buckets of (requests, errors, exposures, evaluation errors,
//! latency) at three resolutions — 5 s buckets for 2 min, 1 min for 1 h, 10 min for 6 h.
//!
//! Invariants:
//! - only the open level-0 bucket holds a dense histogram; closed buckets are sparse;
//! - a level-0 bucket is added into its level-1 bucket when it closes, a level-1 bucket into
//!   its level-2 bucket when it is complete; so every point of data is in exactly one bucket of
//!   each level that still retains its time;
//! - levels 0 and 1 drop old buckets a whole coarser bucket at a time, so each level holds
//!   complete coarser-bucket ranges from its oldest bucket on;
//! - a query reads level 0 for the recent part and coarser levels only for whole, complete
//!   coarser buckets older than that, so nothing is counted twice. A window is widened to bucket
//!   boundaries (it covers at least what was asked, at most one bucket more).
//! - time is injected; records older than the open bucket go into the open bucket.

use std::collections::VecDeque;

use hdrhistogram::Histogram;

use super::latency::{self, Latency};
use crate::time::Timestamp;

/// (bucket width in ms, buckets kept) per level, finest first.
pub const LEVELS: [(u64, usize); 3] = [(5_000, 36), (60_000, 70), (600_000, 36)];

/// Counts and latency of one bucket (or of a merged range).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub exposures: u64,
    pub evaluation_errors: u64,
    /// `None` until a request with a latency is recorded (lazy allocation).
    pub latency: Option<Latency>,
}

impl Stats {
    /// Adds `other` into this.
    pub fn add(&mut self, other: &Stats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.exposures += other.exposures;
        self.evaluation_errors += other.evaluation_errors;
        if let Some(theirs) = &other.latency {
            match &mut self.latency {
                Some(mine) => mine.merge(theirs),
                None => self.latency = Some(Latency::Sparse(theirs.to_sparse())),
            }
        }
    }

    fn close(&mut self) {
        if let Some(Latency::Dense(_) | Latency::Raw(_)) = &self.latency {
            self.latency = self.latency.as_ref().map(|l| Latency::Sparse(l.to_sparse()));
        }
    }
}

/// A window query's answer: merged counts and a dense histogram.
#[derive(Clone, Debug)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub exposures: u64,
    pub evaluation_errors: u64,
    pub latency: Histogram<u64>,
    /// Start of the oldest bucket read (the window actually covered starts here).
    pub covered_from: Timestamp,
}

impl Summary {
    pub fn empty(at: Timestamp) -> Self {
        Summary { requests: 0, errors: 0, exposures: 0, evaluation_errors: 0, latency: latency::dense(), covered_from: at }
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// Latency quantile in milliseconds (`None` without latency data).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q) as f64 / 1000.0)
    }

    /// Adds another summary (merging slices).
    pub fn add(&mut self, other: &Summary) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.exposures += other.exposures;
        self.evaluation_errors += other.evaluation_errors;
        let _ = self.latency.add(&other.latency);
        self.covered_from = self.covered_from.min(other.covered_from);
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    start: u64,
    stats: Stats,
}

/// One series' window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    levels: [VecDeque<Bucket>; 3],
    /// Start of the open level-0 bucket: everything before it is closed and cascaded.
    advanced_to: u64,
    /// Level-1 buckets before this start have been added into level 2.
    cascaded_1: u64,
    /// Per level: data older than this was dropped from the level (retention), so the level
    /// holds everything from here on.
    dropped_before: [u64; 3],
    last_record: Timestamp,
    /// Requests, errors and slow requests per bucket of hashed users, since the series started
    /// (wrapping counters; the rule engine reads differences over a test segment): the
    /// user-level variance of sequential tests ([`crate::stats::design_effect`]).
    users: Option<Box<crate::stats::UserBuckets>>,
    /// Above this latency (µs; 0: none yet) a request counts as slow in the user buckets. The
    /// rule engine owns the threshold (a latency comparison's, fixed once from the control's
    /// history) and hands it over through [`Window::set_slow_over_us`].
    slow_over_us: u64,
}

fn floor(t: u64, width: u64) -> u64 {
    t - t % width
}

impl Window {
    pub fn new() -> Self {
        Window::default()
    }

    /// When data was last recorded.
    pub fn last_record(&self) -> Timestamp {
        self.last_record
    }

    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(VecDeque::is_empty)
    }

    /// Records one request outcome.
    pub fn record_request(&mut self, now: Timestamp, error: bool, latency_us: u64) {
        let stats = self.open_bucket(now);
        stats.requests += 1;
        stats.errors += error as u64;
        stats.latency.get_or_insert_with(|| Latency::Raw(Vec::new())).record(latency_us);
    }

    /// Counts one request of `user` (a hash) in its user bucket.
    pub fn record_user(&mut self, user: u64, error: bool, latency_us: u64) {
        let slow_over = self.slow_over_us;
        self.users.get_or_insert_with(Default::default).record(user, error, slow_over > 0 && latency_us > slow_over);
    }

    /// The latency (µs) above which requests are counted as slow per user, once set.
    pub fn slow_over_us(&self) -> Option<u64> {
        Some(self.slow_over_us).filter(|&t| t > 0)
    }

    /// Sets [`Window::slow_over_us`] (at least 1 µs); the user buckets' slow counts before it
    /// are of another threshold, so readers take a new base.
    pub fn set_slow_over_us(&mut self, latency_us: u64) {
        self.slow_over_us = latency_us.max(1);
    }

    /// Requests, errors and slow requests per user bucket since the series started (wrapping;
    /// `None` before any request).
    pub fn user_buckets(&self) -> Option<&crate::stats::UserBuckets> {
        self.users.as_deref()
    }

    /// Records one flag evaluation (exposure) of this cohort.
    pub fn record_exposure(&mut self, now: Timestamp, evaluation_error: bool) {
        let stats = self.open_bucket(now);
        stats.exposures += 1;
        stats.evaluation_errors += evaluation_error as u64;
    }

    fn open_bucket(&mut self, now: Timestamp) -> &mut Stats {
        self.advance(now);
        self.last_record = self.last_record.max(now);
        let start = self.advanced_to;
        let level0 = &mut self.levels[0];
        if level0.back().is_none_or(|b| b.start != start) {
            level0.push_back(Bucket { start, stats: Stats::default() });
        }
        // Just ensured: the back bucket exists.
        &mut level0.back_mut().expect("open bucket exists").stats
    }

    /// Closes every bucket that ends at or before `now` (cascading into coarser levels) and
    /// drops buckets beyond each level's retention.
    pub fn advance(&mut self, now: Timestamp) {
        let (w0, _) = LEVELS[0];
        let (w1, _) = LEVELS[1];
        let target = floor(now.as_millis(), w0);
        if target <= self.advanced_to {
            return;
        }
        if let Some(open) = self.levels[0].back_mut().filter(|b| b.start == self.advanced_to) {
            open.stats.close();
            let (start, stats) = (open.start, open.stats.clone());
            add_to_level(&mut self.levels[1], floor(start, w1), &stats);
        }
        self.advanced_to = target;
        // Level-1 buckets that ended by `target` are complete: add them to level 2 once.
        let (w2, _) = LEVELS[2];
        let complete_before = floor(target, w1);
        let pending: Vec<(u64, Stats)> =
            self.levels[1].iter().filter(|b| b.start >= self.cascaded_1 && b.start < complete_before).map(|b| (b.start, b.stats.clone())).collect();
        for (start, stats) in pending {
            add_to_level(&mut self.levels[2], floor(start, w2), &stats);
        }
        self.cascaded_1 = self.cascaded_1.max(complete_before);
        // Levels 0 and 1 drop whole buckets of the next level, so that each holds complete
        // coarser buckets from its oldest one on.
        for (level, &(width, keep)) in LEVELS.iter().enumerate() {
            let group = LEVELS.get(level + 1).map_or(width, |l| l.0);
            while self.levels[level].len() > keep {
                let Some(front) = self.levels[level].front() else { break };
                let end = floor(front.start, group) + group;
                while self.levels[level].front().is_some_and(|b| b.start < end) {
                    self.levels[level].pop_front();
                }
                self.dropped_before[level] = end;
            }
        }
    }

    /// The buckets that overlap `[start, ∞)` as (start ms, width ms, stats), oldest first, each
    /// time range read from exactly one level (coarse for old data, fine for recent data).
    pub fn points_since(&self, start: Timestamp) -> Vec<(u64, u64, &Stats)> {
        let start = start.as_millis();
        let mut points = Vec::new();
        for (level, (lo, hi)) in self.level_ranges().into_iter().enumerate().rev() {
            let width = LEVELS[level].0;
            for bucket in &self.levels[level] {
                if bucket.start >= lo && bucket.start < hi && bucket.start + width > start {
                    points.push((bucket.start, width, &bucket.stats));
                }
            }
        }
        points
    }

    /// Sums the buckets that overlap `[start, ∞)`, each time range read from exactly one level.
    pub fn summary_since(&self, start: Timestamp) -> Summary {
        // Covered from the oldest bucket read, which may be after `start` (no older data).
        let mut summary = Summary::empty(Timestamp(u64::MAX));
        self.add_since(start, &mut summary);
        if summary.covered_from == Timestamp(u64::MAX) {
            summary.covered_from = start;
        }
        summary
    }

    /// Adds the buckets that overlap `[start, ∞)` into `summary` (and moves its `covered_from`
    /// back to the oldest bucket read). Each bucket's latency goes straight into the summary's
    /// dense histogram: merging sparse buckets into each other first re-encoded them at every
    /// step, which made a 6-hour sum quadratic.
    pub fn add_since(&self, start: Timestamp, summary: &mut Summary) {
        self.add_parts_since(start, summary, true);
    }

    /// [`Window::add_since`] without the latency: the counts alone, for conditions that read
    /// only them (merging histograms was 80 % of a rule evaluation over a 1 h cumulative sum).
    pub fn add_counts_since(&self, start: Timestamp, summary: &mut Summary) {
        self.add_parts_since(start, summary, false);
    }

    fn add_parts_since(&self, start: Timestamp, summary: &mut Summary, latency: bool) {
        let points = self.points_since(start);
        if let Some(first) = points.first() {
            summary.covered_from = summary.covered_from.min(Timestamp(first.0));
        }
        for (_, _, stats) in points {
            summary.requests += stats.requests;
            summary.errors += stats.errors;
            summary.exposures += stats.exposures;
            summary.evaluation_errors += stats.evaluation_errors;
            if let (true, Some(l)) = (latency, &stats.latency) {
                l.add_into(&mut summary.latency);
            }
        }
    }

    /// Where this window switches from level 2 to level 1 and from level 1 to level 0 (ms).
    pub fn level_bounds(&self) -> (u64, u64) {
        let [(l0_lo, _), (l1_lo, _), _] = self.level_ranges();
        (l1_lo, l0_lo)
    }

    /// The time range [lo, hi) each level answers for.
    fn level_ranges(&self) -> [(u64, u64); 3] {
        let (w1, w2) = (LEVELS[1].0, LEVELS[2].0);
        let oldest = |level: usize| self.levels[level].front().map(|b| b.start);
        let l0_lo = oldest(0).map_or(u64::MAX, |o| floor(o, w1)).min(floor(self.advanced_to, w1));
        let l1_lo = oldest(1).map_or(u64::MAX, |o| floor(o, w2)).min(floor(self.advanced_to, w2)).min(floor(l0_lo, w2));
        [(l0_lo, u64::MAX), (l1_lo, l0_lo), (0, l1_lo)]
    }

    /// Adds `other` into this window. Both must have been advanced to the same time first
    /// (`advance(now)`), so that their open and closed buckets line up.
    pub fn merge(&mut self, other: &Window) {
        for level in 0..3 {
            // Each side holds all of its data since its oldest bucket at this level; keep only
            // the range both hold (older data is in the coarser levels of both).
            let cutoff = self.dropped_before[level].max(other.dropped_before[level]);
            self.dropped_before[level] = cutoff;
            for bucket in &other.levels[level] {
                add_to_level(&mut self.levels[level], bucket.start, &bucket.stats);
            }
            while self.levels[level].front().is_some_and(|b| b.start < cutoff) {
                self.levels[level].pop_front();
            }
        }
        self.advanced_to = self.advanced_to.max(other.advanced_to);
        self.cascaded_1 = self.cascaded_1.max(other.cascaded_1);
        self.last_record = self.last_record.max(other.last_record);
        if let Some(theirs) = &other.users {
            self.users.get_or_insert_with(Default::default).add(theirs);
        }
    }

    /// Approximate heap bytes held (for the memory report).
    pub fn bytes(&self) -> usize {
        let buckets: usize =
            self.levels.iter().flat_map(|l| l.iter()).map(|b| std::mem::size_of::<Bucket>() + b.stats.latency.as_ref().map_or(0, Latency::bytes)).sum();
        buckets + self.users.as_ref().map_or(0, |_| std::mem::size_of::<crate::stats::UserBuckets>())
    }
}

/// Adds `stats` into the bucket starting at `start`, creating it in order if needed.
fn add_to_level(level: &mut VecDeque<Bucket>, start: u64, stats: &Stats) {
    match level.binary_search_by_key(&start, |b| b.start) {
        Ok(i) => level[i].stats.add(stats),
        Err(i) => {
            let mut fresh = Stats::default();
            fresh.add(stats);
            level.insert(i, Bucket { start, stats: fresh });
        }
    }
}

pub mod image;

#[cfg(test)]
mod tests;

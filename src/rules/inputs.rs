//! What a slice's judgement reads, prepared by the engine from the windows: the arms over the
//! rule's window, the baseline, the sums since the slice started, and what each condition asked
//! for in its [`super::condition::Reads`]. Plain data: no clock, no windows.

use crate::aggregate::Summary;

/// Which baseline the treatment is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BaselineKind {
    Control,
    Unflagged,
}

/// One (long, short) window pair of the treatment (and of the baseline, when known), for a
/// condition that reads window pairs (burn rates).
#[derive(Clone, Debug)]
pub struct WindowPair {
    pub long: Summary,
    pub short: Summary,
    pub baseline: Option<(Summary, Summary)>,
}

/// One arm's requests and events, read from the user buckets, and their design effect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UserCounts {
    pub requests: u64,
    pub events: u64,
    pub design_effect: f64,
}

impl UserCounts {
    /// Totals and design effect of (requests, events) per user bucket.
    pub fn of(buckets: &[[u64; 2]]) -> Self {
        let (requests, events) = buckets.iter().fold((0, 0), |(n, x), b| (n + b[0], x + b[1]));
        UserCounts { requests, events, design_effect: crate::stats::design_effect(buckets) }
    }
}

/// Everything a slice's judgement reads.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The treatment over the rule's window.
    pub treatment: &'a Summary,
    /// The baseline over the rule's window: the control arm, or the unflagged traffic.
    pub baseline: Option<(BaselineKind, &'a Summary)>,
    /// Since the slice was first seen: (treatment, control). Sequential conditions need it.
    pub cumulative: Option<(&'a Summary, &'a Summary)>,
    /// Per condition: the value fixed once from the control's history (a latency comparison's
    /// threshold in ms, see `Reads::fixed_threshold`), once the control's baseline is established.
    pub thresholds: &'a [Option<f64>],
    /// Per condition: the window pairs it reads (`Reads::window_pairs`), in order.
    pub pairs: &'a [Vec<WindowPair>],
    /// Per arm (treatment, control), since the test's segment started: requests, errors and the
    /// user-level design effect of the error rate (`stats::design_effect`), by which the
    /// error-rate test's binomial variance is multiplied. Sequential conditions need it.
    pub segment_errors: Option<(UserCounts, UserCounts)>,
    /// The same for the latency comparison's share of slow requests.
    pub latency_design_effects: (f64, f64),
    /// Multiplies every sequential condition's alpha (alpha spending across test segments:
    /// 1, 1/2, 1/4, … so that the segments together stay within alpha).
    pub alpha_scale: f64,
}

impl<'a> Inputs<'a> {
    /// Inputs of absolute conditions only.
    pub fn window(treatment: &'a Summary, baseline: Option<(BaselineKind, &'a Summary)>) -> Self {
        Inputs {
            treatment,
            baseline,
            cumulative: None,
            thresholds: &[],
            pairs: &[],
            alpha_scale: 1.0,
            segment_errors: None,
            latency_design_effects: (1.0, 1.0),
        }
    }
}

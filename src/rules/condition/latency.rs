//! `latency`: a `quantile` with exactly one of `above_ms` (absolute: the entry spans'
//! quantile over the rule's `window` above a number of milliseconds, excused when the baseline
//! breaches too at a comparable level) or `above_control_ratio` (sequential: the treatment's
//! share of requests slower than T exceeds the control's share at `confidence`, where T = the
//! control's quantile × ratio, fixed once from the control's own history when it has
//! `min_samples` requests and never re-estimated, so that the test stays valid).

use serde::Deserialize;
use serde_json::{Value, json};

use super::sequential::{self, Arms};
use super::{Check, Data, Judged, Kind, Reads, absolute};
use crate::aggregate::Summary;

/// The on-disk shape.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Quantile in (0, 1), e.g. 0.95.
    pub quantile: f64,
    /// Breached when the quantile is above this many milliseconds.
    #[serde(default)]
    pub above_ms: Option<f64>,
    /// Breached when the treatment is slower than the control's quantile × this ratio (> 1).
    #[serde(default)]
    pub above_control_ratio: Option<f64>,
    /// Confidence of the sequential comparison (0.5–0.9999). Default 0.99.
    #[serde(default)]
    pub confidence: Option<f64>,
}

/// A validated latency condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Latency {
    /// latency quantile (ms) > threshold, over the window.
    Above { quantile: f64, above_ms: f64 },
    /// Sequential: the treatment's share of requests slower than (control's baseline quantile ×
    /// ratio) exceeds the control's share, at confidence 1 − alpha.
    AboveControl { quantile: f64, ratio: f64, alpha: f64 },
}

impl Kind for Latency {
    type Shape = Shape;

    fn validate(shape: &Shape, check: &mut Check<'_, '_>) -> Option<Self> {
        let quantile = shape.quantile;
        if !(quantile > 0.0 && quantile < 1.0) {
            check.fail("quantile", format!("must be in (0, 1), got {quantile}"));
        }
        let alpha = check.confidence(shape.confidence);
        match (shape.above_ms, shape.above_control_ratio) {
            (Some(above_ms), None) => {
                if above_ms <= 0.0 || !above_ms.is_finite() {
                    check.fail("above_ms", format!("must be positive, got {above_ms}"));
                }
                Some(Latency::Above { quantile, above_ms })
            }
            (None, Some(ratio)) => {
                if !(ratio > 1.0 && ratio.is_finite()) {
                    check.fail("above_control_ratio", format!("must be above 1, got {ratio}"));
                }
                check.needs_control("above_control_ratio");
                Some(Latency::AboveControl { quantile, ratio, alpha })
            }
            _ => {
                check.fail("", "needs exactly one of above_ms, above_control_ratio".into());
                None
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Latency::Above { quantile, above_ms } => format!("p{} > {above_ms}ms", quantile * 100.0),
            Latency::AboveControl { quantile, ratio, alpha } => format!("p{} > {ratio} x control's (confidence {})", quantile * 100.0, 1.0 - alpha),
        }
    }

    fn reads(&self) -> Reads {
        match *self {
            Latency::Above { .. } => Reads::default(),
            // The cumulative histograms: the threshold is fixed from the control's.
            Latency::AboveControl { quantile, ratio, .. } => Reads { cumulative: Some(true), fixed_threshold: Some((quantile, ratio)), ..Reads::default() },
        }
    }

    fn is_sequential(&self) -> bool {
        matches!(self, Latency::AboveControl { .. })
    }

    fn judge(&self, data: &Data<'_>) -> Judged {
        match *self {
            Latency::Above { quantile, above_ms } => absolute(data, |s| s.quantile_ms(quantile), |v| v > above_ms),
            Latency::AboveControl { alpha, .. } => match (data.inputs.cumulative, data.threshold) {
                (Some((t, c)), Some(threshold_ms)) if t.requests >= data.min_samples && c.requests >= data.min_samples => {
                    let above = |s: &Summary| s.latency.len().saturating_sub(s.latency.count_between(0, (threshold_ms * 1000.0) as u64));
                    let arms = Arms {
                        treatment_n: t.latency.len(),
                        treatment_x: above(t),
                        control_n: c.latency.len(),
                        control_x: above(c),
                        design_effect: data.inputs.latency_design_effects,
                    };
                    let mut judged = sequential::test(arms, 0.0, alpha * data.inputs.alpha_scale, 0.02, "share of requests slower than the threshold");
                    judged.detail["threshold_ms"] = json!(threshold_ms);
                    judged
                }
                (_, None) => Judged::insufficient(format!("the control's latency baseline needs {} samples first", data.min_samples)),
                (Some((t, c)), _) => Judged::insufficient(sequential::too_few(t.requests, c.requests, data.min_samples)),
                (None, _) => Judged::insufficient("no cumulative data".into()),
            },
        }
    }

    fn chart(&self) -> Value {
        match self {
            Latency::Above { quantile, above_ms } => json!({ "kind": "latency", "quantile": quantile, "above_ms": above_ms }),
            other => json!({ "kind": "other", "describe": other.describe() }),
        }
    }
}

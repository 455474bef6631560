//! `error_rate`: exactly one of `above` (absolute: errors / requests over the rule's `window`
//! above a threshold, excused when the baseline breaches too at a comparable level) or
//! `above_control_by` (sequential: the treatment's error rate exceeds the control's by more than
//! a margin at `confidence`, an mSPRT on the per-user counts since the test segment started,
//! with the user-level design effect).

use serde::Deserialize;
use serde_json::{Value, json};

use super::sequential::{self, Arms};
use super::{Check, Data, Judged, Kind, Reads, absolute};

/// The on-disk shape.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Breached when errors / requests is above this (0–1).
    #[serde(default)]
    pub above: Option<f64>,
    /// Breached when the treatment's error rate exceeds the control's by more than this
    /// (0–1), at `confidence`.
    #[serde(default)]
    pub above_control_by: Option<f64>,
    /// Confidence of a sequential condition (0.5–0.9999). Default 0.99.
    #[serde(default)]
    pub confidence: Option<f64>,
    /// Mixing standard deviation of the mSPRT: the effect size it is most sensitive to.
    /// Default: the margin, at least 0.005.
    #[serde(default)]
    pub tau: Option<f64>,
}

/// A validated error-rate condition.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorRate {
    /// errors / requests > threshold, over the window.
    Above(f64),
    /// Sequential: p_treatment − p_control > margin at confidence 1 − alpha (mSPRT), on the data
    /// since the slice was first seen.
    AboveControl { margin: f64, alpha: f64, tau: f64 },
}

impl Kind for ErrorRate {
    type Shape = Shape;

    fn validate(shape: &Shape, check: &mut Check<'_, '_>) -> Option<Self> {
        let alpha = check.confidence(shape.confidence);
        match (shape.above, shape.above_control_by) {
            (Some(above), None) => {
                if !(0.0..1.0).contains(&above) {
                    check.fail("above", format!("must be in [0, 1), got {above}"));
                }
                if shape.confidence.is_some() || shape.tau.is_some() {
                    check.fail("confidence", "confidence and tau go with above_control_by".into());
                }
                Some(ErrorRate::Above(above))
            }
            (None, Some(margin)) => {
                if !(0.0..1.0).contains(&margin) {
                    check.fail("above_control_by", format!("must be in [0, 1), got {margin}"));
                }
                check.needs_control("above_control_by");
                let tau = shape.tau.unwrap_or(margin.max(0.005));
                if !(tau > 0.0 && tau < 1.0) {
                    check.fail("tau", format!("must be in (0, 1), got {tau}"));
                }
                Some(ErrorRate::AboveControl { margin, alpha, tau })
            }
            _ => {
                check.fail("", "needs exactly one of above, above_control_by".into());
                None
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            ErrorRate::Above(t) => format!("error_rate > {t}"),
            ErrorRate::AboveControl { margin, alpha, .. } => format!("error_rate > control + {margin} (confidence {})", 1.0 - alpha),
        }
    }

    fn reads(&self) -> Reads {
        match self {
            ErrorRate::Above(_) => Reads::default(),
            // The test counts from the user buckets; the cumulative sums are for the record.
            ErrorRate::AboveControl { .. } => Reads { cumulative: Some(false), ..Reads::default() },
        }
    }

    fn is_sequential(&self) -> bool {
        matches!(self, ErrorRate::AboveControl { .. })
    }

    fn judge(&self, data: &Data<'_>) -> Judged {
        match *self {
            ErrorRate::Above(threshold) => absolute(data, |s| s.error_rate(), |v| v > threshold),
            ErrorRate::AboveControl { margin, alpha, tau } => match data.inputs.segment_errors {
                Some((t, c)) if t.requests >= data.min_samples && c.requests >= data.min_samples => {
                    let arms = Arms {
                        treatment_n: t.requests,
                        treatment_x: t.events,
                        control_n: c.requests,
                        control_x: c.events,
                        design_effect: (t.design_effect, c.design_effect),
                    };
                    sequential::test(arms, margin, alpha * data.inputs.alpha_scale, tau, "error rate")
                }
                Some((t, c)) => Judged::insufficient(sequential::too_few(t.requests, c.requests, data.min_samples)),
                None => Judged::insufficient("no cumulative data".into()),
            },
        }
    }

    fn chart(&self) -> Value {
        match self {
            ErrorRate::Above(t) => json!({ "kind": "error_rate", "above": t }),
            other => json!({ "kind": "other", "describe": other.describe() }),
        }
    }
}

//! What the sequential conditions (`above_control_by`, `above_control_ratio`) share: one mSPRT on
//! a difference of proportions, its decision record, and the "too few samples" reason. Not a
//! kind of its own.

use serde_json::{Value, json};

pub use crate::stats::Arms;
use crate::stats::{Msprt, msprt};

use super::{Judged, Outcome};

/// Runs the test at `alpha` (already scaled for the segment) and judges by it: Breached when
/// it rejects (never `shared`: the control is the comparison itself).
pub fn test(arms: Arms, margin: f64, alpha: f64, tau: f64, what: &str) -> Judged {
    let result = msprt(arms, margin, alpha, tau);
    let outcome = if result.rejected { Outcome::Breached { shared: false } } else { Outcome::Fine };
    Judged { outcome, detail: record(&result, arms, margin, what), evidence: Some((result.statistic, alpha)) }
}

/// Why a sequential test cannot run yet.
pub fn too_few(treatment: u64, control: u64, min_samples: u64) -> String {
    format!("{treatment} treatment and {control} control samples since the slice started, {min_samples} each needed")
}

/// The decision record of one sequential test: what the on-call engineer needs to see why it
/// fired (test, statistic, boundary, samples, effect and its interval).
fn record(test: &Msprt, arms: Arms, margin: f64, what: &str) -> Value {
    json!({
        "test": format!("mSPRT, difference of proportions ({what}), anytime-valid"),
        "statistic": test.statistic,
        "boundary": test.boundary,
        "effect": test.effect,
        "interval": [test.interval.0, test.interval.1],
        "margin": margin,
        "samples": { "treatment": arms.treatment_n, "control": arms.control_n },
        "events": { "treatment": arms.treatment_x, "control": arms.control_x },
        "design_effect": { "treatment": arms.design_effect.0.max(1.0), "control": arms.design_effect.1.max(1.0) },
    })
}

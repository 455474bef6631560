//! `throughput: { below_control_ratio: R }`: the treatment's requests per exposure fall far
//! below the control's — a sign that the variant's requests fail before they are traced (a
//! crash on the new code path, a client that never sends the call), which no error rate or
//! latency of the requests that *do* arrive can show.
//!
//! Semantics, over the rule's `window`, per arm (summed over the slice's series):
//! - **exposures** are the arm's flag evaluations ([`Summary::exposures`]), counted in the series
//!   of the service that evaluated the flag; **requests** are the entry-span outcomes attributed
//!   to the arm ([`Summary::requests`]), counted in the series of the judged service. The rate is
//!   requests / exposures. So the slice must include the evaluating service (no `where.service`
//!   other than it): a slice without exposures is Inconclusive, never a breach.
//! - **Sample**: both arms need `min_samples` exposures and the control `min_samples` requests
//!   (its rate is then established); with fewer the condition is Inconclusive (and, like every
//!   condition's, a slice whose treatment has no request at all is NoData unless it breaches).
//! - **Verdict**: Breached when `treatment_rate < R × control_rate` *and* the shortfall is
//!   evidence at `confidence` (default 0.99): given the N requests of both arms, the treatment's
//!   count is Binomial(N, p₀) at the boundary, p₀ = R·e_t / (R·e_t + e_c) (the conditional test
//!   of two Poisson rates), and the one-sided p-value of the observed count — by its normal
//!   approximation, which the sample minimum keeps usable — is below 1 − confidence. Requests
//!   cluster by user, so the test is approximate; `for` asks the breach to persist.
//! - **Baseline**: the control is the comparison itself, so a service-wide drop lowers both arms
//!   and does not breach; the condition is never `shared` (no incident excuse needed) and needs
//!   the rule's `control`. It reads the window like the absolute conditions and is not
//!   sequential (e-BH does not apply).

use serde::Deserialize;
use serde_json::json;

use super::{BaselineKind, Check, Data, Judged, Kind, Outcome};
use crate::aggregate::Summary;
use crate::stats::normal_cdf;

/// The on-disk shape.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Breached when the treatment's requests per exposure are below this fraction of the
    /// control's, in (0, 1) (0.5: fewer than half as many).
    pub below_control_ratio: f64,
    /// Confidence that the shortfall is real (0.5–0.9999). Default 0.99.
    #[serde(default)]
    pub confidence: Option<f64>,
}

/// A validated throughput condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// R: the treatment's rate must stay at least R × the control's.
    pub below_control_ratio: f64,
    /// 1 − confidence.
    pub alpha: f64,
}

/// Requests per exposure of an arm (`None` without exposures).
pub fn rate(s: &Summary) -> Option<f64> {
    (s.exposures > 0).then(|| s.requests as f64 / s.exposures as f64)
}

impl Kind for Throughput {
    type Shape = Shape;

    fn validate(shape: &Shape, check: &mut Check<'_, '_>) -> Option<Self> {
        let ratio = shape.below_control_ratio;
        if !(ratio > 0.0 && ratio < 1.0) {
            check.fail("below_control_ratio", format!("must be in (0, 1), got {ratio}"));
        }
        check.needs_control("below_control_ratio");
        let alpha = check.confidence(shape.confidence);
        Some(Throughput { below_control_ratio: ratio, alpha })
    }

    fn describe(&self) -> String {
        format!("requests per exposure < {} x control's (confidence {})", self.below_control_ratio, 1.0 - self.alpha)
    }

    fn judge(&self, data: &Data<'_>) -> Judged {
        let treatment = data.inputs.treatment;
        let Some((BaselineKind::Control, control)) = data.inputs.baseline else {
            return Judged::insufficient("throughput compares with the control arm, which is not known".into());
        };
        let min = data.min_samples;
        if treatment.exposures < min || control.exposures < min {
            return Judged::insufficient(format!(
                "{} treatment and {} control exposures in the window, {min} each needed",
                treatment.exposures, control.exposures
            ));
        }
        if control.requests < min {
            return Judged::insufficient(format!("{} of {min} control requests in the window", control.requests));
        }
        let (Some(t_rate), Some(c_rate)) = (rate(treatment), rate(control)) else {
            return Judged::insufficient("no exposures in the window".into());
        };
        let p_value = shortfall_p_value(treatment, control, self.below_control_ratio);
        let breached = t_rate < self.below_control_ratio * c_rate && p_value < self.alpha;
        let outcome = if breached { Outcome::Breached { shared: false } } else { Outcome::Fine };
        Judged::new(
            outcome,
            json!({
                "treatment_rate": t_rate,
                "control_rate": c_rate,
                "observed_ratio": t_rate / c_rate,
                "below_control_ratio": self.below_control_ratio,
                "p_value": p_value,
                "alpha": self.alpha,
                "exposures": { "treatment": treatment.exposures, "control": control.exposures },
                "requests": { "treatment": treatment.requests, "control": control.requests },
            }),
        )
    }
}

/// One-sided p-value that the treatment's requests are this few or fewer if its rate were
/// exactly `ratio` × the control's: the normal approximation of Binomial(N, p₀).
fn shortfall_p_value(treatment: &Summary, control: &Summary, ratio: f64) -> f64 {
    let n = (treatment.requests + control.requests) as f64;
    let weight = ratio * treatment.exposures as f64;
    let p0 = weight / (weight + control.exposures as f64);
    let sd = (n * p0 * (1.0 - p0)).sqrt();
    if n == 0.0 || sd == 0.0 {
        return 1.0;
    }
    // Continuity-corrected: P(X ≤ k) ≈ Φ((k + ½ − N·p₀) / sd).
    normal_cdf((treatment.requests as f64 + 0.5 - n * p0) / sd)
}

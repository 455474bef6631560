//! Judging one rule slice: pure, no clock, no I/O. The worst condition wins; too few samples is
//! Inconclusive and no data is NoData — neither is ever a failure nor a success. An absolute
//! condition condemns the treatment only when its baseline (the control arm, or else the
//! slice's unflagged traffic) is not breaching the same condition too at a comparable level
//! (at least half the treatment's rate, [`COMPARABLE_BASELINE`]): that is an incident of the
//! service, not of the flag.

use serde_json::{Value, json};

use super::Rule;
use super::condition::{Condition, Data, Judged, Outcome};
use crate::aggregate::Summary;

/// A slice's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Healthy,
    Breached,
    Inconclusive(String),
    NoData,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Breached => "breached",
            Verdict::Inconclusive(_) => "inconclusive",
            Verdict::NoData => "no_data",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Inconclusive(r) => Some(r),
            _ => None,
        }
    }
}

/// The verdict with its decision record.
#[derive(Clone, Debug)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The baseline breaches too: a service-wide incident (notify, never kill).
    pub incident: bool,
    /// Inputs, thresholds, observed values and sample sizes.
    pub record: Value,
    /// The largest e-value (mSPRT statistic) of the sequential conditions, with their alpha.
    pub sequential_evidence: Option<(f64, f64)>,
    /// A window or burn-rate condition is breached (not only a sequential one).
    pub absolute_breach: bool,
}

pub use super::condition::COMPARABLE_BASELINE;
pub use super::inputs::{BaselineKind, Inputs, UserCounts, WindowPair};

/// Summarises an arm for the decision record.
pub fn arm(s: &Summary) -> Value {
    json!({
        "requests": s.requests,
        "errors": s.errors,
        "error_rate": s.error_rate(),
        "p50_ms": s.quantile_ms(0.5),
        "p95_ms": s.quantile_ms(0.95),
        "p99_ms": s.quantile_ms(0.99),
        "exposures": s.exposures,
        "window_from": s.covered_from.rfc3339(),
    })
}

/// Judges a slice: each condition on its own ([`Condition::judge`]), then the worst outcome
/// wins (`verdict_of`). Absolute and burn-rate conditions read the window and are checked
/// against the baseline (blast radius); sequential ones compare the arms since the slice was
/// first seen.
pub fn judge(rule: &Rule, inputs: &Inputs<'_>) -> Judgement {
    let baseline_usable = inputs.baseline.filter(|(_, b)| b.requests >= rule.min_samples);
    let judged: Vec<Judged> = rule
        .when
        .iter()
        .enumerate()
        .map(|(i, condition)| {
            let data = Data {
                inputs,
                min_samples: rule.min_samples,
                baseline: baseline_usable,
                threshold: inputs.thresholds.get(i).copied().flatten(),
                pairs: inputs.pairs.get(i).map(Vec::as_slice).unwrap_or(&[]),
            };
            condition.judge(&data)
        })
        .collect();
    let (verdict, incident) = verdict_of(&judged, baseline_usable.map(|(kind, _)| kind), inputs);
    // Whether a window or burn-rate condition (not only a sequential one) is breached.
    let absolute_breach = rule.when.iter().zip(&judged).any(|(c, j)| !c.is_sequential() && j.outcome == Outcome::Breached { shared: false });
    let record = decision_record(rule, inputs, &verdict, &judged);
    Judgement { verdict, incident, record, sequential_evidence: sequential_evidence(&judged), absolute_breach }
}

/// The worst outcome wins: a breach not shared by the baseline is Breached; breaches all shared
/// are an incident (Inconclusive); else any Fine is Healthy; no data at all is NoData; else the
/// first reason for too few samples.
fn verdict_of(judged: &[Judged], baseline: Option<BaselineKind>, inputs: &Inputs<'_>) -> (Verdict, bool) {
    let breached: Vec<bool> = judged.iter().filter_map(|j| if let Outcome::Breached { shared } = j.outcome { Some(shared) } else { None }).collect();
    let cumulative_requests = inputs.cumulative.map_or(0, |(t, _)| t.requests);
    if breached.iter().any(|shared| !shared) {
        (Verdict::Breached, false)
    } else if !breached.is_empty() {
        let kind = match baseline {
            Some(BaselineKind::Control) => "control",
            _ => "unflagged traffic",
        };
        (Verdict::Inconclusive(format!("the {kind} of this slice breaches too: a service-wide problem, not this flag")), true)
    } else if judged.iter().any(|j| j.outcome == Outcome::Fine) {
        (Verdict::Healthy, false)
    } else if inputs.treatment.requests == 0 && cumulative_requests == 0 {
        (Verdict::NoData, false)
    } else {
        let why = judged.iter().find_map(|j| if let Outcome::Insufficient(w) = &j.outcome { Some(w.clone()) } else { None }).unwrap_or_default();
        (Verdict::Inconclusive(why), false)
    }
}

/// The sequential conditions' evidence combined: the mean of their e-values (the mean of
/// e-values is an e-value; their max is not), at the smallest alpha.
fn sequential_evidence(judged: &[Judged]) -> Option<(f64, f64)> {
    let e_values: Vec<(f64, f64)> = judged.iter().filter_map(|j| j.evidence).collect();
    (!e_values.is_empty())
        .then(|| (e_values.iter().map(|e| e.0).sum::<f64>() / e_values.len() as f64, e_values.iter().map(|e| e.1).fold(f64::INFINITY, f64::min)))
}

/// The decision record: inputs, thresholds, observed values and sample sizes.
fn decision_record(rule: &Rule, inputs: &Inputs<'_>, verdict: &Verdict, judged: &[Judged]) -> Value {
    let conditions: Vec<Value> = rule.when.iter().zip(judged).map(|(condition, j)| condition_record(condition, j)).collect();
    json!({
        "rule": rule.name,
        "verdict": verdict.label(),
        "reason": verdict.reason(),
        "window": humantime::format_duration(rule.window).to_string(),
        "min_samples": rule.min_samples,
        "treatment": { "variants": rule.treatment, "stats": arm(inputs.treatment) },
        "baseline": inputs.baseline.map(|(kind, b)| json!({
            "kind": match kind { BaselineKind::Control => "control", BaselineKind::Unflagged => "unflagged" },
            "variant": rule.control,
            "stats": arm(b),
        })),
        "cumulative": inputs.cumulative.map(|(t, c)| json!({ "treatment": arm(t), "control": arm(c) })),
        "conditions": conditions,
    })
}

/// One condition's entry of the decision record.
fn condition_record(condition: &Condition, judged: &Judged) -> Value {
    let (breached, shared, insufficient) = match &judged.outcome {
        Outcome::Breached { shared } => (true, *shared, None),
        Outcome::Fine => (false, false, None),
        Outcome::Insufficient(why) => (false, false, Some(why.clone())),
    };
    let mut entry = json!({ "condition": condition.describe(), "breached": breached, "baseline_breached": shared, "insufficient": insufficient });
    if let Value::Object(extra) = &judged.detail {
        for (k, v) in extra {
            entry[k] = v.clone();
        }
    }
    entry
}

/// Judges absolute conditions over the window only (tests, simple callers).
pub fn judge_window(rule: &Rule, treatment: &Summary, baseline: Option<(BaselineKind, &Summary)>) -> Judgement {
    judge(rule, &Inputs::window(treatment, baseline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Window;
    use crate::rules::condition::{error_rate::ErrorRate, latency::Latency};
    use crate::time::Timestamp;

    use crate::rules::test_rule as rule;

    fn summary(requests: u64, errors: u64, latency_us: u64) -> Summary {
        let mut w = Window::new();
        for i in 0..requests {
            w.record_request(Timestamp(1_000), i < errors, latency_us);
        }
        w.summary_since(Timestamp(0))
    }

    #[test]
    fn verdict_edges() {
        let r = rule(vec![Condition::ErrorRate(ErrorRate::Above(0.05)), Condition::Latency(Latency::Above { quantile: 0.95, above_ms: 800.0 })]);
        let healthy_control = summary(1000, 0, 10_000);
        struct Case(&'static str, Summary, &'static str);
        let cases = [
            Case("no data", summary(0, 0, 0), "no_data"),
            Case("too few samples, all errors", summary(99, 99, 10_000), "inconclusive"),
            Case("exactly at the threshold is healthy", summary(100, 5, 10_000), "healthy"),
            Case("just above the threshold", summary(100, 6, 10_000), "breached"),
            Case("latency breach alone", summary(200, 0, 900_000), "breached"),
            Case("latency under", summary(200, 0, 700_000), "healthy"),
        ];
        for Case(name, treatment, want) in cases {
            let j = judge_window(&r, &treatment, Some((BaselineKind::Control, &healthy_control)));
            assert_eq!(j.verdict.label(), want, "{name}: {}", j.record);
            assert!(!j.incident, "{name}");
        }
    }

    #[test]
    fn a_breaching_baseline_makes_it_an_incident_not_a_kill() {
        let r = rule(vec![Condition::ErrorRate(ErrorRate::Above(0.05))]);
        let bad = summary(1000, 400, 1000);
        let j = judge_window(&r, &summary(200, 80, 1000), Some((BaselineKind::Control, &bad)));
        assert_eq!(j.verdict.label(), "inconclusive");
        assert!(j.incident);
        // A baseline with too few samples cannot excuse the treatment.
        let j = judge_window(&r, &summary(200, 80, 1000), Some((BaselineKind::Unflagged, &summary(10, 10, 1000))));
        assert_eq!(j.verdict, Verdict::Breached);
    }

    /// Review finding 12(b): a baseline over the threshold but far below the treatment does not
    /// excuse it (fabricated unflagged errors made any breach an incident).
    #[test]
    fn a_baseline_far_below_the_treatment_does_not_excuse_it() {
        let r = rule(vec![Condition::ErrorRate(ErrorRate::Above(0.05))]);
        let j = judge_window(&r, &summary(200, 80, 1000), Some((BaselineKind::Unflagged, &summary(1000, 60, 1000))));
        assert_eq!(j.verdict, Verdict::Breached, "40 % against 6 %: {}", j.record);
        assert!(!j.incident);
        // Comparable (at least half the treatment's rate): still the service's problem.
        let j = judge_window(&r, &summary(200, 80, 1000), Some((BaselineKind::Unflagged, &summary(1000, 200, 1000))));
        assert!(j.incident, "40 % against 20 %");
    }

    #[test]
    fn the_record_names_inputs_and_thresholds() {
        let r = rule(vec![Condition::ErrorRate(ErrorRate::Above(0.05))]);
        let j = judge_window(&r, &summary(200, 80, 1000), None);
        assert_eq!(j.record["treatment"]["stats"]["requests"], 200);
        assert_eq!(j.record["conditions"][0]["condition"], "error_rate > 0.05");
        assert_eq!(j.record["conditions"][0]["observed"], 0.4);
        assert_eq!(j.record["min_samples"], 100);
    }
}

//! Judging one rule slice: pure, no clock, no I/O. The worst condition wins; too few samples is
//! Inconclusive and no data is NoData — neither is ever a failure nor a success. An absolute
//! condition condemns the treatment only when its baseline (the control arm, or else the
//! slice's unflagged traffic) is not breaching the same condition too at a comparable level
//! (at least half the treatment's rate, [`COMPARABLE_BASELINE`]): that is an incident of the
//! service, not of the flag.

use serde_json::{Value, json};

use super::{Condition, Rule};
use crate::aggregate::Summary;
use crate::stats::{Arms, Msprt, msprt};

/// A slice's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Healthy,
    Breached,
    Inconclusive(String),
    NoData,
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

/// Which baseline the treatment is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BaselineKind {
    Control,
    Unflagged,
}

fn observe(condition: &Condition, s: &Summary) -> Option<f64> {
    match condition {
        Condition::ErrorRateAbove(_) => s.error_rate(),
        Condition::LatencyAbove { quantile, .. } => s.quantile_ms(*quantile),
        _ => None,
    }
}

/// How close the baseline must be to the treatment for "the baseline breaches too" to excuse
/// it (an incident, not this flag): at least half the treatment's rate. A baseline merely over
/// the same threshold is not enough — a few fabricated or unrelated unflagged errors would
/// otherwise turn any breach into an incident (treatment 40 %, baseline 6 %, threshold 5 %).
pub const COMPARABLE_BASELINE: f64 = 0.5;

/// Whether the baseline's `baseline` is comparable to the treatment's `treatment`.
fn comparable(baseline: Option<f64>, treatment: Option<f64>) -> bool {
    match (baseline, treatment) {
        (Some(b), Some(t)) => b >= COMPARABLE_BASELINE * t,
        _ => false,
    }
}

fn breaches(condition: &Condition, observed: Option<f64>) -> bool {
    match (condition, observed) {
        (Condition::ErrorRateAbove(t), Some(v)) => v > *t,
        (Condition::LatencyAbove { above_ms, .. }, Some(v)) => v > *above_ms,
        _ => false,
    }
}

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

/// One burn-rate window pair of the treatment (and of the baseline, when known).
#[derive(Clone, Debug)]
pub struct BurnWindows {
    pub long: Summary,
    pub short: Summary,
    pub baseline: Option<(Summary, Summary)>,
}

/// Everything a slice's judgement reads, prepared by the engine from the windows.
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

pub struct Inputs<'a> {
    /// The treatment over the rule's window.
    pub treatment: &'a Summary,
    /// The baseline over the rule's window: the control arm, or the unflagged traffic.
    pub baseline: Option<(BaselineKind, &'a Summary)>,
    /// Since the slice was first seen: (treatment, control). Sequential conditions need it.
    pub cumulative: Option<(&'a Summary, &'a Summary)>,
    /// Per condition: the fixed threshold (ms) of a `LatencyAboveControl`, once the control's
    /// baseline is established.
    pub thresholds: &'a [Option<f64>],
    /// Per condition: for a `BurnRate`, one entry per window pair.
    pub burn: &'a [Vec<BurnWindows>],
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
        Inputs { treatment, baseline, cumulative: None, thresholds: &[], burn: &[], alpha_scale: 1.0, segment_errors: None, latency_design_effects: (1.0, 1.0) }
    }
}

enum Outcome {
    Breached { shared: bool },
    Fine,
    Insufficient(String),
}

/// Judges a slice. Absolute and burn-rate conditions read the window and are checked against
/// the baseline (blast radius); sequential ones compare the arms since the slice was first seen.
pub fn judge(rule: &Rule, inputs: &Inputs<'_>) -> Judgement {
    let treatment = inputs.treatment;
    let baseline_usable = inputs.baseline.filter(|(_, b)| b.requests >= rule.min_samples);
    let mut conditions = Vec::new();
    let mut outcomes = Vec::new();
    // (e-value, alpha) of each sequential condition judged; combined by their mean (the mean of
    // e-values is an e-value; their max is not).
    let mut e_values: Vec<(f64, f64)> = Vec::new();
    for (i, condition) in rule.when.iter().enumerate() {
        let (outcome, detail) = match condition {
            Condition::ErrorRateAbove(_) | Condition::LatencyAbove { .. } => {
                let observed = observe(condition, treatment);
                let baseline_observed = baseline_usable.and_then(|(_, b)| observe(condition, b));
                let outcome = if treatment.requests < rule.min_samples {
                    Outcome::Insufficient(format!("{} of {} samples in the window", treatment.requests, rule.min_samples))
                } else if breaches(condition, observed) {
                    Outcome::Breached { shared: baseline_usable.is_some() && breaches(condition, baseline_observed) && comparable(baseline_observed, observed) }
                } else {
                    Outcome::Fine
                };
                (outcome, json!({ "observed": observed, "baseline_observed": baseline_observed }))
            }
            Condition::ErrorRateAboveControl { margin, alpha, tau } => match inputs.segment_errors {
                Some((t, c)) if t.requests >= rule.min_samples && c.requests >= rule.min_samples => {
                    let arms = Arms {
                        treatment_n: t.requests,
                        treatment_x: t.events,
                        control_n: c.requests,
                        control_x: c.events,
                        design_effect: (t.design_effect, c.design_effect),
                    };
                    let test = msprt(arms, *margin, alpha * inputs.alpha_scale, *tau);
                    e_values.push((test.statistic, alpha * inputs.alpha_scale));
                    (if test.rejected { Outcome::Breached { shared: false } } else { Outcome::Fine }, sequential_record(&test, arms, *margin, "error rate"))
                }
                Some((t, c)) => (
                    Outcome::Insufficient(format!(
                        "{} treatment and {} control samples since the slice started, {} each needed",
                        t.requests, c.requests, rule.min_samples
                    )),
                    Value::Null,
                ),
                None => (Outcome::Insufficient("no cumulative data".into()), Value::Null),
            },
            Condition::LatencyAboveControl { alpha, .. } => match (inputs.cumulative, inputs.thresholds.get(i).copied().flatten()) {
                (Some((t, c)), Some(threshold_ms)) if t.requests >= rule.min_samples && c.requests >= rule.min_samples => {
                    let above = |s: &Summary| s.latency.len().saturating_sub(s.latency.count_between(0, (threshold_ms * 1000.0) as u64));
                    let arms = Arms {
                        treatment_n: t.latency.len(),
                        treatment_x: above(t),
                        control_n: c.latency.len(),
                        control_x: above(c),
                        design_effect: inputs.latency_design_effects,
                    };
                    let test = msprt(arms, 0.0, alpha * inputs.alpha_scale, 0.02);
                    e_values.push((test.statistic, alpha * inputs.alpha_scale));
                    let mut record = sequential_record(&test, arms, 0.0, "share of requests slower than the threshold");
                    record["threshold_ms"] = json!(threshold_ms);
                    (if test.rejected { Outcome::Breached { shared: false } } else { Outcome::Fine }, record)
                }
                (_, None) => (Outcome::Insufficient(format!("the control's latency baseline needs {} samples first", rule.min_samples)), Value::Null),
                (Some((t, c)), _) => (
                    Outcome::Insufficient(format!(
                        "{} treatment and {} control samples since the slice started, {} each needed",
                        t.requests, c.requests, rule.min_samples
                    )),
                    Value::Null,
                ),
                (None, _) => (Outcome::Insufficient("no cumulative data".into()), Value::Null),
            },
            Condition::BurnRate { objective, windows } => {
                let budget = 1.0 - objective;
                let pairs = inputs.burn.get(i).map(Vec::as_slice).unwrap_or(&[]);
                let burn = |s: &Summary| s.error_rate().map(|r| r / budget);
                let mut details = Vec::new();
                let (mut usable_any, mut hot_shared): (bool, Vec<bool>) = (false, Vec::new());
                for (pair, (long, short, factor)) in pairs.iter().zip(windows) {
                    let (bl, bs) = (burn(&pair.long), burn(&pair.short));
                    let hot = |l: Option<f64>, s: Option<f64>| l.is_some_and(|l| l >= *factor) && s.is_some_and(|s| s >= *factor);
                    let usable = pair.long.requests >= rule.min_samples;
                    let baseline_hot = pair
                        .baseline
                        .as_ref()
                        .filter(|(l, _)| l.requests >= rule.min_samples)
                        .is_some_and(|(l, s)| hot(burn(l), burn(s)) && comparable(burn(l), bl));
                    usable_any |= usable;
                    if usable && hot(bl, bs) {
                        hot_shared.push(baseline_hot);
                    }
                    details.push(json!({ "long": humantime::format_duration(*long).to_string(), "short": humantime::format_duration(*short).to_string(), "factor": factor,
                        "burn_long": bl, "burn_short": bs, "requests_long": pair.long.requests, "baseline_hot": baseline_hot }));
                }
                let outcome = if !hot_shared.is_empty() {
                    Outcome::Breached { shared: hot_shared.iter().all(|b| *b) }
                } else if usable_any {
                    Outcome::Fine
                } else {
                    Outcome::Insufficient(format!("fewer than {} samples in the long burn-rate windows", rule.min_samples))
                };
                (outcome, json!({ "budget": budget, "windows": details }))
            }
        };
        let (breached, shared, insufficient) = match &outcome {
            Outcome::Breached { shared } => (true, *shared, None),
            Outcome::Fine => (false, false, None),
            Outcome::Insufficient(why) => (false, false, Some(why.clone())),
        };
        let mut entry = json!({ "condition": condition.describe(), "breached": breached, "baseline_breached": shared, "insufficient": insufficient });
        if let Value::Object(extra) = detail {
            for (k, v) in extra {
                entry[k] = v;
            }
        }
        conditions.push(entry);
        outcomes.push(outcome);
    }
    let sequential_evidence = (!e_values.is_empty())
        .then(|| (e_values.iter().map(|e| e.0).sum::<f64>() / e_values.len() as f64, e_values.iter().map(|e| e.1).fold(f64::INFINITY, f64::min)));
    let breached: Vec<bool> = outcomes.iter().filter_map(|o| if let Outcome::Breached { shared } = o { Some(*shared) } else { None }).collect();
    let cumulative_requests = inputs.cumulative.map_or(0, |(t, _)| t.requests);
    let (verdict, incident) = if breached.iter().any(|shared| !shared) {
        (Verdict::Breached, false)
    } else if !breached.is_empty() {
        let kind = match baseline_usable.map(|(k, _)| k) {
            Some(BaselineKind::Control) => "control",
            _ => "unflagged traffic",
        };
        (Verdict::Inconclusive(format!("the {kind} of this slice breaches too: a service-wide problem, not this flag")), true)
    } else if outcomes.iter().any(|o| matches!(o, Outcome::Fine)) {
        (Verdict::Healthy, false)
    } else if treatment.requests == 0 && cumulative_requests == 0 {
        (Verdict::NoData, false)
    } else {
        let why = outcomes.iter().find_map(|o| if let Outcome::Insufficient(w) = o { Some(w.clone()) } else { None }).unwrap_or_default();
        (Verdict::Inconclusive(why), false)
    };
    // Whether a window or burn-rate condition (not only a sequential one) is breached.
    let absolute_breach = rule.when.iter().zip(&outcomes).any(|(c, o)| !c.is_sequential() && matches!(o, Outcome::Breached { shared: false }));
    let record = json!({
        "rule": rule.name,
        "verdict": verdict.label(),
        "reason": verdict.reason(),
        "window": humantime::format_duration(rule.window).to_string(),
        "min_samples": rule.min_samples,
        "treatment": { "variants": rule.treatment, "stats": arm(treatment) },
        "baseline": inputs.baseline.map(|(kind, b)| json!({
            "kind": match kind { BaselineKind::Control => "control", BaselineKind::Unflagged => "unflagged" },
            "variant": rule.control,
            "stats": arm(b),
        })),
        "cumulative": inputs.cumulative.map(|(t, c)| json!({ "treatment": arm(t), "control": arm(c) })),
        "conditions": conditions,
    });
    Judgement { verdict, incident, record, sequential_evidence, absolute_breach }
}

/// The decision record of one sequential test: what the on-call engineer needs to see why it
/// fired (test, statistic, boundary, samples, effect and its interval).
fn sequential_record(test: &Msprt, arms: Arms, margin: f64, what: &str) -> Value {
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

/// Judges absolute conditions over the window only (tests, simple callers).
pub fn judge_window(rule: &Rule, treatment: &Summary, baseline: Option<(BaselineKind, &Summary)>) -> Judgement {
    judge(rule, &Inputs::window(treatment, baseline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Window;
    use crate::rules::{Filter, Mode};
    use crate::time::Timestamp;
    use std::time::Duration;

    fn rule(when: Vec<Condition>) -> Rule {
        Rule {
            name: "r".into(),
            file: "r.yaml".into(),
            line: None,
            flag_pattern: "f".into(),
            flag: globset::Glob::new("f").unwrap().compile_matcher(),
            treatment: vec!["on".into()],
            control: Some("off".into()),
            filter: Filter::default(),
            per: vec![],
            when,
            window: Duration::from_secs(60),
            min_samples: 100,
            for_: Duration::ZERO,
            kill: None,
            widen: false,
            auto_restore: None,
            cooldown: Duration::from_secs(60),
            mode: Mode::DryRun,
            expected_share: None,
        }
    }

    fn summary(requests: u64, errors: u64, latency_us: u64) -> Summary {
        let mut w = Window::new();
        for i in 0..requests {
            w.record_request(Timestamp(1_000), i < errors, latency_us);
        }
        w.summary_since(Timestamp(0))
    }

    #[test]
    fn verdict_edges() {
        let r = rule(vec![Condition::ErrorRateAbove(0.05), Condition::LatencyAbove { quantile: 0.95, above_ms: 800.0 }]);
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
        let r = rule(vec![Condition::ErrorRateAbove(0.05)]);
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
        let r = rule(vec![Condition::ErrorRateAbove(0.05)]);
        let j = judge_window(&r, &summary(200, 80, 1000), Some((BaselineKind::Unflagged, &summary(1000, 60, 1000))));
        assert_eq!(j.verdict, Verdict::Breached, "40 % against 6 %: {}", j.record);
        assert!(!j.incident);
        // Comparable (at least half the treatment's rate): still the service's problem.
        let j = judge_window(&r, &summary(200, 80, 1000), Some((BaselineKind::Unflagged, &summary(1000, 200, 1000))));
        assert!(j.incident, "40 % against 20 %");
    }

    #[test]
    fn the_record_names_inputs_and_thresholds() {
        let r = rule(vec![Condition::ErrorRateAbove(0.05)]);
        let j = judge_window(&r, &summary(200, 80, 1000), None);
        assert_eq!(j.record["treatment"]["stats"]["requests"], 200);
        assert_eq!(j.record["conditions"][0]["condition"], "error_rate > 0.05");
        assert_eq!(j.record["conditions"][0]["observed"], 0.4);
        assert_eq!(j.record["min_samples"], 100);
    }
}

//! Judging one rule slice: pure, no clock, no I/O. The worst condition wins; too few samples is
//! Inconclusive and no data is NoData — neither is ever a failure nor a success. An absolute
//! condition condemns the treatment only when its baseline (the control arm, or else the
//! slice's unflagged traffic) is not breaching the same condition too: that is an incident of
//! the service, not of the flag.

use serde_json::{Value, json};

use super::{Condition, Rule};
use crate::aggregate::Summary;

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

/// Judges a slice's treatment arm, against `baseline` when given.
pub fn judge(rule: &Rule, treatment: &Summary, baseline: Option<(BaselineKind, &Summary)>) -> Judgement {
    let mut conditions = Vec::new();
    let mut any_breached = false;
    let mut all_breaches_shared = true;
    let baseline_usable = baseline.filter(|(_, b)| b.requests >= rule.min_samples);
    for condition in &rule.when {
        let observed = observe(condition, treatment);
        let breached = treatment.requests >= rule.min_samples && breaches(condition, observed);
        let baseline_observed = baseline_usable.and_then(|(_, b)| observe(condition, b));
        let shared = breached && baseline_usable.is_some() && breaches(condition, baseline_observed);
        if breached {
            any_breached = true;
            all_breaches_shared &= shared;
        }
        conditions.push(json!({
            "condition": condition.describe(),
            "observed": observed,
            "breached": breached,
            "baseline_observed": baseline_observed,
            "baseline_breached": shared,
        }));
    }
    let (verdict, incident) = if treatment.requests == 0 {
        (Verdict::NoData, false)
    } else if treatment.requests < rule.min_samples {
        (Verdict::Inconclusive(format!("{} of {} samples in the window", treatment.requests, rule.min_samples)), false)
    } else if !any_breached {
        (Verdict::Healthy, false)
    } else if all_breaches_shared {
        let kind = match baseline_usable.map(|(k, _)| k) {
            Some(BaselineKind::Control) => "control",
            _ => "unflagged traffic",
        };
        (Verdict::Inconclusive(format!("the {kind} of this slice breaches too: a service-wide problem, not this flag")), true)
    } else {
        (Verdict::Breached, false)
    };
    let record = json!({
        "rule": rule.name,
        "verdict": verdict.label(),
        "reason": verdict.reason(),
        "window": humantime::format_duration(rule.window).to_string(),
        "min_samples": rule.min_samples,
        "treatment": { "variants": rule.treatment, "stats": arm(treatment) },
        "baseline": baseline.map(|(kind, b)| json!({
            "kind": match kind { BaselineKind::Control => "control", BaselineKind::Unflagged => "unflagged" },
            "variant": rule.control,
            "stats": arm(b),
        })),
        "conditions": conditions,
    });
    Judgement { verdict, incident, record }
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
            cooldown: Duration::from_secs(60),
            mode: Mode::DryRun,
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
            let j = judge(&r, &treatment, Some((BaselineKind::Control, &healthy_control)));
            assert_eq!(j.verdict.label(), want, "{name}: {}", j.record);
            assert!(!j.incident, "{name}");
        }
    }

    #[test]
    fn a_breaching_baseline_makes_it_an_incident_not_a_kill() {
        let r = rule(vec![Condition::ErrorRateAbove(0.05)]);
        let bad = summary(1000, 400, 1000);
        let j = judge(&r, &summary(200, 80, 1000), Some((BaselineKind::Control, &bad)));
        assert_eq!(j.verdict.label(), "inconclusive");
        assert!(j.incident);
        // A baseline with too few samples cannot excuse the treatment.
        let j = judge(&r, &summary(200, 80, 1000), Some((BaselineKind::Unflagged, &summary(10, 10, 1000))));
        assert_eq!(j.verdict, Verdict::Breached);
    }

    #[test]
    fn the_record_names_inputs_and_thresholds() {
        let r = rule(vec![Condition::ErrorRateAbove(0.05)]);
        let j = judge(&r, &summary(200, 80, 1000), None);
        assert_eq!(j.record["treatment"]["stats"]["requests"], 200);
        assert_eq!(j.record["conditions"][0]["condition"], "error_rate > 0.05");
        assert_eq!(j.record["conditions"][0]["observed"], 0.4);
        assert_eq!(j.record["min_samples"], 100);
    }
}

//! The conditions' validation (file:line:field) and judging edges, one table per kind that
//! needs one; the kinds that existed before the registry keep their tests in `evaluate` and
//! `engine`.

use std::collections::BTreeSet;
use std::path::Path;

use super::throughput::Throughput;
use super::*;
use crate::aggregate::Window;
use crate::rules::Condition;
use crate::rules::evaluate::{Verdict, judge_window};
use crate::rules::test_rule as rule;
use crate::time::Timestamp;

fn errors(source: &str) -> Vec<String> {
    match crate::rulefile::parse(Path::new("t.yaml"), source, &BTreeSet::new()) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn rule_file(control: &str, when: &str) -> String {
    format!("rules:\n  - name: r\n    flag: f\n    treatment: \"on\"\n{control}    when:\n{when}    window: 5m\n")
}

#[test]
fn throughput_validation_names_file_line_and_field() {
    let control = "    control: \"off\"\n";
    struct Case(&'static str, &'static str, &'static [&'static str]);
    let cases = [
        Case("valid", "      - throughput: { below_control_ratio: 0.5 }\n", &[]),
        Case(
            "ratio of 1",
            "      - throughput: { below_control_ratio: 1.0 }\n",
            &["t.yaml:7: rules[0].when[0].throughput.below_control_ratio: must be in (0, 1), got 1"],
        ),
        Case(
            "ratio of 0",
            "      - throughput: { below_control_ratio: 0 }\n",
            &["t.yaml:7: rules[0].when[0].throughput.below_control_ratio: must be in (0, 1), got 0"],
        ),
        Case(
            "confidence out of range",
            "      - throughput: { below_control_ratio: 0.5, confidence: 1 }\n",
            &["t.yaml:7: rules[0].when[0].throughput.confidence: must be in [0.5, 0.9999], got 1"],
        ),
        Case(
            "a typo",
            "      - throughput: { below_ratio: 0.5 }\n",
            &["t.yaml:7: rules[0].when[0].throughput: unknown field `below_ratio`, expected `below_control_ratio` or `confidence`"],
        ),
        Case(
            "two kinds in one entry",
            "      - { throughput: { below_control_ratio: 0.5 }, error_rate: { above: 0.1 } }\n",
            &["t.yaml:7: rules[0].when[0]: each condition needs exactly one of error_rate, latency, burn_rate, throughput"],
        ),
    ];
    for Case(name, when, want) in cases {
        assert_eq!(errors(&rule_file(control, when)), *want, "{name}");
    }
    assert_eq!(
        errors(&rule_file("", "      - throughput: { below_control_ratio: 0.5 }\n")),
        ["t.yaml:6: rules[0].when[0].throughput.below_control_ratio: needs the rule's control variant"],
        "without a control"
    );
}

#[test]
fn every_registered_kind_is_a_key_of_the_shape() {
    assert_eq!(KEYS, ["error_rate", "latency", "burn_rate", "throughput"]);
    let shape: ConditionShape = serde_yaml::from_str("throughput: { below_control_ratio: 0.25 }").unwrap();
    let mut errors = Vec::new();
    let lines = Default::default();
    let mut report = Report { file: Path::new("t.yaml"), lines: &lines, prefix: "rules[0]".into(), errors: &mut errors, failed: false };
    let condition = shape.validate("when[0]", true, &mut report);
    let Some(Condition::Throughput(t)) = condition else { panic!("a throughput condition") };
    assert!((t.alpha - 0.01).abs() < 1e-12 && t.below_control_ratio == 0.25, "{t:?}");
    assert!(errors.is_empty());
}

/// An arm with `exposures` flag evaluations and `requests` traced requests.
fn arm(exposures: u64, requests: u64) -> Summary {
    let mut w = Window::new();
    for _ in 0..exposures {
        w.record_exposure(Timestamp(1_000), false);
    }
    for _ in 0..requests {
        w.record_request(Timestamp(1_000), false, 1_000);
    }
    w.summary_since(Timestamp(0))
}

#[test]
fn throughput_judging_edges() {
    let r = rule(vec![Condition::Throughput(Throughput { below_control_ratio: 0.5, alpha: 0.01 })]);
    // The control: 1000 exposures, 2 requests each.
    let control = arm(1000, 2000);
    struct Case(&'static str, Summary, Summary, &'static str);
    let cases = [
        Case("no data in either arm", arm(0, 0), arm(0, 0), "no_data"),
        // No request at all is NoData, as for every condition (never a failure, nor a success).
        Case("too few treatment exposures, no requests at all", arm(99, 0), control.clone(), "no_data"),
        Case("too few treatment exposures", arm(99, 10), control.clone(), "inconclusive"),
        Case("too few control exposures", arm(500, 1), arm(99, 2000), "inconclusive"),
        Case("too few control requests", arm(500, 1), arm(1000, 99), "inconclusive"),
        Case("the same rate is healthy", arm(500, 1000), control.clone(), "healthy"),
        Case("just above half the control's rate", arm(500, 520), control.clone(), "healthy"),
        Case("no request of the treatment traced", arm(500, 0), control.clone(), "breached"),
        Case("a quarter of the control's rate", arm(500, 250), control.clone(), "breached"),
        // Below the ratio, but 100 exposures at 0.45 requests each is not evidence at 99 %.
        Case("below the ratio without evidence", arm(100, 90), control.clone(), "healthy"),
        Case("more requests than the control is healthy", arm(500, 5000), control.clone(), "healthy"),
    ];
    for Case(name, treatment, control, want) in cases {
        let j = judge_window(&r, &treatment, Some((BaselineKind::Control, &control)));
        assert_eq!(j.verdict.label(), want, "{name}: {}", j.record);
        assert!(!j.incident, "{name}: the control is the comparison, never an incident");
    }
}

#[test]
fn throughput_needs_the_control_arm_and_is_never_shared() {
    let r = rule(vec![Condition::Throughput(Throughput { below_control_ratio: 0.5, alpha: 0.01 })]);
    // Compared with unflagged traffic (no control): inconclusive, never a breach.
    let j = judge_window(&r, &arm(500, 1), Some((BaselineKind::Unflagged, &arm(1000, 2000))));
    assert!(matches!(&j.verdict, Verdict::Inconclusive(why) if why.contains("control")), "{}", j.record);
    // A control whose requests dropped too still has its own rate: a breach is the treatment's.
    let j = judge_window(&r, &arm(500, 10), Some((BaselineKind::Control, &arm(1000, 400))));
    assert_eq!(j.verdict, Verdict::Breached, "{}", j.record);
    assert_eq!(j.record["conditions"][0]["baseline_breached"], false);
    assert!(j.absolute_breach, "a window condition: e-BH does not apply");
}

#[test]
fn throughput_describes_itself_in_the_record() {
    let r = rule(vec![Condition::Throughput(Throughput { below_control_ratio: 0.5, alpha: 0.01 })]);
    let j = judge_window(&r, &arm(500, 100), Some((BaselineKind::Control, &arm(1000, 2000))));
    let c = &j.record["conditions"][0];
    assert_eq!(c["condition"], "requests per exposure < 0.5 x control's (confidence 0.99)");
    assert_eq!(c["treatment_rate"], 0.2);
    assert_eq!(c["control_rate"], 2.0);
    assert_eq!(c["exposures"]["treatment"], 500);
    assert_eq!(c["requests"]["control"], 2000);
    assert!(c["p_value"].as_f64().unwrap() < 1e-6, "{c}");
}

#[test]
fn reads_say_what_the_engine_prepares() {
    use super::{burn_rate::BurnRate, error_rate::ErrorRate, latency::Latency};
    let d = std::time::Duration::from_secs;
    assert_eq!(Condition::ErrorRate(ErrorRate::Above(0.1)).reads(), Reads::default());
    assert_eq!(Condition::ErrorRate(ErrorRate::AboveControl { margin: 0.0, alpha: 0.01, tau: 0.02 }).reads().cumulative, Some(false));
    let latency = Condition::Latency(Latency::AboveControl { quantile: 0.95, ratio: 1.5, alpha: 0.01 }).reads();
    assert_eq!((latency.cumulative, latency.fixed_threshold), (Some(true), Some((0.95, 1.5))));
    let burn = Condition::BurnRate(BurnRate { objective: 0.99, windows: vec![(d(3600), d(300), 14.4)] }).reads();
    assert_eq!(burn.window_pairs, vec![(d(3600), d(300))]);
    assert_eq!(Condition::Throughput(Throughput { below_control_ratio: 0.5, alpha: 0.01 }).reads(), Reads::default());
}

use super::*;
use crate::correlate::Sink;
use crate::model::{Dims, Outcome, SpanId, TraceId, Variant};
use crate::rules::{Condition, Filter};

fn rule(name: &str, flag: &str, service: &str) -> Rule {
    Rule {
        name: name.into(),
        file: "r.yaml".into(),
        line: None,
        flag_pattern: flag.into(),
        flag: globset::Glob::new(flag).unwrap().compile_matcher(),
        treatment: vec!["on".into()],
        control: Some("off".into()),
        filter: Filter { service: Some(service.into()), ..Filter::default() },
        per: vec![Dimension::Region],
        when: vec![Condition::ErrorRateAbove(0.05)],
        window: Duration::from_secs(60),
        min_samples: 50,
        for_: Duration::from_secs(10),
        kill: Some("flags".into()),
        cooldown: Duration::from_secs(600),
        mode: Mode::Enforce,
    }
}

fn settings() -> EngineSettings {
    EngineSettings { sequential_fdr: true, stale_after: Duration::from_secs(300), max_concurrent_kills: 1, incident_window: Duration::from_secs(600) }
}

fn feed(agg: &mut Aggregator, flag: &str, variant: &str, region: &str, n: u64, errors: u64, at: Timestamp) {
    let dims = Dims { service: "payments".into(), environment: "prod".into(), region: region.into() };
    for i in 0..n {
        let outcome = Outcome { trace: TraceId([1; 16]), span: SpanId([2; 8]), dims: dims.clone(), error: i < errors, latency_us: 1000 };
        agg.observe(&FlagKey(flag.into()), &Variant(variant.into()), &outcome, at);
    }
}

#[test]
fn fires_after_for_once_per_cooldown_and_only_in_the_bad_region() {
    let mut agg = Aggregator::new(1000);
    let set = Arc::new(RuleSet { rules: vec![rule("r", "checkout-v2", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    for region in ["eu-west", "us-east"] {
        feed(&mut agg, "checkout-v2", "off", region, 200, 0, t0);
    }
    feed(&mut agg, "checkout-v2", "on", "eu-west", 100, 40, t0);
    feed(&mut agg, "checkout-v2", "on", "us-east", 100, 0, t0);
    assert!(engine.evaluate(&agg, None, t0).is_empty(), "breached, but not for 10s yet");
    let t1 = t0.plus(Duration::from_secs(10));
    let decisions = engine.evaluate(&agg, None, t1);
    assert_eq!(decisions.len(), 1);
    let d = &decisions[0];
    assert_eq!((d.kind, d.region.as_deref(), d.service.as_deref()), (DecisionKind::Kill, Some("eu-west"), Some("payments")));
    assert_eq!(d.slice_key, "r/checkout-v2/region=eu-west");
    assert!(engine.evaluate(&agg, None, t1.plus(Duration::from_secs(5))).is_empty(), "cooldown");
    let views = engine.views();
    assert_eq!(views.iter().filter(|v| v.verdict == "breached").count(), 1);
    assert_eq!(views.iter().filter(|v| v.verdict == "healthy").count(), 1);
}

#[test]
fn healthy_resets_the_for_clock() {
    let mut agg = Aggregator::new(1000);
    let set = Arc::new(RuleSet { rules: vec![rule("r", "f", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    feed(&mut agg, "f", "off", "eu", 100, 0, t0);
    feed(&mut agg, "f", "on", "eu", 100, 50, t0);
    assert!(engine.evaluate(&agg, None, t0).is_empty());
    // The bad minute slides out; fresh healthy data comes in.
    let t1 = t0.plus(Duration::from_secs(70));
    feed(&mut agg, "f", "off", "eu", 100, 0, t1);
    feed(&mut agg, "f", "on", "eu", 100, 0, t1);
    assert!(engine.evaluate(&agg, None, t1).is_empty());
    let t2 = t1.plus(Duration::from_secs(1));
    feed(&mut agg, "f", "on", "eu", 100, 100, t2);
    assert!(engine.evaluate(&agg, None, t2).is_empty(), "the for clock restarted at t2");
}

#[test]
fn several_flags_breaching_in_one_service_is_an_incident() {
    let mut agg = Aggregator::new(1000);
    let set = Arc::new(RuleSet { rules: vec![rule("a", "flag-a", "payments"), rule("b", "flag-b", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    for flag in ["flag-a", "flag-b"] {
        feed(&mut agg, flag, "off", "eu", 200, 0, t0);
        feed(&mut agg, flag, "on", "eu", 100, 50, t0);
    }
    engine.evaluate(&agg, None, t0);
    let decisions = engine.evaluate(&agg, None, t0.plus(Duration::from_secs(10)));
    assert_eq!(decisions.len(), 2);
    assert!(decisions.iter().all(|d| d.kind == DecisionKind::Incident), "{decisions:#?}");
}

#[test]
fn control_breaching_too_is_an_incident() {
    let mut agg = Aggregator::new(1000);
    let set = Arc::new(RuleSet { rules: vec![rule("r", "f", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    feed(&mut agg, "f", "off", "eu", 200, 100, t0);
    feed(&mut agg, "f", "on", "eu", 100, 50, t0);
    engine.evaluate(&agg, None, t0);
    let decisions = engine.evaluate(&agg, None, t0.plus(Duration::from_secs(10)));
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].kind, DecisionKind::Incident);
}

#[test]
fn cooldown_survives_a_restart() {
    let mut agg = Aggregator::new(1000);
    let set = Arc::new(RuleSet { rules: vec![rule("r", "f", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let fired = HashMap::from([("r/f/region=eu".to_owned(), t0)]);
    let mut engine = RuleEngine::new(set, settings(), fired, t0);
    feed(&mut agg, "f", "off", "eu", 200, 0, t0);
    feed(&mut agg, "f", "on", "eu", 100, 50, t0);
    engine.evaluate(&agg, None, t0);
    assert!(engine.evaluate(&agg, None, t0.plus(Duration::from_secs(30))).is_empty());
}

#[test]
fn stale_rules_are_reported() {
    let agg = Aggregator::new(10);
    let set = Arc::new(RuleSet { rules: vec![rule("r", "f", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    engine.evaluate(&agg, None, t0);
    assert!(engine.stale_rules(t0.plus(Duration::from_secs(60))).is_empty());
    assert_eq!(engine.stale_rules(t0.plus(Duration::from_secs(301))), vec!["r".to_owned()]);
}

#[test]
fn a_killed_arm_that_drains_never_fires_again() {
    let mut agg = Aggregator::new(1000);
    let mut r = rule("r", "f", "payments");
    r.cooldown = Duration::from_secs(60);
    let set = Arc::new(RuleSet { rules: vec![r], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    feed(&mut agg, "f", "off", "eu", 200, 0, t0);
    feed(&mut agg, "f", "on", "eu", 100, 50, t0);
    engine.evaluate(&agg, None, t0);
    assert_eq!(engine.evaluate(&agg, None, t0.plus(Duration::from_secs(10))).len(), 1);
    // Killed: no more `on` traffic; only the control keeps arriving. Long after the cooldown,
    // nothing fires again.
    for s in (20..400).step_by(10) {
        let t = t0.plus(Duration::from_secs(s));
        feed(&mut agg, "f", "off", "eu", 10, 0, t);
        assert!(engine.evaluate(&agg, None, t).is_empty(), "re-fired at +{s}s");
    }
}

#[test]
fn still_breached_after_the_cooldown_fires_again() {
    let mut agg = Aggregator::new(1000);
    let mut r = rule("r", "f", "payments");
    r.cooldown = Duration::from_secs(30);
    let set = Arc::new(RuleSet { rules: vec![r], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    let mut fired = 0;
    for s in (0..=60).step_by(5) {
        let t = t0.plus(Duration::from_secs(s));
        feed(&mut agg, "f", "off", "eu", 50, 0, t);
        feed(&mut agg, "f", "on", "eu", 50, 25, t);
        fired += engine.evaluate(&agg, None, t).len();
    }
    assert_eq!(fired, 2, "at +10s, then again after the 30s cooldown and a fresh 10s `for`");
}

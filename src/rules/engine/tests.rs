use super::*;
use crate::correlate::Sink;
use crate::model::{Dims, Outcome, SpanId, TraceId, Variant};
use crate::rules::condition::{burn_rate::BurnRate, error_rate::ErrorRate};
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
        when: vec![Condition::ErrorRate(ErrorRate::Above(0.05))],
        window: Duration::from_secs(60),
        min_samples: 50,
        for_: Duration::from_secs(10),
        kill: Some("flags".into()),
        widen: false,
        auto_restore: None,
        cooldown: Duration::from_secs(600),
        mode: Mode::Enforce,
        expected_share: None,
    }
}

fn settings() -> EngineSettings {
    EngineSettings { sequential_fdr: true, stale_after: Duration::from_secs(300), max_concurrent_kills: 1, incident_window: Duration::from_secs(600) }
}

fn feed(agg: &mut Aggregator, flag: &str, variant: &str, region: &str, n: u64, errors: u64, at: Timestamp) {
    let dims = Dims { service: "payments".into(), environment: "prod".into(), region: region.into() };
    for i in 0..n {
        let outcome = Outcome { trace: TraceId([1; 16]), span: SpanId([2; 8]), dims: dims.clone(), error: i < errors, latency_us: 1000 };
        agg.observe(&FlagKey(flag.into()), &Variant(variant.into()), &outcome, None, at);
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
    assert!(engine.evaluate(&mut agg, None, t0).is_empty(), "breached, but not for 10s yet");
    let t1 = t0.plus(Duration::from_secs(10));
    let decisions = engine.evaluate(&mut agg, None, t1);
    assert_eq!(decisions.len(), 1);
    let d = &decisions[0];
    assert_eq!((d.kind, d.region.as_deref(), d.service.as_deref()), (DecisionKind::Kill, Some("eu-west"), Some("payments")));
    assert_eq!(d.slice_key, "r/checkout-v2/region=eu-west");
    assert!(engine.evaluate(&mut agg, None, t1.plus(Duration::from_secs(5))).is_empty(), "cooldown");
    let views = engine.views();
    assert_eq!(views.iter().filter(|v| v.verdict.label() == "breached").count(), 1);
    assert_eq!(views.iter().filter(|v| v.verdict.label() == "healthy").count(), 1);
}

#[test]
fn healthy_resets_the_for_clock() {
    let mut agg = Aggregator::new(1000);
    let set = Arc::new(RuleSet { rules: vec![rule("r", "f", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    feed(&mut agg, "f", "off", "eu", 100, 0, t0);
    feed(&mut agg, "f", "on", "eu", 100, 50, t0);
    assert!(engine.evaluate(&mut agg, None, t0).is_empty());
    // The bad minute slides out; fresh healthy data comes in.
    let t1 = t0.plus(Duration::from_secs(70));
    feed(&mut agg, "f", "off", "eu", 100, 0, t1);
    feed(&mut agg, "f", "on", "eu", 100, 0, t1);
    assert!(engine.evaluate(&mut agg, None, t1).is_empty());
    let t2 = t1.plus(Duration::from_secs(1));
    feed(&mut agg, "f", "on", "eu", 100, 100, t2);
    assert!(engine.evaluate(&mut agg, None, t2).is_empty(), "the for clock restarted at t2");
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
    engine.evaluate(&mut agg, None, t0);
    let decisions = engine.evaluate(&mut agg, None, t0.plus(Duration::from_secs(10)));
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
    engine.evaluate(&mut agg, None, t0);
    let decisions = engine.evaluate(&mut agg, None, t0.plus(Duration::from_secs(10)));
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].kind, DecisionKind::Incident);
}

#[test]
fn cooldown_survives_a_restart() {
    let mut agg = Aggregator::new(1000);
    let set = Arc::new(RuleSet { rules: vec![rule("r", "f", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let fired = HashMap::from([("r/f/region=eu".to_owned(), Fired { at: t0, flag: Some("f".into()) })]);
    let mut engine = RuleEngine::new(set, settings(), fired, t0);
    feed(&mut agg, "f", "off", "eu", 200, 0, t0);
    feed(&mut agg, "f", "on", "eu", 100, 50, t0);
    engine.evaluate(&mut agg, None, t0);
    assert!(engine.evaluate(&mut agg, None, t0.plus(Duration::from_secs(30))).is_empty());
}

#[test]
fn stale_rules_are_reported() {
    let mut agg = Aggregator::new(10);
    let set = Arc::new(RuleSet { rules: vec![rule("r", "f", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    engine.evaluate(&mut agg, None, t0);
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
    engine.evaluate(&mut agg, None, t0);
    assert_eq!(engine.evaluate(&mut agg, None, t0.plus(Duration::from_secs(10))).len(), 1);
    // Killed: no more `on` traffic; only the control keeps arriving. Long after the cooldown,
    // nothing fires again.
    for s in (20..400).step_by(10) {
        let t = t0.plus(Duration::from_secs(s));
        feed(&mut agg, "f", "off", "eu", 10, 0, t);
        assert!(engine.evaluate(&mut agg, None, t).is_empty(), "re-fired at +{s}s");
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
        fired += engine.evaluate(&mut agg, None, t).len();
    }
    assert_eq!(fired, 2, "at +10s, then again after the 30s cooldown and a fresh 10s `for`");
}

fn rule_when(when: Vec<Condition>) -> Rule {
    Rule { when, for_: Duration::ZERO, per: vec![], ..rule("seq", "f", "payments") }
}

#[test]
fn a_sequential_condition_fires_on_a_real_difference_only() {
    let t0 = Timestamp(1_000_000);
    let run = |treatment_errors: u64| {
        let mut agg = Aggregator::new(1000);
        let set = Arc::new(RuleSet {
            rules: vec![rule_when(vec![Condition::ErrorRate(ErrorRate::AboveControl { margin: 0.01, alpha: 0.01, tau: 0.02 })])],
            ..RuleSet::default()
        });
        let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
        let mut fired = None;
        for s in 0..120u64 {
            let t = t0.plus(Duration::from_secs(s));
            feed(&mut agg, "f", "off", "eu", 20, u64::from(s % 10 == 0), t);
            feed(&mut agg, "f", "on", "eu", 20, if s % 20 < treatment_errors { 20 } else { 0 } / 10, t);
            if fired.is_none() && !engine.evaluate(&mut agg, None, t).is_empty() {
                fired = Some(s);
            }
        }
        (fired, engine.views())
    };
    let (fired, views) = run(8);
    assert!(fired.is_some(), "treatment at ~0.8 % + 40 % bursts must be caught: {views:#?}");
    let record = &views[0].evidence;
    assert!(record["conditions"][0]["test"].as_str().unwrap().starts_with("mSPRT"), "{record}");
    let c = &record["conditions"][0];
    assert!(c["statistic"].as_f64().unwrap() >= c["boundary"].as_f64().unwrap(), "{record}");
    assert!(c["effect"].as_f64().unwrap() > 0.01, "the effect estimate is above the margin: {record}");
    let (fired, _) = run(0);
    assert_eq!(fired, None, "a treatment no worse than the control never fires");
}

#[test]
fn burn_rate_needs_both_windows_hot() {
    let t0 = Timestamp(10_000_000);
    let mut agg = Aggregator::new(1000);
    let burn = Condition::BurnRate(BurnRate { objective: 0.99, windows: vec![(Duration::from_secs(600), Duration::from_secs(60), 10.0)] });
    let set = Arc::new(RuleSet { rules: vec![Rule { min_samples: 50, ..rule_when(vec![burn]) }], ..RuleSet::default() });
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    // Nine quiet minutes, then a hot one: the short window burns at 50x, the long one at ~5x.
    for m in 0..9u64 {
        let t = t0.plus(Duration::from_secs(m * 60));
        feed(&mut agg, "f", "off", "eu", 100, 0, t);
        feed(&mut agg, "f", "on", "eu", 100, 0, t);
    }
    let hot = t0.plus(Duration::from_secs(9 * 60));
    feed(&mut agg, "f", "off", "eu", 100, 0, hot);
    feed(&mut agg, "f", "on", "eu", 100, 50, hot);
    assert!(engine.evaluate(&mut agg, None, hot).is_empty(), "the long window is not hot yet: {:#?}", engine.views());
    let hotter = hot.plus(Duration::from_secs(30));
    feed(&mut agg, "f", "on", "eu", 100, 100, hotter);
    assert_eq!(engine.evaluate(&mut agg, None, hotter).len(), 1, "{:#?}", engine.views());
}

#[test]
fn sample_ratio_mismatch_is_reported_not_killed() {
    use crate::model::Evaluation;
    let t0 = Timestamp(1_000_000);
    let mut agg = Aggregator::new(1000);
    let set = Arc::new(RuleSet {
        rules: vec![Rule { expected_share: Some(0.5), ..rule_when(vec![Condition::ErrorRate(ErrorRate::Above(0.5))]) }],
        ..RuleSet::default()
    });
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    let dims = Dims { service: "checkout".into(), environment: "prod".into(), region: "eu".into() };
    for user in 0..1000u64 {
        let variant = if user % 10 < 3 { "on" } else { "off" };
        agg.exposure(
            &Evaluation {
                trace: None,
                flag: FlagKey("f".into()),
                variant: Some(Variant(variant.into())),
                error_type: None,
                dims: dims.clone(),
                context: Some(user),
            },
            t0,
        );
    }
    feed(&mut agg, "f", "off", "eu", 100, 0, t0);
    feed(&mut agg, "f", "on", "eu", 100, 0, t0);
    assert!(engine.evaluate(&mut agg, None, t0).is_empty());
    let srm = &engine.views()[0].evidence["srm"];
    assert_eq!(srm["mismatch"], true, "{srm}");
    assert_eq!((srm["treatment_users"].as_f64(), srm["control_users"].as_f64()), (Some(300.0), Some(700.0)));
}

/// The design effect reads the users of the current test segment: errors concentrated in one
/// user before the slice's test started do not widen a test on independent traffic since.
#[test]
fn the_design_effect_reads_the_segment_not_the_series_lifetime() {
    // The history lies in the same 5 s bucket as the test's start: the windows' sums, widened
    // to whole buckets, would include it; the test reads the user buckets and does not.
    let t0 = Timestamp(1_000_000);
    let dims = Dims { service: "payments".into(), environment: "prod".into(), region: "eu".into() };
    let mut agg = Aggregator::new(1000);
    let observe = |agg: &mut Aggregator, variant: &str, user: u64, error: bool, at: Timestamp| {
        let outcome = Outcome { trace: TraceId([1; 16]), span: SpanId([2; 8]), dims: dims.clone(), error, latency_us: 1000 };
        agg.observe(&FlagKey("f".into()), &Variant(variant.into()), &outcome, Some(user), at);
    };
    // Before the rule: one user sends 500 requests, half of them failing.
    for i in 0..500u64 {
        observe(&mut agg, "on", 1, i % 2 == 0, t0);
        observe(&mut agg, "off", 1_000_000 + i, false, t0);
    }
    let set = Arc::new(RuleSet {
        rules: vec![rule_when(vec![Condition::ErrorRate(ErrorRate::AboveControl { margin: 0.0, alpha: 0.01, tau: 0.02 })])],
        ..RuleSet::default()
    });
    let t1 = t0.plus(Duration::from_secs(1));
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t1);
    engine.evaluate(&mut agg, None, t1);
    // Since: independent users, 1 % errors in both arms.
    let mut next = 2_000_000u64;
    for s in 2..60u64 {
        let t = t0.plus(Duration::from_secs(s));
        for i in 0..40u64 {
            next += 1;
            observe(&mut agg, "on", next, i == 0 && s % 3 == 0, t);
            next += 1;
            observe(&mut agg, "off", next, i == 0 && s % 3 == 1, t);
        }
        engine.evaluate(&mut agg, None, t);
    }
    let views = engine.views();
    let condition = &views[0].evidence["conditions"][0];
    let treatment = condition["design_effect"]["treatment"].as_f64().unwrap();
    assert!(treatment < 2.0, "the clustered history before the test is not read: {condition}");
    assert!(condition["events"]["treatment"].as_u64().unwrap() < 40, "nor is it in the test's counts: {condition}");
    assert!(views[0].evidence["cumulative"]["treatment"]["errors"].as_u64().unwrap() >= 250, "the widened window sum has it");
    // Read over the whole life of the series, the same buckets give a large effect.
    let series = agg.series().find(|(k, _)| k.variant.as_str() == "on").unwrap().1;
    let mut lifetime = [[0u64; 2]; crate::stats::USER_BUCKETS];
    series.user_buckets().unwrap().add_since_into(None, crate::stats::Event::Error, &mut lifetime);
    assert!(crate::stats::design_effect(&lifetime) > 20.0, "{}", crate::stats::design_effect(&lifetime));
}

/// Breaches `flag` in eu for `for` and returns the decisions at the end.
fn breach(engine: &mut RuleEngine, flag: &str, at: Timestamp) -> Vec<Decision> {
    let mut agg = Aggregator::new(1000);
    feed(&mut agg, flag, "off", "eu", 200, 0, at);
    feed(&mut agg, flag, "on", "eu", 100, 50, at);
    engine.evaluate(&mut agg, None, at);
    engine.evaluate(&mut agg, None, at.plus(Duration::from_secs(10)))
}

/// Review finding 10: a restore forgets the cooldown of a namespaced flag (the key used to be
/// parsed with `split('/')`, whose second part is the namespace).
#[test]
fn forget_flag_clears_the_cooldown_of_a_namespaced_flag() {
    let set = Arc::new(RuleSet { rules: vec![rule("r", "shop/checkout-v2", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    assert_eq!(breach(&mut engine, "shop/checkout-v2", t0).len(), 1);
    let t1 = t0.plus(Duration::from_secs(60));
    assert!(breach(&mut engine, "shop/checkout-v2", t1).is_empty(), "cooling down");
    engine.forget_flag("shop/checkout-v2");
    let t2 = t1.plus(Duration::from_secs(60));
    assert_eq!(breach(&mut engine, "shop/checkout-v2", t2).len(), 1, "the restore re-armed it");
}

#[test]
fn forget_flag_clears_only_that_flags_cooldowns() {
    let set = Arc::new(RuleSet { rules: vec![rule("r", "*", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    // Stored before rule state recorded flags: the flag is read back from the key.
    let legacy =
        HashMap::from([("r/shop/region=eu".to_owned(), Fired { at: t0, flag: None }), ("r/shop/checkout/region=eu".to_owned(), Fired { at: t0, flag: None })]);
    let mut engine = RuleEngine::new(set, settings(), legacy, t0);
    engine.forget_flag("shop");
    let t1 = t0.plus(Duration::from_secs(60));
    assert_eq!(breach(&mut engine, "shop", t1).len(), 1, "flag shop was re-armed");
    assert!(breach(&mut engine, "shop/checkout", t1.plus(Duration::from_secs(20))).is_empty(), "shop/checkout still cools down");
}

#[test]
fn legacy_cooldown_keys_name_their_flag() {
    assert_eq!(super::legacy_flag("r/shop/checkout-v2/region=eu-west"), Some("shop/checkout-v2"));
    assert_eq!(super::legacy_flag("r/f/service=a/region=b"), Some("f"));
    assert_eq!(super::legacy_flag("r/f"), Some("f"));
}

/// Review finding 9a: a region pinned in `where` is part of what is killed, not silently
/// widened to every region.
#[test]
fn a_region_in_where_is_in_the_kill_scope() {
    let mut r = rule("r", "f", "payments");
    r.per = vec![];
    r.filter.region = Some("eu".into());
    let set = Arc::new(RuleSet { rules: vec![r], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    let d = breach(&mut engine, "f", t0);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].scope, vec![("region".to_owned(), "eu".to_owned())]);
}

/// The engine owns a latency comparison's threshold and hands it to the windows explicitly:
/// once the control's baseline fixes it, every member series counts its slower requests.
#[test]
fn the_engine_hands_the_fixed_latency_threshold_to_the_windows() {
    use crate::rules::condition::latency::Latency;
    let t0 = Timestamp(1_000_000);
    let mut agg = Aggregator::new(1000);
    let comparison = Condition::Latency(Latency::AboveControl { quantile: 0.5, ratio: 2.0, alpha: 0.01 });
    let set = Arc::new(RuleSet { rules: vec![rule_when(vec![comparison])], ..RuleSet::default() });
    let mut engine = RuleEngine::new(set, settings(), HashMap::new(), t0);
    feed(&mut agg, "f", "off", "eu", 10, 0, t0);
    feed(&mut agg, "f", "on", "eu", 10, 0, t0);
    engine.evaluate(&mut agg, None, t0);
    assert!(agg.series().all(|(_, w)| w.slow_over_us().is_none()), "the control's baseline needs min_samples first");
    let t1 = t0.plus(Duration::from_secs(1));
    feed(&mut agg, "f", "off", "eu", 100, 0, t1);
    feed(&mut agg, "f", "on", "eu", 100, 0, t1);
    engine.evaluate(&mut agg, None, t1);
    // The control's median is ~1 ms (feed records 1000 µs): the threshold is twice that.
    for (key, window) in agg.series() {
        let us = window.slow_over_us().unwrap_or_else(|| panic!("{key:?} counts no slow requests"));
        assert!((1_990..=2_010).contains(&us), "{key:?}: {us} µs");
    }
}

/// The checkpoint's promise, in the engine: a restart restored from a checkpoint decides at
/// the same tick, on the same evidence, as a run that never stopped; a restart without one
/// starts its sequential test from nothing and decides later, if at all.
#[test]
fn a_restart_from_a_checkpoint_decides_as_if_there_was_none() {
    use crate::pipeline::checkpoint::{Checkpoint, decode, encode};
    let t0 = Timestamp(1_000_000);
    let set = || {
        Arc::new(RuleSet {
            rules: vec![Rule {
                for_: Duration::from_secs(5),
                ..rule_when(vec![Condition::ErrorRate(ErrorRate::AboveControl { margin: 0.01, alpha: 0.01, tau: 0.02 })])
            }],
            ..RuleSet::default()
        })
    };
    // Restart at second `at`, restored from a checkpoint or blind; the second it fired and the
    // slice's view at the end.
    let run = |restart: Option<(u64, bool)>| {
        let mut agg = Aggregator::new(1000);
        let mut engine = RuleEngine::new(set(), settings(), HashMap::new(), t0);
        let mut fired = None;
        for s in 0..150u64 {
            let t = t0.plus(Duration::from_secs(s));
            if let Some((at, restore)) = restart
                && at == s
            {
                let image = Checkpoint {
                    written_at: t.as_millis(),
                    aggregator: agg.image(),
                    engine: engine.image(),
                    restores_seen: vec![],
                    restores_since: 0,
                    shards: vec![],
                };
                let bytes = encode(&image).expect("encodes");
                agg = Aggregator::new(1000);
                engine = RuleEngine::new(set(), settings(), HashMap::new(), t);
                if restore {
                    let back = decode(&bytes).expect("decodes");
                    agg.restore(back.aggregator).expect("windows restore");
                    assert_eq!(engine.restore(back.engine).expect("slices restore").slices, 1);
                }
            }
            feed(&mut agg, "f", "off", "eu", 20, u64::from(s % 10 == 0), t);
            feed(&mut agg, "f", "on", "eu", 20, if s % 20 < 8 { 2 } else { 0 }, t);
            if fired.is_none() && !engine.evaluate(&mut agg, None, t).is_empty() {
                fired = Some(s);
            }
        }
        (fired, engine.views().into_iter().map(|v| (v.verdict.label(), v.evidence.clone())).collect::<Vec<_>>())
    };
    let (straight, views) = run(None);
    let straight = straight.expect("the regression is caught without a restart");
    assert!(straight > 10, "the test needs evidence from many seconds (fired at {straight} s)");
    let at = straight - 3;
    let (restored, restored_views) = run(Some((at, true)));
    assert_eq!(restored, Some(straight), "restored at {at} s: decides at the same second");
    assert_eq!(restored_views, views, "and on the same evidence");
    let (blind, _) = run(Some((at, false)));
    assert!(blind.is_none_or(|b| b > straight + 3), "a blind restart at {at} s starts over (fired at {blind:?}, straight at {straight})");
}

/// A new leader counts the kills the store holds: with one flag of payments killed by the old
/// leader within the incident window, a second flag breaching there is an incident, not a
/// second kill — and a kill by an alert mapping or an operator is not counted, as before.
#[test]
fn a_new_leader_counts_the_old_leaders_recent_kills() {
    let set = Arc::new(RuleSet { rules: vec![rule("a", "flag-a", "payments"), rule("b", "flag-b", "payments")], ..RuleSet::default() });
    let t0 = Timestamp(1_000_000);
    let kill = |rule: &str, flag: &str| crate::store::RecentKill {
        rule: rule.into(),
        flag: flag.into(),
        // As the decision wrote them: the rule pins the service, not the environment.
        service: Some("payments".into()),
        environment: None,
        at: t0.minus(Duration::from_secs(60)),
    };
    let run = |kills: Vec<crate::store::RecentKill>| {
        let mut engine = RuleEngine::new(set.clone(), settings(), HashMap::new(), t0);
        engine.load_recent_kills(kills);
        breach(&mut engine, "flag-b", t0)
    };
    let decisions = run(vec![kill("a", "flag-a")]);
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].kind, DecisionKind::Incident, "flag-a was killed by the old leader: {decisions:#?}");
    assert_eq!(run(vec![kill("alert:payments-5xx", "flag-a")])[0].kind, DecisionKind::Kill, "an alert's kill is not a rule's");
    assert_eq!(run(vec![])[0].kind, DecisionKind::Kill);
}

use super::*;
use std::sync::Arc;

#[derive(Default)]
struct Recorder {
    observed: Vec<(String, String, String, bool)>,
    users: Vec<Option<u64>>,
    unflagged: Vec<(String, bool)>,
    exposures: Vec<(String, Option<String>, bool)>,
}

impl Sink for Recorder {
    fn observe(&mut self, flag: &FlagKey, variant: &Variant, outcome: &Outcome, user: Option<u64>, _now: Timestamp) {
        self.users.push(user);
        self.observed.push((flag.to_string(), variant.to_string(), outcome.dims.service.to_string(), outcome.error));
    }
    fn unflagged(&mut self, dims: &Dims, error: bool, _latency_us: u64, _now: Timestamp) {
        self.unflagged.push((dims.service.to_string(), error));
    }
    fn exposure(&mut self, e: &Evaluation, _now: Timestamp) {
        self.exposures.push((e.flag.to_string(), e.variant.as_ref().map(|v| v.to_string()), e.error_type.is_some()));
    }
}

fn dims(service: &str) -> Dims {
    Dims { service: service.into(), environment: "prod".into(), region: "eu".into() }
}
fn eval(trace: u8, flag: &str, variant: &str) -> Evaluation {
    Evaluation {
        trace: Some(TraceId([trace; 16])),
        flag: FlagKey(flag.into()),
        variant: Some(Variant(variant.into())),
        error_type: None,
        dims: dims("checkout"),
        context: None,
    }
}
fn outcome(trace: u8, span: u8, service: &str, error: bool) -> Outcome {
    Outcome { trace: TraceId([trace; 16]), span: SpanId([span; 8]), dims: dims(service), error, latency_us: 1000 }
}
fn t(ms: u64) -> Timestamp {
    Timestamp(ms)
}
fn correlator() -> Correlator {
    Correlator::new(CorrelateSettings { trace_idle: Duration::from_secs(30), tombstone_ttl: Duration::from_secs(120), max_traces: 100 })
}

#[test]
fn outcomes_before_and_after_the_evaluation_are_attributed_once() {
    let mut c = correlator();
    let mut r = Recorder::default();
    c.outcome(outcome(1, 1, "payments", true), t(0), &mut r);
    assert!(r.observed.is_empty(), "no cohort yet");
    c.evaluation(&eval(1, "f", "on"), t(10), &mut r);
    c.outcome(outcome(1, 2, "frontend", false), t(20), &mut r);
    c.outcome(outcome(1, 2, "frontend", false), t(21), &mut r); // duplicate delivery
    assert_eq!(r.observed, vec![("f".into(), "on".into(), "payments".into(), true), ("f".into(), "on".into(), "frontend".into(), false)]);
    assert_eq!(c.counts().duplicate, 1);
    assert_eq!(r.exposures.len(), 1);
}

#[test]
fn traces_without_flags_become_unflagged_on_eviction() {
    let mut c = correlator();
    let mut r = Recorder::default();
    c.outcome(outcome(2, 1, "payments", true), t(0), &mut r);
    c.evict_idle(t(29_999), &mut r);
    assert!(r.unflagged.is_empty());
    c.evict_idle(t(30_000), &mut r);
    assert_eq!(r.unflagged, vec![("payments".into(), true)]);
    assert_eq!(c.traces_held(), 0);
}

#[test]
fn activity_postpones_eviction() {
    let mut c = correlator();
    let mut r = Recorder::default();
    c.outcome(outcome(2, 1, "a", false), t(0), &mut r);
    c.outcome(outcome(2, 2, "b", false), t(25_000), &mut r);
    c.evict_idle(t(30_000), &mut r);
    assert_eq!(c.live_traces(), 1);
    c.evict_idle(t(55_000), &mut r);
    assert_eq!(c.live_traces(), 0);
    assert_eq!(r.unflagged.len(), 2);
}

#[test]
fn tombstone_attributes_late_spans_then_expires() {
    let mut c = correlator();
    let mut r = Recorder::default();
    c.evaluation(&eval(3, "f", "on"), t(0), &mut r);
    c.outcome(outcome(3, 1, "checkout", false), t(0), &mut r);
    c.evict_idle(t(30_000), &mut r);
    assert_eq!(c.live_traces(), 0);
    assert_eq!(c.traces_held(), 1, "tombstone kept");
    c.outcome(outcome(3, 1, "checkout", false), t(40_000), &mut r);
    assert_eq!(c.counts().duplicate, 1, "a duplicate stays a duplicate after eviction");
    c.outcome(outcome(3, 2, "payments", true), t(40_000), &mut r);
    assert_eq!(c.counts().late, 1);
    assert_eq!(r.observed.last().unwrap(), &("f".into(), "on".into(), "payments".into(), true));
    c.evict_idle(t(150_000), &mut r);
    assert_eq!(c.traces_held(), 0);
    assert!(r.unflagged.is_empty());
}

#[test]
fn mixed_variants_stop_exposing() {
    let mut c = correlator();
    let mut r = Recorder::default();
    c.evaluation(&eval(4, "f", "on"), t(0), &mut r);
    c.evaluation(&eval(4, "f", "off"), t(0), &mut r);
    c.outcome(outcome(4, 1, "checkout", true), t(0), &mut r);
    assert!(r.observed.is_empty());
    assert_eq!(c.counts().mixed, 1);
    c.evaluation(&eval(4, "f", "on"), t(0), &mut r);
    assert_eq!(c.counts().mixed, 1, "counted once");
}

#[test]
fn two_flags_both_get_the_outcome() {
    let mut c = correlator();
    let mut r = Recorder::default();
    c.evaluation(&eval(5, "a", "on"), t(0), &mut r);
    c.evaluation(&eval(5, "b", "x"), t(0), &mut r);
    c.outcome(outcome(5, 1, "checkout", true), t(0), &mut r);
    assert_eq!(r.observed.len(), 2);
}

#[test]
fn evaluation_errors_and_traceless_evaluations_are_exposures_only() {
    let mut c = correlator();
    let mut r = Recorder::default();
    let mut failed = eval(6, "f", "off");
    failed.error_type = Some(Arc::from("flag_not_found"));
    c.evaluation(&failed, t(0), &mut r);
    let mut traceless = eval(6, "g", "on");
    traceless.trace = None;
    c.evaluation(&traceless, t(0), &mut r);
    c.outcome(outcome(6, 1, "checkout", true), t(0), &mut r);
    assert!(r.observed.is_empty());
    assert_eq!(r.exposures.len(), 2);
    assert_eq!(c.counts().evaluation_errors, 1);
}

#[test]
fn capacity_evicts_oldest_early_and_counts_it() {
    let mut c = Correlator::new(CorrelateSettings { max_traces: 2, ..CorrelateSettings::default() });
    let mut r = Recorder::default();
    c.outcome(outcome(1, 1, "a", false), t(0), &mut r);
    c.outcome(outcome(2, 1, "b", false), t(1), &mut r);
    c.outcome(outcome(3, 1, "c", false), t(2), &mut r);
    assert_eq!(c.live_traces(), 2);
    assert_eq!(c.counts().evicted_capacity, 1);
    assert_eq!(r.unflagged, vec![("a".into(), false)]);
}

#[test]
fn tombstones_are_capped_oldest_first_so_memory_is_bounded_at_any_load() {
    let mut c = Correlator::new(CorrelateSettings { trace_idle: Duration::from_secs(30), tombstone_ttl: Duration::from_secs(120), max_traces: 3 });
    let mut r = Recorder::default();
    for trace in 1..=5u8 {
        c.evaluation(&eval(trace, "f", "on"), t(u64::from(trace)), &mut r);
    }
    c.evict_idle(t(40_000), &mut r);
    assert_eq!((c.live_traces(), c.traces_held(), c.counts().tombstones_dropped), (0, 3, 2), "the two oldest tombstones dropped");
    // A late span of a dropped tombstone starts a fresh trace; of a kept one, it is late.
    c.outcome(outcome(5, 9, "payments", true), t(41_000), &mut r);
    assert_eq!(c.counts().late, 1);
    c.evict_idle(t(160_000), &mut r);
    assert_eq!(c.traces_held(), 0, "kept tombstones still expire after their TTL");
}

#[test]
fn one_crafted_trace_costs_at_most_its_caps() {
    let mut c = correlator();
    let mut r = Recorder::default();
    for i in 0..(MAX_OUTCOMES_PER_TRACE as u32 + 10) {
        let span = SpanId((i as u64 + 1).to_le_bytes());
        c.outcome(Outcome { span, ..outcome(7, 0, "api", false) }, t(1), &mut r);
    }
    assert_eq!(c.counts().trace_cap, 10, "outcomes past the cap are not kept");
    for f in 0..(MAX_FLAGS_PER_TRACE + 3) {
        c.evaluation(&eval(7, &format!("flag-{f}"), "on"), t(2), &mut r);
    }
    assert_eq!(c.counts().trace_cap, 13, "flags past the cap are not attributed");
    assert_eq!(r.observed.len(), MAX_FLAGS_PER_TRACE * MAX_OUTCOMES_PER_TRACE, "each kept outcome once per kept flag");
    // A later outcome still reaches the flags already seen.
    c.outcome(Outcome { span: SpanId([0xee; 8]), ..outcome(7, 0, "api", true) }, t(3), &mut r);
    assert_eq!(r.observed.iter().filter(|o| o.3).count(), MAX_FLAGS_PER_TRACE);
}

#[test]
fn observations_carry_the_traces_user() {
    let mut c = correlator();
    let mut r = Recorder::default();
    c.outcome(outcome(1, 1, "payments", false), t(0), &mut r);
    let mut with_user = eval(1, "f", "on");
    with_user.context = Some(42);
    c.evaluation(&with_user, t(10), &mut r);
    c.evaluation(
        &{
            let mut e = eval(1, "g", "on");
            e.context = Some(7);
            e
        },
        t(15),
        &mut r,
    );
    c.outcome(outcome(1, 2, "frontend", false), t(20), &mut r);
    c.evaluation(&eval(2, "f", "on"), t(30), &mut r);
    c.outcome(outcome(2, 1, "payments", false), t(40), &mut r);
    // Trace 1: the first context id seen is its user, for outcomes before and after; trace 2 has none.
    assert_eq!(r.users, vec![Some(42), Some(42), Some(42), Some(42), None]);
}

/// Review finding 12(a): a flood of single-span traces from one service evicts that
/// service's traces at the cap, not another service's trace waiting for its evaluation (whose
/// outcome would have counted as unflagged).
#[test]
fn a_flooding_service_evicts_its_own_traces_at_the_cap() {
    let mut c = correlator();
    let mut r = Recorder::default();
    c.outcome(outcome(200, 1, "payments", true), t(0), &mut r);
    for i in 0..100u8 {
        let flood = Outcome {
            trace: TraceId([i, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]),
            span: SpanId([1; 8]),
            dims: dims("noisy"),
            error: false,
            latency_us: 1,
        };
        c.outcome(flood, t(1_000), &mut r);
    }
    assert!(c.counts().evicted_capacity >= 1);
    c.evaluation(&eval(200, "f", "on"), t(6_000), &mut r);
    assert_eq!(r.observed.iter().filter(|o| o.0 == "f").count(), 1, "the payments outcome reached its cohort: {:?}", r.observed);
    assert!(r.unflagged.iter().all(|(service, _)| service == "noisy"), "only the flood's traces were evicted: {:?}", r.unflagged);
}

//! The bodies of flagguard's fuzz targets. `fuzz_targets/<name>.rs` only hands libFuzzer's
//! bytes to the function of the same name here, so that a regression test can replay a saved
//! input through exactly the same code: [`run`]`(target, &bytes)` (see `regressions/README.md`).
//!
//! Every target drives the code the daemon runs on untrusted input, through the crate's public
//! API, and must never panic: errors are fine, panics (and failed invariant checks) are bugs.
//!
//! | target       | input                                   | daemon code it drives                          |
//! |--------------|-----------------------------------------|------------------------------------------------|
//! | `otlp_proto` | selector byte (bit 0: 0 traces, 1 logs) + protobuf body | traces: `Ingest::accept_traces_protobuf` (the `ingest::wire` reader, as gRPC and OTLP/HTTP read it), checked against prost's decode + `otlp::convert_traces` for equality; logs: `ingest::http::decode` → `Ingest::accept_logs` |
//! | `otlp_json`  | an OTLP/JSON body (tried as traces, then as logs) | `ingest::http::decode` (JSON) → `Ingest::accept_*` |
//! | `rules`      | a rule file's text (UTF-8, else skipped) | `rules::parse`, then `RulesView::of` and a `RuleEngine` judging fixed sample traffic |
//! | `alerts`     | selector byte (source = `Source::ALL[b % 7]`) + webhook body | `alerts::sources::parse` → `mapping::map` → `act::alert_request` |
//! | `correlate`  | a small program of synthetic evaluations, outcomes, clock steps and ticks | `Correlator` → `Aggregator` → `RuleEngine::evaluate`, `Snapshot::build` |

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flagguard::act::{alert_request, idempotency_key};
use flagguard::aggregate::Aggregator;
use flagguard::alerts::mapping::{self, AlertMapping};
use flagguard::alerts::{AlertError, AlertStatus, Source, sources};
use flagguard::correlate::{CorrelateSettings, Correlator};
use flagguard::ingest::http::{Encoding, decode};
use flagguard::ingest::{Accepted, ExtractOptions, Ingest, IngestError, Transport};
use flagguard::model::{Batch, Dims, Evaluation, FlagKey, Outcome, SeriesKey, SpanId, TraceId, Variant};
use flagguard::rules::engine::{Decision, EngineSettings, RuleEngine};
use flagguard::rules::{Mode, RuleSet};
use flagguard::telemetry::Metrics;
use flagguard::time::Timestamp;
use flagguard::view::{RulesView, Snapshot};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::mpsc;

/// The targets by name: the `[[bin]]`s of Cargo.toml and the directories under `seeds/`,
/// `corpus/`, `artifacts/` and `regressions/`.
pub const TARGETS: [&str; 5] = ["otlp_proto", "otlp_json", "rules", "alerts", "correlate"];

/// Runs one input through the named target. Returns `false` (running nothing) for an unknown name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "otlp_proto" => otlp_proto(data),
        "otlp_json" => otlp_json(data),
        "rules" => rules(data),
        "alerts" => alerts(data),
        "correlate" => correlate(data),
        _ => return false,
    }
    true
}

/// Arrival time of the synthetic traffic (2026-11-24): realistic, far from any overflow.
const START: Timestamp = Timestamp(1_795_600_000_000);

/// Actuator names configured for the rule files (the repository's examples and test fixtures use
/// these two; `unleash-prod` in the bad fixtures stays unknown on purpose).
fn actuators() -> BTreeSet<String> {
    ["flags", "flagserver"].into_iter().map(String::from).collect()
}

fn engine_settings(sequential_fdr: bool) -> EngineSettings {
    // The `[rules]` defaults (src/config/file.rs).
    EngineSettings { sequential_fdr, stale_after: Duration::from_secs(300), max_concurrent_kills: 1, incident_window: Duration::from_secs(600) }
}

/// Parses a rule file the harness itself ships; it is valid, so a failure is a harness bug.
fn fixed_rule_set(name: &str, source: &str) -> RuleSet {
    match flagguard::rulefile::parse(Path::new(name), source, &actuators()) {
        Ok(parsed) => RuleSet { rules: parsed.rules, alerts: parsed.alerts, rollouts: parsed.rollouts, files: vec![name.into()] },
        Err(errors) => panic!("fuzz harness setup: the embedded rule file {name} does not parse: {errors:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// otlp_proto, otlp_json

/// Which OTLP export request a body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }
}

thread_local! {
    static METRICS: Arc<Metrics> = Arc::new(Metrics::new());
}

/// `otlp_proto`: the first byte picks the signal (bit 0: 0 = traces, 1 = logs), the rest is the
/// protobuf body of `POST /v1/traces` / `/v1/logs` (and of the gRPC Export calls).
pub fn otlp_proto(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let signal = if selector & 1 == 0 { Signal::Traces } else { Signal::Logs };
    otlp_request(signal, Encoding::Protobuf, body);
}

/// `otlp_json`: the whole input is an OTLP/JSON body, posted to both `/v1/traces` and `/v1/logs`
/// (a body of the other signal decodes to an empty request: unknown keys are ignored).
pub fn otlp_json(data: &[u8]) {
    otlp_request(Signal::Traces, Encoding::Json, data);
    otlp_request(Signal::Logs, Encoding::Json, data);
}

/// What the OTLP/HTTP handler (`ingest::http::export`) does with one body: decode it in its
/// encoding, then convert, extract and queue it through `Ingest` — or count the refusal.
pub fn otlp_request(signal: Signal, encoding: Encoding, body: &[u8]) {
    // A fresh queue of one batch: never full, never closed, so acceptance never fails for
    // backpressure and the queued batch can be checked.
    let (tx, mut rx) = mpsc::channel::<flagguard::ingest::Queued>(1);
    let ingest = Ingest::new(tx, ingest_options(), Duration::from_secs(1), METRICS.with(Arc::clone));
    let result = match signal {
        // As the daemon does: protobuf traces through the wire reader, checked against prost.
        Signal::Traces if encoding == Encoding::Protobuf => {
            wire_agrees_with_prost(&ingest_options(), body);
            ingest.accept_traces_protobuf(body, Transport::Http)
        }
        Signal::Traces => decode::<ExportTraceServiceRequest>(encoding, body).and_then(|request| ingest.accept_traces(&request, Transport::Http)),
        Signal::Logs => decode::<ExportLogsServiceRequest>(encoding, body).and_then(|request| ingest.accept_logs(&request, Transport::Http)),
    };
    match result {
        Ok(accepted) => check_accepted(&accepted, rx.try_recv().ok().map(|queued| queued.batch)),
        Err(error) => {
            assert!(matches!(error, IngestError::Invalid(_)), "a decode failure must be Invalid (400), got {error:?}");
            let _ = error.to_string();
            ingest.count_refused(signal.name(), Transport::Http, &error);
            assert!(rx.try_recv().is_err(), "a refused request queued a batch");
        }
    }
}

fn ingest_options() -> ExtractOptions {
    ExtractOptions { flag_attribute_prefixes: vec!["app.flags.".to_owned(), "flag.".to_owned()] }
}

/// The selective wire reader (`ingest::wire`) against prost on the same bytes: whatever prost
/// decodes must convert to the same batch; the wire reader may accept more (content it skips is
/// not validated), never less.
fn wire_agrees_with_prost(options: &ExtractOptions, body: &[u8]) {
    use prost::Message;
    let by_wire = flagguard::ingest::otlp::convert_traces_wire(body, options);
    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
        let by_prost = flagguard::ingest::otlp::convert_traces(&request, options);
        match by_wire {
            Ok(by_wire) => assert_eq!(format!("{by_prost:?}"), format!("{by_wire:?}"), "prost and the wire reader disagree"),
            Err(e) => panic!("the wire reader refused ({e}) what prost accepts: {by_prost:?}"),
        }
    }
}

/// Invariants of an accepted request (src/ingest/otlp.rs, src/ingest/mod.rs).
fn check_accepted(accepted: &Accepted, batch: Option<Batch>) {
    assert!(accepted.rejected >= 0, "{accepted:?}");
    assert_eq!(accepted.message.is_empty(), accepted.rejected == 0, "the partial-success message is set exactly when items were rejected: {accepted:?}");
    let Some(batch) = batch else { return };
    assert!(!batch.evaluations.is_empty() || !batch.outcomes.is_empty(), "a batch without evaluations or outcomes was queued");
    for evaluation in &batch.evaluations {
        assert!(!evaluation.flag.as_str().is_empty(), "an evaluation without a flag key: {evaluation:?}");
    }
    for outcome in &batch.outcomes {
        assert_ne!(outcome.trace, TraceId([0; 16]), "an outcome with the invalid trace id: {outcome:?}");
        assert_ne!(outcome.span, SpanId([0; 8]), "an outcome with the invalid span id: {outcome:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// rules

/// `rules`: the input is one rule file's text (skipped unless UTF-8), parsed and validated as
/// `flagguard check` and a rule reload do. A file that parses is then shown (`RulesView`, as the
/// API does) and judged by a fresh `RuleEngine` against fixed sample traffic, twice.
pub fn rules(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.yaml");
    let parsed = match flagguard::rulefile::parse(path, source, &actuators()) {
        Ok(parsed) => parsed,
        Err(errors) => {
            assert!(!errors.is_empty(), "parse failed without saying why");
            for error in &errors {
                let _ = error.to_string();
            }
            return;
        }
    };
    for rule in &parsed.rules {
        for condition in &rule.when {
            let _ = condition.describe();
        }
    }
    let set = Arc::new(RuleSet { rules: parsed.rules, alerts: parsed.alerts, rollouts: parsed.rollouts, files: vec![path.to_path_buf()] });
    let _ = RulesView::of(&set, START, None);
    SAMPLE.with_borrow_mut(|sample| {
        let mut engine = RuleEngine::new(Arc::clone(&set), engine_settings(true), HashMap::new(), START);
        judge(&mut engine, &mut sample.aggregator, sample.now, None);
        judge(&mut engine, &mut sample.aggregator, sample.now.plus(Duration::from_secs(60)), None);
    });
}

/// Windows filled once with ten minutes of synthetic traffic: two flags with treatment and
/// control arms (the treatment slower and failing more), three slices, unflagged baseline.
struct Sample {
    aggregator: Aggregator,
    now: Timestamp,
}

thread_local! {
    // A RefCell: judging hands the windows the engine's slow-request thresholds.
    static SAMPLE: std::cell::RefCell<Sample> = std::cell::RefCell::new(sample_traffic());
}

fn sample_traffic() -> Sample {
    let mut correlator = Correlator::new(CorrelateSettings::default());
    let mut aggregator = Aggregator::new(1_000);
    let mut now = START;
    let slices = [("payments", "eu-west"), ("payments", "us-east"), ("frontend", "eu-west")];
    for i in 0..1_200u32 {
        now = now.plus(Duration::from_millis(500));
        let (flag, arms) = if i % 3 == 2 { ("exp-1", ["treatment", "control"]) } else { ("checkout-v2", ["on", "off"]) };
        let treated = i.is_multiple_of(2);
        let (service, region) = slices[(i / 2 % 3) as usize];
        let dims = Dims { service: service.into(), environment: "production".into(), region: region.into() };
        let trace = numbered_trace(i);
        let evaluation = Evaluation {
            trace: Some(trace),
            flag: FlagKey::new(None, flag),
            variant: Some(Variant(arms[usize::from(!treated)].into())),
            error_type: None,
            dims: dims.clone(),
            context: Some(u64::from(i % 97)),
        };
        correlator.evaluation(&evaluation, now, &mut aggregator);
        let error = if treated { i.is_multiple_of(5) } else { i.is_multiple_of(23) };
        let latency_us = if treated { 40_000 + u64::from(i % 7) * 30_000 } else { 25_000 + u64::from(i % 5) * 5_000 };
        correlator.outcome(Outcome { trace, span: SpanId([1; 8]), dims: dims.clone(), error, latency_us }, now, &mut aggregator);
        if i.is_multiple_of(4) {
            let unflagged = Outcome { trace: numbered_trace(1_000_000 + i), span: SpanId([2; 8]), dims, error: i.is_multiple_of(40), latency_us: 20_000 };
            correlator.outcome(unflagged, now, &mut aggregator);
        }
    }
    let now = now.plus(Duration::from_secs(60));
    correlator.evict_idle(now, &mut aggregator);
    Sample { aggregator, now }
}

fn numbered_trace(i: u32) -> TraceId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_le_bytes());
    id[15] = 1;
    TraceId(id)
}

/// One `RuleEngine::evaluate` as the pipeline's tick runs it, plus what the API reads after it.
fn judge(engine: &mut RuleEngine, aggregator: &mut Aggregator, now: Timestamp, changed: Option<&flagguard::aggregate::FastSet<SeriesKey>>) -> Vec<Decision> {
    let decisions = engine.evaluate(aggregator, changed, now);
    for decision in &decisions {
        let _ = decision.record.to_string();
    }
    let _ = engine.views();
    let _ = engine.transitions();
    let _ = engine.stale_rules(now);
    decisions
}

// ---------------------------------------------------------------------------------------------
// alerts

thread_local! {
    /// The repository's example `alerts:` mappings (rules/alerts.yaml).
    static ALERT_MAPPINGS: Vec<AlertMapping> = fixed_rule_set("rules/alerts.yaml", include_str!("../../rules/alerts.yaml")).alerts;
}

/// `alerts`: the first byte picks the source (`Source::ALL[byte % 7]`: alertmanager, grafana,
/// datadog, newrelic, dynatrace, pagerduty, generic), the rest is the webhook body. Firing alerts
/// are mapped (the example mappings, then the direct form) and turned into action requests, as
/// `POST /v1/alerts/{source}` does after authentication.
pub fn alerts(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let source = Source::ALL[usize::from(selector) % Source::ALL.len()];
    let alerts = match sources::parse(source, body) {
        Ok(alerts) => alerts,
        Err(error) => {
            assert!(matches!(&error, AlertError::Malformed { origin, .. } if *origin == source), "a parse failure must be Malformed for {source}: {error:?}");
            let _ = error.to_string();
            return;
        }
    };
    let direct = mapping::direct("flags", Mode::Enforce);
    ALERT_MAPPINGS.with(|mappings| {
        for alert in &alerts {
            assert_eq!(alert.source, source, "{alert:?}");
            let _ = alert.status.label();
            if alert.status != AlertStatus::Firing {
                continue;
            }
            if let Ok(target) = mapping::map(alert, mappings, Some(&direct)) {
                let request = alert_request(&target, alert, "sha256:fuzz");
                let _ = serde_json::to_value(&request);
                let _ = idempotency_key(&request.target(), START);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// correlate

/// The rules the `correlate` target's engine judges: absolute thresholds on one flag, sequential
/// tests, a burn rate and the SRM check on every flag.
const CORRELATE_RULES: &str = r#"
rules:
  - name: fuzz-absolute
    flag: checkout-v2
    treatment: "on"
    control: "off"
    per: [region]
    when:
      - error_rate: { above: 0.05 }
      - latency: { quantile: 0.95, above_ms: 800 }
    window: 1m
    min_samples: 1
    for: 10s
    action: { kill: flags }
    cooldown: 1m
  - name: fuzz-sequential
    flag: "*"
    treatment: ["on", "blue"]
    control: "off"
    expected_share: 0.5
    per: [service, region]
    when:
      - error_rate: { above_control_by: 0.01, confidence: 0.95 }
      - latency: { quantile: 0.9, above_control_ratio: 1.3 }
      - burn_rate: { objective: 0.99, windows: [[1h, 5m, 14.4], [10m, 1m, 2]] }
    window: 5m
    min_samples: 1
    action: { kill: flags, on_unscoped: widen, auto_restore: 5m }
    mode: enforce
"#;

thread_local! {
    static CORRELATE_RULE_SET: Arc<RuleSet> = Arc::new(fixed_rule_set("correlate.yaml", CORRELATE_RULES));
}

/// The correlator's trace cap in the `correlate` target: small, so that capacity eviction runs.
const MAX_TRACES: usize = 6;
/// The aggregator's series cap: small, so that overflow runs (4 flags × 3 variants × 8 slices).
const MAX_SERIES: usize = 12;
/// No clock step goes past this (year 2046): `Timestamp::rfc3339` cannot format years past 9999.
const END: Timestamp = Timestamp(START.0 + 20 * 365 * 86_400_000);

const FLAGS: [&str; 4] = ["checkout-v2", "exp-1", "banner", "search-v3"];
const VARIANTS: [&str; 3] = ["on", "off", "blue"];

/// `correlate`: a program over the pipeline (src/pipeline.rs `ingest` and `on_tick`).
///
/// Byte 0 configures (bit 0: `sequential_fdr`); then each op is one byte, `op & 7` its kind,
/// followed by its operands:
/// - `0..=2` evaluation, operands `a b`: trace `a & 15` (none when `a & 0x80`), slice `(a >> 4) & 7`,
///   flag `b & 3` (namespaced `shop/` when `b & 0x40`), variant `(b >> 2) & 3` (3 = none),
///   evaluation error when `b & 0x10`, context id when `b & 0x20`;
/// - `3..=4` outcome, operands `a b lo hi`: trace `a & 15`, slice `(a >> 4) & 7`, span `b`, error when
///   `op & 8`, latency `u16(lo, hi)` in µs / ms / s by `op >> 6` (3 = near the largest latency
///   `convert_traces` can produce);
/// - `5` clock step, operands `lo hi`: `u16(lo, hi)` × 1 ms / 100 ms / 10 s / 1000 s by `(op >> 3) & 3`;
/// - `6` fast tick (only the changed series are judged);
/// - `7` full tick: judge everything, then (`op & 8`) re-arm the first decision's slice,
///   (`op & 16`) restore `checkout-v2` (reset its windows, forget its slices), drop idle series
///   and publish a snapshot.
///
/// The program ends with a one-hour step and a full tick. After every op the documented caps
/// are checked: live traces ≤ `max_traces`, tombstones ≤ `max_traces`, series ≤ `max_series`.
pub fn correlate(data: &[u8]) {
    let mut input = Input(data);
    let Some(config) = input.u8() else { return };
    let settings = CorrelateSettings { trace_idle: Duration::from_secs(2), tombstone_ttl: Duration::from_secs(5), max_traces: MAX_TRACES };
    let mut correlator = Correlator::new(settings);
    let mut aggregator = Aggregator::new(MAX_SERIES);
    let mut now = START;
    let rules = CORRELATE_RULE_SET.with(Arc::clone);
    let mut engine = RuleEngine::new(rules, engine_settings(config & 1 == 1), HashMap::new(), now);
    while let Some(op) = input.u8() {
        match op & 7 {
            0..=2 => {
                let (Some(a), Some(b)) = (input.u8(), input.u8()) else { break };
                let evaluation = Evaluation {
                    trace: (a & 0x80 == 0).then(|| trace_id(a)),
                    flag: FlagKey::new((b & 0x40 != 0).then_some("shop"), FLAGS[usize::from(b & 3)]),
                    variant: VARIANTS.get(usize::from((b >> 2) & 3)).map(|v| Variant((*v).into())),
                    error_type: (b & 0x10 != 0).then(|| Arc::from("flag_not_found")),
                    dims: slice(a >> 4),
                    context: (b & 0x20 != 0).then_some(u64::from(a ^ b).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                };
                correlator.evaluation(&evaluation, now, &mut aggregator);
            }
            3..=4 => {
                let (Some(a), Some(b), Some(latency)) = (input.u8(), input.u8(), input.u16()) else { break };
                let latency = u64::from(latency);
                let latency_us = match op >> 6 {
                    0 => latency,
                    1 => latency * 1_000,
                    2 => latency * 1_000_000,
                    _ => u64::MAX / 1_000 - latency,
                };
                let outcome = Outcome { trace: trace_id(a), span: SpanId([b, 1, 0, 0, 0, 0, 0, 0]), dims: slice(a >> 4), error: op & 8 != 0, latency_us };
                correlator.outcome(outcome, now, &mut aggregator);
            }
            5 => {
                let Some(step) = input.u16() else { break };
                let unit_ms = [1, 100, 10_000, 1_000_000][usize::from((op >> 3) & 3)];
                now = now.plus(Duration::from_millis(u64::from(step) * unit_ms)).min(END);
            }
            6 => {
                correlator.evict_idle(now, &mut aggregator);
                let changed = aggregator.take_changed();
                if !changed.is_empty() {
                    judge(&mut engine, &mut aggregator, now, Some(&changed));
                }
            }
            _ => full_tick(&mut correlator, &mut aggregator, &mut engine, now, op),
        }
        check_caps(&correlator, &aggregator);
    }
    let now = now.plus(Duration::from_secs(3_600)).min(END);
    full_tick(&mut correlator, &mut aggregator, &mut engine, now, 0);
    check_caps(&correlator, &aggregator);
}

fn full_tick(correlator: &mut Correlator, aggregator: &mut Aggregator, engine: &mut RuleEngine, now: Timestamp, op: u8) {
    correlator.evict_idle(now, aggregator);
    let _ = aggregator.take_changed();
    let decisions = judge(engine, aggregator, now, None);
    if let Some(decision) = decisions.first().filter(|_| op & 8 != 0) {
        engine.rearm(&decision.slice_key);
    }
    if op & 16 != 0 {
        aggregator.reset(|key| key.flag.as_str() != "checkout-v2");
        engine.forget_flag("checkout-v2");
    }
    aggregator.drop_idle(now);
    let _ = Snapshot::build(aggregator, now);
    for (_, window) in aggregator.series() {
        let summary = window.summary_since(now.minus(Duration::from_secs(300)));
        let _ = (summary.error_rate(), summary.quantile_ms(0.99), window.level_bounds());
    }
    for (flag, variant, _, _) in aggregator.usage() {
        let _ = aggregator.distinct_users(flag, variant.as_str());
    }
    let _ = aggregator.bytes();
}

/// The caps src/correlate/mod.rs and src/aggregate/mod.rs document.
fn check_caps(correlator: &Correlator, aggregator: &Aggregator) {
    let (live, held) = (correlator.live_traces(), correlator.traces_held());
    assert!(live <= MAX_TRACES, "{live} live traces, cap {MAX_TRACES}");
    assert!(live <= held, "{live} live traces but {held} held");
    assert!(held <= 2 * MAX_TRACES, "{held} traces held: more than {MAX_TRACES} live + {MAX_TRACES} tombstones");
    assert!(aggregator.series_count() <= MAX_SERIES, "{} series, cap {MAX_SERIES}", aggregator.series_count());
}

/// One of 16 trace ids.
fn trace_id(a: u8) -> TraceId {
    let mut id = [0u8; 16];
    id[0] = (a & 0x0f) + 1;
    TraceId(id)
}

/// One of 8 slices (service × environment × region).
fn slice(bits: u8) -> Dims {
    let pick = |bit: u8, yes: &str, no: &str| -> Arc<str> { (if bits & bit != 0 { yes } else { no }).into() };
    Dims { service: pick(1, "frontend", "payments"), environment: pick(2, "staging", "production"), region: pick(4, "us-east", "eu-west") }
}

/// Reads a `correlate` program.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&byte, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(byte)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
}

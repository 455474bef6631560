//! `flagguard replay`: runs recorded OTLP (`serve --record`) through the same pipeline —
//! correlator, windows, rule engine — on a clock driven by the recorded arrival times, in
//! dry-run, and prints a deterministic timeline: every verdict change and every action that
//! would have been taken (same input → byte-identical output).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::aggregate::Aggregator;
use crate::config::ConfigFile;
use crate::correlate::{CorrelateSettings, Correlator};
use crate::ingest::ExtractOptions;
use crate::ingest::otlp::{convert_logs, convert_traces_wire};
use crate::ingest::record::{self, Signal};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::rules::Mode;
use crate::rules::engine::{EngineSettings, RuleEngine};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::time::{ManualClock, Timestamp};
use crate::view::Snapshot;

/// Actuator names the rule files mention: replay never acts, so any is accepted.
fn named_actuators(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let Ok(shape) = serde_yaml::from_str::<crate::rulefile::shape::RuleFileShape>(&text) else { continue };
        names.extend(shape.rules.iter().filter_map(|r| r.action.as_ref().map(|a| a.kill.clone())));
        names.extend(shape.alerts.iter().map(|a| a.kill.via.clone()));
    }
    names
}

fn offset(t: Timestamp, start: Timestamp) -> String {
    let ms = t.as_millis() as i64 - start.as_millis() as i64;
    format!("{}{}.{:03}s", if ms < 0 { "-" } else { "+" }, ms.abs() / 1000, ms.abs() % 1000)
}

/// Replays `recordings` against the rules in `rules_dir` with `config`'s pipeline settings.
pub fn replay(config: &ConfigFile, rules_dir: &Path, recordings: &[PathBuf], incident_start: Option<Timestamp>) -> Result<String, String> {
    let mut records = record::read(recordings).map_err(|e| format!("cannot read the recording: {e}"))?;
    records.sort_by_key(|r| r.arrival);
    let (Some(first), Some(last)) = (records.first().map(|r| r.arrival), records.last().map(|r| r.arrival)) else {
        return Err("the recording is empty".into());
    };
    // Rules keep their modes (the concurrent-kill limit applies to enforce rules only); nothing
    // is executed: the store is in memory and no executor runs.
    let rules = crate::rulefile::load_dir(rules_dir, &named_actuators(rules_dir))
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    let clock = Arc::new(ManualClock::default());
    clock.set(first);
    let settings = EngineSettings {
        sequential_fdr: config.rules.sequential_fdr,
        stale_after: config.rules.stale_after,
        max_concurrent_kills: config.rules.max_concurrent_kills,
        incident_window: config.rules.incident_window,
    };
    let mut engine = RuleEngine::new(Arc::new(rules), settings, Default::default(), first);
    engine.record_transitions();
    let store = Store::in_memory().map_err(|e| e.to_string())?;
    let (snapshots, _) = watch::channel(Arc::new(Snapshot::default()));
    let c = &config.correlate;
    let mut pipeline = Pipeline::new(
        Correlator::new(CorrelateSettings { trace_idle: c.trace_idle, tombstone_ttl: c.tombstone_ttl, max_traces: c.max_traces }),
        Aggregator::new(config.aggregate.max_series),
        engine,
        crate::act::outbox::Outbox::new(store, crate::act::notify::Routing::none()),
        Arc::new(Metrics::new()),
        clock.clone(),
        Arc::new(Notify::new()),
        snapshots,
        PipelineSettings {
            tick: config.aggregate.tick,
            snapshot_interval: config.aggregate.snapshot_interval,
            reload_interval: Duration::from_secs(u64::MAX / 4_000),
            rules_dir: rules_dir.into(),
            actuators: BTreeSet::new(),
            verify: Default::default(),
            audit_retention: None,
        },
    );
    let options = ExtractOptions { flag_attribute_prefixes: config.otlp.flag_attribute_prefixes.clone() };
    let tick = config.aggregate.tick;
    let ticks_per_full = (config.aggregate.snapshot_interval.as_millis() / tick.as_millis().max(1)).max(1) as u64;
    let mut lines: Vec<(Timestamp, String)> = Vec::new();
    let mut next_tick = first;
    let mut tick_count = 0u64;
    let end = last.plus(c.trace_idle).plus(Duration::from_secs(2));
    let mut run_ticks_until = |until: Timestamp, pipeline: &mut Pipeline, lines: &mut Vec<(Timestamp, String)>| {
        while next_tick <= until {
            clock.set(next_tick);
            tick_count += 1;
            let decisions = pipeline.on_tick(next_tick, tick_count.is_multiple_of(ticks_per_full));
            let mut batch: Vec<String> = pipeline
                .engine_mut()
                .take_recorded()
                .into_iter()
                .map(|t| {
                    format!(
                        "rule {} flag {}{} {} -> {}",
                        t.rule,
                        t.flag,
                        if t.slice.0.is_empty() { String::new() } else { format!(" [{}]", t.slice) },
                        t.from,
                        t.to
                    )
                })
                .collect();
            for d in decisions {
                let what = match d.kind {
                    crate::rules::engine::DecisionKind::Kill if d.mode == Mode::DryRun => {
                        format!("WOULD KILL (dry-run rule) via {}", d.actuator.clone().unwrap_or_default())
                    }
                    crate::rules::engine::DecisionKind::Kill => format!("WOULD KILL via {}", d.actuator.clone().unwrap_or_default()),
                    crate::rules::engine::DecisionKind::Incident => "INCIDENT (notify, no kill)".into(),
                };
                let conditions: Vec<String> = d.record["conditions"]
                    .as_array()
                    .map(|cs| cs.iter().filter(|c| c["breached"] == Value::Bool(true)).filter_map(|c| c["condition"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                let delay = incident_start.map(|s| format!(" — detected {} after the incident start", offset(next_tick, s))).unwrap_or_default();
                batch.push(format!("rule {} flag {} {what}: {}{delay}", d.rule, d.flag, conditions.join("; ")));
            }
            batch.sort();
            lines.extend(batch.into_iter().map(|l| (next_tick, l)));
            next_tick = next_tick.plus(tick);
        }
    };
    let (mut spans, mut logs) = (0u64, 0u64);
    for r in &records {
        run_ticks_until(r.arrival, &mut pipeline, &mut lines);
        clock.set(r.arrival);
        // Read as the daemon reads them: traces by the wire reader, logs by prost.
        let converted = match r.signal {
            Signal::Traces => convert_traces_wire(&r.protobuf, &options).map_err(|e| e.to_string()),
            Signal::Logs => ExportLogsServiceRequest::decode(r.protobuf.as_slice()).map(|req| convert_logs(&req)).map_err(|e| e.to_string()),
        }
        .map_err(|e| format!("corrupt record at {}: {e}", r.arrival))?;
        spans += converted.batch.spans_seen;
        logs += converted.batch.logs_seen;
        pipeline.ingest(converted.batch);
    }
    run_ticks_until(end, &mut pipeline, &mut lines);
    let mut out = String::new();
    let rule_count = pipeline.engine().rules().rules.len();
    let _ = writeln!(
        out,
        "replay: {} requests ({spans} spans, {logs} log records) from {} to {} ({}), {rule_count} rule(s), dry-run",
        records.len(),
        first,
        last,
        offset(last, first)
    );
    if let Some(s) = incident_start {
        let _ = writeln!(out, "incident start: {} ({})", s, offset(s, first));
    }
    for (t, line) in &lines {
        let _ = writeln!(out, "{:>10}  {line}", offset(*t, first));
    }
    let kills = lines.iter().filter(|(_, l)| l.contains("WOULD KILL")).count();
    let incidents = lines.iter().filter(|(_, l)| l.contains("INCIDENT")).count();
    let _ = writeln!(out, "{} verdict changes, {kills} kills that would have been made, {incidents} incidents", lines.len() - kills - incidents);
    Ok(out)
}

/// Parses `--incident-start`: RFC 3339, or milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<Timestamp, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Timestamp(ms));
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| Timestamp(t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64))
        .map_err(|e| e.to_string())
}

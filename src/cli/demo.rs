//! `flagguard demo`: a whole rollback on embedded defaults. It starts the daemon on free ports
//! with a flagd flag file as its kill switch, sends realistic three-service OTLP traffic over
//! gRPC (variants served from that same file, like an in-process flagd provider), injects a
//! regression into `checkout-v2=on` in the downstream payments service, and prints the
//! timeline until the kill is confirmed and the bad variant's traffic has drained.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::traffic::{self, Request};
use crate::act::flagd::FlagdConfig;
use crate::app::App;
use crate::config::{ActuatorConfig, Config, ConfigFile};
use crate::time::{SystemClock, Timestamp};

const FLAG: &str = "checkout-v2";
const RULES: &str = r#"rules:
  - name: checkout-v2-payments
    flag: checkout-v2
    treatment: "on"
    control: "off"
    where: { service: payments, environment: production }
    when:
      - error_rate: { above: 0.05 }
      - latency: { quantile: 0.99, above_ms: 2000 }
    window: 30s
    min_samples: 50
    for: 2s
    action: { kill: flagd-demo }
    cooldown: 15m
    mode: enforce
"#;
const REQUESTS_PER_SECOND: usize = 100;
const REGRESSION_AT: Duration = Duration::from_secs(8);
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);

fn flag_file() -> Value {
    json!({
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": { FLAG: {
            "state": "ENABLED",
            "variants": { "on": true, "off": false },
            "defaultVariant": "off",
            "targeting": { "fractional": [ ["on", 50], ["off", 50] ] }
        } }
    })
}

/// What the flag file serves a user now (a tiny in-process flagd: fractional split or default).
fn serve(path: &Path, user: u64) -> String {
    let doc: Value = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
    let def = &doc["flags"][FLAG];
    let default = def["defaultVariant"].as_str().unwrap_or("off").to_owned();
    if def.get("targeting").is_some() { if traffic::split(FLAG, user, 50) { "on".into() } else { "off".into() } } else { default }
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("   -  ".into(), |x| format!("{:5.1}%", x * 100.0))
}

/// Runs the demo; returns the exit code (0 when the kill was confirmed and traffic drained).
pub async fn run(keep: bool, hold: Duration) -> i32 {
    match run_inner(keep, hold).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("demo failed: {e}");
            1
        }
    }
}

async fn run_inner(keep: bool, hold: Duration) -> Result<(), String> {
    let dir = tempfile::Builder::new().prefix("flagguard-demo-").tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().to_path_buf();
    let flags_path = root.join("flags.json");
    std::fs::create_dir_all(root.join("rules")).map_err(|e| e.to_string())?;
    std::fs::write(&flags_path, serde_json::to_vec_pretty(&flag_file()).unwrap_or_default()).map_err(|e| e.to_string())?;
    std::fs::write(root.join("rules/demo.yaml"), RULES).map_err(|e| e.to_string())?;

    let mut file = ConfigFile::ephemeral(&root);
    file.correlate.trace_idle = Duration::from_secs(5);
    file.aggregate.snapshot_interval = Duration::from_millis(500);
    file.actuators.insert(
        "flagd-demo".into(),
        ActuatorConfig::Flagd(FlagdConfig { path: flags_path.clone(), off_variant: "off".into(), slices: Default::default(), verify: Default::default() }),
    );
    let config = Config::validate(file).map_err(|e| e.to_string())?;
    let app = App::build(config, Arc::new(SystemClock)).await.map_err(|e| e.to_string())?;
    let addrs = app.addrs();
    let store = app.store();
    let snapshots = app.snapshots();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(app.run(shutdown.clone(), Duration::from_secs(5)));

    println!("flagguard demo");
    println!("  daemon:    OTLP gRPC {}  OTLP HTTP {}  API http://{}", addrs.grpc, addrs.http, addrs.api);
    println!("  flag file: {}  (flagd format; {FLAG} serves on/off 50/50)", flags_path.display());
    println!("  rule:      kill {FLAG}=on when payments' error rate in production exceeds 5% over 30s");
    println!("             (at least 50 requests, breached for 2s; the control arm off must be healthy)");
    println!("  traffic:   {REQUESTS_PER_SECOND} requests/s, frontend -> checkout (evaluates {FLAG}) -> payments\n");
    println!("  {:>7}  {:<40} {:>9} {:>7}   {:>9} {:>7}   verdict", "time", "event", "on: reqs", "errors", "off: reqs", "errors");

    let mut client = TraceServiceClient::connect(format!("http://{}", addrs.grpc)).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut user = 0u64;
    let mut regression = false;
    let mut last_print = Duration::ZERO;
    let mut seen_audit = 0i64;
    let mut killed_at: Option<Duration> = None;
    let mut drained = false;
    let mut last_verdict = String::new();
    let mut result = Err(format!("no kill within {GIVE_UP_AFTER:?}"));
    let mut done_at: Option<Duration> = None;
    let tick = Duration::from_millis(100);
    let per_tick = REQUESTS_PER_SECOND / 10;
    loop {
        let elapsed = started.elapsed();
        if done_at.is_some_and(|d| elapsed >= d + hold) {
            break;
        }
        if done_at.is_none() && elapsed > GIVE_UP_AFTER {
            break;
        }
        if !regression && elapsed >= REGRESSION_AT {
            regression = true;
            println!("  {:>6.1}s  {:<40}", elapsed.as_secs_f64(), "▶ regression injected: payments fails 30% of checkout-v2=on requests");
        }
        let mut on_served = 0;
        let requests: Vec<Request> = (0..per_tick)
            .map(|_| {
                user += 1;
                let variant = serve(&flags_path, user % 5000);
                on_served += (variant == "on") as usize;
                let payments_error = regression && variant == "on" && rand::Rng::random_bool(&mut rng, 0.3);
                Request { user: user % 5000, variant, region: "eu-west".into(), payments_error }
            })
            .collect();
        let now_ns = Timestamp::now().as_millis() * 1_000_000;
        let request = traffic::build(FLAG, "production", &requests, now_ns, &mut rng);
        if let Err(status) = client.export(request).await {
            eprintln!("  export refused: {status}");
        }

        // Timeline: the rule's evidence once a second, and every audited step as it happens.
        let snapshot = snapshots.borrow().clone();
        let verdict = snapshot.verdicts.iter().find(|v| v.rule == "checkout-v2-payments");
        let label = verdict.map_or("no_data".to_owned(), |v| v.verdict.label().to_owned());
        if done_at.is_none() && (elapsed - last_print >= Duration::from_secs(1) || label != last_verdict) {
            last_print = elapsed;
            let ev = verdict.map(|v| v.evidence.clone()).unwrap_or(Value::Null);
            let t = &ev["treatment"]["stats"];
            let b = &ev["baseline"]["stats"];
            let event = if killed_at.is_some() { format!("on served to {}% of users", on_served * 100 / per_tick) } else { String::new() };
            println!(
                "  {:>6.1}s  {:<40} {:>9} {:>7}   {:>9} {:>7}   {}{}",
                elapsed.as_secs_f64(),
                event,
                t["requests"].as_u64().unwrap_or(0),
                pct(&t["error_rate"]),
                b["requests"].as_u64().unwrap_or(0),
                pct(&b["error_rate"]),
                label,
                verdict.and_then(|v| v.verdict.reason().map(str::to_owned)).map(|r| format!(" ({r})")).unwrap_or_default()
            );
            last_verdict = label;
        }
        let records = store.audit_log(20, None, None).unwrap_or_default();
        let fresh: Vec<_> = records.iter().rev().filter(|r| r.id > seen_audit).cloned().collect();
        for record in &fresh {
            seen_audit = record.id;
            let line = match record.kind.as_str() {
                "kill_decided" => Some("● kill decided by rule checkout-v2-payments".to_owned()),
                "kill_confirmed" => {
                    killed_at = Some(elapsed);
                    let had_targeting = record.before.as_ref().is_some_and(|b| b.pointer("/definition/targeting").is_some());
                    Some(format!(
                        "✔ kill confirmed: flags.json now serves {FLAG}=off to everyone{}",
                        if had_targeting { " (50/50 targeting removed)" } else { "" }
                    ))
                }
                "kill_drained" => {
                    drained = true;
                    let seen = record.after.as_ref().map(|a| a["observed"].clone()).unwrap_or_default();
                    Some(format!(
                        "✔ drained: {FLAG}=on in {} of the last {} evaluations flagguard saw (verified from telemetry)",
                        seen["treatment_exposures"].as_u64().unwrap_or(0),
                        seen["exposures"].as_u64().unwrap_or(0)
                    ))
                }
                "kill_escalated" => {
                    result = Err(format!("kill escalated: {:?}", record.after));
                    None
                }
                _ => None,
            };
            if let Some(line) = line {
                println!("  {:>6.1}s  {line}", elapsed.as_secs_f64());
            }
        }
        if result.as_ref().is_err_and(|e| e.starts_with("kill escalated")) {
            break;
        }
        if let Some(at) = killed_at
            && done_at.is_none()
            && drained
        {
            let detection = at.saturating_sub(REGRESSION_AT);
            println!("\n  checkout-v2=on is off for everyone; flagguard verified that its traffic drained.");
            println!(
                "  regression → confirmed kill: {:.1} s (window 30 s, min_samples 50, for 2 s; in production add the SDK's export delay)",
                detection.as_secs_f64()
            );
            println!("  audit log: GET http://{}/v1/audit while the daemon runs; here: {} records", addrs.api, seen_audit);
            result = Ok(());
            if hold.is_zero() {
                break;
            }
            done_at = Some(elapsed);
            println!("\n  dashboard: http://{}/#/flag/{FLAG}  (held for {}; Ctrl-C to stop)", addrs.api, humantime::format_duration(hold));
        }
        if done_at.is_some() {
            // Holding: keep quiet, keep the traffic (now all `off`) flowing.
            tokio::time::sleep(tick).await;
            continue;
        }
        tokio::time::sleep(tick).await;
    }
    shutdown.cancel();
    let _ = daemon.await;
    if keep {
        let kept = dir.keep();
        println!("  kept {}", kept.display());
    }
    result
}

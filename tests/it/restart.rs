//! A decided kill survives a crash: the daemon is SIGKILLed while the flag system keeps
//! answering 503; after a restart the outbox completes the call exactly once and audits it once.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flagguard::cli::traffic::{Request, build};
use flagguard::store::Store;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::support::*;

/// Writes `rules` and a configuration for the real binary under `dir`: free loopback ports,
/// JSON logs, `sections` (TOML tables), and a webhook actuator `flags` on `server` (with its
/// read-back when `read_back`).
fn write_config(dir: &std::path::Path, rules: &str, server: &FlagServer, sections: &str, read_back: bool) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/r.yaml"), rules).unwrap();
    let read_back = if read_back { format!("[actuators.flags.read_back]\nurl = \"{}\"\npointer = \"/enabled\"\n", server.url()) } else { String::new() };
    let config = dir.join("flagguard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\nrules_dir = \"{rules}\"\n[otlp]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{sections}[actuators.flags]\ntype = \"webhook\"\nurl = \"{url}\"\n{read_back}",
            data = dir.join("data").display(),
            rules = dir.join("rules").display(),
            url = server.url()
        ),
    )
    .unwrap();
    config
}

/// Starts the real binary and returns it with its OTLP gRPC address (read from its JSON log).
fn spawn(config: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flagguard"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "flagguard is running"
            {
                let _ = tx.send(v["grpc"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let grpc = rx.recv_timeout(Duration::from_secs(30)).expect("the daemon reports its addresses");
    (child, grpc.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_decided_before_a_crash_completes_once_after_restart() {
    let server = FlagServer::start().await;
    server.status.store(503, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let rules = "rules:\n  - name: crashy\n    flag: checkout-crash\n    treatment: \"on\"\n    control: \"off\"\n    where: { service: payments }\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n    min_samples: 30\n    action: { kill: flags }\n    mode: enforce\n";
    let config = write_config(dir.path(), rules, &server, "[act]\ninitial_backoff = \"200ms\"\nmax_backoff = \"400ms\"\nmax_attempts = 1000\n", true);

    let (mut first, grpc) = spawn(&config);
    let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
    let requests: Vec<Request> = (0..200)
        .map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 2 == 0 && i % 4 == 0 })
        .collect();
    client.export(build("checkout-crash", "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng())).await.unwrap();
    wait_until("the kill being retried against a failing flag system", Duration::from_secs(30), || server.kill_calls().len() >= 2).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let failed_before_crash = server.kill_calls().len();

    server.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let (mut second, _) = spawn(&config);
    wait_until("the kill to succeed after the restart", Duration::from_secs(30), || server.kill_calls().iter().any(|c| c.answered == 200)).await;
    let store = Store::open(&dir.path().join("data")).unwrap();
    wait_until("the confirmation in the audit log", Duration::from_secs(10), || !store.audit_log(100, None, Some("kill_confirmed")).unwrap().is_empty()).await;
    second.kill().unwrap();
    second.wait().unwrap();

    let calls = server.kill_calls();
    assert_eq!(calls.iter().filter(|c| c.answered == 200).count(), 1, "exactly one successful call: {calls:#?}");
    assert!(calls.len() > failed_before_crash);
    let keys: std::collections::HashSet<_> = calls.iter().map(|c| c.headers["idempotency-key"].clone()).collect();
    assert_eq!(keys.len(), 1, "every attempt, before and after the crash, carries the same idempotency key");
    assert_eq!(store.audit_log(100, None, Some("kill_decided")).unwrap().len(), 1);
    let confirmed = store.audit_log(100, None, Some("kill_confirmed")).unwrap();
    assert_eq!(confirmed.len(), 1);
    assert!(confirmed[0].after.as_ref().unwrap()["attempts"].as_u64().unwrap() as usize > failed_before_crash - 1);
    let action = store.action(confirmed[0].action_id.unwrap()).unwrap().unwrap();
    assert_eq!(action.state, "confirmed");
}

/// A rule that breaches at 25 % errors, fires after `for: 8s`: long enough to restart in the
/// middle of its clock.
const SLOW_RULE: &str = "rules:\n  - name: patient\n    flag: checkout-patient\n    treatment: \"on\"\n    control: \"off\"\n    where: { service: payments }\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 10m\n    min_samples: 30\n    for: 8s\n    action: { kill: flags }\n    mode: enforce\n";

fn breaching_traffic() -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let requests: Vec<Request> = (0..200)
        .map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 2 == 0 && i % 4 == 0 })
        .collect();
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    build("checkout-patient", "production", &requests, now_ns, &mut rand::rng())
}

fn breached(daemon: &Daemon) -> bool {
    daemon.snapshot().verdicts.iter().any(|v| v.rule == "patient" && v.verdict.label() == "breached")
}

fn audited(store: &Store, kind: &str) -> Vec<serde_json::Value> {
    store.audit_log(100, None, Some(kind)).unwrap().into_iter().filter_map(|r| r.evidence).collect()
}

/// An upgrade (a graceful stop and a start on the same data) does not reset what the rules
/// had gathered: the slice breached before the stop fires after the start, on the windows and
/// the `for` clock of before, with no new traffic at all. Blind, it could not: its windows
/// would be empty (no data) and its clock would start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evidence_and_the_for_clock_survive_a_graceful_restart() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = Daemon::config(dir.path(), SLOW_RULE, &server);
    let daemon = Daemon::start(file.clone(), dir).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    client.export(breaching_traffic()).await.unwrap();
    wait_until("the slice to breach", Duration::from_secs(20), || breached(&daemon)).await;
    let breach_seen = std::time::Instant::now();
    // How late the snapshot showed the breach (its `since` is when the engine saw it): under
    // load the test sees it later than the engine does, and the `for` runs from the engine's.
    let since = daemon.snapshot().verdicts.iter().find(|v| v.rule == "patient").map(|v| v.since).unwrap();
    let seen_late = flagguard::time::Timestamp::now().since(since);
    let dir = daemon.stop_keeping_data().await;
    assert!(server.kill_calls().is_empty(), "stopped before its `for` ran out");
    assert!(dir.path().join("data/state.ckpt").exists(), "a graceful stop writes a checkpoint");

    let daemon = Daemon::start(file, dir).await;
    wait_until("the restore to be audited", Duration::from_secs(10), || !audited(&daemon.store, "state_restored").is_empty()).await;
    let restored = audited(&daemon.store, "state_restored");
    assert_eq!(restored.len(), 1, "the start audits the restore once");
    assert!(restored[0]["series"].as_u64().unwrap() >= 2 && restored[0]["slices"].as_u64().unwrap() >= 1, "{}", restored[0]);
    wait_until("the kill decided from the evidence of before the restart", Duration::from_secs(30), || !server.kill_calls().is_empty()).await;
    let decided = daemon.store.audit_log(10, None, Some("kill_decided")).unwrap();
    assert_eq!(decided.len(), 1);
    let after = server.kill_calls()[0].at.duration_since(breach_seen) + seen_late;
    // 8 s `for` from the engine's breach (a tick's rounding below it).
    assert!(after >= Duration::from_millis(7_500), "after its `for`, counted from the breach before the stop ({after:?}, seen {seen_late:?} late)");
    assert!(after < Duration::from_secs(16), "not from the start after the restart ({after:?})");
    let evidence = decided[0].evidence.as_ref().unwrap();
    assert!(evidence["treatment"]["stats"]["requests"].as_u64().unwrap_or(0) >= 30, "on the windows of before: {evidence}");
    daemon.stop().await;
}

/// A crash (SIGKILL, no final checkpoint) loses at most the checkpoint interval: with
/// `checkpoint_interval = "1s"`, a slice breached seconds before the crash still fires after
/// the restart, without new traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_at_most_the_checkpoint_interval() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SLOW_RULE, &server, "[state]\ncheckpoint_interval = \"1s\"\n[aggregate]\nsnapshot_interval = \"200ms\"\n", false);
    let (mut first, grpc) = spawn(&config);
    let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
    client.export(breaching_traffic()).await.unwrap();
    let checkpoint = dir.path().join("data/state.ckpt");
    // A checkpoint that holds the breach: its slice Breached, its treatment's series in it.
    let holds_breach = || flagguard::pipeline::checkpoint::read(&checkpoint).ok().flatten().is_some_and(|c| format!("{:?}", c.engine).contains("Breached"));
    wait_until("a checkpoint holding the breach", Duration::from_secs(20), holds_breach).await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(server.kill_calls().is_empty(), "crashed before its `for` ran out");

    let (mut second, _) = spawn(&config);
    let store = Store::open(&dir.path().join("data")).unwrap();
    wait_until("the kill decided after the crash, from the checkpoint", Duration::from_secs(30), || !server.kill_calls().is_empty()).await;
    let restored = audited(&store, "state_restored");
    assert_eq!(restored.len(), 1);
    assert!(restored[0]["age_s"].as_u64().unwrap() < 10, "{}", restored[0]);
    assert_eq!(store.audit_log(10, None, Some("kill_decided")).unwrap().len(), 1);
    second.kill().unwrap();
    second.wait().unwrap();
}

/// A damaged checkpoint does not stop the daemon: it starts blind, says why in the log and the
/// audit, and moves the file aside so that the next start does not trip on it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_is_audited_moved_aside_and_the_daemon_starts_blind() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = Daemon::config(dir.path(), SLOW_RULE, &server);
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/state.ckpt"), b"FGCK\x01\0\0\0 torn in half by a full disk").unwrap();
    let daemon = Daemon::start(file, dir).await;
    wait_until("the refusal to be audited", Duration::from_secs(10), || !audited(&daemon.store, "state_not_restored").is_empty()).await;
    let refused = audited(&daemon.store, "state_not_restored");
    assert_eq!(refused.len(), 1, "audited once");
    assert!(refused[0]["why"].as_str().unwrap().contains("not a flagguard checkpoint"), "{}", refused[0]);
    assert!(refused[0]["moved_to"].as_str().unwrap().ends_with("state.ckpt.bad"));
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    client.export(breaching_traffic()).await.unwrap();
    wait_until("the daemon to judge new traffic", Duration::from_secs(20), || breached(&daemon)).await;
    daemon.stop().await;
}

//! Acting: permanent failures escalate without retries, 429 + Retry-After is honoured,
//! dry-run calls nothing, the demo's flagd kill works through the real binary.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flagguard::cli::traffic::{Request, build};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::support::*;

fn rule(flag: &str, mode: &str) -> String {
    format!(
        "rules:\n  - name: {flag}\n    flag: {flag}\n    treatment: \"on\"\n    control: \"off\"\n    where: {{ service: payments }}\n    when: [ {{ error_rate: {{ above: 0.1 }} }} ]\n    window: 1m\n    min_samples: 30\n    action: {{ kill: flags }}\n    mode: {mode}\n"
    )
}

/// Sends a regression for `flag`: half the users on `on`, a quarter of all requests failing in payments.
async fn regression(daemon: &Daemon, flag: &str) {
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    let requests: Vec<Request> =
        (0..200).map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 4 == 0 }).collect();
    client.export(build(flag, "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_escalates_without_retrying() {
    let server = FlagServer::start().await;
    server.status.store(401, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), &rule("perm", "enforce"), &server), dir).await;
    regression(&daemon, "perm").await;
    wait_until("the escalation", Duration::from_secs(20), || daemon.audit_kinds().contains(&"kill_escalated".to_owned())).await;
    assert_eq!(server.kill_calls().len(), 1, "a 401 is not retried");
    let escalated = daemon.store.audit_log(10, None, Some("kill_escalated")).unwrap();
    assert!(escalated[0].after.as_ref().unwrap()["error"].as_str().unwrap().contains("401"));
    let action = daemon.store.action(escalated[0].action_id.unwrap()).unwrap().unwrap();
    assert_eq!(action.state, "escalated");
    wait_until("the escalation notification", Duration::from_secs(10), || {
        server.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.starts_with("ESCALATION")))
    })
    .await;
    // The audit log never carries the credential.
    let all = serde_json::to_string(&daemon.store.audit_log(1000, None, None).unwrap()).unwrap();
    assert!(!all.contains("test-token-123"), "a secret leaked into the audit log");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_retried_after_the_providers_delay() {
    let server = FlagServer::start().await;
    server.status.store(429, Ordering::SeqCst);
    server.retry_after.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), &rule("rate", "enforce"), &server);
    config.act.max_backoff = Duration::from_secs(5);
    let daemon = Daemon::start(config, dir).await;
    regression(&daemon, "rate").await;
    wait_until("the first, rate-limited call", Duration::from_secs(20), || !server.kill_calls().is_empty()).await;
    let first = Instant::now();
    server.status.store(200, Ordering::SeqCst);
    wait_until("the retry", Duration::from_secs(20), || server.kill_calls().len() >= 2).await;
    // Retry-After: 2 wins over the 100 ms backoff.
    let waited = first.elapsed();
    assert!(waited >= Duration::from_millis(1800), "{waited:?}");
    wait_until("the confirmation", Duration::from_secs(10), || daemon.audit_kinds().contains(&"kill_confirmed".to_owned())).await;
    let calls = server.kill_calls();
    assert_eq!((calls[0].answered, calls[1].answered), (429, 200));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_records_what_it_would_do_and_calls_nothing() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), &rule("dry", "dry_run"), &server), dir).await;
    regression(&daemon, "dry").await;
    wait_until("the dry-run record", Duration::from_secs(20), || daemon.audit_kinds().contains(&"kill_dry_run".to_owned())).await;
    wait_until("the dry-run notification", Duration::from_secs(10), || {
        server.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.starts_with("[dry-run]")))
    })
    .await;
    assert!(server.kill_calls().is_empty());
    let record = &daemon.store.audit_log(10, None, Some("kill_dry_run")).unwrap()[0];
    assert_eq!(record.evidence.as_ref().unwrap()["verdict"], "breached");
    daemon.stop().await;
}

#[test]
fn the_demo_kills_through_a_flagd_file_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flagguard")).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["regression injected", "breached", "kill decided", "kill confirmed", "✔ drained", "verified that its traffic drained"] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

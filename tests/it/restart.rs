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
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/r.yaml"), rules).unwrap();
    let config = dir.path().join("flagguard.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
rules_dir = "{rules}"
[otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
[log]
format = "json"
[act]
initial_backoff = "200ms"
max_backoff = "400ms"
max_attempts = 1000
[actuators.flags]
type = "webhook"
url = "{url}"
[actuators.flags.read_back]
url = "{url}"
pointer = "/enabled"
"#,
            data = dir.path().join("data").display(),
            rules = dir.path().join("rules").display(),
            url = server.url()
        ),
    )
    .unwrap();

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

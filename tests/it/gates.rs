//! The promotion gate through the real `flagguard gate` binary against a running daemon: hold
//! without evidence, promote when healthy, roll back when breached, 3 when unreachable.

use std::process::Command;
use std::time::Duration;

use flagguard::cli::traffic::{Request, build};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::support::*;

const RULE: &str = "rules:\n  - name: gate-payments\n    flag: gate-flag\n    treatment: \"on\"\n    control: \"off\"\n    where: { service: payments }\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n    min_samples: 30\n";

fn gate(api: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flagguard")).args(["gate", "gate-flag", "--server", api]).args(extra).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn send(daemon: &Daemon, errors: bool, from: u64) {
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    let requests: Vec<Request> = (from..from + 100)
        .map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: errors && i % 2 == 0 })
        .collect();
    client.export(build("gate-flag", "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_answers_hold_promote_and_rollback() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), RULE, &server), dir).await;
    let api = format!("http://{}", daemon.addrs.api);

    let (code, out) = gate(&api, &[]);
    assert_eq!(code, 2, "no evidence yet: {out}");
    assert!(out.contains("HOLD"), "{out}");

    send(&daemon, false, 0).await;
    wait_until("a healthy verdict", Duration::from_secs(10), || daemon.snapshot().verdicts.iter().any(|v| v.verdict.label() == "healthy")).await;
    let (code, out) = gate(&api, &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = gate(&api, &["--min-healthy", "1h"]);
    assert_eq!(code, 2, "healthy, but not for an hour: {out}");
    let (code, out) = gate(&api, &["--json"]);
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((code, answer["decision"].as_str()), (0, Some("promote")));
    assert_eq!(answer["slices"][0]["required"], 30);

    send(&daemon, true, 1000).await;
    wait_until("a breach", Duration::from_secs(10), || daemon.snapshot().verdicts.iter().any(|v| v.verdict.label() == "breached")).await;
    let (code, out) = gate(&api, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ROLL BACK") && out.contains("breached"), "{out}");
    daemon.stop().await;

    let (code, out) = gate(&api, &[]);
    assert_eq!(code, 3, "unreachable: {out}");
}

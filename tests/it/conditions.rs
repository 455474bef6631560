//! Rule conditions through the real daemon: OTLP in over gRPC, the verdict and the kill call
//! out.

use std::time::Duration;

use flagguard::cli::traffic::{Request, build};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::support::*;

/// Judged over the whole flag (no `where`): checkout evaluates the flag, and every trace has a
/// request in frontend, checkout and payments — three requests per exposure.
const THROUGHPUT: &str = "rules:\n  - name: tp-drop\n    flag: tp-flag\n    treatment: \"on\"\n    control: \"off\"\n    when: [ { throughput: { below_control_ratio: 0.9 } } ]\n    window: 1m\n    min_samples: 100\n    action: { kill: flags }\n    mode: enforce\n";

/// Sends `n` traces per arm; without `treatment_reaches_payments`, the treatment's payments
/// spans never arrive (its calls fail before they are traced).
async fn send(daemon: &Daemon, n: u64, from: u64, treatment_reaches_payments: bool) {
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    for variant in ["on", "off"] {
        let requests: Vec<Request> =
            (from..from + n).map(|user| Request { user, variant: variant.into(), region: "eu".into(), payments_error: false }).collect();
        let mut export = build("tp-flag", "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng());
        if variant == "on" && !treatment_reaches_payments {
            export.resource_spans.retain(|rs| {
                let service = rs.resource.as_ref().and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name")).and_then(|kv| kv.value.clone());
                service.and_then(|v| v.value).is_none_or(|v| v != opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("payments".into()))
            });
        }
        client.export(export).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_treatment_whose_requests_vanish_is_killed_by_the_throughput_condition() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), THROUGHPUT, &server), dir).await;
    let verdict = |daemon: &Daemon| daemon.snapshot().verdicts.iter().find(|v| v.rule == "tp-drop").map(|v| v.verdict.to_string());

    send(&daemon, 200, 0, true).await;
    wait_until("a healthy verdict", Duration::from_secs(10), || verdict(&daemon).as_deref() == Some("healthy")).await;
    assert!(server.kill_calls().is_empty());

    // Two requests per exposure in the treatment against three in the control.
    send(&daemon, 400, 1_000, false).await;
    let evidence = || daemon.snapshot().verdicts.iter().find(|v| v.rule == "tp-drop").map(|v| v.evidence.to_string()).unwrap_or_default();
    wait_until(&format!("the kill (last: {})", evidence()), Duration::from_secs(15), || !server.kill_calls().is_empty()).await;
    // The snapshot is published on its own interval, after the decision.
    wait_until("the breached verdict", Duration::from_secs(5), || verdict(&daemon).as_deref() == Some("breached")).await;
    let snapshot = daemon.snapshot();
    let v = snapshot.verdicts.iter().find(|v| v.rule == "tp-drop").unwrap();
    let condition = &v.evidence["conditions"][0];
    assert!(condition["treatment_rate"].as_f64().unwrap() < 0.9 * condition["control_rate"].as_f64().unwrap(), "{condition}");
    assert_eq!(server.kill_calls()[0].body["rule"], "tp-drop");
    daemon.stop().await;
}

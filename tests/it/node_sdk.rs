//! The real OpenTelemetry Node SDK with the OpenFeature hooks' EventHook (flag evaluations as
//! log records) and SpanHook (a child span per evaluation), over OTLP/HTTP JSON.

use std::time::Duration;

use crate::support::*;

async fn node_shape_is_attributed(hook: &str, flag: &str) {
    let rules = format!(
        "rules:\n  - name: {flag}-payments\n    flag: {flag}\n    treatment: \"on\"\n    control: \"off\"\n    where: {{ service: payments }}\n    when: [ {{ error_rate: {{ above: 0.1 }} }} ]\n    window: 1m\n    min_samples: 40\n    action: {{ kill: flags }}\n    mode: enforce\n"
    );
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), &rules, &server), dir).await;
    let script = node_client();
    let endpoint = format!("http://{}", daemon.addrs.http);
    let summary = run_client(
        std::path::Path::new("node"),
        &[script.to_str().unwrap(), "--endpoint", &endpoint, "--hook", hook, "--scenario", "regression", "--flag", flag, "--requests", "300"],
    )
    .await;
    let on_errors = summary["errors_by_variant"]["on"].as_u64().unwrap();
    wait_until("the kill call", Duration::from_secs(30), || !server.kill_calls().is_empty()).await;
    wait_until("every payments request counted", Duration::from_secs(20), || {
        daemon.requests(flag, "on", "payments").0 + daemon.requests(flag, "off", "payments").0 == 300
    })
    .await;
    let (on_req, on_err) = daemon.requests(flag, "on", "payments");
    let (off_req, off_err) = daemon.requests(flag, "off", "payments");
    assert!(on_req >= 40 && off_req >= 40, "on {on_req} off {off_req}");
    assert!(on_err > 0 && on_err <= on_errors && off_err == 0, "on {on_err}/{on_errors} off {off_err}");
    // The evaluation span of SpanHook is not a request of checkout.
    let (checkout_req, _) = daemon.requests(flag, "on", "checkout");
    assert!(checkout_req <= summary["by_variant"]["on"].as_u64().unwrap(), "evaluation spans must not count as requests");
    assert_eq!(server.kill_calls()[0].path, format!("/v1/flags/{flag}"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_event_hook_log_records_are_joined_to_their_trace() {
    node_shape_is_attributed("event", "checkout-node-event").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_span_hook_child_spans_expose_their_trace() {
    node_shape_is_attributed("span", "checkout-node-span").await;
}

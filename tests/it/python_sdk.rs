//! The real OpenTelemetry Python SDK with the real OpenFeature OpenTelemetry hook, three
//! services per trace, errors only in the downstream payments service.

use std::time::Duration;

use crate::support::*;

fn rules(flag: &str) -> String {
    format!(
        r#"rules:
  - name: {flag}-payments
    flag: {flag}
    treatment: "on"
    control: "off"
    where: {{ service: payments, environment: production }}
    when:
      - error_rate: {{ above: 0.1 }}
    window: 1m
    min_samples: 40
    action: {{ kill: flags }}
    mode: enforce
"#
    )
}

async fn regression_is_killed(protocol: &str, flag: &str) {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), &rules(flag), &server), dir).await;
    let endpoint = match protocol {
        "grpc" => format!("http://{}", daemon.addrs.grpc),
        _ => format!("http://{}", daemon.addrs.http),
    };
    let python = python();
    let client = python_client();
    let summary = run_client(
        &python,
        &[
            client.to_str().unwrap(),
            "--endpoint",
            &endpoint,
            "--protocol",
            protocol,
            "--scenario",
            "regression",
            "--flag",
            flag,
            "--requests",
            "400",
            "--regions",
            "eu-west,us-east",
        ],
    )
    .await;
    assert!(summary["errors_by_variant"]["on"].as_u64().unwrap() > 20, "{summary}");

    wait_until("the kill call at the flag server", Duration::from_secs(30), || !server.kill_calls().is_empty()).await;
    wait_until("the confirmed kill in the audit log", Duration::from_secs(10), || daemon.audit_kinds().contains(&"kill_confirmed".to_owned())).await;
    let calls = server.kill_calls();
    assert_eq!(calls.len(), 1, "one kill, not one per tick: {calls:#?}");
    let call = &calls[0];
    assert_eq!(call.path, format!("/v1/flags/{flag}"));
    assert_eq!(call.headers["authorization"], "Bearer test-token-123");
    assert!(call.headers.contains_key("idempotency-key"));
    assert_eq!(call.body["rollout_percentage"], 0);
    assert_eq!(call.body["enabled"], false);
    assert_eq!(call.body["variant"], "on");
    assert_eq!(call.body["rule"], format!("{flag}-payments"));
    let evidence = &call.body["evidence"];
    assert_eq!(evidence["verdict"], "breached");
    assert!(evidence["treatment"]["stats"]["requests"].as_u64().unwrap() >= 40, "{evidence}");
    assert!(evidence["treatment"]["stats"]["error_rate"].as_f64().unwrap() > 0.1, "{evidence}");
    assert_eq!(evidence["baseline"]["stats"]["errors"], 0, "the control arm is healthy: {evidence}");

    // Attribution: payments' errors count against the flag checkout evaluated; the upstream
    // services' requests are exposed too but did not fail.
    wait_until("every payments request counted", Duration::from_secs(20), || {
        daemon.requests(flag, "on", "payments").0 + daemon.requests(flag, "off", "payments").0 == 400
    })
    .await;
    let (on_req, on_err) = daemon.requests(flag, "on", "payments");
    let (off_req, off_err) = daemon.requests(flag, "off", "payments");
    assert!(on_req > 100 && off_req > 100, "on {on_req} off {off_req}");
    assert!(on_err > 20 && off_err == 0, "on errors {on_err}, off errors {off_err}");
    for service in ["frontend", "checkout"] {
        let (req, err) = daemon.requests(flag, "on", service);
        assert!(req > 100 && err == 0, "{service}: {req} requests {err} errors");
    }
    // Every automatic action is notified.
    wait_until("the kill notification", Duration::from_secs(10), || {
        server.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.contains("killed")))
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_regression_in_a_downstream_service_is_killed() {
    regression_is_killed("grpc", "checkout-py-grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_protobuf_regression_is_killed() {
    regression_is_killed("http", "checkout-py-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_healthy_rollout_is_not_killed() {
    let flag = "checkout-py-healthy";
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), &rules(flag), &server), dir).await;
    let endpoint = format!("http://{}", daemon.addrs.http);
    run_client(
        &python(),
        &[python_client().to_str().unwrap(), "--endpoint", &endpoint, "--protocol", "http", "--scenario", "healthy", "--flag", flag, "--requests", "400"],
    )
    .await;
    wait_until("all payments requests counted", Duration::from_secs(20), || {
        let (on, _) = daemon.requests(flag, "on", "payments");
        let (off, _) = daemon.requests(flag, "off", "payments");
        on + off == 400
    })
    .await;
    wait_until("a healthy verdict", Duration::from_secs(10), || daemon.snapshot().verdicts.iter().any(|v| v.flag == flag && v.verdict.label() == "healthy"))
        .await;
    assert!(server.kill_calls().is_empty());
    assert!(!daemon.audit_kinds().iter().any(|k| k.starts_with("kill")), "{:?}", daemon.audit_kinds());
    daemon.stop().await;
}

/// Blast radius: payments fails for both variants → a service-wide incident, not the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_outage_of_the_whole_service_is_not_blamed_on_the_flag() {
    let flag = "checkout-py-outage";
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), &rules(flag), &server), dir).await;
    let endpoint = format!("http://{}", daemon.addrs.grpc);
    run_client(
        &python(),
        &[python_client().to_str().unwrap(), "--endpoint", &endpoint, "--protocol", "grpc", "--scenario", "outage", "--flag", flag, "--requests", "400"],
    )
    .await;
    wait_until("the incident in the audit log", Duration::from_secs(30), || daemon.audit_kinds().contains(&"incident".to_owned())).await;
    wait_until("the verdict in the snapshot", Duration::from_secs(10), || daemon.snapshot().verdicts.iter().any(|v| v.flag == flag)).await;
    let verdict = daemon.snapshot().verdicts.iter().find(|v| v.flag == flag).cloned().expect("a verdict");
    assert_eq!(verdict.verdict.label(), "inconclusive");
    assert!(verdict.verdict.reason().unwrap_or("").contains("control"), "{verdict:?}");
    assert!(server.kill_calls().is_empty(), "no kill for a service-wide failure");
    wait_until("the incident notification", Duration::from_secs(10), || {
        server.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.contains("incident")))
    })
    .await;
    daemon.stop().await;
}

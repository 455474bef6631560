//! The admin API over a real socket: rules, hot reload (file change and request; an invalid
//! reload keeps the previous set), cohorts, verdicts, actions, audit, health, metrics.

use std::time::Duration;

use crate::support::*;

const RULE_A: &str = "rules:\n  - name: a\n    flag: f\n    treatment: \"on\"\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n";
const RULE_AB: &str = "rules:\n  - name: a\n    flag: f\n    treatment: \"on\"\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n  - name: b\n    flag: g\n    treatment: \"on\"\n    when: [ { latency: { quantile: 0.9, above_ms: 100 } } ]\n    window: 1m\n";
const BROKEN: &str = "rules:\n  - name: a\n    flag: f\n    treatment: \"on\"\n    when: [ { error_rate: { above: 3 } } ]\n    window: 1m\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_on_change_and_on_request_and_bad_reloads_keep_the_old_set() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules/test.yaml");
    let mut config = Daemon::config(dir.path(), RULE_A, &server);
    config.rules.reload_interval = Duration::from_millis(100);
    let daemon = Daemon::start(config, dir).await;
    let api = format!("http://{}", daemon.addrs.api);
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("{api}{path}");
        async move { http.get(url).send().await.unwrap() }
    };
    assert_eq!(get("/healthz").await.status(), 200);
    // Ready once the pipeline and the executor run (a moment after the listeners).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get("/readyz").await.status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names = |snapshot: &flagguard::view::Snapshot| snapshot.rules.rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    wait_until("rule a loaded", Duration::from_secs(5), || names(&daemon.snapshot()) == ["a"]).await;

    // A file change is picked up by the watcher.
    std::fs::write(&rules_file, RULE_AB).unwrap();
    wait_until("rules a and b loaded", Duration::from_secs(10), || names(&daemon.snapshot()) == ["a", "b"]).await;

    // An invalid set is refused, by request and by the watcher, and the old set stays.
    std::fs::write(&rules_file, BROKEN).unwrap();
    let r = http.post(format!("{api}/v1/rules/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["errors"][0].as_str().unwrap().contains("test.yaml:5: rules[0].when[0].error_rate.above: must be in [0, 1), got 3"), "{body}");
    wait_until("the failed reload reported", Duration::from_secs(5), || daemon.snapshot().rules.last_error.is_some()).await;
    assert_eq!(names(&daemon.snapshot()), ["a", "b"]);
    let rules: serde_json::Value = get("/v1/rules").await.json().await.unwrap();
    assert_eq!(rules["rules"]["rules"].as_array().unwrap().len(), 2);
    assert!(rules["rules"]["last_error"][0].as_str().unwrap().contains("must be in [0, 1)"));

    std::fs::write(&rules_file, RULE_A).unwrap();
    let r = http.post(format!("{api}/v1/rules/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["rules"], 1);

    // Every reload is audited, with the actor.
    let audit: serde_json::Value = get("/v1/audit?kind=rules_reloaded").await.json().await.unwrap();
    let actors: Vec<&str> = audit["audit"].as_array().unwrap().iter().map(|r| r["actor"].as_str().unwrap()).collect();
    assert!(actors.contains(&"api") && actors.contains(&"system:file-watch"), "{actors:?}");
    let page: serde_json::Value = get("/v1/audit?limit=1").await.json().await.unwrap();
    assert_eq!(page["audit"].as_array().unwrap().len(), 1);
    assert!(page["next_before"].is_i64());

    let metrics = get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("flagguard_rule_reloads_total{result=\"invalid\"}"), "{metrics}");
    assert!(metrics.contains("flagguard_rules_loaded 1"), "{metrics}");
    assert_eq!(get("/v1/actions/12345").await.status(), 404);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_flag_without_telemetry_is_reported_stale() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), RULE_A, &server);
    config.rules.stale_after = Duration::from_millis(300);
    let daemon = Daemon::start(config, dir).await;
    wait_until("the stale rule reported", Duration::from_secs(5), || daemon.snapshot().stale_rules == ["a"]).await;
    let verdicts: serde_json::Value = reqwest::get(format!("http://{}/v1/verdicts", daemon.addrs.api)).await.unwrap().json().await.unwrap();
    assert_eq!(verdicts["stale_rules"][0], "a");
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.addrs.api)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("flagguard_rules_stale 1"), "{metrics}");
    wait_until("the stale-rule notification", Duration::from_secs(10), || {
        server.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.contains("rule a is stale")))
    })
    .await;
    assert_eq!(daemon.audit_kinds().iter().filter(|k| *k == "rule_stale").count(), 1, "reported once, not every second");
    daemon.stop().await;
}

/// The dashboard's data: a flag's history from the windows, and the SSE overview stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_live_overview_for_the_dashboard() {
    use flagguard::cli::traffic::{Request, build};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), RULE_A, &server), dir).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    let requests: Vec<Request> =
        (0..40).map(|i| Request { user: i, variant: if i < 10 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i < 5 }).collect();
    client.export(build("f", "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng())).await.unwrap();
    wait_until("the requests counted", Duration::from_secs(10), || daemon.requests("f", "on", "payments").0 == 10).await;

    let api = format!("http://{}", daemon.addrs.api);
    let h: serde_json::Value = reqwest::get(format!("{api}/v1/flags/f/history?service=payments&seconds=300")).await.unwrap().json().await.unwrap();
    let sum = |variant: &str, field: &str| h["history"]["variants"][variant].as_array().unwrap().iter().map(|p| p[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("on", "requests"), sum("on", "errors"), sum("off", "requests")), (10, 5, 30), "{h}");
    assert_eq!(sum("on", "exposures"), 10, "exposures come from checkout, whatever the service filter");
    assert_eq!(h["history"]["services"], serde_json::json!(["checkout", "frontend", "payments"]));
    assert_eq!(h["rules"][0]["name"], "a");

    let mut events = reqwest::get(format!("{api}/v1/events")).await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk()).await.expect("an event within 10 s").unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: overview"), "{text}");
    let data: serde_json::Value = serde_json::from_str(text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(data["flags"][0]["flag"], "f");
    let page = reqwest::get(format!("{api}/")).await.unwrap().text().await.unwrap();
    assert!(page.contains("/assets/app.js"));
    daemon.stop().await;
}

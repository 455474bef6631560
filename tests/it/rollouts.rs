//! Automated progression against the real Unleash, with real SDK traffic: a plan advancing
//! while healthy and rolling back when a regression is injected at 25 %; a rollout changed by
//! hand mid-plan (drift) pauses the plan instead of being overwritten; two regions with a
//! regression in one only.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;
use crate::unleash::{Traffic, actuator, rollout, unique, unleash};

/// A guard rule (verdicts only: the plan acts) and a plan.
fn rules(flag: &str, plan: &str) -> String {
    format!(
        "rules:\n  - name: {flag}-guard\n    flag: {flag}\n    treatment: \"true\"\n    control: \"false\"\n    where: {{ service: payments, environment: production }}\n    per: [region]\n    when: [ {{ error_rate: {{ above: 0.2 }} }} ]\n    window: 30s\n    min_samples: 10\n    for: 1s\n{plan}"
    )
}

fn plan(flag: &str, steps: &str, min_healthy: &str, regions: &str) -> String {
    format!(
        "rollouts:\n  - name: {flag}-plan\n    flag: {flag}\n    actuator: unleash\n    environment: production\n    regions: {regions}\n    treatment: \"true\"\n    steps: {steps}\n    min_healthy: {min_healthy}\n    min_samples: 10\n"
    )
}

async fn daemon(server: &crate::unleash::Unleash, rules: &str) -> (Daemon, FlagServer) {
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), rules, &flags);
    config.actuators.insert("unleash".into(), actuator(server, "FG_TEST_UNLEASH_TOKEN"));
    (Daemon::start(config, dir).await, flags)
}

fn instance(daemon: &Daemon, key: &str) -> Value {
    daemon.store.plan_state(key).unwrap().unwrap_or(Value::Null)
}

fn strategy_rollout(state: &Value, region: &str) -> (String, bool) {
    let s = state["strategies"].as_array().unwrap().iter().find(|s| s["constraints"][0]["values"][0] == region).unwrap();
    (s["parameters"]["rollout"].as_str().unwrap().to_owned(), s["disabled"].as_bool().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_advances_while_healthy_and_rolls_back_on_a_regression_at_25_percent() {
    let server = unleash().await;
    let flag = unique("fg-plan");
    server.create(&flag, &[rollout(&flag, 0, Some("eu-west"))]).await;
    let (daemon, flags) = daemon(&server, &rules(&flag, &plan(&flag, "[10, 25, 50, 100]", "15s", "[eu-west]"))).await;
    let key = format!("{flag}-plan/region=eu-west");
    let errors = tempfile::tempdir().unwrap();
    let error_file = errors.path().join("regression");
    let traffic = Traffic::start(&daemon, &server, &flag, &["--regions", "eu-west", "--error-file", error_file.to_str().unwrap()]).await;

    wait_until("step 1 (10 %)", Duration::from_secs(30), || instance(&daemon, &key)["percent"] == 10.0).await;
    assert_eq!(strategy_rollout(&server.state(&flag).await, "eu-west").0, "10");
    wait_until("step 2 (25 %) after 15 s healthy", Duration::from_secs(60), || instance(&daemon, &key)["percent"] == 25.0).await;
    assert_eq!(strategy_rollout(&server.state(&flag).await, "eu-west").0, "25");
    // The regression ships at 25 %.
    std::fs::write(&error_file, "").unwrap();
    wait_until("the rollback", Duration::from_secs(60), || instance(&daemon, &key)["status"] == "rolled_back").await;
    let kill = instance(&daemon, &key)["action"].as_i64().unwrap();
    wait_until("the kill to be confirmed", Duration::from_secs(20), || crate::unleash::state_of(&daemon, kill) != "pending").await;
    let (percent, disabled) = strategy_rollout(&server.state(&flag).await, "eu-west");
    assert_eq!((percent.as_str(), disabled), ("25", true), "rolled back at 25 %, never reached 50 %");
    traffic.stop().await;

    let steps: Vec<Value> =
        daemon.store.audit_log(500, None, Some("rollout_step")).unwrap().into_iter().filter_map(|r| r.after).map(|a| a["detail"]["percent"].clone()).collect();
    assert_eq!(steps, vec![json!(25.0), json!(10.0)], "every step audited (newest first)");
    assert!(daemon.audit_kinds().contains(&"rollout_rolled_back".to_owned()));
    wait_until("the rollback notification", Duration::from_secs(10), || {
        flags.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.contains("ROLLED BACK")))
    })
    .await;
    // The API shows it.
    let list: Value = flagguard::app::http_client(Duration::from_secs(5), None)
        .unwrap()
        .get(format!("http://{}/v1/rollouts", daemon.addrs.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["rollouts"][0]["instances"][0]["status"], "rolled_back");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_changed_by_hand_mid_plan_pauses_it_instead_of_being_overwritten() {
    let server = unleash().await;
    let flag = unique("fg-plandrift");
    server.create(&flag, &[rollout(&flag, 0, Some("eu-west"))]).await;
    let (daemon, flags) = daemon(&server, &rules(&flag, &plan(&flag, "[10, 50, 100]", "4s", "[eu-west]"))).await;
    let key = format!("{flag}-plan/region=eu-west");
    let traffic = Traffic::start(&daemon, &server, &flag, &["--regions", "eu-west", "--error-rate", "0"]).await;
    wait_until("step 1 (10 %)", Duration::from_secs(30), || instance(&daemon, &key)["percent"] == 10.0).await;
    // Someone moves it to 33 % in Unleash's UI.
    let state = server.state(&flag).await;
    let id = state["strategies"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .admin(
            reqwest::Method::PATCH,
            &format!("{}/strategies/{id}", server.env_path(&flag)),
            Some(json!([{ "op": "replace", "path": "/parameters/rollout", "value": "33" }])),
        )
        .await;
    assert_eq!(status, 200);
    wait_until("the plan to pause on drift", Duration::from_secs(60), || instance(&daemon, &key)["status"] == "paused").await;
    traffic.stop().await;
    let reason = instance(&daemon, &key)["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("drift") && reason.contains("33"), "{reason}");
    assert_eq!(strategy_rollout(&server.state(&flag).await, "eu-west").0, "33", "the human's change stands");
    wait_until("the pause notification", Duration::from_secs(10), || {
        flags.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.contains("PAUSED")))
    })
    .await;
    // Operators can abort it (audited); resuming a running plan is refused.
    let (status, _) = api(&daemon, &format!("/v1/rollouts/{flag}-plan/resume?region=eu-west"), json!({ "reason": "fixed by hand" })).await;
    assert_eq!(status, 200);
    let (status, _) = api(&daemon, &format!("/v1/rollouts/{flag}-plan/resume?region=eu-west"), json!({})).await;
    assert_eq!(status, 409);
    let (status, _) = api(&daemon, &format!("/v1/rollouts/{flag}-plan/abort?region=eu-west"), json!({ "actor": "alice" })).await;
    assert_eq!(status, 200);
    assert_eq!(instance(&daemon, &key)["status"], "aborted");
    let aborted = &daemon.store.audit_log(10, None, Some("rollout_abort")).unwrap()[0];
    assert_eq!(aborted.actor, "alice");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_progress_independently_and_only_the_broken_one_rolls_back() {
    let server = unleash().await;
    let flag = unique("fg-plan2r");
    server.create(&flag, &[rollout(&flag, 0, Some("eu-west")), rollout(&flag, 0, Some("us-east"))]).await;
    let (daemon, _) = daemon(&server, &rules(&flag, &plan(&flag, "[20, 50, 100]", "3s", "[eu-west, us-east]"))).await;
    let traffic = Traffic::start(&daemon, &server, &flag, &["--error-regions", "eu-west"]).await;
    let (eu, us) = (format!("{flag}-plan/region=eu-west"), format!("{flag}-plan/region=us-east"));
    wait_until("eu-west rolled back", Duration::from_secs(90), || instance(&daemon, &eu)["status"] == "rolled_back").await;
    wait_until("us-east completed", Duration::from_secs(90), || instance(&daemon, &us)["status"] == "completed").await;
    traffic.stop().await;
    let state = server.state(&flag).await;
    assert_eq!(state["enabled"], true);
    assert!(strategy_rollout(&state, "eu-west").1, "eu-west's strategy is disabled");
    assert_eq!(strategy_rollout(&state, "us-east"), ("100".to_owned(), false), "us-east went all the way");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_stale_lists_a_flag_serving_one_variant_to_everyone() {
    use flagguard::cli::traffic::{Request, build};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), "rules: []\n", &flags), dir).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    let send = |flag: &'static str, split: bool| {
        let requests: Vec<Request> = (0..20)
            .map(|i| Request { user: i, variant: if split && i % 2 == 1 { "off" } else { "on" }.into(), region: "eu".into(), payments_error: false })
            .collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        build(flag, "production", &requests, now, &mut rand::rng())
    };
    client.export(send("hygiene-done", false)).await.unwrap();
    client.export(send("hygiene-live", true)).await.unwrap();
    let server = format!("http://{}", daemon.addrs.api);
    let mut answer = Value::Null;
    let start = std::time::Instant::now();
    while answer["flags"].as_array().is_none_or(|f| f.is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(20), "no stale flag reported: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Keep the live flag live; the done one only ever serves `on`.
        client.export(send("hygiene-live", true)).await.unwrap();
        client.export(send("hygiene-done", false)).await.unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flagguard"))
            .args(["flags", "stale", "--single-variant-for", "1s", "--unused-for", "1h", "--json", "--server", &server])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        answer = serde_json::from_slice(&out.stdout).unwrap();
    }
    let found: Vec<(String, String)> =
        answer["flags"].as_array().unwrap().iter().map(|f| (f["flag"].as_str().unwrap().to_owned(), f["why"].as_str().unwrap().to_owned())).collect();
    assert_eq!(found, vec![("hygiene-done".to_owned(), "single_variant".to_owned())]);
    assert_eq!(answer["flags"][0]["variant"], "on");
    // Unreachable daemon: exit 3.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flagguard")).args(["flags", "stale", "--server", "http://127.0.0.1:9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    daemon.stop().await;
}

/// A health endpoint answering the status stored in it.
async fn health_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicU16>) {
    let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(503));
    let answer = status.clone();
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let answer = answer.clone();
            async move { axum::http::StatusCode::from_u16(answer.load(std::sync::atomic::Ordering::SeqCst)).unwrap() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_starts_only_once_staging_is_completed_and_healthy_and_its_health_check_passes() {
    let server = unleash().await;
    let flag = unique("fg-pipeline");
    server.create(&flag, &[rollout(&flag, 0, None)]).await;
    let development = server.env_path(&flag).replace("/environments/production", "/environments/development");
    let (status, body) = server.admin(reqwest::Method::POST, &format!("{development}/strategies"), Some(rollout(&flag, 0, None))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.admin(reqwest::Method::POST, &format!("{development}/on"), None).await;
    assert_eq!(status, 200);
    let (health, health_status) = health_server().await;
    let guard = |env: &str| {
        format!(
            "  - name: {flag}-{env}-guard\n    flag: {flag}\n    treatment: \"true\"\n    control: \"false\"\n    where: {{ service: payments, environment: {env} }}\n    when: [ {{ error_rate: {{ above: 0.2 }} }} ]\n    window: 30s\n    min_samples: 10\n    for: 1s\n"
        )
    };
    let plans = format!(
        "rollouts:\n  - name: {flag}-staging\n    flag: {flag}\n    actuator: unleash\n    environment: staging\n    treatment: \"true\"\n    steps: [100]\n    min_healthy: 1s\n    min_samples: 10\n  - name: {flag}-production\n    flag: {flag}\n    actuator: unleash\n    environment: production\n    treatment: \"true\"\n    after: {{ plan: {flag}-staging, healthy_for: 8s }}\n    checks: [ {{ http: {{ url: \"{health}\", status: 200 }}, timeout: 2s }} ]\n    steps: [10, 50]\n    min_healthy: 3s\n    min_samples: 10\n"
    );
    let rules = format!("rules:\n{}{}{plans}", guard("staging"), guard("production"));
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), &rules, &flags);
    let flagguard::config::ActuatorConfig::Unleash(mut unleash) = actuator(&server, "FG_TEST_UNLEASH_TOKEN") else { unreachable!() };
    unleash.environments.insert("staging".into(), "development".into());
    config.actuators.insert("unleash".into(), flagguard::config::ActuatorConfig::Unleash(unleash));
    let daemon = Daemon::start(config, dir).await;
    let staging_traffic =
        Traffic::start(&daemon, &server, &flag, &["--unleash-token", &server.backend_development, "--telemetry-environment", "staging", "--error-rate", "0"])
            .await;
    let production_traffic = Traffic::start(&daemon, &server, &flag, &["--error-rate", "0"]).await;
    let staging = format!("{flag}-staging");
    let production = format!("{flag}-production");

    // Staging goes to 100 % at once; production waits for it (and says so).
    wait_until("staging at 100 %", Duration::from_secs(30), || instance(&daemon, &staging)["percent"] == 100.0).await;
    wait_until("production to say why it waits", Duration::from_secs(30), || {
        instance(&daemon, &production)["reason"].as_str().is_some_and(|r| r.contains(&staging))
    })
    .await;
    assert_eq!(instance(&daemon, &production)["step"], Value::Null, "production has not started: {}", instance(&daemon, &production));
    assert_eq!(server.state(&flag).await["strategies"][0]["parameters"]["rollout"], "0");
    // Staging completed and healthy for 8 s: now only the health check holds production.
    wait_until("the failing health check to hold production", Duration::from_secs(60), || {
        instance(&daemon, &production)["reason"].as_str().is_some_and(|r| r.contains("answered 503, expected 200"))
    })
    .await;
    assert_eq!(instance(&daemon, &staging)["status"], "completed");
    assert_eq!(instance(&daemon, &production)["step"], Value::Null);
    assert_eq!(server.state(&flag).await["strategies"][0]["parameters"]["rollout"], "0", "production never started while the check failed");
    health_status.store(200, std::sync::atomic::Ordering::SeqCst);
    wait_until("production at 10 %", Duration::from_secs(30), || instance(&daemon, &production)["percent"] == 10.0).await;
    wait_until("production at 50 %", Duration::from_secs(60), || instance(&daemon, &production)["percent"] == 50.0).await;
    assert_eq!(server.state(&flag).await["strategies"][0]["parameters"]["rollout"], "50");
    staging_traffic.stop().await;
    production_traffic.stop().await;
    // Staging's steps come before production's in the audit log.
    let steps: Vec<String> = daemon
        .store
        .audit_log(500, None, Some("rollout_step"))
        .unwrap()
        .into_iter()
        .rev()
        .filter_map(|r| r.after.and_then(|a| a["plan"]["plan"].as_str().map(str::to_owned)))
        .collect();
    assert_eq!(steps, [staging.clone(), production.clone(), production.clone()]);
    daemon.stop().await;
}

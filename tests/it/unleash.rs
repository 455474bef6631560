//! The Unleash actuator against a real Unleash 8.2.0 (started once per test run by
//! `scripts/setup-unleash.sh`), with traffic from the real Unleash Python SDK behind the real
//! OpenFeature provider and OpenTelemetry hook, polling every second — so the drain after a kill
//! is the SDK noticing, not the test stopping traffic. Each test has its own flag keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use flagguard::act::unleash::UnleashConfig;
use flagguard::config::{ActuatorConfig, VerifyConfig};
use serde_json::{Value, json};

use crate::support::*;

/// The running server: URL and tokens from the setup script's env block.
pub struct Unleash {
    pub url: String,
    pub admin: String,
    pub backend: String,
    /// A backend token of the `development` environment.
    pub backend_development: String,
    client: reqwest::Client,
}

static SERVER: OnceLock<Result<BTreeMap<String, String>, String>> = OnceLock::new();

/// Starts (or reuses) the test server. Panics with the script's output when it cannot start.
pub async fn unleash() -> Unleash {
    let env = tokio::task::spawn_blocking(|| {
        SERVER
            .get_or_init(|| {
                let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-unleash.sh");
                let out = std::process::Command::new("bash").arg(script).arg("start").output().map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!("setup-unleash.sh start failed:\n{}", String::from_utf8_lossy(&out.stderr)));
                }
                Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
            })
            .clone()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}"));
    // The daemon reads its admin token from the environment, as in production.
    // SAFETY: every test sets the same value.
    unsafe { std::env::set_var("FG_TEST_UNLEASH_TOKEN", &env["UNLEASH_ADMIN_TOKEN"]) };
    Unleash {
        url: env["UNLEASH_URL"].clone(),
        admin: env["UNLEASH_ADMIN_TOKEN"].clone(),
        backend: env["UNLEASH_BACKEND_TOKEN"].clone(),
        backend_development: env["UNLEASH_BACKEND_TOKEN_DEVELOPMENT"].clone(),
        client: flagguard::app::http_client(Duration::from_secs(10), None).unwrap(),
    }
}

/// A flag key unique to this test run.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{name}-{}-{nanos:x}", std::process::id())
}

impl Unleash {
    pub fn env_path(&self, flag: &str) -> String {
        format!("{}/api/admin/projects/default/features/{flag}/environments/production", self.url)
    }

    pub async fn admin(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
        let mut call = self.client.request(method, url).header("authorization", &self.admin);
        if let Some(body) = body {
            call = call.json(&body);
        }
        let response = call.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates `flag` with these strategies in production and turns it on there.
    pub async fn create(&self, flag: &str, strategies: &[Value]) {
        let (status, _) = self
            .admin(reqwest::Method::POST, &format!("{}/api/admin/projects/default/features", self.url), Some(json!({ "name": flag, "type": "release" })))
            .await;
        assert_eq!(status, 201, "create {flag}");
        for strategy in strategies {
            let (status, body) = self.admin(reqwest::Method::POST, &format!("{}/strategies", self.env_path(flag)), Some(strategy.clone())).await;
            assert_eq!(status, 200, "strategy for {flag}: {body}");
        }
        let (status, _) = self.admin(reqwest::Method::POST, &format!("{}/on", self.env_path(flag)), None).await;
        assert_eq!(status, 200);
        // The SDKs' feature list lags single-flag reads by up to a second: wait until an SDK
        // would see the flag, so the traffic client does not start on an unknown flag.
        let start = std::time::Instant::now();
        loop {
            let list: Value =
                self.client.get(format!("{}/api/client/features", self.url)).header("authorization", &self.backend).send().await.unwrap().json().await.unwrap();
            if list["features"].as_array().is_some_and(|f| f.iter().any(|f| f["name"] == flag && f["enabled"] == true)) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "{flag} never appeared in the SDK feature list");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `{enabled, strategies}` of production.
    pub async fn state(&self, flag: &str) -> Value {
        self.admin(reqwest::Method::GET, &self.env_path(flag), None).await.1
    }

    /// What SDKs receive.
    pub async fn client_view(&self, flag: &str) -> Value {
        let url = format!("{}/api/client/features/{flag}", self.url);
        self.client.get(url).header("authorization", &self.backend).send().await.unwrap().json().await.unwrap()
    }

    pub async fn events(&self, flag: &str) -> Vec<String> {
        let (_, body) = self.admin(reqwest::Method::GET, &format!("{}/api/admin/events/{flag}", self.url), None).await;
        body["events"].as_array().map(|e| e.iter().filter_map(|e| e["type"].as_str().map(str::to_owned)).collect()).unwrap_or_default()
    }
}

/// A rollout strategy, optionally limited to one region.
pub fn rollout(flag: &str, percent: u32, region: Option<&str>) -> Value {
    let constraints: Vec<Value> = region.iter().map(|r| json!({ "contextName": "region", "operator": "IN", "values": [r] })).collect();
    json!({ "name": "flexibleRollout", "constraints": constraints, "parameters": { "rollout": percent.to_string(), "stickiness": "default", "groupId": flag } })
}

/// The Unleash actuator as a user configures it: token from the environment, regions as the
/// `region` context field, a short drain deadline for tests.
pub fn actuator(server: &Unleash, token_var: &str) -> ActuatorConfig {
    ActuatorConfig::Unleash(UnleashConfig {
        url: server.url.clone(),
        token: format!("${{{token_var}}}"),
        project: "default".into(),
        environments: BTreeMap::new(),
        default_environment: None,
        slices: BTreeMap::from([("region".into(), "region".into())]),
        verify: VerifyConfig { drain_within: Duration::from_secs(45), drain_window: Duration::from_secs(5), ..VerifyConfig::default() },
    })
}

fn rule(flag: &str, per_region: bool) -> String {
    format!(
        "rules:\n  - name: {flag}\n    flag: {flag}\n    treatment: \"true\"\n    control: \"false\"\n    where: {{ service: payments, environment: production }}\n{per}    when: [ {{ error_rate: {{ above: 0.2 }} }} ]\n    window: 30s\n    min_samples: 30\n    for: 1s\n    action: {{ kill: unleash }}\n    mode: enforce\n",
        per = if per_region { "    per: [region]\n" } else { "" }
    )
}

/// The real-SDK traffic client, running until the returned stop file exists.
pub struct Traffic {
    stop: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Traffic {
    /// `extra`: more arguments (`--error-regions eu-west`, `--error-file P`, `--error-rate 0`).
    pub async fn start(daemon: &Daemon, server: &Unleash, flag: &str, extra: &[&str]) -> Traffic {
        let stop = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python/unleash_traffic.py"))
            .args(["--protocol", "grpc", "--endpoint", &format!("http://{}", daemon.addrs.grpc)])
            .args(["--unleash-url", &server.url, "--unleash-token", &server.backend, "--flag", flag])
            // Unleash's SDK feature list can lag the admin API: the client keeps polling rather
            // than exiting when its first fetch does not know the flag yet.
            .args(["--rate", "40", "--error-rate", "0.6", "--regions", "eu-west,us-east", "--allow-missing-flag"])
            .args(extra)
            .arg("--stop-file")
            .arg(stop.path().join("stop"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python traffic client (scripts/setup-test-clients.sh)");
        Traffic { stop, child }
    }

    pub async fn stop(self) -> Value {
        std::fs::write(self.stop.path().join("stop"), "").unwrap();
        let out = tokio::time::timeout(Duration::from_secs(30), self.child.wait_with_output()).await.expect("the client stops").unwrap();
        assert!(out.status.success(), "traffic client failed: {out:?}");
        serde_json::from_slice(out.stdout.trim_ascii()).unwrap_or(Value::Null)
    }
}

pub fn state_of(daemon: &Daemon, id: i64) -> String {
    daemon.store.action(id).unwrap().map(|a| a.state.to_string()).unwrap_or_default()
}

fn kill_ids(daemon: &Daemon) -> Vec<i64> {
    daemon.store.actions(100).unwrap().into_iter().filter(|a| a.kind == "kill").map(|a| a.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_is_killed_in_unleash_confirmed_drained_restored_and_rolled_out() {
    let server = unleash().await;
    let flag = unique("fg-kill");
    server.create(&flag, &[rollout(&flag, 50, None)]).await;
    let strategies_before = server.state(&flag).await["strategies"].clone();
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), &rule(&flag, false), &flags);
    config.actuators.insert("unleash".into(), actuator(&server, "FG_TEST_UNLEASH_TOKEN"));
    let daemon = Daemon::start(config, dir).await;
    let traffic = Traffic::start(&daemon, &server, &flag, &[]).await;

    wait_until("a kill action", Duration::from_secs(60), || !kill_ids(&daemon).is_empty()).await;
    let id = kill_ids(&daemon)[0];
    wait_until("the kill to drain", Duration::from_secs(60), || matches!(state_of(&daemon, id).as_str(), "drained" | "recovered")).await;
    assert_eq!(server.client_view(&flag).await["enabled"], false, "SDKs are told the flag is off");
    wait_until("the slice to recover", Duration::from_secs(60), || state_of(&daemon, id) == "recovered").await;
    let summary = traffic.stop().await;
    assert!(summary["by_variant"]["off"].as_u64().unwrap_or(0) > 0, "{summary}");

    let timeline: Vec<String> = daemon.store.timeline(id).unwrap().into_iter().map(|r| r.kind).collect();
    for kind in ["kill_decided", "kill_confirmed", "kill_drained", "kill_recovered"] {
        assert!(timeline.contains(&kind.to_owned()), "{kind} missing from {timeline:?}");
    }
    let drained = daemon.store.timeline(id).unwrap().into_iter().find(|r| r.kind == "kill_drained").unwrap();
    let observed = &drained.after.unwrap()["observed"];
    assert!(observed["share"].as_f64().unwrap() <= 0.01 && observed["exposures"].as_u64().unwrap() >= 20, "{observed}");
    assert_eq!(server.events(&flag).await.iter().filter(|e| *e == "feature-environment-disabled").count(), 1, "one kill in Unleash's own audit log");

    // Restore: back on, with the strategy it had — not an extra 100 % one.
    let (status, body) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({ "reason": "fixed in 1.4.2" })).await;
    assert_eq!(status, 202, "{body}");
    wait_until("the restore", Duration::from_secs(20), || state_of(&daemon, id) == "restored").await;
    let state = server.state(&flag).await;
    assert_eq!(state["enabled"], true);
    assert_eq!(state["strategies"], strategies_before, "restore brings back exactly the saved strategies");

    // A rollout change through the same path, validated and read back.
    let (status, _) =
        api(&daemon, &format!("/v1/flags/{flag}/rollout"), json!({ "actuator": "unleash", "environment": "production", "percent": 150, "reason": "x" })).await;
    assert_eq!(status, 400, "flagguard range-checks what Unleash does not");
    let (status, body) =
        api(&daemon, &format!("/v1/flags/{flag}/rollout"), json!({ "actuator": "unleash", "environment": "production", "percent": 25, "reason": "next step" }))
            .await;
    assert_eq!(status, 202, "{body}");
    let rollout_id = body["action"].as_i64().unwrap();
    wait_until("the rollout change", Duration::from_secs(20), || state_of(&daemon, rollout_id) == "confirmed").await;
    assert_eq!(server.state(&flag).await["strategies"][0]["parameters"]["rollout"], "25");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_in_one_region_disables_only_that_regions_strategy() {
    let server = unleash().await;
    let flag = unique("fg-region");
    server.create(&flag, &[rollout(&flag, 100, Some("eu-west")), rollout(&flag, 100, Some("us-east"))]).await;
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), &rule(&flag, true), &flags);
    config.actuators.insert("unleash".into(), actuator(&server, "FG_TEST_UNLEASH_TOKEN"));
    let daemon = Daemon::start(config, dir).await;
    let traffic = Traffic::start(&daemon, &server, &flag, &["--error-regions", "eu-west"]).await;

    wait_until("a kill action", Duration::from_secs(60), || !kill_ids(&daemon).is_empty()).await;
    let id = kill_ids(&daemon)[0];
    wait_until("the eu-west cohort to drain", Duration::from_secs(60), || matches!(state_of(&daemon, id).as_str(), "drained" | "recovered")).await;
    let summary = traffic.stop().await;
    let action = daemon.store.action(id).unwrap().unwrap();
    assert!(action.target.ends_with("region=eu-west"), "{}", action.target);
    let state = server.state(&flag).await;
    assert_eq!(state["enabled"], true, "the environment stays on for us-east");
    let disabled: BTreeMap<String, bool> = state["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["constraints"][0]["values"][0].as_str().unwrap().to_owned(), s["disabled"].as_bool().unwrap()))
        .collect();
    assert_eq!(disabled, BTreeMap::from([("eu-west".into(), true), ("us-east".into(), false)]));
    assert!(summary["by_region"]["us-east"]["on"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(kill_ids(&daemon).len(), 1, "us-east was healthy: no second kill");

    // Restoring re-enables the strategy; it never turns into a new 100 % strategy.
    let (status, _) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({})).await;
    assert_eq!(status, 202);
    wait_until("the restore", Duration::from_secs(20), || state_of(&daemon, id) == "restored").await;
    let state = server.state(&flag).await;
    assert_eq!(state["strategies"].as_array().unwrap().len(), 2);
    assert!(state["strategies"].as_array().unwrap().iter().all(|s| s["disabled"] == false));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_all_strategy_still_serving_the_cohort_escalates() {
    let server = unleash().await;
    let flag = unique("fg-catchall");
    server.create(&flag, &[rollout(&flag, 100, Some("eu-west")), rollout(&flag, 100, None)]).await;
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    config.actuators.insert("unleash".into(), actuator(&server, "FG_TEST_UNLEASH_TOKEN"));
    let daemon = Daemon::start(config, dir).await;
    let (status, body) = api(
        &daemon,
        &format!("/v1/flags/{flag}/kill"),
        json!({ "actuator": "unleash", "environment": "production", "region": "eu-west", "treatment": ["true"], "reason": "eu-west is on fire" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["action"].as_i64().unwrap();
    wait_until("the escalation", Duration::from_secs(20), || state_of(&daemon, id) == "escalated").await;
    let error = daemon.store.action(id).unwrap().unwrap().last_error.unwrap();
    assert!(error.contains("still serve it"), "{error}");
    wait_until("the escalation notification", Duration::from_secs(10), || {
        flags.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.starts_with("ESCALATION")))
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_escalates_at_once_and_is_never_audited() {
    let server = unleash().await;
    let flag = unique("fg-token");
    server.create(&flag, &[rollout(&flag, 100, None)]).await;
    // SAFETY: only this test reads this variable.
    unsafe { std::env::set_var("FG_TEST_UNLEASH_WRONG", "*:*.not-the-token") };
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    config.actuators.insert("unleash".into(), actuator(&server, "FG_TEST_UNLEASH_WRONG"));
    let daemon = Daemon::start(config, dir).await;
    let (status, body) = api(&daemon, &format!("/v1/flags/{flag}/kill"), json!({ "actuator": "unleash", "environment": "production", "reason": "test" })).await;
    assert_eq!(status, 202, "{body}");
    let id = body["action"].as_i64().unwrap();
    wait_until("the escalation", Duration::from_secs(20), || state_of(&daemon, id) == "escalated").await;
    let action = daemon.store.action(id).unwrap().unwrap();
    assert_eq!(action.attempts, 1, "a 401 is not retried");
    assert!(action.last_error.unwrap().contains("401"));
    assert_eq!(server.state(&flag).await["enabled"], true, "nothing changed in Unleash");
    let (status, body) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({})).await;
    assert_eq!(status, 409, "a kill that never happened has nothing to restore: {body}");
    let all = serde_json::to_string(&daemon.store.audit_log(1000, None, None).unwrap()).unwrap();
    assert!(!all.contains("not-the-token") && !all.contains(&server.admin), "a credential leaked into the audit log");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_re_enabling_a_killed_flag_is_drift_reported_and_never_fought() {
    let server = unleash().await;
    let flag = unique("fg-drift");
    server.create(&flag, &[rollout(&flag, 100, None)]).await;
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    let mut unleash_actuator = actuator(&server, "FG_TEST_UNLEASH_TOKEN");
    if let ActuatorConfig::Unleash(c) = &mut unleash_actuator {
        c.verify.drift_interval = Duration::from_secs(1);
    }
    config.actuators.insert("unleash".into(), unleash_actuator);
    let daemon = Daemon::start(config, dir).await;
    let kill = json!({ "actuator": "unleash", "environment": "production", "treatment": ["true"], "reason": "INC-7" });
    let (status, body) = api(&daemon, &format!("/v1/flags/{flag}/kill"), kill.clone()).await;
    assert_eq!(status, 202, "{body}");
    let id = body["action"].as_i64().unwrap();
    wait_until("the confirmed kill", Duration::from_secs(20), || state_of(&daemon, id) == "confirmed").await;

    // Someone turns it back on in Unleash's UI.
    let (status, _) = server.admin(reqwest::Method::POST, &format!("{}/on", server.env_path(&flag)), None).await;
    assert_eq!(status, 200);
    wait_until("the drift to be noticed", Duration::from_secs(20), || state_of(&daemon, id) == "overridden").await;
    wait_until("the drift notification", Duration::from_secs(10), || {
        flags.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.starts_with("DRIFT")))
    })
    .await;
    // A rule firing again on the same target is suppressed, not sent: the human wins.
    let target = daemon.store.action(id).unwrap().unwrap().target;
    let rule = flagguard::store::AuditEntry {
        at: flagguard::time::Timestamp::now(),
        actor: "rule:checkout".into(),
        kind: "kill_decided".into(),
        ..Default::default()
    };
    let request = daemon.store.action(id).unwrap().unwrap().request;
    let again = daemon
        .store
        .submit(&flagguard::store::NewAction {
            target: &target,
            kind: flagguard::act::ActionKind::Kill,
            request: &request,
            idempotency_key: "k-again",
            slice_key: "rule/x",
            automatic: true,
            audit: &rule,
        })
        .unwrap();
    assert_eq!(again, flagguard::store::Submitted::Suppressed(id));
    assert!(daemon.audit_kinds().contains(&"kill_suppressed".to_owned()));
    assert_eq!(server.state(&flag).await["enabled"], true, "flagguard did not turn it off again");
    assert_eq!(kill_ids(&daemon), vec![id]);
    // Acknowledging re-arms it: the next kill goes out.
    let (status, body) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({ "reason": "ack" })).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("acknowledged")));
    let (_, body) = api(&daemon, &format!("/v1/flags/{flag}/kill"), kill).await;
    let again = body["action"].as_i64().unwrap();
    assert_ne!(again, id);
    wait_until("the new kill", Duration::from_secs(20), || state_of(&daemon, again) == "confirmed").await;
    assert_eq!(server.state(&flag).await["enabled"], false);
    daemon.stop().await;
}

/// Review finding 1 on a real Unleash: the kill's `/off` is applied but its answer is lost
/// (503 from a proxy); the retry finds the environment off. The restore turns it back on (it
/// used to save "off" and do nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unleash_kill_whose_answer_was_lost_still_restores() {
    use crate::contract::{Fault, FaultProxy};
    let server = unleash().await;
    let flag = unique("fg-lost");
    server.create(&flag, &[rollout(&flag, 100, None)]).await;
    // GET (the state saved before the kill), GET (the kill's own read), POST /off: applied, answer lost.
    let proxy = FaultProxy::start(&server.url, vec![Fault::Pass, Fault::Pass, Fault::AppliedThen(503)]).await;
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    let mut unleash_actuator = actuator(&server, "FG_TEST_UNLEASH_TOKEN");
    if let ActuatorConfig::Unleash(c) = &mut unleash_actuator {
        c.url = proxy.url();
    }
    config.actuators.insert("unleash".into(), unleash_actuator);
    let daemon = Daemon::start(config, dir).await;
    let kill = json!({ "actuator": "unleash", "environment": "production", "treatment": ["true"], "reason": "INC-9" });
    let (status, body) = api(&daemon, &format!("/v1/flags/{flag}/kill"), kill).await;
    assert_eq!(status, 202, "{body}");
    let id = body["action"].as_i64().unwrap();
    wait_until("the confirmed kill", Duration::from_secs(20), || state_of(&daemon, id) == "confirmed").await;
    assert_eq!(daemon.store.action(id).unwrap().unwrap().attempts, 2);
    assert_eq!(server.state(&flag).await["enabled"], false);
    let (status, _) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({ "reason": "fixed" })).await;
    assert_eq!(status, 202);
    wait_until("the restore", Duration::from_secs(20), || state_of(&daemon, id) == "restored").await;
    assert_eq!(server.state(&flag).await["enabled"], true, "the restore turned the environment back on");
    daemon.stop().await;
}

/// Review finding 7: a widened kill (a region Unleash has no constraint for, killed as the
/// whole environment) is drift-checked as carried out — a human re-enabling it is seen, and
/// flagguard does not fight them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_re_enabling_a_widened_kill_is_drift_reported() {
    let server = unleash().await;
    let flag = unique("fg-widedrift");
    server.create(&flag, &[rollout(&flag, 100, None)]).await;
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    let mut unleash_actuator = actuator(&server, "FG_TEST_UNLEASH_TOKEN");
    if let ActuatorConfig::Unleash(c) = &mut unleash_actuator {
        c.slices.clear();
        c.verify.drift_interval = Duration::from_secs(1);
    }
    config.actuators.insert("unleash".into(), unleash_actuator);
    let daemon = Daemon::start(config, dir).await;
    // What a `per: [region]` rule with `on_unscoped: widen` decides.
    let request = flagguard::act::ActionRequest {
        environment: Some("production".into()),
        region: Some("eu-west".into()),
        scope: vec![("region".into(), "eu-west".into())],
        treatment: vec!["true".into()],
        rule: "wide".into(),
        widen: true,
        ..flagguard::act::ActionRequest::new(flagguard::act::ActionKind::Kill, "unleash", &flag)
    };
    let audit =
        flagguard::store::AuditEntry { at: flagguard::time::Timestamp::now(), actor: "rule:wide".into(), kind: "kill_decided".into(), ..Default::default() };
    let (target, value) = (request.target(), serde_json::to_value(&request).unwrap());
    let submitted = daemon
        .store
        .submit(&flagguard::store::NewAction {
            target: &target,
            kind: flagguard::act::ActionKind::Kill,
            request: &value,
            idempotency_key: "k-wide",
            slice_key: "wide/x",
            automatic: true,
            audit: &audit,
        })
        .unwrap();
    let flagguard::store::Submitted::New(id) = submitted else { panic!("{submitted:?}") };
    wait_until("the confirmed, widened kill", Duration::from_secs(20), || state_of(&daemon, id) == "confirmed").await;
    assert_eq!(server.state(&flag).await["enabled"], false, "the whole environment");
    let (status, _) = server.admin(reqwest::Method::POST, &format!("{}/on", server.env_path(&flag)), None).await;
    assert_eq!(status, 200);
    wait_until("the drift to be noticed", Duration::from_secs(20), || state_of(&daemon, id) == "overridden").await;
    daemon.stop().await;
}

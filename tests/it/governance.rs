//! Release governance through the real binary and the real Unleash: approvals in a regulated
//! environment with two tokens (proposer ≠ approver, both audited; kills never held), and
//! tokens scoped to flags and environments, refused outside their scope (403) and audited.

use std::time::Duration;

use flagguard::api::auth::Role;
use flagguard::config::TokenConfig;
use serde_json::{Value, json};

use crate::auth::token;
use crate::support::*;
use crate::unleash::{Unleash, actuator, rollout, unique, unleash};

const ALICE: &str = "alice-secret-0123456789";
const BOB: &str = "bob-secret-0123456789abc";
const CAROL: &str = "carol-secret-0123456789a";
const SCOPED: &str = "payments-ci-secret-012345";

/// A daemon on the real Unleash (`staging` is its `development`), with production regulated
/// and these tokens.
async fn daemon(server: &Unleash, tokens: Vec<TokenConfig>) -> Daemon {
    daemon_with_rules(server, tokens, "rules: []\n").await
}

async fn daemon_with_rules(server: &Unleash, tokens: Vec<TokenConfig>, rules: &str) -> Daemon {
    daemon_tuned(server, tokens, rules, |_| {}).await
}

async fn daemon_tuned(server: &Unleash, tokens: Vec<TokenConfig>, rules: &str, tune: impl FnOnce(&mut flagguard::config::ConfigFile)) -> Daemon {
    // SAFETY: every test sets the same values.
    unsafe {
        std::env::set_var("FG_TEST_ALICE", ALICE);
        std::env::set_var("FG_TEST_BOB", BOB);
        std::env::set_var("FG_TEST_CAROL", CAROL);
        std::env::set_var("FG_TEST_SCOPED", SCOPED);
    }
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), rules, &flags);
    config.actuators.clear();
    let flagguard::config::ActuatorConfig::Unleash(mut unleash) = actuator(server, "FG_TEST_UNLEASH_TOKEN") else { unreachable!() };
    unleash.environments.insert("staging".into(), "development".into());
    config.actuators.insert("unleash".into(), flagguard::config::ActuatorConfig::Unleash(unleash));
    config.api.tokens = tokens;
    config.governance.regulated_environments = vec!["production".into()];
    tune(&mut config);
    Daemon::start(config, dir).await
}

/// Runs `flagguard ARGS… --server … --token T --json`: (exit code, JSON answer or stderr).
async fn cli(daemon: &Daemon, token: &str, args: &[&str]) -> (i32, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flagguard"))
        .args(args)
        .args(["--server", &format!("http://{}", daemon.addrs.api), "--token", token, "--json"])
        .output()
        .await
        .unwrap();
    let answer = serde_json::from_slice(out.stdout.trim_ascii()).unwrap_or_else(|_| json!({ "stderr": String::from_utf8_lossy(&out.stderr) }));
    (out.status.code().unwrap_or(-1), answer)
}

async fn call(daemon: &Daemon, token: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new().post(format!("http://{}{path}", daemon.addrs.api)).bearer_auth(token).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

fn audited(daemon: &Daemon, kind: &str) -> Vec<flagguard::store::AuditRecord> {
    daemon.store.audit_log(100, None, Some(kind)).unwrap()
}

fn rollout_of(state: &Value) -> String {
    state["strategies"][0]["parameters"]["rollout"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_to_100_in_production_waits_for_a_second_person_and_kills_are_never_held() {
    let server = unleash().await;
    let flag = unique("fg-approve");
    server.create(&flag, &[rollout(&flag, 50, None)]).await;
    let tokens = vec![
        token("alice", Role::Operator, "${FG_TEST_ALICE}"),
        token("bob", Role::Operator, "${FG_TEST_BOB}"),
        token("carol", Role::Viewer, "${FG_TEST_CAROL}"),
    ];
    let daemon = daemon(&server, tokens).await;

    // Alice promotes to 100 %: a proposal, nothing changed yet.
    let promote = ["flags", "set-rollout", &flag, "--env", "production", "--expect", "50", "--percent", "100", "--idempotency-key", "release-7"];
    let (code, answer) = cli(&daemon, ALICE, &promote).await;
    assert_eq!((code, answer["outcome"].as_str()), (2, Some("pending_approval")), "{answer}");
    let proposal = answer["proposal"].as_i64().unwrap();
    // The pipeline step retried with its key: the same proposal, not a second one.
    let (code, again) = cli(&daemon, ALICE, &promote).await;
    assert_eq!((code, again["proposal"].as_i64()), (2, Some(proposal)), "{again}");
    assert_eq!(rollout_of(&server.state(&flag).await), "50");
    // Not by herself, not by a viewer.
    let (code, answer) = cli(&daemon, ALICE, &["approvals", "approve", &proposal.to_string()]).await;
    assert_eq!(code, 1, "{answer}");
    assert!(answer["stderr"].as_str().unwrap().contains("cannot approve their own proposal"), "{answer}");
    assert!(audited(&daemon, "access_denied").iter().any(|r| r.actor == "token:alice"), "the refusal is audited");
    let (status, _) = call(&daemon, CAROL, &format!("/v1/approvals/{proposal}/approve"), json!({})).await;
    assert_eq!(status, 403, "a viewer cannot approve");
    // Bob sees it and approves: the change goes out, both named.
    let (code, list) = cli(&daemon, BOB, &["approvals", "list"]).await;
    assert_eq!(code, 0);
    assert_eq!(list["proposals"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["proposals"][0]["id"], proposal, "{list}");
    assert_eq!((list["proposals"][0]["proposer"].as_str(), list["proposals"][0]["kind"].as_str()), (Some("token:alice"), Some("rollout")));
    let (code, approved) = cli(&daemon, BOB, &["approvals", "approve", &proposal.to_string(), "--reason", "CAB-1142"]).await;
    assert_eq!(code, 0, "{approved}");
    let action = approved["action"].as_i64().unwrap();
    wait_until("the approved rollout", Duration::from_secs(20), || crate::unleash::state_of(&daemon, action) == "confirmed").await;
    assert_eq!(rollout_of(&server.state(&flag).await), "100");
    let record = &audited(&daemon, "proposal_approved")[0];
    assert_eq!(record.actor, "token:bob");
    let after = record.after.clone().unwrap();
    assert_eq!((after["proposer"].as_str(), after["approver"].as_str(), after["reason"].as_str()), (Some("token:alice"), Some("token:bob"), Some("CAB-1142")));
    let decided = daemon.store.timeline(action).unwrap().into_iter().find(|r| r.kind == "rollout_decided").unwrap();
    assert_eq!(decided.actor, "token:alice approved by token:bob");
    // Approving twice does not change it twice.
    let (code, _) = cli(&daemon, BOB, &["approvals", "approve", &proposal.to_string()]).await;
    assert_eq!(code, 1, "decided already");

    // A kill in the regulated environment is never held.
    let (status, body) =
        call(&daemon, ALICE, &format!("/v1/flags/{flag}/kill"), json!({ "environment": "production", "treatment": ["true"], "reason": "incident" })).await;
    assert_eq!(status, 202, "{body}");
    let kill = body["action"].as_i64().expect("a kill is an action, not a proposal");
    wait_until("the kill", Duration::from_secs(20), || crate::unleash::state_of(&daemon, kill) == "confirmed").await;
    // Turning it back on is a proposal; rejected, the flag stays off.
    let (status, body) = call(&daemon, BOB, &format!("/v1/actions/{kill}/restore"), json!({ "reason": "fixed" })).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("pending_approval")), "{body}");
    let restore = body["proposal"].as_i64().unwrap();
    let (code, _) = cli(&daemon, ALICE, &["approvals", "reject", &restore.to_string(), "--reason", "not yet"]).await;
    assert_eq!(code, 0);
    assert_eq!(server.state(&flag).await["enabled"], false);
    assert_eq!(crate::unleash::state_of(&daemon, kill), "confirmed");
    assert_eq!(audited(&daemon, "proposal_rejected")[0].actor, "token:alice");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_changes_its_flags_in_staging_and_nothing_else() {
    let server = unleash().await;
    let flag = unique("fg-scope");
    let other = unique("fg-other");
    for f in [&flag, &other] {
        server.create(f, &[rollout(f, 5, None)]).await;
        let development = server.env_path(f).replace("/environments/production", "/environments/development");
        let (status, _) = server.admin(reqwest::Method::POST, &format!("{development}/strategies"), Some(rollout(f, 5, None))).await;
        assert_eq!(status, 200);
        let (status, _) = server.admin(reqwest::Method::POST, &format!("{development}/on"), None).await;
        assert_eq!(status, 200);
    }
    let scoped =
        TokenConfig { flags: vec!["fg-scope-*".into()], environments: vec!["staging".into()], ..token("payments-ci", Role::Operator, "${FG_TEST_SCOPED}") };
    let daemon = daemon(&server, vec![scoped, token("alice", Role::Operator, "${FG_TEST_ALICE}")]).await;
    let set = |f: &str, env: &str| ["flags".to_owned(), "set-rollout".into(), f.to_owned(), "--env".into(), env.to_owned(), "--percent".into(), "25".into()];
    let args = set(&flag, "staging");
    let (code, answer) = cli(&daemon, SCOPED, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "its own flag in staging: {answer}");
    for (f, env) in [(&flag, "production"), (&other, "staging")] {
        let (status, body) = call(&daemon, SCOPED, &format!("/v1/flags/{f}/rollout"), json!({ "environment": env, "percent": 25, "reason": "x" })).await;
        assert_eq!(status, 403, "{f} in {env}: {body}");
        assert!(body["error"].as_str().unwrap().contains("outside the token's"), "{body}");
    }
    let (status, _) = call(&daemon, SCOPED, &format!("/v1/flags/{flag}/kill"), json!({ "environment": "production", "reason": "x" })).await;
    assert_eq!(status, 403, "nor kill outside its scope");
    let (status, _) = call(&daemon, SCOPED, "/v1/controls/pause", json!({ "reason": "x" })).await;
    assert_eq!(status, 403, "the operator controls reach every flag");
    let denied = audited(&daemon, "access_denied");
    assert_eq!(denied.len(), 4, "{denied:?}");
    assert!(denied.iter().all(|r| r.actor == "token:payments-ci"));
    assert_eq!(server.state(&other).await["strategies"][0]["parameters"]["rollout"], "5");
    // An unscoped operator still may.
    let (status, _) = call(&daemon, ALICE, &format!("/v1/flags/{other}/rollout"), json!({ "environment": "staging", "percent": 25, "reason": "x" })).await;
    assert_eq!(status, 202);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plans_step_to_100_in_production_waits_for_approval_and_takes_it_once_approved() {
    let server = unleash().await;
    let flag = unique("fg-plan-approve");
    server.create(&flag, &[rollout(&flag, 5, None)]).await;
    let plan = format!(
        "rules: []\nrollouts:\n  - name: {flag}-plan\n    flag: {flag}\n    actuator: unleash\n    environment: production\n    treatment: \"true\"\n    steps: [100]\n"
    );
    let tokens = vec![token("alice", Role::Operator, "${FG_TEST_ALICE}")];
    let daemon = daemon_with_rules(&server, tokens, &plan).await;
    let key = format!("{flag}-plan");
    let instance = || daemon.store.plan_state(&key).unwrap().unwrap_or(Value::Null);
    wait_until("the plan to wait for approval", Duration::from_secs(20), || instance()["awaiting_proposal"].is_i64()).await;
    assert_eq!(instance()["status"], "running", "it keeps guarding while it waits");
    let reason = instance()["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("needs a second person's approval: proposal"), "{reason}");
    assert_eq!(rollout_of(&server.state(&flag).await), "5", "not at 100 % before the approval");
    let (code, list) = cli(&daemon, ALICE, &["approvals", "list"]).await;
    assert_eq!(code, 0);
    let proposal = list["proposals"][0]["id"].as_i64().unwrap();
    assert_eq!((list["proposals"][0]["kind"].as_str(), list["proposals"][0]["proposer"].as_str()), (Some("resume"), Some(format!("rollout:{key}").as_str())));
    let (code, answer) = cli(&daemon, ALICE, &["approvals", "approve", &proposal.to_string()]).await;
    assert_eq!(code, 0, "{answer}");
    wait_until("the plan to complete at 100 %", Duration::from_secs(30), || instance()["status"] == "completed").await;
    assert_eq!(rollout_of(&server.state(&flag).await), "100");
    assert_eq!(daemon.store.proposals(None, flagguard::time::Timestamp::now()).unwrap().len(), 1, "one proposal, not one per tick");
    daemon.stop().await;
}

/// Polls `GET /v1/drift` until `check` holds.
async fn drift_until(daemon: &Daemon, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = get_as(daemon, ALICE, "/v1/drift").await;
        if check(&body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_as(daemon: &Daemon, token: &str, path: &str) -> Value {
    reqwest::Client::new().get(format!("http://{}{path}", daemon.addrs.api)).bearer_auth(token).send().await.unwrap().json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_regulated_flag_from_the_manifests_is_held_until_a_second_person_approves() {
    let server = unleash().await;
    let flag = unique("fg-remove");
    server.create(&flag, &[rollout(&flag, 5, None)]).await;
    let manifests = tempfile::tempdir().unwrap();
    let file = manifests.path().join("flags.yaml");
    std::fs::write(&file, format!("flags:\n  - key: {flag}\n    owner: {{ team: payments }}\n    lifecycle: release\n    environments: [ {{ name: production, enabled: true, rollout: 5 }} ]\n")).unwrap();
    let tokens = vec![token("alice", Role::Operator, "${FG_TEST_ALICE}")];
    let dir = manifests.path().to_owned();
    let daemon = daemon_tuned(&server, tokens, "rules: []\n", move |c| {
        c.manifests.dir = Some(dir);
        c.manifests.drift_interval = Duration::from_secs(1);
    })
    .await;
    let watched = |body: &Value| body["flags"].as_array().is_some_and(|f| f.iter().any(|f| f["flag"] == flag.as_str()));
    drift_until(&daemon, "the flag watched", |b| watched(b)).await;
    // Removed in Git: held, proposed, still watched, and a compliance finding.
    std::fs::write(&file, "flags: []\n").unwrap();
    let body = drift_until(&daemon, "the removal held", |b| b["held"].as_array().is_some_and(|h| !h.is_empty())).await;
    assert!(watched(&body), "a held removal keeps the flag watched: {body}");
    assert_eq!((body["held"][0]["change"].as_str(), body["held"][0]["state"].as_str()), (Some("removed"), Some("pending")));
    let proposal = body["held"][0]["proposal"].as_i64().unwrap();
    let compliance = get_as(&daemon, ALICE, "/v1/compliance").await;
    assert!(
        compliance["findings"].as_array().unwrap().iter().any(|f| f["problem"] == "unapproved_change" && f["detail"].as_str().unwrap().starts_with("removed")),
        "{compliance}"
    );
    // Approved by a second person: the watch accepts the removal.
    let (code, answer) = cli(&daemon, ALICE, &["approvals", "approve", &proposal.to_string()]).await;
    assert_eq!(code, 0, "{answer}");
    let body = drift_until(&daemon, "the removal accepted", |b| !watched(b) && b["held"].as_array().is_some_and(|h| h.is_empty())).await;
    assert_eq!(body["flags"], json!([]));
    daemon.stop().await;
}

//! The flag CLI for pipelines (`flagguard flags get`, `flags set-rollout`) as real processes
//! against a daemon whose actuator is the real Unleash: compare-and-set between racing
//! pipelines, idempotency keys, and reads through the daemon and without it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;
use crate::unleash::{Unleash, actuator, rollout, unique, unleash};

/// A daemon whose only actuator is the real Unleash (no rules: the CLI is the only actor).
async fn daemon(server: &Unleash) -> Daemon {
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    config.actuators.clear();
    config.actuators.insert("unleash".into(), actuator(server, "FG_TEST_UNLEASH_TOKEN"));
    Daemon::start(config, dir).await
}

/// Runs `flagguard flags …` against the daemon; returns (exit code, stdout as JSON).
async fn cli(daemon: &Daemon, args: &[&str]) -> (i32, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flagguard"))
        .arg("flags")
        .args(args)
        .args(["--server", &format!("http://{}", daemon.addrs.api), "--json"])
        .output()
        .await
        .unwrap();
    let answer = serde_json::from_slice(out.stdout.trim_ascii()).unwrap_or_else(|_| json!({ "stderr": String::from_utf8_lossy(&out.stderr) }));
    (out.status.code().unwrap_or(-1), answer)
}

fn set_rollout<'a>(flag: &'a str, percent: &'a str, expect: &'a str) -> Vec<&'a str> {
    vec!["set-rollout", flag, "--env", "production", "--percent", percent, "--expect", expect]
}

async fn rollout_in_unleash(server: &Unleash, flag: &str) -> String {
    server.state(flag).await["strategies"][0]["parameters"]["rollout"].as_str().unwrap_or("").to_owned()
}

async fn strategy_updates(server: &Unleash, flag: &str) -> usize {
    server.events(flag).await.iter().filter(|e| *e == "feature-strategy-update").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_racing_to_promote_end_with_one_promotion_and_one_refusal() {
    let server = unleash().await;
    let flag = unique("fg-cas");
    server.create(&flag, &[rollout(&flag, 5, None)]).await;
    let daemon = daemon(&server).await;
    let updates_before = strategy_updates(&server, &flag).await;
    // Each round both pipelines promote from the same step; the second starts 0–40 ms later
    // (varied), so it meets the first still pending, or already done.
    let steps = ["5", "10", "25", "50", "75", "100"];
    let (mut refused_pending, mut refused_cas) = (0, 0);
    for (round, pair) in steps.windows(2).enumerate() {
        let (from, to) = (pair[0], pair[1]);
        let delay = Duration::from_millis((round as u64 * 17) % 41);
        let args = set_rollout(&flag, to, from);
        let first = cli(&daemon, &args);
        let second = async {
            tokio::time::sleep(delay).await;
            cli(&daemon, &args).await
        };
        let ((a, a_answer), (b, b_answer)) = tokio::join!(first, second);
        let mut codes = [a, b];
        codes.sort();
        assert_eq!(codes, [0, 1], "round {round} ({from} → {to} %, second {delay:?} later): one promotion, one refusal: {a_answer} {b_answer}");
        let refusal = if a == 1 { &a_answer } else { &b_answer };
        match refusal["outcome"].as_str() {
            Some("refused") if refusal["message"].as_str().unwrap_or("").contains("not the expected") => refused_cas += 1,
            Some("refused") => refused_pending += 1,
            other => panic!("round {round}: a refusal must say why: {other:?} {refusal}"),
        }
        assert_eq!(rollout_in_unleash(&server, &flag).await, to, "round {round}");
    }
    println!("racing promotions: {} rounds, refused while pending {refused_pending}, refused by compare-and-set {refused_cas}", steps.len() - 1);
    assert_eq!(strategy_updates(&server, &flag).await - updates_before, steps.len() - 1, "each promotion changed Unleash once");
    // Every attempt is in the audit log, the refusals included.
    let refused = daemon.store.actions(100).unwrap().into_iter().filter(|a| a.state == flagguard::action::ActionState::Refused).count();
    assert_eq!(refused, refused_cas, "a compare-and-set refusal is an action that ended refused");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_twice_changes_the_flag_once_and_a_key_reused_elsewhere_is_refused() {
    let server = unleash().await;
    let flag = unique("fg-key");
    server.create(&flag, &[rollout(&flag, 5, None)]).await;
    let daemon = daemon(&server).await;
    let before = strategy_updates(&server, &flag).await;
    let mut args = set_rollout(&flag, "25", "5");
    args.extend(["--idempotency-key", "deploy-4711-step-2"]);
    let (code, first) = cli(&daemon, &args).await;
    assert_eq!(code, 0, "{first}");
    // The pipeline step is retried (its runner lost the answer): the same action, no change.
    let (code, again) = cli(&daemon, &args).await;
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["action"], first["action"], "{again}");
    assert_eq!(again["existing"], true);
    assert_eq!(strategy_updates(&server, &flag).await - before, 1, "changed once");
    // The seed-style step (health check 200 → +5 %), retried with its key: +5 once. The retry
    // reads 30 % and would ask 30 → 35; the key names the step, whose change stands.
    let step = ["set-rollout", flag.as_str(), "--env", "production", "--by", "5", "--idempotency-key", "deploy-4711-step-3"];
    let (code, first) = cli(&daemon, &step).await;
    assert_eq!(code, 0, "{first}");
    assert_eq!(rollout_in_unleash(&server, &flag).await, "30");
    let (code, again) = cli(&daemon, &step).await;
    assert_eq!((code, &again["action"]), (0, &first["action"]), "{again}");
    assert_eq!(rollout_in_unleash(&server, &flag).await, "30", "+5 once");
    assert_eq!(strategy_updates(&server, &flag).await - before, 2);
    // The key on another flag is a mistake in the pipeline: refused.
    let other_flag = unique("fg-key-other");
    server.create(&other_flag, &[rollout(&other_flag, 5, None)]).await;
    let mut other = set_rollout(&other_flag, "10", "5");
    other.extend(["--idempotency-key", "deploy-4711-step-2"]);
    let (code, answer) = cli(&daemon, &other).await;
    assert_eq!(code, 1, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("another change"), "{answer}");
    assert_eq!(rollout_in_unleash(&server, &other_flag).await, "5");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_get_shows_the_flag_system_and_what_flagguard_holds_with_or_without_the_daemon() {
    let server = unleash().await;
    let flag = unique("fg-get");
    let mut strategy = rollout(&flag, 5, None);
    strategy["variants"] = json!([
        { "name": "blue", "weight": 500, "weightType": "variable", "stickiness": "default" },
        { "name": "green", "weight": 500, "weightType": "variable", "stickiness": "default" }
    ]);
    server.create(&flag, &[strategy]).await;
    let daemon = daemon(&server).await;
    let (code, state) = cli(&daemon, &["get", &flag, "--env", "production"]).await;
    assert_eq!(code, 0, "{state}");
    assert_eq!(state["flag_system"]["enabled"], true, "{state}");
    assert_eq!(state["flag_system"]["rollout"], 5.0);
    assert_eq!(state["flag_system"]["variants"], json!([{ "name": "blue", "percent": 50.0 }, { "name": "green", "percent": 50.0 }]));
    assert_eq!(state["killed_by_flagguard"], json!([]));

    // A kill through the daemon: the flag reads off, held by flagguard's action.
    let (status, body) =
        api(&daemon, &format!("/v1/flags/{flag}/kill"), json!({ "environment": "production", "treatment": ["true"], "reason": "incident 88" })).await;
    assert_eq!(status, 202, "{body}");
    let kill = body["action"].as_i64().unwrap();
    wait_until("the kill", Duration::from_secs(20), || crate::unleash::state_of(&daemon, kill) == "confirmed").await;
    let (code, state) = cli(&daemon, &["get", &flag, "--env", "production"]).await;
    assert_eq!(code, 0, "{state}");
    assert_eq!(state["flag_system"]["enabled"], false);
    assert_eq!(state["killed_by_flagguard"][0]["action"], kill, "{state}");
    // A rollout change while killed is refused, with the kill named.
    let (code, answer) = cli(&daemon, &set_rollout(&flag, "25", "5")).await;
    assert_eq!((code, answer["outcome"].as_str()), (1, Some("refused")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains(&format!("action {kill}")), "{answer}");

    // Without the daemon: the configuration's actuator, read-only.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flagguard.toml");
    std::fs::write(&config, format!("[actuators.unleash]\ntype = \"unleash\"\nurl = \"{}\"\ntoken = \"${{FG_TEST_UNLEASH_TOKEN}}\"\n", server.url)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flagguard"))
        .args(["flags", "get", &flag, "--env", "production", "--config", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("enabled: off") && text.contains("rollout: 5 %") && text.contains("killed by flagguard: unknown"), "{text}");
    daemon.stop().await;
}

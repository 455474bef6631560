//! Flag manifests against the real Unleash, in two environments (`staging` is Unleash's
//! `development`): `drift` through the daemon and without it, a human's edit found and
//! reconciled by `apply` (compare-and-set, audited with the manifest), a flagguard kill reported
//! as expected drift and never undone, the promotion order, and a flag system that cannot be
//! reached.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use flagguard::config::ActuatorConfig;
use serde_json::{Value, json};

use crate::support::*;
use crate::unleash::{Unleash, actuator, rollout, unique, unleash};

fn staging_is_development(server: &Unleash) -> ActuatorConfig {
    let ActuatorConfig::Unleash(mut config) = actuator(server, "FG_TEST_UNLEASH_TOKEN") else { unreachable!() };
    config.environments = BTreeMap::from([("staging".into(), "development".into())]);
    ActuatorConfig::Unleash(config)
}

async fn daemon(server: &Unleash) -> Daemon {
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    config.actuators.clear();
    config.actuators.insert("unleash".into(), staging_is_development(server));
    Daemon::start(config, dir).await
}

fn development(server: &Unleash, flag: &str) -> String {
    server.env_path(flag).replace("/environments/production", "/environments/development")
}

/// `flag` at 100 % in development (staging) and `production` % in production.
async fn create(server: &Unleash, flag: &str, production: u32) {
    server.create(flag, &[rollout(flag, production, None)]).await;
    let (status, body) = server.admin(reqwest::Method::POST, &format!("{}/strategies", development(server, flag)), Some(rollout(flag, 100, None))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.admin(reqwest::Method::POST, &format!("{}/on", development(server, flag)), None).await;
    assert_eq!(status, 200);
}

/// Sets the rollout of the environment's first strategy as a human would, in Unleash.
async fn human_sets(server: &Unleash, env_path: &str, percent: u32) {
    let state = server.admin(reqwest::Method::GET, env_path, None).await.1;
    let id = state["strategies"][0]["id"].as_str().unwrap().to_owned();
    let patch = json!([{ "op": "replace", "path": "/parameters/rollout", "value": percent.to_string() }]);
    let (status, body) = server.admin(reqwest::Method::PATCH, &format!("{env_path}/strategies/{id}"), Some(patch)).await;
    assert_eq!(status, 200, "{body}");
}

fn manifest(dir: &Path, flag: &str, production: u32) {
    std::fs::write(
        dir.join("flags.yaml"),
        format!(
            "flags:\n  - key: {flag}\n    owner: {{ team: payments, contact: pay@example.com }}\n    lifecycle: release\n    expires: 2027-03-31\n    environments:\n      - {{ name: staging, enabled: true, rollout: 100 }}\n      - {{ name: production, enabled: true, rollout: {production} }}\n"
        ),
    )
    .unwrap();
}

/// Runs `flagguard ARGS… --json`; returns (exit code, the JSON answer).
async fn run(args: &[&str]) -> (i32, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flagguard")).args(args).arg("--json").output().await.unwrap();
    let answer = serde_json::from_slice(out.stdout.trim_ascii()).unwrap_or_else(|_| json!({ "stderr": String::from_utf8_lossy(&out.stderr) }));
    (out.status.code().unwrap_or(-1), answer)
}

fn statuses(answer: &Value) -> Vec<(String, String)> {
    answer["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["environment"].as_str().unwrap().to_owned(), f["status"].as_str().or(f["outcome"].as_str()).unwrap().to_owned()))
        .collect()
}

fn pair(env: &str, status: &str) -> (String, String) {
    (env.to_owned(), status.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_finds_a_human_edit_apply_reconciles_it_and_a_kill_is_expected_drift_never_undone() {
    let server = unleash().await;
    let flag = unique("fg-manifest");
    create(&server, &flag, 5).await;
    let daemon = daemon(&server).await;
    let api_url = format!("http://{}", daemon.addrs.api);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("flags");
    std::fs::create_dir_all(&manifests).unwrap();
    manifest(&manifests, &flag, 5);
    let m = manifests.to_str().unwrap();

    let (code, answer) = run(&["drift", m, "--server", &api_url]).await;
    assert_eq!(code, 0, "{answer}");
    assert_eq!(statuses(&answer), [pair("staging", "in_sync"), pair("production", "in_sync")]);

    // A human widens production to 25 % in Unleash's UI.
    human_sets(&server, &server.env_path(&flag), 25).await;
    let (code, answer) = run(&["drift", m, "--server", &api_url]).await;
    assert_eq!(code, 1, "{answer}");
    assert_eq!(statuses(&answer), [pair("staging", "in_sync"), pair("production", "drifted")]);
    assert_eq!(answer["flags"][1]["findings"], json!([{ "field": "rollout", "want": 5.0, "have": 25.0 }]));
    // Without the daemon, from the configuration's actuator: the same drift.
    let config = dir.path().join("flagguard.toml");
    std::fs::write(
        &config,
        format!(
            "[actuators.unleash]\ntype = \"unleash\"\nurl = \"{}\"\ntoken = \"${{FG_TEST_UNLEASH_TOKEN}}\"\nenvironments = {{ staging = \"development\" }}\n",
            server.url
        ),
    )
    .unwrap();
    let (code, answer) = run(&["drift", m, "--config", config.to_str().unwrap(), "--env", "production"]).await;
    assert_eq!((code, statuses(&answer)), (1, vec![pair("production", "drifted")]), "{answer}");

    // apply sets it back, compare-and-set from the 25 % it read, through the outbox.
    let (code, answer) = run(&["apply", m, "--server", &api_url]).await;
    assert_eq!(code, 0, "{answer}");
    assert_eq!(statuses(&answer), [pair("staging", "in_sync"), pair("production", "applied")]);
    assert_eq!(server.state(&flag).await["strategies"][0]["parameters"]["rollout"], "5");
    let action = daemon.store.action(answer["flags"][1]["action"].as_i64().unwrap()).unwrap().unwrap();
    assert_eq!((action.request["expect_rollout"].as_f64(), action.request["percent"].as_f64()), (Some(25.0), Some(5.0)));
    assert!(action.request["reason"].as_str().unwrap().contains("flags.yaml"), "{}", action.request);
    let (code, _) = run(&["drift", m, "--server", &api_url]).await;
    assert_eq!(code, 0, "in sync after apply");

    // A flagguard kill: expected drift, reported as such; apply refuses to undo it.
    let (status, body) =
        api(&daemon, &format!("/v1/flags/{flag}/kill"), json!({ "environment": "production", "treatment": ["true"], "reason": "incident" })).await;
    assert_eq!(status, 202, "{body}");
    let kill = body["action"].as_i64().unwrap();
    wait_until("the kill", Duration::from_secs(20), || crate::unleash::state_of(&daemon, kill) == "confirmed").await;
    let (code, answer) = run(&["drift", m, "--server", &api_url]).await;
    assert_eq!((code, statuses(&answer)[1].clone()), (1, pair("production", "killed")), "{answer}");
    assert_eq!(answer["flags"][1]["kills"][0]["action"], kill);
    let events = server.events(&flag).await.len();
    let (code, answer) = run(&["apply", m, "--server", &api_url]).await;
    assert_eq!((code, statuses(&answer)[1].clone()), (1, pair("production", "refused")), "{answer}");
    assert!(answer["flags"][1]["message"].as_str().unwrap().contains(&format!("undo flagguard's kill (action {kill})")), "{answer}");
    assert_eq!(server.events(&flag).await.len(), events, "nothing changed in Unleash");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_widens_production_only_once_staging_is_in_sync_and_an_unreachable_flag_system_cannot_tell() {
    let server = unleash().await;
    let flag = unique("fg-promote");
    create(&server, &flag, 5).await;
    let daemon = daemon(&server).await;
    let api_url = format!("http://{}", daemon.addrs.api);
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().to_str().unwrap();
    // The manifest promotes production to 25 %; but a human turned staging off.
    manifest(dir.path(), &flag, 25);
    let (status, _) = server.admin(reqwest::Method::POST, &format!("{}/off", development(&server, &flag)), None).await;
    assert_eq!(status, 200);
    let (code, answer) = run(&["apply", m, "--server", &api_url]).await;
    assert_eq!(code, 1, "{answer}");
    assert_eq!(statuses(&answer), [pair("staging", "not_applicable"), pair("production", "held")]);
    assert_eq!(server.state(&flag).await["strategies"][0]["parameters"]["rollout"], "5", "production was not widened");
    // Staging back on: production is widened.
    let (status, _) = server.admin(reqwest::Method::POST, &format!("{}/on", development(&server, &flag)), None).await;
    assert_eq!(status, 200);
    let (code, answer) = run(&["apply", m, "--server", &api_url]).await;
    assert_eq!((code, statuses(&answer)), (0, vec![pair("staging", "in_sync"), pair("production", "applied")]), "{answer}");
    assert_eq!(server.state(&flag).await["strategies"][0]["parameters"]["rollout"], "25");
    daemon.stop().await;

    // A flag system that does not answer: cannot tell (2), not "in sync".
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = dir.path().join("unreachable.toml");
    std::fs::write(&config, format!("[actuators.unleash]\ntype = \"unleash\"\nurl = \"http://{closed}\"\ntoken = \"${{FG_TEST_UNLEASH_TOKEN}}\"\n")).unwrap();
    let (code, answer) = run(&["drift", m, "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{answer}");
    assert_eq!(statuses(&answer)[1], pair("production", "cannot_tell"));
    // A manifest with an error: 3, with file:line:field.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "flags:\n  - key: x\n    lifecycle: release\n    environments: [ { name: production, enabled: true, rollout: 150 } ]\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flagguard")).args(["drift", m, "--config", config.to_str().unwrap()]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml:4: flags[0].environments[0].rollout: 150 is not a percentage"), "{out:?}");
}

/// `GET path` on the daemon's API.
async fn get(daemon: &Daemon, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{}{path}", daemon.addrs.api)).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Polls `GET /v1/drift` until production's status is `want`.
async fn drift_becomes(daemon: &Daemon, want: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(daemon, "/v1/drift").await;
        assert_eq!(status, 200, "{body}");
        if body["flags"].as_array().is_some_and(|f| f.iter().any(|f| f["environment"] == "production" && f["status"] == want)) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "production never became {want}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_watches_the_manifests_audits_and_notifies_a_human_edit_with_its_owner() {
    let server = unleash().await;
    let flag = unique("fg-watch");
    create(&server, &flag, 5).await;
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    manifest(&manifests, &flag, 5);
    std::fs::write(
        manifests.join("orphan.yaml"),
        "flags:\n  - key: fg-orphan\n    lifecycle: experiment\n    expires: 2020-01-31\n    environments: [ { name: staging, enabled: false } ]\n",
    )
    .unwrap();
    // The manifests are a Git work tree: who changed them is recorded.
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&manifests)
            .args(["-c", "user.name=Jane Doe", "-c", "user.email=jane@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "checkout-v2 at 5 %"]);
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    config.governance.regulated_environments = vec!["production".into()];
    config.actuators.clear();
    config.actuators.insert("unleash".into(), staging_is_development(&server));
    config.manifests.dir = Some(manifests.clone());
    config.manifests.drift_interval = Duration::from_secs(1);
    let daemon = Daemon::start(config, dir).await;

    let body = drift_becomes(&daemon, "in_sync").await;
    assert_eq!(body["owners"][&flag], json!({ "team": "payments", "contact": "pay@example.com" }));
    let loaded = daemon.store.audit_log(10, None, Some("manifests_loaded")).unwrap();
    assert!(loaded[0].actor.starts_with("git:") && loaded[0].actor.ends_with(" by Jane Doe"), "{:?}", loaded[0]);
    human_sets(&server, &server.env_path(&flag), 25).await;
    let body = drift_becomes(&daemon, "drifted").await;
    let production = body["flags"].as_array().unwrap().iter().find(|f| f["environment"] == "production").unwrap().clone();
    assert_eq!(production["findings"], json!([{ "field": "rollout", "want": 5.0, "have": 25.0 }]));
    // Audited with the owner, and the on-call told (a human's edit, not flagguard's kill).
    let filter = flagguard::store::AuditFilter { limit: 100, kind: Some("manifest_drift".into()), flag: Some(flag.clone()), ..Default::default() };
    let audited = || daemon.store.audit_query(&filter).unwrap_or_default();
    wait_until("the drift to be audited", Duration::from_secs(10), || {
        audited().iter().any(|r| r.after.as_ref().is_some_and(|a| a["status"]["status"] == "drifted"))
    })
    .await;
    let record = audited().into_iter().find(|r| r.after.as_ref().is_some_and(|a| a["status"]["status"] == "drifted")).unwrap();
    assert_eq!(record.after.unwrap()["owner"]["team"], "payments");
    wait_until("the notification", Duration::from_secs(10), || {
        flags.calls().iter().any(|c| {
            let text = c.body.to_string();
            c.path == "/notify" && text.contains("drift:") && text.contains(&flag) && text.contains("owner payments")
        })
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.addrs.api)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("flagguard_manifest_drift{{flag=\"{flag}\",environment=\"production\",status=\"drifted\"}} 1")), "{metrics}");
    // The compliance report: production is regulated, so the edit was a change without approval;
    // the orphan flag has no owner and is past its expiry.
    let (status, report) = get(&daemon, "/v1/compliance").await;
    assert_eq!(status, 200);
    let found: Vec<(String, String)> =
        report["findings"].as_array().unwrap().iter().map(|f| (f["problem"].as_str().unwrap().to_owned(), f["flag"].as_str().unwrap().to_owned())).collect();
    for expected in [("unapproved_change", flag.as_str()), ("no_owner", "fg-orphan"), ("expired", "fg-orphan")] {
        assert!(found.iter().any(|(p, f)| p == expected.0 && f == expected.1), "{expected:?} not in {report}");
    }
    assert!(!found.iter().any(|(p, f)| p == "no_owner" && *f == flag), "{report}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flagguard"))
        .args(["flags", "report", "--server", &format!("http://{}", daemon.addrs.api)])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "findings fail the job: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("unapproved_change"));
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.addrs.api)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("flagguard_compliance_findings{problem=\"unapproved_change\"} 1"), "{metrics}");

    // An invalid edit of the manifests keeps the last valid set, and says why.
    std::fs::write(manifests.join("broken.yaml"), "flags:\n  - key: y\n    lifecycle: nope\n    environments: []\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&daemon, "/v1/drift").await;
        if body["errors"].as_array().is_some_and(|e| e.iter().any(|e| e.as_str().unwrap().contains("broken.yaml:3"))) {
            assert_eq!(body["flags"].as_array().unwrap().len(), 3, "the last valid set is still watched: {body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Put back by a human: in sync again, audited.
    human_sets(&server, &server.env_path(&flag), 5).await;
    drift_becomes(&daemon, "in_sync").await;
    daemon.stop().await;
}

//! The audit log as an operator reads it: filters and paging, JSON-lines export, rule reloads
//! with a diff, configuration changes at start, and an online backup by the real binary.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const RULE: &str = "rules:\n  - name: guard\n    flag: checkout\n    treatment: \"on\"\n    control: \"off\"\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n    min_samples: 30\n    action: { kill: flags }\n    mode: dry_run\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_export_diffs_and_backup() {
    let server = FlagServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    let mut config = Daemon::config(dir.path(), RULE, &server);
    config.data_dir = data.path().to_path_buf();
    let daemon = Daemon::start(config.clone(), dir).await;

    api(&daemon, "/v1/controls/pause", json!({ "reason": "failover", "actor": "bob" })).await;
    api(&daemon, "/v1/controls/resume", json!({ "actor": "bob" })).await;
    let (status, _) =
        api(&daemon, "/v1/flags/checkout/kill", json!({ "actuator": "flags", "environment": "production", "reason": "INC-1", "actor": "carol" })).await;
    assert_eq!(status, 202);
    std::fs::write(rules_dir.join("test.yaml"), RULE.replace("above: 0.1", "above: 0.2")).unwrap();
    assert_eq!(api(&daemon, "/v1/rules/reload", json!({})).await.0, 200);

    let http = flagguard::app::http_client(Duration::from_secs(5), None).unwrap();
    let base = format!("http://{}", daemon.addrs.api);
    let get = |q: &str| {
        let http = http.clone();
        let url = format!("{base}/v1/audit?{q}");
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let bob = get("actor=bob").await;
    let kinds: Vec<&str> = bob["audit"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["automation_resumed", "automation_paused"], "newest first, only bob's");
    let checkout = get("flag=checkout&kind=kill_decided").await;
    assert_eq!(checkout["audit"][0]["actor"], "carol");
    let page = get("limit=1").await;
    let older = get(&format!("limit=1&before={}", page["next_before"])).await;
    assert!(older["audit"][0]["id"].as_i64().unwrap() < page["audit"][0]["id"].as_i64().unwrap(), "paging goes back in time");
    assert_eq!(http.get(format!("{base}/v1/audit?since=yesterday")).send().await.unwrap().status().as_u16(), 400);

    // The reload names what changed in the rule.
    let reload = get("kind=rules_reloaded").await;
    let changed = &reload["audit"][0]["evidence"]["diff"]["changed"]["guard"];
    assert_eq!(changed[0]["path"], "conditions", "{reload}");
    assert!(changed[0]["after"].to_string().contains("0.2"), "{changed}");

    // Export: every record as one JSON line, oldest first, across several pages (1000 each).
    wait_until("carol's kill to settle", Duration::from_secs(10), || daemon.store.actions(10).unwrap().iter().all(|a| a.state != "pending")).await;
    for i in 0..2100 {
        daemon
            .store
            .audit(&flagguard::store::AuditEntry {
                at: flagguard::time::Timestamp(1_000 + i),
                actor: "filler".into(),
                kind: "filler".into(),
                ..Default::default()
            })
            .unwrap();
    }
    let export = http.get(format!("{base}/v1/audit/export")).send().await.unwrap();
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let text = export.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert_eq!(lines[0]["kind"], "started");
    assert!(lines.windows(2).all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));
    let total: i64 = rusqlite::Connection::open(data.path().join("flagguard.db")).unwrap().query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0)).unwrap();
    assert!(total > 2100);
    assert_eq!(lines.len() as i64, total, "every record, across pages");
    let filtered = http.get(format!("{base}/v1/audit/export?actor=filler")).send().await.unwrap().text().await.unwrap();
    assert_eq!(filtered.lines().count(), 2100);

    // Online backup by the real binary while the daemon runs.
    let config_file = data.path().join("backup.toml");
    std::fs::write(&config_file, format!("data_dir = {:?}\n", data.path().display().to_string())).unwrap();
    let out = data.path().join("copy.db");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_flagguard")).args(["backup", "--config"]).arg(&config_file).arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let copy = rusqlite::Connection::open(&out).unwrap();
    let kills: i64 = copy.query_row("SELECT COUNT(*) FROM audit WHERE kind = 'kill_decided'", [], |r| r.get(0)).unwrap();
    assert_eq!(kills, 1);
    daemon.stop().await;

    // A restart with a changed configuration audits what changed.
    let dir = tempfile::tempdir().unwrap();
    let mut changed_config = Daemon::config(dir.path(), RULE, &server);
    changed_config.data_dir = data.path().to_path_buf();
    changed_config.act.max_attempts = 3;
    let daemon = Daemon::start(changed_config, dir).await;
    wait_until("the second start's record", Duration::from_secs(10), || daemon.store.audit_log(10, None, Some("started")).unwrap().len() == 2).await;
    let started = daemon.store.audit_log(1, None, Some("started")).unwrap();
    let diff = &started[0].after.as_ref().unwrap()["config_changed"];
    assert!(diff.as_array().unwrap().iter().any(|d| d["path"] == "act.max_attempts" && d["before"] == 8 && d["after"] == 3), "{diff}");
    daemon.stop().await;
}

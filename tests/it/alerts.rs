//! Alert webhooks end to end: an Alertmanager group and a signed generic alert become audited,
//! confirmed kills at a local flag server; re-deliveries are processed once; bad credentials,
//! bad payloads and disabled sources are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use flagguard::act::webhook::WebhookConfig;
use flagguard::config::{ActuatorConfig, AlertSourceConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::support::*;

const MAPPING: &str = r#"rules: []
alerts:
  - name: checkout-burn
    source: alertmanager
    match: { alertname: FlagCohortErrorBudgetBurn, killswitch: "true" }
    kill: { flag: $feature_flag, via: flags, environment: $flag_environment, cohort: $cohort }
    mode: enforce
"#;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

async fn daemon(server: &FlagServer, alerts: BTreeMap<String, AlertSourceConfig>) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), MAPPING, server);
    config.actuators.insert(
        "flags".into(),
        ActuatorConfig::Webhook(WebhookConfig {
            body: Some(r#"{"enabled": false, "environment": "{environment}", "cohort": "{cohort}", "evidence": "{evidence}"}"#.into()),
            read_back: server.read_back(),
            ..WebhookConfig::to(&server.url())
        }),
    );
    config.alerts = alerts;
    Daemon::start(config, dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alertmanager_group_kills_the_firing_cohort_once() {
    let server = FlagServer::start().await;
    let daemon = daemon(
        &server,
        BTreeMap::from([("alertmanager".into(), AlertSourceConfig { bearer_token: Some("test-bearer-token".into()), ..AlertSourceConfig::default() })]),
    )
    .await;
    let url = format!("http://{}/v1/alerts/alertmanager", daemon.addrs.api);
    let http = reqwest::Client::new();
    let post = |token: Option<&str>| {
        let mut request = http.post(&url).header("content-type", "application/json").body(fixture("alertmanager-v4.json"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send()
    };

    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some("wrong")).await.unwrap().status(), 401);
    assert!(server.calls().is_empty() && daemon.store.actions(10).unwrap().is_empty(), "nothing acted on");

    let first = post(Some("test-bearer-token")).await.unwrap();
    assert_eq!(first.status(), 200);
    let report: serde_json::Value = first.json().await.unwrap();
    assert_eq!(report["actions"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["actions"][0]["flag"], "checkout-v2");
    assert_eq!(report["not_firing"], 1, "the resolved alert of the group is recorded, never acted on: {report}");

    wait_until("the kill call", Duration::from_secs(10), || !server.kill_calls().is_empty()).await;
    let call = &server.kill_calls()[0];
    assert_eq!(call.path, "/v1/flags/checkout-v2");
    assert_eq!(call.body["cohort"], "beta-users", "only the firing cohort");
    assert_eq!(call.body["environment"], "production");
    assert_eq!(call.body["evidence"]["alert"]["source"], "alertmanager");
    assert!(call.body["evidence"]["digest"].as_str().unwrap().starts_with("sha256:"));
    wait_until("the confirmed kill", Duration::from_secs(10), || daemon.audit_kinds().contains(&"kill_confirmed".to_owned())).await;
    let confirmed = &daemon.store.audit_log(10, None, Some("kill_confirmed")).unwrap()[0];
    assert_eq!(confirmed.actor, "rule:alert:checkout-burn");

    wait_until("the notification", Duration::from_secs(10), || {
        server
            .calls()
            .iter()
            .any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.starts_with("flagguard is killing checkout-v2 (cohort=beta-users)")))
    })
    .await;

    // Alertmanager re-sends the group every repeat_interval: recorded, not acted on again.
    let again: serde_json::Value = post(Some("test-bearer-token")).await.unwrap().json().await.unwrap();
    assert_eq!(again["duplicates"], 2, "{again}");
    assert_eq!(daemon.store.actions(100).unwrap().iter().filter(|a| a.kind == "kill").count(), 1);
    let kinds = daemon.audit_kinds();
    assert_eq!(kinds.iter().filter(|k| *k == "alert_received").count(), 2);
    assert_eq!(kinds.iter().filter(|k| *k == "alert_duplicate").count(), 2);

    let metrics = http.get(format!("http://{}/metrics", daemon.addrs.api)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("flagguard_alert_auth_failures_total{source=\"alertmanager\"} 2"), "{metrics}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_generic_alert_may_name_its_flag_directly() {
    let server = FlagServer::start().await;
    let generic = AlertSourceConfig {
        hmac_secrets: vec!["s3cret-0123456789abcdef".into()],
        allow_direct: true,
        direct_actuator: Some("flags".into()),
        direct_mode: flagguard::rules::Mode::Enforce,
        ..AlertSourceConfig::default()
    };
    let daemon = daemon(&server, BTreeMap::from([("generic".into(), generic)])).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/alerts/generic", daemon.addrs.api);
    let sign = |body: &[u8]| {
        let ts = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret-0123456789abcdef").unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(body);
        (ts, format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
    };
    let send = |body: Vec<u8>| {
        let (ts, sig) = sign(&body);
        http.post(&url).header("content-type", "application/json").header("x-flagguard-timestamp", ts).header("x-flagguard-signature", sig).body(body).send()
    };

    // The fixture's own signature is for 2026-11-25T11:42:10Z: outside the replay window now.
    let stale = http
        .post(&url)
        .header("x-flagguard-timestamp", "1795606930")
        .header("x-flagguard-signature", "sha256=5521dcb8f49577c5c230b9ddb79a7500305bd70ea79096292be5caf19ff2937d")
        .body(fixture("generic-v1.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);

    let v2 = String::from_utf8(fixture("generic-v1.json")).unwrap().replace("flagguard.alert/v1", "flagguard.alert/v2");
    assert_eq!(send(v2.into_bytes()).await.unwrap().status(), 400);
    assert_eq!(send(b"{not json".to_vec()).await.unwrap().status(), 400);

    let ok = send(fixture("generic-v1.json")).await.unwrap();
    assert_eq!(ok.status(), 200);
    wait_until("the kill call", Duration::from_secs(10), || !server.kill_calls().is_empty()).await;
    assert_eq!(server.kill_calls()[0].body["cohort"], "beta-users");
    // The same delivery id again (a sender retry): processed once.
    let again: serde_json::Value = send(fixture("generic-v1.json")).await.unwrap().json().await.unwrap();
    assert_eq!(again["duplicates"], 1);

    // A resolved alert never restores anything.
    let resolved = String::from_utf8(fixture("generic-v1.json")).unwrap().replace("\"status\": \"firing\"", "\"status\": \"resolved\"");
    let report: serde_json::Value = send(resolved.into_bytes()).await.unwrap().json().await.unwrap();
    assert_eq!((report["not_firing"].as_u64(), report["actions"].as_array().map(Vec::len)), (Some(1), Some(0)), "{report}");

    // Sources without configuration are not served.
    let off = http.post(format!("http://{}/v1/alerts/datadog", daemon.addrs.api)).body("{}").send().await.unwrap();
    assert_eq!(off.status(), 404);
    assert_eq!(http.post(format!("http://{}/v1/alerts/nagios", daemon.addrs.api)).body("{}").send().await.unwrap().status(), 404);
    daemon.stop().await;
}

/// Posts an Alertmanager payload with the bearer token the tests configure.
async fn post_alertmanager(daemon: &Daemon, body: &serde_json::Value) -> serde_json::Value {
    let url = format!("http://{}/v1/alerts/alertmanager", daemon.addrs.api);
    let reply = reqwest::Client::new().post(&url).header("authorization", "Bearer test-bearer-token").json(body).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    reply.json().await.unwrap()
}

fn alertmanager_sources() -> BTreeMap<String, AlertSourceConfig> {
    BTreeMap::from([("alertmanager".into(), AlertSourceConfig { bearer_token: Some("test-bearer-token".into()), ..AlertSourceConfig::default() })])
}

fn decided(daemon: &Daemon) -> usize {
    daemon.audit_kinds().iter().filter(|k| *k == "kill_decided").count()
}

/// Review finding 3(a): an alert that fires again in a new episode after the flag was
/// restored is a new incident, not a duplicate (the key was the fingerprint alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_firing_again_after_a_restore_kills_again() {
    let server = FlagServer::start().await;
    let daemon = daemon(&server, alertmanager_sources()).await;
    let mut payload: serde_json::Value = serde_json::from_slice(&fixture("alertmanager-v4.json")).unwrap();
    let first = post_alertmanager(&daemon, &payload).await;
    let kill = first["actions"][0]["action_id"].as_i64().unwrap();
    wait_until("the confirmed kill", Duration::from_secs(20), || daemon.store.action(kill).unwrap().unwrap().state == "confirmed").await;
    payload["alerts"][0]["status"] = "resolved".into();
    post_alertmanager(&daemon, &payload).await;
    let (status, body) = api(&daemon, &format!("/v1/actions/{kill}/restore"), serde_json::json!({ "reason": "resolved" })).await;
    assert_eq!(status, 202, "{body}");
    // An hour later the regression is back: same labels (fingerprint), a new episode.
    payload["alerts"][0]["status"] = "firing".into();
    payload["alerts"][0]["startsAt"] = "2026-11-25T12:42:07.123Z".into();
    let again = post_alertmanager(&daemon, &payload).await;
    assert_eq!(again["actions"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(decided(&daemon), 2);
    // A re-send of that episode is still a duplicate.
    assert_eq!(post_alertmanager(&daemon, &payload).await["duplicates"], 2);
    daemon.stop().await;
}

/// Review finding 3(b): an alert first seen while unmapped acts once its mapping exists — the
/// unmapped delivery does not make the next re-send a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_unmapped_at_first_acts_once_the_mapping_is_fixed() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules/test.yaml");
    let mut config = Daemon::config(dir.path(), &MAPPING.replace("FlagCohortErrorBudgetBurn", "TypoInTheMapping"), &server);
    config.alerts = alertmanager_sources();
    let daemon = Daemon::start(config, dir).await;
    let payload: serde_json::Value = serde_json::from_slice(&fixture("alertmanager-v4.json")).unwrap();
    let first = post_alertmanager(&daemon, &payload).await;
    assert_eq!(first["unmapped"].as_array().unwrap().len(), 1, "{first}");
    std::fs::write(&rules, MAPPING).unwrap();
    let (status, body) = api(&daemon, "/v1/rules/reload", serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    let resent = post_alertmanager(&daemon, &payload).await;
    assert_eq!(resent["actions"].as_array().unwrap().len(), 1, "{resent}");
    assert_eq!(decided(&daemon), 1);
    daemon.stop().await;
}

/// Review finding 3(c): custom payloads without any id used to share the empty key, so every
/// alert of the source after the first was a duplicate for 24 h.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_without_an_id_do_not_collide() {
    let server = FlagServer::start().await;
    let datadog = AlertSourceConfig {
        bearer_token: Some("test-bearer-token".into()),
        allow_direct: true,
        direct_actuator: Some("flags".into()),
        direct_mode: flagguard::rules::Mode::Enforce,
        ..AlertSourceConfig::default()
    };
    let daemon = daemon(&server, BTreeMap::from([("datadog".into(), datadog)])).await;
    let url = format!("http://{}/v1/alerts/datadog", daemon.addrs.api);
    let mut payload: serde_json::Value = serde_json::from_slice(&fixture("datadog-custom-with-tags.json")).unwrap();
    for key in ["id", "alert_cycle_key", "aggreg_key"] {
        payload.as_object_mut().unwrap().remove(key);
    }
    let mut actions = 0;
    for flag in ["checkout-v2", "search-v3"] {
        let mut body = payload.clone();
        for field in ["tags", "alert_scope", "title"] {
            body[field] = body[field].as_str().unwrap().replace("checkout-v2", flag).into();
        }
        let reply: serde_json::Value =
            reqwest::Client::new().post(&url).header("authorization", "Bearer test-bearer-token").json(&body).send().await.unwrap().json().await.unwrap();
        assert_eq!(reply["duplicates"], 0, "{reply}");
        actions += reply["actions"].as_array().unwrap().len();
    }
    assert_eq!(actions, 2);
    daemon.stop().await;
}

//! Alert webhooks end to end: an Alertmanager group and a signed generic alert become audited,
//! confirmed kills at a local flag server; re-deliveries are processed once; bad credentials,
//! bad payloads and disabled sources are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use flagguard::config::{ActuatorConfig, AlertSourceConfig, WebhookConfig};
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

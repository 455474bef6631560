//! Paging: notification routes by severity, flag and owning team (from the flag manifests),
//! to PagerDuty Events API v2 and Opsgenie's Alert API. Both are SaaS, so they are tested
//! against local servers that implement their documented contracts (required fields,
//! authentication, 202 answers, dedup by key or alias, resolve/close) — not the real services.
//! A kill that fails pages once per incident however often it fails, and the page is resolved
//! when a kill of that flag is finally confirmed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as AxPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use flagguard::act::notify::{RouteConfig, Severity, SinkKind};
use serde_json::{Value, json};

use crate::support::*;

const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";
const GENIE_KEY: &str = "genie-0123456789";

/// PagerDuty Events API v2 (`POST /v2/enqueue`): incidents by dedup key.
#[derive(Clone, Default)]
struct PagerDuty {
    events: Arc<Mutex<Vec<Value>>>,
    /// dedup key → open.
    incidents: Arc<Mutex<BTreeMap<String, bool>>>,
}

async fn enqueue(State(pd): State<PagerDuty>, body: String) -> Response {
    let Ok(event) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "status": "invalid event", "message": "Event object is invalid", "errors": ["not JSON"] })))
            .into_response();
    };
    let mut errors = Vec::new();
    if event["routing_key"] != ROUTING_KEY {
        errors.push("'routing_key' is invalid");
    }
    let action = event["event_action"].as_str().unwrap_or("").to_owned();
    let action = action.as_str();
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        errors.push("'event_action' is invalid");
    }
    let key = event["dedup_key"].as_str().unwrap_or("").to_owned();
    if action != "trigger" && key.is_empty() {
        errors.push("'dedup_key' is required for acknowledge and resolve");
    }
    if action == "trigger" {
        let p = &event["payload"];
        if p["summary"].as_str().is_none_or(|s| s.is_empty() || s.len() > 1024) || p["source"].as_str().is_none() {
            errors.push("'payload.summary' and 'payload.source' are required");
        }
        if !["critical", "error", "warning", "info"].contains(&p["severity"].as_str().unwrap_or("")) {
            errors.push("'payload.severity' is invalid");
        }
    }
    if !errors.is_empty() {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "status": "invalid event", "message": "Event object is invalid", "errors": errors })))
            .into_response();
    }
    pd.events.lock().unwrap().push(event);
    pd.incidents.lock().unwrap().insert(key.clone(), action != "resolve");
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "success", "message": "Event processed", "dedup_key": key }))).into_response()
}

/// Opsgenie Alert API: alerts by alias, `GenieKey` authentication.
#[derive(Clone, Default)]
struct Opsgenie {
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    /// alias → (open, occurrences).
    alerts: Arc<Mutex<BTreeMap<String, (bool, u32)>>>,
}

fn genie(headers: &HeaderMap) -> Option<Response> {
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("GenieKey {GENIE_KEY}")))
        .then(|| (StatusCode::UNAUTHORIZED, axum::Json(json!({ "message": "Could not authenticate", "took": 0.0, "requestId": "0" }))).into_response())
}

async fn create_alert(State(og): State<Opsgenie>, headers: HeaderMap, body: String) -> Response {
    if let Some(denied) = genie(&headers) {
        return denied;
    }
    let alert: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if alert["message"].as_str().is_none_or(|m| m.is_empty() || m.chars().count() > 130) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({ "message": "Message can not be empty or longer than 130 characters", "took": 0.0, "requestId": "1" })),
        )
            .into_response();
    }
    let alias = alert["alias"].as_str().unwrap_or_default().to_owned();
    og.requests.lock().unwrap().push(("create".into(), alert));
    let mut alerts = og.alerts.lock().unwrap();
    let entry = alerts.entry(alias).or_insert((true, 0));
    *entry = (true, entry.1 + 1);
    (StatusCode::ACCEPTED, axum::Json(json!({ "result": "Request will be processed", "took": 0.1, "requestId": "2" }))).into_response()
}

async fn close_alert(
    State(og): State<Opsgenie>,
    AxPath(id): AxPath<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(denied) = genie(&headers) {
        return denied;
    }
    if q.get("identifierType").map(String::as_str) != Some("alias") {
        return (StatusCode::NOT_FOUND, axum::Json(json!({ "message": "Alert does not exist", "took": 0.0, "requestId": "3" }))).into_response();
    }
    og.requests.lock().unwrap().push((format!("close {id}"), serde_json::from_str(&body).unwrap_or(Value::Null)));
    if let Some(alert) = og.alerts.lock().unwrap().get_mut(&id) {
        alert.0 = false;
    }
    (StatusCode::ACCEPTED, axum::Json(json!({ "result": "Request will be processed", "took": 0.1, "requestId": "4" }))).into_response()
}

async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn route(name: &str, kind: SinkKind, url: String) -> RouteConfig {
    RouteConfig { name: name.into(), kind, severity: Severity::Page, teams: vec![], flags: vec![], url: Some(url), routing_key: None, api_key: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_kill_pages_the_owning_team_once_and_the_confirmed_kill_resolves_it() {
    // SAFETY: only this test reads these variables.
    unsafe {
        std::env::set_var("FG_TEST_PD_KEY", ROUTING_KEY);
        std::env::set_var("FG_TEST_GENIE_KEY", GENIE_KEY);
    }
    let pd = PagerDuty::default();
    let pd_addr = serve(axum::Router::new().route("/v2/enqueue", post(enqueue)).with_state(pd.clone())).await;
    let og = Opsgenie::default();
    let og_addr =
        serve(axum::Router::new().route("/v2/alerts", post(create_alert)).route("/v2/alerts/{id}/close", post(close_alert)).with_state(og.clone())).await;
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("f.yaml"),
        "flags:\n  - key: checkout-v2\n    owner: { team: payments }\n    lifecycle: release\n    environments: [ { name: production, enabled: true } ]\n",
    )
    .unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    config.act.max_attempts = 1;
    config.manifests.dir = Some(manifests);
    config.manifests.drift_interval = Duration::from_secs(1);
    config.act.routes = vec![
        RouteConfig {
            teams: vec!["payments".into()],
            routing_key: Some("${FG_TEST_PD_KEY}".into()),
            ..route("payments-pager", SinkKind::Pagerduty, format!("http://{pd_addr}"))
        },
        RouteConfig {
            flags: vec!["checkout-*".into()],
            api_key: Some("${FG_TEST_GENIE_KEY}".into()),
            ..route("checkout-genie", SinkKind::Opsgenie, format!("http://{og_addr}"))
        },
    ];
    let daemon = Daemon::start(config, dir).await;
    let owners_known = async {
        loop {
            let body: Value = reqwest::get(format!("http://{}/v1/drift", daemon.addrs.api)).await.unwrap().json().await.unwrap();
            if body["owners"]["checkout-v2"]["team"] == "payments" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), owners_known).await.expect("the manifests' owners are loaded");

    // The flag system refuses the kill, twice: one incident, paged (triggered again, same key).
    flags.status.store(400, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2 {
        let id = crate::contract::manual_kill(&daemon, "flags", "checkout-v2", None).await;
        let row = crate::contract::settled(&daemon, id).await;
        assert_eq!(row.state, "escalated");
    }
    // Another team's flag failing pages neither route (teams and flags filters).
    let other = crate::contract::manual_kill(&daemon, "flags", "search-v3", None).await;
    assert_eq!(crate::contract::settled(&daemon, other).await.state, "escalated");
    wait_until("two triggers", Duration::from_secs(20), || pd.events.lock().unwrap().len() >= 2).await;
    wait_until("two Opsgenie alerts", Duration::from_secs(20), || og.requests.lock().unwrap().len() >= 2).await;
    let key = "flagguard/checkout-v2/production";
    assert_eq!(pd.incidents.lock().unwrap().clone(), BTreeMap::from([(key.to_owned(), true)]), "one open incident");
    assert_eq!(og.alerts.lock().unwrap().clone(), BTreeMap::from([(key.to_owned(), (true, 2))]), "one alert, seen twice");
    let trigger = pd.events.lock().unwrap()[0].clone();
    assert_eq!((trigger["event_action"].as_str(), trigger["payload"]["severity"].as_str()), (Some("trigger"), Some("critical")));
    assert!(trigger["payload"]["summary"].as_str().unwrap().starts_with("ESCALATION"), "{trigger}");

    // The flag system takes the kill now: confirmed, and the page is resolved.
    flags.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let id = crate::contract::manual_kill(&daemon, "flags", "checkout-v2", None).await;
    assert_eq!(crate::contract::settled(&daemon, id).await.state, "confirmed");
    wait_until("the resolve", Duration::from_secs(20), || pd.incidents.lock().unwrap().get(key) == Some(&false)).await;
    wait_until("the close", Duration::from_secs(20), || og.alerts.lock().unwrap().get(key).is_some_and(|a| !a.0)).await;
    let events = pd.events.lock().unwrap().clone();
    assert_eq!(events.iter().map(|e| e["event_action"].as_str().unwrap()).collect::<Vec<_>>(), ["trigger", "trigger", "resolve"], "only pages: {events:?}");
    // The default chat route (act.notify_url) got everything, warnings included.
    let chat: Vec<String> = flags.calls().into_iter().filter(|c| c.path == "/notify").map(|c| c.body["text"].as_str().unwrap_or("").to_owned()).collect();
    assert!(chat.iter().any(|t| t.starts_with("flagguard killed checkout-v2")), "{chat:?}");
    assert!(chat.iter().filter(|t| t.starts_with("ESCALATION")).count() >= 3, "{chat:?}");
    daemon.stop().await;
}

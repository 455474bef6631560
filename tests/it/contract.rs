//! Contract tests: LaunchDarkly and Flagsmith are SaaS, so their actuators are tested against
//! local servers that implement the documented requests, responses and error codes
//! (`shared/reference/killswitch-apis.md` §4, §5) — not against the real services. Also: fault
//! injection (5xx, 429 + Retry-After, timeouts, slow answers, connection refused) in front of
//! every networked actuator, and a stale SDK cache that keeps serving a killed variant.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as AxPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use flagguard::act::flagsmith::FlagsmithApi;
use flagguard::act::flagsmith::FlagsmithConfig;
use flagguard::act::launchdarkly::LaunchDarklyConfig;
use flagguard::act::webhook::WebhookConfig;
use flagguard::config::{ActuatorConfig, VerifyConfig};
use serde_json::{Value, json};

use crate::support::*;

/// One request a stub received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn seen(log: &Log, method: &str, path: &str, headers: &HeaderMap, body: &str) {
    log.lock().unwrap().push(Seen {
        method: method.into(),
        path: path.into(),
        headers: headers.clone(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    });
}

async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

// ------------------------------------------------------------------------------ LaunchDarkly

pub const LD_TOKEN: &str = "api-ld-test-token";

/// LaunchDarkly's documented contract for one flag per key: environments `production` (normal)
/// and `approval` (changes need an approval request: 405).
#[derive(Clone)]
pub struct LdStub {
    pub addr: std::net::SocketAddr,
    pub log: Log,
    flags: Arc<Mutex<HashMap<String, Value>>>,
    /// Answer this many PATCHes with 409 first.
    pub conflicts: Arc<AtomicU32>,
    /// Approval requests created (`POST …/approval-requests`), by id.
    pub approval_requests: Arc<Mutex<Vec<Value>>>,
}

impl LdStub {
    pub async fn start() -> LdStub {
        let stub = LdStub {
            addr: "0.0.0.0:0".parse().unwrap(),
            log: Log::default(),
            flags: Default::default(),
            conflicts: Default::default(),
            approval_requests: Default::default(),
        };
        let app = axum::Router::new()
            .route("/api/v2/flags/{project}/{flag}", get(ld_get).patch(ld_patch))
            .route("/api/v2/projects/{project}/flags/{flag}/environments/{env}/approval-requests", post(ld_approval_request))
            .with_state(stub.clone());
        LdStub { addr: serve(app).await, ..stub }
    }

    pub fn create(&self, key: &str) {
        let env = |on: bool| json!({ "on": on, "fallthrough": { "variation": 0 }, "offVariation": 1 });
        let flag = json!({ "key": key, "_version": 1, "variations": [{ "_id": "v-true", "value": true }, { "_id": "v-false", "value": false }],
                           "environments": { "production": env(true), "approval": env(true) } });
        self.flags.lock().unwrap().insert(key.into(), flag);
    }

    pub fn on(&self, key: &str, env: &str) -> bool {
        self.flags.lock().unwrap()[key]["environments"][env]["on"].as_bool().unwrap()
    }

    pub fn flag(&self, key: &str) -> Value {
        self.flags.lock().unwrap()[key].clone()
    }

    pub fn config(&self) -> LaunchDarklyConfig {
        // SAFETY: every test sets the same value.
        unsafe { std::env::set_var("FG_TEST_LD_TOKEN", LD_TOKEN) };
        LaunchDarklyConfig {
            url: format!("http://{}", self.addr),
            token: "${FG_TEST_LD_TOKEN}".into(),
            project: "default".into(),
            environments: BTreeMap::new(),
            default_environment: None,
            verify: VerifyConfig::default(),
        }
    }
}

fn ld_auth(headers: &HeaderMap) -> Option<Response> {
    // The bare access token: no scheme.
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(LD_TOKEN))
        .then(|| (StatusCode::UNAUTHORIZED, axum::Json(json!({ "code": "unauthorized", "message": "Invalid access token" }))).into_response())
}

async fn ld_get(
    State(stub): State<LdStub>,
    AxPath((_, key)): AxPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    seen(&stub.log, "GET", &format!("/api/v2/flags/default/{key}"), &headers, "");
    if let Some(denied) = ld_auth(&headers) {
        return denied;
    }
    let Some(mut flag) = stub.flags.lock().unwrap().get(&key).cloned() else { return StatusCode::NOT_FOUND.into_response() };
    if let Some(env) = q.get("env") {
        let only = flag["environments"][env.as_str()].clone();
        flag["environments"] = json!({ env.clone(): only });
    }
    axum::Json(flag).into_response()
}

async fn ld_patch(State(stub): State<LdStub>, AxPath((_, key)): AxPath<(String, String)>, headers: HeaderMap, body: String) -> Response {
    seen(&stub.log, "PATCH", &format!("/api/v2/flags/default/{key}"), &headers, &body);
    if let Some(denied) = ld_auth(&headers) {
        return denied;
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.contains("domain-model=launchdarkly.semanticpatch") {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "code": "invalid_request", "message": "expected a JSON Patch array" }))).into_response();
    }
    if stub.conflicts.load(Ordering::SeqCst) > 0 {
        stub.conflicts.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::CONFLICT, axum::Json(json!({ "code": "conflict", "message": "concurrent modification" }))).into_response();
    }
    let Ok(patch) = serde_json::from_str::<Value>(&body) else { return StatusCode::BAD_REQUEST.into_response() };
    let env = patch["environmentKey"].as_str().unwrap_or("").to_owned();
    if env == "approval" {
        return (StatusCode::METHOD_NOT_ALLOWED, axum::Json(json!({ "code": "method_not_allowed", "message": "approval is required" }))).into_response();
    }
    let mut flags = stub.flags.lock().unwrap();
    let Some(flag) = flags.get_mut(&key) else { return StatusCode::NOT_FOUND.into_response() };
    for instruction in patch["instructions"].as_array().cloned().unwrap_or_default() {
        match instruction["kind"].as_str() {
            Some("turnFlagOff") => flag["environments"][env.as_str()]["on"] = json!(false),
            Some("turnFlagOn") => flag["environments"][env.as_str()]["on"] = json!(true),
            Some("updateFallthroughVariationOrRollout") => {
                let weights = instruction["rolloutWeights"].as_object().cloned().unwrap_or_default();
                if weights.values().filter_map(Value::as_i64).sum::<i64>() != 100_000 {
                    return (StatusCode::BAD_REQUEST, axum::Json(json!({ "message": "weights must sum to 100000" }))).into_response();
                }
                let ids: Vec<String> = flag["variations"].as_array().unwrap().iter().map(|v| v["_id"].as_str().unwrap().to_owned()).collect();
                let variations: Vec<Value> =
                    ids.iter().enumerate().map(|(i, id)| json!({ "variation": i, "weight": weights.get(id).cloned().unwrap_or(json!(0)) })).collect();
                flag["environments"][env.as_str()]["fallthrough"] = json!({ "rollout": { "variations": variations } });
            }
            _ => return (StatusCode::BAD_REQUEST, axum::Json(json!({ "message": "unknown instruction" }))).into_response(),
        }
    }
    flag["_version"] = json!(flag["_version"].as_i64().unwrap_or(0) + 1);
    axum::Json(flag.clone()).into_response()
}

/// `POST /api/v2/projects/{p}/flags/{f}/environments/{e}/approval-requests`: `description`
/// (required, ≤ 5000) and `instructions` (semantic patch, required) → 201 with `_id`.
async fn ld_approval_request(
    State(stub): State<LdStub>,
    AxPath((_, key, env)): AxPath<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    seen(&stub.log, "POST", &format!("/api/v2/projects/default/flags/{key}/environments/{env}/approval-requests"), &headers, &body);
    if let Some(denied) = ld_auth(&headers) {
        return denied;
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else { return StatusCode::BAD_REQUEST.into_response() };
    if request["description"].as_str().is_none_or(|d| d.is_empty() || d.len() > 5000) || request["instructions"].as_array().is_none_or(|i| i.is_empty()) {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "code": "invalid_request", "message": "description and instructions are required" })))
            .into_response();
    }
    let mut all = stub.approval_requests.lock().unwrap();
    let id = format!("ar-{}", all.len() + 1);
    let created = json!({ "_id": id, "status": "pending", "reviewStatus": "pending", "description": request["description"], "instructions": request["instructions"], "environmentKey": env, "flagKey": key });
    all.push(created.clone());
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

// --------------------------------------------------------------------------------- Flagsmith

pub const FLAGSMITH_KEY: &str = "org-api-key";

type Shared<K, V> = Arc<Mutex<HashMap<K, V>>>;

/// Flagsmith's documented contract: environment `env-v1` (classic feature states) and `env-v2`
/// (Feature Versioning v2: the classic PATCH answers 400).
#[derive(Clone)]
pub struct FlagsmithStub {
    pub addr: std::net::SocketAddr,
    pub log: Log,
    /// (environment key, feature) → (feature-state id, enabled); segment overrides by segment id.
    states: Shared<(String, String), (u64, bool)>,
    pub segments: Shared<(String, String, u64), bool>,
}

impl FlagsmithStub {
    pub async fn start() -> FlagsmithStub {
        let stub = FlagsmithStub { addr: "0.0.0.0:0".parse().unwrap(), log: Log::default(), states: Default::default(), segments: Default::default() };
        let app = axum::Router::new()
            .route("/api/v1/environments/{env}/featurestates/", get(fs_list))
            .route("/api/v1/environments/{env}/featurestates/{id}/", patch(fs_patch))
            .route("/api/experiments/environments/{env}/update-flag-v1/", post(fs_update))
            .with_state(stub.clone());
        FlagsmithStub { addr: serve(app).await, ..stub }
    }

    pub fn create(&self, feature: &str) {
        let mut states = self.states.lock().unwrap();
        let id = states.len() as u64 + 100;
        for env in ["env-v1", "env-v2"] {
            states.insert((env.into(), feature.into()), (id, true));
        }
    }

    pub fn enabled(&self, env: &str, feature: &str) -> bool {
        self.states.lock().unwrap()[&(env.to_owned(), feature.to_owned())].1
    }

    pub fn config(&self, env_key: &str, api: FlagsmithApi) -> FlagsmithConfig {
        // SAFETY: every test sets the same value.
        unsafe { std::env::set_var("FG_TEST_FLAGSMITH_KEY", FLAGSMITH_KEY) };
        FlagsmithConfig {
            url: format!("http://{}", self.addr),
            token: "${FG_TEST_FLAGSMITH_KEY}".into(),
            environments: BTreeMap::from([("production".into(), env_key.into())]),
            default_environment: None,
            api,
            segments: BTreeMap::from([("region=eu-west".into(), 456)]),
            verify: VerifyConfig::default(),
        }
    }
}

fn fs_auth(headers: &HeaderMap) -> Option<Response> {
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Api-Key {FLAGSMITH_KEY}")))
        .then(|| (StatusCode::UNAUTHORIZED, axum::Json(json!({ "detail": "Invalid API key" }))).into_response())
}

async fn fs_list(State(stub): State<FlagsmithStub>, AxPath(env): AxPath<String>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    seen(&stub.log, "GET", &format!("/api/v1/environments/{env}/featurestates/"), &headers, "");
    if let Some(denied) = fs_auth(&headers) {
        return denied;
    }
    let name = q.get("feature_name").cloned().unwrap_or_default();
    let mut results: Vec<Value> = stub
        .states
        .lock()
        .unwrap()
        .get(&(env.clone(), name.clone()))
        .map(|(id, enabled)| json!({ "id": id, "enabled": enabled, "feature_state_value": null, "feature_segment": null, "identity": null }))
        .into_iter()
        .collect();
    // Segment overrides are feature states too (they take precedence over the default).
    for ((e, f, segment), enabled) in stub.segments.lock().unwrap().iter() {
        if *e == env && *f == name {
            results.push(
                json!({ "id": 9000 + segment, "enabled": enabled, "feature_state_value": null, "feature_segment": { "segment": segment }, "identity": null }),
            );
        }
    }
    axum::Json(json!({ "count": results.len(), "next": null, "previous": null, "results": results })).into_response()
}

async fn fs_patch(State(stub): State<FlagsmithStub>, AxPath((env, id)): AxPath<(String, u64)>, headers: HeaderMap, body: String) -> Response {
    seen(&stub.log, "PATCH", &format!("/api/v1/environments/{env}/featurestates/{id}/"), &headers, &body);
    if let Some(denied) = fs_auth(&headers) {
        return denied;
    }
    if env == "env-v2" {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "detail": "Feature versioning v2 is enabled for this environment" }))).into_response();
    }
    let enabled = serde_json::from_str::<Value>(&body).ok().and_then(|b| b["enabled"].as_bool());
    let mut states = stub.states.lock().unwrap();
    match (states.iter_mut().find(|((e, _), (i, _))| *e == env && *i == id), enabled) {
        (Some((_, state)), Some(enabled)) => {
            state.1 = enabled;
            axum::Json(json!({ "id": id, "enabled": enabled })).into_response()
        }
        (None, _) => StatusCode::NOT_FOUND.into_response(),
        (_, None) => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn fs_update(State(stub): State<FlagsmithStub>, AxPath(env): AxPath<String>, headers: HeaderMap, body: String) -> Response {
    seen(&stub.log, "POST", &format!("/api/experiments/environments/{env}/update-flag-v1/"), &headers, &body);
    if let Some(denied) = fs_auth(&headers) {
        return denied;
    }
    let Ok(b) = serde_json::from_str::<Value>(&body) else { return StatusCode::BAD_REQUEST.into_response() };
    let (Some(name), Some(enabled), Some(_)) = (b["feature"]["name"].as_str(), b["enabled"].as_bool(), b["value"]["type"].as_str()) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "detail": "feature.name, enabled and value are required" }))).into_response();
    };
    match b["segment"]["id"].as_u64() {
        Some(segment) => {
            stub.segments.lock().unwrap().insert((env, name.into(), segment), enabled);
        }
        None => match stub.states.lock().unwrap().get_mut(&(env, name.to_owned())) {
            Some(state) => state.1 = enabled,
            None => return StatusCode::NOT_FOUND.into_response(),
        },
    }
    StatusCode::NO_CONTENT.into_response()
}

// ------------------------------------------------------------------------------ Fault proxy

/// What the proxy does to one request.
#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16),
    /// 429 with `Retry-After: seconds`.
    TooMany(u64),
    /// Answer nothing for this long (beyond the actuator's timeout: a timeout).
    Hang(Duration),
    /// Forward, but only after this long (a slow answer).
    Slow(Duration),
    /// Forward (the flag system applies the request), then discard its answer and answer this
    /// status: a success whose answer was lost.
    AppliedThen(u16),
    /// Forward untouched (to aim a later fault at a later request).
    Pass,
}

/// An HTTP proxy in front of a flag system that applies a script of faults to the first
/// requests, then forwards everything; it records when each request arrived.
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: std::net::SocketAddr,
    pub arrivals: Arc<Mutex<Vec<(Instant, String)>>>,
    script: Arc<Mutex<VecDeque<Fault>>>,
    upstream: String,
    client: reqwest::Client,
}

impl FaultProxy {
    pub async fn start(upstream: &str, script: Vec<Fault>) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        FaultProxy::on(listener, upstream, script)
    }

    /// Serves on an already bound listener (connection-refused tests bind late).
    pub fn on(listener: tokio::net::TcpListener, upstream: &str, script: Vec<Fault>) -> FaultProxy {
        let proxy = FaultProxy {
            addr: listener.local_addr().unwrap(),
            arrivals: Default::default(),
            script: Arc::new(Mutex::new(script.into())),
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: flagguard::app::http_client(Duration::from_secs(30), None).unwrap(),
        };
        let app = axum::Router::new().fallback(forward).with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Seconds between consecutive arrivals.
    pub fn gaps(&self) -> Vec<f64> {
        let a = self.arrivals.lock().unwrap();
        a.windows(2).map(|w| (w[1].0 - w[0].0).as_secs_f64()).collect()
    }
}

async fn forward(State(proxy): State<FaultProxy>, method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    proxy.arrivals.lock().unwrap().push((Instant::now(), format!("{method} {}", uri.path())));
    let fault = proxy.script.lock().unwrap().pop_front();
    match fault {
        Some(Fault::Status(s)) => return (StatusCode::from_u16(s).unwrap(), "injected").into_response(),
        Some(Fault::TooMany(secs)) => return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", secs.to_string())], "slow down").into_response(),
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            return (StatusCode::GATEWAY_TIMEOUT, "hung").into_response();
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::AppliedThen(_) | Fault::Pass) | None => {}
    }
    let url = format!("{}{}", proxy.upstream, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut call = proxy.client.request(method, url).body(body.to_vec());
    for (name, value) in headers.iter().filter(|(n, _)| *n != "host" && *n != "content-length") {
        call = call.header(name, value);
    }
    match call.send().await {
        Ok(_) if let Some(Fault::AppliedThen(s)) = fault => (StatusCode::from_u16(s).unwrap(), "answer lost").into_response(),
        Ok(r) => {
            let status = r.status();
            let content_type = r.headers().get("content-type").cloned();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut response = (status, bytes).into_response();
            if let Some(ct) = content_type {
                response.headers_mut().insert("content-type", ct);
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

// ------------------------------------------------------------------------------------ tests

pub async fn daemon_with(name: &str, actuator: ActuatorConfig, rules: &str, tune: impl FnOnce(&mut flagguard::config::ConfigFile)) -> (Daemon, FlagServer) {
    let notify = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), rules, &notify);
    config.actuators.insert(name.into(), actuator);
    config.act.timeout = Duration::from_secs(1);
    tune(&mut config);
    (Daemon::start(config, dir).await, notify)
}

pub async fn manual_kill(daemon: &Daemon, actuator: &str, flag: &str, region: Option<&str>) -> i64 {
    let (status, body) = api(
        daemon,
        &format!("/v1/flags/{flag}/kill"),
        json!({ "actuator": actuator, "environment": "production", "region": region, "treatment": ["true"], "reason": "contract test" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["action"].as_i64().unwrap()
}

pub fn state(daemon: &Daemon, id: i64) -> flagguard::store::ActionRow {
    daemon.store.action(id).unwrap().unwrap()
}

pub async fn settled(daemon: &Daemon, id: i64) -> flagguard::store::ActionRow {
    wait_until("the action to settle", Duration::from_secs(30), || state(daemon, id).state != "pending").await;
    state(daemon, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launchdarkly_semantic_patch_kill_restore_rollout_and_its_error_codes() {
    let ld = LdStub::start().await;
    ld.create("checkout-v2");
    let (daemon, _) = daemon_with("ld", ActuatorConfig::Launchdarkly(ld.config()), "rules: []\n", |_| {}).await;

    ld.conflicts.store(1, Ordering::SeqCst);
    let id = manual_kill(&daemon, "ld", "checkout-v2", None).await;
    let row = settled(&daemon, id).await;
    assert_eq!((row.state.as_str(), row.attempts), ("confirmed", 2), "409 is retried, then read back off");
    assert!(!ld.on("checkout-v2", "production"));
    assert!(ld.on("checkout-v2", "approval"), "only the target environment");
    let patch = ld.log.lock().unwrap().iter().rev().find(|s| s.method == "PATCH").cloned().unwrap();
    assert_eq!(patch.headers["content-type"], "application/json; domain-model=launchdarkly.semanticpatch");
    assert_eq!(patch.headers["authorization"], LD_TOKEN, "the bare token, no scheme");
    assert_eq!(patch.body["instructions"], json!([{ "kind": "turnFlagOff" }]));
    assert!(patch.body["comment"].as_str().unwrap().contains("contract test"), "{}", patch.body);

    let (status, _) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({ "reason": "fixed" })).await;
    assert_eq!(status, 202);
    wait_until("the restore", Duration::from_secs(20), || state(&daemon, id).state == "restored").await;
    assert!(ld.on("checkout-v2", "production"));

    let (status, body) = api(
        &daemon,
        "/v1/flags/checkout-v2/rollout",
        json!({ "actuator": "ld", "environment": "production", "treatment": ["true"], "percent": 12.5, "reason": "step" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let rollout = settled(&daemon, body["action"].as_i64().unwrap()).await;
    assert_eq!(rollout.state, "confirmed", "{:?}", rollout.last_error);
    assert_eq!(ld.flag("checkout-v2")["environments"]["production"]["fallthrough"]["rollout"]["variations"][0]["weight"], 12_500);

    // Approval required: permanent, escalated after one attempt, nothing changed.
    let (status, body) =
        api(&daemon, "/v1/flags/checkout-v2/kill", json!({ "actuator": "ld", "environment": "approval", "treatment": ["true"], "reason": "x" })).await;
    assert_eq!(status, 202);
    let row = settled(&daemon, body["action"].as_i64().unwrap()).await;
    assert_eq!((row.state.as_str(), row.attempts), ("escalated", 1));
    assert!(row.last_error.unwrap().contains("approval"));
    assert!(ld.on("checkout-v2", "approval"));
    // A promotion there is not an emergency: LaunchDarkly's own approval request is created
    // for the same change, and the action ends refused, naming it.
    let (status, body) = api(
        &daemon,
        "/v1/flags/checkout-v2/rollout",
        json!({ "actuator": "ld", "environment": "approval", "treatment": ["true"], "percent": 50, "reason": "promote" }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let row = settled(&daemon, body["action"].as_i64().unwrap()).await;
    assert_eq!(row.state, "refused", "{:?}", row.last_error);
    assert!(row.last_error.as_deref().unwrap().contains("approval request ar-1 was created"), "{:?}", row.last_error);
    let created = ld.approval_requests.lock().unwrap().clone();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["instructions"][0]["kind"], "updateFallthroughVariationOrRollout");
    assert_eq!(created[0]["instructions"][0]["rolloutWeights"]["v-true"], 50_000);
    assert!(created[0]["description"].as_str().unwrap().contains("promote"), "{}", created[0]);

    // A slice LaunchDarkly cannot express is refused, not widened.
    let row = settled(&daemon, manual_kill(&daemon, "ld", "checkout-v2", Some("eu-west")).await).await;
    assert_eq!(row.state, "escalated");
    assert!(row.last_error.unwrap().contains("region=eu-west"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagsmith_classic_versioned_and_segment_kills() {
    let fs = FlagsmithStub::start().await;
    fs.create("checkout-v2");
    // Classic API on a classic environment: PATCH the feature state, read it back.
    let (daemon, _) = daemon_with("fs", ActuatorConfig::Flagsmith(fs.config("env-v1", FlagsmithApi::Classic)), "rules: []\n", |_| {}).await;
    let id = manual_kill(&daemon, "fs", "checkout-v2", None).await;
    assert_eq!(settled(&daemon, id).await.state, "confirmed");
    assert!(!fs.enabled("env-v1", "checkout-v2"));
    assert!(fs.log.lock().unwrap().iter().any(|s| s.method == "PATCH" && s.headers["authorization"] == format!("Api-Key {FLAGSMITH_KEY}")));
    let (status, _) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({})).await;
    assert_eq!(status, 202);
    wait_until("the restore", Duration::from_secs(20), || state(&daemon, id).state == "restored").await;
    assert!(fs.enabled("env-v1", "checkout-v2"));
    // A cohort is a segment override (update-flag endpoint with the segment id).
    let row = settled(&daemon, manual_kill(&daemon, "fs", "checkout-v2", Some("eu-west")).await).await;
    assert_eq!(row.state, "sent", "a segment override cannot be read back from the environment's list: sent, not confirmed");
    assert_eq!(fs.segments.lock().unwrap().get(&("env-v1".into(), "checkout-v2".into(), 456)), Some(&false));
    let update = fs.log.lock().unwrap().iter().rev().find(|s| s.method == "POST").cloned().unwrap();
    assert_eq!(update.path, "/api/experiments/environments/env-v1/update-flag-v1/");
    assert_eq!(update.body["segment"]["id"], 456);
    assert!(fs.enabled("env-v1", "checkout-v2"), "only the segment");
    daemon.stop().await;

    // Classic API on a Feature Versioning v2 environment: 400 → escalated, not retried.
    let (daemon, _) = daemon_with("fs", ActuatorConfig::Flagsmith(fs.config("env-v2", FlagsmithApi::Classic)), "rules: []\n", |_| {}).await;
    let row = settled(&daemon, manual_kill(&daemon, "fs", "checkout-v2", None).await).await;
    assert_eq!((row.state.as_str(), row.attempts), ("escalated", 1));
    assert!(row.last_error.unwrap().contains("400"));
    daemon.stop().await;
    // The versioned endpoint works there.
    let (daemon, _) = daemon_with("fs", ActuatorConfig::Flagsmith(fs.config("env-v2", FlagsmithApi::Versioned)), "rules: []\n", |_| {}).await;
    let row = settled(&daemon, manual_kill(&daemon, "fs", "checkout-v2", None).await).await;
    assert_eq!(row.state, "confirmed", "{:?}", row.last_error);
    assert!(!fs.enabled("env-v2", "checkout-v2"));
    daemon.stop().await;
}

/// 503, 429 + Retry-After: 1, a hang past the 1 s timeout, then a slow but good answer.
fn faults() -> Vec<Fault> {
    vec![Fault::Status(503), Fault::TooMany(1), Fault::Hang(Duration::from_millis(1500)), Fault::Slow(Duration::from_millis(300))]
}

/// The kill is retried through every fault and confirmed at the 4th attempt; the schedule
/// honours Retry-After.
async fn survives_faults(name: &str, actuator: ActuatorConfig, proxy: &FaultProxy, flag: &str) {
    let (daemon, _) = daemon_with(name, actuator, "rules: []\n", |c| {
        c.act.initial_backoff = Duration::from_millis(100);
        c.act.max_backoff = Duration::from_secs(2);
    })
    .await;
    let id = manual_kill(&daemon, name, flag, None).await;
    let row = settled(&daemon, id).await;
    assert_eq!((row.state.as_str(), row.attempts), ("confirmed", 4), "{name}: {:?}", row.last_error);
    let gaps = proxy.gaps();
    assert!(gaps[1] >= 0.95, "{name}: Retry-After: 1 honoured, gaps {gaps:?}");
    assert!(gaps[0] >= 0.04 && gaps[0] < 0.95, "{name}: backoff after the 503, gaps {gaps:?}");
    assert!(gaps[2] >= 1.0, "{name}: the hang lasted until the timeout, gaps {gaps:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_networked_actuator_retries_through_faults_and_confirms() {
    let ld = LdStub::start().await;
    ld.create("faulty");
    let proxy = FaultProxy::start(&format!("http://{}", ld.addr), faults()).await;
    survives_faults("ld", ActuatorConfig::Launchdarkly(LaunchDarklyConfig { url: proxy.url(), ..ld.config() }), &proxy, "faulty").await;
    assert!(!ld.on("faulty", "production"));

    let fs = FlagsmithStub::start().await;
    fs.create("faulty");
    let proxy = FaultProxy::start(&format!("http://{}", fs.addr), faults()).await;
    survives_faults("fs", ActuatorConfig::Flagsmith(FlagsmithConfig { url: proxy.url(), ..fs.config("env-v1", FlagsmithApi::Classic) }), &proxy, "faulty")
        .await;
    assert!(!fs.enabled("env-v1", "faulty"));

    let flags = FlagServer::start().await;
    let proxy = FaultProxy::start(&format!("http://{}", flags.addr), faults()).await;
    let webhook = WebhookConfig { read_back: flags.read_back(), ..WebhookConfig::to(&format!("{}/v1/flags/{{flag}}", proxy.url())) };
    survives_faults("hook", ActuatorConfig::Webhook(webhook), &proxy, "faulty").await;

    let unleash = crate::unleash::unleash().await;
    let flag = crate::unleash::unique("fg-faults");
    unleash.create(&flag, &[crate::unleash::rollout(&flag, 100, None)]).await;
    let proxy = FaultProxy::start(&unleash.url, faults()).await;
    let ActuatorConfig::Unleash(config) = crate::unleash::actuator(&unleash, "FG_TEST_UNLEASH_TOKEN") else { unreachable!() };
    survives_faults("unleash", ActuatorConfig::Unleash(flagguard::act::unleash::UnleashConfig { url: proxy.url(), ..config }), &proxy, &flag).await;
    assert_eq!(unleash.state(&flag).await["enabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_escalate_and_a_refused_connection_is_retried_until_it_answers() {
    let ld = LdStub::start().await;
    ld.create("down");
    let proxy = FaultProxy::start(&format!("http://{}", ld.addr), vec![Fault::Status(502); 10]).await;
    let (daemon, _) = daemon_with("ld", ActuatorConfig::Launchdarkly(LaunchDarklyConfig { url: proxy.url(), ..ld.config() }), "rules: []\n", |c| {
        c.act.max_attempts = 3;
        c.act.initial_backoff = Duration::from_millis(50);
    })
    .await;
    let row = settled(&daemon, manual_kill(&daemon, "ld", "down", None).await).await;
    assert_eq!((row.state.as_str(), row.attempts), ("escalated", 3));
    assert!(row.last_error.unwrap().contains("gave up after 3 attempts"));
    assert!(ld.on("down", "production"));
    daemon.stop().await;

    // Nothing listens on the port yet: connection refused, retried; then the flag system comes up.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (daemon, _) =
        daemon_with("ld", ActuatorConfig::Launchdarkly(LaunchDarklyConfig { url: format!("http://{port}"), ..ld.config() }), "rules: []\n", |c| {
            c.act.initial_backoff = Duration::from_millis(200);
            c.act.max_backoff = Duration::from_millis(500);
        })
        .await;
    let id = manual_kill(&daemon, "ld", "down", None).await;
    wait_until("refused attempts", Duration::from_secs(20), || state(&daemon, id).attempts >= 2).await;
    assert!(state(&daemon, id).last_error.unwrap().contains("error sending request"), "{:?}", state(&daemon, id).last_error);
    let listener = tokio::net::TcpListener::bind(port).await.unwrap();
    let _proxy = FaultProxy::on(listener, &format!("http://{}", ld.addr), vec![]);
    wait_until("the confirmation", Duration::from_secs(20), || state(&daemon, id).state == "confirmed").await;
    assert!(!ld.on("down", "production"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sdk_cache_fails_the_drain_check_and_escalates_to_the_fallback() {
    use flagguard::cli::traffic::{Request, build};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    let ld = LdStub::start().await;
    ld.create("stale");
    let rules = "rules:\n  - name: stale\n    flag: stale\n    treatment: \"on\"\n    control: \"off\"\n    where: { service: payments, environment: production }\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n    min_samples: 30\n    action: { kill: ld }\n    mode: enforce\n";
    let verify =
        VerifyConfig { drain_within: Duration::from_secs(6), drain_window: Duration::from_secs(2), fallback: Some("flags".into()), ..VerifyConfig::default() };
    let (daemon, flags) = daemon_with("ld", ActuatorConfig::Launchdarkly(LaunchDarklyConfig { verify, ..ld.config() }), rules, |_| {}).await;
    // Traffic that never notices the kill: half the users keep getting `on`, as from an SDK
    // whose cache went stale.
    let stop = tokio_util::sync::CancellationToken::new();
    let grpc = daemon.addrs.grpc;
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
            while !stop.is_cancelled() {
                let requests: Vec<Request> = (0..40)
                    .map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 4 == 0 })
                    .collect();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
                let export = build("stale", "production", &requests, now, &mut rand::rng());
                client.export(export).await.unwrap();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    wait_until("the kill", Duration::from_secs(30), || daemon.store.actions(100).unwrap().iter().any(|a| a.kind == "kill" && a.target.starts_with("ld|")))
        .await;
    let kill = daemon.store.actions(100).unwrap().into_iter().find(|a| a.kind == "kill" && a.target.starts_with("ld|")).unwrap();
    wait_until("the confirmation", Duration::from_secs(10), || state(&daemon, kill.id).state != "pending").await;
    assert_eq!(state(&daemon, kill.id).state, "confirmed", "LaunchDarkly reports the flag off");
    let confirmed_at = Instant::now();
    wait_until("the failed drain check", Duration::from_secs(20), || state(&daemon, kill.id).state == "escalated").await;
    let waited = confirmed_at.elapsed();
    assert!(waited <= Duration::from_secs(6 + 3), "escalated within the deadline (+ one check): {waited:?}");
    let row = state(&daemon, kill.id);
    assert!(row.last_error.as_deref().unwrap_or("").contains("did not drain"), "{:?}", row.last_error);
    // The fallback actuator gets the kill; the on-call is told.
    wait_until("the fallback kill", Duration::from_secs(20), || !flags.kill_calls().is_empty()).await;
    assert!(daemon.audit_kinds().contains(&"kill_fallback".to_owned()));
    wait_until("the escalation notice", Duration::from_secs(10), || {
        flags.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.contains("did not drain")))
    })
    .await;
    stop.cancel();
    traffic.await.unwrap();
    daemon.stop().await;
}

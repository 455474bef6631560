//! Shared test support: an in-process daemon on free ports, a recording flag server, polling
//! helpers, and the paths of the real-SDK test clients.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use flagguard::act::webhook::ReadBackConfig;
use flagguard::act::webhook::WebhookConfig;
use flagguard::app::{Addrs, App};
use flagguard::config::{ActuatorConfig, Config, ConfigFile};
use flagguard::store::Store;
use flagguard::time::SystemClock;
use flagguard::view::Snapshot;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Polls `condition` every 50 ms until it holds or `deadline` passes (then panics with `what`).
pub async fn wait_until<F: FnMut() -> bool>(what: &str, deadline: Duration, mut condition: F) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One call received by the flag server.
#[derive(Clone, Debug)]
pub struct Call {
    pub path: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub answered: u16,
    /// When the request arrived (before it was answered).
    pub at: Instant,
}

/// A local HTTP server standing in for a flag system's API: records every call and answers
/// with the status set in `status`.
#[derive(Clone)]
pub struct FlagServer {
    pub addr: std::net::SocketAddr,
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub status: Arc<AtomicU16>,
    /// Seconds sent as `Retry-After` with non-2xx answers (0: none).
    pub retry_after: Arc<AtomicU16>,
}

impl FlagServer {
    pub async fn start() -> FlagServer {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let retry_after = Arc::new(AtomicU16::new(0));
        let state = (calls.clone(), status.clone(), retry_after.clone());
        let app = axum::Router::new().route("/v1/flags/{flag}", post(record).get(read_flag)).route("/notify", post(record_notify)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FlagServer { addr, calls, status, retry_after }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/flags/{{flag}}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn kill_calls(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.path.starts_with("/v1/flags/")).collect()
    }

    /// The read-back of this server: `GET /v1/flags/{flag}` answers `{"enabled": false}` once a
    /// kill call for the flag was answered 2xx.
    pub fn read_back(&self) -> Option<ReadBackConfig> {
        Some(ReadBackConfig {
            method: "GET".into(),
            url: format!("http://{}/v1/flags/{{flag}}", self.addr),
            pointer: "/enabled".into(),
            killed_value: serde_json::json!(false),
            rollout_pointer: None,
        })
    }
}

/// The flag's state as the recorded calls left it.
async fn read_flag(State((calls, _, _)): State<ServerState>, AxPath(flag): AxPath<String>) -> axum::Json<serde_json::Value> {
    let path = format!("/v1/flags/{flag}");
    let killed =
        calls.lock().unwrap().iter().any(|c| c.path == path && (200..300).contains(&c.answered) && c.body.get("enabled") == Some(&serde_json::json!(false)));
    axum::Json(serde_json::json!({ "flag": flag, "enabled": !killed }))
}

type ServerState = (Arc<Mutex<Vec<Call>>>, Arc<AtomicU16>, Arc<AtomicU16>);

async fn record(
    State((calls, status, retry_after)): State<ServerState>,
    AxPath(flag): AxPath<String>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let answered = status.load(Ordering::SeqCst);
    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    calls.lock().unwrap().push(Call { path: format!("/v1/flags/{flag}"), headers, body, answered, at: Instant::now() });
    let status = StatusCode::from_u16(answered).unwrap();
    match retry_after.load(Ordering::SeqCst) {
        0 => status.into_response(),
        seconds if !status.is_success() => (status, [("retry-after", seconds.to_string())]).into_response(),
        _ => status.into_response(),
    }
}

async fn record_notify(State((calls, _, _)): State<ServerState>, headers: HeaderMap, body: String) -> StatusCode {
    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    calls.lock().unwrap().push(Call { path: "/notify".into(), headers, body, answered: 200, at: Instant::now() });
    StatusCode::OK
}

/// A daemon running in this process on free ports, with its own data and rules directories.
pub struct Daemon {
    pub addrs: Addrs,
    pub store: Store,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub shutdown: CancellationToken,
    /// Kept alive (deleted on drop) for as long as the daemon runs.
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// A config on free ports with `rules` (YAML) and a webhook actuator `flags` pointing at
    /// `server` (bearer token from the environment), notifications to the same server.
    pub fn config(dir: &Path, rules: &str, server: &FlagServer) -> ConfigFile {
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        std::fs::write(dir.join("rules/test.yaml"), rules).unwrap();
        let mut file = ConfigFile::ephemeral(dir);
        file.correlate.trace_idle = Duration::from_secs(3);
        file.aggregate.snapshot_interval = Duration::from_millis(200);
        file.act.initial_backoff = Duration::from_millis(100);
        file.act.max_backoff = Duration::from_secs(1);
        file.act.notify_url = Some(format!("http://{}/notify", server.addr));
        file.actuators.insert(
            "flags".into(),
            ActuatorConfig::Webhook(WebhookConfig {
                headers: BTreeMap::from([("Authorization".into(), "Bearer test-token-123".into())]),
                body: Some(r#"{"rollout_percentage": 0, "enabled": false, "variant": "{variant}", "rule": "{rule}", "evidence": "{evidence}"}"#.into()),
                read_back: server.read_back(),
                ..WebhookConfig::to(&server.url())
            }),
        );
        file
    }

    pub async fn start(file: ConfigFile, dir: tempfile::TempDir) -> Daemon {
        let config = Config::validate(file).expect("test config is valid");
        let app = App::build(config, Arc::new(SystemClock)).await.expect("daemon starts");
        let addrs = app.addrs();
        let store = app.store();
        let snapshots = app.snapshots();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone(), Duration::from_secs(2)));
        Daemon { addrs, store, snapshots, shutdown, _dir: dir, task }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// Stops the daemon and keeps its data directory (for a restart on the same data).
    pub async fn stop_keeping_data(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self._dir
    }

    /// A second connection to the daemon's database (fault injection with triggers).
    pub fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self._dir.path().join("data/flagguard.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Requests recorded for (flag, variant, service) over the last minute, all regions.
    pub fn requests(&self, flag: &str, variant: &str, service: &str) -> (u64, u64) {
        self.snapshot()
            .series
            .iter()
            .filter(|s| s.flag == flag && s.variant == variant && s.service == service)
            .fold((0, 0), |(r, e), s| (r + s.last_1m.requests, e + s.last_1m.errors))
    }

    pub fn audit_kinds(&self) -> Vec<String> {
        self.store.audit_log(1000, None, None).unwrap().into_iter().map(|r| r.kind).collect()
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter of the test-client virtualenv (`scripts/setup-test-clients.sh`).
pub fn python() -> PathBuf {
    let path = std::env::var_os("FLAGGUARD_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo().join("target/test-clients/venv/bin/python"));
    assert!(path.exists(), "{} is missing: run scripts/test.sh (or scripts/setup-test-clients.sh) first", path.display());
    path
}

/// Checks that the Node test client's packages are installed.
pub fn node_client() -> PathBuf {
    let dir = repo().join("tests/clients/node");
    assert!(
        dir.join("node_modules/@openfeature/open-telemetry-hooks").exists(),
        "Node test client packages are missing: run scripts/test.sh (or scripts/setup-test-clients.sh) first"
    );
    dir.join("traffic.mjs")
}

/// Runs a test client to completion and returns its JSON summary line.
pub async fn run_client(program: &Path, args: &[&str]) -> serde_json::Value {
    let output = tokio::process::Command::new(program).args(args).kill_on_drop(true).output().await.expect("test client starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client {program:?} {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad summary {last:?}: {e}"))
}

pub fn python_client() -> PathBuf {
    repo().join("tests/clients/python/traffic.py")
}

/// POSTs JSON to the daemon's API; the status and the JSON answer (`Null` if none).
pub async fn api(daemon: &Daemon, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = flagguard::app::http_client(Duration::from_secs(10), None)
        .unwrap()
        .post(format!("http://{}{path}", daemon.addrs.api))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(serde_json::Value::Null))
}

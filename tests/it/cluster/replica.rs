//! One flagguard replica: the real binary (`CARGO_BIN_EXE_flagguard`) in a process of its own,
//! its JSON log captured line by line with arrival times, its exit watched, and the signals the
//! nemeses send (`kill -9`, `-STOP`, `-CONT`, `-TERM`, through the `kill` command).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

/// A line of the replica's log: JSON when it parses, the raw text otherwise (a config error
/// printed before logging is set up).
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: Instant,
    pub json: Option<serde_json::Value>,
    pub text: String,
}

/// How and when the process ended.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub at: Instant,
    pub status: ExitStatus,
}

pub struct Replica {
    pub instance: String,
    pub pid: u32,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    log: Arc<Mutex<Vec<LogLine>>>,
    exit: Arc<Mutex<Option<Exit>>>,
    http_client: reqwest::Client,
}

/// The `/v1/cluster` answer.
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    pub leader: bool,
    pub epoch: Option<u64>,
    pub holder: Option<String>,
    pub raw: serde_json::Value,
}

impl Replica {
    /// Starts the binary on `config` with extra environment (`FLAGGUARD_FAILPOINTS`) and waits
    /// for "flagguard is running" (panics with the log if the process exits first).
    pub async fn spawn(instance: &str, config: &Path, env: &[(&str, String)]) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flagguard"));
        command.args(["serve", "--config", config.to_str().unwrap()]).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the flagguard binary starts");
        let pid = child.id();
        let log = Arc::new(Mutex::new(Vec::new()));
        let exit = Arc::new(Mutex::new(None));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for text in BufReader::new(stderr).lines().map_while(Result::ok) {
                let json = serde_json::from_str::<serde_json::Value>(&text).ok().filter(serde_json::Value::is_object);
                lines.lock().unwrap().push(LogLine { at: Instant::now(), json, text });
            }
        });
        let exited = exit.clone();
        std::thread::spawn(move || {
            let status = child.wait().expect("waiting for the replica");
            *exited.lock().unwrap() = Some(Exit { at: Instant::now(), status });
        });
        let mut replica = Replica {
            instance: instance.to_owned(),
            pid,
            grpc: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
            api: ([0, 0, 0, 0], 0).into(),
            log,
            exit,
            http_client: flagguard::app::http_client(Duration::from_secs(5), None).expect("an HTTP client"),
        };
        let running = replica.wait_log("flagguard is running", Duration::from_secs(30)).await;
        let address =
            |field: &str| -> SocketAddr { running[field].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("`{field}` address in {running}")) };
        (replica.grpc, replica.http, replica.api) = (address("grpc"), address("http"), address("api"));
        replica
    }

    /// The last lines of the log, raw, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(lines)..].iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Log lines with this message, and when each arrived.
    pub fn logged(&self, message: &str) -> Vec<(Instant, serde_json::Value)> {
        self.log.lock().unwrap().iter().filter_map(|l| l.json.as_ref().filter(|j| j["message"] == message).map(|j| (l.at, j.clone()))).collect()
    }

    /// Waits for a log line with `message` and returns it; panics (with the log) on timeout or
    /// if the process exits first.
    pub async fn wait_log(&self, message: &str, deadline: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some((_, line)) = self.logged(message).into_iter().next() {
                return line;
            }
            if let Some(exit) = self.exited() {
                panic!("replica {} exited ({}) before logging {message:?}; log:\n{}", self.instance, exit.status, self.log_tail(40));
            }
            assert!(start.elapsed() < deadline, "replica {} did not log {message:?} within {deadline:?}; log:\n{}", self.instance, self.log_tail(40));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.lock().unwrap()
    }

    /// Waits for the process to end (a failpoint, a signal).
    pub async fn wait_exit(&self, deadline: Duration) -> Option<Exit> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Some(exit) = self.exited() {
                return Some(exit);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`) unless the process has ended.
    pub fn signal(&self, signal: &str) {
        if !self.try_signal(signal) {
            // It may have died just now: its waiter records that a moment later.
            std::thread::sleep(Duration::from_millis(50));
            assert!(self.exited().is_some(), "kill -{signal} {} failed", self.pid);
        }
    }

    /// Sends a signal unless the process has ended; false if `kill` failed.
    fn try_signal(&self, signal: &str) -> bool {
        if self.exited().is_some() {
            return true;
        }
        Command::new("kill").arg(format!("-{signal}")).arg(self.pid.to_string()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    pub fn kill9(&self) {
        self.signal("KILL");
    }

    /// SIGSTOP, returning once the kernel reports the process stopped.
    pub fn pause(&self) {
        self.signal("STOP");
        self.wait_state(true);
    }

    /// SIGCONT, returning once the process runs again.
    pub fn resume(&self) {
        self.signal("CONT");
        self.wait_state(false);
    }

    /// Waits (at most 2 s) until `/proc/PID/stat` shows the process stopped (`T`) or not.
    fn wait_state(&self, stopped: bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if self.exited().is_some() {
                return;
            }
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("");
            if (state == "T") == stopped {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("replica {} did not {} within 2 s", self.instance, if stopped { "stop" } else { "continue" });
    }

    pub fn terminate(&self) {
        self.signal("TERM");
    }

    fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// `GET /v1/cluster`; None when the replica does not answer within 1 s (stopped, gone) or
    /// answers something else than 200 with JSON.
    pub async fn cluster_status(&self) -> Option<ClusterStatus> {
        let response = self.http_client.get(self.api_url("/v1/cluster")).timeout(Duration::from_secs(1)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let raw: serde_json::Value = response.json().await.ok()?;
        Some(ClusterStatus {
            leader: raw["leader"].as_bool()?,
            epoch: raw["epoch"].as_u64(),
            holder: raw["holder"].as_str().map(str::to_owned),
            raw: raw.clone(),
        })
    }

    /// The API's Prometheus text, None if it does not answer within 1 s.
    pub async fn metrics(&self) -> Option<String> {
        let response = self.http_client.get(self.api_url("/metrics")).timeout(Duration::from_secs(1)).send().await.ok()?;
        response.text().await.ok()
    }

    /// The value of an unlabelled metric (its `_total` sample for counters).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    }

    /// Posts an alert webhook with the test bearer token: status, `Retry-After`, JSON body.
    pub async fn post_alert(&self, source: &str, body: &[u8]) -> (u16, Option<String>, serde_json::Value) {
        let response = self
            .http_client
            .post(self.api_url(&format!("/v1/alerts/{source}")))
            .header("authorization", "Bearer test-bearer-token")
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v1/alerts/{source} to replica {}: {e}", self.instance));
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        (status, retry_after, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Exports one OTLP trace batch over gRPC (as a Collector fanning out would).
    pub async fn send(&self, batch: ExportTraceServiceRequest) {
        let export = async {
            let mut client = TraceServiceClient::connect(format!("http://{}", self.grpc)).await.map_err(|e| e.to_string())?;
            client.export(batch).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(10), export).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("OTLP export to replica {}: {e}", self.instance),
            Err(_) => panic!("OTLP export to replica {} timed out", self.instance),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // Also ends a stopped process (SIGKILL needs no SIGCONT). Never panics: this may run
        // while a failed test unwinds.
        self.try_signal("KILL");
    }
}

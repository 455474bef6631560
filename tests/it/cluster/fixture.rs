//! One cluster under test: a fresh database, a recording flag system (the mock of
//! `support::FlagServer`, which also sees `X-Flagguard-Epoch`), a rules directory shared by the
//! replicas, per-replica config files, and the traffic every replica receives (the Collector
//! sends the full stream to each: the same batch goes to all).

use std::time::{Duration, Instant};

use flagguard::cli::traffic::{Request, build};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::pg::{Database, Postgres};
use super::replica::{ClusterStatus, Replica};
use crate::support::FlagServer;

/// The lease timings of the tests: short, within the config's constraint
/// `lease_ttl − renew_interval ≥ act.timeout + 500ms` (2 s − 0.4 s ≥ 1 s + 0.5 s).
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub lease_ttl: Duration,
    pub renew_interval: Duration,
    pub acquire_interval: Duration,
    pub act_timeout: Duration,
}

pub const FAST: Timings = Timings {
    lease_ttl: Duration::from_secs(2),
    renew_interval: Duration::from_millis(400),
    acquire_interval: Duration::from_millis(200),
    act_timeout: Duration::from_secs(1),
};

impl Timings {
    /// The stated bound from a leader's death to the first action of its successor:
    /// lease TTL + acquire interval + 1 s (the design's checker 4).
    pub fn takeover_bound(&self) -> Duration {
        self.lease_ttl + self.acquire_interval + Duration::from_secs(1)
    }
}

/// The flag the regression traffic breaks, the rule guarding it, and an Alertmanager mapping
/// (the `alertmanager-v4.json` fixture kills `checkout-v2`, cohort `beta-users`).
pub const FLAG: &str = "checkout-crash";
pub const RULES: &str = r#"rules:
  - name: crashy
    flag: checkout-crash
    treatment: "on"
    control: "off"
    where: { service: payments }
    when: [ { error_rate: { above: 0.1 } } ]
    window: 1m
    min_samples: 30
    action: { kill: flags }
    mode: enforce
  - name: crashy-aa
    flag: checkout-aa
    treatment: "on"
    control: "off"
    where: { service: payments }
    when: [ { error_rate: { above: 0.1 } } ]
    window: 1m
    min_samples: 30
    action: { kill: flags }
    mode: enforce
alerts:
  - name: checkout-burn
    source: alertmanager
    match: { alertname: FlagCohortErrorBudgetBurn, killswitch: "true" }
    kill: { flag: $feature_flag, via: flags, environment: $flag_environment, cohort: $cohort }
    mode: enforce
"#;

/// How one replica is started.
#[derive(Clone, Debug, Default)]
pub struct Spawn {
    /// `FLAGGUARD_FAILPOINTS` (empty: none).
    pub failpoints: Vec<&'static str>,
    /// Reach PostgreSQL here instead of directly (a proxy's URL).
    pub postgres_url: Option<String>,
    /// Without a `[cluster]` section (embedded mode, SQLite).
    pub embedded: bool,
}

pub struct Cluster {
    pub pg: Postgres,
    pub db: Database,
    pub flags: FlagServer,
    pub timings: Timings,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A cluster on the run's shared PostgreSQL, in a database of its own.
    pub async fn new(test: &str) -> Cluster {
        Cluster::on(Postgres::shared().await, test).await
    }

    /// A cluster on `pg` (a server of the test's own).
    pub async fn on(pg: Postgres, test: &str) -> Cluster {
        let db = pg.fresh_database(test).await;
        let flags = FlagServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::write(dir.path().join("rules/rules.yaml"), RULES).unwrap();
        Cluster { pg, db, flags, timings: FAST, dir }
    }

    /// The config file of replica `instance`: its own data directory and free ports, the shared
    /// rules, a webhook actuator with read-back at the mock, an Alertmanager route, JSON logs.
    pub fn config(&self, instance: &str, spawn: &Spawn) -> std::path::PathBuf {
        let home = self.dir.path().join(instance);
        std::fs::create_dir_all(&home).unwrap();
        let t = &self.timings;
        let cluster = if spawn.embedded {
            String::new()
        } else {
            format!(
                "[cluster]\ninstance_id = \"{instance}\"\npostgres_url = \"{url}\"\nlease_ttl = \"{ttl}ms\"\nrenew_interval = \"{renew}ms\"\nacquire_interval = \"{acquire}ms\"\n",
                url = spawn.postgres_url.as_deref().unwrap_or(&self.db.url),
                ttl = t.lease_ttl.as_millis(),
                renew = t.renew_interval.as_millis(),
                acquire = t.acquire_interval.as_millis(),
            )
        };
        let text = format!(
            r#"data_dir = "{data}"
rules_dir = "{rules}"
[otlp]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
[log]
format = "json"
[correlate]
trace_idle = "1s"
[aggregate]
snapshot_interval = "200ms"
[act]
timeout = "{timeout}ms"
initial_backoff = "100ms"
max_backoff = "400ms"
max_attempts = 1000
{cluster}[alerts.alertmanager]
bearer_token = "test-bearer-token"
[actuators.flags]
type = "webhook"
url = "{url}"
body = '{{"enabled": false, "rule": "{{rule}}", "cohort": "{{cohort}}"}}'
[actuators.flags.read_back]
url = "{url}"
pointer = "/enabled"
"#,
            data = home.join("data").display(),
            rules = self.dir.path().join("rules").display(),
            timeout = t.act_timeout.as_millis(),
            url = self.flags.url(),
        );
        let path = home.join("flagguard.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub async fn spawn_with(&self, instance: &str, spawn: Spawn) -> Replica {
        let config = self.config(instance, &spawn);
        let env: Vec<(&str, String)> = if spawn.failpoints.is_empty() { Vec::new() } else { vec![("FLAGGUARD_FAILPOINTS", spawn.failpoints.join(","))] };
        Replica::spawn(instance, &config, &env).await
    }

    /// Starts `first` and waits until it leads, then starts `second` and waits until it
    /// follows the same epoch: a known leader and a warm standby.
    pub async fn pair(&self, first: Spawn, second: Spawn) -> (Replica, Replica, u64) {
        let a = self.spawn_with("a", first).await;
        let lead = wait_status(&a, "replica a to lead", Duration::from_secs(15), |s| s.leader).await;
        let epoch = lead.epoch.expect("a leader reports its epoch");
        let b = self.spawn_with("b", second).await;
        wait_status(&b, "replica b to follow a", Duration::from_secs(15), |s| !s.leader && s.holder.as_deref() == Some("a")).await;
        (a, b, epoch)
    }
}

/// Polls `/v1/cluster` of `replica` until `condition` holds; panics after `deadline`.
pub async fn wait_status(replica: &Replica, what: &str, deadline: Duration, condition: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
    try_wait_status(replica, deadline, condition)
        .await
        .unwrap_or_else(|last| panic!("timed out after {deadline:?} waiting for {what}; last /v1/cluster: {last:?}; log:\n{}", replica.log_tail(30)))
}

/// Like [`wait_status`], the last answer (if any) as the error on timeout.
pub async fn try_wait_status(
    replica: &Replica,
    deadline: Duration,
    condition: impl Fn(&ClusterStatus) -> bool,
) -> Result<ClusterStatus, Option<serde_json::Value>> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < deadline {
        if let Some(status) = replica.cluster_status().await {
            if condition(&status) {
                return Ok(status);
            }
            last = Some(status.raw);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(last)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// 200 requests split over `on`/`off`; a quarter of all (half the treatment) fail in payments.
pub fn regression(flag: &str, environment: &str) -> ExportTraceServiceRequest {
    let requests: Vec<Request> =
        (0..200).map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 4 == 0 }).collect();
    build(flag, environment, &requests, now_ns(), &mut rand::rng())
}

/// A/A: both variants fail equally often (a quarter each) — above the rule's absolute threshold,
/// but the control breaches just as much, so nothing is to be killed.
pub fn a_a(flag: &str, environment: &str) -> ExportTraceServiceRequest {
    let requests: Vec<Request> =
        (0..200).map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 8 < 2 }).collect();
    build(flag, environment, &requests, now_ns(), &mut rand::rng())
}

/// Sends the same batch to every replica, one after the other.
pub async fn send_to_all(replicas: &[&Replica], batch: ExportTraceServiceRequest) {
    for replica in replicas {
        replica.send(batch.clone()).await;
    }
}

/// Polls the store until a `kill_confirmed` record exists (false after `deadline`; a store
/// that cannot be reached yet counts as not confirmed).
pub async fn wait_confirmed(db: &Database, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if db.try_audit().await.is_ok_and(|audit| audit.iter().any(|r| r.kind == "kill_confirmed")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `probe` every 25 ms until it yields a value or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether a replica shows that it was deposed: a fence rejection counted, or a step-down
/// logged.
pub async fn shows_step_down(replica: &Replica) -> bool {
    replica.metric("flagguard_cluster_fence_rejections_total").await.is_some_and(|v| v > 0.0)
        || !replica.logged("stepping down").is_empty()
        || !replica.logged("lease lost").is_empty()
}

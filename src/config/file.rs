//! The on-disk shape of `flagguard.toml` (serde, unknown fields refused). Every field has a
//! default that lets `flagguard serve` run on a fresh machine. Validation is in `super`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::act::providers::ActuatorConfig;
pub use crate::act::verify::VerifyConfig;
use crate::telemetry::LogFormat;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Directory for the SQLite store (created if missing). Default `data`.
    pub data_dir: PathBuf,
    /// Directory of rule files (`*.yaml`, `*.yml`). Default `rules`.
    pub rules_dir: PathBuf,
    pub otlp: OtlpConfig,
    pub correlate: CorrelateConfig,
    pub aggregate: AggregateConfig,
    pub rules: RulesConfig,
    pub act: ActConfig,
    pub api: ApiConfig,
    pub log: LogConfig,
    /// Flag systems flagguard may act on, by name (rules refer to them: `action: { kill: NAME }`).
    /// None by default: every action is then dry-run.
    pub actuators: BTreeMap<String, ActuatorConfig>,
    /// Recording of accepted OTLP requests for `flagguard replay` (off unless `dir` is set).
    pub record: RecordConfig,
    /// Alert webhook sources, by name (`alertmanager`, `grafana`, `datadog`, `newrelic`,
    /// `dynatrace`, `pagerduty`, `generic`). A source without a section is disabled (404).
    pub alerts: BTreeMap<String, AlertSourceConfig>,
    pub audit: AuditConfig,
    pub state: StateConfig,
    pub manifests: ManifestsConfig,
    pub governance: GovernanceConfig,
    /// Scale-out: this instance is a shard that streams its window deltas to evaluators
    /// (docs/cluster.md, "Scale-out"). Absent by default.
    pub shard: Option<crate::shard::ShardConfig>,
    /// Scale-out: this instance judges the merged windows of these shards. Absent by default.
    pub merge: Option<crate::shard::MergeConfig>,
    /// Cluster mode: replicas on PostgreSQL, one fenced leader (see docs/cluster.md). Absent:
    /// one process on SQLite in `data_dir`.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `[state]`: the checkpoint of windows and rule state that a restart restores
/// (docs/operations.md, "Restarts").
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// How often the windows, `for` clocks and sequential tests are written to
    /// `data_dir/state.ckpt` (and always at a graceful stop). A crash loses at most this much
    /// evidence. Default `30s`; `0s` turns checkpoints off (every restart starts blind).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { checkpoint_interval: Duration::from_secs(30) }
    }
}

/// `[manifests]`: flag manifests the daemon watches for drift (docs/manifests.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManifestsConfig {
    /// The manifests directory (`flags/*.yaml`, e.g. a Git checkout); none: no drift watch.
    pub dir: Option<std::path::PathBuf>,
    /// How often the manifests are re-read and every flag system compared with them.
    #[serde(with = "humantime_serde")]
    pub drift_interval: Duration,
}

impl Default for ManifestsConfig {
    fn default() -> Self {
        ManifestsConfig { dir: None, drift_interval: Duration::from_secs(60) }
    }
}

/// `[governance]`: environments whose riskier changes need a second person's approval
/// (docs/governance.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// In these environments a rollout to 100 %, the restore of a killed flag and the resume of
    /// a paused plan are proposals until another token approves. Kills are never held.
    pub regulated_environments: Vec<String>,
    /// A proposal not approved within this long expires.
    #[serde(with = "humantime_serde")]
    pub approval_expiry: Duration,
    /// The compliance report flags a flag served in several variants for longer than this.
    #[serde(with = "humantime_serde")]
    pub max_rollout_age: Duration,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            regulated_environments: Vec::new(),
            approval_expiry: Duration::from_secs(24 * 3600),
            max_rollout_age: Duration::from_secs(30 * 86_400),
        }
    }
}

/// `[audit]`: the audit log's retention.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Delete audit records older than this (checked hourly; the deletion is audited), e.g.
    /// `"400d"`. Default none: kept forever. Export first (`GET /v1/audit/export`) if you must
    /// keep them elsewhere.
    #[serde(with = "humantime_serde::option")]
    pub retention: Option<Duration>,
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            data_dir: "data".into(),
            rules_dir: "rules".into(),
            otlp: OtlpConfig::default(),
            correlate: CorrelateConfig::default(),
            aggregate: AggregateConfig::default(),
            rules: RulesConfig::default(),
            act: ActConfig::default(),
            api: ApiConfig::default(),
            log: LogConfig::default(),
            actuators: BTreeMap::new(),
            record: RecordConfig::default(),
            alerts: BTreeMap::new(),
            audit: AuditConfig::default(),
            state: StateConfig::default(),
            manifests: ManifestsConfig::default(),
            governance: GovernanceConfig::default(),
            shard: None,
            merge: None,
            cluster: None,
        }
    }
}

impl ConfigFile {
    /// Defaults for a throw-away daemon under `dir` (demo, tests): data and rules in `dir`,
    /// every listener on a free loopback port.
    pub fn ephemeral(dir: &std::path::Path) -> ConfigFile {
        let mut file = ConfigFile { data_dir: dir.join("data"), rules_dir: dir.join("rules"), ..ConfigFile::default() };
        file.otlp.grpc_listen = "127.0.0.1:0".into();
        file.otlp.http_listen = "127.0.0.1:0".into();
        file.api.listen = "127.0.0.1:0".into();
        file
    }

    /// A copy safe to log or audit: header values and notification URLs (which carry secrets)
    /// are replaced.
    pub fn redacted(&self) -> ConfigFile {
        let mut copy = self.clone();
        for actuator in copy.actuators.values_mut() {
            if let ActuatorConfig::Webhook(w) = actuator {
                for value in w.headers.values_mut() {
                    *value = "<redacted>".into();
                }
            }
        }
        for actuator in copy.actuators.values_mut() {
            if let Some(token) = actuator.token_mut() {
                *token = "<redacted>".into();
            }
        }
        for actuator in copy.actuators.values_mut() {
            if let ActuatorConfig::Webhook(w) = actuator {
                // `${VAR}` references are kept unexpanded; a literal query string may hold a key.
                if let Some((base, _)) = w.url.split_once('?') {
                    w.url = format!("{base}?<redacted>");
                }
            }
        }
        if let Some(cluster) = &mut copy.cluster
            && !cluster.postgres_url.starts_with("${")
        {
            // A literal URL may hold a password.
            cluster.postgres_url = match cluster.postgres_url.rsplit_once('@') {
                Some((_, host)) => format!("postgres://<redacted>@{host}"),
                None => cluster.postgres_url.clone(),
            };
        }
        for source in copy.alerts.values_mut() {
            for secret in [&mut source.bearer_token, &mut source.basic_password].into_iter().flatten() {
                *secret = "<redacted>".into();
            }
            for secret in source.hmac_secrets.iter_mut() {
                *secret = "<redacted>".into();
            }
        }
        for t in copy.api.tokens.iter_mut() {
            t.token = "<redacted>".into();
        }
        for t in copy.otlp.bearer_tokens.iter_mut() {
            *t = "<redacted>".into();
        }
        if copy.act.notify_url.is_some() {
            copy.act.notify_url = Some("<redacted>".into());
        }
        copy
    }
}

/// `[otlp]`: the receivers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC listen address. Default `127.0.0.1:4317` (use `0.0.0.0:4317` to receive from
    /// other hosts).
    pub grpc_listen: String,
    /// OTLP/HTTP listen address. Default `127.0.0.1:4318`.
    pub http_listen: String,
    /// Largest request body after decompression, bytes. Default 20 MiB (the Collector's).
    pub max_body_bytes: usize,
    /// Batches queued between the receivers and the pipeline. Default 1024. When full, callers
    /// get a retryable UNAVAILABLE / 503 with `retry_after`.
    pub queue_capacity: usize,
    /// Flag evaluations and request outcomes queued between the receivers and the pipeline,
    /// bounding memory whatever the batch sizes. Default 2,000,000 (≈ 200 MB). Beyond:
    /// retryable backpressure, as for `queue_capacity`.
    pub queue_items: usize,
    /// Retry delay suggested to callers when the queue is full. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Span attribute prefixes that carry flag evaluations as `PREFIX<flag-key> = <variant>`
    /// (e.g. `app.flags.`). Default none.
    pub flag_attribute_prefixes: Vec<String>,
    /// Bearer tokens OTLP senders must present (`Authorization: Bearer …`; `${VAR}` only,
    /// at least 16 characters). Default none: no authentication.
    pub bearer_tokens: Vec<String>,
    /// TLS for both OTLP listeners; `client_ca` requires client certificates (mTLS).
    pub tls: Option<crate::tls::TlsFiles>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            grpc_listen: "127.0.0.1:4317".into(),
            http_listen: "127.0.0.1:4318".into(),
            max_body_bytes: 20 * 1024 * 1024,
            queue_capacity: 1024,
            queue_items: 2_000_000,
            retry_after: Duration::from_secs(1),
            flag_attribute_prefixes: Vec::new(),
            bearer_tokens: Vec::new(),
            tls: None,
        }
    }
}

/// `[correlate]`: the trace join.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelateConfig {
    /// A trace with no new span or evaluation for this long is evicted. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub trace_idle: Duration,
    /// After eviction, late spans are still attributed for this long. Default `2m`.
    #[serde(with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// Most live traces held; the oldest is evicted early (and counted). Default 200000.
    pub max_traces: usize,
}

impl Default for CorrelateConfig {
    fn default() -> Self {
        CorrelateConfig { trace_idle: Duration::from_secs(30), tombstone_ttl: Duration::from_secs(120), max_traces: 200_000 }
    }
}

/// `[aggregate]`: windows and snapshots.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// Most series (flag × variant × service × environment × region). Default 50000; beyond,
    /// observations are counted as overflow.
    pub max_series: usize,
    /// How often slices with changed series are re-evaluated by the rules, 10 ms – 1 s.
    /// Default `25ms` (at 100 ms, detection's p50 was the tick: docs/performance.md).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// How often the API snapshot is rebuilt (and every rule slice re-evaluated). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig { max_series: 50_000, tick: Duration::from_millis(25), snapshot_interval: Duration::from_secs(1) }
    }
}

/// `[rules]`: rule loading and the guards that keep flagguard from doing harm.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// How often the rules directory is checked for changes. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// A rule whose guarded flag sent no telemetry for this long is reported stale. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Most distinct flags automatically killed per (service, environment) within
    /// `incident_window`; more breaching at once is an incident: notify, do not kill. Default 1.
    pub max_concurrent_kills: usize,
    /// See `max_concurrent_kills`. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub incident_window: Duration,
    /// Control the false-kill rate of sequential conditions across all guarded slices with
    /// e-BH (a kill resting on sequential evidence alone must stand out among all slices).
    /// Default true.
    pub sequential_fdr: bool,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            reload_interval: Duration::from_secs(2),
            stale_after: Duration::from_secs(300),
            max_concurrent_kills: 1,
            incident_window: Duration::from_secs(600),
            sequential_fdr: true,
        }
    }
}

/// `[act]`: how actions are carried out.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActConfig {
    /// Attempts per action before it is escalated. Default 8.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with equal jitter (a delay d is drawn from
    /// [d/2, d)). Default `500ms`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Cap on the retry delay (also caps a provider's Retry-After). Default `30s`.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Timeout of one call to a flag system. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Slack-compatible webhook (`{"text": …}`) told of every automatic action, escalation and
    /// incident. Default none.
    pub notify_url: Option<String>,
    /// More notification routes (`[[act.routes]]`): by severity, flag and owning team, to a
    /// chat webhook, PagerDuty Events v2 or Opsgenie. Default none.
    pub routes: Vec<crate::act::notify::RouteConfig>,
    /// PEM CA bundle trusted for calls to flag systems, in addition to the platform's roots
    /// (a private CA in front of a self-hosted Unleash or Flagsmith). Default none.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for ActConfig {
    fn default() -> Self {
        ActConfig {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            notify_url: None,
            routes: Vec::new(),
            ca_file: None,
        }
    }
}

/// `[api]`: the admin API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Bearer tokens and their roles. None configured: no authentication (keep the API on
    /// loopback then).
    pub tokens: Vec<TokenConfig>,
    /// A file of tokens, one per line: `ROLE NAME TOKEN` (`#` comments).
    pub tokens_file: Option<std::path::PathBuf>,
    /// The role of requests without a token when tokens are configured (e.g. `viewer` for the
    /// dashboard). Default none: 401.
    pub anonymous_role: Option<crate::api::auth::Role>,
    /// TLS for the API (`client_ca` requires client certificates).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Serve the API on a non-loopback address without tokens. Default false: refused, since
    /// anyone who reaches it could restore killed flags and move rollouts.
    pub allow_unauthenticated: bool,
    /// Host names (besides `localhost` and IP addresses) that requests without a token may
    /// use, e.g. the name of a proxy in front. Others are refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            tokens_file: None,
            anonymous_role: None,
            tls: None,
            allow_unauthenticated: false,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[[api.tokens]]`: one API caller.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who (recorded as the actor of what it does).
    pub name: String,
    pub role: crate::api::auth::Role,
    /// The secret, only as `${VAR}`.
    pub token: String,
    /// What it may change (flags globs, environments, owning teams); none: everything its
    /// role allows.
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub environments: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// Level filter (`RUST_LOG` wins). Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

/// `[alerts.SOURCE]`: one alert webhook route, `POST /v1/alerts/SOURCE`. At least one of
/// `bearer_token`, `basic_user`/`basic_password` or `hmac_secrets` is required. `${VAR}` in the
/// secrets is read from the environment at start.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSourceConfig {
    /// Accept `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Accept `Authorization: Basic` with these credentials.
    pub basic_user: Option<String>,
    pub basic_password: Option<String>,
    /// HMAC-SHA256 secrets (Grafana, PagerDuty, generic); several during rotation.
    pub hmac_secrets: Vec<String>,
    /// Grafana only: the timestamp header configured on the contact point (then required and
    /// signed as `timestamp:body`). Default none.
    pub timestamp_header: Option<String>,
    /// Signed timestamps further than this from now are refused. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
    /// Alerts labelled `feature_flag` (and optionally `flag_environment`, `cohort`, `region`)
    /// act without a mapping. Default false.
    pub allow_direct: bool,
    /// The actuator direct alerts kill through (required with `allow_direct`).
    pub direct_actuator: Option<String>,
    /// `dry_run` (default) or `enforce` for direct alerts.
    pub direct_mode: crate::rules::Mode,
    /// Largest body accepted, bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Deliveries accepted per minute on this route; beyond, 429 with Retry-After. Default 600.
    pub rate_per_minute: u32,
}

impl Default for AlertSourceConfig {
    fn default() -> Self {
        AlertSourceConfig {
            bearer_token: None,
            basic_user: None,
            basic_password: None,
            hmac_secrets: Vec::new(),
            timestamp_header: None,
            replay_window: Duration::from_secs(300),
            allow_direct: false,
            direct_actuator: None,
            direct_mode: crate::rules::Mode::DryRun,
            max_body_bytes: 1024 * 1024,
            rate_per_minute: 600,
        }
    }
}

/// `[record]`: record accepted OTLP requests with their arrival times (`serve --record DIR`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Directory of the recording files; recording is off when unset.
    pub dir: Option<PathBuf>,
    /// A file is rotated at this size, bytes. Default 64 MiB.
    pub file_bytes: u64,
    /// The oldest files are deleted beyond this total, bytes. Default 1 GiB.
    pub max_bytes: u64,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig { dir: None, file_bytes: 64 << 20, max_bytes: 1 << 30 }
    }
}

//! The on-disk shape of `flagguard.toml` (serde, unknown fields refused). Every field has a
//! default that lets `flagguard serve` run on a fresh machine. Validation is in `super`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// `[actuators.NAME]`: one flag system.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActuatorConfig {
    /// Any HTTP API: method, URL and JSON body templates.
    Webhook(WebhookConfig),
    /// A flagd flag-definition file, rewritten atomically.
    Flagd(FlagdConfig),
    /// Unleash's admin API.
    Unleash(UnleashConfig),
    /// LaunchDarkly's REST API v2 (semantic patch).
    Launchdarkly(LaunchDarklyConfig),
    /// Flagsmith's Admin API.
    Flagsmith(FlagsmithConfig),
}

impl ActuatorConfig {
    /// How a kill is verified and escalated.
    pub fn verify(&self) -> &VerifyConfig {
        match self {
            ActuatorConfig::Webhook(c) => &c.verify,
            ActuatorConfig::Flagd(c) => &c.verify,
            ActuatorConfig::Unleash(c) => &c.verify,
            ActuatorConfig::Launchdarkly(c) => &c.verify,
            ActuatorConfig::Flagsmith(c) => &c.verify,
        }
    }

    /// The secret-bearing fields, for redaction and the "only from the environment" check.
    pub fn token_mut(&mut self) -> Option<&mut String> {
        match self {
            ActuatorConfig::Unleash(c) => Some(&mut c.token),
            ActuatorConfig::Launchdarkly(c) => Some(&mut c.token),
            ActuatorConfig::Flagsmith(c) => Some(&mut c.token),
            ActuatorConfig::Webhook(_) | ActuatorConfig::Flagd(_) => None,
        }
    }
}

/// `[actuators.NAME.verify]`: how flagguard knows a kill worked, and what it does when not.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// The killed cohort must drain (its share of the flag's evaluations in the kill's scope
    /// at or below `drain_below`) within this long after the kill is confirmed: SDK caches
    /// and polling take seconds to minutes. Default `2m`.
    #[serde(with = "humantime_serde")]
    pub drain_within: Duration,
    /// Default 0.01 (1 % of the flag's evaluations).
    pub drain_below: f64,
    /// The share is measured over the last `drain_window` of telemetry. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// After draining, the slice's error rate must come back to its baseline's within this
    /// long, else the on-call is told the kill did not fix it. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub recover_within: Duration,
    /// How often a killed flag is read back to notice a human re-enabling it. Default `15s`.
    #[serde(with = "humantime_serde")]
    pub drift_interval: Duration,
    /// Actuator that gets the kill when this one fails (escalation). Default none.
    pub fallback: Option<String>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            drain_within: Duration::from_secs(120),
            drain_below: 0.01,
            drain_window: Duration::from_secs(5),
            recover_within: Duration::from_secs(300),
            drift_interval: Duration::from_secs(15),
            fallback: None,
        }
    }
}

/// Unleash (admin API). A kill turns the environment off; a kill of a slice (`per: [region]`)
/// disables only the strategies that serve exactly that slice, through the context field
/// `slices` maps the dimension to (`slices = { region = "region" }`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnleashConfig {
    /// Base URL, e.g. `https://unleash.example.com`.
    pub url: String,
    /// Admin API token or personal access token: `${VAR}` (from the environment) only.
    pub token: String,
    #[serde(default = "default_project")]
    pub project: String,
    /// Telemetry environment → Unleash environment. Unmapped names are used as they are.
    #[serde(default)]
    pub environments: BTreeMap<String, String>,
    /// Environment for a kill whose telemetry has none.
    #[serde(default)]
    pub default_environment: Option<String>,
    /// Dimension → context field name of the strategy constraints that express it.
    #[serde(default)]
    pub slices: BTreeMap<String, String>,
    #[serde(default)]
    pub verify: VerifyConfig,
}

fn default_project() -> String {
    "default".into()
}

/// LaunchDarkly (REST API v2). A kill is the semantic patch `turnFlagOff`; slices cannot be
/// expressed (use `on_unscoped: widen` or per-environment rules).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchDarklyConfig {
    /// Default `https://app.launchdarkly.com`.
    #[serde(default = "default_ld_url")]
    pub url: String,
    /// Access token (`Authorization: <token>`, no scheme): `${VAR}` only.
    pub token: String,
    pub project: String,
    #[serde(default)]
    pub environments: BTreeMap<String, String>,
    #[serde(default)]
    pub default_environment: Option<String>,
    #[serde(default)]
    pub verify: VerifyConfig,
}

fn default_ld_url() -> String {
    "https://app.launchdarkly.com".into()
}

/// Flagsmith (Admin API). `api = "classic"` PATCHes the environment's feature state
/// (refused on Feature Versioning v2 environments); `api = "versioned"` uses the
/// `update-flag-v1` endpoint. A slice is a segment override: `segments = { "region=eu-west" = 456 }`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsmithConfig {
    /// Default `https://api.flagsmith.com`.
    #[serde(default = "default_flagsmith_url")]
    pub url: String,
    /// Organisation API key (`Authorization: Api-Key <key>`): `${VAR}` only.
    pub token: String,
    /// Telemetry environment → Flagsmith environment key (required for each environment).
    pub environments: BTreeMap<String, String>,
    #[serde(default)]
    pub default_environment: Option<String>,
    #[serde(default)]
    pub api: FlagsmithApi,
    #[serde(default)]
    pub segments: BTreeMap<String, u64>,
    #[serde(default)]
    pub verify: VerifyConfig,
}

fn default_flagsmith_url() -> String {
    "https://api.flagsmith.com".into()
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FlagsmithApi {
    #[default]
    Classic,
    Versioned,
}

/// A generic webhook. Placeholders `{flag}`, `{variant}`, `{control}`, `{rule}`, `{environment}`,
/// `{region}`, `{service}`, `{action}` are replaced in the URL (percent-encoded) and in the
/// body's strings; a body string that is exactly `"{evidence}"` becomes the decision record.
/// `${VAR}` in headers and URL is read from the environment at start (missing → config error).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// HTTP method. Default `POST`.
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body template for a kill. Default (`act::webhook::DEFAULT_BODY`):
    /// `{"flag":"{flag}","variant":"{variant}","control":"{control}","enabled":false,"rule":"{rule}","environment":"{environment}","region":"{region}","evidence":"{evidence}"}`.
    #[serde(default)]
    pub body: Option<String>,
    /// Body template of a restore (`{action}` = `restore`). Default none: no restore.
    #[serde(default)]
    pub restore_body: Option<String>,
    /// Body template of a rollout change; `"{percent}"` becomes the number. Default none.
    #[serde(default)]
    pub rollout_body: Option<String>,
    /// Optional read-back: a request whose JSON answer says whether the flag is off.
    #[serde(default)]
    pub read_back: Option<ReadBackConfig>,
    #[serde(default)]
    pub verify: VerifyConfig,
}

impl WebhookConfig {
    /// A `POST url` webhook with the default body and nothing else.
    pub fn to(url: &str) -> WebhookConfig {
        WebhookConfig {
            method: default_method(),
            url: url.into(),
            headers: BTreeMap::new(),
            body: None,
            restore_body: None,
            rollout_body: None,
            read_back: None,
            verify: VerifyConfig::default(),
        }
    }
}

/// A webhook's read-back: `GET url` (placeholders as in the kill), then the JSON value at
/// `pointer` (RFC 6901, e.g. `/enabled`) equals `killed_value` when the flag is off.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBackConfig {
    #[serde(default = "default_get")]
    pub method: String,
    pub url: String,
    pub pointer: String,
    #[serde(default = "default_killed_value")]
    pub killed_value: serde_json::Value,
    /// Pointer to the rollout percentage in the same answer (optional).
    #[serde(default)]
    pub rollout_pointer: Option<String>,
}

fn default_get() -> String {
    "GET".into()
}

fn default_killed_value() -> serde_json::Value {
    serde_json::Value::Bool(false)
}

fn default_method() -> String {
    "POST".into()
}

/// A flagd file. A kill sets `defaultVariant` to the rule's control variant (else
/// `off_variant`) and removes `targeting`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagdConfig {
    pub path: PathBuf,
    /// Variant served after a kill when the rule names no control. Default `off`.
    #[serde(default = "default_off")]
    pub off_variant: String,
    /// Dimension → evaluation-context attribute that expresses it in `targeting`
    /// (`slices = { region = "region" }`).
    #[serde(default)]
    pub slices: BTreeMap<String, String>,
    #[serde(default)]
    pub verify: VerifyConfig,
}

fn default_off() -> String {
    "off".into()
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

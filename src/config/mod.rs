//! Configuration: one TOML file plus `FLAGGUARD_*` environment overrides (the `config` crate
//! merges the sources; `FLAGGUARD_API__LISTEN` sets `api.listen`). [`Config::load`] validates
//! everything and reports every error at once.

pub mod file;

pub use crate::secrets::expand_env;

use std::net::SocketAddr;
use std::path::Path;

pub use file::{ActuatorConfig, AlertSourceConfig, ConfigFile, TokenConfig, VerifyConfig};

/// The shortest alert bearer token or HMAC secret accepted (after `${VAR}` expansion).
pub const MIN_ALERT_SECRET: usize = 16;

/// Why the configuration cannot be used (exit code 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: ConfigFile,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// API callers, from `api.tokens` and `api.tokens_file`.
    pub tokens: Vec<crate::api::auth::TokenEntry>,
    /// OTLP bearer tokens, expanded from `otlp.bearer_tokens`.
    pub otlp_tokens: Vec<String>,
    /// `[cluster]`, validated (URL expanded); `None`: embedded.
    pub cluster: Option<crate::cluster::Settings>,
    /// `[shard]` and `[merge]`, validated (tokens expanded).
    pub shard: Option<crate::shard::ShardSettings>,
    pub merge: Option<crate::shard::MergeSettings>,
}

impl Config {
    /// Loads `path` (if any) and the environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
        }
        builder = builder
            .add_source(config::Environment::with_prefix("FLAGGUARD").prefix_separator("_").separator("__").try_parsing(true).source(Some(config_env())));
        let merged = builder.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        let file: ConfigFile = merged.try_deserialize().map_err(|e| ConfigError::Load(e.to_string()))?;
        Config::validate(file)
    }

    /// Validates a parsed file, collecting every error.
    pub fn validate(mut file: ConfigFile) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut addr = |field: &str, value: &str| match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(format!("{field}: {value:?} is not a socket address ({e})"));
                None
            }
        };
        let grpc = addr("otlp.grpc_listen", &file.otlp.grpc_listen);
        let http = addr("otlp.http_listen", &file.otlp.http_listen);
        let api = addr("api.listen", &file.api.listen);
        if file.otlp.max_body_bytes < 1024 {
            errors.push("otlp.max_body_bytes: must be at least 1024".into());
        }
        if file.otlp.queue_capacity == 0 {
            errors.push("otlp.queue_capacity: must be at least 1".into());
        }
        if file.correlate.max_traces == 0 {
            errors.push("correlate.max_traces: must be at least 1".into());
        }
        if file.aggregate.max_series == 0 {
            errors.push("aggregate.max_series: must be at least 1".into());
        }
        let tick = file.aggregate.tick.as_millis();
        if !(10..=1000).contains(&tick) {
            errors.push(format!("aggregate.tick: must be between 10ms and 1s, got {tick}ms"));
        }
        if file.governance.approval_expiry < std::time::Duration::from_secs(60) {
            errors.push("governance.approval_expiry: at least 1m".into());
        }
        if file.manifests.drift_interval < std::time::Duration::from_secs(1) {
            errors.push("manifests.drift_interval: at least 1s".into());
        }
        if !file.state.checkpoint_interval.is_zero() && file.state.checkpoint_interval < std::time::Duration::from_secs(1) {
            errors.push("state.checkpoint_interval: 0s (off) or at least 1s".into());
        }
        if file.aggregate.snapshot_interval < file.aggregate.tick {
            errors.push("aggregate.snapshot_interval: must not be shorter than aggregate.tick".into());
        }
        if file.act.max_attempts == 0 {
            errors.push("act.max_attempts: must be at least 1".into());
        }
        if file.act.initial_backoff.is_zero() || file.act.max_backoff < file.act.initial_backoff {
            errors.push("act.initial_backoff / act.max_backoff: need 0 < initial_backoff <= max_backoff".into());
        }
        let mut route_names = std::collections::HashSet::new();
        for (i, route) in file.act.routes.iter().enumerate() {
            route.validate(&format!("act.routes[{i}]"), &mut errors);
            if !route_names.insert(route.name.clone()) {
                errors.push(format!("act.routes[{i}].name: {:?} is used twice", route.name));
            }
        }
        if let Some(url) = &file.act.notify_url
            && let Err(e) = reqwest::Url::parse(url)
        {
            errors.push(format!("act.notify_url: {url:?} is not a URL ({e})"));
        }
        for (name, actuator) in file.actuators.iter_mut() {
            let field = format!("actuators.{name}");
            if name == crate::action::NOTIFIER {
                errors.push(format!("{field}: the name {name:?} is reserved for act.notify_url"));
            }
            actuator.validate(&field, &mut errors);
            let verify = actuator.verify();
            if !(0.0..=1.0).contains(&verify.drain_below) {
                errors.push(format!("{field}.verify.drain_below: must be in [0, 1], got {}", verify.drain_below));
            }
            if verify.drain_window.is_zero() || verify.drain_within < verify.drain_window {
                errors.push(format!("{field}.verify: need 0 < drain_window <= drain_within"));
            }
        }
        for (name, actuator) in &file.actuators {
            if let Some(fallback) = &actuator.verify().fallback
                && (fallback == name || !file.actuators.contains_key(fallback))
            {
                errors.push(format!("actuators.{name}.verify.fallback: {fallback:?} must name another configured actuator"));
            }
            // A → B → … → A would hand an unkillable flag around forever.
            let mut seen = vec![name.as_str()];
            let mut next = actuator.verify().fallback.as_deref();
            while let Some(n) = next {
                if seen.contains(&n) {
                    if n == name.as_str() && seen.len() > 1 {
                        errors.push(format!("actuators.{name}.verify.fallback: the fallbacks form a cycle ({} → {n})", seen.join(" → ")));
                    }
                    break;
                }
                seen.push(n);
                next = file.actuators.get(n).and_then(|a| a.verify().fallback.as_deref());
            }
        }
        let actuator_names: Vec<String> = file.actuators.keys().cloned().collect();
        for (name, source) in &file.alerts {
            let field = format!("alerts.{name}");
            let Some(kind) = crate::alerts::Source::parse(name) else {
                let known: Vec<&str> = crate::alerts::Source::ALL.iter().map(|s| s.name()).collect();
                errors.push(format!("{field}: unknown alert source (one of {})", known.join(", ")));
                continue;
            };
            if !source.hmac_secrets.is_empty() && !kind.signs() {
                errors.push(format!("{field}.hmac_secrets: {name} cannot sign its webhooks; use bearer_token or basic credentials"));
            }
            if source.bearer_token.is_none() && source.basic_user.is_none() && source.hmac_secrets.is_empty() {
                errors.push(format!("{field}: needs bearer_token, basic_user/basic_password or hmac_secrets (an open route would let anyone kill flags)"));
            }
            if source.basic_user.is_some() != source.basic_password.is_some() {
                errors.push(format!("{field}: basic_user and basic_password go together"));
            }
            if source.timestamp_header.is_some() && kind != crate::alerts::Source::Grafana {
                errors.push(format!("{field}.timestamp_header: only for grafana"));
            }
            // Checked after expansion: an empty secret (a `${VAR}` blanked after a rotation) would
            // let anyone sign or present it (HMAC with the empty key verifies).
            let credentials = [("bearer_token", source.bearer_token.as_ref(), MIN_ALERT_SECRET), ("basic_password", source.basic_password.as_ref(), 1)];
            let secrets = source.hmac_secrets.iter().map(|s| ("hmac_secrets", Some(s), MIN_ALERT_SECRET));
            for (key, value, min) in credentials.into_iter().chain(secrets) {
                match value.map(|v| expand_env(v)) {
                    Some(Err(var)) => errors.push(format!("{field}.{key}: environment variable {var} is not set")),
                    Some(Ok(v)) if v.chars().count() < min => {
                        errors.push(format!("{field}.{key}: must be at least {min} characters after expansion (an empty or short secret lets anyone in)"))
                    }
                    _ => {}
                }
            }
            if source.allow_direct {
                match &source.direct_actuator {
                    None => errors.push(format!("{field}.direct_actuator: required with allow_direct")),
                    Some(a) if source.direct_mode == crate::rules::Mode::Enforce && !actuator_names.contains(a) => {
                        errors.push(format!("{field}.direct_actuator: {a:?} is not a configured actuator"))
                    }
                    _ => {}
                }
            }
        }
        let mut tokens = Vec::new();
        for (i, t) in file.api.tokens.iter().enumerate() {
            let field = format!("api.tokens[{i}].token");
            if !t.token.contains("${") {
                errors.push(format!("{field}: give the token as ${{VAR}} (read from the environment), not literally"));
            } else {
                match expand_env(&t.token) {
                    Ok(secret) if secret.len() >= 16 => tokens.push(crate::api::auth::TokenEntry {
                        name: t.name.clone(),
                        role: t.role,
                        secret,
                        scope: crate::api::auth::Scope { flags: t.flags.clone(), environments: t.environments.clone(), teams: t.teams.clone() },
                    }),
                    Ok(_) => errors.push(format!("{field}: the token of {} is shorter than 16 characters", t.name)),
                    Err(var) => errors.push(format!("{field}: environment variable {var} is not set")),
                }
            }
        }
        if let Some(path) = &file.api.tokens_file {
            match std::fs::read_to_string(path) {
                Ok(text) => match crate::api::auth::parse_file(&text) {
                    Ok(mut parsed) => tokens.append(&mut parsed),
                    Err(e) => errors.push(format!("api.tokens_file: {}: {e}", path.display())),
                },
                Err(e) => errors.push(format!("api.tokens_file: {}: {e}", path.display())),
            }
        }
        let mut otlp_tokens = Vec::new();
        for (i, t) in file.otlp.bearer_tokens.iter().enumerate() {
            let field = format!("otlp.bearer_tokens[{i}]");
            match expand_env(t) {
                _ if !t.contains("${") => errors.push(format!("{field}: give the token as ${{VAR}} (read from the environment), not literally")),
                Ok(secret) if secret.len() >= 16 => otlp_tokens.push(secret),
                Ok(_) => errors.push(format!("{field}: the token is shorter than 16 characters")),
                Err(var) => errors.push(format!("{field}: environment variable {var} is not set")),
            }
        }
        for (field, tls) in [("otlp.tls", &file.otlp.tls), ("api.tls", &file.api.tls)] {
            if let Some(Err(e)) = tls.as_ref().map(crate::tls::load) {
                errors.push(format!("{field}: {e}"));
            }
            if tls.as_ref().is_some_and(|t| t.reload_interval < std::time::Duration::from_millis(100)) {
                errors.push(format!("{field}.reload_interval: at least 100ms"));
            }
        }
        if let Some(Err(e)) = file.act.ca_file.as_deref().map(crate::tls::read_certs) {
            errors.push(format!("act.ca_file: {e}"));
        }
        if let Some(api) = api
            && !api.ip().is_loopback()
            && tokens.is_empty()
            && !file.api.allow_unauthenticated
        {
            errors.push(format!(
                "api.listen: {api} is reachable from other hosts but no api.tokens are configured; anyone who reaches it could restore killed flags \
                 (configure tokens, listen on loopback, or set api.allow_unauthenticated = true behind an authenticating proxy)"
            ));
        }
        if file.api.anonymous_role.is_some_and(|r| r > crate::api::auth::Role::Viewer) && !file.api.allow_unauthenticated {
            errors.push("api.anonymous_role: at most viewer (anyone could act otherwise), unless api.allow_unauthenticated = true".into());
        }
        let mut names = std::collections::HashSet::new();
        for t in &tokens {
            if !names.insert(t.name.clone()) {
                errors.push(format!("api.tokens: the name {:?} is used twice", t.name));
            }
            if let Some(bad) = t.scope.flags.iter().find(|g| globset::Glob::new(g).is_err()) {
                errors.push(format!("api.tokens: the flags of {} ({bad:?}) are not a glob", t.name));
            }
        }
        let cluster = file.cluster.as_ref().and_then(|c| c.validate(file.act.timeout, &mut errors));
        let shard = file.shard.as_ref().and_then(|s| s.validate(&mut errors));
        let merge = file.merge.as_ref().and_then(|m| m.validate(&mut errors));
        if file.shard.is_some() && file.merge.is_some() {
            errors.push("shard, merge: an instance is a shard or an evaluator, not both".into());
        }
        if file.shard.is_some() && file.cluster.is_some() {
            // A shard judges nothing: holding the lease, it would keep the evaluators from acting.
            errors.push("shard, cluster: a shard takes no part in the lease; give the [cluster] section to the evaluators only".into());
        }
        match (grpc, http, api, errors.is_empty()) {
            (Some(grpc_listen), Some(http_listen), Some(api_listen), true) => {
                Ok(Config { file, grpc_listen, http_listen, api_listen, tokens, otlp_tokens, cluster, shard, merge })
            }
            _ => Err(ConfigError::Invalid(errors)),
        }
    }

    /// Each actuator's verification settings.
    pub fn verify_settings(&self) -> std::collections::HashMap<String, file::VerifyConfig> {
        self.file.actuators.iter().map(|(name, a)| (name.clone(), a.verify().clone())).collect()
    }

    /// Names of the configured actuators.
    pub fn actuator_names(&self) -> std::collections::BTreeSet<String> {
        self.file.actuators.keys().cloned().collect()
    }
}

/// Top-level configuration keys that `FLAGGUARD_*` variables may set.
const TOP_LEVEL: [&str; 14] =
    ["data_dir", "rules_dir", "otlp", "correlate", "aggregate", "rules", "act", "api", "log", "actuators", "cluster", "state", "shard", "merge"];

/// The `FLAGGUARD_*` environment variables that address configuration fields. Others with the
/// prefix (`FLAGGUARD_CONFIG`, the CLI's own; test-harness switches) are not configuration.
fn config_env() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(name, _)| {
            let Some(rest) = name.strip_prefix("FLAGGUARD_") else { return false };
            let first = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
            TOP_LEVEL.contains(&first.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_out_sections_are_checked_together() {
        let shard = || crate::shard::ShardConfig { stream_listen: "127.0.0.1:4320".into(), token: None, buffer_bytes: 64 << 20 };
        let merge = |shards: Vec<&str>| crate::shard::MergeConfig {
            shards: shards.into_iter().map(Into::into).collect(),
            token: None,
            reconnect: std::time::Duration::from_secs(1),
        };
        let errors = |file: ConfigFile| match Config::validate(file) {
            Err(ConfigError::Invalid(errors)) => errors,
            other => panic!("expected errors, got {other:?}"),
        };
        let both = ConfigFile { shard: Some(shard()), merge: Some(merge(vec!["http://a:1"])), ..ConfigFile::default() };
        assert!(errors(both).iter().any(|e| e.starts_with("shard, merge:")));
        let cluster = crate::cluster::ClusterConfig {
            instance_id: "s0".into(),
            postgres_url: "postgres://x@127.0.0.1/db".into(),
            lease_ttl: std::time::Duration::from_secs(8),
            renew_interval: std::time::Duration::from_secs(2),
            acquire_interval: std::time::Duration::from_secs(1),
        };
        let leased = ConfigFile { shard: Some(shard()), cluster: Some(cluster), ..ConfigFile::default() };
        assert!(errors(leased).iter().any(|e| e.starts_with("shard, cluster:")), "a shard must not take the lease");
        let twice = ConfigFile { merge: Some(merge(vec!["http://a:1", "http://a:1", "ftp://b"])), ..ConfigFile::default() };
        let e = errors(twice);
        assert!(e.iter().any(|e| e.contains("named twice")) && e.iter().any(|e| e.starts_with("merge.shards[2]")), "{e:?}");
        assert!(Config::validate(ConfigFile { merge: Some(merge(vec!["http://a:1"])), ..ConfigFile::default() }).is_ok());
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::validate(ConfigFile::default()).unwrap();
        assert_eq!(config.grpc_listen.port(), 4317);
        assert_eq!(config.http_listen.port(), 4318);
        assert!(config.api_listen.ip().is_loopback(), "API binds loopback until access control exists");
        assert!(config.file.actuators.is_empty(), "dry-run until an actuator is configured");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let toml = r#"
            [otlp]
            grpc_listen = "nope"
            queue_capacity = 0
            [aggregate]
            tick = "5s"
            [actuators.flags]
            type = "webhook"
            url = "http://127.0.0.1/v1/flags/{flag}"
            headers = { Authorization = "Bearer ${FG_TEST_SURELY_UNSET}" }
            body = "{not json"
        "#;
        let file: ConfigFile = toml_from_str(toml);
        let Err(ConfigError::Invalid(errors)) = Config::validate(file) else { panic!("must be invalid") };
        let all = errors.join("\n");
        for needle in ["otlp.grpc_listen", "otlp.queue_capacity", "aggregate.tick", "FG_TEST_SURELY_UNSET", "actuators.flags.body"] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "[otlp]\ngrpc_lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("grpc_lisen"), "{err}");
    }

    #[test]
    fn non_config_variables_with_the_prefix_are_ignored() {
        // SAFETY: variables no other test reads.
        unsafe {
            std::env::set_var("FLAGGUARD_CONFIG", "/nonexistent.toml");
            std::env::set_var("FLAGGUARD_SKIP_NODE", "1");
        }
        let env = config_env();
        assert!(!env.contains_key("FLAGGUARD_CONFIG") && !env.contains_key("FLAGGUARD_SKIP_NODE"));
        assert!(Config::load(None).is_ok());
    }

    #[test]
    fn env_expansion() {
        // SAFETY: single-threaded use of a variable no other test reads.
        unsafe { std::env::set_var("FG_TEST_TOKEN_X", "s3cret") };
        assert_eq!(expand_env("Bearer ${FG_TEST_TOKEN_X}").unwrap(), "Bearer s3cret");
        assert_eq!(expand_env("${NOPE_NOT_SET_123}").unwrap_err(), "NOPE_NOT_SET_123");
    }

    /// Review finding 8: an alert HMAC secret blanked after a rotation (`${VAR}` set but empty)
    /// made the route open — HMAC with the empty key verifies. Refused at start.
    #[test]
    fn empty_or_short_alert_secrets_are_refused() {
        // SAFETY: variables no other test reads.
        unsafe {
            std::env::set_var("FG_T_EMPTY", "");
            std::env::set_var("FG_T_SHORT", "short");
        }
        for (key, value) in [("hmac_secrets", "[\"${FG_T_EMPTY}\"]"), ("hmac_secrets", "[\"${FG_T_SHORT}\"]"), ("bearer_token", "\"${FG_T_EMPTY}\"")] {
            let file = toml_from_str(&format!("[alerts.generic]\n{key} = {value}\n"));
            let err = Config::validate(file).unwrap_err().to_string();
            assert!(err.contains(&format!("alerts.generic.{key}: must be at least 16 characters")), "{err}");
        }
    }

    fn toml_from_str(s: &str) -> ConfigFile {
        config::Config::builder().add_source(config::File::from_str(s, config::FileFormat::Toml)).build().unwrap().try_deserialize().unwrap()
    }
}

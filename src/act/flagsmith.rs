//! The Flagsmith actuator (Admin API; tested against a local server that implements the
//! documented contract, not against Flagsmith itself).
//!
//! - `api = "classic"`: read `GET /api/v1/environments/{key}/featurestates/?feature_name=…`
//!   (the environment default is the state without segment or identity), then
//!   `PATCH …/featurestates/{id}/ {"enabled": false}` (idempotent). Feature Versioning v2
//!   environments refuse it with 400: configure `api = "versioned"` for those.
//! - `api = "versioned"`, and every segment (cohort) kill: `POST
//!   /api/experiments/environments/{key}/update-flag-v1/` with the feature name, `enabled`
//!   and the current value (kept as it was), plus `"segment":{"id":…}` for a cohort. On v2
//!   environments each call publishes a version, so the state is read first and an unchanged
//!   flag is not written again.
//! - A slice is a segment override: `segments = { "region=eu-west" = 456 }`.
//! - Authorization: `Api-Key <organisation key>`.
//! - Rollout percentages (multivariate allocations) are not implemented: such a plan escalates.

use super::verify::VerifyConfig;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::http::{JsonApi, environment, none, segment};
use super::{ActError, ActionRequest, Actuator, Applied, FlagState};

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

impl FlagsmithConfig {
    /// Every problem of these settings, as `field.key: message`.
    pub fn validate(&self, field: &str, errors: &mut Vec<String>) {
        super::http::check_api(errors, field, &self.url, &self.token);
        if self.environments.is_empty() {
            errors.push(format!("{field}.environments: map each telemetry environment to its Flagsmith environment key"));
        }
        for key in self.segments.keys() {
            if !key.contains('=') {
                errors.push(format!("{field}.segments.{key}: keys are DIMENSION=VALUE, e.g. \"region=eu-west\""));
            }
        }
    }
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

pub struct Flagsmith {
    api: JsonApi,
    config: FlagsmithConfig,
}

impl Flagsmith {
    pub fn new(config: &FlagsmithConfig, client: reqwest::Client) -> Result<Flagsmith, String> {
        let token = super::http::token(&config.token)?;
        Ok(Flagsmith { api: JsonApi::new("flagsmith", &config.url, ("authorization", format!("Api-Key {token}")), client), config: config.clone() })
    }

    fn env_key(&self, request: &ActionRequest) -> Result<String, ActError> {
        // Flagsmith maps environments to keys itself, so no name mapping here.
        let env = environment(request, &std::collections::BTreeMap::new(), self.config.default_environment.as_ref())?;
        self.config
            .environments
            .get(&env)
            .cloned()
            .ok_or_else(|| ActError::Permanent(format!("no Flagsmith environment key is configured for environment {env:?} (environments.{env})")))
    }

    fn segment_id(&self, request: &ActionRequest) -> Result<Option<u64>, ActError> {
        let slice = request.slice();
        match slice.as_slice() {
            [] => Ok(None),
            [(dim, value)] => self
                .config
                .segments
                .get(&format!("{dim}={value}"))
                .copied()
                .map(Some)
                .ok_or_else(|| ActError::Permanent(format!("no segment is configured for {dim}={value} (segments.\"{dim}={value}\")"))),
            _ => Err(ActError::Permanent("a kill limited to several dimensions needs one segment for them; not supported".into())),
        }
    }

    /// The environment-default feature state of the flag.
    async fn feature_state(&self, env_key: &str, request: &ActionRequest) -> Result<Value, ActError> {
        let page = self.api.get(&format!("/api/v1/environments/{}/featurestates/?feature_name={}", segment(env_key), segment(request.key()))).await?;
        page.get("results")
            .and_then(Value::as_array)
            .and_then(|r| r.iter().find(|s| s.get("feature_segment").is_none_or(Value::is_null) && s.get("identity").is_none_or(Value::is_null)))
            .cloned()
            .ok_or_else(|| ActError::Permanent(format!("flag {:?} has no feature state in this environment", request.key())))
    }

    /// What a kill saves: the environment default's `enabled` (and the segment killed).
    async fn saved_state(&self, request: &ActionRequest) -> Result<(Value, Value), ActError> {
        let env_key = self.env_key(request)?;
        let segment_id = self.segment_id(request)?;
        let state = self.feature_state(&env_key, request).await?;
        let was = state.get("enabled").and_then(Value::as_bool);
        Ok((json!({ "serving": was.unwrap_or(true), "enabled": was, "segment": segment_id }), state))
    }

    async fn set_enabled(&self, request: &ActionRequest, enabled: bool, key: &str) -> Result<Applied, ActError> {
        let env_key = self.env_key(request)?;
        let segment_id = self.segment_id(request)?;
        let (before, state) = self.saved_state(request).await?;
        let was = state.get("enabled").and_then(Value::as_bool);
        if segment_id.is_none() && was == Some(enabled) {
            return Ok(Applied { before: Some(before), after: Some(json!({ "enabled": enabled, "changed": false })) });
        }
        if self.config.api == FlagsmithApi::Classic && segment_id.is_none() {
            let id = state.get("id").and_then(Value::as_u64).ok_or_else(|| ActError::Permanent("the feature state has no id".into()))?;
            let body = json!({ "enabled": enabled });
            self.api
                .call(
                    Method::PATCH,
                    &format!("/api/v1/environments/{}/featurestates/{id}/", segment(&env_key)),
                    Some(("application/json", &body)),
                    Some(key),
                    none,
                )
                .await?;
        } else {
            let mut body = json!({ "feature": { "name": request.key() }, "enabled": enabled, "value": typed_value(state.get("feature_state_value")) });
            if let Some(id) = segment_id {
                body["segment"] = json!({ "id": id });
            }
            self.api
                .call(
                    Method::POST,
                    &format!("/api/experiments/environments/{}/update-flag-v1/", segment(&env_key)),
                    Some(("application/json", &body)),
                    Some(key),
                    none,
                )
                .await?;
        }
        Ok(Applied { before: Some(before), after: Some(json!({ "enabled": enabled, "segment": segment_id, "changed": true })) })
    }
}

/// The `update-flag` value object for a feature state's current value.
pub fn typed_value(value: Option<&Value>) -> Value {
    match value {
        Some(Value::Bool(b)) => json!({ "type": "boolean", "value": b.to_string() }),
        Some(Value::Number(n)) if n.is_i64() => json!({ "type": "integer", "value": n.to_string() }),
        Some(Value::String(s)) => json!({ "type": "string", "value": s }),
        Some(Value::Number(n)) => json!({ "type": "string", "value": n.to_string() }),
        _ => json!({ "type": "string", "value": "" }),
    }
}

#[async_trait::async_trait]
impl Actuator for Flagsmith {
    fn unexpressible(&self, scope: &[(String, String)]) -> Option<String> {
        let slice: Vec<&(String, String)> = scope.iter().filter(|(k, _)| k != "environment").collect();
        match slice.as_slice() {
            [] => None,
            [(dim, value)] if self.config.segments.contains_key(&format!("{dim}={value}")) => None,
            [(dim, value)] => Some(format!("no Flagsmith segment is configured for {dim}={value}")),
            _ => Some("a slice of several dimensions has no Flagsmith segment".into()),
        }
    }

    fn default_environment(&self) -> Option<&str> {
        self.config.default_environment.as_deref()
    }

    async fn snapshot(&self, request: &ActionRequest) -> Result<Option<Value>, ActError> {
        Ok(Some(self.saved_state(request).await?.0))
    }

    async fn kill(&self, request: &ActionRequest, key: &str) -> Result<Applied, ActError> {
        self.set_enabled(request, false, key).await
    }

    async fn restore(&self, request: &ActionRequest, key: &str) -> Result<Applied, ActError> {
        let was = request.saved.as_ref().and_then(|s| s.get("enabled")).and_then(Value::as_bool).unwrap_or(true);
        self.set_enabled(request, was, key).await
    }

    async fn read(&self, request: &ActionRequest) -> Result<FlagState, ActError> {
        if self.segment_id(request)?.is_some() {
            // A segment override's state is not in the environment's feature-state list.
            return Ok(FlagState::unknown());
        }
        let env_key = self.env_key(request)?;
        let page = self.api.get(&format!("/api/v1/environments/{}/featurestates/?feature_name={}", segment(&env_key), segment(request.key()))).await?;
        let state = self.feature_state(&env_key, request).await?;
        let enabled = state.get("enabled").and_then(Value::as_bool);
        // Segment and identity overrides win over the environment default: an environment
        // kill with an enabled override still serves it there, so it is not a kill.
        let overrides: Vec<&Value> = page
            .get("results")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter(|s| !s.get("feature_segment").is_none_or(Value::is_null) || !s.get("identity").is_none_or(Value::is_null))
                    .filter(|s| s.get("enabled").and_then(Value::as_bool) == Some(true))
                    .collect()
            })
            .unwrap_or_default();
        let killed = enabled.map(|e| !e && overrides.is_empty());
        Ok(FlagState {
            killed,
            rollout: None,
            variants: Vec::new(),
            detail: json!({ "enabled": enabled, "id": state.get("id"), "enabled_overrides": overrides }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_type() {
        assert_eq!(typed_value(Some(&json!(true))), json!({"type": "boolean", "value": "true"}));
        assert_eq!(typed_value(Some(&json!(3))), json!({"type": "integer", "value": "3"}));
        assert_eq!(typed_value(Some(&json!("blue"))), json!({"type": "string", "value": "blue"}));
    }
}

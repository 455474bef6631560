//! The LaunchDarkly actuator (REST API v2, semantic patch; tested against a local server that
//! implements the documented contract, not against LaunchDarkly itself).
//!
//! - Kill: `PATCH /api/v2/flags/{project}/{flag}` with `Content-Type: application/json;
//!   domain-model=launchdarkly.semanticpatch` (without it the body is read as JSON Patch → 400)
//!   and `{"environmentKey", "comment", "instructions":[{"kind":"turnFlagOff"}]}`; the comment
//!   carries the rule and its evidence. Repeating it is a no-op (documented).
//! - 405 = approval required in that environment: a kill is permanent (escalate, never retry:
//!   the kill token needs the bypass); a rollout change (a promotion, not an emergency) creates
//!   LaunchDarkly's own approval request for the same instructions instead
//!   (`POST /api/v2/projects/{p}/flags/{f}/environments/{e}/approval-requests`) and ends
//!   `refused`, naming it;
//!   409 = a concurrent change: retried; 429: retried after `Retry-After` or `X-Ratelimit-Reset`.
//! - Rollout: `updateFallthroughVariationOrRollout` with weights in thousandths of a percent
//!   summing to 100000 (variation ids read from the flag first).
//! - Slices cannot be expressed (a rule with `per:` escalates unless `on_unscoped: widen`).
//! - Authorization is the bare access token (no scheme).

use super::verify::VerifyConfig;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::http::{JsonApi, environment, segment};
use super::{ActError, ActionRequest, Actuator, Applied, FlagState};

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

impl LaunchDarklyConfig {
    /// Every problem of these settings, as `field.key: message`.
    pub fn validate(&self, field: &str, errors: &mut Vec<String>) {
        super::http::check_api(errors, field, &self.url, &self.token);
        if self.project.is_empty() {
            errors.push(format!("{field}.project: must not be empty"));
        }
    }
}

fn default_ld_url() -> String {
    "https://app.launchdarkly.com".into()
}

pub const SEMANTIC_PATCH: &str = "application/json; domain-model=launchdarkly.semanticpatch";

pub struct LaunchDarkly {
    api: JsonApi,
    config: LaunchDarklyConfig,
}

impl LaunchDarkly {
    pub fn new(config: &LaunchDarklyConfig, client: reqwest::Client) -> Result<LaunchDarkly, String> {
        let token = super::http::token(&config.token)?;
        let api = JsonApi::new("launchdarkly", &config.url, ("authorization", token), client).with_header("LD-API-Version", "20240415");
        Ok(LaunchDarkly { api, config: config.clone() })
    }

    fn path(&self, request: &ActionRequest) -> String {
        format!("/api/v2/flags/{}/{}", segment(&self.config.project), segment(request.key()))
    }

    fn env(&self, request: &ActionRequest) -> Result<String, ActError> {
        environment(request, &self.config.environments, self.config.default_environment.as_ref())
    }

    async fn flag(&self, request: &ActionRequest, env: &str) -> Result<Value, ActError> {
        self.api.get(&format!("{}?env={}", self.path(request), segment(env))).await
    }

    async fn patch(&self, request: &ActionRequest, env: &str, instructions: Value, key: &str) -> Result<Value, ActError> {
        let body = json!({ "environmentKey": env, "comment": request.comment(), "instructions": instructions });
        Ok(self.api.call(Method::PATCH, &self.path(request), Some((SEMANTIC_PATCH, &body)), Some(key), special).await?.body)
    }

    /// A promotion in an environment that requires approvals: LaunchDarkly's approval request
    /// for the same instructions (idempotent by `key`). Returns its id.
    async fn approval_request(&self, request: &ActionRequest, env: &str, instructions: Value, key: &str) -> Result<String, ActError> {
        let path =
            format!("/api/v2/projects/{}/flags/{}/environments/{}/approval-requests", segment(&self.config.project), segment(request.key()), segment(env));
        let body = json!({ "description": request.comment(), "instructions": instructions });
        let reply = self.api.call(Method::POST, &path, Some(("application/json", &body)), Some(key), special).await?.body;
        Ok(reply.get("_id").and_then(Value::as_str).unwrap_or("?").to_owned())
    }
}

/// A rollout change's special statuses: 405 means "ask for approval" (see the module).
fn special_rollout(status: StatusCode, body: &str) -> Option<ActError> {
    match status.as_u16() {
        405 => Some(ActError::Refused("approval required".into())),
        _ => special(status, body),
    }
}

/// LaunchDarkly's statuses that differ from the generic classification.
fn special(status: StatusCode, body: &str) -> Option<ActError> {
    let snippet: String = body.chars().take(300).collect();
    match status.as_u16() {
        405 => Some(ActError::Permanent(format!("HTTP 405: approval required in this environment; the change needs an approval request ({snippet})"))),
        409 => Some(ActError::transient(format!("HTTP 409: conflicting concurrent change ({snippet})"))),
        _ => None,
    }
}

fn is_on(flag: &Value, env: &str) -> Option<bool> {
    flag.pointer(&format!("/environments/{env}/on")).and_then(Value::as_bool)
}

/// The index of the treatment's variation: its value is `true`, or its value or name equals a
/// treatment variant.
fn treatment_variation(flag: &Value, treatment: &[String]) -> Option<usize> {
    let variations = flag.get("variations")?.as_array()?;
    variations.iter().position(|v| {
        let value = v.get("value");
        let name = v.get("name").and_then(Value::as_str);
        treatment.iter().any(|t| value.and_then(Value::as_str) == Some(t) || name == Some(t.as_str()) || (value == Some(&Value::Bool(true)) && t != "false"))
    })
}

/// Rollout weights: the treatment gets `percent`, the control (or the other variation of a
/// two-way flag) the rest, any others 0; thousandths of a percent, summing to 100000.
pub fn weights(flag: &Value, treatment: &[String], control: Option<&str>, percent: f64) -> Result<serde_json::Map<String, Value>, ActError> {
    let variations = flag.get("variations").and_then(Value::as_array).ok_or_else(|| ActError::Permanent("the flag has no variations".into()))?;
    let t = treatment_variation(flag, treatment).ok_or_else(|| ActError::Permanent(format!("no variation matches the treatment {treatment:?}")))?;
    let c = match control {
        Some(c) => variations.iter().position(|v| v.get("value").and_then(Value::as_str) == Some(c) || v.get("name").and_then(Value::as_str) == Some(c)),
        None => None,
    }
    .or_else(|| (variations.len() == 2).then(|| 1 - t))
    .ok_or_else(|| ActError::Permanent("which variation gets the rest of the rollout is ambiguous: set the rule's control".into()))?;
    let treated = (percent * 1000.0).round() as i64;
    let mut out = serde_json::Map::new();
    for (i, v) in variations.iter().enumerate() {
        let id = v.get("_id").and_then(Value::as_str).ok_or_else(|| ActError::Permanent("a variation has no _id".into()))?;
        let w = if i == t {
            treated
        } else if i == c {
            100_000 - treated
        } else {
            0
        };
        out.insert(id.to_owned(), json!(w));
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Actuator for LaunchDarkly {
    fn unexpressible(&self, scope: &[(String, String)]) -> Option<String> {
        scope
            .iter()
            .find(|(dim, _)| dim != "environment")
            .map(|(dim, value)| format!("a LaunchDarkly kill is per flag and environment; {dim}={value} cannot be killed alone"))
    }

    fn default_environment(&self) -> Option<&str> {
        self.config.default_environment.as_deref()
    }

    async fn snapshot(&self, request: &ActionRequest) -> Result<Option<Value>, ActError> {
        let env = self.env(request)?;
        let on = is_on(&self.flag(request, &env).await?, &env);
        Ok(Some(json!({ "serving": on.unwrap_or(true), "on": on, "environment": env })))
    }

    async fn kill(&self, request: &ActionRequest, key: &str) -> Result<Applied, ActError> {
        let env = self.env(request)?;
        let before = self.snapshot(request).await?;
        let reply = self.patch(request, &env, json!([{ "kind": "turnFlagOff" }]), key).await?;
        Ok(Applied { before, after: Some(json!({ "on": is_on(&reply, &env), "version": reply.get("_version"), "comment": request.comment() })) })
    }

    async fn restore(&self, request: &ActionRequest, key: &str) -> Result<Applied, ActError> {
        let env = self.env(request)?;
        if request.saved.as_ref().and_then(|s| s.get("on")).and_then(Value::as_bool) == Some(false) {
            return Ok(Applied { before: None, after: Some(json!({ "on": false, "note": "the flag was off before the kill" })) });
        }
        let reply = self.patch(request, &env, json!([{ "kind": "turnFlagOn" }]), key).await?;
        Ok(Applied { before: request.saved.clone(), after: Some(json!({ "on": is_on(&reply, &env) })) })
    }

    async fn set_rollout(&self, request: &ActionRequest, percent: f64, key: &str) -> Result<Applied, ActError> {
        let env = self.env(request)?;
        let flag = self.flag(request, &env).await?;
        let weights = weights(&flag, &request.treatment, request.control.as_deref(), percent)?;
        let before = flag.pointer(&format!("/environments/{env}/fallthrough")).cloned();
        let instruction = json!([{ "kind": "updateFallthroughVariationOrRollout", "rolloutContextKind": "user", "rolloutWeights": weights }]);
        let body = json!({ "environmentKey": env, "comment": request.comment(), "instructions": instruction });
        match self.api.call(Method::PATCH, &self.path(request), Some((SEMANTIC_PATCH, &body)), Some(key), special_rollout).await {
            Ok(_) => Ok(Applied { before, after: Some(json!({ "rolloutWeights": weights })) }),
            Err(ActError::Refused(_)) => {
                let id = self.approval_request(request, &env, instruction, key).await?;
                Err(ActError::Refused(format!(
                    "LaunchDarkly requires approval in {env}: approval request {id} was created there; the rollout changes to {percent} % once it is approved and applied"
                )))
            }
            Err(e) => Err(e),
        }
    }

    async fn read(&self, request: &ActionRequest) -> Result<FlagState, ActError> {
        let env = self.env(request)?;
        let flag = self.flag(request, &env).await?;
        let rollout = treatment_variation(&flag, &request.treatment).and_then(|t| {
            let variations = flag.pointer(&format!("/environments/{env}/fallthrough/rollout/variations"))?.as_array()?;
            let w = variations.iter().find(|v| v.get("variation").and_then(Value::as_u64) == Some(t as u64))?.get("weight")?.as_f64()?;
            Some(w / 1000.0)
        });
        Ok(FlagState {
            killed: is_on(&flag, &env).map(|on| !on),
            rollout,
            variants: Vec::new(),
            detail: json!({ "environment": env, "on": is_on(&flag, &env), "version": flag.get("_version") }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_100000() {
        let flag = json!({"variations": [{"_id": "t", "value": true}, {"_id": "f", "value": false}]});
        let w = weights(&flag, &["on".into()], None, 12.5).unwrap();
        assert_eq!((w["t"].as_i64(), w["f"].as_i64()), (Some(12_500), Some(87_500)));
        let three = json!({"variations": [{"_id": "a", "value": "red"}, {"_id": "b", "value": "blue"}, {"_id": "c", "value": "green"}]});
        assert!(weights(&three, &["blue".into()], None, 10.0).is_err(), "ambiguous without a control");
        let w = weights(&three, &["blue".into()], Some("red"), 10.0).unwrap();
        assert_eq!((w["a"].as_i64(), w["b"].as_i64(), w["c"].as_i64()), (Some(90_000), Some(10_000), Some(0)));
    }

    #[test]
    fn approval_required_is_permanent_and_conflict_is_retried() {
        assert!(matches!(special(StatusCode::METHOD_NOT_ALLOWED, ""), Some(ActError::Permanent(m)) if m.contains("approval")));
        assert!(matches!(special(StatusCode::CONFLICT, ""), Some(ActError::Transient { .. })));
        assert!(special(StatusCode::OK, "").is_none());
    }
}

//! The Unleash actuator (admin API, verified against unleash-server 8.2.0).
//!
//! - Kill of a whole environment: `POST …/environments/{env}/off` (idempotent: one event).
//! - Kill of a slice (`per: [region]`): disable (`PATCH [{"op":"replace","path":"/disabled",
//!   "value":true}]`) exactly the strategies whose constraint on the slice's context field
//!   (`slices = { region = "region" }`) is `IN [value]`. Strategies are OR-ed: when another
//!   enabled strategy still matches the cohort (a catch-all), the cohort is NOT off — that is
//!   reported as a permanent failure (escalated) naming the strategy, never hidden.
//! - Restore: re-enable what the kill disabled; a whole-environment restore re-enables the
//!   strategies that were enabled before and refuses to turn the environment on with no enabled
//!   strategy, because Unleash then adds a 100 % strategy (a restore must never become a full
//!   rollout).
//! - Rollout: `PATCH /parameters/rollout` of the one `flexibleRollout` strategy serving the
//!   target; Unleash does not range-check it, flagguard does (integer 0–100); an unchanged value
//!   is not written again (each PATCH is a new event in Unleash's audit log).

use super::verify::VerifyConfig;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::http::{JsonApi, environment, none, segment};
use super::{ActError, ActionRequest, Actuator, Applied, FlagState};

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

impl UnleashConfig {
    /// Every problem of these settings, as `field.key: message`.
    pub fn validate(&self, field: &str, errors: &mut Vec<String>) {
        super::http::check_api(errors, field, &self.url, &self.token);
        if self.project.is_empty() {
            errors.push(format!("{field}.project: must not be empty"));
        }
    }
}

fn default_project() -> String {
    "default".into()
}

pub struct Unleash {
    api: JsonApi,
    config: UnleashConfig,
}

impl Unleash {
    pub fn new(config: &UnleashConfig, client: reqwest::Client) -> Result<Unleash, String> {
        let token = super::http::token(&config.token)?;
        Ok(Unleash { api: JsonApi::new("unleash", &config.url, ("authorization", token), client), config: config.clone() })
    }

    fn env_path(&self, request: &ActionRequest) -> Result<String, ActError> {
        let env = environment(request, &self.config.environments, self.config.default_environment.as_ref())?;
        Ok(format!("/api/admin/projects/{}/features/{}/environments/{}", segment(&self.config.project), segment(request.key()), segment(&env)))
    }

    /// The environment's state: `{enabled, strategies: [...]}`.
    async fn state(&self, path: &str) -> Result<Value, ActError> {
        self.api.get(path).await
    }

    async fn set_disabled(&self, path: &str, id: &str, disabled: bool, key: &str) -> Result<(), ActError> {
        let patch = json!([{ "op": "replace", "path": "/disabled", "value": disabled }]);
        self.api.call(Method::PATCH, &format!("{path}/strategies/{}", segment(id)), Some(("application/json", &patch)), Some(key), none).await?;
        Ok(())
    }

    /// The request's slice as (context field, value); a dimension without a field is an error.
    fn cohort(&self, request: &ActionRequest) -> Result<Vec<(String, String)>, ActError> {
        request
            .slice()
            .into_iter()
            .map(|(dim, value)| match self.config.slices.get(&dim) {
                Some(field) => Ok((field.clone(), value)),
                None => Err(ActError::Permanent(format!("no context field is configured for {dim} (slices.{dim})"))),
            })
            .collect()
    }
}

fn strategies(state: &Value) -> Vec<&Value> {
    state.get("strategies").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

fn enabled(strategy: &Value) -> bool {
    !strategy.get("disabled").and_then(Value::as_bool).unwrap_or(false)
}

fn id(strategy: &Value) -> String {
    strategy.get("id").and_then(Value::as_str).unwrap_or("").to_owned()
}

fn constraints<'a>(strategy: &'a Value, field: &str) -> Vec<&'a Value> {
    strategy
        .get("constraints")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter(|c| c.get("contextName").and_then(Value::as_str) == Some(field)).collect())
        .unwrap_or_default()
}

fn values(constraint: &Value) -> Vec<&str> {
    constraint.get("values").and_then(Value::as_array).map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Whether a strategy serves exactly the cohort: for every field, a constraint `IN [value]`.
pub fn serves_exactly(strategy: &Value, cohort: &[(String, String)]) -> bool {
    !cohort.is_empty()
        && cohort.iter().all(|(field, value)| {
            constraints(strategy, field).iter().any(|c| {
                c.get("operator").and_then(Value::as_str) == Some("IN")
                    && !c.get("inverted").and_then(Value::as_bool).unwrap_or(false)
                    && values(c) == [value.as_str()]
            })
        })
}

/// Whether a strategy may serve (some of) the cohort: no constraint on a field excludes it.
/// Constraints flagguard cannot judge (other operators) count as "may serve": conservative.
pub fn may_serve(strategy: &Value, cohort: &[(String, String)]) -> bool {
    cohort.iter().all(|(field, value)| {
        constraints(strategy, field).iter().all(|c| {
            let inverted = c.get("inverted").and_then(Value::as_bool).unwrap_or(false);
            match c.get("operator").and_then(Value::as_str) {
                Some("IN") => values(c).contains(&value.as_str()) != inverted,
                Some("NOT_IN") => values(c).contains(&value.as_str()) == inverted,
                _ => true,
            }
        })
    })
}

/// What a kill saves of `state` for its restore: a whole environment, whether it was enabled
/// and which strategies were; a slice, the enabled strategies that serve exactly the cohort
/// (all of them, read before the first call, so a kill interrupted between strategies still
/// restores every one).
fn saved_state(state: &Value, cohort: &[(String, String)]) -> Value {
    let was_enabled = state.get("enabled").and_then(Value::as_bool).unwrap_or(false);
    if cohort.is_empty() {
        let saved: Vec<Value> = strategies(state).iter().map(|s| json!({ "id": id(s), "disabled": !enabled(s) })).collect();
        return json!({ "serving": was_enabled, "enabled": was_enabled, "strategies": saved });
    }
    let serving: Vec<String> = strategies(state).into_iter().filter(|s| enabled(s) && serves_exactly(s, cohort)).map(id).collect();
    json!({ "serving": !cohort_off(state, cohort), "enabled": was_enabled, "disabled_strategies": serving })
}

/// Whether the cohort is off in `state`.
pub fn cohort_off(state: &Value, cohort: &[(String, String)]) -> bool {
    !state.get("enabled").and_then(Value::as_bool).unwrap_or(false) || !strategies(state).into_iter().any(|s| enabled(s) && may_serve(s, cohort))
}

/// The one enabled `flexibleRollout` strategy serving the target (exactly the cohort, or
/// without constraints for a whole environment).
fn rollout_strategy<'a>(state: &'a Value, cohort: &[(String, String)]) -> Result<&'a Value, ActError> {
    let candidates: Vec<&Value> = strategies(state)
        .into_iter()
        .filter(|s| enabled(s) && s.get("name").and_then(Value::as_str) == Some("flexibleRollout"))
        .filter(|s| if cohort.is_empty() { s.get("constraints").and_then(Value::as_array).is_none_or(|c| c.is_empty()) } else { serves_exactly(s, cohort) })
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(ActError::Permanent("no enabled flexibleRollout strategy serves this target".into())),
        many => Err(ActError::Permanent(format!(
            "{} flexibleRollout strategies serve this target ({}); which one to change is ambiguous",
            many.len(),
            many.iter().map(|s| id(s)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn rollout_of(strategy: &Value) -> Option<f64> {
    match strategy.pointer("/parameters/rollout")? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// A strategy's variant split; Unleash weighs variants out of 1000.
fn variants_of(strategy: &Value) -> Vec<super::VariantWeight> {
    let variants = strategy.get("variants").and_then(Value::as_array).map(|v| v.as_slice()).unwrap_or_default();
    variants
        .iter()
        .filter_map(|v| Some(super::VariantWeight { name: v.get("name")?.as_str()?.to_owned(), percent: v.get("weight")?.as_f64()? / 10.0 }))
        .collect()
}

#[async_trait::async_trait]
impl Actuator for Unleash {
    fn unexpressible(&self, scope: &[(String, String)]) -> Option<String> {
        scope
            .iter()
            .find(|(dim, _)| dim != "environment" && !self.config.slices.contains_key(dim))
            .map(|(dim, value)| format!("no strategy constraint is configured for {dim} (slices.{dim}), so {dim}={value} cannot be killed alone"))
    }

    fn default_environment(&self) -> Option<&str> {
        self.config.default_environment.as_deref()
    }

    async fn snapshot(&self, request: &ActionRequest) -> Result<Option<Value>, ActError> {
        let path = self.env_path(request)?;
        let state = self.state(&path).await?;
        Ok(Some(saved_state(&state, &self.cohort(request)?)))
    }

    async fn kill(&self, request: &ActionRequest, key: &str) -> Result<Applied, ActError> {
        let path = self.env_path(request)?;
        let before = self.state(&path).await?;
        let cohort = self.cohort(request)?;
        let saved = saved_state(&before, &cohort);
        if cohort.is_empty() {
            self.api.call(Method::POST, &format!("{path}/off"), None, Some(key), none).await?;
            return Ok(Applied { before: Some(saved), after: Some(json!({ "enabled": false })) });
        }
        let exact: Vec<&Value> = strategies(&before).into_iter().filter(|s| serves_exactly(s, &cohort)).collect();
        if exact.is_empty() {
            let slice: Vec<String> = cohort.iter().map(|(f, v)| format!("{f} IN [{v}]")).collect();
            return Err(ActError::Permanent(format!(
                "no strategy serves exactly {} in this environment; add one with that constraint so the cohort can be killed alone",
                slice.join(" and ")
            )));
        }
        let mut disabled = Vec::new();
        for strategy in exact.iter().filter(|s| enabled(s)) {
            self.set_disabled(&path, &id(strategy), true, key).await?;
            disabled.push(id(strategy));
        }
        let after = self.state(&path).await?;
        let still: Vec<String> = strategies(&after).into_iter().filter(|s| enabled(s) && may_serve(s, &cohort)).map(id).collect();
        if !still.is_empty() && after.get("enabled").and_then(Value::as_bool).unwrap_or(false) {
            return Err(ActError::Permanent(format!(
                "disabled the cohort's strategies {disabled:?}, but enabled strategies {still:?} still serve it (Unleash ORs strategies): the cohort is NOT off"
            )));
        }
        Ok(Applied { before: Some(saved), after: Some(json!({ "disabled_strategies": disabled, "enabled": after.get("enabled") })) })
    }

    async fn restore(&self, request: &ActionRequest, key: &str) -> Result<Applied, ActError> {
        let path = self.env_path(request)?;
        let saved = request.saved.clone().unwrap_or(Value::Null);
        let current = self.state(&path).await?;
        if let Some(ids) = saved.get("disabled_strategies").and_then(Value::as_array) {
            let mut enabled_again = Vec::new();
            for sid in ids.iter().filter_map(Value::as_str) {
                self.set_disabled(&path, sid, false, key).await?;
                enabled_again.push(sid.to_owned());
            }
            return Ok(Applied { before: Some(current), after: Some(json!({ "enabled_strategies": enabled_again })) });
        }
        if !saved.get("enabled").and_then(Value::as_bool).unwrap_or(true) {
            return Ok(Applied { before: Some(current), after: Some(json!({ "enabled": false, "note": "the environment was off before the kill" })) });
        }
        // Re-enable the strategies that were enabled before the kill, then turn the environment
        // on — but never with no enabled strategy (Unleash would add a 100 % one).
        let was_enabled: Vec<&str> = saved
            .get("strategies")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|s| !s.get("disabled").and_then(Value::as_bool).unwrap_or(false)).filter_map(|s| s.get("id")?.as_str()).collect())
            .unwrap_or_default();
        for strategy in strategies(&current).into_iter().filter(|s| !enabled(s) && was_enabled.contains(&id(s).as_str())) {
            self.set_disabled(&path, &id(strategy), false, key).await?;
        }
        let now = self.state(&path).await?;
        if !strategies(&now).into_iter().any(enabled) {
            return Err(ActError::Permanent(
                "refusing to turn the environment on: it has no enabled strategy, and Unleash would add a 100 % rollout strategy".into(),
            ));
        }
        self.api.call(Method::POST, &format!("{path}/on"), None, Some(key), none).await?;
        Ok(Applied { before: Some(current), after: Some(json!({ "enabled": true })) })
    }

    async fn set_rollout(&self, request: &ActionRequest, percent: f64, key: &str) -> Result<Applied, ActError> {
        if percent.fract() != 0.0 {
            return Err(ActError::Permanent(format!("Unleash rollouts are whole percentages, got {percent}")));
        }
        let path = self.env_path(request)?;
        let state = self.state(&path).await?;
        let cohort = self.cohort(request)?;
        let strategy = rollout_strategy(&state, &cohort)?;
        let previous = rollout_of(strategy);
        let sid = id(strategy);
        if previous != Some(percent) {
            let patch = json!([{ "op": "replace", "path": "/parameters/rollout", "value": format!("{}", percent as u32) }]);
            self.api.call(Method::PATCH, &format!("{path}/strategies/{}", segment(&sid)), Some(("application/json", &patch)), Some(key), none).await?;
        }
        Ok(Applied {
            before: Some(json!({ "strategy": sid, "rollout": previous })),
            after: Some(json!({ "strategy": sid, "rollout": percent, "changed": previous != Some(percent) })),
        })
    }

    async fn read(&self, request: &ActionRequest) -> Result<FlagState, ActError> {
        let path = self.env_path(request)?;
        let state = self.state(&path).await?;
        let cohort = self.cohort(request)?;
        let strategy = rollout_strategy(&state, &cohort).ok();
        let rollout = strategy.and_then(rollout_of);
        let variants = strategy.map(variants_of).unwrap_or_default();
        Ok(FlagState { killed: Some(cohort_off(&state, &cohort)), rollout, variants, detail: state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Value {
        json!({"enabled": true, "strategies": [
            {"id": "eu", "name": "flexibleRollout", "disabled": false, "parameters": {"rollout": "25"},
             "constraints": [{"contextName": "region", "operator": "IN", "values": ["eu-west"]}]},
            {"id": "us", "name": "flexibleRollout", "disabled": false, "parameters": {"rollout": "50"},
             "constraints": [{"contextName": "region", "operator": "IN", "values": ["us-east"]}]},
        ]})
    }

    fn eu() -> Vec<(String, String)> {
        vec![("region".into(), "eu-west".into())]
    }

    #[test]
    fn exact_cohort_strategies_and_or_semantics() {
        let s = state();
        let strategies = strategies(&s);
        assert!(serves_exactly(strategies[0], &eu()));
        assert!(!serves_exactly(strategies[1], &eu()));
        assert!(!may_serve(strategies[1], &eu()), "a us-east strategy cannot serve eu-west");
        assert!(!cohort_off(&s, &eu()));
        let mut killed = s.clone();
        killed["strategies"][0]["disabled"] = json!(true);
        assert!(cohort_off(&killed, &eu()));
        // A catch-all still serves the cohort (strategies are OR-ed).
        killed["strategies"].as_array_mut().unwrap().push(json!({"id": "all", "name": "default", "disabled": false, "constraints": []}));
        assert!(!cohort_off(&killed, &eu()));
        assert!(cohort_off(&json!({"enabled": false, "strategies": []}), &[]));
    }

    #[test]
    fn rollout_strategy_must_be_unambiguous() {
        let s = state();
        assert_eq!(id(rollout_strategy(&s, &eu()).unwrap()), "eu");
        assert_eq!(rollout_of(rollout_strategy(&s, &eu()).unwrap()), Some(25.0));
        assert!(matches!(rollout_strategy(&s, &[]), Err(ActError::Permanent(_))), "no unconstrained strategy");
    }
}

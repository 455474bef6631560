//! Acting on flag systems. One [`Actuator`] trait (kill, restore, set rollout, read back), one
//! module per flag system ([`unleash`], [`launchdarkly`], [`flagsmith`], [`flagd`],
//! [`webhook`]); [`outbox`] is the one door through which every producer writes actions
//! (rule decisions, alerts, operators, plans, verification, drift, notifications); the
//! [`executor`] carries them out with retries ([`retry`]) and reads each result back;
//! [`verify`] watches a confirmed kill's cohort drain and its SLI recover; [`notify`] delivers
//! notifications (not an actuator: it changes no flag); [`read`] is a flag as pipelines and
//! drift checks see it.
//!
//! Invariants: a kill is in the outbox before any call; only transient failures (5xx, 429,
//! timeouts, connection errors) are retried, with capped jittered backoff and a bounded number
//! of attempts; permanent failures (other 4xx, a slice the flag system cannot express) and
//! exhausted retries are escalated (audited and notified, and handed to a fallback actuator
//! when one is configured), never dropped.

pub mod executor;
pub mod flagd;
pub mod flagsmith;
pub mod http;
pub mod launchdarkly;
pub mod notify;
pub mod outbox;
pub mod providers;
pub mod read;
pub mod retry;
pub mod unleash;
pub mod verify;
pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::action::ActionKind;
pub use outbox::{idempotency_key, restore_request};

/// Why an actuator call failed, classified for retry.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// Worth retrying (5xx, 429, timeouts, connection errors); `retry_after` from the provider.
    #[error("transient: {message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// Retrying cannot help (4xx, bad configuration, inexpressible slice): escalate.
    #[error("permanent: {0}")]
    Permanent(String),
    /// A compare-and-set change found the flag in another state than expected: nothing was
    /// changed, and nothing is escalated (the caller is told; `refused`).
    #[error("refused: {0}")]
    Refused(String),
}

impl ActError {
    pub fn transient(message: impl Into<String>) -> Self {
        ActError::Transient { message: message.into(), retry_after: None }
    }
}

/// Everything an actuator needs, stored in the outbox as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub kind: ActionKind,
    pub actuator: String,
    pub flag: String,
    pub treatment: Vec<String>,
    pub control: Option<String>,
    pub rule: String,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub region: Option<String>,
    /// The dimensions the rule sliced by (`per`): what the kill must be limited to.
    pub scope: Vec<(String, String)>,
    pub evidence: Value,
    /// Text of a notification.
    #[serde(default)]
    pub text: Option<String>,
    /// A notification's severity and incident (its route is `actuator`).
    #[serde(default)]
    pub notice: Option<notify::Notice>,
    /// Rollout: the percentage to set (0–100).
    #[serde(default)]
    pub percent: Option<f64>,
    /// Restore: the kill being undone and the state its call saved (`Applied::before`).
    #[serde(default)]
    pub restores: Option<i64>,
    #[serde(default)]
    pub saved: Option<Value>,
    /// The rule slice that decided it (its cooldown is cleared on restore).
    #[serde(default)]
    pub slice_key: String,
    /// `on_unscoped: widen`: a slice the flag system cannot express kills the whole flag in
    /// the environment instead of escalating.
    #[serde(default)]
    pub widen: bool,
    /// `auto_restore`: restore this long after the kill drained (ms).
    #[serde(default)]
    pub auto_restore_ms: Option<u64>,
    /// Rollout: the percentage the flag must be at before the change (a plan's current step);
    /// anything else means someone changed it outside flagguard: refused, never overwritten.
    #[serde(default)]
    pub expect_rollout: Option<f64>,
    /// Compare-and-set (`flags set-rollout --expect`): the first attempt requires the flag at
    /// exactly `expect_rollout`, and anything else ends the action `refused`. Without it (a
    /// plan's step) the target percentage, already reached, is accepted too.
    #[serde(default)]
    pub compare_and_set: bool,
    /// Operator actions: who and why.
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl ActionRequest {
    /// A request with only the essentials set.
    pub fn new(kind: ActionKind, actuator: &str, flag: &str) -> ActionRequest {
        ActionRequest {
            kind,
            actuator: actuator.into(),
            flag: flag.into(),
            treatment: vec![],
            control: None,
            rule: String::new(),
            service: None,
            environment: None,
            region: None,
            scope: vec![],
            evidence: Value::Null,
            text: None,
            notice: None,
            percent: None,
            restores: None,
            saved: None,
            slice_key: String::new(),
            widen: false,
            auto_restore_ms: None,
            expect_rollout: None,
            compare_and_set: false,
            actor: None,
            reason: None,
        }
    }

    /// The scope value of a dimension (`region` → `eu-west`).
    pub fn scoped(&self, dim: &str) -> Option<&str> {
        self.scope.iter().find(|(k, _)| k == dim).map(|(_, v)| v.as_str())
    }

    /// The scope without the environment (every flag system expresses environments natively).
    pub fn slice(&self) -> Vec<(String, String)> {
        self.scope.iter().filter(|(k, _)| k != "environment").cloned().collect()
    }

    /// The flag's key in the flag system: the part after a `set/` namespace.
    pub fn key(&self) -> &str {
        self.flag.rsplit('/').next().unwrap_or(&self.flag)
    }

    /// A one-line comment for flag systems that keep one (LaunchDarkly, Unleash events).
    pub fn comment(&self) -> String {
        match (self.kind, &self.reason) {
            (_, Some(reason)) => format!("flagguard {}: {reason}", self.kind.as_str()),
            (ActionKind::Kill, None) => {
                let cond = self.evidence.pointer("/conditions/0/condition").and_then(Value::as_str).unwrap_or("breach");
                let observed = self.evidence.pointer("/conditions/0/observed").map(|v| v.to_string()).unwrap_or_default();
                format!("flagguard kill: rule {} ({cond}, observed {observed}) on {}", self.rule, describe(self))
            }
            (kind, None) => format!("flagguard {}: {}", kind.as_str(), describe(self)),
        }
    }
}

/// What an action does, typed: the stored request's kind with the fields that kind needs
/// (the outbox keeps the flat [`ActionRequest`] as JSON; dispatch reads it through this).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload<'a> {
    /// Turn the target off; `widen` kills the whole environment when the slice cannot be
    /// expressed.
    Kill { widen: bool },
    /// Return the target to the state its kill saved (`None`: nothing saved, the actuator
    /// decides).
    Restore { saved: Option<&'a Value> },
    /// Set the rollout to `percent` (0–100), only from `expect` when a plan sets it (or an
    /// operator's compare-and-set: `strict`).
    Rollout { percent: f64, expect: Option<f64>, strict: bool },
    /// Tell the on-call.
    Notify { text: &'a str },
}

impl ActionRequest {
    /// The typed payload; a stored request its kind cannot carry out (a rollout without a
    /// percentage in 0–100, a notification without text) is a permanent failure.
    pub fn payload(&self) -> Result<Payload<'_>, ActError> {
        Ok(match self.kind {
            ActionKind::Kill => Payload::Kill { widen: self.widen },
            ActionKind::Restore => Payload::Restore { saved: self.saved.as_ref() },
            ActionKind::Rollout => Payload::Rollout {
                percent: self
                    .percent
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| ActError::Permanent(format!("rollout {:?} is not in 0–100", self.percent)))?,
                expect: self.expect_rollout,
                strict: self.compare_and_set && self.expect_rollout.is_some(),
            },
            ActionKind::Notify => Payload::Notify { text: self.text.as_deref().ok_or_else(|| ActError::Permanent("a notification without text".into()))? },
        })
    }
}

impl ActionRequest {
    /// One open action per target: (actuator, flag, environment, slice), canonical
    /// ([`crate::action::Target::key`]): the environment only in its field, the slice sorted.
    pub fn target(&self) -> String {
        outbox::target_of(self).key()
    }
}

/// A successful call: the flag's state before and after, for the audit log. `before` is what
/// a later restore returns the flag to.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// A flag's state as read back from the flag system, for the request's target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagState {
    /// Whether the request's cohort is off; `None` when the flag system cannot be read back.
    pub killed: Option<bool>,
    /// The rollout percentage serving the cohort, when the flag system has one.
    pub rollout: Option<f64>,
    /// The variant split serving the cohort (percent of the rollout each), where the flag
    /// system has one; empty when it has none or cannot say.
    pub variants: Vec<VariantWeight>,
    /// The raw state, for the audit log.
    pub detail: Value,
}

/// One variant of a split and its share (0–100 %).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantWeight {
    pub name: String,
    pub percent: f64,
}

impl FlagState {
    /// A flag system that cannot be read back.
    pub fn unknown() -> FlagState {
        FlagState { killed: None, rollout: None, variants: Vec::new(), detail: Value::Null }
    }
}

/// A flag system.
#[async_trait::async_trait]
pub trait Actuator: Send + Sync {
    /// The first slice dimension (`region`, `service`) of `scope` this flag system cannot
    /// express, with why; `None` when it can kill exactly that slice.
    fn unexpressible(&self, scope: &[(String, String)]) -> Option<String> {
        scope.first().map(|(k, v)| format!("it has no way to express {k}={v}"))
    }

    /// The flag-system environment a request without one goes to (`default_environment`).
    fn default_environment(&self) -> Option<&str> {
        None
    }

    /// The target's state now, in the form `kill` returns as `before` (with `serving`: whether
    /// the target serves its cohort): what a restore returns it to. Read once, before a kill's
    /// first call, and stored, so that a retry after a lost answer, or a restart after a crash,
    /// never saves the killed state instead. `None`: nothing to save.
    async fn snapshot(&self, _request: &ActionRequest) -> Result<Option<Value>, ActError> {
        Ok(None)
    }

    /// Kills the flag (or the request's scope), idempotently.
    async fn kill(&self, request: &ActionRequest, idempotency_key: &str) -> Result<Applied, ActError>;

    /// Returns the flag to `request.saved` (what `kill` returned as `before`).
    async fn restore(&self, _request: &ActionRequest, _idempotency_key: &str) -> Result<Applied, ActError> {
        Err(ActError::Permanent("this actuator cannot restore; restore the flag by hand".into()))
    }

    /// Sets the rollout percentage (already validated 0–100) of the request's target.
    async fn set_rollout(&self, _request: &ActionRequest, _percent: f64, _idempotency_key: &str) -> Result<Applied, ActError> {
        Err(ActError::Permanent("this actuator cannot set a rollout percentage".into()))
    }

    /// Reads the target's state back from the flag system.
    async fn read(&self, _request: &ActionRequest) -> Result<FlagState, ActError> {
        Ok(FlagState::unknown())
    }
}

/// A human-readable target: `checkout-v2=on in payments/production/region=eu-west via flags`.
pub fn describe(request: &ActionRequest) -> String {
    let mut where_ =
        vec![request.service.clone().unwrap_or_else(|| "all services".into()), request.environment.clone().unwrap_or_else(|| "all environments".into())];
    where_.extend(request.scope.iter().filter(|(k, _)| k != "service" && k != "environment").map(|(k, v)| format!("{k}={v}")));
    format!(
        "{}={} in {} via {}",
        request.flag,
        request.treatment.join("|"),
        where_.join("/"),
        if request.actuator.is_empty() { "(none)" } else { &request.actuator }
    )
}

/// The decision record of an action, for notifications.
pub fn evidence_summary(evidence: &Value) -> Value {
    json!({
        "rule": evidence.get("rule"),
        "verdict": evidence.get("verdict"),
        "slice": evidence.get("slice"),
        "conditions": evidence.get("conditions"),
        "treatment": evidence.pointer("/treatment/stats"),
        "baseline": evidence.pointer("/baseline/stats"),
        "owner": evidence.get("owner"),
    })
}

/// The kill an alert maps to, with its evidence (the alert and its payload's digest).
pub fn alert_request(target: &crate::alerts::mapping::Target, alert: &crate::alerts::Alert, digest: &str) -> ActionRequest {
    ActionRequest {
        treatment: target.variant.clone().into_iter().collect(),
        rule: format!("alert:{}", target.mapping),
        service: alert.labels.get("service").cloned(),
        environment: target.environment.clone(),
        region: target.scope.iter().find(|(k, _)| k == "region").map(|(_, v)| v.clone()),
        scope: target.scope.clone(),
        evidence: json!({ "alert": alert, "digest": digest, "mapping": target.mapping }),
        ..ActionRequest::new(ActionKind::Kill, &target.actuator, &target.flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_request_its_kind_cannot_carry_out_is_a_permanent_failure() {
        let rollout = |percent| ActionRequest { percent, ..ActionRequest::new(ActionKind::Rollout, "flags", "f") };
        assert_eq!(rollout(Some(25.0)).payload().unwrap(), Payload::Rollout { percent: 25.0, expect: None, strict: false });
        for bad in [None, Some(-1.0), Some(100.5)] {
            assert!(matches!(rollout(bad).payload(), Err(ActError::Permanent(_))), "{bad:?}");
        }
        assert!(matches!(ActionRequest::new(ActionKind::Notify, "notify", "").payload(), Err(ActError::Permanent(_))));
        let kill = ActionRequest { widen: true, ..ActionRequest::new(ActionKind::Kill, "flags", "f") };
        assert_eq!(kill.payload().unwrap(), Payload::Kill { widen: true });
    }
}

//! Acting on flag systems. One [`Actuator`] trait, one module per flag system ([`webhook`],
//! [`flagd`]); [`submit`] turns rule decisions into outbox entries (or audited dry-runs and
//! notifications); the [`executor`] carries them out with retries ([`retry`]).
//!
//! Invariants: a kill is in the outbox before any call; only transient failures (5xx, 429,
//! timeouts, connection errors) are retried, with capped jittered backoff and a bounded number
//! of attempts; permanent failures (other 4xx, a slice the flag system cannot express) and
//! exhausted retries are escalated (audited and notified), never dropped.

pub mod executor;
pub mod flagd;
pub mod notify;
pub mod retry;
pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::rules::Mode;
use crate::rules::engine::{Decision, DecisionKind};
use crate::store::{AuditEntry, Store, StoreError, Submitted};
use crate::time::Timestamp;

/// Why an actuator call failed, classified for retry.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// Worth retrying (5xx, 429, timeouts, connection errors); `retry_after` from the provider.
    #[error("transient: {message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// Retrying cannot help (4xx, bad configuration, inexpressible slice): escalate.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl ActError {
    pub fn transient(message: impl Into<String>) -> Self {
        ActError::Transient { message: message.into(), retry_after: None }
    }
}

/// What kind of action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Kill,
    Notify,
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
}

impl ActionRequest {
    /// One open action per target: (actuator, flag, environment, scope).
    pub fn target(&self) -> String {
        let scope: Vec<String> = self.scope.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}|{}|{}|{}", self.actuator, self.flag, self.environment.as_deref().unwrap_or("*"), scope.join(","))
    }
}

/// A successful call: the flag's state before and after, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// A flag system.
#[async_trait::async_trait]
pub trait Actuator: Send + Sync {
    /// Kills the flag (or the request's scope), idempotently, and reads the result back.
    async fn kill(&self, request: &ActionRequest, idempotency_key: &str) -> Result<Applied, ActError>;
}

/// Turns the engine's decisions into durable actions. Enforced kills go to the outbox (the
/// executor is woken by the caller); dry-runs and incidents are audited and notified.
/// Returns whether anything was written to the outbox.
pub fn submit(store: &Store, decision: &Decision, notify: bool) -> Result<bool, StoreError> {
    let request = ActionRequest {
        kind: ActionKind::Kill,
        actuator: decision.actuator.clone().unwrap_or_default(),
        flag: decision.flag.clone(),
        treatment: decision.treatment.clone(),
        control: decision.control.clone(),
        rule: decision.rule.clone(),
        service: decision.service.clone(),
        environment: decision.environment.clone(),
        region: decision.region.clone(),
        scope: decision.scope.clone(),
        evidence: decision.record.clone(),
        text: None,
    };
    let target = request.target();
    let audit = |kind: &str| AuditEntry {
        at: decision.at,
        actor: format!("rule:{}", decision.rule),
        kind: kind.into(),
        rule: Some(decision.rule.clone()),
        target: Some(target.clone()),
        evidence: Some(decision.record.clone()),
        ..AuditEntry::default()
    };
    let mut queued = false;
    let summary = match (decision.kind, decision.mode) {
        (DecisionKind::Kill, Mode::Enforce) => {
            let key = idempotency_key(&target, decision.at);
            let submitted =
                store.submit(&target, "kill", &serde_json::to_value(&request).unwrap_or(Value::Null), &key, &decision.slice_key, &audit("kill_decided"))?;
            queued = true;
            match submitted {
                Submitted::New(id) => format!("flagguard is killing {} (action {id}, rule {})", describe(&request), decision.rule),
                Submitted::Joined(_) => return Ok(true),
            }
        }
        (DecisionKind::Kill, Mode::DryRun) => {
            store.record_fired(&decision.slice_key, decision.at, &audit("kill_dry_run"))?;
            format!("[dry-run] flagguard would kill {} (rule {})", describe(&request), decision.rule)
        }
        (DecisionKind::Incident, _) => {
            store.record_fired(&decision.slice_key, decision.at, &audit("incident"))?;
            let why = decision
                .record
                .get("incident")
                .and_then(Value::as_str)
                .or_else(|| decision.record.get("reason").and_then(Value::as_str))
                .unwrap_or("baseline breaching too");
            format!("incident, not killing {}: {why}", describe(&request))
        }
    };
    if notify {
        notify::enqueue(store, &summary, &decision.record, decision.at)?;
        queued = true;
    }
    Ok(queued)
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

/// A stable key sent to flag systems that support idempotency (`Idempotency-Key`).
pub fn idempotency_key(target: &str, at: Timestamp) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    format!("fg-{}-{:016x}", at.as_millis(), h.finish())
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
    })
}

/// The kill an alert maps to, with its evidence (the alert and its payload's digest).
pub fn alert_request(target: &crate::alerts::mapping::Target, alert: &crate::alerts::Alert, digest: &str) -> ActionRequest {
    ActionRequest {
        kind: ActionKind::Kill,
        actuator: target.actuator.clone(),
        flag: target.flag.clone(),
        treatment: alert.labels.get("variant").cloned().into_iter().collect(),
        control: None,
        rule: format!("alert:{}", target.mapping),
        service: alert.labels.get("service").cloned(),
        environment: target.environment.clone(),
        region: target.scope.iter().find(|(k, _)| k == "region").map(|(_, v)| v.clone()),
        scope: target.scope.clone(),
        evidence: json!({ "alert": alert, "digest": digest, "mapping": target.mapping }),
        text: None,
    }
}

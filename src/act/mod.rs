//! Acting on flag systems. One [`Actuator`] trait (kill, restore, set rollout, read back), one
//! module per flag system ([`unleash`], [`launchdarkly`], [`flagsmith`], [`flagd`],
//! [`webhook`]); [`submit`] turns rule decisions into outbox entries (or audited dry-runs and
//! notifications); the [`executor`] carries them out with retries ([`retry`]) and reads each
//! result back; [`verify`] watches a confirmed kill's cohort drain and its SLI recover.
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
pub mod retry;
pub mod unleash;
pub mod verify;
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
    /// Undo a kill: return the flag to the state saved when it was killed.
    Restore,
    /// Set the rollout percentage (`ActionRequest::percent`).
    Rollout,
    Notify,
}

impl ActionKind {
    /// The outbox's `kind` column and the audit records' prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Kill => "kill",
            ActionKind::Restore => "restore",
            ActionKind::Rollout => "rollout",
            ActionKind::Notify => "notification",
        }
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
            percent: None,
            restores: None,
            saved: None,
            slice_key: String::new(),
            widen: false,
            auto_restore_ms: None,
            expect_rollout: None,
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

impl ActionRequest {
    /// One open action per target: (actuator, flag, environment, slice), canonical
    /// ([`crate::store::target_string`]): the environment only in its field, the slice sorted.
    pub fn target(&self) -> String {
        crate::store::target_string(&self.actuator, &self.flag, self.environment.as_deref(), &self.scope)
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
    /// The raw state, for the audit log.
    pub detail: Value,
}

impl FlagState {
    /// A flag system that cannot be read back.
    pub fn unknown() -> FlagState {
        FlagState { killed: None, rollout: None, detail: Value::Null }
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

/// Turns the engine's decisions into durable actions. Enforced kills go to the outbox (the
/// executor is woken by the caller); dry-runs and incidents are audited and notified.
/// Returns whether anything was written to the outbox.
pub fn submit(store: &Store, decision: &Decision, notify: bool) -> Result<bool, StoreError> {
    let request = ActionRequest {
        treatment: decision.treatment.clone(),
        control: decision.control.clone(),
        rule: decision.rule.clone(),
        service: decision.service.clone(),
        environment: decision.environment.clone(),
        region: decision.region.clone(),
        scope: decision.scope.clone(),
        evidence: decision.record.clone(),
        slice_key: decision.slice_key.clone(),
        widen: decision.widen,
        auto_restore_ms: decision.auto_restore.map(|d| d.as_millis() as u64),
        ..ActionRequest::new(ActionKind::Kill, decision.actuator.as_deref().unwrap_or_default(), &decision.flag)
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
    let held = match (decision.kind, decision.mode) {
        (DecisionKind::Kill, Mode::Enforce) => store.controls()?.hold(&decision.flag, Some(&decision.rule), decision.at),
        _ => None,
    };
    let summary = match (decision.kind, decision.mode) {
        (DecisionKind::Kill, Mode::Enforce) if let Some(why) = held => {
            // Held, not queued. The pipeline re-arms the slice as soon as the control is lifted
            // (`Pipeline::release_held`), so a regression caught during a pause is killed
            // right after it, not a cooldown later.
            let entry = AuditEntry { after: Some(serde_json::json!({ "held": why })), ..audit("kill_held") };
            let fired = crate::store::Fired { slice: &decision.slice_key, rule: &decision.rule, flag: &decision.flag, held: true };
            store.record_fired(&fired, decision.at, &entry)?;
            format!("[held] flagguard would kill {} (rule {}), but {why}", describe(&request), decision.rule)
        }
        (DecisionKind::Kill, Mode::Enforce) => {
            let key = idempotency_key(&target, decision.at);
            let submitted =
                store.submit(&target, "kill", &serde_json::to_value(&request).unwrap_or(Value::Null), &key, &decision.slice_key, &audit("kill_decided"))?;
            queued = true;
            match submitted {
                Submitted::New(id) => format!("flagguard is killing {} (action {id}, rule {})", describe(&request), decision.rule),
                Submitted::Joined(_) => return Ok(true),
                Submitted::Suppressed(id) => format!(
                    "flagguard is NOT killing {} again (rule {}): a human re-enabled it after kill {id}; acknowledge with POST /v1/actions/{id}/restore to re-arm",
                    describe(&request),
                    decision.rule
                ),
            }
        }
        (DecisionKind::Kill, Mode::DryRun) => {
            store.record_fired(&fired(decision), decision.at, &audit("kill_dry_run"))?;
            format!("[dry-run] flagguard would kill {} (rule {})", describe(&request), decision.rule)
        }
        (DecisionKind::Incident, _) => {
            store.record_fired(&fired(decision), decision.at, &audit("incident"))?;
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

fn fired(decision: &Decision) -> crate::store::Fired<'_> {
    crate::store::Fired { slice: &decision.slice_key, rule: &decision.rule, flag: &decision.flag, held: false }
}

/// The fallback kill of escalated action `escalated`: the same kill on actuator `fallback`,
/// audited as `kill_fallback` (the rest of `audit` as given), to queue with the escalation.
pub fn fallback_kill(request: &ActionRequest, fallback: &str, escalated: i64, audit: &AuditEntry, at: Timestamp) -> crate::store::FollowUp {
    let request = ActionRequest { actuator: fallback.to_owned(), ..request.clone() };
    let target = request.target();
    let audit =
        AuditEntry { kind: "kill_fallback".into(), target: Some(target.clone()), after: Some(json!({ "escalated_action": escalated })), ..audit.clone() };
    let idempotency_key = idempotency_key(&target, at);
    crate::store::FollowUp { target, kind: "kill".into(), request: serde_json::to_value(&request).unwrap_or_default(), idempotency_key, audit }
}

/// The restore of a kill (its outbox row): same target, the state the kill saved.
pub fn restore_request(kill: &crate::store::ActionRow, actor: &str, reason: Option<String>) -> Result<ActionRequest, String> {
    if kill.kind != "kill" {
        return Err(format!("action {} is a {}, not a kill", kill.id, kill.kind));
    }
    // A widened kill saved the request it really carried out.
    let effective = kill.result.as_ref().and_then(|r| r.get("request")).cloned().unwrap_or_else(|| kill.request.clone());
    let request: ActionRequest = serde_json::from_value(effective).map_err(|e| format!("unreadable action {}: {e}", kill.id))?;
    // A kill that never reached the flag system saved no state: "restoring" it could turn on a
    // flag that was off.
    if kill.result.is_none() {
        return Err(format!("kill {} never reached the flag system ({}); there is nothing to restore", kill.id, kill.state));
    }
    Ok(ActionRequest {
        kind: ActionKind::Restore,
        restores: Some(kill.id),
        saved: kill.result.as_ref().and_then(|r| r.get("before")).filter(|b| !b.is_null()).cloned().or_else(|| kill.saved.clone()),
        actor: Some(actor.into()),
        reason,
        ..request
    })
}

/// Queues a restore of `kill` (refused while another action for the target is pending).
pub fn submit_restore(
    store: &Store,
    kill: &crate::store::ActionRow,
    actor: &str,
    reason: Option<String>,
    at: Timestamp,
) -> Result<Result<i64, String>, StoreError> {
    let request = match restore_request(kill, actor, reason) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let audit = AuditEntry {
        at,
        actor: actor.into(),
        kind: "restore_decided".into(),
        rule: Some(request.rule.clone()).filter(|r| !r.is_empty()),
        after: Some(json!({ "restores": kill.id, "reason": request.reason })),
        ..AuditEntry::default()
    };
    let key = idempotency_key(&format!("restore|{}", kill.target), at);
    store.submit_operator(&kill.target, "restore", &serde_json::to_value(&request).unwrap_or(Value::Null), &key, &audit)
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

//! The one door for actions: every producer — rule decisions, alert kills, operator actions,
//! rollout steps, fallbacks, auto-restores, verification steps, drift and notifications —
//! writes the outbox through [`Outbox`], which builds the target, the idempotency key, the
//! audit record and the follow-ups in one place, decides the policy (hold, dry-run, defer to
//! a human) and hands the store one transaction. The executor carries the entries out.
//!
//! Invariants (held with the store's, see `store`):
//! - a decision is in the outbox, with its audit record, before any call; an automatic kill
//!   (rule, alert) defers to a human's override, an operator's or a plan's does not
//!   (`automatic`, set here and nowhere else);
//! - every state change goes through [`crate::action::TRANSITIONS`] (the store refuses
//!   others) and carries its audit record and follow-ups (fallback kill, notification) in the
//!   same transaction;
//! - a notification is queued only when notifications are configured, and never joins
//!   another (each is its own target).
//!
//! In cluster mode the leader's door is [`Outbox::fenced`]: every write re-checks the lease in
//! its own transaction (`store::fence`); nothing else writes actions.

use serde_json::{Value, json};

use super::notify::{Incident, Note, Notice, Routing, Severity};
use super::{ActionKind, ActionRequest, describe, evidence_summary};
use crate::action::{ActionState, NOTIFIER, Refused, Target};
use crate::alerts::Alert;
use crate::alerts::mapping::{Target as AlertTarget, Unmapped};
use crate::rules::Mode;
use crate::rules::engine::{Decision, DecisionKind};
use crate::store::{ActionRow, AlertAction, AuditEntry, FollowUp, NewAction, Outcome, Store, StoreError, Submitted};
use crate::time::Timestamp;

/// A handle on the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    /// Where notifications go (`act.notify_url`, `[[act.routes]]`).
    routing: std::sync::Arc<Routing>,
}

/// What came of one rule decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// Something was queued (a kill or a notification): the executor has work.
    pub queued: bool,
    /// An operator control held the kill: its slice re-arms once the control is lifted.
    pub held: bool,
}

/// What came of one alert delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertResult {
    /// The same (source, key, status) was seen less than 24 h ago.
    Duplicate,
    /// Resolved, acknowledged…: recorded only (a resolved alert never restores a flag).
    NotFiring,
    /// No mapping names a flag for it.
    Unmapped(String),
    /// A kill decided (or dry-run, or held): the action, and whether it joined an open one.
    Mapped { action: Option<i64>, joined: bool, held: Option<String> },
}

/// One alert of a delivery, authenticated and parsed.
pub struct AlertDelivery<'a> {
    /// The source's name (`alertmanager`), for dedupe and the actor.
    pub source: &'a str,
    pub alert: &'a Alert,
    /// `None` when not firing; else the mapping's answer.
    pub target: Option<Result<AlertTarget, Unmapped>>,
    /// The payload's digest (the evidence, and the key of an alert without an id).
    pub digest: &'a str,
    /// The alert's place in its payload.
    pub index: usize,
    pub at: Timestamp,
}

impl Outbox {
    pub fn new(store: Store, routing: std::sync::Arc<Routing>) -> Outbox {
        Outbox { store, routing }
    }

    /// This door with every write fenced by the lease (cluster mode: the leader's decisions,
    /// calls and verification; alerts and operator actions use the unfenced one).
    pub fn fenced(&self, fence: std::sync::Arc<crate::store::Fence>) -> Outbox {
        Outbox { store: self.store.fenced(fence), routing: self.routing.clone() }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Turns one of the engine's decisions into a durable action: an enforced kill goes to the
    /// outbox (unless an operator control holds it: remembered, re-armed when lifted);
    /// dry-runs and incidents are audited; each is notified. Says whether anything was queued
    /// (the caller wakes the executor) and whether a control held the kill.
    pub fn decide(&self, decision: &Decision) -> Result<Decided, StoreError> {
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
        let fired = |held: bool| crate::store::Fired { slice: &decision.slice_key, rule: &decision.rule, flag: &decision.flag, held };
        let mut queued = false;
        let held = match (decision.kind, decision.mode) {
            (DecisionKind::Kill, Mode::Enforce) => self.store.controls()?.hold(&decision.flag, Some(&decision.rule), decision.at),
            _ => None,
        };
        let was_held = held.is_some();
        let summary = match (decision.kind, decision.mode) {
            (DecisionKind::Kill, Mode::Enforce) if let Some(why) = held => {
                // Held, not queued. The pipeline re-arms the slice as soon as the control is
                // lifted, so a regression caught during a pause is killed right after it.
                let entry = AuditEntry { after: Some(json!({ "held": why })), ..audit("kill_held") };
                self.store.record_fired(&fired(true), decision.at, &entry)?;
                format!("[held] flagguard would kill {} (rule {}), but {why}", describe(&request), decision.rule)
            }
            (DecisionKind::Kill, Mode::Enforce) => {
                let value = to_json(&request);
                let key = idempotency_key(&target, decision.at);
                let submitted = self.store.submit(&NewAction {
                    target: &target,
                    kind: ActionKind::Kill,
                    request: &value,
                    idempotency_key: &key,
                    slice_key: &decision.slice_key,
                    automatic: true,
                    audit: &audit("kill_decided"),
                })?;
                queued = true;
                match submitted {
                    Submitted::New(id) => format!("flagguard is killing {} (action {id}, rule {})", describe(&request), decision.rule),
                    Submitted::Joined(_) => return Ok(Decided { queued: true, held: false }),
                    Submitted::Suppressed(id) => format!(
                        "flagguard is NOT killing {} again (rule {}): a human re-enabled it after kill {id}; acknowledge with POST /v1/actions/{id}/restore to re-arm",
                        describe(&request),
                        decision.rule
                    ),
                }
            }
            (DecisionKind::Kill, Mode::DryRun) => {
                self.store.record_fired(&fired(false), decision.at, &audit("kill_dry_run"))?;
                format!("[dry-run] flagguard would kill {} (rule {})", describe(&request), decision.rule)
            }
            (DecisionKind::Incident, _) => {
                self.store.record_fired(&fired(false), decision.at, &audit("incident"))?;
                let why = decision
                    .record
                    .get("incident")
                    .and_then(Value::as_str)
                    .or_else(|| decision.record.get("reason").and_then(Value::as_str))
                    .unwrap_or("baseline breaching too");
                format!("incident, not killing {}: {why}", describe(&request))
            }
        };
        let severity = if matches!(decision.kind, DecisionKind::Incident) { Severity::Page } else { Severity::Warning };
        // The flag's owner (flag manifests) is told, and named.
        let (summary, record) = match self.routing.owner(&decision.flag) {
            Some(owner) => {
                let mut record = decision.record.clone();
                record["owner"] = json!(owner);
                let contact = owner.contact.as_ref().map(|c| format!(", {c}")).unwrap_or_default();
                (format!("{summary} — owner {}{contact}", owner.team), record)
            }
            None => (summary, decision.record.clone()),
        };
        let notified = self.notify(&Note::new(severity, &summary, &record, Some(&decision.flag)), decision.at)?;
        Ok(Decided { queued: notified || queued, held: was_held })
    }

    /// Records one alert of a delivery and what it maps to, in one transaction: a firing alert
    /// mapped to a flag becomes a kill (enforce), an audited dry-run, or a held kill (an
    /// operator control); duplicates within 24 h, unmapped and resolved alerts are recorded
    /// only. A delivery is remembered under what came of it, so one that was held, unmapped
    /// or dry-run does not make the sender's re-delivery a duplicate once the control is
    /// lifted, the mapping fixed or set to enforce: that one acts.
    pub fn alert(&self, d: &AlertDelivery<'_>) -> Result<AlertResult, StoreError> {
        let (source, alert, now) = (d.source, d.alert, d.at);
        let received = AuditEntry {
            at: now,
            actor: format!("alert:{source}"),
            kind: "alert_received".into(),
            evidence: Some(json!({ "alert": alert, "digest": d.digest })),
            ..AuditEntry::default()
        };
        // A payload without any id (a custom template) is keyed by its own content, so alerts
        // of one source never all collide on the empty key.
        let dedup_key = match alert.dedup_key.as_str() {
            "" => format!("{}#{}", d.digest, d.index),
            key => key.to_owned(),
        };
        let mapped = match &d.target {
            Some(Ok(t)) => Some(t),
            _ => None,
        };
        let held = match mapped {
            Some(t) if t.mode == Mode::Enforce => self.store.controls()?.hold(&t.flag, Some(&format!("alert:{}", t.mapping)), now),
            _ => None,
        };
        let request = mapped.map(|t| super::alert_request(t, alert, d.digest));
        let target_key = request.as_ref().map(ActionRequest::target).unwrap_or_default();
        let value = request.as_ref().map(to_json).unwrap_or_default();
        let slice_key = mapped.map(|t| format!("alert/{}/{target_key}", t.mapping)).unwrap_or_default();
        let key = idempotency_key(&target_key, now);
        let audit = mapped.map(|t| AuditEntry {
            after: held.as_ref().map(|why| json!({ "held": why })),
            at: now,
            actor: format!("alert:{source}"),
            kind: match (t.mode, &held) {
                (Mode::Enforce, None) => "kill_decided",
                (Mode::Enforce, Some(_)) => "kill_held",
                (Mode::DryRun, _) => "kill_dry_run",
            }
            .into(),
            rule: Some(format!("alert:{}", t.mapping)),
            target: Some(target_key.clone()),
            evidence: Some(value["evidence"].clone()),
            ..AuditEntry::default()
        });
        let action = match (mapped, &audit) {
            (Some(t), Some(audit)) if t.mode == Mode::Enforce && held.is_none() => Some(AlertAction::Queue(NewAction {
                target: &target_key,
                kind: ActionKind::Kill,
                request: &value,
                idempotency_key: &key,
                slice_key: &slice_key,
                automatic: true,
                audit,
            })),
            (_, Some(audit)) => Some(AlertAction::Audit(audit)),
            _ => None,
        };
        let status = match (&d.target, &held) {
            (_, Some(_)) => "firing-held",
            (Some(Err(_)), _) => "firing-unmapped",
            (Some(Ok(t)), _) if t.mode == Mode::DryRun => "firing-dry-run",
            _ => alert.status.label(),
        };
        let outcome = self.store.accept_alert(source, &dedup_key, status, &received, action.as_ref())?;
        if outcome.duplicate {
            return Ok(AlertResult::Duplicate);
        }
        match &d.target {
            None => Ok(AlertResult::NotFiring),
            Some(Err(why)) => {
                let why = match why {
                    Unmapped::NoMapping => format!("{dedup_key}: no mapping matches (and the source may not name flags directly)"),
                    Unmapped::MissingLabel { mapping, label } => format!("{dedup_key}: mapping {mapping} needs label {label}"),
                };
                self.store.audit(&AuditEntry {
                    at: now,
                    actor: format!("alert:{source}"),
                    kind: "alert_unmapped".into(),
                    evidence: Some(json!({ "alert": alert, "why": why })),
                    ..AuditEntry::default()
                })?;
                Ok(AlertResult::Unmapped(why))
            }
            Some(Ok(t)) => {
                if !matches!(outcome.submitted, Some(Submitted::Joined(_))) {
                    let verb = match (t.mode, &held) {
                        (Mode::Enforce, None) => "flagguard is killing".to_owned(),
                        (Mode::Enforce, Some(why)) => format!("[held: {why}] flagguard would kill"),
                        (Mode::DryRun, _) => "[dry-run] flagguard would kill".to_owned(),
                    };
                    let scope: Vec<String> = t.scope.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let text = format!("{verb} {} ({}) via {} on alert {dedup_key} from {source} (mapping {})", t.flag, scope.join(","), t.actuator, t.mapping);
                    let evidence = json!({ "rule": format!("alert:{}", t.mapping), "verdict": "alert" });
                    self.notify(&Note::new(Severity::Warning, &text, &evidence, Some(&t.flag)), now)?;
                }
                let (action, joined) = match outcome.submitted {
                    Some(Submitted::New(id)) => (Some(id), false),
                    Some(Submitted::Joined(id)) | Some(Submitted::Suppressed(id)) => (Some(id), true),
                    None => (None, false),
                };
                Ok(AlertResult::Mapped { action, joined, held })
            }
        }
    }

    /// An operator's kill or rollout change (`POST /v1/flags/{flag}/kill|rollout`). A kill
    /// joins an open kill of its target and never defers to a human's override; a rollout
    /// change is refused while another action is pending for the target or a kill holds the
    /// flag off. Returns the action, or why it was refused.
    ///
    /// With the caller's idempotency key (`client_key`) the same key again answers
    /// [`Refused::SameKey`] with the action it made (the change is made once), and a key used
    /// for another change [`Refused::KeyReused`].
    pub fn operator_keyed(&self, request: &ActionRequest, client_key: Option<&str>, at: Timestamp) -> Result<Result<i64, Refused>, StoreError> {
        let target = request.target();
        let kind = request.kind.as_str();
        let audit = AuditEntry {
            at,
            actor: request.actor.clone().unwrap_or_default(),
            kind: format!("{kind}_decided"),
            target: Some(target.clone()),
            after: Some(json!({ "percent": request.percent, "reason": request.reason })),
            evidence: Some(request.evidence.clone()),
            ..AuditEntry::default()
        };
        let key = match client_key {
            Some(client) => format!("{}{client}", crate::store::CLIENT_KEY),
            None => idempotency_key(&format!("{kind}|{target}"), at),
        };
        let value = to_json(request);
        let action = NewAction { target: &target, kind: request.kind, request: &value, idempotency_key: &key, slice_key: "", automatic: false, audit: &audit };
        if request.kind == ActionKind::Kill {
            let (Submitted::New(id) | Submitted::Joined(id) | Submitted::Suppressed(id)) = self.store.submit(&action)?;
            return Ok(Ok(id));
        }
        self.store.submit_operator(&action)
    }

    /// Queues the restore of `kill` (refused while another action for the target is pending,
    /// or when the kill never reached the flag system).
    pub fn restore(&self, kill: &ActionRow, actor: &str, reason: Option<String>, at: Timestamp) -> Result<Result<i64, Refused>, StoreError> {
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
        let value = to_json(&request);
        self.store.submit_operator(&NewAction {
            target: &kill.target,
            kind: ActionKind::Restore,
            request: &value,
            idempotency_key: &key,
            slice_key: "",
            automatic: false,
            audit: &audit,
        })
    }

    /// Acknowledges a human's override of `kill` (no call: the flag is already on) and
    /// re-arms its rule slice. False when the kill is no longer `overridden`.
    pub fn acknowledge_drift(&self, kill: &ActionRow, actor: &str, reason: Option<&str>, at: Timestamp) -> Result<bool, StoreError> {
        let audit = AuditEntry {
            at,
            actor: actor.into(),
            kind: "kill_restored".into(),
            target: Some(kill.target.clone()),
            after: Some(json!({ "acknowledged_drift": true, "reason": reason })),
            ..AuditEntry::default()
        };
        let moved = self.store.transition(kill.id, &[ActionState::Overridden], ActionState::Restored, None, &audit)?;
        if let Some(slice) = kill.request.get("slice_key").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            self.store.clear_cooldown(slice)?;
        }
        Ok(moved)
    }

    /// A plan's rollout step `to` (refused while the flag is killed or another action is
    /// pending; the caller tries again next tick or pauses the plan).
    pub fn rollout_step(&self, request: &ActionRequest, to: usize, audit: &AuditEntry, at: Timestamp) -> Result<Result<i64, Refused>, StoreError> {
        let target = request.target();
        let key = idempotency_key(&format!("rollout|{target}|{to}"), at);
        let value = to_json(request);
        self.store.submit_operator(&NewAction {
            target: &target,
            kind: ActionKind::Rollout,
            request: &value,
            idempotency_key: &key,
            slice_key: "",
            automatic: false,
            audit,
        })
    }

    /// A plan's rollback: a kill of the plan's target, which goes out even over a human's
    /// override (the plan is the owner's decision). Returns the kill (new or joined).
    pub fn rollback(&self, request: &ActionRequest, audit: &AuditEntry, at: Timestamp) -> Result<i64, StoreError> {
        let target = request.target();
        let key = idempotency_key(&target, at);
        let value = to_json(request);
        let (Submitted::New(id) | Submitted::Joined(id) | Submitted::Suppressed(id)) = self.store.submit(&NewAction {
            target: &target,
            kind: ActionKind::Kill,
            request: &value,
            idempotency_key: &key,
            slice_key: &request.slice_key,
            automatic: false,
            audit,
        })?;
        Ok(id)
    }

    /// The notification routes (the executor delivers through them).
    pub fn routing(&self) -> &std::sync::Arc<Routing> {
        &self.routing
    }

    /// Queues `note` for every route that takes it; returns whether any did.
    pub fn notify(&self, note: &Note<'_>, at: Timestamp) -> Result<bool, StoreError> {
        let copies = self.notification(note, at);
        for n in &copies {
            self.store.submit(&NewAction {
                target: &n.target,
                kind: n.kind,
                request: &n.request,
                idempotency_key: &n.idempotency_key,
                slice_key: "",
                automatic: false,
                audit: &n.audit,
            })?;
        }
        Ok(!copies.is_empty())
    }

    /// `note`'s copies, one per route that takes it, to queue with another write.
    pub fn notification(&self, note: &Note<'_>, at: Timestamp) -> Vec<FollowUp> {
        self.routing.routes_for(note).iter().map(|route| notification(route, note, at)).collect()
    }

    /// A verification step of a watched kill (`act::verify`): `row` moves to `to`, with its
    /// audit record, the fallback kill of an undrained kill and the notification, in one
    /// transaction. False when the kill moved on meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub fn verified(
        &self,
        row: &ActionRow,
        request: &ActionRequest,
        to: ActionState,
        observed: Value,
        error: Option<String>,
        fallback: Option<&str>,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let audit = AuditEntry {
            at: now,
            actor: "system".into(),
            kind: format!("kill_{to}"),
            rule: Some(request.rule.clone()).filter(|r| !r.is_empty()),
            target: Some(row.target.clone()),
            after: Some(json!({ "observed": observed, "error": error })),
            evidence: Some(request.evidence.clone()),
            ..AuditEntry::default()
        };
        let mut follow_ups = Vec::new();
        if to == ActionState::Escalated
            && let Some(fallback) = fallback
        {
            follow_ups.push(fallback_kill(request, fallback, row.id, &audit, now));
        }
        let text = match (to, &error) {
            (_, Some(error)) => format!("ESCALATION ({to}): {} (action {}): {error}", describe(request), row.id),
            (ActionState::Drained, None) => format!("the killed cohort of {} has drained (action {})", describe(request), row.id),
            _ => format!("{} is {to} after flagguard's kill (action {})", describe(request), row.id),
        };
        // A kill that did not drain (or did not fix it) pages, as one incident per flag × environment.
        let note = match to {
            ActionState::Escalated | ActionState::Failed => Note::new(Severity::Page, &text, &request.evidence, Some(&request.flag))
                .incident(Incident { key: Incident::of(&request.flag, request.environment.as_deref()), resolve: false }),
            _ => Note::new(Severity::Info, &text, &request.evidence, Some(&request.flag)),
        };
        follow_ups.extend(self.notification(&note, now));
        self.store.transition_with(row.id, &[row.state], to, error.as_deref(), &audit, &follow_ups)
    }

    /// Drift: a kill the flag system serves again was re-enabled by someone else. It becomes
    /// `overridden` (audited and notified, never fought). False when it moved on meanwhile.
    pub fn overridden(&self, row: &ActionRow, request: &ActionRequest, read_back: &Value, now: Timestamp) -> Result<bool, StoreError> {
        let text = format!(
            "DRIFT: {} was re-enabled in the flag system after flagguard's kill (action {}); flagguard will not fight it and will not kill it again until POST /v1/actions/{}/restore acknowledges it",
            describe(request),
            row.id,
            row.id
        );
        let audit = AuditEntry {
            at: now,
            actor: "system".into(),
            kind: "kill_overridden".into(),
            rule: Some(request.rule.clone()).filter(|r| !r.is_empty()),
            target: Some(row.target.clone()),
            after: Some(json!({ "read_back": read_back })),
            ..AuditEntry::default()
        };
        let follow_ups = self.notification(&Note::new(Severity::Warning, &text, &request.evidence, Some(&request.flag)), now);
        use ActionState::*;
        self.store.transition_with(row.id, &[Confirmed, Drained, Recovered], Overridden, Some("re-enabled by someone else"), &audit, &follow_ups)
    }

    /// An attempt's end and everything that follows from it, in one transaction
    /// ([`Store::finish_with`]); false when the action was finished already.
    pub fn finish(&self, outcome: &Outcome) -> Result<bool, StoreError> {
        self.store.finish_with(outcome)
    }

    /// A transient failure: retried at `next`.
    pub fn reschedule(&self, id: i64, attempts: u32, next: Timestamp, error: &str, now: Timestamp) -> Result<(), StoreError> {
        self.store.reschedule(id, attempts, next, error, now)
    }

    /// What a call that succeeded applied, before its read-back.
    pub fn record_applied(&self, id: i64, result: &Value) -> Result<(), StoreError> {
        self.store.record_applied(id, result)
    }

    /// A kill's state before its first call (once).
    pub fn save_snapshot(&self, id: i64, saved: &Value) -> Result<(), StoreError> {
        self.store.save_snapshot(id, saved)
    }

    /// A slice whose held kill no control holds any more: its cooldown is forgotten.
    pub fn rearm(&self, slice_key: &str) -> Result<(), StoreError> {
        self.store.clear_cooldown(slice_key)
    }
}

fn to_json(request: &ActionRequest) -> Value {
    serde_json::to_value(request).unwrap_or(Value::Null)
}

/// A notification, to queue with another write ([`Store::finish_with`]).
pub fn notification(route: &str, note: &Note<'_>, at: Timestamp) -> FollowUp {
    let request = ActionRequest {
        rule: note.evidence.get("rule").and_then(Value::as_str).unwrap_or("").into(),
        evidence: evidence_summary(note.evidence),
        text: Some(note.text.into()),
        notice: Some(Notice { severity: note.severity, incident: note.incident.clone() }),
        ..ActionRequest::new(ActionKind::Notify, route, note.flag.unwrap_or(""))
    };
    // Each notification is its own target: notifications never join one another.
    let target = format!("{NOTIFIER}|{}|{}|{route}", at.as_millis(), idempotency_key(note.text, at));
    let audit = AuditEntry {
        at,
        actor: "system".into(),
        kind: "notification_queued".into(),
        target: Some(target.clone()),
        after: Some(json!({ "text": note.text, "route": route, "severity": note.severity, "incident": note.incident })),
        ..AuditEntry::default()
    };
    FollowUp { target: target.clone(), kind: ActionKind::Notify, request: to_json(&request), idempotency_key: target, automatic: false, audit }
}

/// The fallback kill of escalated action `escalated`: the same kill on actuator `fallback`,
/// audited as `kill_fallback` (the rest of `audit` as given), to queue with the escalation.
/// It is as automatic as the kill it replaces: a rule's or an alert's (no `actor`) defers to a
/// human's override of the fallback's target, an operator's or a plan's does not.
pub fn fallback_kill(request: &ActionRequest, fallback: &str, escalated: i64, audit: &AuditEntry, at: Timestamp) -> FollowUp {
    let request = ActionRequest { actuator: fallback.to_owned(), ..request.clone() };
    let target = request.target();
    let audit =
        AuditEntry { kind: "kill_fallback".into(), target: Some(target.clone()), after: Some(json!({ "escalated_action": escalated })), ..audit.clone() };
    let idempotency_key = idempotency_key(&target, at);
    FollowUp { target, kind: ActionKind::Kill, request: to_json(&request), idempotency_key, automatic: request.actor.is_none(), audit }
}

/// The restore of a kill (its outbox row): same target, the state the kill saved.
pub fn restore_request(kill: &ActionRow, actor: &str, reason: Option<String>) -> Result<ActionRequest, Refused> {
    let refused = |why: String| Refused::NotRestorable(why);
    if kill.kind != ActionKind::Kill {
        return Err(refused(format!("action {} is a {}, not a kill", kill.id, kill.kind.column())));
    }
    // A widened kill saved the request it really carried out.
    let request: ActionRequest =
        serde_json::from_value(kill.effective_request().clone()).map_err(|e| refused(format!("unreadable action {}: {e}", kill.id)))?;
    // A kill that never reached the flag system saved no state: "restoring" it could turn on a
    // flag that was off.
    if kill.result.is_none() {
        return Err(refused(format!("kill {} never reached the flag system ({}); there is nothing to restore", kill.id, kill.state)));
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

/// A stable key sent to flag systems that support idempotency (`Idempotency-Key`).
pub fn idempotency_key(target: &str, at: Timestamp) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    format!("fg-{}-{:016x}", at.as_millis(), h.finish())
}

/// The typed target of a request (`Target::key` is what the outbox stores).
pub fn target_of(request: &ActionRequest) -> Target {
    Target::new(&request.actuator, &request.flag, request.environment.as_deref(), &request.scope)
}

#[cfg(test)]
mod tests;

//! The outbox executor: the async shell that carries out pending actions. It runs each due
//! action once at a time (never twice concurrently), with a timeout per call, reschedules
//! transient failures with backoff and finishes the rest, always through the store.
//! A restart resumes whatever is pending: the outbox is the queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::notify::{Incident, Note, Severity};
use super::outbox::{Outbox, fallback_kill};
use super::{ActError, ActionKind, ActionRequest, Actuator, Payload, describe, retry};
use crate::action::ActionState;
use crate::store::{ActionRow, AuditEntry};
use crate::telemetry::Metrics;
use crate::time::{Clock, Timestamp};
use serde_json::json;

/// How often the executor looks for kills due a drift read-back.
const DRIFT_TICK: Duration = Duration::from_secs(1);

/// From `[act]`.
#[derive(Clone, Debug)]
pub struct ExecutorSettings {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
}

pub struct Executor {
    /// Every write goes through the outbox door; reads through its store.
    pub outbox: Outbox,
    pub actuators: HashMap<String, Arc<dyn Actuator>>,
    pub settings: ExecutorSettings,
    pub metrics: Arc<Metrics>,
    pub wake: Arc<Notify>,
    pub clock: Arc<dyn Clock>,
    /// Per actuator: fallback and drift-check interval.
    pub verify: HashMap<String, crate::config::VerifyConfig>,
    /// Cluster mode: the lease. Calls start only while it is held and outlives them.
    pub fence: Option<Arc<crate::store::Fence>>,
}

/// Cluster mode: how often the executor looks for actions other replicas queued (their alert
/// webhooks and operator calls) and whether it holds the lease.
const CLUSTER_POLL: Duration = Duration::from_millis(200);

impl Executor {
    /// Runs until `shutdown`, then lets in-flight calls finish within `grace` (the outbox keeps
    /// whatever does not).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        // Action id → target: one action per target at a time, so that a kill never races a
        // restore (or rollout change) of the same target already in flight.
        let mut in_flight: HashMap<i64, String> = HashMap::new();
        let mut tasks: JoinSet<i64> = JoinSet::new();
        // Drift read-backs in their own task: a hung flag system must not delay kills.
        let drift = {
            let (this, stop) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut checked: HashMap<i64, Timestamp> = HashMap::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        // Drift read-backs write (drift, fallbacks): the leader's chore.
                        _ = tokio::time::sleep(DRIFT_TICK) => if this.fence.as_ref().is_none_or(|f| f.epoch().is_some()) {
                            this.check_drift(&mut checked).await
                        },
                    }
                }
            })
        };
        loop {
            let now = self.clock.now();
            if self.fence.as_ref().is_some_and(|f| !f.may_call()) {
                // A standby (or a leader whose lease is running out): nothing starts here.
                tokio::select! {
                    _ = tokio::time::sleep(CLUSTER_POLL) => {}
                    Some(done) = tasks.join_next() => {
                        if let Ok(id) = done {
                            in_flight.remove(&id);
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let store = self.outbox.store().clone();
            let due = tokio::task::spawn_blocking(move || (store.due(now), store.next_due())).await;
            let (due, next) = match due {
                Ok((Ok(due), Ok(next))) => (due, next),
                Ok((Err(e), _) | (_, Err(e))) => {
                    tracing::error!(error = %e, "cannot read the outbox; retrying");
                    (Vec::new(), None)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox; retrying");
                    (Vec::new(), None)
                }
            };
            for row in due {
                if !in_flight.contains_key(&row.id) && !in_flight.values().any(|t| *t == row.target) {
                    in_flight.insert(row.id, row.target.clone());
                    let this = self.clone();
                    tasks.spawn(async move {
                        let id = row.id;
                        this.execute(row).await;
                        id
                    });
                }
            }
            let idle = if self.fence.is_some() { CLUSTER_POLL } else { Duration::from_secs(1) };
            let wait = match next {
                Some(t) if t > now => t.since(now).min(idle),
                _ => idle,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = tasks.join_next() => {
                    if let Ok(id) = done {
                        in_flight.remove(&id);
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        drift.abort();
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("in-flight actions did not finish within the grace period; the outbox resumes them at restart");
        }
    }

    #[tracing::instrument(name = "flagguard.action", skip_all, fields(action = row.id, kind = %row.kind, target = %row.target, attempt = row.attempts + 1))]
    async fn execute(&self, row: ActionRow) {
        let mut request: ActionRequest = match serde_json::from_value(row.request.clone()) {
            Ok(r) => r,
            Err(e) => return self.finish(&row, None, row.attempts, Err(ActError::Permanent(format!("unreadable outbox entry: {e}")))).await,
        };
        // Superseded since it was read (a kill of the target overtook this restore or rollout):
        // not called at all. One superseded once its call is under way is finished truthfully.
        let (store, id) = (self.outbox.store().clone(), row.id);
        if matches!(tokio::task::spawn_blocking(move || store.is_pending(id)).await, Ok(Ok(false))) {
            return;
        }
        let attempt = row.attempts + 1;
        let kind = request.kind.as_str();
        if request.kind == ActionKind::Notify {
            Metrics::count(&self.metrics.actions, &[("kind", kind), ("state", "attempt")]);
            return self.deliver(&row, &request, attempt).await;
        }
        let Some(actuator) = self.actuators.get(&request.actuator).cloned() else {
            let e = ActError::Permanent(format!("actuator {:?} is not configured", request.actuator));
            return self.finish(&row, Some(&request), attempt, Err(e)).await;
        };
        // Cluster mode: claimed under the lease, which must outlive the call.
        let (outbox, id, timeout) = (self.outbox.clone(), row.id, self.settings.timeout);
        let epoch = match tokio::task::spawn_blocking(move || outbox.store().claim(id, timeout)).await {
            Ok(Ok(Some(epoch))) => epoch,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(action = row.id, error = %e, "cannot claim the action; it stays pending");
                return;
            }
            Err(e) => return tracing::error!(action = row.id, error = %e, "the claim failed"),
        };
        crate::cluster::failpoint::hit(crate::cluster::failpoint::Point::BeforeCall);
        Metrics::count(&self.metrics.actions, &[("kind", kind), ("state", "attempt")]);
        let started = std::time::Instant::now();
        let called = if self.fence.is_some() {
            crate::cluster::EPOCH.scope(epoch, self.call(actuator.as_ref(), &row, &mut request)).await
        } else {
            self.call(actuator.as_ref(), &row, &mut request).await
        };
        self.metrics.actuator_latency.get_or_create(&vec![("actuator", request.actuator.clone())]).observe(started.elapsed().as_secs_f64());
        let called = match called {
            Ok(called) => called,
            Err(e) => return self.failed(&row, &request, attempt, e).await,
        };
        crate::cluster::failpoint::hit(crate::cluster::failpoint::Point::AfterCall);
        // The call succeeded: what it applied is kept whatever the read-back says, so a kill
        // that escalates later still has its restore (and the rollout guard still sees it).
        let result = called.result(&request);
        let (outbox, id, saved) = (self.outbox.clone(), row.id, result.clone());
        if !matches!(tokio::task::spawn_blocking(move || outbox.record_applied(id, &saved)).await, Ok(Ok(()))) {
            tracing::error!(action = row.id, "cannot record what the call applied; the read-back goes on");
        }
        let check = match tokio::time::timeout(self.settings.timeout, check(actuator.as_ref(), &request)).await {
            Ok(check) => check,
            Err(_) => Check::Failed(ActError::transient(format!("read-back timed out after {:?}", self.settings.timeout))),
        };
        let performed = |verified: bool, read_back: Option<serde_json::Value>| Performed {
            applied: called.applied.clone(),
            verified,
            read_back,
            widened: called.widened.clone(),
            result: result.clone(),
        };
        match check {
            Check::Agrees { verified, read_back } => self.finish(&row, Some(&request), attempt, Ok(performed(verified, read_back))).await,
            Check::Disagrees(message) => self.failed(&row, &request, attempt, ActError::transient(message)).await,
            // The call went through but cannot be confirmed: retried like any transient failure,
            // then `sent` (the drain check is the proof), never "never reached the flag system".
            Check::Failed(ActError::Transient { message, retry_after }) if attempt < self.settings.max_attempts => {
                self.failed(&row, &request, attempt, ActError::Transient { message: format!("read back: {message}"), retry_after }).await
            }
            Check::Failed(e) => {
                tracing::warn!(action = row.id, error = %e, "the call succeeded but its read-back failed; recording it as sent");
                self.finish(&row, Some(&request), attempt, Ok(performed(false, Some(json!({ "error": format!("read back failed: {e}") }))))).await
            }
        }
    }

    /// Delivers a notification (no flag system, no read-back): retried like any call.
    async fn deliver(&self, row: &ActionRow, request: &ActionRequest, attempt: u32) {
        let routing = self.outbox.routing().clone();
        let timeout = self.settings.timeout;
        let started = std::time::Instant::now();
        let sent = match tokio::time::timeout(timeout, routing.send(request, &row.idempotency_key)).await {
            Ok(sent) => sent,
            Err(_) => Err(ActError::transient(format!("timed out after {timeout:?}"))),
        };
        self.metrics.actuator_latency.get_or_create(&vec![("actuator", request.actuator.clone())]).observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(applied) => {
                let called = Called { applied, widened: None };
                let result = called.result(request);
                let done = Performed { applied: called.applied, verified: true, read_back: None, widened: None, result };
                self.finish(row, Some(request), attempt, Ok(done)).await
            }
            Err(e) => self.failed(row, request, attempt, e).await,
        }
    }

    /// The call of one attempt, each step under the call timeout: the environment and the
    /// widening resolved, a kill's state before it saved (once), then the call.
    async fn call(&self, actuator: &dyn Actuator, row: &ActionRow, request: &mut ActionRequest) -> Result<Called, ActError> {
        let timeout = self.settings.timeout;
        let timed_out = || ActError::transient(format!("timed out after {timeout:?}"));
        let widened = prepare(actuator, request)?;
        let saved = match request.payload()? {
            Payload::Kill { .. } => tokio::time::timeout(timeout, self.saved_state(actuator, row, request)).await.map_err(|_| timed_out())??,
            Payload::Rollout { expect: Some(expected), strict: true, .. } => {
                tokio::time::timeout(timeout, self.compared(actuator, row, request, expected)).await.map_err(|_| timed_out())??
            }
            _ => None,
        };
        let mut called = tokio::time::timeout(timeout, call(actuator, request, &row.idempotency_key)).await.map_err(|_| timed_out())??;
        if saved.is_some() {
            called.applied.before = saved;
        }
        called.widened = widened;
        Ok(called)
    }

    /// The state a kill returns to on restore, read before its first call and stored (a retry
    /// or a restart reuses it). When the target already reads as killed (a second kill, or a
    /// retry after a call whose answer was lost), the state an earlier kill of the target saved
    /// still stands.
    async fn saved_state(&self, actuator: &dyn Actuator, row: &ActionRow, request: &ActionRequest) -> Result<Option<serde_json::Value>, ActError> {
        if let Some(saved) = &row.saved {
            return Ok(Some(saved.clone()));
        }
        let Some(snapshot) = actuator.snapshot(request).await? else { return Ok(None) };
        let (outbox, id, target) = (self.outbox.clone(), row.id, row.target.clone());
        let saved = tokio::task::spawn_blocking(move || {
            let serving = snapshot.get("serving").and_then(serde_json::Value::as_bool) != Some(false);
            let saved = if serving { snapshot } else { outbox.store().holding_before(&target, id)?.unwrap_or(snapshot) };
            outbox.save_snapshot(id, &saved)?;
            Ok::<_, crate::store::StoreError>(saved)
        })
        .await;
        match saved {
            Ok(Ok(saved)) => Ok(Some(saved)),
            other => Err(ActError::transient(format!("cannot store the state before the kill: {:?}", other.map(|r| r.err())))),
        }
    }

    /// Compare-and-set, once per action: before its first call the flag must be at exactly
    /// `expected` (else `refused`); the percentage it was at is stored before the call, so a
    /// retry after a lost answer (which reads the new percentage) is not refused.
    async fn compared(&self, actuator: &dyn Actuator, row: &ActionRow, request: &ActionRequest, expected: f64) -> Result<Option<serde_json::Value>, ActError> {
        if let Some(saved) = &row.saved {
            return Ok(Some(saved.clone()));
        }
        let now = actuator.read(request).await?;
        if now.killed == Some(true) {
            return Err(ActError::Refused(format!("the flag is off in the flag system, not at the expected {expected} %")));
        }
        match now.rollout {
            None => return Err(ActError::Permanent("the flag system does not report a rollout percentage: compare-and-set cannot be checked".into())),
            Some(seen) if (seen - expected).abs() > 0.001 => {
                return Err(ActError::Refused(format!("the rollout is {seen} %, not the expected {expected} %; nothing was changed")));
            }
            Some(_) => {}
        }
        let saved = json!({ "rollout": now.rollout, "serving": true });
        let (outbox, id, value) = (self.outbox.clone(), row.id, saved.clone());
        match tokio::task::spawn_blocking(move || outbox.save_snapshot(id, &value)).await {
            Ok(Ok(())) => Ok(Some(saved)),
            other => Err(ActError::transient(format!("cannot store the compared state: {:?}", other.map(|r| r.err())))),
        }
    }

    /// A failed attempt: retried while transient and attempts remain, else escalated.
    async fn failed(&self, row: &ActionRow, request: &ActionRequest, attempt: u32, error: ActError) {
        let kind = request.kind.as_str();
        if let ActError::Transient { message, retry_after } = &error {
            Metrics::count(&self.metrics.actuator_errors, &[("actuator", &request.actuator), ("class", "transient")]);
            if attempt < self.settings.max_attempts {
                let delay = retry::delay(attempt, self.settings.initial_backoff, self.settings.max_backoff, *retry_after, rand::random::<f64>());
                let now = self.clock.now();
                tracing::warn!(action = row.id, attempt, error = %message, retry_in_ms = delay.as_millis() as u64, "action failed, will retry");
                let outbox = self.outbox.clone();
                let message = message.clone();
                let id = row.id;
                let saved = tokio::task::spawn_blocking(move || outbox.reschedule(id, attempt, now.plus(delay), &message, now)).await;
                if !matches!(saved, Ok(Ok(()))) {
                    tracing::error!(action = row.id, "cannot reschedule; the action stays due");
                }
                Metrics::count(&self.metrics.actions, &[("kind", kind), ("state", "retrying")]);
                return;
            }
        }
        let error = match error {
            ActError::Transient { message, .. } => ActError::Permanent(format!("gave up after {attempt} attempts: {message}")),
            permanent => permanent,
        };
        self.finish(row, Some(request), attempt, Err(error)).await;
    }

    /// Records an attempt's end and everything that follows from it in one transaction
    /// ([`crate::store::Store::finish_with`]).
    async fn finish(&self, row: &ActionRow, request: Option<&ActionRequest>, attempts: u32, result: Result<Performed, ActError>) {
        let now = self.clock.now();
        let kind = request.map_or("kill", |r| r.kind.as_str());
        let actor = request.map_or("system".to_owned(), |r| match (&r.actor, r.rule.is_empty()) {
            (Some(actor), _) => actor.clone(),
            (None, true) => "system".into(),
            (None, false) => format!("rule:{}", r.rule),
        });
        let base = AuditEntry {
            at: now,
            actor,
            rule: request.map(|r| r.rule.clone()).filter(|r| !r.is_empty()),
            action_id: Some(row.id),
            target: Some(row.target.clone()),
            evidence: request.map(|r| r.evidence.clone()),
            ..AuditEntry::default()
        };
        let (state, error, audit, result_json) = match &result {
            Ok(done) => {
                let state = if done.verified { ActionState::Confirmed } else { ActionState::Sent };
                let after = json!({ "result": done.applied.after, "read_back": done.read_back, "widened": done.widened, "attempts": attempts, "triggers": row.triggers });
                (
                    state,
                    None,
                    AuditEntry { kind: format!("{kind}_{state}"), before: done.applied.before.clone(), after: Some(after), ..base.clone() },
                    Some(done.result.clone()),
                )
            }
            Err(e @ ActError::Refused(_)) => (
                ActionState::Refused,
                Some(e.to_string()),
                AuditEntry { kind: format!("{kind}_refused"), after: Some(json!({ "error": e.to_string(), "attempts": attempts })), ..base.clone() },
                None,
            ),
            Err(e) => (
                ActionState::Escalated,
                Some(e.to_string()),
                AuditEntry { kind: format!("{kind}_escalated"), after: Some(json!({ "error": e.to_string(), "attempts": attempts })), ..base.clone() },
                None,
            ),
        };
        match &result {
            Ok(done) => tracing::info!(action = row.id, target = %row.target, attempts, state = %state, widened = done.widened.is_some(), "action done"),
            Err(e @ ActError::Refused(_)) => tracing::info!(action = row.id, target = %row.target, error = %e, "compare-and-set refused"),
            Err(e) => {
                Metrics::count(&self.metrics.actuator_errors, &[("actuator", request.map_or("", |r| r.actuator.as_str())), ("class", "permanent")]);
                tracing::error!(action = row.id, target = %row.target, attempts, error = %e, "action escalated")
            }
        }
        Metrics::count(&self.metrics.actions, &[("kind", kind), ("state", state.as_str())]);
        let id = row.id;
        let mut follow_ups = Vec::new();
        if let (Some(r), Err(_)) = (request, &result)
            && r.kind == ActionKind::Kill
            && let Some(fallback) = self.verify.get(&r.actuator).and_then(|v| v.fallback.as_deref())
        {
            follow_ups.push(fallback_kill(r, fallback, id, &base, now));
        }
        let notify_text = match (request, &result) {
            (Some(r), _) if r.kind == ActionKind::Notify => None,
            (Some(r), Ok(done)) => Some((
                if r.kind == ActionKind::Kill { Severity::Warning } else { Severity::Info },
                format!(
                    "flagguard {} {} (action {id}, {state} after {attempts} attempt(s)){}",
                    past(r.kind),
                    describe(r),
                    done.widened.as_ref().map(|w| format!("; WIDENED to the whole environment: {w}")).unwrap_or_default()
                ),
            )),
            // The caller asked and is answered; nobody else needs telling.
            (Some(_), Err(ActError::Refused(_))) => None,
            (Some(r), Err(e)) => Some((
                if r.kind == ActionKind::Kill { Severity::Page } else { Severity::Warning },
                format!("ESCALATION: flagguard could not {} {} (action {id}): {e}", r.kind.as_str(), describe(r)),
            )),
            _ => None,
        };
        if let (Some((severity, text)), Some(r)) = (notify_text, request) {
            let incident = Incident::of(&r.flag, r.environment.as_deref());
            let note = Note::new(severity, &text, &r.evidence, Some(&r.flag));
            let note = match (r.kind, &result) {
                // A failed kill opens (or joins) the flag's incident.
                (ActionKind::Kill, Err(_)) => note.incident(Incident { key: incident.clone(), resolve: false }),
                _ => note,
            };
            follow_ups.extend(self.outbox.notification(&note, now));
            // A kill confirmed at last closes the page an earlier failure opened.
            if r.kind == ActionKind::Kill && result.is_ok() && self.had_incident(r, row.id).await {
                let resolved = format!("RESOLVED: flagguard killed {} at last (action {id})", describe(r));
                let note = Note::new(Severity::Page, &resolved, &r.evidence, Some(&r.flag)).incident(Incident { key: incident, resolve: true });
                follow_ups.extend(self.outbox.notification(&note, now));
            }
        }
        let restored = match (request, &result) {
            (Some(r), Ok(_)) if r.kind == ActionKind::Restore => Some(crate::store::Restored {
                target: row.target.clone(),
                slice_key: r.slice_key.clone(),
                audit: AuditEntry { kind: "kill_restored".into(), after: Some(json!({ "restore_action": id })), ..base.clone() },
            }),
            _ => None,
        };
        let outcome = crate::store::Outcome { id, state, attempts, error, result: result_json, audit, restored, follow_ups };
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.finish(&outcome)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(action = row.id, "the action was finished already; its outcome is not recorded twice"),
            _ => {
                tracing::error!(action = row.id, "cannot record the action's outcome; it stays pending and is tried again (the call is idempotent)");
                // Not at once: a store that refuses writes must not turn into a loop of calls.
                let delay = retry::delay(attempts.max(1), self.settings.initial_backoff, self.settings.max_backoff, None, rand::random::<f64>());
                let (outbox, id) = (self.outbox.clone(), row.id);
                let _ =
                    tokio::task::spawn_blocking(move || outbox.reschedule(id, attempts.saturating_sub(1), now.plus(delay), "cannot record the outcome", now))
                        .await;
            }
        }
        self.wake.notify_one();
    }

    /// Whether a page is open for the request's flag and environment: the newest earlier kill
    /// there (on any actuator: a fallback's confirmation closes it too) failed or did not drain.
    async fn had_incident(&self, request: &ActionRequest, id: i64) -> bool {
        let (store, flag) = (self.outbox.store().clone(), request.flag.clone());
        let Ok(Ok(kills)) = tokio::task::spawn_blocking(move || store.recent_kills(&flag, 50)).await else { return false };
        kills
            .iter()
            .filter(|k| k.id < id && self.environment_of(k) == request.environment)
            .find(|k| k.state != ActionState::Pending)
            .is_some_and(|k| matches!(k.state, ActionState::Escalated | ActionState::Failed))
    }

    /// The environment a stored kill was (or would have been) carried out in: as carried out,
    /// else as asked, else its actuator's default — as [`prepare`] resolves it.
    fn environment_of(&self, kill: &ActionRow) -> Option<String> {
        let request: Option<ActionRequest> = serde_json::from_value(kill.effective_request().clone()).ok();
        let request = request?;
        request
            .environment
            .clone()
            .or_else(|| request.scoped("environment").map(str::to_owned))
            .or_else(|| self.actuators.get(&request.actuator).and_then(|a| a.default_environment()).map(str::to_owned))
    }

    /// Reads back every kill flagguard holds (confirmed, drained, recovered) at most once per
    /// `drift_interval`; one that the flag system now serves again was re-enabled by someone
    /// else: `overridden`, audited and notified — never fought.
    async fn check_drift(&self, last: &mut HashMap<i64, Timestamp>) {
        let store = self.outbox.store().clone();
        let since = self.clock.now().minus(crate::store::WATCH_AFTER_DRAIN);
        let Ok(Ok(rows)) = tokio::task::spawn_blocking(move || store.watched_kills(since)).await else { return };
        let now = self.clock.now();
        last.retain(|id, _| rows.iter().any(|r| r.id == *id));
        for row in rows.into_iter().filter(|r| r.state != ActionState::Sent) {
            // A widened kill (or one sent to a default environment) is read back as carried out.
            let Ok(request) = serde_json::from_value::<ActionRequest>(row.effective_request().clone()) else { continue };
            let (Some(actuator), Some(verify)) = (self.actuators.get(&request.actuator), self.verify.get(&request.actuator)) else { continue };
            if last.get(&row.id).is_some_and(|t| now.since(*t) < verify.drift_interval) {
                continue;
            }
            last.insert(row.id, now);
            let Ok(Ok(state)) = tokio::time::timeout(self.settings.timeout, actuator.read(&request)).await else { continue };
            if state.killed != Some(false) {
                continue;
            }
            // flagguard's own restore (or another action) in flight is not drift.
            let (store, target) = (self.outbox.store().clone(), row.target.clone());
            if !matches!(tokio::task::spawn_blocking(move || store.has_pending(&target)).await, Ok(Ok(false))) {
                continue;
            }
            tracing::warn!(action = row.id, target = %row.target, "drift: a killed flag was re-enabled by someone else");
            let outbox = self.outbox.clone();
            let _ = tokio::task::spawn_blocking(move || outbox.overridden(&row, &request, &state.detail, now)).await;
            self.wake.notify_one();
        }
    }
}

/// What a successful attempt did.
pub struct Performed {
    pub applied: super::Applied,
    /// The read-back agreed (`confirmed`); false when the flag system cannot be read (`sent`).
    pub verified: bool,
    pub read_back: Option<serde_json::Value>,
    /// `on_unscoped: widen` applied: why the slice could not be expressed.
    pub widened: Option<String>,
    /// What is stored as the action's result (see [`Called::result`]).
    pub result: serde_json::Value,
}

/// A call that succeeded.
pub struct Called {
    pub applied: super::Applied,
    pub widened: Option<String>,
}

impl Called {
    /// The action's stored result: the state before (what a restore returns to), after, and
    /// the request as carried out (widened, its environment resolved), which restores, drift
    /// checks, drain verification and fallbacks act on.
    pub fn result(&self, request: &ActionRequest) -> serde_json::Value {
        json!({ "before": self.applied.before, "after": self.applied.after, "request": request })
    }
}

/// What the read-back after a successful call says.
pub enum Check {
    /// As expected; `verified` false when the flag system cannot be read back.
    Agrees { verified: bool, read_back: Option<serde_json::Value> },
    /// The flag system reports otherwise (the call is idempotent and made again).
    Disagrees(String),
    /// The read-back itself failed.
    Failed(ActError),
}

/// Resolves what the request really targets: the actuator's default environment for a request
/// without one (so the drain is measured there), and for a kill of a slice the flag system
/// cannot express, the whole environment (`on_unscoped: widen`, returning why) or a refusal.
pub fn prepare(actuator: &dyn Actuator, request: &mut ActionRequest) -> Result<Option<String>, ActError> {
    if request.environment.is_none()
        && request.scoped("environment").is_none()
        && let Some(env) = actuator.default_environment()
    {
        request.environment = Some(env.to_owned());
    }
    if request.kind != ActionKind::Kill {
        return Ok(None);
    }
    let Some(why) = actuator.unexpressible(&request.slice()) else { return Ok(None) };
    if !request.widen {
        return Err(ActError::Permanent(format!("cannot kill only this slice: {why} (a rule may set action.on_unscoped: widen)")));
    }
    request.scope.retain(|(k, _)| k == "environment");
    request.region = None;
    Ok(Some(why))
}

/// The call of one attempt (after [`prepare`]).
pub async fn call(actuator: &dyn Actuator, request: &ActionRequest, key: &str) -> Result<Called, ActError> {
    let applied = match request.payload()? {
        Payload::Kill { .. } => actuator.kill(request, key).await?,
        Payload::Notify { .. } => return Err(ActError::Permanent("a notification is not a flag-system call".into())),
        Payload::Restore { .. } => actuator.restore(request, key).await?,
        Payload::Rollout { percent, expect, strict } => {
            if let Some(expected) = expect {
                // Read before write: a plan never overwrites someone else's change (nor does a
                // compare-and-set whose flag moved since it was compared: refused).
                let now = actuator.read(request).await?;
                let refuse = |message: String| if strict { ActError::Refused(message) } else { ActError::Permanent(format!("drift: {message}")) };
                if now.killed == Some(true) {
                    return Err(refuse("the flag is off in the flag system; a rollout change does not turn it back on".into()));
                }
                if let Some(seen) = now.rollout
                    && (seen - expected).abs() > 0.001
                    && (seen - percent).abs() > 0.001
                {
                    return Err(refuse(format!("the rollout is {seen} %, {expected} % was expected (changed outside flagguard?); not overwriting")));
                }
            }
            actuator.set_rollout(request, percent, key).await?
        }
    };
    Ok(Called { applied, widened: None })
}

/// The read-back after a successful call. A read-back that disagrees is transient (the call
/// is idempotent and is simply made again), so it ends in escalation if it never agrees.
pub async fn check(actuator: &dyn Actuator, request: &ActionRequest) -> Check {
    if request.kind == ActionKind::Notify {
        return Check::Agrees { verified: true, read_back: None };
    }
    let state = match actuator.read(request).await {
        Ok(state) => state,
        Err(e) => return Check::Failed(e),
    };
    let expected_killed = match request.kind {
        ActionKind::Kill => Some(true),
        ActionKind::Restore => Some(!request.saved.as_ref().and_then(|s| s.get("serving")).and_then(serde_json::Value::as_bool).unwrap_or(true)),
        _ => None,
    };
    if let (Some(expected), Some(seen)) = (expected_killed, state.killed)
        && expected != seen
    {
        return Check::Disagrees(format!(
            "read back: the flag system reports the target {} after the {} call: {}",
            if seen { "off" } else { "still on" },
            request.kind.as_str(),
            state.detail
        ));
    }
    if let (ActionKind::Rollout, Some(want), Some(seen)) = (request.kind, request.percent, state.rollout)
        && (want - seen).abs() > 0.001
    {
        return Check::Disagrees(format!("read back: rollout is {seen} %, not {want} %"));
    }
    let verified = match request.kind {
        ActionKind::Rollout => state.rollout.is_some(),
        _ => state.killed.is_some(),
    };
    let read_back =
        (state.killed.is_some() || state.rollout.is_some()).then(|| json!({ "killed": state.killed, "rollout": state.rollout, "detail": state.detail }));
    Check::Agrees { verified, read_back }
}

fn past(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Kill => "killed",
        ActionKind::Restore => "restored",
        ActionKind::Rollout => "changed the rollout of",
        ActionKind::Notify => "notified",
    }
}

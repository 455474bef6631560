//! The outbox executor: the async shell that carries out pending actions. It runs each due
//! action once at a time (never twice concurrently), with a timeout per call, reschedules
//! transient failures with backoff and finishes the rest, always through the store.
//! A restart resumes whatever is pending: the outbox is the queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{ActError, ActionKind, ActionRequest, Actuator, describe, notify, retry};
use crate::store::{ActionRow, AuditEntry, Store};
use crate::telemetry::Metrics;
use crate::time::Clock;

/// From `[act]`.
#[derive(Clone, Debug)]
pub struct ExecutorSettings {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
    /// Whether notifications are configured (kill outcomes are then notified).
    pub notify: bool,
}

pub struct Executor {
    pub store: Store,
    pub actuators: HashMap<String, Arc<dyn Actuator>>,
    pub settings: ExecutorSettings,
    pub metrics: Arc<Metrics>,
    pub wake: Arc<Notify>,
    pub clock: Arc<dyn Clock>,
}

impl Executor {
    /// Runs until `shutdown`, then lets in-flight calls finish within `grace` (the outbox keeps
    /// whatever does not).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let mut in_flight: HashSet<i64> = HashSet::new();
        let mut tasks: JoinSet<i64> = JoinSet::new();
        loop {
            let now = self.clock.now();
            let store = self.store.clone();
            let due = tokio::task::spawn_blocking(move || (store.due(now), store.next_due())).await;
            let (due, next) = match due {
                Ok((Ok(due), Ok(next))) => (due, next),
                other => {
                    tracing::error!(error = ?other.err(), "cannot read the outbox; retrying");
                    (Vec::new(), None)
                }
            };
            for row in due {
                if in_flight.insert(row.id) {
                    let this = self.clone();
                    tasks.spawn(async move {
                        let id = row.id;
                        this.execute(row).await;
                        id
                    });
                }
            }
            let wait = match next {
                Some(t) if t > now => t.since(now).min(Duration::from_secs(1)),
                _ => Duration::from_secs(1),
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
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("in-flight actions did not finish within the grace period; the outbox resumes them at restart");
        }
    }

    async fn execute(&self, row: ActionRow) {
        let request: ActionRequest = match serde_json::from_value(row.request.clone()) {
            Ok(r) => r,
            Err(e) => return self.finish(&row, None, row.attempts, Err(ActError::Permanent(format!("unreadable outbox entry: {e}")))).await,
        };
        let attempt = row.attempts + 1;
        let kind = kind_label(request.kind);
        let result = match self.actuators.get(&request.actuator) {
            None => Err(ActError::Permanent(format!("actuator {:?} is not configured", request.actuator))),
            Some(actuator) => {
                Metrics::count(&self.metrics.actions, &[("kind", kind), ("state", "attempt")]);
                match tokio::time::timeout(self.settings.timeout, actuator.kill(&request, &row.idempotency_key)).await {
                    Ok(result) => result,
                    Err(_) => Err(ActError::transient(format!("timed out after {:?}", self.settings.timeout))),
                }
            }
        };
        if let Err(ActError::Transient { message, retry_after }) = &result {
            Metrics::count(&self.metrics.actuator_errors, &[("actuator", &request.actuator), ("class", "transient")]);
            if attempt < self.settings.max_attempts {
                let delay = retry::delay(attempt, self.settings.initial_backoff, self.settings.max_backoff, *retry_after, rand::random::<f64>());
                let now = self.clock.now();
                tracing::warn!(action = row.id, attempt, error = %message, retry_in_ms = delay.as_millis() as u64, "action failed, will retry");
                let store = self.store.clone();
                let message = message.clone();
                let id = row.id;
                let saved = tokio::task::spawn_blocking(move || store.reschedule(id, attempt, now.plus(delay), &message, now)).await;
                if !matches!(saved, Ok(Ok(()))) {
                    tracing::error!(action = row.id, "cannot reschedule; the action stays due");
                }
                Metrics::count(&self.metrics.actions, &[("kind", kind), ("state", "retrying")]);
                return;
            }
        }
        self.finish(
            &row,
            Some(&request),
            attempt,
            result.map_err(|e| match e {
                ActError::Transient { message, .. } => ActError::Permanent(format!("gave up after {attempt} attempts: {message}")),
                permanent => permanent,
            }),
        )
        .await;
    }

    async fn finish(&self, row: &ActionRow, request: Option<&ActionRequest>, attempts: u32, result: Result<super::Applied, ActError>) {
        let now = self.clock.now();
        let kind = request.map_or("kill", |r| kind_label(r.kind));
        let actor = request.map_or("system".to_owned(), |r| if r.rule.is_empty() { "system".into() } else { format!("rule:{}", r.rule) });
        let (state, error, audit) = match &result {
            Ok(applied) => (
                "confirmed",
                None,
                AuditEntry {
                    at: now,
                    actor,
                    kind: format!("{kind}_confirmed"),
                    rule: request.map(|r| r.rule.clone()).filter(|r| !r.is_empty()),
                    action_id: Some(row.id),
                    target: Some(row.target.clone()),
                    before: applied.before.clone(),
                    after: applied.after.clone().map(|a| json!({ "result": a, "attempts": attempts, "triggers": row.triggers })),
                    evidence: request.map(|r| r.evidence.clone()),
                },
            ),
            Err(e) => (
                "escalated",
                Some(e.to_string()),
                AuditEntry {
                    at: now,
                    actor,
                    kind: format!("{kind}_escalated"),
                    rule: request.map(|r| r.rule.clone()).filter(|r| !r.is_empty()),
                    action_id: Some(row.id),
                    target: Some(row.target.clone()),
                    after: Some(json!({ "error": e.to_string(), "attempts": attempts })),
                    evidence: request.map(|r| r.evidence.clone()),
                    ..AuditEntry::default()
                },
            ),
        };
        match &result {
            Ok(_) => tracing::info!(action = row.id, target = %row.target, attempts, "action confirmed"),
            Err(e) => {
                Metrics::count(&self.metrics.actuator_errors, &[("actuator", request.map_or("", |r| r.actuator.as_str())), ("class", "permanent")]);
                tracing::error!(action = row.id, target = %row.target, attempts, error = %e, "action escalated")
            }
        }
        Metrics::count(&self.metrics.actions, &[("kind", kind), ("state", state)]);
        let store = self.store.clone();
        let id = row.id;
        let notify_text = match (request, &result) {
            (Some(r), Ok(_)) if r.kind == ActionKind::Kill => {
                Some(format!("flagguard killed {} (action {id}, confirmed after {attempts} attempt(s))", describe(r)))
            }
            (Some(r), Err(e)) if r.kind == ActionKind::Kill => Some(format!("ESCALATION: flagguard could not kill {} (action {id}): {e}", describe(r))),
            _ => None,
        };
        let evidence = request.map(|r| r.evidence.clone()).unwrap_or_default();
        let notify = self.settings.notify;
        let saved = tokio::task::spawn_blocking(move || {
            store.finish(id, state, attempts, error.as_deref(), &audit)?;
            if let (true, Some(text)) = (notify, notify_text) {
                notify::enqueue(&store, &text, &evidence, now)?;
            }
            Ok::<_, crate::store::StoreError>(())
        })
        .await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::error!(action = row.id, "cannot record the action's outcome; it stays pending and will be retried");
        }
        self.wake.notify_one();
    }
}

fn kind_label(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Kill => "kill",
        ActionKind::Notify => "notification",
    }
}

//! Notifications: Slack-compatible JSON (`{"text": …}`, plus flagguard's own fields) posted to
//! `act.notify_url`. They go through the outbox like kills, so they survive restarts and are
//! retried, but a failed notification is only audited.

use serde_json::{Value, json};

use super::{ActError, ActionKind, ActionRequest, Actuator, Applied, evidence_summary};
use crate::store::{AuditEntry, FollowUp, Store, StoreError};
use crate::time::Timestamp;

/// The actuator name notifications use in the outbox.
pub const NOTIFIER: &str = "notify";

/// Queues a notification.
pub fn enqueue(store: &Store, text: &str, evidence: &Value, at: Timestamp) -> Result<(), StoreError> {
    let n = notification(text, evidence, at);
    store.submit(&n.target, &n.kind, &n.request, &n.idempotency_key, "", &n.audit)?;
    Ok(())
}

/// A notification, to queue with another write ([`Store::finish_with`]).
pub fn notification(text: &str, evidence: &Value, at: Timestamp) -> FollowUp {
    let request = ActionRequest {
        rule: evidence.get("rule").and_then(Value::as_str).unwrap_or("").into(),
        evidence: evidence_summary(evidence),
        text: Some(text.into()),
        ..ActionRequest::new(ActionKind::Notify, NOTIFIER, "")
    };
    // Each notification is its own target: notifications never join one another.
    let target = format!("{NOTIFIER}|{}|{}", at.as_millis(), super::idempotency_key(text, at));
    let audit = AuditEntry {
        at,
        actor: "system".into(),
        kind: "notification_queued".into(),
        target: Some(target.clone()),
        after: Some(json!({ "text": text })),
        ..AuditEntry::default()
    };
    FollowUp { target: target.clone(), kind: "notify".into(), request: serde_json::to_value(&request).unwrap_or(Value::Null), idempotency_key: target, audit }
}

pub struct Notifier {
    url: String,
    client: reqwest::Client,
}

impl Notifier {
    pub fn new(url: &str, client: reqwest::Client) -> Notifier {
        Notifier { url: url.into(), client }
    }
}

#[async_trait::async_trait]
impl Actuator for Notifier {
    fn unexpressible(&self, _scope: &[(String, String)]) -> Option<String> {
        None
    }

    async fn kill(&self, request: &ActionRequest, idempotency_key: &str) -> Result<Applied, ActError> {
        let body = json!({ "text": request.text, "flagguard": request.evidence });
        let response =
            self.client.post(&self.url).header("Idempotency-Key", idempotency_key).json(&body).send().await.map_err(super::webhook::transport_error)?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        super::webhook::classify(status, None, &text)?;
        Ok(Applied { before: None, after: Some(json!({ "status": status.as_u16() })) })
    }
}

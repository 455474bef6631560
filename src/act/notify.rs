//! Notifications: Slack-compatible JSON (`{"text": …}`, plus flagguard's own fields) posted to
//! `act.notify_url`. They are queued through the outbox like kills ([`super::outbox::Outbox::notify`]),
//! so they survive restarts and are retried, but a failed notification is only audited. The
//! executor delivers them here: a notification changes no flag, so it is not an actuator.

use serde_json::json;

use super::{ActError, ActionRequest, Applied};

/// Where notifications go.
pub struct Notifier {
    url: String,
    client: reqwest::Client,
}

impl Notifier {
    pub fn new(url: &str, client: reqwest::Client) -> Notifier {
        Notifier { url: url.into(), client }
    }

    /// Posts one notification (its text and evidence), idempotently.
    pub async fn send(&self, request: &ActionRequest, idempotency_key: &str) -> Result<Applied, ActError> {
        let body = json!({ "text": request.text, "flagguard": request.evidence });
        let response = self.client.post(&self.url).header("Idempotency-Key", idempotency_key).json(&body).send().await.map_err(super::http::transport_error)?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        super::http::classify(status, None, &text)?;
        Ok(Applied { before: None, after: Some(json!({ "status": status.as_u16() })) })
    }
}

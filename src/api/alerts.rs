//! `POST /v1/alerts/{source}`: authenticate on the raw bytes, parse, map, and hand each alert to
//! the outbox door (`act::outbox::Outbox::alert`: dedupe, hold, dry-run, kill, notify) before
//! answering (PagerDuty wants 2xx within 5 s: the flag
//! system is called afterwards by the executor). Each route has its own credentials, body limit
//! and rate limit; a source without configuration is not served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};

use crate::act::outbox::{AlertDelivery, AlertResult, Outbox};
use crate::alerts::auth::{SourceAuth, verify};
use crate::alerts::mapping::{self, AlertMapping};
use crate::alerts::{AlertError, AlertStatus, Source, sources};
use crate::config::{AlertSourceConfig, expand_env};
use crate::telemetry::Metrics;
use crate::time::{Clock, Timestamp};
use crate::view::Snapshot;

/// The answer to a delivery.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    alerts: usize,
    actions: Vec<Value>,
    duplicates: u32,
    unmapped: Vec<String>,
    not_firing: u32,
}

/// One enabled route.
pub struct Route {
    auth: SourceAuth,
    direct: Option<AlertMapping>,
    max_body: usize,
    limiter: Mutex<Bucket>,
}

impl Route {
    pub fn max_body(&self) -> usize {
        self.max_body
    }
}

/// A token bucket: `rate` per minute, bursts up to `rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Timestamp,
}

impl Bucket {
    fn take(&mut self, now: Timestamp) -> Result<(), Duration> {
        let refill = now.since(self.at).as_secs_f64() * self.rate / 60.0;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(((1.0 - self.tokens) * 60.0 / self.rate).max(1.0)))
        }
    }
}

/// What the alert routes share.
#[derive(Clone)]
pub struct AlertsState {
    pub routes: Arc<HashMap<Source, Route>>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The alert → kill policy lives behind this door ([`Outbox::alert`]).
    pub outbox: Outbox,
    pub wake: Arc<Notify>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

/// Builds the enabled routes from `[alerts.SOURCE]` (validated: names known, secrets set).
pub fn routes(config: &std::collections::BTreeMap<String, AlertSourceConfig>, now: Timestamp) -> HashMap<Source, Route> {
    let expand = |v: &str| expand_env(v).unwrap_or_default();
    config
        .iter()
        .filter_map(|(name, c)| {
            let source = Source::parse(name)?;
            let auth = SourceAuth {
                bearer_token: c.bearer_token.as_deref().map(expand),
                basic: c.basic_user.as_deref().zip(c.basic_password.as_deref()).map(|(u, p)| (expand(u), expand(p))),
                hmac_secrets: c.hmac_secrets.iter().map(|s| expand(s)).collect(),
                timestamp_header: c.timestamp_header.clone(),
                replay_window: c.replay_window,
            };
            let direct = c.allow_direct.then(|| c.direct_actuator.as_deref().map(|a| mapping::direct(a, c.direct_mode))).flatten();
            let rate = c.rate_per_minute.max(1) as f64;
            Some((source, Route { auth, direct, max_body: c.max_body_bytes, limiter: Mutex::new(Bucket { rate, tokens: rate, at: now }) }))
        })
        .collect()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// 503 with `Retry-After`: Alertmanager, PagerDuty and generic senders deliver again.
fn retry_later(message: &str) -> Response {
    let retry = super::RETRY_AFTER_SECONDS.to_string();
    (StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::RETRY_AFTER, retry)], Json(json!({ "error": message }))).into_response()
}

/// The handler of `POST /v1/alerts/{source}`.
#[tracing::instrument(name = "flagguard.alert", skip_all, fields(source = %name))]
pub async fn receive(State(state): State<AlertsState>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(source) = Source::parse(&name) else {
        return error(StatusCode::NOT_FOUND, &format!("unknown alert source {name:?}"));
    };
    let Some(route) = state.routes.get(&source) else {
        return error(StatusCode::NOT_FOUND, &format!("alert source {name} is not enabled: configure [alerts.{name}]"));
    };
    let now = state.clock.now();
    if body.len() > route.max_body {
        return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("body exceeds {} bytes", route.max_body));
    }
    // Authenticated first, so that unauthenticated requests cannot spend the route's rate
    // limit and lock real alerts out during an incident.
    if let Err(e) = verify(source, &route.auth, &headers, &body, now) {
        Metrics::count(&state.metrics.alert_auth_failures, &[("source", source.name())]);
        tracing::warn!(%source, reason = %e, "alert webhook refused");
        return error(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let limited = route.limiter.lock().unwrap_or_else(|p| p.into_inner()).take(now);
    if let Err(wait) = limited {
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limit of this alert route exceeded");
        response.headers_mut().insert(header::RETRY_AFTER, wait.as_secs().max(1).into());
        return response;
    }
    let alerts = match sources::parse(source, &body) {
        Ok(alerts) => alerts,
        Err(e @ AlertError::Malformed { .. }) | Err(e @ AlertError::Unauthorized(_)) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let mappings = state.snapshots.borrow().rule_set.alerts.clone();
    let outbox = state.outbox.clone();
    let metrics = state.metrics.clone();
    let direct = route.direct.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut report = Report { alerts: alerts.len(), ..Report::default() };
        for (index, alert) in alerts.iter().enumerate() {
            Metrics::count(&metrics.alerts_received, &[("source", source.name()), ("status", alert.status.metric_label())]);
            let target = match alert.status {
                AlertStatus::Firing => Some(mapping::map(alert, &mappings, direct.as_ref())),
                // Resolved alerts never restore a flag: recorded only.
                _ => None,
            };
            let mapped = target.as_ref().and_then(|t| t.as_ref().ok()).cloned();
            let delivery = AlertDelivery { source: source.name(), alert, target, digest: &digest, index, at: now };
            match outbox.alert(&delivery)? {
                AlertResult::Duplicate => report.duplicates += 1,
                AlertResult::NotFiring => report.not_firing += 1,
                AlertResult::Unmapped(why) => report.unmapped.push(why),
                AlertResult::Mapped { action, joined, held } => {
                    let Some(t) = mapped else { continue };
                    report
                        .actions
                        .push(json!({ "flag": t.flag, "via": t.actuator, "mode": t.mode.as_str(), "action_id": action, "joined": joined, "held": held }));
                }
            }
        }
        Ok::<_, crate::store::StoreError>(report)
    })
    .await;
    match outcome {
        Ok(Ok(report)) => {
            state.wake.notify_one();
            (StatusCode::OK, Json(report)).into_response()
        }
        // Not acknowledged: the sender retries, and nothing half-done is acknowledged.
        Ok(Err(e)) => retry_later(&format!("cannot record the alert: {e}")),
        Err(e) => retry_later(&format!("cannot record the alert: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_refills_over_time() {
        let mut bucket = Bucket { rate: 2.0, tokens: 2.0, at: Timestamp(0) };
        assert!(bucket.take(Timestamp(0)).is_ok());
        assert!(bucket.take(Timestamp(0)).is_ok());
        let wait = bucket.take(Timestamp(0)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(30), "2 per minute: one every 30 s");
        assert!(bucket.take(Timestamp(30_000)).is_ok());
    }
}

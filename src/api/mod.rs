//! The admin API (axum): cohorts, rules, verdicts, actions, audit, rule reload, health and
//! Prometheus metrics. Handlers read the pipeline's latest snapshot (a `watch`) and the store;
//! they never touch the pipeline's state. Alert webhooks are in [`alerts`]. Binds loopback by default until access control exists.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

pub mod actions;
pub mod alerts;
pub mod approvals;
pub mod auth;
pub mod controls;
pub mod dashboard;
pub mod flags;
pub mod gates;
pub mod rollouts;

use crate::pipeline::Command;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::view::Snapshot;

/// Why an API call failed; mapped to a response in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid rules")]
    InvalidRules(Vec<String>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// Outside the caller's scope (audited as `access_denied`).
    #[error("{0}")]
    Forbidden(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            // The store's own text (SQL, paths) stays in the log: the caller learns it failed.
            // The database is down or restarting (cluster mode): the caller retries.
            ApiError::Store(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "API call failed: the database is unavailable");
                let body = json!({ "error": "the database is unavailable; retry later" });
                return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())], Json(body)).into_response();
            }
            ApiError::Store(e) => {
                tracing::error!(error = %e, "API call failed in the store");
                (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "internal error in the store; see flagguard's log" }))
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": self.to_string() })),
            ApiError::InvalidRules(errors) => {
                (StatusCode::UNPROCESSABLE_ENTITY, json!({ "error": "invalid rules; the previous rules stay active", "errors": errors }))
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, json!({ "error": self.to_string() })),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, json!({ "error": self.to_string() })),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, json!({ "error": self.to_string() })),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, json!({ "error": self.to_string() })),
        };
        (status, Json(body)).into_response()
    }
}

/// `Retry-After` of a 503 while the database is unavailable.
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Reads (the audit log, actions, plans).
    pub store: Store,
    /// Every action an operator asks for.
    pub outbox: crate::act::outbox::Outbox,
    pub metrics: Arc<Metrics>,
    pub commands: mpsc::Sender<Command>,
    pub ready: Arc<AtomicBool>,
    pub clock: Arc<dyn crate::time::Clock>,
    /// Wakes the executor after an operator action is queued.
    pub wake: Arc<tokio::sync::Notify>,
    pub actuators: std::collections::BTreeSet<String>,
    /// The actuators, for reads (`GET /v1/flags/{flag}/state`); every change goes through the
    /// outbox.
    pub flag_systems: std::collections::HashMap<String, Arc<dyn crate::act::Actuator>>,
    /// The drift watch's last pass over the flag manifests (`[manifests]`), and their owners.
    pub drift: watch::Receiver<Arc<crate::manifest::watch::DriftState>>,
    /// `[governance]`: which environments need approvals.
    pub governance: approvals::Governance,
    pub tokens: auth::Tokens,
    /// Cluster mode: this replica's lease (`GET /v1/cluster`).
    pub lease: Option<Arc<crate::cluster::lease::Lease>>,
}

/// Builds the API router; `alerts` serves `POST /v1/alerts/{source}`.
pub fn router(state: ApiState, alerts: alerts::AlertsState) -> Router {
    let max_alert_body = alerts.routes.values().map(|r| r.max_body()).max().unwrap_or(1 << 20);
    let alert_routes =
        Router::new().route("/v1/alerts/{source}", post(alerts::receive)).with_state(alerts).layer(axum::extract::DefaultBodyLimit::max(max_alert_body));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::app_js))
        .route("/assets/app.css", get(dashboard::app_css))
        .route("/v1/gates/{flag}", get(gates::gate))
        .route("/v1/overview", get(dashboard::overview_handler))
        .route("/v1/events", get(dashboard::events))
        .route("/v1/flags/{flag}/history", get(dashboard::history))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cohorts", get(cohorts))
        .route("/v1/rules", get(rules))
        .route("/v1/rules/reload", post(reload))
        .route("/v1/verdicts", get(verdicts))
        .route("/v1/actions", get(actions::list))
        .route("/v1/actions/{id}", get(actions::one))
        .route("/v1/actions/{id}/restore", post(actions::restore))
        .route("/v1/flags/{flag}/kill", post(actions::kill))
        .route("/v1/flags/{flag}/rollout", post(actions::rollout))
        .route("/v1/flags/{flag}/restore", post(actions::restore_flag))
        .route("/v1/flags/{flag}/state", get(flags::state))
        .route("/v1/drift", get(flags::drift))
        .route("/v1/compliance", get(flags::compliance))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}", get(approvals::one))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/v1/rollouts", get(rollouts::list))
        .route("/v1/flags/stale", get(rollouts::stale_flags))
        .route("/v1/rollouts/{name}/{op}", post(rollouts::operate))
        .route("/v1/cluster", get(cluster))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/controls", get(controls::get))
        .route("/v1/controls/pause", post(controls::pause))
        .route("/v1/controls/resume", post(controls::resume))
        .route("/v1/controls/flags/{flag}", axum::routing::put(controls::list_flag).delete(controls::unlist_flag))
        .route("/v1/rules/{rule}/silence", post(controls::silence).delete(controls::unsilence))
        .with_state(state.clone())
        .merge(alert_routes)
        .layer(axum::middleware::from_fn_with_state(state.tokens.clone(), auth::check))
}

/// The cluster as this replica sees it, from its own state (it answers while PostgreSQL does
/// not): whether it leads by its own clock, and the lease row and members as last read.
/// Embedded: always the leader.
async fn cluster(State(s): State<ApiState>) -> Response {
    let mut answer = match &s.lease {
        None => json!({ "mode": "embedded", "leader": true, "epoch": 0, "members": [] }),
        Some(lease) => {
            lease.refresh_if_stale(std::time::Duration::from_millis(500)).await;
            lease.status()
        }
    };
    let scale_out = s.snapshots.borrow().scale_out.clone();
    if !scale_out.is_null() {
        answer["scale_out"] = scale_out;
    }
    Json(answer).into_response()
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.ready.load(Ordering::Relaxed) { "ready".into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response() }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let store = s.store.clone();
    if let Ok(Ok(pending)) = tokio::task::spawn_blocking(move || store.pending_count()).await {
        s.metrics.actions_pending.set(pending as i64);
    }
    if let Ok(findings) = flags::compliance_findings(&s).await {
        for problem in crate::manifest::compliance::Problem::ALL {
            let n = findings.iter().filter(|f| f.problem == problem).count();
            s.metrics.compliance_findings.get_or_create(&vec![("problem", problem.as_str().to_owned())]).set(n as i64);
        }
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode()).into_response()
}

#[derive(Deserialize)]
struct CohortQuery {
    flag: Option<String>,
}

async fn cohorts(State(s): State<ApiState>, Query(q): Query<CohortQuery>) -> Response {
    let snap = s.snapshots.borrow().clone();
    let series: Vec<_> = snap.series.iter().filter(|v| q.flag.as_deref().is_none_or(|f| v.flag == f)).collect();
    Json(json!({ "at": snap.at, "series": series, "unflagged": snap.unflagged, "series_count": snap.series_count, "traces_in_flight": snap.traces_in_flight, "window_bytes": snap.window_bytes })).into_response()
}

async fn rules(State(s): State<ApiState>) -> Response {
    let snap = s.snapshots.borrow().clone();
    Json(json!({ "rules": snap.rules, "stale_rules": snap.stale_rules })).into_response()
}

async fn verdicts(State(s): State<ApiState>) -> Response {
    let snap = s.snapshots.borrow().clone();
    Json(json!({ "at": snap.at, "verdicts": snap.verdicts, "stale_rules": snap.stale_rules })).into_response()
}

async fn reload(State(s): State<ApiState>, caller: Option<axum::Extension<auth::Caller>>) -> Result<Response, ApiError> {
    // The rules reach every flag: a scoped token may not reload them.
    if let Some(axum::Extension(c)) = &caller
        && !c.scope.is_whole()
    {
        return Err(actions::deny(&s, c, "reload the rules", "*", None, "the rules reach every flag; reloading them needs an unscoped token".into()).await);
    }
    let (reply, answer) = oneshot::channel();
    s.commands
        .send(Command::ReloadRules { actor: actions::actor(caller, None), reply })
        .await
        .map_err(|_| ApiError::Unavailable("pipeline is shutting down".into()))?;
    match answer.await {
        Ok(Ok(n)) => Ok(Json(json!({ "rules": n })).into_response()),
        Ok(Err(errors)) => Err(ApiError::InvalidRules(errors)),
        Err(_) => Err(ApiError::Unavailable("pipeline is shutting down".into())),
    }
}

#[derive(Deserialize)]
pub struct Page {
    pub limit: Option<u32>,
    pub before: Option<i64>,
    pub kind: Option<String>,
}

/// `GET /v1/audit` and `/v1/audit/export` filters.
#[derive(Deserialize)]
pub struct AuditQuery {
    limit: Option<u32>,
    before: Option<i64>,
    after: Option<i64>,
    kind: Option<String>,
    actor: Option<String>,
    rule: Option<String>,
    flag: Option<String>,
    /// RFC 3339 or milliseconds since the epoch.
    since: Option<String>,
    until: Option<String>,
    action: Option<i64>,
}

impl AuditQuery {
    fn filter(self, limit: u32) -> Result<crate::store::AuditFilter, ApiError> {
        let time =
            |name: &str, v: Option<String>| v.map(|v| crate::cli::replay::parse_time(&v).map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))).transpose();
        Ok(crate::store::AuditFilter {
            limit,
            before_id: self.before,
            after_id: self.after,
            since: time("since", self.since)?,
            until: time("until", self.until)?,
            kind: self.kind,
            actor: self.actor,
            rule: self.rule,
            flag: self.flag,
            action_id: self.action,
        })
    }
}

async fn audit(State(s): State<ApiState>, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = q.filter(limit)?;
    let store = s.store.clone();
    let forward = filter.after_id.is_some();
    let records = tokio::task::spawn_blocking(move || store.audit_query(&filter)).await.map_err(|e| ApiError::Unavailable(e.to_string()))??;
    let next = records.last().map(|r| r.id);
    let cursor = if forward { "next_after" } else { "next_before" };
    Ok(Json(json!({ "audit": records, cursor: next })).into_response())
}

/// `GET /v1/audit/export`: every matching record as JSON lines, oldest first, streamed in
/// pages (a bounded amount in memory whatever the log's size).
async fn audit_export(State(s): State<ApiState>, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    const PAGE: u32 = 1000;
    let mut filter = q.filter(PAGE)?;
    filter.before_id = None;
    filter.after_id = Some(filter.after_id.unwrap_or(0));
    let store = s.store.clone();
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    // An async task that reads one page at a time on the blocking pool: a slow reader holds
    // no blocking thread, only this task and at most four pages.
    tokio::spawn(async move {
        loop {
            let (query, f) = (store.clone(), filter.clone());
            let page = match tokio::task::spawn_blocking(move || query.audit_query(&f)).await {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => return drop(tx.send(Err(std::io::Error::other(e.to_string()))).await),
                Err(e) => return drop(tx.send(Err(std::io::Error::other(e.to_string()))).await),
            };
            let Some(last) = page.last().map(|r| r.id) else { return };
            let mut out = Vec::with_capacity(page.len() * 256);
            for record in &page {
                if serde_json::to_writer(&mut out, record).is_ok() {
                    out.push(b'\n');
                }
            }
            if tx.send(Ok(out.into())).await.is_err() || page.len() < PAGE as usize {
                return;
            }
            filter.after_id = Some(last);
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

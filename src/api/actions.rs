//! Actions: list them with their state, read one with its timeline (every audit record of the
//! action, oldest first), and the operator's actions — restore a kill, kill a flag by hand,
//! change a rollout — which go through the same outbox, read-back and audit path as automatic
//! ones, through the one door (`act::outbox`). Every route is authorised (`api::auth`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, ApiState, Page};
use axum::Extension;

/// Who acts: the authenticated caller; without authentication, what the body says (or `api`).
pub fn actor(caller: Option<Extension<Caller>>, claimed: Option<String>) -> String {
    match caller {
        Some(Extension(c)) if c.name != "anonymous" => format!("token:{}", c.name),
        // Anonymous callers may say who they are, marked as a claim.
        Some(_) => format!("anonymous:{}", claimed.unwrap_or_default()),
        None => claimed.unwrap_or_else(|| "api".into()),
    }
}
use crate::act::{ActionKind, ActionRequest};
use crate::action::ActionState;

/// Refuses (403, audited `access_denied`) a change of `flag` in `environment` outside the
/// caller's token scope ([`super::auth::Scope`]); the owning team comes from the flag manifests.
pub async fn permit(s: &ApiState, caller: &Option<Extension<Caller>>, what: &str, flag: &str, environment: Option<&str>) -> Result<(), ApiError> {
    let Some(Extension(c)) = caller else { return Ok(()) };
    let team = s.drift.borrow().owners.get(flag).map(|o| o.team.clone());
    let Some(why) = c.scope.refuses(flag, environment, team.as_deref()) else { return Ok(()) };
    Err(deny(s, c, what, flag, environment, why).await)
}

/// Audits a refusal (`access_denied`) and returns the 403.
pub async fn deny(s: &ApiState, c: &Caller, what: &str, flag: &str, environment: Option<&str>, why: String) -> ApiError {
    let entry = crate::store::AuditEntry {
        at: s.clock.now(),
        actor: format!("token:{}", c.name),
        kind: "access_denied".into(),
        target: Some(format!("|{flag}|{}|", environment.unwrap_or(""))),
        after: Some(json!({ "asked": what, "flag": flag, "environment": environment, "why": why, "scope": c.scope })),
        ..crate::store::AuditEntry::default()
    };
    let store = s.store.clone();
    if !matches!(blocking(move || store.audit(&entry)).await, Ok(Ok(_))) {
        tracing::warn!(caller = %c.name, what, flag, "cannot audit a refused request");
    }
    ApiError::Forbidden(format!("{} may not {what} here: {why}", c.name))
}

pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Unavailable(e.to_string()))
}

pub async fn list(State(s): State<ApiState>, Query(p): Query<Page>) -> Result<Response, ApiError> {
    let limit = p.limit.unwrap_or(100).min(1000);
    let store = s.store.clone();
    let rows = blocking(move || store.actions(limit)).await??;
    Ok(Json(json!({ "actions": rows })).into_response())
}

pub async fn one(State(s): State<ApiState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let (row, timeline) = blocking(move || Ok::<_, crate::store::StoreError>((store.action(id)?, store.timeline(id)?))).await??;
    let row = row.ok_or_else(|| ApiError::NotFound(format!("no action {id}")))?;
    let mut body = serde_json::to_value(&row).unwrap_or_default();
    body["timeline"] = serde_json::to_value(timeline).unwrap_or_default();
    Ok(Json(body).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[serde(default)]
    pub reason: Option<String>,
    /// Who asks (recorded in the audit log). Default `api`.
    #[serde(default)]
    pub actor: Option<String>,
}

/// `POST /v1/actions/{id}/restore`: undo a kill (the flag returns to the state the kill saved;
/// its cooldown is cleared and its windows restart). On a kill a human already overrode in the
/// flag system, it only acknowledges the drift (no call) and re-arms the rule.
pub async fn restore(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<i64>,
    body: Option<Json<Reason>>,
) -> Result<Response, ApiError> {
    let Json(body) = body.unwrap_or_default();
    let store = s.store.clone();
    let found = blocking(move || store.action(id)).await??;
    let actor = actor(caller.clone(), body.actor.clone());
    if let Some(kill) = found {
        let target = crate::action::Target::parse(&kill.target);
        permit(&s, &caller, "restore", &target.flag, target.environment.as_deref()).await?;
        // Turning a killed flag back on in a regulated environment needs a second person
        // (acknowledging a human's override changes nothing and does not).
        if kill.state != ActionState::Overridden && kill.state.holds() && s.governance.regulated(target.environment.as_deref()) {
            let request = json!({ "action": id });
            let kind = crate::store::proposals::ProposalKind::Restore;
            return super::approvals::propose(&s, kind, &target.flag, target.environment.as_deref(), &request, &actor, body.reason.as_deref()).await;
        }
    }
    let now = s.clock.now();
    let outbox = s.outbox.clone();
    let outcome = blocking(move || -> Result<Result<(i64, &'static str), ApiError>, crate::store::StoreError> {
        let Some(kill) = outbox.store().action(id)? else { return Ok(Err(ApiError::NotFound(format!("no action {id}")))) };
        match kill.state {
            ActionState::Overridden => {
                outbox.acknowledge_drift(&kill, &actor, body.reason.as_deref(), now)?;
                Ok(Ok((id, "acknowledged")))
            }
            ActionState::Pending => Ok(Err(ApiError::Conflict(format!("action {id} is still pending; a restore can follow once it is done")))),
            ActionState::Restored | ActionState::Superseded => Ok(Err(ApiError::Conflict(format!("action {id} is {}", kill.state)))),
            _ => Ok(outbox.restore(&kill, &actor, body.reason.clone(), now)?.map(|r| (r, "queued")).map_err(|r| ApiError::Conflict(r.to_string()))),
        }
    })
    .await??;
    let (action, status) = outcome?;
    s.wake.notify_one();
    Ok((axum::http::StatusCode::ACCEPTED, Json(json!({ "action": action, "status": status }))).into_response())
}

/// What an operator's kill or rollout change targets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Default: the only configured actuator.
    #[serde(default)]
    pub actuator: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// The variant(s) turned off or rolled out, as the telemetry reports them (`on`, `true`):
    /// what the drain check counts. None: the kill's drain is not verified (`unverified`).
    #[serde(default)]
    pub treatment: Option<Vec<String>>,
    #[serde(default)]
    pub control: Option<String>,
    /// Rollout only: 0–100.
    #[serde(default)]
    pub percent: Option<f64>,
    /// Rollout only, compare-and-set: the percentage the flag must be at now; anything else
    /// ends the action `refused`, with nothing changed.
    #[serde(default)]
    pub expect: Option<f64>,
    /// Rollout only: the caller's key; the same key again changes the flag once (the answer
    /// names the action the first request made).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub actor: Option<String>,
}

fn operator_request(s: &ApiState, kind: ActionKind, flag: &str, t: &Target, actor: String) -> Result<ActionRequest, ApiError> {
    let actuator = match &t.actuator {
        Some(name) if s.actuators.contains(name) => name.clone(),
        Some(name) => return Err(ApiError::BadRequest(format!("actuator {name:?} is not configured"))),
        None if s.actuators.len() == 1 => s.actuators.iter().next().cloned().unwrap_or_default(),
        None => return Err(ApiError::BadRequest(format!("give the actuator: one of {:?}", s.actuators))),
    };
    if t.reason.trim().is_empty() {
        return Err(ApiError::BadRequest("a reason is required".into()));
    }
    if kind == ActionKind::Rollout && !t.percent.is_some_and(|p| (0.0..=100.0).contains(&p)) {
        return Err(ApiError::BadRequest(format!("percent must be in 0–100, got {:?}", t.percent)));
    }
    if t.expect.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        return Err(ApiError::BadRequest(format!("expect must be in 0–100, got {:?}", t.expect)));
    }
    if kind != ActionKind::Rollout && (t.expect.is_some() || t.idempotency_key.is_some()) {
        return Err(ApiError::BadRequest("expect and idempotency_key are for rollout changes".into()));
    }
    if t.idempotency_key.as_deref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::BadRequest("idempotency_key must be 1–200 characters".into()));
    }
    if t.idempotency_key.as_deref().is_some_and(|k| k.starts_with(super::approvals::KEY_PREFIX)) {
        return Err(ApiError::BadRequest(format!("idempotency keys starting with {:?} are flagguard's own (approvals)", super::approvals::KEY_PREFIX)));
    }
    Ok(ActionRequest {
        treatment: t.treatment.clone().unwrap_or_default(),
        control: t.control.clone(),
        environment: t.environment.clone(),
        region: t.region.clone(),
        scope: t.region.iter().map(|r| ("region".to_owned(), r.clone())).collect(),
        percent: t.percent.filter(|_| kind == ActionKind::Rollout),
        expect_rollout: t.expect,
        compare_and_set: t.expect.is_some(),
        actor: Some(actor),
        reason: Some(t.reason.clone()),
        evidence: json!({ "manual": true, "reason": t.reason }),
        ..ActionRequest::new(kind, &actuator, flag)
    })
}

/// Queues an operator's action: 202 with the new action, 200 with the action an earlier
/// request with the same idempotency key made, 409 with why it was refused.
async fn queue(s: &ApiState, request: ActionRequest, client_key: Option<String>) -> Result<Response, ApiError> {
    let now = s.clock.now();
    let outbox = s.outbox.clone();
    let outcome = blocking(move || outbox.operator_keyed(&request, client_key.as_deref(), now)).await??;
    let id = match outcome {
        Ok(id) => id,
        Err(crate::action::Refused::SameKey { id }) => return Ok(Json(json!({ "action": id, "status": "existing" })).into_response()),
        Err(refused) => return Err(ApiError::Conflict(refused.to_string())),
    };
    s.wake.notify_one();
    Ok((axum::http::StatusCode::ACCEPTED, Json(json!({ "action": id, "status": "queued" }))).into_response())
}

/// `POST /v1/flags/{flag}/kill`: a manual kill, through the outbox like an automatic one.
pub async fn kill(State(s): State<ApiState>, caller: Option<Extension<Caller>>, Path(flag): Path<String>, Json(t): Json<Target>) -> Result<Response, ApiError> {
    permit(&s, &caller, "kill", &flag, t.environment.as_deref()).await?;
    let request = operator_request(&s, ActionKind::Kill, &flag, &t, actor(caller, t.actor.clone()))?;
    queue(&s, request, None).await
}

/// `POST /v1/flags/{flag}/rollout`: set the rollout percentage (refused while the flag is
/// killed; a later kill supersedes it while pending), compare-and-set with `expect`, once per
/// `idempotency_key`.
pub async fn rollout(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(flag): Path<String>,
    Json(t): Json<Target>,
) -> Result<Response, ApiError> {
    permit(&s, &caller, "change the rollout", &flag, t.environment.as_deref()).await?;
    let request = operator_request(&s, ActionKind::Rollout, &flag, &t, actor(caller, t.actor.clone()))?;
    if request.percent.is_some_and(crate::store::proposals::to_everyone) && s.governance.regulated(request.environment.as_deref()) {
        let proposer = request.actor.clone().unwrap_or_default();
        let mut value = serde_json::to_value(&request).unwrap_or_default();
        // A retried request with its key answers with the proposal it made.
        if let Some(key) = t.idempotency_key.clone() {
            let store = s.store.clone();
            let lookup = key.clone();
            if let Some(p) = blocking(move || store.proposal_by_key(&lookup)).await?? {
                return Ok(Json(json!({ "proposal": p.id, "status": "pending_approval", "existing": true, "message": format!("proposal {} ({}) was made for this key", p.id, p.state.as_str()) })).into_response());
            }
            value["client_key"] = json!(key);
        }
        let kind = crate::store::proposals::ProposalKind::Rollout;
        return super::approvals::propose(&s, kind, &flag, request.environment.as_deref(), &value, &proposer, request.reason.as_deref()).await;
    }
    queue(&s, request, t.idempotency_key.clone()).await
}

/// `POST /v1/flags/{flag}/restore`: body of [`FlagRestore`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FlagRestore {
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
}

/// `POST /v1/flags/{flag}/restore`: restores the flag's newest kill that still holds it off
/// (narrowed by `environment` / `region`), as `POST /v1/actions/{id}/restore` does. 404 when no
/// kill holds the flag; 409 naming the actions when several targets match (say which).
pub async fn restore_flag(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(flag): Path<String>,
    body: Option<Json<FlagRestore>>,
) -> Result<Response, ApiError> {
    let Json(body) = body.unwrap_or_default();
    let store = s.store.clone();
    let wanted = flag.clone();
    let rows = blocking(move || store.flag_kills(&wanted)).await??;
    let mut newest: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    // The newest kill of each target of the flag decides whether that target is still held.
    for row in &rows {
        let target = crate::action::Target::parse(&row.target);
        let region_ok = body.region.as_deref().is_none_or(|r| target.slice.get("region") == Some(r));
        if body.environment.as_deref().is_some_and(|e| e != target.environment.as_deref().unwrap_or("*")) || !region_ok {
            continue;
        }
        newest.insert(row.target.clone(), if row.state.holds() { row.id } else { 0 });
    }
    let ids: Vec<i64> = newest.values().copied().filter(|id| *id > 0).collect();
    match ids.as_slice() {
        [] => Err(ApiError::NotFound(format!("no kill holds {flag} off"))),
        [id] => restore(State(s), caller, Path(*id), Some(Json(Reason { reason: body.reason, actor: body.actor }))).await,
        many => Err(ApiError::Conflict(format!("several kills hold {flag} off (actions {many:?}); give environment and region, or restore by action id"))),
    }
}

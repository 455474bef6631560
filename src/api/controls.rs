//! Operator controls over automatic actions (see [`crate::controls`]): `GET /v1/controls`, the
//! global pause, per-flag allow/deny lists and rule silences. Every change is one audit record
//! with the controls before and after and the caller as actor.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::actions::actor;
use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::controls::{Control, Controls, FlagControl, List};
use crate::store::AuditEntry;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ControlBody {
    /// Why (required when setting a control).
    #[serde(default)]
    reason: Option<String>,
    /// For how long, e.g. `30m` (a silence needs one; a pause without one lasts until resumed).
    #[serde(default, rename = "for")]
    duration: Option<String>,
    /// `allow` or `deny` (flag lists only).
    #[serde(default)]
    list: Option<List>,
    #[serde(default)]
    actor: Option<String>,
}

pub async fn get(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let controls = tokio::task::spawn_blocking(move || store.controls()).await.map_err(|e| ApiError::Unavailable(e.to_string()))??;
    let now = s.clock.now();
    Ok(Json(json!({ "paused": controls.paused(now), "controls": controls })).into_response())
}

/// What an operator asks for.
enum Change {
    Pause,
    Resume,
    List(String),
    Unlist(String),
    Silence(String),
    Unsilence(String),
}

async fn change(s: ApiState, caller: Option<Extension<Caller>>, body: Option<Json<ControlBody>>, change: Change) -> Result<Response, ApiError> {
    let Json(body) = body.unwrap_or_default();
    let now = s.clock.now();
    // Controls reach every flag: a scoped token may not change them.
    if let Some(Extension(c)) = &caller
        && !c.scope.is_whole()
    {
        let why = "the operator controls reach every flag; they need an unscoped token".to_owned();
        return Err(super::actions::deny(&s, c, "change the operator controls", "*", None, why).await);
    }
    let actor = actor(caller, body.actor.clone());
    const MAX_FOR: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
    let until_ms = match body.duration.as_deref().map(humantime::parse_duration) {
        Some(Ok(d)) if d > MAX_FOR => return Err(ApiError::BadRequest("`for` is at most a year (without `for`, a pause lasts until resumed)".into())),
        Some(Ok(d)) if !d.is_zero() => Some(now.as_millis().saturating_add(d.as_millis() as u64)),
        Some(Ok(_)) => return Err(ApiError::BadRequest("`for` must be longer than zero".into())),
        Some(Err(e)) => return Err(ApiError::BadRequest(format!("`for`: {e} (e.g. \"30m\", \"2h\")"))),
        None => None,
    };
    let setting = matches!(change, Change::Pause | Change::List(_) | Change::Silence(_));
    let reason = body.reason.clone().filter(|r| !r.trim().is_empty());
    if setting && reason.is_none() {
        return Err(ApiError::BadRequest("a reason is required".into()));
    }
    let set = Control { actor: actor.clone(), reason: reason.clone().unwrap_or_default(), since_ms: now.as_millis(), until_ms };
    let (kind, rule, target) = match &change {
        Change::Pause => ("automation_paused", None, None),
        Change::Resume => ("automation_resumed", None, None),
        Change::List(flag) => ("flag_listed", None, Some(flag.clone())),
        Change::Unlist(flag) => ("flag_unlisted", None, Some(flag.clone())),
        Change::Silence(rule) => ("rule_silenced", Some(rule.clone()), None),
        Change::Unsilence(rule) => ("rule_unsilenced", Some(rule.clone()), None),
    };
    let list = body.list;
    let conflict = |why: String| ApiError::Conflict(why);
    let apply = move |c: &mut Controls| -> Result<(), ApiError> {
        match change {
            Change::Pause => c.pause = Some(set),
            Change::Resume => c.pause.take().map(drop).ok_or_else(|| conflict("automatic actions are not paused".into()))?,
            Change::List(flag) => {
                let list = list.ok_or_else(|| ApiError::BadRequest("`list` must be \"allow\" or \"deny\"".into()))?;
                c.flags.insert(flag, FlagControl { list, set });
            }
            Change::Unlist(flag) => c.flags.remove(&flag).map(drop).ok_or_else(|| conflict(format!("flag {flag} is on no list")))?,
            Change::Silence(rule) if set.until_ms.is_none() => return Err(ApiError::BadRequest(format!("a silence of {rule} needs `for` (e.g. \"1h\")"))),
            Change::Silence(rule) => drop(c.silences.insert(rule, set)),
            Change::Unsilence(rule) => c.silences.remove(&rule).map(drop).ok_or_else(|| conflict(format!("rule {rule} is not silenced")))?,
        }
        Ok(())
    };
    let audit = AuditEntry { at: now, actor, kind: kind.into(), rule, target, evidence: reason.map(|r| json!({ "reason": r })), ..AuditEntry::default() };
    let store = s.store.clone();
    let updated = tokio::task::spawn_blocking(move || store.update_controls(apply, &audit)).await.map_err(|e| ApiError::Unavailable(e.to_string()))??;
    match updated {
        Ok(controls) => {
            tracing::warn!(kind, "operator control changed");
            Ok(Json(json!({ "paused": controls.paused(now), "controls": controls })).into_response())
        }
        Err(refused) => Err(refused),
    }
}

pub async fn pause(State(s): State<ApiState>, caller: Option<Extension<Caller>>, body: Option<Json<ControlBody>>) -> Result<Response, ApiError> {
    change(s, caller, body, Change::Pause).await
}

pub async fn resume(State(s): State<ApiState>, caller: Option<Extension<Caller>>, body: Option<Json<ControlBody>>) -> Result<Response, ApiError> {
    change(s, caller, body, Change::Resume).await
}

pub async fn list_flag(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(flag): Path<String>,
    body: Option<Json<ControlBody>>,
) -> Result<Response, ApiError> {
    change(s, caller, body, Change::List(flag)).await
}

pub async fn unlist_flag(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(flag): Path<String>,
    body: Option<Json<ControlBody>>,
) -> Result<Response, ApiError> {
    change(s, caller, body, Change::Unlist(flag)).await
}

pub async fn silence(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(rule): Path<String>,
    body: Option<Json<ControlBody>>,
) -> Result<Response, ApiError> {
    change(s, caller, body, Change::Silence(rule)).await
}

pub async fn unsilence(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(rule): Path<String>,
    body: Option<Json<ControlBody>>,
) -> Result<Response, ApiError> {
    change(s, caller, body, Change::Unsilence(rule)).await
}

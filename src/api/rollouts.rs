//! Rollout plans: `GET /v1/rollouts` (each plan with its instances' state) and
//! `POST /v1/rollouts/{name}/{pause|resume|abort}[?region=R]` for operators, audited. The
//! pipeline reads the state from the store on every tick, so a change here takes effect at once.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::actions::Reason;
use super::{ApiError, ApiState};
use crate::rollout::{PlanState, Status};
use crate::store::AuditEntry;

pub async fn list(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let plans = s.snapshots.borrow().rule_set.rollouts.clone();
    let store = s.store.clone();
    let states = tokio::task::spawn_blocking(move || store.plan_states()).await.map_err(|e| ApiError::Unavailable(e.to_string()))??;
    let out: Vec<_> = plans
        .iter()
        .map(|p| {
            let instances: Vec<_> = states.iter().filter(|st| st["plan"] == p.name.as_str()).cloned().collect();
            json!({
                "name": p.name, "flag": p.flag, "actuator": p.actuator, "environment": p.environment, "regions": p.regions,
                "steps": p.steps, "min_healthy_s": p.min_healthy.as_secs(), "min_samples": p.min_samples,
                "file": p.file, "line": p.line, "instances": instances,
            })
        })
        .collect();
    Ok(Json(json!({ "rollouts": out })).into_response())
}

#[derive(Deserialize)]
pub struct Which {
    pub region: Option<String>,
}

/// Pause, resume or abort one plan instance. In a regulated environment a resume is a
/// proposal until a second token approves it (`api::approvals`).
pub async fn operate(
    State(s): State<ApiState>,
    caller: Option<axum::Extension<super::auth::Caller>>,
    Path((name, op)): Path<(String, String)>,
    Query(which): Query<Which>,
    body: Option<Json<Reason>>,
) -> Result<Response, ApiError> {
    let Json(body) = body.unwrap_or_default();
    let plans = s.snapshots.borrow().rule_set.rollouts.clone();
    let plan = plans.iter().find(|p| p.name == name).ok_or_else(|| ApiError::NotFound(format!("no rollout plan {name:?}")))?;
    instance(plan, which.region.as_deref())?;
    super::actions::permit(&s, &caller, &format!("{op} the plan {name}"), &plan.flag, plan.environment.as_deref()).await?;
    let actor = super::actions::actor(caller, body.actor.clone());
    if op == "resume" && s.governance.regulated(plan.environment.as_deref()) {
        let request = json!({ "plan": name, "region": which.region });
        return super::approvals::propose(
            &s,
            crate::store::proposals::ProposalKind::Resume,
            &plan.flag,
            plan.environment.as_deref(),
            &request,
            &actor,
            body.reason.as_deref(),
        )
        .await;
    }
    let instance = apply_operation(&s, &name, &op, which.region.as_deref(), &actor, body.reason.clone()).await?;
    Ok(Json(json!({ "instance": instance })).into_response())
}

/// The key of a plan's instance (per region when the plan runs per region).
fn instance(plan: &crate::rules::plan::Plan, region: Option<&str>) -> Result<String, ApiError> {
    let name = &plan.name;
    if !plan.regions.is_empty() && region.is_none_or(|r| !plan.regions.iter().any(|p| p == r)) {
        return Err(ApiError::BadRequest(format!("plan {name} runs per region: give ?region= one of {:?}", plan.regions)));
    }
    if plan.regions.is_empty() && region.is_some() {
        return Err(ApiError::BadRequest(format!("plan {name} does not run per region: leave out ?region=")));
    }
    Ok(plan.key(region))
}

/// Moves a plan instance (`pause`, `resume`, `abort`), audited with `actor`.
pub async fn apply_operation(s: &ApiState, name: &str, op: &str, region: Option<&str>, actor: &str, reason: Option<String>) -> Result<PlanState, ApiError> {
    let plans = s.snapshots.borrow().rule_set.rollouts.clone();
    let plan = plans.iter().find(|p| p.name == name).ok_or_else(|| ApiError::NotFound(format!("no rollout plan {name:?}")))?;
    let key = instance(plan, region)?;
    let (from, to): (&[Status], Status) = match op {
        "pause" => (&[Status::Running], Status::Paused),
        "resume" => (&[Status::Paused], Status::Running),
        "abort" => (&[Status::Running, Status::Paused], Status::Aborted),
        other => return Err(ApiError::NotFound(format!("no operation {other:?} (pause, resume, abort)"))),
    };
    let now = s.clock.now();
    let store = s.store.clone();
    let plan = plan.clone();
    let (op, actor, region) = (op.to_owned(), actor.to_owned(), region.map(str::to_owned));
    tokio::task::spawn_blocking(move || -> Result<Result<PlanState, ApiError>, crate::store::StoreError> {
        let mut state =
            store.plan_state(&key)?.and_then(|v| serde_json::from_value::<PlanState>(v).ok()).unwrap_or_else(|| PlanState::new(&plan, region.as_deref()));
        if !from.contains(&state.status) {
            return Ok(Err(ApiError::Conflict(format!("plan instance {key} is {:?}", state.status))));
        }
        let before = serde_json::to_value(&state).unwrap_or_default();
        state.status = to;
        state.reason = reason.or_else(|| Some(format!("{op} by {actor}")));
        if to == Status::Running {
            // A resumed plan re-reads the flag before its next step (expect_rollout).
            state.action = None;
            state.target_step = None;
            // A step to 100 % that waited (or was rejected) is proposed again.
            state.awaiting_proposal = None;
        }
        let audit = AuditEntry {
            at: now,
            actor: actor.clone(),
            kind: format!("rollout_{op}"),
            rule: Some(format!("rollout:{}", plan.name)),
            target: Some(key.clone()),
            before: Some(before),
            after: Some(serde_json::to_value(&state).unwrap_or_default()),
            ..AuditEntry::default()
        };
        store.save_plan(&key, &serde_json::to_value(&state).unwrap_or_default(), Some(&audit))?;
        Ok(Ok(state))
    })
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))??
}

/// An approved proposal of a plan's own step to 100 % (`approvals`): the running instance
/// takes that step at its next tick. Audited (`rollout_step_approved`) with both actors.
pub async fn approve_step(s: &ApiState, name: &str, region: Option<&str>, step: usize, proposal: i64, actor: &str) -> Result<(), ApiError> {
    let plans = s.snapshots.borrow().rule_set.rollouts.clone();
    let plan = plans.iter().find(|p| p.name == name).ok_or_else(|| ApiError::NotFound(format!("no rollout plan {name:?}")))?.clone();
    let key = instance(&plan, region)?;
    let (store, now, actor) = (s.store.clone(), s.clock.now(), actor.to_owned());
    tokio::task::spawn_blocking(move || -> Result<Result<(), ApiError>, crate::store::StoreError> {
        let stored = store.plan_state(&key)?;
        let Some(mut state) = stored.clone().and_then(|v| serde_json::from_value::<PlanState>(v).ok()) else {
            return Ok(Err(ApiError::Conflict(format!("plan instance {key} has not started"))));
        };
        if state.awaiting_proposal != Some(proposal) {
            return Ok(Err(ApiError::Conflict(format!("plan instance {key} is not waiting for proposal {proposal}"))));
        }
        state.approved_step = Some(step);
        state.awaiting_proposal = None;
        state.reason = None;
        let audit = AuditEntry {
            at: now,
            actor,
            kind: "rollout_step_approved".into(),
            rule: Some(format!("rollout:{}", plan.name)),
            target: Some(key.clone()),
            after: Some(json!({ "step": step + 1, "proposal": proposal })),
            ..AuditEntry::default()
        };
        // Only if the pipeline did not move the instance meanwhile: else the approver retries.
        let value = serde_json::to_value(&state).unwrap_or_default();
        if !store.save_plan_if(&key, stored.as_ref(), &value, Some(&audit))? {
            return Ok(Err(ApiError::Conflict(format!("plan instance {key} changed meanwhile; approve again"))));
        }
        Ok(Ok(()))
    })
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))??
}

#[derive(Deserialize)]
pub struct StaleQuery {
    /// Default `7d`.
    pub single_variant_for: Option<String>,
    /// Default `30d`.
    pub unused_for: Option<String>,
}

fn duration(value: Option<&str>, default: &str, name: &str) -> Result<std::time::Duration, ApiError> {
    humantime::parse_duration(value.unwrap_or(default)).map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))
}

/// `GET /v1/flags/stale`: removal candidates (flag hygiene), from the store's history and the
/// live windows.
pub async fn stale_flags(State(s): State<ApiState>, Query(q): Query<StaleQuery>) -> Result<Response, ApiError> {
    let single = duration(q.single_variant_for.as_deref(), "7d", "single_variant_for")?;
    let unused = duration(q.unused_for.as_deref(), "30d", "unused_for")?;
    let live = s.snapshots.borrow().usage.clone();
    let store = s.store.clone();
    let stored = tokio::task::spawn_blocking(move || store.usage()).await.map_err(|e| ApiError::Unavailable(e.to_string()))??;
    let usage = crate::rollout::hygiene::merge(stored.into_iter().chain(live));
    let mut flags = crate::rollout::hygiene::stale(&usage, s.clock.now(), single, unused);
    // Owners come from the flag manifests the daemon watches (`[manifests]`).
    crate::rollout::hygiene::with_owners(&mut flags, &s.drift.borrow().owners);
    Ok(Json(json!({ "single_variant_for_s": single.as_secs(), "unused_for_s": unused.as_secs(), "flags": flags, "known_flags": usage.iter().map(|u| u.flag.as_str()).collect::<std::collections::BTreeSet<_>>().len() })).into_response())
}

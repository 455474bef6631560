//! Approvals (`[governance] regulated_environments`): in a regulated environment a rollout to
//! 100 %, the restore of a killed flag and the resume of a paused plan are proposals until a
//! second token approves them. Kills are never held.
//!
//! - `GET /v1/approvals[?state=pending]`, `GET /v1/approvals/{id}`;
//! - `POST /v1/approvals/{id}/approve` — by a token other than the proposer's, within the
//!   token's scope, before the proposal expires — carries the change out through the same door
//!   as without approval (the outbox, the plan store) and records both actors;
//! - `POST /v1/approvals/{id}/reject`.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::actions::{Reason, blocking};
use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::act::ActionRequest;
use crate::store::proposals::{NewProposal, ProposalKind, ProposalRow, ProposalState};

/// The idempotency key of an approved rollout (`proposal-ID`): callers may not use the prefix.
pub const KEY_PREFIX: &str = "proposal-";

/// From `[governance]`.
#[derive(Clone, Debug, Default)]
pub struct Governance {
    pub regulated_environments: Vec<String>,
    pub approval_expiry: Duration,
    pub max_rollout_age: Duration,
}

impl Governance {
    /// Whether changes in `environment` need approval (a change in every environment does when
    /// any environment is regulated).
    pub fn regulated(&self, environment: Option<&str>) -> bool {
        crate::store::proposals::regulated(&self.regulated_environments, environment)
    }
}

/// Records a proposal and answers 202 `{"proposal", "status": "pending_approval"}`.
pub async fn propose(
    s: &ApiState,
    kind: ProposalKind,
    flag: &str,
    environment: Option<&str>,
    request: &Value,
    proposer: &str,
    reason: Option<&str>,
) -> Result<Response, ApiError> {
    let now = s.clock.now();
    let expires = now.plus(s.governance.approval_expiry);
    let (store, request) = (s.store.clone(), request.clone());
    let (flag, environment, proposer, reason) = (flag.to_owned(), environment.map(str::to_owned), proposer.to_owned(), reason.map(str::to_owned));
    let id = blocking(move || {
        store.propose(&NewProposal {
            kind,
            flag: &flag,
            environment: environment.as_deref(),
            request: &request,
            proposer: &proposer,
            reason: reason.as_deref(),
            at: now,
            expires,
        })
    })
    .await??;
    let body = json!({
        "proposal": id,
        "status": "pending_approval",
        "expires": expires.rfc3339(),
        "message": format!("a {} in a regulated environment needs a second person's approval: flagguard approvals approve {id}", kind.as_str()),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub state: Option<ProposalState>,
}

pub async fn list(State(s): State<ApiState>, Query(f): Query<Filter>) -> Result<Response, ApiError> {
    let (store, now) = (s.store.clone(), s.clock.now());
    let rows = blocking(move || store.proposals(f.state, now)).await??;
    Ok(Json(json!({ "proposals": rows })).into_response())
}

pub async fn one(State(s): State<ApiState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    Ok(Json(load(&s, id).await?).into_response())
}

async fn load(s: &ApiState, id: i64) -> Result<ProposalRow, ApiError> {
    let (store, now) = (s.store.clone(), s.clock.now());
    blocking(move || store.proposal(id, now)).await??.ok_or_else(|| ApiError::NotFound(format!("no proposal {id}")))
}

/// A proposal still to be decided (409 naming its state otherwise).
async fn pending(s: &ApiState, id: i64) -> Result<ProposalRow, ApiError> {
    let p = load(s, id).await?;
    if p.state != ProposalState::Pending {
        return Err(ApiError::Conflict(format!("proposal {id} is {}", p.state.as_str())));
    }
    Ok(p)
}

/// Who decides: only a known token (an approval names two people).
fn decider(caller: &Option<Extension<Caller>>) -> Result<String, ApiError> {
    match caller {
        Some(Extension(c)) if c.name != "anonymous" => Ok(format!("token:{}", c.name)),
        _ => Err(ApiError::Forbidden("deciding a proposal needs an API token: who approves must be known".into())),
    }
}

/// `POST /v1/approvals/{id}/approve`.
pub async fn approve(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<i64>,
    body: Option<Json<Reason>>,
) -> Result<Response, ApiError> {
    let Json(body) = body.unwrap_or_default();
    let approver = decider(&caller)?;
    let p = pending(&s, id).await?;
    if p.proposer == approver
        && let Some(Extension(c)) = &caller
    {
        let why = "the proposer cannot approve their own proposal: a second person must".to_owned();
        return Err(super::actions::deny(&s, c, "approve", &p.flag, p.environment.as_deref(), why).await);
    }
    super::actions::permit(&s, &caller, "approve", &p.flag, p.environment.as_deref()).await?;
    // Claimed first: a reject or an expiry in between wins, and the change is not made.
    let (store, now) = (s.store.clone(), s.clock.now());
    let (decided, by, reason) = (p.clone(), approver.clone(), body.reason.clone());
    if !blocking(move || store.decide_proposal(&decided, ProposalState::Approved, &by, reason.as_deref(), None, now)).await?? {
        return Err(ApiError::Conflict(format!("proposal {id} was decided meanwhile")));
    }
    let actor = format!("{} approved by {approver}", p.proposer);
    let action = match carry_out(&s, &p, &actor).await {
        Ok(action) => action,
        Err(e) => {
            let (store, why, reopened) = (s.store.clone(), e.to_string(), p.clone());
            blocking(move || store.reopen_proposal(&reopened, &approver, &why, now)).await??;
            return Err(e);
        }
    };
    if let Some(action) = action {
        let store = s.store.clone();
        blocking(move || store.set_proposal_action(id, action)).await??;
    }
    s.wake.notify_one();
    Ok(Json(json!({ "proposal": id, "state": "approved", "action": action })).into_response())
}

/// What an approved proposal does: the action it queued, if any.
async fn carry_out(s: &ApiState, p: &ProposalRow, actor: &str) -> Result<Option<i64>, ApiError> {
    let now = s.clock.now();
    match p.kind {
        ProposalKind::Rollout => {
            let mut request: ActionRequest = serde_json::from_value(p.request.clone()).map_err(|e| ApiError::Conflict(format!("proposal {}: {e}", p.id)))?;
            request.actor = Some(actor.to_owned());
            let (outbox, key) = (s.outbox.clone(), format!("{KEY_PREFIX}{}", p.id));
            match blocking(move || outbox.operator_keyed(&request, Some(&key), now)).await?? {
                Ok(id) | Err(crate::action::Refused::SameKey { id }) => Ok(Some(id)),
                Err(refused) => Err(ApiError::Conflict(format!("{refused}; the proposal stays pending"))),
            }
        }
        ProposalKind::Restore => {
            let kill_id = p.request["action"].as_i64().ok_or_else(|| ApiError::Conflict(format!("proposal {} names no kill", p.id)))?;
            let (outbox, actor, reason) = (s.outbox.clone(), actor.to_owned(), p.reason.clone());
            let queued = blocking(move || -> Result<Result<i64, String>, crate::store::StoreError> {
                let Some(kill) = outbox.store().action(kill_id)? else { return Ok(Err(format!("no action {kill_id}"))) };
                Ok(outbox.restore(&kill, &actor, reason, now)?.map_err(|r| r.to_string()))
            })
            .await??;
            queued.map(Some).map_err(|why| ApiError::Conflict(format!("{why}; the proposal stays pending")))
        }
        // The drift watch accepts the manifest change at its next pass.
        ProposalKind::Manifest => Ok(None),
        ProposalKind::Resume => {
            let plan = p.request["plan"].as_str().unwrap_or_default().to_owned();
            let region = p.request["region"].as_str().map(str::to_owned);
            match p.request["step"].as_u64() {
                // A plan's own proposal: the step to 100 % it waits before, approved.
                Some(step) => super::rollouts::approve_step(s, &plan, region.as_deref(), step as usize, p.id, actor).await?,
                None => {
                    super::rollouts::apply_operation(s, &plan, "resume", region.as_deref(), actor, p.reason.clone()).await?;
                }
            }
            Ok(None)
        }
    }
}

/// `POST /v1/approvals/{id}/reject` (the proposer may withdraw their own).
pub async fn reject(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<i64>,
    body: Option<Json<Reason>>,
) -> Result<Response, ApiError> {
    let Json(body) = body.unwrap_or_default();
    let by = decider(&caller)?;
    let p = pending(&s, id).await?;
    if by != p.proposer {
        super::actions::permit(&s, &caller, "reject", &p.flag, p.environment.as_deref()).await?;
    }
    let (store, now, reason) = (s.store.clone(), s.clock.now(), body.reason.clone());
    if !blocking(move || store.decide_proposal(&p, ProposalState::Rejected, &by, reason.as_deref(), None, now)).await?? {
        return Err(ApiError::Conflict(format!("proposal {id} was decided meanwhile")));
    }
    Ok(Json(json!({ "proposal": id, "state": "rejected" })).into_response())
}

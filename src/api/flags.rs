//! A flag as a pipeline sees it (`GET /v1/flags/{flag}/state`, behind `flagguard flags get`):
//! the flag system's state of one target, read now through the configured actuator, beside
//! what flagguard holds on it — the kills that still hold it off and the pending actions
//! ([`crate::act::read::FlagView`]).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::actions::blocking;
use super::{ApiError, ApiState};
use crate::act::read::{KillRef, PendingRef, read};
use crate::action::Target;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// Default: the only configured actuator.
    #[serde(default)]
    pub actuator: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

/// `GET /v1/flags/{flag}/state?actuator=&environment=&region=`: a
/// [`crate::act::read::FlagView`]. When the flag
/// system cannot be read, `flag_system.readable` is false with the `error`; the rest stands.
pub async fn state(State(s): State<ApiState>, Path(flag): Path<String>, Query(q): Query<StateQuery>) -> Result<Response, ApiError> {
    let name = match q.actuator {
        Some(name) => name,
        None => match s.flag_systems.keys().collect::<Vec<_>>().as_slice() {
            [one] => (*one).clone(),
            [] => return Err(ApiError::BadRequest("no actuator is configured: there is no flag system to read".into())),
            many => return Err(ApiError::BadRequest(format!("several actuators are configured ({many:?}): say which with actuator="))),
        },
    };
    let Some(actuator) = s.flag_systems.get(&name).cloned() else { return Err(ApiError::BadRequest(format!("actuator {name:?} is not configured"))) };
    let (mut view, request) = read(actuator.as_ref(), &name, &flag, q.environment.as_deref(), q.region.as_deref()).await;
    let store = s.store.clone();
    let wanted = flag.clone();
    let (kills, pending) = blocking(move || Ok::<_, crate::store::StoreError>((store.flag_kills(&wanted)?, store.pending_for_flag(&wanted)?))).await??;
    let here = crate::act::outbox::target_of(&request);
    view.killed_by_flagguard = Some(
        kills
            .iter()
            .filter(|k| k.state.holds() && overlaps(&Target::parse(&k.target), &here))
            .map(|k| KillRef {
                action: k.id,
                state: k.state.to_string(),
                target: k.target.clone(),
                rule: k.request.get("rule").and_then(|r| r.as_str()).filter(|r| !r.is_empty()).map(str::to_owned),
            })
            .collect(),
    );
    view.pending = Some(pending.iter().map(|p| PendingRef { action: p.id, kind: p.kind.as_str().to_owned(), target: p.target.clone() }).collect());
    Ok(Json(view).into_response())
}

/// A kill of one target touches another: either covers the other (a region's kill shows on its
/// environment, an environment's kill on each region).
fn overlaps(kill: &Target, read: &Target) -> bool {
    kill.covers(read) || read.covers(kill)
}

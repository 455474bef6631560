//! A flag as a pipeline sees it (`GET /v1/flags/{flag}/state`, behind `flagguard flags get`):
//! the flag system's state of one target, read now through the configured actuator, beside
//! what flagguard holds on it — the kills that still hold it off and the pending actions.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::actions::blocking;
use super::{ApiError, ApiState};
use crate::act::{ActionKind, ActionRequest};
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

/// The request whose target is read: the flag in one environment (and region).
pub fn read_request(actuator: &str, flag: &str, environment: Option<&str>, region: Option<&str>) -> ActionRequest {
    ActionRequest {
        environment: environment.map(str::to_owned),
        region: region.map(str::to_owned),
        scope: region.iter().map(|r| ("region".to_owned(), (*r).to_owned())).collect(),
        ..ActionRequest::new(ActionKind::Rollout, actuator, flag)
    }
}

/// `GET /v1/flags/{flag}/state?actuator=&environment=&region=`. The flag system's answer is in
/// `flag_system` (`readable: false` with `error` when it cannot be read: the rest still stands).
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
    let mut request = read_request(&name, &flag, q.environment.as_deref(), q.region.as_deref());
    crate::act::executor::prepare(actuator.as_ref(), &mut request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), actuator.read(&request)).await;
    let flag_system = match read {
        Ok(Ok(state)) => state.view(),
        Ok(Err(e)) => json!({ "readable": false, "error": e.to_string() }),
        Err(_) => json!({ "readable": false, "error": "the flag system did not answer within 10 s" }),
    };
    let store = s.store.clone();
    let wanted = flag.clone();
    let (kills, pending) = blocking(move || Ok::<_, crate::store::StoreError>((store.flag_kills(&wanted)?, store.pending_for_flag(&wanted)?))).await??;
    let here = crate::act::outbox::target_of(&request);
    let killed_by: Vec<Value> = kills
        .iter()
        .filter(|k| k.state.holds() && overlaps(&Target::parse(&k.target), &here))
        .map(|k| json!({ "action": k.id, "state": k.state, "target": k.target, "rule": k.request.get("rule") }))
        .collect();
    let pending: Vec<Value> = pending.iter().map(|p| json!({ "action": p.id, "kind": p.kind, "target": p.target })).collect();
    Ok(Json(json!({
        "flag": flag,
        "actuator": name,
        "environment": request.environment,
        "region": request.region,
        "flag_system": flag_system,
        "killed_by_flagguard": killed_by,
        "pending": pending,
    }))
    .into_response())
}

/// A kill of one target touches another: either covers the other (a region's kill shows on its
/// environment, an environment's kill on each region).
fn overlaps(kill: &Target, read: &Target) -> bool {
    kill.covers(read) || read.covers(kill)
}

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
use crate::act::read::read;

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
    let view = blocking(move || crate::act::read::held(&store, &mut view, &request).map(|()| view)).await??;
    Ok(Json(view).into_response())
}

/// `GET /v1/drift`: the drift watch's last pass (`[manifests] dir`): per flag × environment
/// its `status` and `findings`, the owners, `checked_at`, and `errors` when the manifests on
/// disk are invalid (the last valid set is still watched). 404 when no manifests are watched.
pub async fn drift(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let state = s.drift.borrow().clone();
    if state.dir.is_none() {
        return Err(ApiError::NotFound("no flag manifests are watched (configure [manifests] dir)".into()));
    }
    Ok(Json(state.as_ref().clone()).into_response())
}

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

/// The compliance report's findings now ([`crate::manifest::compliance`]).
pub async fn compliance_findings(s: &ApiState) -> Result<Vec<crate::manifest::compliance::Finding>, ApiError> {
    let live = s.snapshots.borrow().usage.clone();
    let store = s.store.clone();
    let stored = blocking(move || store.usage()).await??;
    let usage = crate::rollout::hygiene::merge(stored.into_iter().chain(live));
    let drift = s.drift.borrow().clone();
    let inputs = crate::manifest::compliance::Inputs {
        manifests: &drift.manifests,
        drift: &drift.flags,
        usage: &usage,
        held: &drift.held,
        regulated: &s.governance.regulated_environments,
        max_rollout_age: s.governance.max_rollout_age,
        now: s.clock.now(),
    };
    Ok(crate::manifest::compliance::report(&inputs))
}

/// `GET /v1/compliance`: `findings` (`flag`, `environment`, `problem`, `detail`) and their
/// `counts` by problem; `manifests_watched` says whether flag manifests are part of it.
pub async fn compliance(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let findings = compliance_findings(&s).await?;
    let counts: std::collections::BTreeMap<&str, usize> =
        crate::manifest::compliance::Problem::ALL.iter().map(|p| (p.as_str(), findings.iter().filter(|f| f.problem == *p).count())).collect();
    let watched = s.drift.borrow().dir.is_some();
    Ok(Json(serde_json::json!({ "findings": findings, "counts": counts, "manifests_watched": watched, "at": s.clock.now().rfc3339() })).into_response())
}

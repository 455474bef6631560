//! `GET /v1/gates/{flag}`: the promotion gate (`gate`) over the latest snapshot.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
pub use crate::gate::{Decision, GateQuery, decide};

pub async fn gate(State(s): State<ApiState>, Path(flag): Path<String>, Query(query): Query<GateQuery>) -> Response {
    let snapshot = s.snapshots.borrow().clone();
    match decide(&snapshot.verdicts, &snapshot.rule_set.rules, &snapshot.at, &flag, &query, s.clock.now()) {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

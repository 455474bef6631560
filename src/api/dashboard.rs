//! The dashboard: a single page (embedded, no CDN) served at `/`, its data endpoints
//! (`/v1/overview`, `/v1/flags/{flag}/history`) and a Server-Sent Events stream
//! (`/v1/events`) that pushes the overview when the snapshot changes, at most once a second.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{ApiError, ApiState};
use crate::aggregate::history::HistoryQuery;
use crate::pipeline::Command;
use crate::store::{AuditRecord, Store};
use crate::view::Snapshot;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
}

pub async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

/// Worst first: a breach outranks everything, a healthy slice nothing.
fn rank(verdict: &str) -> u8 {
    match verdict {
        "breached" => 3,
        "inconclusive" => 2,
        "no_data" => 1,
        _ => 0,
    }
}

/// The overview: every flag seen in telemetry or named by a rule, with its variants' traffic
/// share, the worst current verdict and the last action.
pub fn overview(snapshot: &Snapshot, actions: &[AuditRecord]) -> Value {
    let mut flags: BTreeMap<String, Value> = BTreeMap::new();
    let mut variants: BTreeMap<String, BTreeMap<String, (u64, u64, u64)>> = BTreeMap::new();
    let mut last_seen: BTreeMap<String, String> = BTreeMap::new();
    for s in &snapshot.series {
        let v = variants.entry(s.flag.clone()).or_default().entry(s.variant.clone()).or_default();
        v.0 += s.last_1m.exposures;
        v.1 += s.last_1m.requests;
        v.2 += s.last_1m.errors;
        let seen = last_seen.entry(s.flag.clone()).or_default();
        if s.last_seen > *seen {
            *seen = s.last_seen.clone();
        }
    }
    let mut names: BTreeSet<String> = variants.keys().cloned().collect();
    names.extend(snapshot.rules.rules.iter().map(|r| r.flag.clone()).filter(|f| !f.contains(['*', '?', '['])));
    names.extend(snapshot.verdicts.iter().map(|v| v.flag.clone()));
    for flag in names {
        let arms = variants.get(&flag).cloned().unwrap_or_default();
        let guarding: Vec<&crate::rules::Rule> = snapshot.rule_set.rules.iter().filter(|r| r.flag.is_match(&flag)).collect();
        let role = |variant: &str| {
            if guarding.iter().any(|r| r.treatment.iter().any(|t| t == variant)) {
                "treatment"
            } else if guarding.iter().any(|r| r.control.as_deref() == Some(variant)) {
                "control"
            } else {
                "other"
            }
        };
        let total: u64 = arms.values().map(|a| a.0).sum();
        let verdicts: Vec<&crate::view::VerdictView> = snapshot.verdicts.iter().filter(|v| v.flag == flag).collect();
        let worst = verdicts.iter().map(|v| v.verdict.label()).max_by_key(|v| rank(v)).unwrap_or("unguarded");
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &verdicts {
            *counts.entry(v.verdict.label()).or_default() += 1;
        }
        let rules: BTreeSet<&str> = verdicts.iter().map(|v| v.rule.as_str()).collect();
        let last_action = actions.iter().find(|a| a.target.as_deref().and_then(|t| t.split('|').nth(1)) == Some(flag.as_str()));
        flags.insert(
            flag.clone(),
            json!({
                "flag": flag,
                "variants": arms.iter().map(|(variant, (exposures, requests, errors))| json!({
                    "variant": variant,
                    "role": role(variant),
                    "exposures_1m": exposures,
                    "share": if total > 0 { Some(*exposures as f64 / total as f64) } else { None },
                    "requests_1m": requests,
                    "error_rate_1m": if *requests > 0 { Some(*errors as f64 / *requests as f64) } else { None },
                })).collect::<Vec<_>>(),
                "verdict": worst,
                "verdicts": counts,
                "rules": rules,
                "last_action": last_action.map(|a| json!({ "kind": a.kind, "at": a.at, "id": a.action_id })),
                "last_seen": last_seen.get(&flag),
            }),
        );
    }
    json!({
        "at": snapshot.at,
        "flags": flags.into_values().collect::<Vec<_>>(),
        "stale_rules": snapshot.stale_rules,
        "series_count": snapshot.series_count,
        "rules_error": snapshot.rules.last_error,
    })
}

/// The latest action-like audit records (kills and incidents), newest first.
fn recent_actions(store: &Store) -> Vec<AuditRecord> {
    store.audit_log(300, None, None).unwrap_or_default().into_iter().filter(|r| r.kind.starts_with("kill_") || r.kind == "incident").collect()
}

pub async fn overview_handler(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let snapshot = s.snapshots.borrow().clone();
    let store = s.store.clone();
    let actions = tokio::task::spawn_blocking(move || recent_actions(&store)).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(overview(&snapshot, &actions)).into_response())
}

pub async fn history(State(s): State<ApiState>, Path(flag): Path<String>, Query(mut query): Query<HistoryQuery>) -> Result<Response, ApiError> {
    query.flag = flag;
    let (reply, answer) = oneshot::channel();
    s.commands.send(Command::History { query, reply }).await.map_err(|_| ApiError::Unavailable("pipeline is shutting down".into()))?;
    let history = answer.await.map_err(|_| ApiError::Unavailable("pipeline is shutting down".into()))?;
    let snapshot = s.snapshots.borrow().clone();
    let verdicts: Vec<_> = snapshot.verdicts.iter().filter(|v| v.flag == history.flag).cloned().collect();
    let transitions: Vec<_> = snapshot.transitions.iter().filter(|t| t.flag == history.flag).cloned().collect();
    let rules: Vec<_> = snapshot
        .rule_set
        .rules
        .iter()
        .filter(|r| r.flag.is_match(&history.flag))
        .map(|r| {
            json!({ "name": r.name, "treatment": r.treatment, "control": r.control, "mode": r.mode.as_str(), "conditions": r.when.iter().map(crate::rules::Condition::chart).collect::<Vec<_>>(), "service": r.filter.service, "window": humantime::format_duration(r.window).to_string() })
        })
        .collect();
    Ok(Json(json!({ "history": history, "verdicts": verdicts, "transitions": transitions, "rules": rules })).into_response())
}

/// Server-Sent Events: `overview` events when the snapshot changes, at most once a second.
pub async fn events(State(s): State<ApiState>) -> impl IntoResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(2);
    let mut snapshots = s.snapshots.clone();
    let store = s.store.clone();
    tokio::spawn(async move {
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let store = store.clone();
            let actions = tokio::task::spawn_blocking(move || recent_actions(&store)).await.unwrap_or_default();
            let event = Event::default().event("overview").data(overview(&snapshot, &actions).to_string());
            if tx.send(Ok(event)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            if snapshots.changed().await.is_err() {
                break;
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, Slice};
    use crate::rules::evaluate::Verdict;
    use crate::time::Timestamp;
    use crate::view::{SeriesView, VerdictView, WindowView};

    fn series(flag: &str, variant: &str, exposures: u64, requests: u64, errors: u64) -> SeriesView {
        SeriesView {
            flag: flag.into(),
            variant: variant.into(),
            service: "checkout".into(),
            environment: "prod".into(),
            region: "eu".into(),
            last_1m: WindowView { requests, errors, exposures, ..WindowView::default() },
            last_5m: WindowView::default(),
            last_seen: "2026-11-25T12:00:00Z".into(),
        }
    }

    fn verdict(flag: &str, rule: &str, verdict: &str) -> VerdictView {
        VerdictView {
            rule: rule.into(),
            flag: flag.into(),
            slice: Slice::default(),
            verdict: match verdict {
                "healthy" => Verdict::Healthy,
                "breached" => Verdict::Breached,
                "inconclusive" => Verdict::Inconclusive(String::new()),
                _ => Verdict::NoData,
            },
            since: Timestamp(0),
            mode: Mode::Enforce,
            evidence: Value::Null,
        }
    }

    #[test]
    fn overview_rows_have_shares_the_worst_verdict_and_the_last_action() {
        let snapshot = Snapshot {
            series: vec![series("f", "on", 25, 30, 3), series("f", "off", 75, 90, 0), series("g", "x", 0, 0, 0)],
            verdicts: vec![verdict("f", "a", "healthy"), verdict("f", "b", "breached"), verdict("f", "c", "inconclusive")],
            ..Snapshot::default()
        };
        let action = AuditRecord {
            id: 9,
            at: "2026-11-25T12:00:01Z".into(),
            actor: "rule:b".into(),
            kind: "kill_confirmed".into(),
            rule: Some("b".into()),
            action_id: Some(3),
            target: Some("flags|f|prod|".into()),
            before: None,
            after: None,
            evidence: None,
        };
        let o = overview(&snapshot, &[action]);
        let f = &o["flags"][0];
        assert_eq!(f["flag"], "f");
        assert_eq!(f["verdict"], "breached", "the worst wins");
        assert_eq!(f["variants"][1]["variant"], "on");
        assert_eq!(f["variants"][1]["share"], 0.25);
        assert_eq!(f["variants"][1]["error_rate_1m"], 0.1);
        assert_eq!(f["last_action"]["kind"], "kill_confirmed");
        let g = &o["flags"][1];
        assert_eq!((g["verdict"].as_str(), g["variants"][0]["share"].is_null()), (Some("unguarded"), true), "no evaluations: no share");
    }
}

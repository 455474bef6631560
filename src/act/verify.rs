//! Verified rollback, the telemetry half: after the flag system confirmed a kill, watch the
//! killed cohort's exposures drain and the slice's error rate recover, from the same windows the
//! rules read. The executor does the other half (the call and its read-back, drift).
//!
//! A kill moves `sent`/`confirmed` → `drained` once, over the last `drain_window` of telemetry
//! after the confirmation, at least [`MIN_EXPOSURES`] evaluations of the flag in the kill's
//! scope were seen and at most `drain_below` of them served a killed variant (a kill that names
//! no treatment variant cannot drain: `unverified` at the deadline). If the deadline
//! (`drain_within`) passes first: `escalated` (with the share seen; the fallback actuator gets
//! the kill), or `unverified` when no evaluation of the flag was seen at all. A drained kill
//! becomes `recovered` once the slice's error rate since the drain is back near its baseline's
//! at the time of the kill (within max(1 point, the baseline's own rate)), and `failed` — the
//! kill did not fix it, tell the on-call — if `recover_within` passes first with enough requests.
//! `auto_restore` restores a recovered kill that long after it recovered.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ActionRequest;
use crate::action::ActionState;
use crate::aggregate::Aggregator;
use crate::time::Timestamp;

/// `[actuators.NAME.verify]`: how flagguard knows a kill worked, and what it does when not.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// The killed cohort must drain (its share of the flag's evaluations in the kill's scope
    /// at or below `drain_below`) within this long after the kill is confirmed: SDK caches
    /// and polling take seconds to minutes. Default `2m`.
    #[serde(with = "humantime_serde")]
    pub drain_within: Duration,
    /// Default 0.01 (1 % of the flag's evaluations).
    pub drain_below: f64,
    /// The share is measured over the last `drain_window` of telemetry. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// After draining, the slice's error rate must come back to its baseline's within this
    /// long, else the on-call is told the kill did not fix it. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub recover_within: Duration,
    /// How often a killed flag is read back to notice a human re-enabling it. Default `15s`.
    #[serde(with = "humantime_serde")]
    pub drift_interval: Duration,
    /// Actuator that gets the kill when this one fails (escalation). Default none.
    pub fallback: Option<String>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            drain_within: Duration::from_secs(120),
            drain_below: 0.01,
            drain_window: Duration::from_secs(5),
            recover_within: Duration::from_secs(300),
            drift_interval: Duration::from_secs(15),
            fallback: None,
        }
    }
}

/// Evaluations needed in the drain window to call a cohort drained before the deadline.
pub const MIN_EXPOSURES: u64 = 20;
/// Requests needed since the drain to judge recovery.
pub const MIN_REQUESTS: u64 = 20;

/// Evaluations of the flag in the kill's scope: of a killed variant, and in all.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Exposure {
    pub treatment: u64,
    pub total: u64,
}

impl Exposure {
    pub fn share(&self) -> Option<f64> {
        (self.total > 0).then(|| self.treatment as f64 / self.total as f64)
    }
}

fn in_scope(request: &ActionRequest, dims: &crate::model::Dims, with_service: bool) -> bool {
    let env = request.environment.as_deref().or(request.scoped("environment"));
    if env.is_some_and(|e| e != &*dims.environment) {
        return false;
    }
    request.slice().iter().all(|(dim, value)| match dim.as_str() {
        "region" => value == &*dims.region,
        // Evaluations happen where the flag is evaluated, not where the error was seen.
        "service" => !with_service || value == &*dims.service,
        _ => true,
    })
}

/// Exposures of `request.flag` in its scope, in buckets that start at or after `since`
/// (whole buckets only, so nothing from before the kill is counted).
pub fn exposure(aggregator: &Aggregator, request: &ActionRequest, since: Timestamp) -> Exposure {
    let mut out = Exposure::default();
    for (key, window) in aggregator.series().filter(|(k, _)| k.flag.as_str() == request.flag && in_scope(request, &k.dims, false)) {
        let n: u64 = window.points_since(since).into_iter().filter(|(start, _, _)| *start >= since.as_millis()).map(|(_, _, s)| s.exposures).sum();
        out.total += n;
        if request.treatment.iter().any(|t| t == key.variant.as_str()) {
            out.treatment += n;
        }
    }
    out
}

/// Requests and errors of the slice (every variant of the flag, now that the treatment is
/// off) in buckets starting at or after `since`.
pub fn slice_errors(aggregator: &Aggregator, request: &ActionRequest, since: Timestamp) -> (u64, u64) {
    let mut out = (0, 0);
    for (_, window) in aggregator.series().filter(|(k, _)| k.flag.as_str() == request.flag && in_scope(request, &k.dims, true)) {
        for (_, _, s) in window.points_since(since).into_iter().filter(|(start, _, _)| *start >= since.as_millis()) {
            out.0 += s.requests;
            out.1 += s.errors;
        }
    }
    out
}

/// What the watcher decides for one kill.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Move to `state` (`drained`, `escalated`, `unverified`, `recovered`, `failed`) with this
    /// evidence; `error` for the failure states.
    To { state: ActionState, evidence: Value, error: Option<String> },
    /// Queue the restore (`auto_restore`).
    Restore,
}

/// The error rate a recovered slice must be back under: its baseline's at the kill plus
/// max(1 point, that rate); without a baseline, half the treatment's rate at the kill.
pub fn recovery_target(evidence: &Value) -> Option<f64> {
    let rate = |p: &str| evidence.pointer(p).and_then(Value::as_f64);
    match rate("/baseline/stats/error_rate") {
        Some(b) => Some(b + b.max(0.01)),
        None => rate("/treatment/stats/error_rate").map(|t| t / 2.0),
    }
}

/// Decides the next step for a watched kill in `state` since `state_since`.
pub fn step(aggregator: &Aggregator, request: &ActionRequest, state: ActionState, state_since: Timestamp, now: Timestamp, cfg: &VerifyConfig) -> Step {
    let elapsed = now.since(state_since);
    match state {
        ActionState::Sent | ActionState::Confirmed => {
            let from = now.minus(cfg.drain_window).max(state_since);
            let recent = exposure(aggregator, request, from);
            let deadline = elapsed >= cfg.drain_within;
            let evidence = |e: Exposure| {
                json!({ "treatment_exposures": e.treatment, "exposures": e.total, "share": e.share(), "drain_below": cfg.drain_below,
                        "window_from": from.rfc3339(), "seconds_since_kill": elapsed.as_secs_f64() })
            };
            // At the deadline with no recent traffic, judge on everything seen since the kill.
            let seen = if deadline && recent.total == 0 { exposure(aggregator, request, state_since) } else { recent };
            // Without a named treatment variant every share is 0: "drained" would prove nothing.
            if request.treatment.is_empty() {
                return match deadline {
                    true => Step::To {
                        state: ActionState::Unverified,
                        evidence: evidence(seen),
                        error: Some("the kill names no treatment variant (give the alert a `variant` label or the mapping a `variant`, the operator kill a `treatment`): the drain cannot be verified".into()),
                    },
                    false => Step::Wait,
                };
            }
            match seen.share() {
                Some(share) if (seen.total >= MIN_EXPOSURES || deadline) && share <= cfg.drain_below => {
                    Step::To { state: ActionState::Drained, evidence: evidence(seen), error: None }
                }
                Some(share) if deadline => Step::To {
                    state: ActionState::Escalated,
                    evidence: evidence(seen),
                    error: Some(format!(
                        "the killed cohort did not drain within {}: {:.1} % of the flag's evaluations still serve it (limit {:.1} %) — SDK caches, another flag source, or a kill that did not take",
                        humantime::format_duration(cfg.drain_within),
                        share * 100.0,
                        cfg.drain_below * 100.0
                    )),
                },
                None if deadline => Step::To {
                    state: ActionState::Unverified,
                    evidence: evidence(seen),
                    error: Some(format!(
                        "no evaluation of the flag in scope within {}: the drain cannot be verified",
                        humantime::format_duration(cfg.drain_within)
                    )),
                },
                _ => Step::Wait,
            }
        }
        ActionState::Drained => {
            let (requests, errors) = slice_errors(aggregator, request, state_since);
            let target = recovery_target(&request.evidence);
            let rate = (requests > 0).then(|| errors as f64 / requests as f64);
            let evidence =
                json!({ "requests": requests, "errors": errors, "error_rate": rate, "target": target, "seconds_since_drain": elapsed.as_secs_f64() });
            match (rate, target) {
                (Some(r), Some(t)) if requests >= MIN_REQUESTS && r <= t => Step::To { state: ActionState::Recovered, evidence, error: None },
                (Some(r), Some(t)) if requests >= MIN_REQUESTS && elapsed >= cfg.recover_within => Step::To {
                    state: ActionState::Failed,
                    evidence,
                    error: Some(format!(
                        "the cohort drained but the slice's error rate is still {:.2} % (target {:.2} %) {} later: the flag may not be the cause",
                        r * 100.0,
                        t * 100.0,
                        humantime::format_duration(cfg.recover_within)
                    )),
                },
                _ => Step::Wait,
            }
        }
        ActionState::Recovered => match request.auto_restore_ms {
            Some(ms) if elapsed.as_millis() as u64 >= ms => Step::Restore,
            _ => Step::Wait,
        },
        _ => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::ActionKind;
    use crate::correlate::Sink;
    use crate::model::{Dims, FlagKey, SeriesKey, Variant};
    use std::time::Duration;

    fn request() -> ActionRequest {
        ActionRequest {
            treatment: vec!["on".into()],
            environment: Some("production".into()),
            scope: vec![("region".into(), "eu-west".into())],
            evidence: json!({"baseline": {"stats": {"error_rate": 0.0}}}),
            ..ActionRequest::new(ActionKind::Kill, "flags", "f")
        }
    }

    fn key(variant: &str, region: &str) -> SeriesKey {
        SeriesKey {
            flag: FlagKey::new(None, "f"),
            variant: Variant(variant.into()),
            dims: Dims { service: "checkout".into(), environment: "production".into(), region: region.into() },
        }
    }

    fn expose(agg: &mut Aggregator, at: u64, variant: &str, region: &str, n: usize) {
        let k = key(variant, region);
        let evaluation = crate::model::Evaluation { trace: None, flag: k.flag, variant: Some(k.variant), error_type: None, dims: k.dims, context: None };
        for _ in 0..n {
            agg.exposure(&evaluation, Timestamp(at));
        }
    }

    fn cfg() -> VerifyConfig {
        VerifyConfig { drain_within: Duration::from_secs(60), drain_window: Duration::from_secs(10), ..VerifyConfig::default() }
    }

    #[test]
    fn drains_only_on_post_kill_buckets_in_scope() {
        let mut agg = Aggregator::new(100);
        let kill = Timestamp(1_000_000);
        expose(&mut agg, kill.as_millis() - 1000, "on", "eu-west", 50); // before the kill
        expose(&mut agg, kill.as_millis() + 6_000, "on", "us-east", 50); // another region
        expose(&mut agg, kill.as_millis() + 6_000, "off", "eu-west", 30);
        let now = kill.plus(Duration::from_secs(12));
        assert!(matches!(step(&agg, &request(), ActionState::Confirmed, kill, now, &cfg()), Step::To { state: ActionState::Drained, .. }));
        expose(&mut agg, kill.as_millis() + 7_000, "on", "eu-west", 5);
        assert_eq!(step(&agg, &request(), ActionState::Confirmed, kill, now, &cfg()), Step::Wait, "5 of 35 still served: not drained yet");
        let late = kill.plus(Duration::from_secs(61));
        let Step::To { state, error, .. } = step(&agg, &request(), ActionState::Confirmed, kill, late, &cfg()) else { panic!() };
        assert_eq!(state, ActionState::Escalated);
        assert!(error.unwrap().contains("did not drain"));
    }

    #[test]
    fn no_traffic_at_the_deadline_is_unverified_not_drained() {
        let agg = Aggregator::new(100);
        let kill = Timestamp(1_000_000);
        assert_eq!(step(&agg, &request(), ActionState::Sent, kill, kill.plus(Duration::from_secs(30)), &cfg()), Step::Wait);
        assert!(matches!(
            step(&agg, &request(), ActionState::Sent, kill, kill.plus(Duration::from_secs(60)), &cfg()),
            Step::To { state: ActionState::Unverified, .. }
        ));
    }

    #[test]
    fn a_recovered_kill_is_restored_after_auto_restore_only() {
        let agg = Aggregator::new(10);
        let recovered = Timestamp(1_000_000);
        let manual = request();
        assert_eq!(
            step(&agg, &manual, ActionState::Recovered, recovered, recovered.plus(Duration::from_secs(86_400)), &cfg()),
            Step::Wait,
            "manual by default"
        );
        let auto = ActionRequest { auto_restore_ms: Some(600_000), ..request() };
        assert_eq!(step(&agg, &auto, ActionState::Recovered, recovered, recovered.plus(Duration::from_secs(599)), &cfg()), Step::Wait);
        assert_eq!(step(&agg, &auto, ActionState::Recovered, recovered, recovered.plus(Duration::from_secs(600)), &cfg()), Step::Restore);
        assert_eq!(
            step(&agg, &auto, ActionState::Failed, recovered, recovered.plus(Duration::from_secs(6000)), &cfg()),
            Step::Wait,
            "a kill that did not help is not restored automatically"
        );
    }

    #[test]
    fn recovery_compares_with_the_baseline_at_the_kill() {
        assert_eq!(recovery_target(&json!({"baseline": {"stats": {"error_rate": 0.02}}})), Some(0.04));
        assert_eq!(recovery_target(&json!({"baseline": {"stats": {"error_rate": 0.001}}})), Some(0.011));
        assert_eq!(recovery_target(&json!({"treatment": {"stats": {"error_rate": 0.5}}})), Some(0.25));
    }

    /// Review finding 5: a kill naming no treatment (alert kills, operator kills without
    /// `treatment`) counted a share of 0 and read `drained` while everything still served `on`.
    #[test]
    fn a_kill_without_a_treatment_never_drains() {
        let mut agg = Aggregator::new(100);
        let kill = Timestamp(1_000_000);
        expose(&mut agg, kill.as_millis() + 6_000, "on", "eu-west", 50);
        let blind = ActionRequest { treatment: vec![], ..request() };
        let now = kill.plus(Duration::from_secs(12));
        assert_eq!(step(&agg, &blind, ActionState::Confirmed, kill, now, &cfg()), Step::Wait, "never drained");
        let Step::To { state, error, .. } = step(&agg, &blind, ActionState::Confirmed, kill, kill.plus(Duration::from_secs(60)), &cfg()) else { panic!() };
        assert_eq!(state, ActionState::Unverified);
        assert!(error.unwrap().contains("no treatment variant"));
    }

    /// Review finding 9b: a kill sent to the actuator's default environment is measured there
    /// (the executor saves the environment it resolved in the effective request), not over
    /// every environment.
    #[test]
    fn the_drain_is_measured_in_the_resolved_environment() {
        let mut agg = Aggregator::new(100);
        let kill = Timestamp(1_000_000);
        expose(&mut agg, kill.as_millis() + 6_000, "off", "eu-west", 30);
        let staging = SeriesKey { dims: Dims { environment: "staging".into(), ..key("on", "eu-west").dims }, ..key("on", "eu-west") };
        let evaluation =
            crate::model::Evaluation { trace: None, flag: staging.flag, variant: Some(staging.variant), error_type: None, dims: staging.dims, context: None };
        for _ in 0..30 {
            agg.exposure(&evaluation, Timestamp(kill.as_millis() + 6_000));
        }
        let resolved = ActionRequest { environment: Some("production".into()), ..request() };
        let now = kill.plus(Duration::from_secs(12));
        assert!(matches!(step(&agg, &resolved, ActionState::Confirmed, kill, now, &cfg()), Step::To { state: ActionState::Drained, .. }));
    }
}

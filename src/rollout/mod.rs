//! Automated progression: a rule file's `rollouts:` section declares a plan — steps of rollout
//! percentages, how long each must stay healthy and how many treatment evaluations it needs, the
//! actuator — and flagguard moves the rollout forward through the actuator's set-rollout call
//! while the promotion gate (`gate`) says promote, holds while it says hold, and kills on
//! rollback. One plan instance per region when the plan lists `regions` (each region's rollout
//! is changed and rolled back alone), else one for the environment.
//!
//! This module is the pure core: [`next`] decides from a plan instance's state, the gate's
//! answer and the samples since the step began. The pipeline shell (`pipeline::progress`) reads
//! and writes the state (store), submits the actions and audits every step.
//!
//! Race-freedom with pipelines and humans: every advance carries the percentage the plan expects
//! the flag to be at (`ActionRequest::expect_rollout`); the executor reads the flag first and
//! refuses on a mismatch (someone changed it by hand), and the plan pauses and reports instead of
//! overwriting.

pub mod checks;
pub mod hygiene;
pub mod run;

use serde::{Deserialize, Serialize};

use crate::gate::Decision;
pub use crate::rules::plan::Plan;
use crate::time::Timestamp;

/// Where a plan instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Advancing, holding on a step, or waiting for its action.
    Running,
    /// Stopped by an operator or by drift; `resume` continues from the current step.
    Paused,
    /// Stopped for good by an operator (the flag is left as it is).
    Aborted,
    /// Reached the last step.
    Completed,
    /// A guard breached: the flag was killed.
    RolledBack,
}

/// The persisted state of one plan instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanState {
    pub key: String,
    pub plan: String,
    pub flag: String,
    pub region: Option<String>,
    pub status: Status,
    /// Index of the step applied (confirmed by the flag system); `None` before the first.
    pub step: Option<usize>,
    /// The percentage of that step.
    pub percent: Option<f64>,
    /// When the current step was confirmed (ms).
    pub step_since_ms: u64,
    /// The action in flight and the step it moves to.
    pub action: Option<i64>,
    pub target_step: Option<usize>,
    pub reason: Option<String>,
    /// In a regulated environment: the step to 100 % a second person approved (a resume
    /// approved through `flagguard approvals`).
    #[serde(default)]
    pub approved_step: Option<usize>,
    /// The proposal for that step while it waits; the plan keeps running (and guarding: a breach
    /// still rolls back) but does not take the step.
    #[serde(default)]
    pub awaiting_proposal: Option<i64>,
}

impl PlanState {
    pub fn new(plan: &Plan, region: Option<&str>) -> PlanState {
        PlanState {
            key: plan.key(region),
            plan: plan.name.clone(),
            flag: plan.flag.clone(),
            region: region.map(str::to_owned),
            status: Status::Running,
            step: None,
            percent: None,
            step_since_ms: 0,
            action: None,
            target_step: None,
            reason: None,
            approved_step: None,
            awaiting_proposal: None,
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Wait(String),
    /// Set the rollout to step `to`.
    Advance {
        to: usize,
    },
    /// Kill: a guard breached.
    RollBack {
        why: String,
    },
    Complete,
}

/// Decides the next move of a running instance with no action in flight. `gate` is the
/// promotion gate's answer for the instance's flag, environment and region; `samples` the
/// treatment evaluations since the step began; `blocked` why an earlier environment or an
/// external check forbids advancing now (a breach still rolls back).
pub fn next(plan: &Plan, state: &PlanState, gate: Decision, why: &str, samples: u64, blocked: Option<&str>, now: Timestamp) -> Next {
    if gate == Decision::Rollback {
        return Next::RollBack { why: why.to_owned() };
    }
    if let Some(blocked) = blocked
        && state.step.is_none_or(|s| s + 1 < plan.steps.len())
    {
        return Next::Wait(blocked.to_owned());
    }
    let Some(step) = state.step else {
        // The first step exposes the treatment for the first time: nothing to wait for.
        return Next::Advance { to: 0 };
    };
    if step + 1 >= plan.steps.len() {
        return Next::Complete;
    }
    let on_step = now.since(Timestamp(state.step_since_ms));
    if on_step < plan.min_healthy {
        return Next::Wait(format!("on step {} for {}s of {}s", step + 1, on_step.as_secs(), plan.min_healthy.as_secs()));
    }
    if samples < plan.min_samples {
        return Next::Wait(format!("{samples} of {} treatment evaluations on this step", plan.min_samples));
    }
    match gate {
        Decision::Promote => Next::Advance { to: step + 1 },
        _ => Next::Wait(format!("gate holds: {why}")),
    }
}

/// An environment pipeline's earlier stage: whether the plan `after` names lets this one start
/// or advance — every instance completed at least `healthy_for` ago, and its guards healthy
/// now (`gate`, asked with `min_healthy = healthy_for`). `states`: that plan's instances
/// (`None`: not started).
pub fn prerequisite(after: &crate::rules::plan::After, states: &[Option<PlanState>], gate: Decision, why: &str, now: Timestamp) -> Result<(), String> {
    let plan = &after.plan;
    for state in states {
        let Some(state) = state else { return Err(format!("waiting for plan {plan}: not started")) };
        match state.status {
            Status::Completed => {}
            Status::RolledBack | Status::Aborted => {
                return Err(format!("plan {plan} ({}) is {:?}: this environment does not start", state.key, state.status));
            }
            Status::Running | Status::Paused => {
                let at = state.percent.map(|p| format!(" at {p} %")).unwrap_or_default();
                return Err(format!("waiting for plan {plan} ({}{at}) to complete", state.key));
            }
        }
        let done_for = now.since(Timestamp(state.step_since_ms));
        if done_for < after.healthy_for {
            return Err(format!("waiting for plan {plan}: completed {}s ago, needs {}s", done_for.as_secs(), after.healthy_for.as_secs()));
        }
    }
    match gate {
        Decision::Promote => Ok(()),
        _ => Err(format!("plan {plan}'s environment is not healthy: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan() -> Plan {
        Plan {
            name: "p".into(),
            file: "r.yaml".into(),
            line: None,
            flag: "f".into(),
            actuator: "unleash".into(),
            environment: Some("production".into()),
            regions: vec![],
            treatment: vec!["on".into()],
            control: None,
            steps: vec![1.0, 5.0, 25.0, 100.0],
            min_healthy: Duration::from_secs(60),
            min_samples: 100,
            after: None,
            checks: vec![],
        }
    }

    #[test]
    fn starts_advances_when_healthy_long_enough_and_sampled_and_completes() {
        let p = plan();
        let mut s = PlanState::new(&p, None);
        let t = Timestamp(1_000_000);
        assert_eq!(next(&p, &s, Decision::Hold, "", 0, None, t), Next::Advance { to: 0 }, "the first step needs no evidence");
        s.step = Some(0);
        s.step_since_ms = t.as_millis();
        assert!(matches!(next(&p, &s, Decision::Promote, "", 500, None, t.plus(Duration::from_secs(59))), Next::Wait(_)), "not healthy for long enough");
        assert!(matches!(next(&p, &s, Decision::Promote, "", 99, None, t.plus(Duration::from_secs(61))), Next::Wait(_)), "too few samples");
        assert!(matches!(next(&p, &s, Decision::Hold, "no data", 500, None, t.plus(Duration::from_secs(61))), Next::Wait(w) if w.contains("no data")));
        assert_eq!(next(&p, &s, Decision::Promote, "", 100, None, t.plus(Duration::from_secs(61))), Next::Advance { to: 1 });
        s.step = Some(3);
        assert_eq!(next(&p, &s, Decision::Promote, "", 0, None, t), Next::Complete);
    }

    #[test]
    fn a_breach_rolls_back_at_any_step() {
        let p = plan();
        let mut s = PlanState::new(&p, Some("eu-west"));
        assert_eq!(s.key, "p/region=eu-west");
        s.step = Some(2);
        assert!(
            matches!(next(&p, &s, Decision::Rollback, "payments breached", 0, Some("staging"), Timestamp(0)), Next::RollBack { why } if why.contains("payments"))
        );
    }

    #[test]
    fn a_later_environment_waits_for_the_earlier_one_completed_and_healthy() {
        let after = crate::rules::plan::After { plan: "staging".into(), healthy_for: Duration::from_secs(600) };
        let t = Timestamp(10_000_000);
        let staging = |status, since_ms| {
            Some(PlanState { status, step_since_ms: since_ms, percent: Some(100.0), ..PlanState::new(&Plan { name: "staging".into(), ..plan() }, None) })
        };
        let check = |s: Option<PlanState>, gate| prerequisite(&after, &[s], gate, "no data", t);
        assert!(check(None, Decision::Promote).unwrap_err().contains("not started"));
        assert!(check(staging(Status::Running, 0), Decision::Promote).unwrap_err().contains("to complete"));
        assert!(check(staging(Status::RolledBack, 0), Decision::Promote).unwrap_err().contains("does not start"));
        assert!(check(staging(Status::Completed, t.as_millis() - 60_000), Decision::Promote).unwrap_err().contains("needs 600s"));
        assert!(check(staging(Status::Completed, 0), Decision::Hold).unwrap_err().contains("not healthy: no data"));
        assert_eq!(check(staging(Status::Completed, 0), Decision::Promote), Ok(()));
        // Blocked: the first step is not applied, nor the next; a breach still rolls back.
        let p = plan();
        let s = PlanState::new(&p, None);
        assert!(matches!(next(&p, &s, Decision::Promote, "", 0, Some("waiting for plan staging"), t), Next::Wait(w) if w.contains("staging")));
    }
}

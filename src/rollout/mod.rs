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
/// treatment evaluations since the step began.
pub fn next(plan: &Plan, state: &PlanState, gate: Decision, why: &str, samples: u64, now: Timestamp) -> Next {
    if gate == Decision::Rollback {
        return Next::RollBack { why: why.to_owned() };
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
        }
    }

    #[test]
    fn starts_advances_when_healthy_long_enough_and_sampled_and_completes() {
        let p = plan();
        let mut s = PlanState::new(&p, None);
        let t = Timestamp(1_000_000);
        assert_eq!(next(&p, &s, Decision::Hold, "", 0, t), Next::Advance { to: 0 }, "the first step needs no evidence");
        s.step = Some(0);
        s.step_since_ms = t.as_millis();
        assert!(matches!(next(&p, &s, Decision::Promote, "", 500, t.plus(Duration::from_secs(59))), Next::Wait(_)), "not healthy for long enough");
        assert!(matches!(next(&p, &s, Decision::Promote, "", 99, t.plus(Duration::from_secs(61))), Next::Wait(_)), "too few samples");
        assert!(matches!(next(&p, &s, Decision::Hold, "no data", 500, t.plus(Duration::from_secs(61))), Next::Wait(w) if w.contains("no data")));
        assert_eq!(next(&p, &s, Decision::Promote, "", 100, t.plus(Duration::from_secs(61))), Next::Advance { to: 1 });
        s.step = Some(3);
        assert_eq!(next(&p, &s, Decision::Promote, "", 0, t), Next::Complete);
    }

    #[test]
    fn a_breach_rolls_back_at_any_step() {
        let p = plan();
        let mut s = PlanState::new(&p, Some("eu-west"));
        assert_eq!(s.key, "p/region=eu-west");
        s.step = Some(2);
        assert!(matches!(next(&p, &s, Decision::Rollback, "payments breached", 0, Timestamp(0)), Next::RollBack { why } if why.contains("payments")));
    }
}

//! The progression shell, run by the pipeline on every full tick with what it needs (the
//! outbox door, the windows, the snapshot just published): for each plan instance, read its
//! state from the store, settle the action in flight, ask the gate, decide with
//! [`super::next`], submit the rollout change or the kill through the outbox, and write the
//! new state with its audit record.

use serde_json::json;

use super::{Next, Plan, PlanState, Status};
use crate::act::outbox::Outbox;
use crate::act::{ActionKind, ActionRequest};
use crate::action::ActionState;
use crate::aggregate::Aggregator;
use crate::gate::{Decision, GateQuery, decide};
use crate::store::{AuditEntry, StoreError};
use crate::time::Timestamp;
use crate::view::Snapshot;

/// The action request of a plan instance (rollout change or kill).
pub fn request(plan: &Plan, region: Option<&str>, kind: ActionKind) -> ActionRequest {
    ActionRequest {
        treatment: plan.treatment.clone(),
        control: plan.control.clone(),
        environment: plan.environment.clone(),
        region: region.map(str::to_owned),
        scope: region.map(|r| ("region".to_owned(), r.to_owned())).into_iter().collect(),
        rule: format!("rollout:{}", plan.name),
        actor: Some(format!("rollout:{}", plan.name)),
        ..ActionRequest::new(kind, &plan.actuator, &plan.flag)
    }
}

fn audit(state: &PlanState, kind: &str, now: Timestamp, after: serde_json::Value) -> AuditEntry {
    AuditEntry {
        at: now,
        actor: format!("rollout:{}", state.plan),
        kind: kind.into(),
        rule: Some(format!("rollout:{}", state.plan)),
        target: Some(state.key.clone()),
        after: Some(json!({ "plan": state, "detail": after })),
        ..AuditEntry::default()
    }
}

/// What moving the plans needs, lent by the pipeline for one tick.
pub struct Progress<'a> {
    pub outbox: &'a Outbox,
    pub aggregator: &'a Aggregator,
    pub snapshot: &'a Snapshot,
    /// Wakes the executor after an action is queued.
    pub wake: &'a tokio::sync::Notify,
    /// The plans' external checks, as their task last ran them.
    pub checks: &'a super::checks::CheckResults,
    /// `[governance]`: in these environments a step to 100 % needs a second person.
    pub regulated: &'a [String],
    pub approval_expiry: std::time::Duration,
}

impl Progress<'_> {
    /// Moves every running plan instance one decision forward.
    pub fn run(&self, plans: &[Plan], now: Timestamp) {
        for plan in plans {
            for region in plan.instances() {
                if let Err(e) = self.progress_one(plan, region.as_deref(), self.snapshot, now) {
                    tracing::error!(error = %e, plan = %plan.name, "cannot record the rollout step; it is retried next tick");
                }
            }
        }
    }

    /// Writes the plan's state only if it is still what this tick read (`expected`, updated on
    /// success): an operator's pause or abort in between wins, and the next tick re-reads it.
    fn save(
        &self,
        expected: &mut Option<serde_json::Value>,
        state: &PlanState,
        kind: Option<&str>,
        now: Timestamp,
        detail: serde_json::Value,
        notify: Option<String>,
    ) -> Result<(), StoreError> {
        let entry = kind.map(|k| audit(state, k, now, detail));
        let value = serde_json::to_value(state).unwrap_or_default();
        if !self.outbox.store().save_plan_if(&state.key, expected.as_ref(), &value, entry.as_ref())? {
            tracing::info!(plan = %state.plan, key = %state.key, "the plan was changed by an operator meanwhile; not overwritten");
            return Ok(());
        }
        *expected = Some(value);
        if let Some(text) = notify
            && self.outbox.notify(
                &crate::act::notify::Note::new(
                    crate::act::notify::Severity::Info,
                    &text,
                    &json!({ "rule": format!("rollout:{}", state.plan), "plan": state }),
                    Some(&state.flag),
                ),
                now,
            )?
        {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Why the plan may not advance now: its earlier environment (`after`) is not completed and
    /// healthy, or an external check does not pass.
    fn blocked(&self, plan: &Plan, snapshot: &Snapshot, now: Timestamp) -> Result<Option<String>, StoreError> {
        if let Some(after) = &plan.after {
            let Some(earlier) = snapshot.rule_set.rollouts.iter().find(|p| p.name == after.plan) else {
                return Ok(Some(format!("plan {} is not loaded", after.plan)));
            };
            let mut states = Vec::new();
            for region in earlier.instances() {
                let stored = self.outbox.store().plan_state(&earlier.key(region.as_deref()))?;
                states.push(stored.and_then(|v| serde_json::from_value::<PlanState>(v).ok()));
            }
            let query = GateQuery {
                environment: earlier.environment.clone(),
                region: None,
                variant: None,
                min_healthy: Some(format!("{}s", after.healthy_for.as_secs())),
            };
            let answer = decide(&snapshot.verdicts, &snapshot.rule_set.rules, &snapshot.at, &earlier.flag, &query, now).unwrap_or_default();
            let gate: Decision = serde_json::from_value(answer["decision"].clone()).unwrap_or(Decision::Hold);
            let why = answer["why"].as_array().map(|w| w.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join("; ")).unwrap_or_default();
            if let Err(why) = super::prerequisite(after, &states, gate, &why, now) {
                return Ok(Some(why));
            }
        }
        Ok(super::checks::verdict(plan, self.checks, now).err())
    }

    /// A step to 100 % in a regulated environment waits for a second person: a proposal (to
    /// take that step), and until it is approved the instance keeps running — still guarding,
    /// a breach still rolls back — without taking the step. A rejected proposal holds the plan
    /// (pause and resume it to propose again); an expired one is proposed again.
    fn await_approval(
        &self,
        plan: &Plan,
        region: Option<&str>,
        state: &mut PlanState,
        expected: &mut Option<serde_json::Value>,
        to: usize,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        use crate::store::proposals::ProposalState;
        if let Some(id) = state.awaiting_proposal {
            match self.outbox.store().proposal(id, now)?.map(|p| p.state) {
                Some(ProposalState::Pending) => return Ok(()),
                Some(ProposalState::Rejected) => {
                    let why = format!("the step to 100 % was rejected (proposal {id}); pause and resume the plan to propose it again, or abort it");
                    if state.reason.as_deref() != Some(why.as_str()) {
                        state.reason = Some(why);
                        self.save(expected, state, None, now, json!({}), None)?;
                    }
                    return Ok(());
                }
                // Approved (its resume sets `approved_step`; the next tick takes the step),
                // expired or gone: propose again below unless approved.
                Some(ProposalState::Approved) => return Ok(()),
                _ => {}
            }
        }
        let request = json!({ "plan": plan.name, "region": region, "step": to });
        let reason = format!("step {} of plan {} takes {} to 100 %", to + 1, plan.name, describe(plan, region));
        let proposal = self.outbox.store().propose(&crate::store::proposals::NewProposal {
            kind: crate::store::proposals::ProposalKind::Resume,
            flag: &plan.flag,
            environment: plan.environment.as_deref(),
            request: &request,
            proposer: &format!("rollout:{}", plan.name),
            reason: Some(&reason),
            at: now,
            expires: now.plus(self.approval_expiry),
        })?;
        let why = format!(
            "the step to 100 % in a regulated environment needs a second person's approval: proposal {proposal} (flagguard approvals approve {proposal})"
        );
        state.awaiting_proposal = Some(proposal);
        state.reason = Some(why.clone());
        let text = format!("rollout {} WAITS for approval for {}: {why}", plan.name, describe(plan, region));
        self.save(expected, state, Some("rollout_awaiting_approval"), now, json!({ "proposal": proposal }), Some(text))
    }

    fn progress_one(&self, plan: &Plan, region: Option<&str>, snapshot: &Snapshot, now: Timestamp) -> Result<(), StoreError> {
        let key = plan.key(region);
        let mut expected = self.outbox.store().plan_state(&key)?;
        let mut state = match expected.clone().and_then(|v| serde_json::from_value::<PlanState>(v).ok()) {
            Some(s) => s,
            None => {
                let s = PlanState::new(plan, region);
                self.save(&mut expected, &s, Some("rollout_started"), now, json!({ "steps": plan.steps }), None)?;
                s
            }
        };
        if state.status != Status::Running {
            return Ok(());
        }
        let query = GateQuery { environment: plan.environment.clone(), region: region.map(str::to_owned), variant: None, min_healthy: None };
        let answer = decide(&snapshot.verdicts, &snapshot.rule_set.rules, &snapshot.at, &plan.flag, &query, now).unwrap_or_default();
        let gate: Decision = serde_json::from_value(answer["decision"].clone()).unwrap_or(Decision::Hold);
        let why = answer["why"].as_array().map(|w| w.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join("; ")).unwrap_or_default();

        if let Some(id) = state.action {
            let row = self.outbox.store().action(id)?;
            match row.as_ref().map(|r| r.state) {
                Some(ActionState::Pending) if gate != Decision::Rollback => return Ok(()),
                Some(ActionState::Pending) => {}
                Some(ActionState::Confirmed | ActionState::Sent) if state.target_step.is_some_and(|to| to >= plan.steps.len()) => {
                    // The plan was edited to fewer steps while this one was in flight.
                    state.status = Status::Paused;
                    state.action = None;
                    state.reason = Some("the plan's steps changed while a step was in flight; resume to continue".into());
                    self.save(&mut expected, &state, Some("rollout_paused"), now, json!({ "action": id }), None)?;
                    return Ok(());
                }
                Some(ActionState::Confirmed | ActionState::Sent) => {
                    let to = state.target_step.unwrap_or(0);
                    state.step = Some(to);
                    state.percent = plan.steps.get(to).copied();
                    state.step_since_ms = now.as_millis();
                    state.action = None;
                    state.target_step = None;
                    let text =
                        format!("rollout {}: {} is at {} % (step {} of {})", plan.name, describe(plan, region), plan.steps[to], to + 1, plan.steps.len());
                    self.save(
                        &mut expected,
                        &state,
                        Some("rollout_step"),
                        now,
                        json!({ "step": to + 1, "percent": plan.steps[to], "action": id }),
                        Some(text),
                    )?;
                    return Ok(());
                }
                _ => {
                    let error =
                        row.and_then(|r| r.last_error.or(Some(format!("action {id} ended {}", r.state)))).unwrap_or_else(|| format!("action {id} is gone"));
                    state.status = Status::Paused;
                    state.action = None;
                    state.target_step = None;
                    state.reason = Some(error.clone());
                    let text = format!("rollout {} PAUSED for {}: {error}", plan.name, describe(plan, region));
                    self.save(&mut expected, &state, Some("rollout_paused"), now, json!({ "error": error, "action": id }), Some(text))?;
                    return Ok(());
                }
            }
        }

        let samples = match state.step {
            Some(_) => {
                let probe = request(plan, region, ActionKind::Kill);
                crate::act::verify::exposure(self.aggregator, &probe, Timestamp(state.step_since_ms)).treatment
            }
            None => 0,
        };
        // Held by an operator control: neither advance nor roll back (the plan stays where it
        // is; `GET /v1/controls` says why). A step already in flight finishes.
        if self.outbox.store().controls()?.hold(&plan.flag, Some(&format!("rollout:{}", plan.name)), now).is_some() {
            return Ok(());
        }
        let blocked = self.blocked(plan, snapshot, now)?;
        if blocked.is_some() && !same_wait(state.reason.as_deref(), blocked.as_deref()) && state.action.is_none() {
            // Say why it waits (`GET /v1/rollouts`), once.
            state.reason = blocked.clone();
            self.save(&mut expected, &state, None, now, json!({}), None)?;
        }
        match super::next(plan, &state, gate, &why, samples, blocked.as_deref(), now) {
            Next::Wait(_) => Ok(()),
            Next::Complete => {
                state.status = Status::Completed;
                let text = format!("rollout {} completed for {}", plan.name, describe(plan, region));
                self.save(&mut expected, &state, Some("rollout_completed"), now, json!({}), Some(text))
            }
            Next::Advance { to } => {
                let percent = plan.steps[to];
                if crate::store::proposals::to_everyone(percent)
                    && crate::store::proposals::regulated(self.regulated, plan.environment.as_deref())
                    && state.approved_step != Some(to)
                {
                    return self.await_approval(plan, region, &mut state, &mut expected, to, now);
                }
                let req = ActionRequest {
                    percent: Some(percent),
                    expect_rollout: state.percent,
                    reason: Some(format!("step {} of {} of plan {}", to + 1, plan.steps.len(), plan.name)),
                    evidence: json!({ "rule": format!("rollout:{}", plan.name), "gate": answer }),
                    ..request(plan, region, ActionKind::Rollout)
                };
                let decided = audit(&state, "rollout_decided", now, json!({ "to_step": to + 1, "percent": percent, "samples": samples }));
                match self.outbox.rollout_step(&req, to, &decided, now)? {
                    Ok(id) => {
                        state.action = Some(id);
                        state.target_step = Some(to);
                        self.save(&mut expected, &state, None, now, json!({}), None)?;
                        self.wake.notify_one();
                    }
                    // The flag is killed: a plan does not turn it back on; pause and say why.
                    Err(refused @ crate::action::Refused::Killed { .. }) => {
                        let why = refused.to_string();
                        state.status = Status::Paused;
                        state.reason = Some(why.clone());
                        let text = format!("rollout {} PAUSED for {}: {why}", plan.name, describe(plan, region));
                        self.save(&mut expected, &state, Some("rollout_paused"), now, json!({ "error": why }), Some(text))?;
                    }
                    // Another action for the target is in flight: try again next tick.
                    Err(why) => tracing::info!(plan = %plan.name, %why, "rollout step not queued yet"),
                }
                Ok(())
            }
            Next::RollBack { why } => {
                let req = ActionRequest {
                    reason: Some(format!("plan {} rolled back: {why}", plan.name)),
                    evidence: json!({ "rule": format!("rollout:{}", plan.name), "gate": answer }),
                    slice_key: format!("rollout/{}", state.key),
                    ..request(plan, region, ActionKind::Kill)
                };
                let decided = audit(&state, "kill_decided", now, json!({ "why": why }));
                let id = self.outbox.rollback(&req, &decided, now)?;
                state.status = Status::RolledBack;
                state.action = Some(id);
                state.reason = Some(why.clone());
                let text = format!("rollout {} ROLLED BACK for {}: {why} (kill action {id})", plan.name, describe(plan, region));
                self.save(&mut expected, &state, Some("rollout_rolled_back"), now, json!({ "why": why, "action": id }), Some(text))?;
                self.wake.notify_one();
                Ok(())
            }
        }
    }
}

fn describe(plan: &Plan, region: Option<&str>) -> String {
    let mut out = format!("{} in {}", plan.flag, plan.environment.as_deref().unwrap_or("every environment"));
    if let Some(r) = region {
        out.push_str(&format!(" region {r}"));
    }
    out
}

/// Two wait reasons that differ only in their counters ("completed 12s ago") are the same:
/// the state is not rewritten every tick for them.
fn same_wait(a: Option<&str>, b: Option<&str>) -> bool {
    let strip = |s: Option<&str>| s.map(|s| s.chars().filter(|c| !c.is_ascii_digit()).collect::<String>());
    strip(a) == strip(b)
}

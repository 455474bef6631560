//! A flag as pipelines and drift checks see it ([`FlagView`]): one target's state read now
//! from the flag system, and — when the daemon answers — what flagguard holds on it (the kills
//! that hold it off, its pending actions). `GET /v1/flags/{flag}/state` serves it; `flags get
//! --config` and `drift --config` build it without a daemon.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActError, ActionKind, ActionRequest, Actuator, VariantWeight};
use crate::action::Target;

/// How long one read may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagView {
    pub flag: String,
    pub actuator: String,
    pub environment: Option<String>,
    pub region: Option<String>,
    pub flag_system: SystemView,
    /// The kills holding the target (or a slice of it) off; `None`: unknown (read without the
    /// daemon).
    pub killed_by_flagguard: Option<Vec<KillRef>>,
    /// The flag's pending actions; `None`: unknown.
    pub pending: Option<Vec<PendingRef>>,
}

/// The flag system's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemView {
    /// It answered with a state (on/off or a rollout).
    pub readable: bool,
    pub enabled: Option<bool>,
    pub rollout: Option<f64>,
    #[serde(default)]
    pub variants: Vec<VariantWeight>,
    #[serde(default)]
    pub detail: Value,
    /// Why it could not be read.
    #[serde(default)]
    pub error: Option<String>,
    /// The failure may pass (unreachable, 5xx, timeout): "cannot tell", not an error.
    #[serde(default)]
    pub transient: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KillRef {
    pub action: i64,
    pub state: String,
    pub target: String,
    pub rule: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRef {
    pub action: i64,
    pub kind: String,
    pub target: String,
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

/// Reads the target now (the environment resolved as an action's would be); what flagguard
/// holds is left unknown for the caller to fill in. Returns the request that was read too.
pub async fn read(actuator: &dyn Actuator, name: &str, flag: &str, environment: Option<&str>, region: Option<&str>) -> (FlagView, ActionRequest) {
    let mut request = read_request(name, flag, environment, region);
    let flag_system = match super::executor::prepare(actuator, &mut request) {
        Err(e) => failed(&e),
        Ok(_) => match tokio::time::timeout(READ_TIMEOUT, actuator.read(&request)).await {
            Ok(Ok(state)) => SystemView {
                readable: state.killed.is_some() || state.rollout.is_some(),
                enabled: state.killed.map(|k| !k),
                rollout: state.rollout,
                variants: state.variants,
                error: (state.killed.is_none() && state.rollout.is_none()).then(|| "this actuator cannot read the flag back".to_owned()),
                detail: state.detail,
                transient: false,
            },
            Ok(Err(e)) => failed(&e),
            Err(_) => SystemView { error: Some(format!("the flag system did not answer within {READ_TIMEOUT:?}")), transient: true, ..SystemView::default() },
        },
    };
    let view = FlagView {
        flag: flag.to_owned(),
        actuator: name.to_owned(),
        environment: request.environment.clone(),
        region: request.region.clone(),
        flag_system,
        killed_by_flagguard: None,
        pending: None,
    };
    (view, request)
}

fn failed(e: &ActError) -> SystemView {
    SystemView { error: Some(e.to_string()), transient: matches!(e, ActError::Transient { .. }), ..SystemView::default() }
}

/// Fills in what flagguard holds on the view's target from the store: the kills that hold it
/// (or a slice of it) off, and the flag's pending actions.
pub fn held(store: &crate::store::Store, view: &mut FlagView, request: &ActionRequest) -> Result<(), crate::store::StoreError> {
    let (kills, pending) = (store.flag_kills(&view.flag)?, store.pending_for_flag(&view.flag)?);
    let here = super::outbox::target_of(request);
    view.killed_by_flagguard = Some(
        kills
            .iter()
            .filter(|k| k.state.holds() && overlaps(&Target::parse(&k.target), &here))
            .map(|k| KillRef {
                action: k.id,
                state: k.state.to_string(),
                target: k.target.clone(),
                rule: k.request.get("rule").and_then(Value::as_str).filter(|r| !r.is_empty()).map(str::to_owned),
            })
            .collect(),
    );
    view.pending = Some(pending.iter().map(|p| PendingRef { action: p.id, kind: p.kind.as_str().to_owned(), target: p.target.clone() }).collect());
    Ok(())
}

/// A kill of one target touches another: either covers the other (a region's kill shows on its
/// environment, an environment's kill on each region).
fn overlaps(kill: &Target, read: &Target) -> bool {
    kill.covers(read) || read.covers(kill)
}

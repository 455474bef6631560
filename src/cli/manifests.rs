//! `flagguard drift MANIFESTS/` and `flagguard apply MANIFESTS/`: flag manifests in Git
//! against the flag systems.
//!
//! - `drift` reads every flag × environment of the manifests — through the daemon (which also
//!   knows flagguard's own kills), or with `--config` straight from the configuration's
//!   actuators — and exits 0 in sync, 1 drifted, 2 cannot tell, 3 error: the gate a pipeline
//!   runs before it marks a deployment successful.
//! - `apply` reconciles rollout percentages through the daemon's outbox (compare-and-set from
//!   what it read, once per change, audited with the Git commit), in promotion order: a later
//!   environment is not widened while an earlier one is not in sync. It never undoes a kill.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sha2::Digest;

use super::api::{Api, failure};
use super::flags::{Change, FlagSystems, FlagTarget, SetRollout, Source};
use crate::act::read::FlagView;
use crate::manifest::drift::{self, Finding, Report, Status};
use crate::manifest::{FlagManifest, ManifestSet};

pub const ERROR: i32 = 3;

/// Reads flag views from the daemon or from the configuration's actuators.
enum Reader {
    Daemon(Api),
    Direct(FlagSystems),
}

impl Reader {
    fn new(source: &Source) -> Result<Reader, String> {
        Ok(match source {
            Source::Daemon { server, token } => Reader::Daemon(Api::new(server, token.as_deref())?),
            Source::Config(path) => Reader::Direct(FlagSystems::from_config(path)?),
        })
    }

    /// The actuators manifests must name (`None`: the daemon checks them).
    fn actuators(&self) -> Option<std::collections::BTreeSet<String>> {
        match self {
            Reader::Daemon(_) => None,
            Reader::Direct(systems) => Some(systems.names()),
        }
    }

    async fn view(&self, flag: &FlagManifest, environment: &str) -> Result<FlagView, String> {
        match self {
            Reader::Direct(systems) => systems.read(flag.actuator.as_deref(), &flag.key, environment, None).await,
            Reader::Daemon(api) => {
                let query = [("actuator", flag.actuator.as_deref()), ("environment", Some(environment))];
                match api.get(&["v1", "flags", &flag.key, "state"], &query).await? {
                    (200, body) => serde_json::from_value(body).map_err(|e| format!("not a flag state: {e}")),
                    (status, body) => Err(failure(status, &body)),
                }
            }
        }
    }
}

fn load(dir: &Path, reader: &Reader) -> Result<ManifestSet, i32> {
    crate::manifest::load_dir(dir, reader.actuators().as_ref()).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!("{} error(s) in the manifests", errors.len());
        ERROR
    })
}

/// Every flag × environment of `set` (only `env` when given), read and compared.
async fn reports(set: &ManifestSet, reader: &Reader, env: Option<&str>) -> Vec<Report> {
    let mut out = Vec::new();
    for flag in &set.flags {
        for intended in flag.environments.iter().filter(|e| env.is_none_or(|want| want == e.environment)) {
            let (status, view) = match reader.view(flag, &intended.environment).await {
                Ok(view) => (drift::compare(intended, &view), Some(view)),
                Err(error) => (Status::Error { error }, None),
            };
            out.push(Report { flag: flag.key.clone(), environment: intended.environment.clone(), status, view });
        }
    }
    out
}

fn print(reports: &[Report], json: bool) {
    if json {
        println!("{}", json!({ "flags": reports, "exit": drift::exit_code(reports) }));
        return;
    }
    for r in reports {
        println!("{}", r.describe());
    }
    let drifted = reports.iter().filter(|r| r.status.drifted()).count();
    println!("{} of {} flag environments in sync, {drifted} drifted", reports.iter().filter(|r| r.status == Status::InSync).count(), reports.len());
}

/// `flagguard drift`: returns the exit code.
pub async fn drift(dir: &Path, env: Option<&str>, source: &Source, json: bool) -> i32 {
    let reader = match Reader::new(source) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drift: {e}");
            return ERROR;
        }
    };
    let set = match load(dir, &reader) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let reports = reports(&set, &reader, env).await;
    print(&reports, json);
    drift::exit_code(&reports)
}

/// What `apply` did about one flag × environment.
#[derive(Debug, serde::Serialize)]
struct Applied {
    flag: String,
    environment: String,
    /// `in_sync`, `applied`, `refused`, `held`, `not_applicable`, `cannot_tell`, `error`.
    outcome: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<i64>,
}

/// `flagguard apply`: returns the exit code (0 everything in sync afterwards, 1 something
/// left drifted — refused, held or not applicable — 2 cannot tell, 3 error).
pub async fn apply(dir: &Path, env: Option<&str>, server: &str, token: Option<&str>, wait: Duration, json: bool) -> i32 {
    let source = Source::Daemon { server: server.to_owned(), token: token.map(str::to_owned) };
    let reader = match Reader::new(&source) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("apply: {e}");
            return ERROR;
        }
    };
    let set = match load(dir, &reader) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let commit = crate::manifest::git_head(dir);
    let mut results = Vec::new();
    for flag in &set.flags {
        // Promotion order: once an environment is not in sync, later ones are not widened.
        let mut blocked: Option<String> = None;
        for intended in &flag.environments {
            let here =
                |outcome, message: String, action| Applied { flag: flag.key.clone(), environment: intended.environment.clone(), outcome, message, action };
            let view = reader.view(flag, &intended.environment).await;
            let status = match &view {
                Ok(view) => drift::compare(intended, view),
                Err(error) => Status::Error { error: error.clone() },
            };
            if env.is_some_and(|want| want != intended.environment) {
                if status != Status::InSync {
                    blocked.get_or_insert(intended.environment.clone());
                }
                continue;
            }
            let result = match (&status, &view) {
                (Status::InSync, _) => here("in_sync", "in sync".into(), None),
                (Status::Killed { kills, .. }, _) => {
                    let ids: Vec<String> = kills.iter().map(|k| k.action.to_string()).collect();
                    here("refused", format!("refused: this would undo flagguard's kill (action {}); restore it first", ids.join(", ")), None)
                }
                (Status::CannotTell { error }, _) => here("cannot_tell", error.clone(), None),
                (Status::Error { error }, _) => here("error", error.clone(), None),
                (Status::Drifted { findings }, Ok(view)) => {
                    match reconcile(flag, intended.environment.as_str(), findings, view, blocked.as_deref(), commit.as_deref(), server, token, wait).await {
                        Ok((outcome, message, action)) => here(outcome, message, action),
                        Err(e) => here("error", e, None),
                    }
                }
                (Status::Drifted { .. }, Err(e)) => here("error", e.clone(), None),
            };
            if result.outcome != "in_sync" && result.outcome != "applied" {
                blocked.get_or_insert(intended.environment.clone());
            }
            results.push(result);
        }
    }
    let code = if results.iter().any(|r| matches!(r.outcome, "refused" | "held" | "not_applicable")) {
        1
    } else if results.iter().any(|r| r.outcome == "error") {
        ERROR
    } else if results.iter().any(|r| r.outcome == "cannot_tell") {
        2
    } else {
        0
    };
    if json {
        println!("{}", json!({ "flags": results, "exit": code, "commit": commit }));
    } else {
        for r in &results {
            println!("{} in {}: {}", r.flag, r.environment, r.message);
        }
    }
    code
}

/// Sets the drifted rollout back to the manifest's, compare-and-set from what was read.
#[allow(clippy::too_many_arguments)]
async fn reconcile(
    flag: &FlagManifest,
    environment: &str,
    findings: &[Finding],
    view: &FlagView,
    blocked: Option<&str>,
    commit: Option<&str>,
    server: &str,
    token: Option<&str>,
    wait: Duration,
) -> Result<(&'static str, String, Option<i64>), String> {
    let others: Vec<String> = findings.iter().filter(|f| !matches!(f, Finding::Rollout { have: Some(_), .. })).map(Finding::describe).collect();
    if !others.is_empty() {
        let message = format!("not applied: apply changes rollout percentages only; change this in the flag system: {}", others.join("; "));
        return Ok(("not_applicable", message, None));
    }
    let Some(Finding::Rollout { want, have: Some(have) }) = findings.first() else { return Ok(("in_sync", "in sync".into(), None)) };
    if let Some(earlier) = blocked
        && want > have
    {
        return Ok(("held", format!("held at {have} %: {earlier} comes first in the promotion order and is not in sync"), None));
    }
    let digest = hex::encode(&sha2::Sha256::digest(format!("{}|{environment}|{have}|{want}|{}", flag.key, commit.unwrap_or("")).as_bytes())[..8]);
    let args = SetRollout {
        target: FlagTarget { flag: flag.key.clone(), environment: environment.to_owned(), region: None, actuator: Some(view.actuator.clone()) },
        change: Change::To { percent: *want, expect: Some(*have) },
        idempotency_key: Some(format!("apply-{digest}")),
        reason: Some(format!("flagguard apply {}{}", flag.file.display(), commit.map(|c| format!(" at {c}")).unwrap_or_default())),
        wait,
    };
    let (code, answer) = super::flags::change(&args, server, token).await?;
    let action = answer["action"].as_i64();
    let message = answer["message"].as_str().unwrap_or("").to_owned();
    Ok(match code {
        super::flags::DONE => ("applied", format!("applied: rollout {have} → {want} % ({message})"), action),
        super::flags::REFUSED => ("refused", message, action),
        super::flags::UNDECIDED => ("cannot_tell", message, action),
        _ => ("error", message, action),
    })
}

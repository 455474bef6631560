//! `flagguard flags …`: flags for pipelines and hygiene.
//! - `flags get`: a flag's state in the flag system with what flagguard holds on it (through
//!   the daemon, `GET /v1/flags/{flag}/state`; or read-only from the configuration's
//!   actuator with `--config`, no daemon needed).
//! - `flags set-rollout`: a rollout change through the daemon's outbox (authenticated,
//!   authorised, audited), compare-and-set with `--expect`, once per `--idempotency-key`; waits
//!   for the outcome.
//! - `flags stale`: removal candidates (`GET /v1/flags/stale`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::api::{Api, failure};

/// Exit codes of `flags get` and `flags set-rollout`.
pub const DONE: i32 = 0;
/// `set-rollout`: refused (not at `--expect`, another action pending, the flag killed…): nothing
/// was changed.
pub const REFUSED: i32 = 1;
/// `set-rollout`: still pending when `--wait` ran out (it may yet be carried out), or a
/// proposal awaiting a second person's approval (regulated environments).
pub const UNDECIDED: i32 = 2;
pub const ERROR: i32 = 3;

/// Prints the candidates; returns the exit code (0, or 3 on a usage or connection error).
pub async fn stale(server: &str, token: Option<&str>, single_variant_for: &str, unused_for: &str, json: bool) -> i32 {
    match ask(server, token, single_variant_for, unused_for).await {
        Ok(answer) if json => {
            println!("{answer}");
            0
        }
        Ok(answer) => {
            print!("{}", render(&answer));
            0
        }
        Err(e) => {
            eprintln!("flags stale: {e}");
            ERROR
        }
    }
}

async fn ask(server: &str, token: Option<&str>, single_variant_for: &str, unused_for: &str) -> Result<Value, String> {
    let api = Api::new(server, token)?;
    let query = [("single_variant_for", Some(single_variant_for)), ("unused_for", Some(unused_for))];
    match api.get(&["v1", "flags", "stale"], &query).await? {
        (200, body) => Ok(body),
        (status, body) => Err(failure(status, &body)),
    }
}

/// The human-readable table.
pub fn render(answer: &Value) -> String {
    let flags = answer["flags"].as_array().cloned().unwrap_or_default();
    let mut out = format!("{} of {} flags seen are removal candidates\n", flags.len(), answer["known_flags"].as_u64().unwrap_or(0));
    if !flags.is_empty() {
        out.push_str(&format!("{:<32} {:<15} {:<10} {:<26} {:<26} owner\n", "flag", "why", "variant", "since", "last evaluated"));
    }
    for f in flags {
        let s = |k: &str| f[k].as_str().unwrap_or("-").to_owned();
        out.push_str(&format!("{:<32} {:<15} {:<10} {:<26} {:<26} {}\n", s("flag"), s("why"), s("variant"), s("since"), s("last_evaluated"), s("owner")));
    }
    out
}

/// Which flag target a command is about.
#[derive(Clone, Debug, Default)]
pub struct FlagTarget {
    pub flag: String,
    pub environment: String,
    pub region: Option<String>,
    pub actuator: Option<String>,
}

/// Where `flags get` reads from: the daemon, or the configuration's actuator directly.
pub enum Source {
    Daemon { server: String, token: Option<String> },
    Config(std::path::PathBuf),
}

/// `flags get`: prints the state; exit 0, or 3 when it cannot be read.
pub async fn get(target: &FlagTarget, source: &Source, json: bool) -> i32 {
    let answer = match source {
        Source::Daemon { server, token } => from_daemon(server, token.as_deref(), target).await,
        Source::Config(path) => from_config(path, target).await,
    };
    match answer {
        Ok(answer) if json => {
            println!("{answer}");
            if answer["flag_system"]["readable"] == true { DONE } else { ERROR }
        }
        Ok(answer) => {
            print!("{}", render_state(&answer));
            if answer["flag_system"]["readable"] == true { DONE } else { ERROR }
        }
        Err(e) => {
            eprintln!("flags get: {e}");
            ERROR
        }
    }
}

async fn from_daemon(server: &str, token: Option<&str>, t: &FlagTarget) -> Result<Value, String> {
    let api = Api::new(server, token)?;
    let query = [("actuator", t.actuator.as_deref()), ("environment", Some(t.environment.as_str())), ("region", t.region.as_deref())];
    match api.get(&["v1", "flags", &t.flag, "state"], &query).await? {
        (200, body) => Ok(body),
        (status, body) => Err(failure(status, &body)),
    }
}

/// Reads the flag system with the configuration's actuator: what flagguard holds on the flag
/// is unknown without the daemon (`null`).
async fn from_config(path: &std::path::Path, t: &FlagTarget) -> Result<Value, String> {
    let systems = FlagSystems::from_config(path)?;
    let view = systems.read(t.actuator.as_deref(), &t.flag, &t.environment, t.region.as_deref()).await?;
    serde_json::to_value(view).map_err(|e| e.to_string())
}

/// The configuration's actuators, for reads without a daemon (`flags get --config`, `drift
/// --config`).
pub struct FlagSystems {
    actuators: std::collections::BTreeMap<String, std::sync::Arc<dyn crate::act::Actuator>>,
    source: String,
}

impl FlagSystems {
    pub fn from_config(path: &std::path::Path) -> Result<FlagSystems, String> {
        let config = crate::config::Config::load(Some(path)).map_err(|e| format!("{}: {e}", path.display()))?;
        let client = crate::app::http_client(config.file.act.timeout, config.file.act.ca_file.as_deref()).map_err(|e| e.to_string())?;
        let mut actuators = std::collections::BTreeMap::new();
        for (name, settings) in &config.file.actuators {
            actuators.insert(name.clone(), settings.build(name, &client).map_err(|e| format!("actuator {name}: {e}"))?);
        }
        Ok(FlagSystems { actuators, source: path.display().to_string() })
    }

    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.actuators.keys().cloned().collect()
    }

    /// Reads one target with the named actuator (default: the only one).
    pub async fn read(&self, actuator: Option<&str>, flag: &str, environment: &str, region: Option<&str>) -> Result<crate::act::read::FlagView, String> {
        let name = match (actuator, self.actuators.keys().collect::<Vec<_>>().as_slice()) {
            (Some(name), _) => name.to_owned(),
            (None, [one]) => (*one).clone(),
            (None, []) => return Err(format!("{}: no actuator is configured", self.source)),
            (None, many) => return Err(format!("several actuators are configured ({many:?}): say which with --actuator")),
        };
        let actuator = self.actuators.get(&name).ok_or_else(|| format!("actuator {name:?} is not configured in {}", self.source))?;
        Ok(crate::act::read::read(actuator.as_ref(), &name, flag, Some(environment), region).await.0)
    }
}

/// The human-readable state.
pub fn render_state(a: &Value) -> String {
    let fs = &a["flag_system"];
    let mut out = format!(
        "{} in {}{} via {}\n",
        a["flag"].as_str().unwrap_or("?"),
        a["environment"].as_str().unwrap_or("(default environment)"),
        a["region"].as_str().map(|r| format!(" region {r}")).unwrap_or_default(),
        a["actuator"].as_str().unwrap_or("?")
    );
    if fs["readable"] != true {
        out.push_str(&format!("  flag system: cannot be read: {}\n", fs["error"].as_str().unwrap_or("it has no read-back")));
    } else {
        let enabled = match fs["enabled"].as_bool() {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        };
        out.push_str(&format!("  enabled: {enabled}\n"));
        out.push_str(&format!("  rollout: {}\n", fs["rollout"].as_f64().map_or("-".into(), |p| format!("{p} %"))));
        let variants: Vec<String> =
            fs["variants"].as_array().into_iter().flatten().map(|v| format!("{} {} %", v["name"].as_str().unwrap_or("?"), v["percent"])).collect();
        if !variants.is_empty() {
            out.push_str(&format!("  variants: {}\n", variants.join(", ")));
        }
    }
    match a["killed_by_flagguard"].as_array() {
        None => out.push_str("  killed by flagguard: unknown (read without the daemon)\n"),
        Some(kills) if kills.is_empty() => out.push_str("  killed by flagguard: no\n"),
        Some(kills) => {
            for k in kills {
                out.push_str(&format!(
                    "  killed by flagguard: action {} ({}, rule {})\n",
                    k["action"],
                    k["state"].as_str().unwrap_or("?"),
                    k["rule"].as_str().unwrap_or("-")
                ));
            }
        }
    }
    if let Some(pending) = a["pending"].as_array() {
        for p in pending {
            out.push_str(&format!("  pending: action {} ({})\n", p["action"], p["kind"].as_str().unwrap_or("?")));
        }
    }
    out
}

/// What `flags set-rollout` asks for.
#[derive(Clone, Debug, Default)]
pub struct SetRollout {
    pub target: FlagTarget,
    pub change: Change,
    pub idempotency_key: Option<String>,
    pub reason: Option<String>,
    /// How long to wait for the outcome.
    pub wait: Duration,
}

/// What the rollout becomes.
#[derive(Clone, Debug)]
pub enum Change {
    /// `--percent P [--expect Q]`.
    To { percent: f64, expect: Option<f64> },
    /// `--by N`: from the percentage read now (as `--expect`) to it plus N, within 0–100.
    By(f64),
}

impl Default for Change {
    fn default() -> Change {
        Change::To { percent: 0.0, expect: None }
    }
}

/// `flags set-rollout`: queues the change and waits for its outcome; returns the exit code
/// ([`DONE`], [`REFUSED`], [`UNDECIDED`], [`ERROR`]).
pub async fn set_rollout(args: &SetRollout, server: &str, token: Option<&str>, json: bool) -> i32 {
    let (code, answer) = match change(args, server, token).await {
        Ok(done) => done,
        Err(e) => (ERROR, json!({ "outcome": "error", "error": e })),
    };
    if json {
        println!("{answer}");
    } else if code == DONE {
        println!("{}", answer["message"].as_str().unwrap_or(""));
    } else {
        eprintln!("flags set-rollout: {}", answer["message"].as_str().or(answer["error"].as_str()).unwrap_or(""));
    }
    code
}

/// Queues the change and waits for its outcome: the exit code and the answer (`outcome`,
/// `action`, `message`).
pub async fn change(args: &SetRollout, server: &str, token: Option<&str>) -> Result<(i32, Value), String> {
    let api = Api::new(server, token)?;
    let t = &args.target;
    let (percent, expect) = match args.change {
        Change::To { percent, expect } => (percent, expect),
        Change::By(step) => {
            let state = from_daemon(server, token, t).await?;
            let Some(now) = state["flag_system"]["rollout"].as_f64() else {
                return Err(format!("--by needs the rollout now, and the flag system reports none: {}", state["flag_system"]));
            };
            let next = (now + step).clamp(0.0, 100.0);
            if next == now && args.idempotency_key.is_none() {
                let message = format!("{} in {}: already at {now} %, nothing to change", t.flag, t.environment);
                return Ok((DONE, json!({ "outcome": "unchanged", "message": message })));
            }
            (next, Some(now))
        }
    };
    let reason = args.reason.clone().unwrap_or_else(|| match expect {
        Some(from) => format!("flags set-rollout {from} → {percent} %"),
        None => format!("flags set-rollout → {percent} %"),
    });
    let body = json!({
        "actuator": t.actuator,
        "environment": t.environment,
        "region": t.region,
        "percent": percent,
        "expect": expect,
        "idempotency_key": args.idempotency_key,
        "reason": reason,
    });
    let (status, answer) = api.post(&["v1", "flags", &t.flag, "rollout"], &body).await?;
    if matches!(status, 200 | 202)
        && let Some(proposal) = answer["proposal"].as_i64()
    {
        let message = answer["message"].as_str().unwrap_or("awaits approval").to_owned();
        return Ok((UNDECIDED, json!({ "outcome": "pending_approval", "proposal": proposal, "message": message })));
    }
    let id = match status {
        200 | 202 => answer["action"].as_i64().ok_or_else(|| format!("the answer names no action: {answer}"))?,
        409 => {
            let message = format!("refused: {}", answer["error"].as_str().unwrap_or(""));
            return Ok((REFUSED, json!({ "outcome": "refused", "message": message })));
        }
        _ => return Err(failure(status, &answer)),
    };
    let deadline = Instant::now() + args.wait;
    loop {
        let (status, action) = api.get(&["v1", "actions", &id.to_string()], &[]).await?;
        if status != 200 {
            return Err(failure(status, &action));
        }
        let state = action["state"].as_str().unwrap_or("").to_owned();
        let error = action["last_error"].as_str().unwrap_or("").to_owned();
        let at = format!("{} in {}", t.flag, t.environment);
        let outcome = match state.as_str() {
            "confirmed" | "sent" => {
                let set = action["request"]["percent"].as_f64().unwrap_or(percent);
                Some((DONE, format!("{at}: rollout {set} % (action {id}, {state})")))
            }
            "refused" => Some((REFUSED, format!("refused (action {id}): {error}"))),
            "superseded" => Some((REFUSED, format!("refused (action {id}): a kill of the flag overtook the change"))),
            "pending" => None,
            _ => Some((ERROR, format!("the change failed (action {id}, {state}): {error}"))),
        };
        if let Some((code, message)) = outcome {
            let existing = answer["status"] == "existing";
            return Ok((code, json!({ "outcome": state, "action": id, "existing": existing, "message": message, "error": error })));
        }
        if Instant::now() >= deadline {
            let message = format!("action {id} is still pending after {:?}; it may yet be carried out (flagguard flags get shows it)", args.wait);
            return Ok((UNDECIDED, json!({ "outcome": "pending", "action": id, "message": message })));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `flags report`: the compliance report (`GET /v1/compliance`); exit 0 nothing found, 1
/// findings, 3 error — a scheduled job can fail on it.
pub async fn report(server: &str, token: Option<&str>, json: bool) -> i32 {
    let answer = async {
        match Api::new(server, token)?.get(&["v1", "compliance"], &[]).await? {
            (200, body) => Ok(body),
            (status, body) => Err(failure(status, &body)),
        }
    };
    let body = match answer.await {
        Ok(body) => body,
        Err(e) => {
            eprintln!("flags report: {e}");
            return ERROR;
        }
    };
    let findings = body["findings"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{body}");
    } else if findings.is_empty() {
        println!(
            "no compliance findings{}",
            if body["manifests_watched"] == true { "" } else { " (no flag manifests are watched: owners, expiry and drift are not checked)" }
        );
    } else {
        println!("{:<18} {:<32} {:<12} detail", "problem", "flag", "environment");
        for f in &findings {
            let s = |k: &str| f[k].as_str().unwrap_or("-").to_owned();
            println!("{:<18} {:<32} {:<12} {}", s("problem"), s("flag"), s("environment"), s("detail"));
        }
    }
    if findings.is_empty() { DONE } else { REFUSED }
}

//! The rule-file loader: reads a rules directory and validates each file into one [`RuleSet`] —
//! rules (`rules`), alert mappings (`alerts::mapping`) and rollout plans (`rules::plan`) — with
//! every error named by file, line and field. It sits above the modules whose parts it builds,
//! so none of them imports another through it.
//!
//! A rule set is all-or-nothing: an invalid reload keeps the previous set and says why.

pub mod shape;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use crate::alerts::mapping::{AlertMapping, AlertMappingShape};
use crate::model::Mode;
use crate::rules::plan::{After, Check, CheckKind, Plan};
use crate::rules::{Report, Rule, RuleError, RuleSet, locate, validate};
use shape::{RolloutShape, RuleFileShape};

/// Loads every `*.yaml` / `*.yml` in `dir` (sorted), validating names unique across files and
/// `enforce` actions against the configured actuators. Returns every error found.
pub fn load_dir(dir: &Path, actuators: &BTreeSet<String>) -> Result<RuleSet, Vec<RuleError>> {
    let mut paths = match std::fs::read_dir(dir) {
        Ok(entries) => {
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml")).collect::<Vec<_>>()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(vec![RuleError { file: dir.into(), line: None, field: String::new(), message: e.to_string() }]),
    };
    paths.sort();
    load_files(&paths, actuators)
}

/// Loads the given files as one rule set.
pub fn load_files(paths: &[PathBuf], actuators: &BTreeSet<String>) -> Result<RuleSet, Vec<RuleError>> {
    let mut set = RuleSet::default();
    let mut errors = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut alert_names: HashSet<String> = HashSet::new();
    for path in paths {
        let source = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) => {
                errors.push(RuleError { file: path.clone(), line: None, field: String::new(), message: e.to_string() });
                continue;
            }
        };
        match parse(path, &source, actuators) {
            Ok(Parsed { rules, alerts, rollouts }) => {
                for plan in rollouts {
                    if set.rollouts.iter().any(|p| p.name == plan.name) {
                        errors.push(RuleError {
                            file: path.clone(),
                            line: plan.line,
                            field: "rollouts.name".into(),
                            message: format!("rollout name {:?} is used twice", plan.name),
                        });
                    }
                    set.rollouts.push(plan);
                }
                for rule in rules {
                    if !names.insert(rule.name.clone()) {
                        errors.push(RuleError {
                            file: path.clone(),
                            line: rule.line,
                            field: "name".into(),
                            message: format!("rule name {:?} is used twice", rule.name),
                        });
                    }
                    set.rules.push(rule);
                }
                for mapping in alerts {
                    if !alert_names.insert(mapping.name.clone()) {
                        errors.push(RuleError {
                            file: path.clone(),
                            line: None,
                            field: "alerts.name".into(),
                            message: format!("alert mapping name {:?} is used twice", mapping.name),
                        });
                    }
                    set.alerts.push(mapping);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
        set.files.push(path.clone());
    }
    errors.extend(pipelines(&set.rollouts));
    if errors.is_empty() { Ok(set) } else { Err(errors) }
}

/// Environment pipelines: every `after` names a plan of the set, and no chain loops.
fn pipelines(plans: &[Plan]) -> Vec<RuleError> {
    let mut errors = Vec::new();
    for plan in plans {
        let Some(after) = &plan.after else { continue };
        let error = |message: String| RuleError { file: plan.file.clone(), line: plan.line, field: "rollouts.after.plan".into(), message };
        if !plans.iter().any(|p| p.name == after.plan) {
            errors.push(error(format!("plan {} waits for plan {:?}, which no rule file declares", plan.name, after.plan)));
            continue;
        }
        let mut seen = vec![plan.name.as_str()];
        let mut next = Some(after.plan.as_str());
        while let Some(name) = next {
            if seen.contains(&name) {
                errors.push(error(format!("plans wait for each other in a loop: {} → {name}", seen.join(" → "))));
                break;
            }
            seen.push(name);
            next = plans.iter().find(|p| p.name == name).and_then(|p| p.after.as_ref()).map(|a| a.plan.as_str());
        }
    }
    errors
}

/// One file's rules, alert mappings and rollout plans.
pub struct Parsed {
    pub rules: Vec<Rule>,
    pub alerts: Vec<AlertMapping>,
    pub rollouts: Vec<Plan>,
}

/// Parses and validates one file's text.
pub fn parse(path: &Path, source: &str, actuators: &BTreeSet<String>) -> Result<Parsed, Vec<RuleError>> {
    let shape: RuleFileShape = match serde_yaml::from_str(source) {
        Ok(s) => s,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            let message = e.to_string();
            // serde_yaml appends " at line N column M"; the line is already in front.
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            return Err(vec![RuleError { file: path.into(), line, field: String::new(), message }]);
        }
    };
    let lines = locate::lines(source);
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    for (i, shape) in shape.rules.into_iter().enumerate() {
        let mut report = Report { file: path, lines: &lines, prefix: format!("rules[{i}]"), errors: &mut errors, failed: false };
        if let Some(rule) = validate(shape, &mut report, actuators) {
            rules.push(Rule { file: path.into(), line: locate::line_of(&lines, &format!("rules[{i}]")), ..rule });
        }
    }
    let mut alerts = Vec::new();
    for (i, shape) in shape.alerts.into_iter().enumerate() {
        let mut report = Report { file: path, lines: &lines, prefix: format!("alerts[{i}]"), errors: &mut errors, failed: false };
        if let Some(mapping) = validate_alert(shape, &mut report, actuators) {
            alerts.push(mapping);
        }
    }
    let mut rollouts = Vec::new();
    for (i, shape) in shape.rollouts.into_iter().enumerate() {
        let mut report = Report { file: path, lines: &lines, prefix: format!("rollouts[{i}]"), errors: &mut errors, failed: false };
        if let Some(plan) = validate_rollout(shape, &mut report, actuators) {
            rollouts.push(Plan { file: path.into(), line: locate::line_of(&lines, &format!("rollouts[{i}]")), ..plan });
        }
    }
    if errors.is_empty() { Ok(Parsed { rules, alerts, rollouts }) } else { Err(errors) }
}

fn validate_rollout(shape: RolloutShape, r: &mut Report<'_>, actuators: &BTreeSet<String>) -> Option<Plan> {
    if shape.name.trim().is_empty() || shape.name.contains('/') {
        r.fail("name", "must be non-empty, without '/'".into());
    }
    if shape.flag.contains(['*', '?', '[']) {
        r.fail("flag", "a plan changes one flag: no globs".into());
    }
    if !actuators.contains(&shape.actuator) {
        r.fail("actuator", format!("{:?} is not a configured actuator", shape.actuator));
    }
    if shape.steps.is_empty() {
        r.fail("steps", "needs at least one percentage".into());
    }
    if shape.steps.iter().any(|p| !(*p > 0.0 && *p <= 100.0)) {
        r.fail("steps", format!("percentages must be in (0, 100], got {:?}", shape.steps));
    } else if shape.steps.windows(2).any(|w| w[0] >= w[1]) {
        r.fail("steps", format!("must be strictly increasing, got {:?}", shape.steps));
    }
    if shape.min_samples == 0 {
        r.fail("min_samples", "must be at least 1".into());
    }
    if shape.after.as_ref().is_some_and(|a| a.plan == shape.name) {
        r.fail("after.plan", "a plan cannot wait for itself".into());
    }
    let mut checks = Vec::new();
    for (i, c) in shape.checks.into_iter().enumerate() {
        let kind = match (c.http, c.command) {
            (Some(http), None) => {
                if reqwest::Url::parse(&http.url).is_err() {
                    r.fail(&format!("checks[{i}].http.url"), format!("{:?} is not a URL", http.url));
                }
                if !(100..600).contains(&http.status) {
                    r.fail(&format!("checks[{i}].http.status"), format!("{} is not an HTTP status", http.status));
                }
                CheckKind::Http { url: http.url, status: http.status }
            }
            (None, Some(argv)) if !argv.is_empty() => CheckKind::Command { argv },
            (None, Some(_)) => {
                r.fail(&format!("checks[{i}].command"), "name the program to run".into());
                continue;
            }
            _ => {
                r.fail(&format!("checks[{i}]"), "give exactly one of http or command".into());
                continue;
            }
        };
        if c.timeout.is_zero() || c.timeout > crate::rules::plan::MAX_CHECK_TIMEOUT {
            r.fail(&format!("checks[{i}].timeout"), format!("must be in (0s, {}s]", crate::rules::plan::MAX_CHECK_TIMEOUT.as_secs()));
        }
        checks.push(Check { kind, timeout: c.timeout });
    }
    let treatment = shape.treatment.into_vec();
    if r.failed {
        return None;
    }
    Some(Plan {
        name: shape.name,
        file: PathBuf::new(),
        line: None,
        flag: shape.flag,
        actuator: shape.actuator,
        environment: shape.environment,
        regions: shape.regions,
        treatment,
        control: shape.control,
        steps: shape.steps,
        min_healthy: shape.min_healthy,
        min_samples: shape.min_samples,
        after: shape.after.map(|a| After { plan: a.plan, healthy_for: a.healthy_for }),
        checks,
    })
}

fn validate_alert(shape: AlertMappingShape, r: &mut Report<'_>, actuators: &BTreeSet<String>) -> Option<AlertMapping> {
    if shape.name.trim().is_empty() {
        r.fail("name", "must not be empty".into());
    }
    if shape.matches.is_empty() {
        r.fail("match", "needs at least one label to match (an empty match would act on every alert)".into());
    }
    if shape.kill.flag.trim().is_empty() || shape.kill.flag == "$" {
        r.fail("kill.flag", "must name a flag or a $label".into());
    }
    if shape.mode == Mode::Enforce && !actuators.contains(&shape.kill.via) {
        r.fail("kill.via", format!("enforce mapping names actuator {:?}, which is not configured", shape.kill.via));
    }
    (!r.failed).then_some(AlertMapping { name: shape.name, source: shape.source, matches: shape.matches, kill: shape.kill, mode: shape.mode })
}

#[cfg(test)]
mod tests;

//! Rules: YAML files written by SREs ([`file`] is their shape) validated into [`Rule`]s with
//! errors that name file, line and field; [`evaluate`] judges one slice (pure); [`engine`]
//! keeps per-slice state (`for`, cooldown, blast radius, staleness) and decides actions.
//!
//! A rule set is all-or-nothing: an invalid reload keeps the previous set and says why.

pub mod condition;
pub mod engine;
pub mod evaluate;
pub mod file;
pub mod gate;
pub mod inputs;
pub mod locate;
pub mod report;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobMatcher};

use crate::alerts::mapping::{AlertMapping, AlertMappingShape};
use crate::model::{Dimension, Dims};
pub use condition::Condition;
pub use file::Mode;
use file::{RuleFileShape, RuleShape};
pub use report::{Report, RuleError};

/// `where`: only series whose judged slice has these values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub service: Option<String>,
    pub environment: Option<String>,
    pub region: Option<String>,
}

impl Filter {
    pub fn matches(&self, dims: &Dims) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.service, &dims.service) && ok(&self.environment, &dims.environment) && ok(&self.region, &dims.region)
    }

    pub fn get(&self, dim: Dimension) -> Option<&str> {
        match dim {
            Dimension::Service => self.service.as_deref(),
            Dimension::Environment => self.environment.as_deref(),
            Dimension::Region => self.region.as_deref(),
        }
    }
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub file: PathBuf,
    pub line: Option<usize>,
    pub flag_pattern: String,
    pub flag: GlobMatcher,
    pub treatment: Vec<String>,
    pub control: Option<String>,
    pub filter: Filter,
    pub per: Vec<Dimension>,
    pub when: Vec<Condition>,
    pub window: Duration,
    pub min_samples: u64,
    pub for_: Duration,
    /// Actuator name; `None` = observe only.
    pub kill: Option<String>,
    /// `action.on_unscoped: widen`.
    pub widen: bool,
    /// `action.auto_restore`.
    pub auto_restore: Option<Duration>,
    pub cooldown: Duration,
    pub mode: Mode,
    /// The treatment's expected share of users, for the sample-ratio-mismatch check.
    pub expected_share: Option<f64>,
}

/// All loaded rules.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// Alert mappings from the `alerts:` sections.
    pub alerts: Vec<crate::alerts::mapping::AlertMapping>,
    /// Progression plans from the `rollouts:` sections.
    pub rollouts: Vec<crate::rollout::Plan>,
    /// The files they came from.
    pub files: Vec<PathBuf>,
}

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
    if errors.is_empty() { Ok(set) } else { Err(errors) }
}

/// One file's rules, alert mappings and rollout plans.
pub struct Parsed {
    pub rules: Vec<Rule>,
    pub alerts: Vec<AlertMapping>,
    pub rollouts: Vec<crate::rollout::Plan>,
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
            rollouts.push(crate::rollout::Plan { file: path.into(), line: locate::line_of(&lines, &format!("rollouts[{i}]")), ..plan });
        }
    }
    if errors.is_empty() { Ok(Parsed { rules, alerts, rollouts }) } else { Err(errors) }
}

fn validate_rollout(shape: file::RolloutShape, r: &mut Report<'_>, actuators: &BTreeSet<String>) -> Option<crate::rollout::Plan> {
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
    let treatment = shape.treatment.into_vec();
    if r.failed {
        return None;
    }
    Some(crate::rollout::Plan {
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

fn validate(shape: RuleShape, r: &mut Report<'_>, actuators: &BTreeSet<String>) -> Option<Rule> {
    if shape.name.trim().is_empty() || shape.name.contains('/') {
        // A rule's name starts its slices' cooldown keys (`rule/flag/dim=value`).
        r.fail("name", "must be non-empty, without '/'".into());
    }
    let flag = match Glob::new(&shape.flag) {
        Ok(g) if !shape.flag.is_empty() => Some(g.compile_matcher()),
        Ok(_) => {
            r.fail("flag", "must not be empty".into());
            None
        }
        Err(e) => {
            r.fail("flag", format!("invalid glob: {e}"));
            None
        }
    };
    let treatment = shape.treatment.into_vec();
    if treatment.is_empty() || treatment.iter().any(|t| t.is_empty()) {
        r.fail("treatment", "must name at least one variant".into());
    }
    if let Some(control) = &shape.control
        && treatment.contains(control)
    {
        r.fail("control", format!("variant {control:?} cannot be both treatment and control"));
    }
    let mut seen = HashSet::new();
    for (i, dim) in shape.per.iter().enumerate() {
        if !seen.insert(*dim) {
            r.fail(&format!("per[{i}]"), "dimension listed twice".into());
        }
    }
    if shape.when.is_empty() {
        r.fail("when", "needs at least one condition".into());
    }
    let when: Vec<Condition> =
        shape.when.iter().enumerate().filter_map(|(i, condition)| condition.validate(&format!("when[{i}]"), shape.control.is_some(), r)).collect();
    if shape.window < Duration::from_secs(10) || shape.window > Duration::from_secs(6 * 3600) {
        r.fail("window", format!("must be between 10s and 6h, got {}", humantime::format_duration(shape.window)));
    }
    if shape.min_samples == 0 {
        r.fail("min_samples", "must be at least 1".into());
    }
    if let Some(share) = shape.expected_share
        && !(share > 0.0 && share < 1.0)
    {
        r.fail("expected_share", format!("must be in (0, 1), got {share}"));
    }
    let widen = shape.action.as_ref().is_some_and(|a| a.on_unscoped == file::OnUnscoped::Widen);
    let auto_restore = shape.action.as_ref().and_then(|a| a.auto_restore);
    if auto_restore.is_some_and(|d| d < Duration::from_secs(1)) {
        r.fail("action.auto_restore", "must be at least 1s".into());
    }
    let kill = shape.action.map(|a| a.kill);
    if let Some(name) = &kill {
        if shape.mode == Mode::Enforce && !actuators.contains(name) {
            let known = if actuators.is_empty() {
                "none is configured".to_owned()
            } else {
                format!("configured: {}", actuators.iter().cloned().collect::<Vec<_>>().join(", "))
            };
            r.fail("action.kill", format!("enforce rule names actuator {name:?}, which is not configured ({known})"));
        }
    } else if shape.mode == Mode::Enforce {
        r.fail("action", "an enforce rule needs an action (or use mode: dry_run)".into());
    }
    let filter = Filter { service: shape.filter.service, environment: shape.filter.environment, region: shape.filter.region };
    if r.failed {
        return None;
    }
    Some(Rule {
        name: shape.name,
        file: PathBuf::new(),
        line: None,
        flag_pattern: shape.flag,
        flag: flag?,
        treatment,
        control: shape.control,
        filter,
        per: shape.per,
        when,
        window: shape.window,
        min_samples: shape.min_samples,
        for_: shape.for_,
        kill,
        widen,
        auto_restore,
        cooldown: shape.cooldown,
        mode: shape.mode,
        expected_share: shape.expected_share,
    })
}

#[cfg(test)]
mod tests;

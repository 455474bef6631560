//! Rules: a rule's YAML shape (`file`) validated into a [`Rule`] ([`validate`]) with errors
//! that name file, line and field ([`report`]); its conditions, one file per kind
//! ([`condition`]); [`evaluate`] judges one slice (pure); [`engine`] keeps per-slice state
//! (`for`, cooldown, blast radius, staleness), decides actions and publishes typed verdicts
//! ([`published`]). Reading whole rule files into a [`RuleSet`] is the loader's (`rulefile`).
//!
//! A rule set is all-or-nothing: an invalid reload keeps the previous set and says why.

pub mod condition;
pub mod engine;
pub mod evaluate;
pub mod file;
pub mod inputs;
pub mod locate;
pub mod plan;
pub mod published;
pub mod report;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use globset::{Glob, GlobMatcher};

use crate::alerts::mapping::AlertMapping;
pub use crate::model::Mode;
use crate::model::{Dimension, Dims};
pub use condition::Condition;
use file::RuleShape;
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
    pub alerts: Vec<AlertMapping>,
    /// Progression plans from the `rollouts:` sections.
    pub rollouts: Vec<plan::Plan>,
    /// The files they came from.
    pub files: Vec<PathBuf>,
}

/// Validates one rule's shape into a [`Rule`], reporting every problem; `None` when it failed.
pub fn validate(shape: RuleShape, r: &mut Report<'_>, actuators: &BTreeSet<String>) -> Option<Rule> {
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

/// A dry-run rule on flag `f` (treatment `on`, control `off`, 60 s window, 100 samples) with
/// these conditions: the unit tests' fixture.
#[cfg(test)]
pub(crate) fn test_rule(when: Vec<Condition>) -> Rule {
    Rule {
        name: "r".into(),
        file: "r.yaml".into(),
        line: None,
        flag_pattern: "f".into(),
        flag: Glob::new("f").expect("a valid glob").compile_matcher(),
        treatment: vec!["on".into()],
        control: Some("off".into()),
        filter: Filter::default(),
        per: vec![],
        when,
        window: Duration::from_secs(60),
        min_samples: 100,
        for_: Duration::ZERO,
        kill: None,
        widen: false,
        auto_restore: None,
        cooldown: Duration::from_secs(60),
        mode: Mode::DryRun,
        expected_share: None,
    }
}

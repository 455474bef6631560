//! From alerts to actions: the `alerts:` section of rule files, and the direct form for
//! sources allowed to name flags in their labels. Pure: no I/O.
//!
//! A mapping's `kill` fields are literals or `$label` references copied from the alert
//! (`flag: $feature_flag`); a referenced label that is missing leaves the alert unmapped.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Alert, Source};
use crate::model::Mode;

/// The serde shape of one `alerts:` entry.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AlertMappingShape {
    pub name: String,
    /// Only alerts from this source (default: any).
    #[serde(default)]
    pub source: Option<Source>,
    /// Labels (and tags, source ids) that must all be equal.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, String>,
    pub kill: KillShape,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KillShape {
    /// Flag key, or `$label`.
    pub flag: String,
    /// Actuator name.
    pub via: String,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub cohort: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// The variant the alert is about (what the drain check counts), or `$label`; else the
    /// alert's `variant` label. Without one the kill's drain is not verified.
    #[serde(default)]
    pub variant: Option<String>,
}

/// A validated mapping.
#[derive(Debug, Clone)]
pub struct AlertMapping {
    pub name: String,
    pub source: Option<Source>,
    pub matches: BTreeMap<String, String>,
    pub kill: KillShape,
    pub mode: Mode,
}

/// What an alert should do, resolved against its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub mapping: String,
    pub actuator: String,
    pub flag: String,
    pub environment: Option<String>,
    /// (dimension, value): `cohort` and/or `region`.
    pub scope: Vec<(String, String)>,
    /// The treatment variant, when the mapping or the alert names one.
    pub variant: Option<String>,
    pub mode: Mode,
}

/// Why an alert maps to nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Unmapped {
    NoMapping,
    MissingLabel { mapping: String, label: String },
}

fn resolve(value: &str, alert: &Alert, mapping: &str) -> Result<String, Unmapped> {
    match value.strip_prefix('$') {
        Some(label) => {
            alert.labels.get(label).filter(|v| !v.is_empty()).cloned().ok_or_else(|| Unmapped::MissingLabel { mapping: mapping.into(), label: label.into() })
        }
        None => Ok(value.to_owned()),
    }
}

impl AlertMapping {
    pub fn matches(&self, alert: &Alert) -> bool {
        self.source.is_none_or(|s| s == alert.source) && self.matches.iter().all(|(k, v)| alert.labels.get(k) == Some(v))
    }

    fn target(&self, alert: &Alert) -> Result<Target, Unmapped> {
        let opt = |v: &Option<String>| v.as_deref().map(|v| resolve(v, alert, &self.name)).transpose();
        let mut scope = Vec::new();
        if let Some(cohort) = opt(&self.kill.cohort)? {
            scope.push(("cohort".to_owned(), cohort));
        }
        if let Some(region) = opt(&self.kill.region)? {
            scope.push(("region".to_owned(), region));
        }
        Ok(Target {
            mapping: self.name.clone(),
            actuator: self.kill.via.clone(),
            flag: resolve(&self.kill.flag, alert, &self.name)?,
            environment: opt(&self.kill.environment)?,
            scope,
            variant: opt(&self.kill.variant)?.or_else(|| alert.labels.get("variant").filter(|v| !v.is_empty()).cloned()),
            mode: self.mode,
        })
    }
}

/// The direct form: an alert labelled `feature_flag` (+ `flag_environment`, `cohort`,
/// `region`) from a source allowed to name flags.
pub fn direct(actuator: &str, mode: Mode) -> AlertMapping {
    let optional = |label: &str| Some(format!("${label}"));
    AlertMapping {
        name: "direct".into(),
        source: None,
        matches: BTreeMap::new(),
        kill: KillShape {
            flag: "$feature_flag".into(),
            via: actuator.into(),
            environment: optional("flag_environment"),
            cohort: optional("cohort"),
            region: optional("region"),
            variant: None,
        },
        mode,
    }
}

/// Finds the first mapping that matches and resolves its target. Direct mappings leave out
/// optional labels the alert does not carry.
pub fn map(alert: &Alert, mappings: &[AlertMapping], direct_form: Option<&AlertMapping>) -> Result<Target, Unmapped> {
    if let Some(mapping) = mappings.iter().find(|m| m.matches(alert)) {
        return mapping.target(alert);
    }
    if let Some(direct) = direct_form.filter(|_| alert.labels.contains_key("feature_flag")) {
        let mut kill = direct.kill.clone();
        for (field, label) in [(&mut kill.environment, "flag_environment"), (&mut kill.cohort, "cohort"), (&mut kill.region, "region")] {
            if !alert.labels.contains_key(label) {
                *field = None;
            }
        }
        return AlertMapping { kill, ..direct.clone() }.target(alert);
    }
    Err(Unmapped::NoMapping)
}

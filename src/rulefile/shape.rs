//! The on-disk shape of a whole rule file (serde, unknown fields refused): its rules (the rule
//! shape is `rules::file`'s), alert mappings (`alerts::mapping`'s) and rollout plans.

use std::time::Duration;

use serde::Deserialize;

use crate::rules::file::{OneOrMany, RuleShape};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileShape {
    #[serde(default)]
    pub rules: Vec<RuleShape>,
    /// Alert webhooks → actions (see `alerts::mapping`).
    #[serde(default)]
    pub alerts: Vec<crate::alerts::mapping::AlertMappingShape>,
    /// Automated progression plans (see `rollout`).
    #[serde(default)]
    pub rollouts: Vec<RolloutShape>,
}

/// `rollouts[i]`: a progression plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutShape {
    pub name: String,
    /// The flag key (no glob).
    pub flag: String,
    /// The actuator whose set-rollout call moves the plan (and whose kill rolls it back).
    pub actuator: String,
    #[serde(default)]
    pub environment: Option<String>,
    /// Run one independent plan per region (the actuator must express regions).
    #[serde(default)]
    pub regions: Vec<String>,
    pub treatment: OneOrMany,
    #[serde(default)]
    pub control: Option<String>,
    /// Percentages, strictly increasing, ending at most at 100.
    pub steps: Vec<f64>,
    /// How long each step must be healthy before the next. Default `5m`.
    #[serde(default = "default_min_healthy", with = "humantime_serde")]
    pub min_healthy: Duration,
    /// Treatment evaluations needed on each step before the next. Default 100.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
}

fn default_min_healthy() -> Duration {
    Duration::from_secs(300)
}

fn default_min_samples() -> u64 {
    100
}

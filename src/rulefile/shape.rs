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
    /// An environment pipeline: start and advance only while this plan is completed and healthy.
    #[serde(default)]
    pub after: Option<AfterShape>,
    /// External checks every advance needs.
    #[serde(default)]
    pub checks: Vec<CheckShape>,
}

/// `after: { plan: NAME, healthy_for: 30m }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterShape {
    pub plan: String,
    /// Default `0s`: completed and its guards healthy now.
    #[serde(default, with = "humantime_serde")]
    pub healthy_for: Duration,
}

/// `{ http: { url, status } }` or `{ command: [argv…] }`, with an optional `timeout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckShape {
    #[serde(default)]
    pub http: Option<HttpCheckShape>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Default `10s`.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckShape {
    pub url: String,
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_status() -> u16 {
    200
}

fn default_min_healthy() -> Duration {
    Duration::from_secs(300)
}

fn default_min_samples() -> u64 {
    100
}

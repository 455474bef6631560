//! A rule file's validated `rollouts:` entry: a progression plan (steps of rollout percentages,
//! how long each must stay healthy, how many treatment evaluations it needs, the actuator).
//! Plain data; the progression itself is `rollout`'s.

use std::path::PathBuf;
use std::time::Duration;

/// A validated plan from a rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub file: PathBuf,
    pub line: Option<usize>,
    pub flag: String,
    pub actuator: String,
    pub environment: Option<String>,
    /// Independent instances, one per region; empty: one instance for the environment.
    pub regions: Vec<String>,
    pub treatment: Vec<String>,
    pub control: Option<String>,
    /// Rollout percentages, strictly increasing, in (0, 100].
    pub steps: Vec<f64>,
    pub min_healthy: Duration,
    /// Treatment evaluations needed on a step before the next.
    pub min_samples: u64,
    /// An environment pipeline: this plan starts, and advances, only while another plan (its
    /// earlier environment) is completed and healthy.
    pub after: Option<After>,
    /// External checks every advance needs (a synthetic health check, a gate command).
    pub checks: Vec<Check>,
}

/// The plan an environment pipeline's later stage waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct After {
    pub plan: String,
    /// How long that plan must have been completed, with its guards healthy as long.
    pub healthy_for: Duration,
}

/// The longest a check may take (the progression counts a result for 60 s).
pub const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(45);

/// One external check of a plan's advances.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub kind: CheckKind,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// `GET url` must answer `status`.
    Http { url: String, status: u16 },
    /// The command must exit 0 (argv, no shell).
    Command { argv: Vec<String> },
}

impl Check {
    pub fn describe(&self) -> String {
        match &self.kind {
            CheckKind::Http { url, status } => format!("GET {url} → {status}"),
            CheckKind::Command { argv } => format!("command {}", argv.join(" ")),
        }
    }
}

impl Plan {
    /// The instances' regions (`None`: the whole environment).
    pub fn instances(&self) -> Vec<Option<String>> {
        if self.regions.is_empty() { vec![None] } else { self.regions.iter().cloned().map(Some).collect() }
    }

    /// The store key of one instance: `name` or `name/region=eu-west`.
    pub fn key(&self, region: Option<&str>) -> String {
        match region {
            Some(r) => format!("{}/region={r}", self.name),
            None => self.name.clone(),
        }
    }
}

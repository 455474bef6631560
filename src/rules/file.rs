//! The on-disk shape of a rule (serde, unknown fields refused). See the README's rule
//! reference; validation into [`super::Rule`] is in `super`. The whole file's shape (rules,
//! alert mappings, rollouts) is the loader's (`rulefile::shape`).

use std::time::Duration;

use serde::Deserialize;

pub use super::condition::ConditionShape;
use crate::model::Dimension;
pub use crate::model::Mode;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleShape {
    pub name: String,
    /// Flag key or glob (`checkout-*`); a `set/key` form matches namespaced flags.
    pub flag: String,
    /// Variant(s) guarded.
    pub treatment: OneOrMany,
    /// The variant compared against (and served after a kill).
    #[serde(default)]
    pub control: Option<String>,
    #[serde(default, rename = "where")]
    pub filter: WhereShape,
    #[serde(default)]
    pub per: Vec<Dimension>,
    pub when: Vec<ConditionShape>,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    #[serde(default)]
    pub action: Option<ActionShape>,
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    #[serde(default)]
    pub mode: Mode,
    /// The treatment's expected share of users (e.g. 0.05 for a 5 % rollout): enables the
    /// sample-ratio-mismatch check on distinct `feature_flag.context.id`s (reported, never a kill).
    #[serde(default)]
    pub expected_share: Option<f64>,
}

fn default_min_samples() -> u64 {
    100
}

fn default_cooldown() -> Duration {
    Duration::from_secs(15 * 60)
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WhereShape {
    pub service: Option<String>,
    pub environment: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionShape {
    /// Name of the actuator (`[actuators.NAME]`) that kills the flag.
    pub kill: String,
    /// A slice (`per: [region]`) the flag system cannot express: `escalate` (default) or
    /// `widen` (kill the flag in the whole environment).
    #[serde(default)]
    pub on_unscoped: OnUnscoped,
    /// Restore the flag this long after its kill drained (default: never; restore is manual).
    #[serde(default, with = "humantime_serde")]
    pub auto_restore: Option<Duration>,
}

/// What to do with a slice the flag system cannot express.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnUnscoped {
    #[default]
    Escalate,
    Widen,
}

//! The flag systems flagguard can act on, as configured (`[actuators.NAME]`): one enum variant
//! per provider. Each provider's config struct, its validation and its construction live in
//! the provider's own file; this enum only delegates. A new provider is its own file, one
//! variant here and one arm in each `match` below.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Actuator;
use super::flagd::{FlagdConfig, FlagdFile};
use super::flagsmith::{Flagsmith, FlagsmithConfig};
use super::launchdarkly::{LaunchDarkly, LaunchDarklyConfig};
use super::unleash::{Unleash, UnleashConfig};
use super::verify::VerifyConfig;
use super::webhook::{Webhook, WebhookConfig};

/// `[actuators.NAME]`: one flag system.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActuatorConfig {
    /// Any HTTP API: method, URL and JSON body templates.
    Webhook(WebhookConfig),
    /// A flagd flag-definition file, rewritten atomically.
    Flagd(FlagdConfig),
    /// Unleash's admin API.
    Unleash(UnleashConfig),
    /// LaunchDarkly's REST API v2 (semantic patch).
    Launchdarkly(LaunchDarklyConfig),
    /// Flagsmith's Admin API.
    Flagsmith(FlagsmithConfig),
}

impl ActuatorConfig {
    /// How a kill is verified and escalated.
    pub fn verify(&self) -> &VerifyConfig {
        match self {
            ActuatorConfig::Webhook(c) => &c.verify,
            ActuatorConfig::Flagd(c) => &c.verify,
            ActuatorConfig::Unleash(c) => &c.verify,
            ActuatorConfig::Launchdarkly(c) => &c.verify,
            ActuatorConfig::Flagsmith(c) => &c.verify,
        }
    }

    /// The secret-bearing fields, for redaction and the "only from the environment" check.
    pub fn token_mut(&mut self) -> Option<&mut String> {
        match self {
            ActuatorConfig::Unleash(c) => Some(&mut c.token),
            ActuatorConfig::Launchdarkly(c) => Some(&mut c.token),
            ActuatorConfig::Flagsmith(c) => Some(&mut c.token),
            ActuatorConfig::Webhook(_) | ActuatorConfig::Flagd(_) => None,
        }
    }

    /// Every problem of the provider's own settings, as `field.key: message` (`field` is
    /// `actuators.NAME`); the verify settings are checked by the caller for every provider.
    pub fn validate(&self, field: &str, errors: &mut Vec<String>) {
        match self {
            ActuatorConfig::Webhook(c) => c.validate(field, errors),
            ActuatorConfig::Flagd(c) => c.validate(field, errors),
            ActuatorConfig::Unleash(c) => c.validate(field, errors),
            ActuatorConfig::Launchdarkly(c) => c.validate(field, errors),
            ActuatorConfig::Flagsmith(c) => c.validate(field, errors),
        }
    }

    /// The actuator, its secrets read from the environment; why not when it cannot be built.
    pub fn build(&self, name: &str, client: &reqwest::Client) -> Result<Arc<dyn Actuator>, String> {
        Ok(match self {
            ActuatorConfig::Webhook(c) => Arc::new(Webhook::new(name, c, client.clone())?),
            ActuatorConfig::Flagd(c) => Arc::new(FlagdFile::new(c)),
            ActuatorConfig::Unleash(c) => Arc::new(Unleash::new(c, client.clone())?),
            ActuatorConfig::Launchdarkly(c) => Arc::new(LaunchDarkly::new(c, client.clone())?),
            ActuatorConfig::Flagsmith(c) => Arc::new(Flagsmith::new(c, client.clone())?),
        })
    }
}

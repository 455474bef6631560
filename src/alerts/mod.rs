//! Alert webhooks from APM and alerting tools: one parser per source ([`sources`]) into one
//! normalised [`Alert`], authentication per route ([`auth`]: bearer, basic, HMAC signatures
//! over the raw body with a replay window), and the mapping from alerts to kill actions
//! ([`mapping`], the `alerts:` section of rule files).
//!
//! Invariants: signatures are verified on the raw bytes before any parsing, in constant time;
//! alerts are handled one by one (never by a group's status); a resolved alert never restores
//! a flag; every delivery is audited with the payload's digest.

pub mod auth;
pub mod mapping;
pub mod sources;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The sources flagguard accepts, one route each: `POST /v1/alerts/{source}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Alertmanager,
    Grafana,
    Datadog,
    Newrelic,
    Dynatrace,
    Pagerduty,
    Generic,
}

impl Source {
    pub const ALL: [Source; 7] =
        [Source::Alertmanager, Source::Grafana, Source::Datadog, Source::Newrelic, Source::Dynatrace, Source::Pagerduty, Source::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Source::Alertmanager => "alertmanager",
            Source::Grafana => "grafana",
            Source::Datadog => "datadog",
            Source::Newrelic => "newrelic",
            Source::Dynatrace => "dynatrace",
            Source::Pagerduty => "pagerduty",
            Source::Generic => "generic",
        }
    }

    pub fn parse(name: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the source signs its webhooks (HMAC secrets apply; see `auth`).
    pub fn signs(self) -> bool {
        matches!(self, Source::Grafana | Source::Pagerduty | Source::Generic)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether an alert is firing. Only firing alerts act; resolved ones are recorded, never
/// restore anything; other transitions (acknowledged, warning, no data) are recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
    Other(String),
}

impl AlertStatus {
    /// The status as a metric label: firing, resolved or other (a sender's own words would make
    /// the label set unbounded).
    pub fn metric_label(&self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
            AlertStatus::Other(_) => "other",
        }
    }

    pub fn label(&self) -> &str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
            AlertStatus::Other(s) => s,
        }
    }
}

/// One alert, whatever its source.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub source: Source,
    /// The source's identity of the alert or delivery (fingerprint, cycle key, issue id, …).
    pub dedup_key: String,
    pub status: AlertStatus,
    /// Labels, parsed tags and source ids (`monitor_id`, `incident_key`, `service_id`, …).
    pub labels: BTreeMap<String, String>,
    pub severity: Option<String>,
    pub summary: Option<String>,
}

/// Why a webhook delivery was refused. Mapped to a response once, in `api::alerts`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AlertError {
    /// Missing or wrong credentials or signature: 401, nothing acted on.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The body is not the source's format: 400.
    #[error("malformed {origin} payload: {message}")]
    Malformed { origin: Source, message: String },
}

/// Parses `key:value` tag lists (`"a:b, c:d:e"`): comma-separated, split on the first `:`,
/// trimmed; a tag without `:` becomes `tag → ""`.
pub fn parse_tags(tags: &str, into: &mut BTreeMap<String, String>) {
    for tag in tags.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match tag.split_once(':') {
            Some((k, v)) => into.insert(k.trim().to_owned(), v.trim().to_owned()),
            None => into.insert(tag.to_owned(), String::new()),
        };
    }
}

#[cfg(test)]
mod tests;

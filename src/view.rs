//! The API's read model: the read-only view of the pipeline that the API serves — per-series
//! summaries, the current (typed) verdicts and the active rule set. Built by the pipeline on a
//! timer and published through a `watch` channel, so that readers never lock the aggregator.
//! It sits above `aggregate` and `rules`, which know nothing of it.

use serde::Serialize;

pub use crate::rules::published::{TransitionView, VerdictView};

use crate::aggregate::{Aggregator, Summary, Window};
use crate::time::Timestamp;

/// Counts and quantiles of one series over one window.
#[derive(Clone, Debug, Serialize, Default, PartialEq)]
pub struct WindowView {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub exposures: u64,
    pub evaluation_errors: u64,
}

impl From<&Summary> for WindowView {
    fn from(s: &Summary) -> Self {
        WindowView {
            requests: s.requests,
            errors: s.errors,
            error_rate: s.error_rate(),
            p50_ms: s.quantile_ms(0.5),
            p95_ms: s.quantile_ms(0.95),
            p99_ms: s.quantile_ms(0.99),
            exposures: s.exposures,
            evaluation_errors: s.evaluation_errors,
        }
    }
}

/// One series (or unflagged slice when `flag` is empty) as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesView {
    pub flag: String,
    pub variant: String,
    pub service: String,
    pub environment: String,
    pub region: String,
    pub last_1m: WindowView,
    pub last_5m: WindowView,
    pub last_seen: String,
}

/// Everything the API reads.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Snapshot {
    pub at: String,
    pub series: Vec<SeriesView>,
    pub unflagged: Vec<SeriesView>,
    pub verdicts: Vec<VerdictView>,
    /// The latest verdict changes, oldest first (bounded).
    pub transitions: Vec<TransitionView>,
    pub rules: RulesView,
    /// The active rule set itself (alert mappings are read from it by the API).
    #[serde(skip)]
    pub rule_set: std::sync::Arc<crate::rules::RuleSet>,
    /// Rules whose guarded flag has sent no telemetry for longer than `stale_after`.
    pub stale_rules: Vec<String>,
    pub traces_in_flight: usize,
    /// First and last evaluation of each flag variant since start (flag hygiene).
    #[serde(skip)]
    pub usage: Vec<crate::rollout::hygiene::Usage>,
    pub series_count: usize,
    pub window_bytes: usize,
    /// Scale-out: a shard's stream (`role`, `seq`) or an evaluator's shards (`role`,
    /// `complete`, per shard connected, gaps, lag); null otherwise.
    pub scale_out: serde_json::Value,
}

impl Snapshot {
    /// Summarises every series over the last minute and five minutes.
    pub fn build(aggregator: &Aggregator, now: Timestamp) -> Snapshot {
        let view = |flag: String, variant: String, dims: &crate::model::Dims, w: &Window| SeriesView {
            flag,
            variant,
            service: dims.service.to_string(),
            environment: dims.environment.to_string(),
            region: dims.region.to_string(),
            last_1m: (&w.summary_since(now.minus(std::time::Duration::from_secs(60)))).into(),
            last_5m: (&w.summary_since(now.minus(std::time::Duration::from_secs(300)))).into(),
            last_seen: w.last_record().rfc3339(),
        };
        let mut series: Vec<SeriesView> = aggregator.series().map(|(k, w)| view(k.flag.to_string(), k.variant.to_string(), &k.dims, w)).collect();
        series.sort_by(|a, b| (&a.flag, &a.variant, &a.service, &a.environment, &a.region).cmp(&(&b.flag, &b.variant, &b.service, &b.environment, &b.region)));
        let mut unflagged: Vec<SeriesView> = aggregator.unflagged_iter().map(|(d, w)| view(String::new(), String::new(), d, w)).collect();
        unflagged.sort_by(|a, b| (&a.service, &a.environment, &a.region).cmp(&(&b.service, &b.environment, &b.region)));
        Snapshot { at: now.rfc3339(), series, unflagged, series_count: aggregator.series_count(), window_bytes: aggregator.bytes(), ..Snapshot::default() }
    }
}

/// One loaded rule as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    pub name: String,
    pub file: String,
    pub line: Option<usize>,
    pub flag: String,
    pub treatment: Vec<String>,
    pub control: Option<String>,
    pub conditions: Vec<String>,
    pub window: String,
    pub min_samples: u64,
    #[serde(rename = "for")]
    pub for_: String,
    pub cooldown: String,
    pub action: Option<String>,
    pub mode: String,
}

/// The rule set's state: what is loaded, and why the last reload failed (if it did).
#[derive(Clone, Debug, Serialize, Default)]
pub struct RulesView {
    pub loaded_at: String,
    pub files: Vec<String>,
    pub rules: Vec<RuleView>,
    /// Errors of the last failed reload; the previous set stays active.
    pub last_error: Option<Vec<String>>,
}

impl RulesView {
    pub fn of(set: &crate::rules::RuleSet, loaded_at: Timestamp, last_error: Option<Vec<String>>) -> RulesView {
        let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
        RulesView {
            loaded_at: loaded_at.rfc3339(),
            files: set.files.iter().map(|f| f.display().to_string()).collect(),
            rules: set
                .rules
                .iter()
                .map(|r| RuleView {
                    name: r.name.clone(),
                    file: r.file.display().to_string(),
                    line: r.line,
                    flag: r.flag_pattern.clone(),
                    treatment: r.treatment.clone(),
                    control: r.control.clone(),
                    conditions: r.when.iter().map(|c| c.describe()).collect(),
                    window: d(r.window),
                    min_samples: r.min_samples,
                    for_: d(r.for_),
                    cooldown: d(r.cooldown),
                    action: r.kill.clone(),
                    mode: r.mode.as_str().into(),
                })
                .collect(),
            last_error,
        }
    }
}

//! The pipeline's vocabulary (see DESIGN.md): evaluations, outcomes, cohorts and series keys.
//! These types are protocol-free: OTLP stays in `ingest`, HTTP clients in `act`.

use std::fmt;
use std::sync::Arc;

/// A W3C trace id (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// A span id (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A flag key, namespaced by `feature_flag.set.id` when present (`set/key`), so that two
/// teams' `checkout-v2` never merge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlagKey(pub Arc<str>);

impl FlagKey {
    pub fn new(set_id: Option<&str>, key: &str) -> Self {
        match set_id {
            Some(set) if !set.is_empty() => FlagKey(format!("{set}/{key}").into()),
            _ => FlagKey(key.into()),
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FlagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A variant name as served by the flag system (`on`, `off`, `blue`, …).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant(pub Arc<str>);

impl Variant {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The dimensions a rule can slice by, taken from the emitting resource: `service.name`,
/// `deployment.environment.name` (fallback `deployment.environment`) and `cloud.region`.
/// Missing values are the empty string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dims {
    pub service: Arc<str>,
    pub environment: Arc<str>,
    pub region: Arc<str>,
}

/// One dimension of [`Dims`], as named in rule files (`per: [region]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Service,
    Environment,
    Region,
}

impl Dimension {
    /// The name used in rule files and slice labels (`region`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Service => "service",
            Dimension::Environment => "environment",
            Dimension::Region => "region",
        }
    }
}

/// The slice a rule judges: the values of the dimensions it slices by (`per`), in the rule's
/// order. Compared and hashed as values; written `region=eu,service=payments` only at the API
/// edge ([`fmt::Display`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slice(pub Vec<(Dimension, Arc<str>)>);

impl Slice {
    /// The slice's value of `dim`, when it slices by it.
    pub fn get(&self, dim: Dimension) -> Option<&str> {
        self.0.iter().find(|(d, _)| *d == dim).map(|(_, v)| &**v)
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (dim, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={value}", dim.as_str())?;
        }
        Ok(())
    }
}

impl Dims {
    pub fn get(&self, dim: Dimension) -> &str {
        match dim {
            Dimension::Service => &self.service,
            Dimension::Environment => &self.environment,
            Dimension::Region => &self.region,
        }
    }
}

/// A series: one cohort (flag × variant) in one slice (service × environment × region).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub flag: FlagKey,
    pub variant: Variant,
    pub dims: Dims,
}

/// One flag evaluation found in telemetry.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub trace: Option<TraceId>,
    pub flag: FlagKey,
    /// `None` when no variant could be found (counted, never a cohort).
    pub variant: Option<Variant>,
    /// `error.type` of the evaluation (or reason `error`): an evaluation error, not a request error.
    pub error_type: Option<Arc<str>>,
    /// The resource of the service that evaluated the flag (for exposure counts).
    pub dims: Dims,
    /// A keyed hash of `feature_flag.context.id` (often personal data: the id itself is never
    /// kept), for counting distinct users per arm (sample-ratio mismatch).
    pub context: Option<u64>,
}

/// One request of one service: an entry span's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub trace: TraceId,
    pub span: SpanId,
    /// The judged service's dimensions (the entry span's resource).
    pub dims: Dims,
    pub error: bool,
    pub latency_us: u64,
}

/// What ingest hands to the pipeline for one accepted OTLP request.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub evaluations: Vec<Evaluation>,
    pub outcomes: Vec<Outcome>,
    /// Spans and log records seen (accepted), for counting.
    pub spans_seen: u64,
    pub logs_seen: u64,
}

/// `enforce` calls the flag system; `dry_run` (default) records what would have been done.
#[derive(Debug, serde::Deserialize, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    DryRun,
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry_run",
            Mode::Enforce => "enforce",
        }
    }
}

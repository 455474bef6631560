//! Rule conditions, one file per kind (the YAML key under `when:`). Each file holds the kind's
//! on-disk shape (serde, unknown fields refused), its validation into the validated type (with
//! errors that name file, line and field), what it reads from the windows ([`Reads`]), how it
//! judges a slice ([`Kind::judge`], pure) and how it describes itself. The `registry!` below
//! ties them in, one line per kind; the engine and the evaluation iterate [`Condition`] and never
//! name a kind.
//!
//! Adding a condition: a new file here implementing [`Kind`] with a `Shape`, and one line in the
//! registry.
//!
//! Invariants every kind keeps:
//! - too few samples is [`Outcome::Insufficient`] (Inconclusive), never Fine nor Breached;
//! - an absolute condition reports `shared` (the baseline breaches too, at a comparable level,
//!   [`comparable`]) so that a service-wide incident never kills a flag; a condition that
//!   compares the treatment with the control itself is never `shared`;
//! - judging is pure: it reads only its [`Data`].

mod sequential;

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{BaselineKind, Inputs, WindowPair};
use super::report::Report;
use crate::aggregate::Summary;

/// One kind of condition.
pub trait Kind: Sized {
    /// The on-disk shape under the kind's key (`error_rate: { above: 0.05 }`).
    type Shape: for<'de> Deserialize<'de> + Clone + std::fmt::Debug + PartialEq;
    /// Validates a shape, reporting every problem through `check`; `None` when it failed.
    fn validate(shape: &Self::Shape, check: &mut Check<'_, '_>) -> Option<Self>;
    /// One line for the API, the CLI and decision records (`error_rate > 0.05`).
    fn describe(&self) -> String;
    /// What the engine must prepare for it besides the window's arms.
    fn reads(&self) -> Reads {
        Reads::default()
    }
    /// Whether it compares the arms on all data since the slice was first seen.
    fn is_sequential(&self) -> bool {
        false
    }
    /// Judges one slice.
    fn judge(&self, data: &Data<'_>) -> Judged;
    /// What the dashboard plots for it (a threshold line, when it has one).
    fn chart(&self) -> Value {
        json!({ "kind": "other", "describe": self.describe() })
    }
}

/// What of the windows a condition reads, beyond the treatment and baseline over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reads {
    /// Sums of both arms since the slice started (and, with them, their per-user counts since
    /// the test segment started): `Some(false)` counts only, `Some(true)` with latency.
    pub cumulative: Option<bool>,
    /// A latency threshold fixed once from the control's cumulative history, as (quantile,
    /// ratio): the engine keeps `quantile × ratio` (ms) for the test segment and hands it to the
    /// windows, which count slower requests per user.
    pub fixed_threshold: Option<(f64, f64)>,
    /// Window pairs `(long, short)` ending now, of the treatment and the baseline (counts only).
    pub window_pairs: Vec<(Duration, Duration)>,
}

/// What one condition's judgement reads.
pub struct Data<'a> {
    pub inputs: &'a Inputs<'a>,
    /// The rule's `min_samples`.
    pub min_samples: u64,
    /// The baseline over the window, when it has at least `min_samples` requests.
    pub baseline: Option<(BaselineKind, &'a Summary)>,
    /// This condition's fixed threshold (ms), once fixed.
    pub threshold: Option<f64>,
    /// This condition's window pairs, in the order of its `Reads::window_pairs`.
    pub pairs: &'a [WindowPair],
}

/// One condition's judgement.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `shared`: the baseline breaches too (an incident of the service, not of the flag).
    Breached {
        shared: bool,
    },
    Fine,
    /// Too few samples, with why.
    Insufficient(String),
}

/// One condition's outcome, the details for the decision record, and the sequential evidence.
#[derive(Clone, Debug)]
pub struct Judged {
    pub outcome: Outcome,
    /// Merged into the condition's entry of the decision record (an object, or null).
    pub detail: Value,
    /// (e-value, alpha) of a sequential test that ran.
    pub evidence: Option<(f64, f64)>,
}

impl Judged {
    pub fn new(outcome: Outcome, detail: Value) -> Self {
        Judged { outcome, detail, evidence: None }
    }

    pub fn insufficient(why: String) -> Self {
        Judged::new(Outcome::Insufficient(why), Value::Null)
    }
}

/// How close the baseline must be to the treatment for "the baseline breaches too" to excuse
/// it (an incident, not this flag): at least half the treatment's rate. A baseline merely over
/// the same threshold is not enough — a few fabricated or unrelated unflagged errors would
/// otherwise turn any breach into an incident (treatment 40 %, baseline 6 %, threshold 5 %).
pub const COMPARABLE_BASELINE: f64 = 0.5;

/// Whether the baseline's `baseline` is comparable to the treatment's `treatment`.
pub fn comparable(baseline: Option<f64>, treatment: Option<f64>) -> bool {
    match (baseline, treatment) {
        (Some(b), Some(t)) => b >= COMPARABLE_BASELINE * t,
        _ => false,
    }
}

/// Judges an absolute condition over the window: `observe` reads a value of an arm, `breaches`
/// compares it with the threshold. Too few treatment samples is Insufficient; a breach is
/// `shared` when the usable baseline breaches too at a comparable level.
pub fn absolute(data: &Data<'_>, observe: impl Fn(&Summary) -> Option<f64>, breaches: impl Fn(f64) -> bool) -> Judged {
    let treatment = data.inputs.treatment;
    let observed = observe(treatment);
    let baseline_observed = data.baseline.and_then(|(_, b)| observe(b));
    let over = |v: Option<f64>| v.is_some_and(&breaches);
    let outcome = if treatment.requests < data.min_samples {
        Outcome::Insufficient(format!("{} of {} samples in the window", treatment.requests, data.min_samples))
    } else if over(observed) {
        Outcome::Breached { shared: data.baseline.is_some() && over(baseline_observed) && comparable(baseline_observed, observed) }
    } else {
        Outcome::Fine
    };
    Judged::new(outcome, json!({ "observed": observed, "baseline_observed": baseline_observed }))
}

/// Validation context of one condition: its field path and what it may need of the rule.
pub struct Check<'r, 'a> {
    report: &'r mut Report<'a>,
    /// `when[2].error_rate`.
    field: String,
    /// Whether the rule names a control variant.
    pub has_control: bool,
}

impl<'r, 'a> Check<'r, 'a> {
    pub fn new(report: &'r mut Report<'a>, field: String, has_control: bool) -> Self {
        Check { report, field, has_control }
    }

    /// Reports a problem with `sub` (a field of the condition; empty: the condition itself).
    pub fn fail(&mut self, sub: &str, message: String) {
        let field = if sub.is_empty() { self.field.clone() } else { format!("{}.{sub}", self.field) };
        self.report.fail(&field, message);
    }

    /// Reports that a comparison with the control needs the rule's control variant.
    pub fn needs_control(&mut self, sub: &str) {
        if !self.has_control {
            self.fail(sub, "needs the rule's control variant".into());
        }
    }

    /// Reads a confidence (default 0.99) as alpha = 1 − confidence.
    pub fn confidence(&mut self, value: Option<f64>) -> f64 {
        let c = value.unwrap_or(0.99);
        if !(0.5..=0.9999).contains(&c) {
            self.fail("confidence", format!("must be in [0.5, 0.9999], got {c}"));
        }
        1.0 - c
    }
}

/// Declares the condition kinds, one line each (`yaml_key => Variant`, where the module
/// `yaml_key` holds `Variant: Kind`): the file's module, the [`ConditionShape`] field, the
/// [`Condition`] variant and its dispatch.
macro_rules! registry {
    ($($key:ident => $variant:ident),+ $(,)?) => {
        $(pub mod $key;)+

        /// One condition on disk: exactly one of its fields is set (`- error_rate: { above: 0.05 }`).
        #[derive(Debug, Deserialize, Clone, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct ConditionShape {
            $(#[serde(default)] pub $key: Option<<$key::$variant as Kind>::Shape>,)+
        }

        /// A validated condition.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Condition {
            $($variant($key::$variant),)+
        }

        $(impl From<$key::$variant> for Condition {
            fn from(kind: $key::$variant) -> Self {
                Condition::$variant(kind)
            }
        })+

        /// The kinds' keys, as written in rule files.
        pub const KEYS: &[&str] = &[$(stringify!($key)),+];

        impl ConditionShape {
            /// Validates the one kind that is set; `field` is `when[i]`.
            pub fn validate(&self, field: &str, has_control: bool, report: &mut Report<'_>) -> Option<Condition> {
                let set = [$(self.$key.is_some()),+].iter().filter(|s| **s).count();
                if set != 1 {
                    report.fail(field, format!("each condition needs exactly one of {}", KEYS.join(", ")));
                    return None;
                }
                $(if let Some(shape) = &self.$key {
                    let mut check = Check::new(report, format!("{field}.{}", stringify!($key)), has_control);
                    return $key::$variant::validate(shape, &mut check).map(Condition::$variant);
                })+
                None
            }
        }

        impl Condition {
            fn kind(&self) -> &dyn Dispatch {
                match self {
                    $(Condition::$variant(c) => c,)+
                }
            }
        }
    };
}

registry! {
    error_rate => ErrorRate,
    latency => Latency,
    burn_rate => BurnRate,
    throughput => Throughput,
}

/// The object-safe part of [`Kind`].
trait Dispatch {
    fn describe(&self) -> String;
    fn reads(&self) -> Reads;
    fn is_sequential(&self) -> bool;
    fn judge(&self, data: &Data<'_>) -> Judged;
    fn chart(&self) -> Value;
}

impl<K: Kind> Dispatch for K {
    fn describe(&self) -> String {
        Kind::describe(self)
    }
    fn reads(&self) -> Reads {
        Kind::reads(self)
    }
    fn is_sequential(&self) -> bool {
        Kind::is_sequential(self)
    }
    fn judge(&self, data: &Data<'_>) -> Judged {
        Kind::judge(self, data)
    }
    fn chart(&self) -> Value {
        Kind::chart(self)
    }
}

impl Condition {
    /// One line for the API, the CLI and decision records.
    pub fn describe(&self) -> String {
        self.kind().describe()
    }

    /// What the engine prepares for it.
    pub fn reads(&self) -> Reads {
        self.kind().reads()
    }

    /// Sequential conditions compare the arms on all data since the slice was first seen.
    pub fn is_sequential(&self) -> bool {
        self.kind().is_sequential()
    }

    /// Judges one slice (pure).
    pub fn judge(&self, data: &Data<'_>) -> Judged {
        self.kind().judge(data)
    }

    /// What the dashboard plots for it.
    pub fn chart(&self) -> Value {
        self.kind().chart()
    }
}

#[cfg(test)]
mod tests;

//! `burn_rate`: multi-window, multi-burn-rate alerting on the error budget of `objective`
//! (Google SRE workbook): breached when, for any `[long, short, factor]` pair, both windows
//! burn the budget at least `factor` times as fast as allowed. Each pair needs `min_samples`
//! requests in its long window; a pair whose baseline burns hot too, at a comparable level, is
//! `shared` (an incident), and the condition is shared only when every hot pair is.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{Check, Data, Judged, Kind, Outcome, Reads, comparable};
use crate::aggregate::Summary;

/// The on-disk shape.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Availability objective, e.g. 0.999.
    pub objective: f64,
    /// `[long, short, factor]` triples, e.g. `[[1h, 5m, 14.4], [6h, 30m, 6]]`.
    pub windows: Vec<(String, String, f64)>,
}

/// A validated burn-rate condition.
#[derive(Debug, Clone, PartialEq)]
pub struct BurnRate {
    pub objective: f64,
    /// (long, short, factor).
    pub windows: Vec<(Duration, Duration, f64)>,
}

impl Kind for BurnRate {
    type Shape = Shape;

    fn validate(shape: &Shape, check: &mut Check<'_, '_>) -> Option<Self> {
        if !(shape.objective > 0.5 && shape.objective < 1.0) {
            check.fail("objective", format!("must be in (0.5, 1), got {}", shape.objective));
        }
        if shape.windows.is_empty() {
            check.fail("windows", "needs at least one [long, short, factor]".into());
        }
        let mut windows = Vec::new();
        for (j, (long, short, factor)) in shape.windows.iter().enumerate() {
            match (humantime::parse_duration(long), humantime::parse_duration(short)) {
                (Ok(l), Ok(s)) if s < l && l <= Duration::from_secs(6 * 3600) && s >= Duration::from_secs(10) && *factor > 0.0 => windows.push((l, s, *factor)),
                _ => check.fail(
                    &format!("windows[{j}]"),
                    format!("needs [long, short, factor] with 10s <= short < long <= 6h and factor > 0, got [{long}, {short}, {factor}]"),
                ),
            }
        }
        Some(BurnRate { objective: shape.objective, windows })
    }

    fn describe(&self) -> String {
        format!(
            "burn rate of {} objective: {}",
            self.objective,
            self.windows
                .iter()
                .map(|(l, s, f)| format!("{}/{} >= {f}x", humantime::format_duration(*l), humantime::format_duration(*s)))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    }

    fn reads(&self) -> Reads {
        Reads { window_pairs: self.windows.iter().map(|(long, short, _)| (*long, *short)).collect(), ..Reads::default() }
    }

    fn judge(&self, data: &Data<'_>) -> Judged {
        let budget = 1.0 - self.objective;
        let burn = |s: &Summary| s.error_rate().map(|r| r / budget);
        let mut details = Vec::new();
        let (mut usable_any, mut hot_shared): (bool, Vec<bool>) = (false, Vec::new());
        for (pair, (long, short, factor)) in data.pairs.iter().zip(&self.windows) {
            let (bl, bs) = (burn(&pair.long), burn(&pair.short));
            let hot = |l: Option<f64>, s: Option<f64>| l.is_some_and(|l| l >= *factor) && s.is_some_and(|s| s >= *factor);
            let usable = pair.long.requests >= data.min_samples;
            let baseline_hot =
                pair.baseline.as_ref().filter(|(l, _)| l.requests >= data.min_samples).is_some_and(|(l, s)| hot(burn(l), burn(s)) && comparable(burn(l), bl));
            usable_any |= usable;
            if usable && hot(bl, bs) {
                hot_shared.push(baseline_hot);
            }
            details.push(json!({ "long": humantime::format_duration(*long).to_string(), "short": humantime::format_duration(*short).to_string(), "factor": factor,
                "burn_long": bl, "burn_short": bs, "requests_long": pair.long.requests, "baseline_hot": baseline_hot }));
        }
        let outcome = if !hot_shared.is_empty() {
            Outcome::Breached { shared: hot_shared.iter().all(|b| *b) }
        } else if usable_any {
            Outcome::Fine
        } else {
            Outcome::Insufficient(format!("fewer than {} samples in the long burn-rate windows", data.min_samples))
        };
        Judged::new(outcome, json!({ "budget": budget, "windows": details }))
    }
}

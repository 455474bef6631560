//! Drift: a manifest's intended state against a [`FlagView`] of the flag system. Pure: the
//! reads happen elsewhere (the CLI through the daemon or the configuration, the daemon's
//! drift chore). A kill flagguard holds is expected drift, reported as such, never as a human's
//! edit.

use serde::Serialize;

use super::Intended;
use crate::act::VariantWeight;
use crate::act::read::{FlagView, KillRef};

/// Percentages closer than this are equal.
const EPSILON: f64 = 0.01;

/// One difference between intent and the flag system.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "field", rename_all = "snake_case")]
pub enum Finding {
    Enabled {
        want: bool,
        have: bool,
    },
    /// `have: None`: the flag system reports no rollout percentage for the target.
    Rollout {
        want: f64,
        have: Option<f64>,
    },
    Variants {
        want: Vec<VariantWeight>,
        have: Vec<VariantWeight>,
    },
}

impl Finding {
    pub fn describe(&self) -> String {
        let on = |b: bool| if b { "on" } else { "off" };
        match self {
            Finding::Enabled { want, have } => format!("enabled: manifest {}, flag system {}", on(*want), on(*have)),
            Finding::Rollout { want, have: Some(have) } => format!("rollout: manifest {want} %, flag system {have} %"),
            Finding::Rollout { want, have: None } => format!("rollout: manifest {want} %, the flag system reports none"),
            Finding::Variants { want, have } => format!("variants: manifest {}, flag system {}", split(want), split(have)),
        }
    }
}

fn split(variants: &[VariantWeight]) -> String {
    if variants.is_empty() {
        return "none".into();
    }
    variants.iter().map(|v| format!("{} {} %", v.name, v.percent)).collect::<Vec<_>>().join(" / ")
}

/// One flag in one environment.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    InSync,
    /// Someone (not flagguard) changed it, or it was never applied.
    Drifted {
        findings: Vec<Finding>,
    },
    /// Off because flagguard killed it: expected drift until the kill is restored.
    Killed {
        kills: Vec<KillRef>,
        findings: Vec<Finding>,
    },
    /// The flag system could not be read just now (unreachable, 5xx, timeout).
    CannotTell {
        error: String,
    },
    /// It cannot be read at all (no read-back, a refused token, an unknown flag).
    Error {
        error: String,
    },
}

impl Status {
    /// Whether the flag system differs from the manifest (killed included).
    pub fn drifted(&self) -> bool {
        matches!(self, Status::Drifted { .. } | Status::Killed { .. })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Status::InSync => "in_sync",
            Status::Drifted { .. } => "drifted",
            Status::Killed { .. } => "killed",
            Status::CannotTell { .. } => "cannot_tell",
            Status::Error { .. } => "error",
        }
    }
}

/// The verdict for one flag × environment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub flag: String,
    pub environment: String,
    #[serde(flatten)]
    pub status: Status,
    /// What the flag system said (for `--json`).
    pub view: Option<FlagView>,
}

impl Report {
    /// One readable paragraph.
    pub fn describe(&self) -> String {
        let head = format!("{} in {}", self.flag, self.environment);
        match &self.status {
            Status::InSync => format!("{head}: in sync"),
            Status::Drifted { findings } => {
                let mut out = format!("{head}: DRIFTED");
                for f in findings {
                    out.push_str(&format!("\n    {}", f.describe()));
                }
                out
            }
            Status::Killed { kills, findings } => {
                let ids: Vec<String> = kills
                    .iter()
                    .map(|k| format!("action {} ({}{})", k.action, k.state, k.rule.as_ref().map(|r| format!(", rule {r}")).unwrap_or_default()))
                    .collect();
                let mut out = format!("{head}: killed by flagguard — {} — expected drift until it is restored", ids.join(", "));
                for f in findings {
                    out.push_str(&format!("\n    {}", f.describe()));
                }
                out
            }
            Status::CannotTell { error } => format!("{head}: cannot tell: {error}"),
            Status::Error { error } => format!("{head}: error: {error}"),
        }
    }
}

/// Compares one environment's intent with what was read.
pub fn compare(intended: &Intended, view: &FlagView) -> Status {
    let fs = &view.flag_system;
    if !fs.readable {
        let error = fs.error.clone().unwrap_or_else(|| "the flag system cannot be read".into());
        return if fs.transient { Status::CannotTell { error } } else { Status::Error { error } };
    }
    let mut findings = Vec::new();
    match fs.enabled {
        Some(have) if have != intended.enabled => findings.push(Finding::Enabled { want: intended.enabled, have }),
        _ => {}
    }
    // Percentages and splits only matter while the flag serves.
    if intended.enabled && fs.enabled != Some(false) {
        if let Some(want) = intended.rollout
            && fs.rollout.is_none_or(|have| (have - want).abs() > EPSILON)
        {
            findings.push(Finding::Rollout { want, have: fs.rollout });
        }
        if !intended.variants.is_empty() && !same_split(&intended.variants, &fs.variants) {
            findings.push(Finding::Variants { want: intended.variants.clone(), have: fs.variants.clone() });
        }
    }
    let kills = view.killed_by_flagguard.clone().unwrap_or_default();
    match (findings.is_empty(), kills.is_empty()) {
        (true, _) => Status::InSync,
        (false, false) if fs.enabled == Some(false) && intended.enabled => Status::Killed { kills, findings },
        (false, _) => Status::Drifted { findings },
    }
}

fn same_split(want: &[VariantWeight], have: &[VariantWeight]) -> bool {
    want.len() == have.len() && want.iter().all(|w| have.iter().any(|h| h.name == w.name && (h.percent - w.percent).abs() <= EPSILON))
}

/// A run's exit code: 0 in sync, 1 drifted (a kill included), 2 cannot tell, 3 error. A
/// difference found is definite, so drift wins over flags that could not be read.
pub fn exit_code(reports: &[Report]) -> i32 {
    if reports.iter().any(|r| r.status.drifted()) {
        1
    } else if reports.iter().any(|r| matches!(r.status, Status::Error { .. })) {
        3
    } else if reports.iter().any(|r| matches!(r.status, Status::CannotTell { .. })) {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::read::SystemView;

    fn view(enabled: bool, rollout: Option<f64>, kills: Option<Vec<KillRef>>) -> FlagView {
        FlagView {
            flag: "f".into(),
            actuator: "unleash".into(),
            environment: Some("production".into()),
            region: None,
            flag_system: SystemView { readable: true, enabled: Some(enabled), rollout, ..SystemView::default() },
            killed_by_flagguard: kills,
            pending: None,
        }
    }

    fn intended(enabled: bool, rollout: Option<f64>) -> Intended {
        Intended { environment: "production".into(), enabled, rollout, variants: vec![] }
    }

    fn kill() -> KillRef {
        KillRef { action: 7, state: "confirmed".into(), target: "unleash|f|production|".into(), rule: Some("r".into()) }
    }

    #[test]
    fn a_flagguard_kill_is_expected_drift_and_a_human_edit_is_drift() {
        assert_eq!(compare(&intended(true, Some(5.0)), &view(true, Some(5.0), Some(vec![]))), Status::InSync);
        assert_eq!(
            compare(&intended(true, Some(5.0)), &view(true, Some(25.0), None)),
            Status::Drifted { findings: vec![Finding::Rollout { want: 5.0, have: Some(25.0) }] }
        );
        let killed = compare(&intended(true, Some(5.0)), &view(false, Some(5.0), Some(vec![kill()])));
        assert!(matches!(&killed, Status::Killed { kills, .. } if kills[0].action == 7), "{killed:?}");
        // Off without a flagguard kill: a human turned it off.
        assert!(matches!(compare(&intended(true, Some(5.0)), &view(false, Some(5.0), Some(vec![]))), Status::Drifted { .. }));
        // Off as intended: its percentage is not compared.
        assert_eq!(compare(&intended(false, Some(5.0)), &view(false, Some(50.0), None)), Status::InSync);
    }

    #[test]
    fn drift_wins_over_what_could_not_be_read_and_errors_over_cannot_tell() {
        let report = |status| Report { flag: "f".into(), environment: "e".into(), status, view: None };
        let unreadable = |transient| {
            let mut v = view(true, None, None);
            v.flag_system = SystemView { readable: false, error: Some("x".into()), transient, ..SystemView::default() };
            compare(&intended(true, None), &v)
        };
        assert!(matches!(unreadable(true), Status::CannotTell { .. }));
        assert!(matches!(unreadable(false), Status::Error { .. }));
        assert_eq!(exit_code(&[report(Status::InSync)]), 0);
        assert_eq!(exit_code(&[report(Status::InSync), report(unreadable(true))]), 2);
        assert_eq!(exit_code(&[report(unreadable(false)), report(unreadable(true))]), 3);
        assert_eq!(exit_code(&[report(unreadable(false)), report(Status::Drifted { findings: vec![] })]), 1);
    }

    #[test]
    fn a_split_is_compared_by_name_and_share() {
        let split = |a: f64| vec![VariantWeight { name: "a".into(), percent: a }, VariantWeight { name: "b".into(), percent: 100.0 - a }];
        let mut want = intended(true, None);
        want.variants = split(50.0);
        let mut have = view(true, Some(5.0), None);
        have.flag_system.variants = split(50.0).into_iter().rev().collect();
        assert_eq!(compare(&want, &have), Status::InSync);
        have.flag_system.variants = split(70.0);
        assert!(matches!(compare(&want, &have), Status::Drifted { findings } if matches!(findings[0], Finding::Variants { .. })));
    }
}

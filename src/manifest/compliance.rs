//! The compliance report (`GET /v1/compliance`, `flagguard flags report`, the
//! `compliance_findings` gauges): flags without an owner, past their expiry, changed outside
//! flagguard in a regulated environment (so without approval), drifted from their manifest, or
//! in rollout (serving more than one variant) for longer than `governance.max_rollout_age`.
//! Pure: from the drift watch's last pass and the flags' usage.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use super::FlagManifest;
use super::drift::{Report, Status};
use crate::rollout::hygiene::Usage;
use crate::time::Timestamp;

/// A flag still served in several variants this recently is in rollout.
const LIVE: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    NoOwner,
    Expired,
    UnapprovedChange,
    Drifted,
    LongRollout,
}

impl Problem {
    pub const ALL: [Problem; 5] = [Problem::NoOwner, Problem::Expired, Problem::UnapprovedChange, Problem::Drifted, Problem::LongRollout];

    pub fn as_str(self) -> &'static str {
        match self {
            Problem::NoOwner => "no_owner",
            Problem::Expired => "expired",
            Problem::UnapprovedChange => "unapproved_change",
            Problem::Drifted => "drifted",
            Problem::LongRollout => "long_rollout",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub flag: String,
    pub environment: Option<String>,
    pub problem: Problem,
    pub detail: String,
}

/// What the report is made of.
pub struct Inputs<'a> {
    pub manifests: &'a [FlagManifest],
    /// The drift watch's last pass.
    pub drift: &'a [Report],
    pub usage: &'a [Usage],
    /// Manifest changes the drift watch holds until approved.
    pub held: &'a [super::watch::HeldChange],
    pub regulated: &'a [String],
    pub max_rollout_age: Duration,
    pub now: Timestamp,
}

pub fn report(i: &Inputs<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let declared: BTreeSet<&str> = i.manifests.iter().map(|m| m.key.as_str()).collect();
    let seen: BTreeSet<&str> = i.usage.iter().map(|u| u.flag.as_str()).collect();
    for flag in seen.iter().filter(|f| !declared.contains(**f)) {
        out.push(Finding {
            flag: (*flag).into(),
            environment: None,
            problem: Problem::NoOwner,
            detail: "evaluated in telemetry but in no flag manifest".into(),
        });
    }
    for m in i.manifests {
        if m.owner.is_none() {
            out.push(Finding { flag: m.key.clone(), environment: None, problem: Problem::NoOwner, detail: format!("{} names no owner", m.file.display()) });
        }
        if let (Some(day), Some(at)) = (&m.expires, m.expires_at)
            && at < i.now
        {
            out.push(Finding { flag: m.key.clone(), environment: None, problem: Problem::Expired, detail: format!("expired on {day} ({})", m.file.display()) });
        }
    }
    for h in i.held {
        let detail = format!("{} in the flag manifests without approval (proposal {}, {})", h.change, h.proposal, h.state.as_str());
        out.push(Finding { flag: h.flag.clone(), environment: None, problem: Problem::UnapprovedChange, detail });
    }
    for r in i.drift {
        let Status::Drifted { findings } = &r.status else { continue };
        let what: Vec<String> = findings.iter().map(|f| f.describe()).collect();
        let problem = if i.regulated.contains(&r.environment) { Problem::UnapprovedChange } else { Problem::Drifted };
        let detail = match problem {
            Problem::UnapprovedChange => {
                format!("differs from its reviewed manifest in a regulated environment (a change no approval covers): {}", what.join("; "))
            }
            _ => what.join("; "),
        };
        out.push(Finding { flag: r.flag.clone(), environment: Some(r.environment.clone()), problem, detail });
    }
    for flag in &seen {
        let variants: Vec<&Usage> =
            i.usage.iter().filter(|u| u.flag == *flag && i.now.as_millis().saturating_sub(u.last_ms) <= LIVE.as_millis() as u64).collect();
        let Some(since) = variants.iter().map(|u| u.first_ms).min() else { continue };
        let age = Duration::from_millis(i.now.as_millis().saturating_sub(since));
        if variants.len() > 1 && age > i.max_rollout_age {
            let detail = format!("{} variants served since {} ({} days)", variants.len(), Timestamp(since).rfc3339(), age.as_secs() / 86_400);
            out.push(Finding { flag: (*flag).into(), environment: None, problem: Problem::LongRollout, detail });
        }
    }
    out.sort_by(|a, b| (a.problem, &a.flag, &a.environment).cmp(&(b.problem, &b.flag, &b.environment)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::drift::Finding as Diff;
    use crate::manifest::{Intended, Lifecycle, Owner};

    fn manifest(key: &str, owner: bool, expires: Option<(&str, u64)>) -> FlagManifest {
        FlagManifest {
            key: key.into(),
            actuator: None,
            owner: owner.then(|| Owner { team: "payments".into(), contact: None }),
            lifecycle: Lifecycle::Release,
            expires: expires.map(|(d, _)| d.into()),
            expires_at: expires.map(|(_, ms)| Timestamp(ms)),
            environments: vec![Intended { environment: "production".into(), enabled: true, rollout: Some(5.0), variants: vec![] }],
            file: "flags/f.yaml".into(),
            line: None,
        }
    }

    #[test]
    fn every_problem_is_found_and_only_those() {
        let day = 86_400_000;
        let now = Timestamp(100 * day);
        let manifests = [manifest("ok", true, Some(("later", 200 * day))), manifest("orphan", false, None), manifest("old", true, Some(("then", 50 * day)))];
        let drifted = |env: &str| Report {
            flag: "ok".into(),
            environment: env.into(),
            status: Status::Drifted { findings: vec![Diff::Rollout { want: 5.0, have: Some(25.0) }] },
            view: None,
        };
        let drift = [drifted("production"), drifted("staging")];
        let u =
            |flag: &str, variant: &str, first: u64, last: u64| Usage { flag: flag.into(), variant: variant.into(), first_ms: first * day, last_ms: last * day };
        let usage = [u("ok", "on", 10, 100), u("ok", "off", 10, 100), u("stray", "on", 99, 100), u("old", "on", 10, 100)];
        let regulated = ["production".to_owned()];
        let found = report(&Inputs {
            manifests: &manifests,
            drift: &drift,
            usage: &usage,
            held: &[],
            regulated: &regulated,
            max_rollout_age: Duration::from_secs(30 * 86_400),
            now,
        });
        let got: Vec<(&str, &str, Option<&str>)> = found.iter().map(|f| (f.problem.as_str(), f.flag.as_str(), f.environment.as_deref())).collect();
        assert_eq!(
            got,
            [
                ("no_owner", "orphan", None),
                ("no_owner", "stray", None),
                ("expired", "old", None),
                ("unapproved_change", "ok", Some("production")),
                ("drifted", "ok", Some("staging")),
                ("long_rollout", "ok", None),
            ]
        );
    }
}

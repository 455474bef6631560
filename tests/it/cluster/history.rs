//! Checkers over the recorded history of a run (Jepsen style): the mock flag system's calls
//! (arrival order and time, `Idempotency-Key`, `X-Flagguard-Epoch`) and the store's `audit` and
//! `outbox` rows. Each checker is a plain function returning what it found, so that a fault
//! loop can count violations over many runs and report them together ([`Tally`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::pg::{AuditRow, OutboxRow};
use crate::support::Call;

pub fn key(call: &Call) -> Option<&str> {
    call.headers.get("idempotency-key").and_then(|v| v.to_str().ok())
}

pub fn epoch(call: &Call) -> Option<u64> {
    call.headers.get("x-flagguard-epoch").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// Checker (a): `kill_decided` records per target.
pub fn kill_decisions(audit: &[AuditRow]) -> BTreeMap<String, usize> {
    let mut per_target = BTreeMap::new();
    for record in audit.iter().filter(|r| r.kind == "kill_decided") {
        *per_target.entry(record.target.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    per_target
}

/// Checker (b): every flag-system call carries the `Idempotency-Key` of an outbox row, and all
/// calls for one flag (one action in these tests) share one key. Returns the violations.
pub fn key_violations(calls: &[Call], outbox: &[OutboxRow]) -> Vec<String> {
    let known: BTreeSet<&str> = outbox.iter().map(|r| r.idempotency_key.as_str()).collect();
    let mut violations = Vec::new();
    let mut per_path: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (i, call) in calls.iter().enumerate() {
        match key(call) {
            None => violations.push(format!("call {i} to {} has no Idempotency-Key", call.path)),
            Some(k) => {
                if !known.contains(k) {
                    violations.push(format!("call {i} to {} carries key {k:?}, which no outbox row has", call.path));
                }
                per_path.entry(call.path.as_str()).or_default().insert(k);
            }
        }
    }
    for (path, keys) in per_path {
        if keys.len() > 1 {
            violations.push(format!("calls to {path} carry {} different keys: {keys:?}", keys.len()));
        }
    }
    violations
}

/// Checker (c): indices of calls (in arrival order) whose epoch is lower than one already seen
/// — a deposed leader acting after its successor started. Calls without an epoch are listed by
/// [`missing_epochs`] instead.
pub fn epoch_regressions(calls: &[Call]) -> Vec<usize> {
    let mut highest = 0;
    let mut regressions = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        if let Some(e) = epoch(call) {
            if e < highest {
                regressions.push(i);
            }
            highest = highest.max(e);
        }
    }
    regressions
}

pub fn missing_epochs(calls: &[Call]) -> usize {
    calls.iter().filter(|c| epoch(c).is_none()).count()
}

/// Checker (d): the first call that arrived at or after `since` (a leader's death), and how long
/// after it.
pub fn first_call_after(calls: &[Call], since: Instant) -> Option<(Duration, &Call)> {
    calls.iter().filter(|c| c.at >= since).min_by_key(|c| c.at).map(|c| (c.at - since, c))
}

/// What one run of a scenario found.
#[derive(Debug, Default)]
pub struct RunReport {
    /// `kill_decided` records for the expected target (0: missed, 2+: doubled).
    pub decisions: usize,
    /// `kill_confirmed` records (2+: the outcome was written twice).
    pub confirmations: usize,
    /// Calls from a deposed leader after its successor's first call (the documented residual).
    pub residual: usize,
    pub fault_injected: bool,
    pub violations: Vec<String>,
}

impl RunReport {
    /// Applies checkers (a), (b), (c) and the single-confirmation check to a finished run;
    /// `stale_allowed` calls with a decreased epoch are the documented residual (a leader
    /// paused between its claim and its request), counted but not a violation.
    pub fn check(calls: &[Call], audit: &[AuditRow], outbox: &[OutboxRow], stale_allowed: usize) -> RunReport {
        let decisions = kill_decisions(audit);
        let mut report = RunReport {
            decisions: decisions.values().sum(),
            confirmations: audit.iter().filter(|r| r.kind == "kill_confirmed").count(),
            ..RunReport::default()
        };
        if decisions.len() > 1 {
            report.violations.push(format!("kills decided for several targets: {decisions:?}"));
        }
        report.violations.extend(key_violations(calls, outbox));
        let missing = missing_epochs(calls);
        if missing > 0 {
            report.violations.push(format!("{missing} calls without X-Flagguard-Epoch"));
        }
        let regressions = epoch_regressions(calls);
        report.residual = regressions.len();
        if regressions.len() > stale_allowed {
            report.violations.push(format!("epochs decreased at calls {regressions:?}: {:?}", calls.iter().map(epoch).collect::<Vec<_>>()));
        }
        report
    }
}

/// Counts over the runs of one fault loop, printed as the closing line of the test:
/// runs, faults injected, kills missed, kills doubled (the goal is 0 and 0).
#[derive(Debug)]
pub struct Tally {
    pub name: String,
    pub runs: usize,
    pub faults: usize,
    pub missed: usize,
    pub doubled: usize,
    pub residual: usize,
    pub violations: Vec<String>,
}

impl Tally {
    pub fn new(name: &str) -> Tally {
        Tally { name: name.to_owned(), runs: 0, faults: 0, missed: 0, doubled: 0, residual: 0, violations: Vec::new() }
    }

    pub fn record(&mut self, run: RunReport) {
        self.runs += 1;
        self.faults += usize::from(run.fault_injected);
        self.missed += usize::from(run.decisions == 0 || run.confirmations == 0);
        self.doubled += usize::from(run.decisions > 1 || run.confirmations > 1);
        self.residual += run.residual;
        let index = self.runs;
        self.violations.extend(run.violations.into_iter().map(|v| format!("run {index}: {v}")));
    }

    pub fn line(&self) -> String {
        format!(
            "{}: runs {}, faults injected {}, kills missed {}, kills doubled {}, residual stale-epoch calls {}, other violations {}",
            self.name,
            self.runs,
            self.faults,
            self.missed,
            self.doubled,
            self.residual,
            self.violations.len()
        )
    }

    /// Prints the counts and fails unless every run injected its fault and nothing was
    /// missed, doubled or violated.
    pub fn assert_clean(&self) {
        println!("{}", self.line());
        assert!(
            self.faults == self.runs && self.missed == 0 && self.doubled == 0 && self.violations.is_empty(),
            "{}\n{}",
            self.line(),
            self.violations.join("\n")
        );
    }
}

/// How many times each fault loop runs: `FLAGGUARD_CLUSTER_RUNS`, default `default`.
pub fn runs(default: usize) -> usize {
    std::env::var("FLAGGUARD_CLUSTER_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A varied delay in `0..max` for run `run` (deterministic per run, different across runs).
pub fn jitter(run: usize, max: Duration) -> Duration {
    let fraction = ((run as u64 * 7919 + 17) % 101) as f64 / 100.0;
    max.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    fn call(path: &str, key: Option<&str>, epoch: Option<u64>, at: Instant) -> Call {
        let mut headers = HeaderMap::new();
        if let Some(k) = key {
            headers.insert("idempotency-key", k.parse().unwrap());
        }
        if let Some(e) = epoch {
            headers.insert("x-flagguard-epoch", e.to_string().parse().unwrap());
        }
        Call { path: path.into(), headers, body: serde_json::Value::Null, answered: 200, at }
    }

    fn outbox(key: &str) -> OutboxRow {
        OutboxRow { target: "flags|checkout-crash|production|".into(), kind: "kill".into(), state: "confirmed".into(), idempotency_key: key.into() }
    }

    fn audit(kind: &str, target: &str) -> AuditRow {
        AuditRow { kind: kind.into(), actor: "rule:crashy".into(), target: Some(target.into()), action_id: Some(1), after: None }
    }

    #[test]
    fn decisions_are_counted_per_target() {
        let records = [audit("kill_decided", "t1"), audit("kill_sent", "t1"), audit("kill_decided", "t1"), audit("kill_decided", "t2")];
        assert_eq!(kill_decisions(&records), BTreeMap::from([("t1".to_owned(), 2), ("t2".to_owned(), 1)]));
    }

    #[test]
    fn calls_must_share_the_key_of_an_outbox_row() {
        let now = Instant::now();
        let good = [call("/v1/flags/f", Some("k1"), Some(1), now), call("/v1/flags/f", Some("k1"), Some(2), now)];
        assert!(key_violations(&good, &[outbox("k1")]).is_empty());
        let unknown = [call("/v1/flags/f", Some("k9"), Some(1), now)];
        assert_eq!(key_violations(&unknown, &[outbox("k1")]).len(), 1);
        let split = [call("/v1/flags/f", Some("k1"), Some(1), now), call("/v1/flags/f", Some("k2"), Some(1), now), call("/v1/flags/f", None, Some(1), now)];
        assert_eq!(key_violations(&split, &[outbox("k1"), outbox("k2")]).len(), 2, "two keys for one flag, one call without a key");
    }

    #[test]
    fn a_lower_epoch_after_a_higher_one_is_a_regression() {
        let now = Instant::now();
        let calls: Vec<Call> =
            [Some(3), Some(3), Some(4), Some(3), None, Some(5), Some(4)].into_iter().map(|e| call("/v1/flags/f", Some("k"), e, now)).collect();
        assert_eq!(epoch_regressions(&calls), vec![3, 6]);
        assert_eq!(missing_epochs(&calls), 1);
    }

    #[test]
    fn the_first_call_after_a_death_is_measured_from_it() {
        let death = Instant::now();
        let calls = [call("/v1/flags/f", None, None, death - Duration::from_secs(1)), call("/v1/flags/f", None, None, death + Duration::from_millis(2500))];
        assert_eq!(first_call_after(&calls, death).map(|(d, _)| d), Some(Duration::from_millis(2500)));
        assert!(first_call_after(&calls[..1], death).is_none());
    }

    #[test]
    fn a_tally_counts_missed_and_doubled_runs() {
        let mut tally = Tally::new("t");
        tally.record(RunReport { decisions: 1, confirmations: 1, fault_injected: true, ..RunReport::default() });
        tally.record(RunReport { decisions: 0, confirmations: 0, fault_injected: true, ..RunReport::default() });
        tally.record(RunReport { decisions: 2, confirmations: 1, fault_injected: false, violations: vec!["x".into()], ..RunReport::default() });
        assert_eq!((tally.runs, tally.faults, tally.missed, tally.doubled, tally.violations.len()), (3, 2, 1, 1, 1));
        assert_eq!(tally.line(), "t: runs 3, faults injected 2, kills missed 1, kills doubled 1, residual stale-epoch calls 0, other violations 1");
    }

    #[test]
    fn jitter_varies_across_runs_within_its_range() {
        let delays: BTreeSet<Duration> = (0..5).map(|run| jitter(run, Duration::from_millis(500))).collect();
        assert_eq!(delays.len(), 5);
        assert!(delays.iter().all(|d| *d < Duration::from_millis(501)));
    }
}

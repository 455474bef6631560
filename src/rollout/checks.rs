//! A plan's external checks (`checks:` — a synthetic health check, a gate command), run in
//! their own task every [`INTERVAL`] so that a slow URL or command never stalls the pipeline;
//! the progression reads the last outcome and advances only while it is a fresh pass.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Plan;
use crate::rules::plan::{Check, CheckKind};
use crate::time::{Clock, Timestamp};
use crate::view::Snapshot;

/// How often every plan's checks run.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// An outcome older than this does not count (the checker is stuck or stopped).
pub const FRESH: Duration = Duration::from_secs(60);
// A check's timeout is at most `rules::plan::MAX_CHECK_TIMEOUT` (45 s): a round of checks
// (every plan at once, each plan's checks in turn) finishes well within `FRESH`.

/// The last outcome of each plan's checks, by plan name.
pub type CheckResults = Arc<RwLock<HashMap<String, Outcome>>>;

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// What passed, or the first that failed and how.
    pub detail: String,
    pub at: Timestamp,
}

/// Whether `plan`'s checks let it advance now: `Err` says why not.
pub fn verdict(plan: &Plan, results: &CheckResults, now: Timestamp) -> Result<(), String> {
    if plan.checks.is_empty() {
        return Ok(());
    }
    let outcome = results.read().ok().and_then(|r| r.get(&plan.name).cloned());
    match outcome {
        None => Err("checks have not run yet".into()),
        Some(o) if now.since(o.at) > FRESH => Err(format!("the last check ran {}s ago (stale): {}", now.since(o.at).as_secs(), o.detail)),
        Some(o) if !o.ok => Err(format!("check failed: {}", o.detail)),
        Some(_) => Ok(()),
    }
}

/// Runs every plan's checks until `stop`.
pub async fn run(snapshots: watch::Receiver<Arc<Snapshot>>, results: CheckResults, client: reqwest::Client, clock: Arc<dyn Clock>, stop: CancellationToken) {
    loop {
        let plans: Vec<Plan> = snapshots.borrow().rule_set.rollouts.iter().filter(|p| !p.checks.is_empty()).cloned().collect();
        // Every plan at once: one slow check delays only its own plan.
        let mut round = tokio::task::JoinSet::new();
        for plan in plans {
            let (client, clock, results) = (client.clone(), clock.clone(), results.clone());
            round.spawn(async move {
                let outcome = all(&plan.checks, &client).await;
                let outcome = Outcome { ok: outcome.is_ok(), detail: outcome.unwrap_or_else(|e| e), at: clock.now() };
                if !outcome.ok {
                    tracing::info!(plan = %plan.name, detail = %outcome.detail, "a rollout check failed; the plan holds");
                }
                if let Ok(mut r) = results.write() {
                    r.insert(plan.name.clone(), outcome);
                }
            });
        }
        while round.join_next().await.is_some() {}
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

async fn all(checks: &[Check], client: &reqwest::Client) -> Result<String, String> {
    let mut passed = Vec::new();
    for check in checks {
        one(check, client).await.map_err(|e| format!("{}: {e}", check.describe()))?;
        passed.push(check.describe());
    }
    Ok(format!("passed: {}", passed.join("; ")))
}

async fn one(check: &Check, client: &reqwest::Client) -> Result<(), String> {
    match &check.kind {
        CheckKind::Http { url, status } => {
            let answer = client.get(url).timeout(check.timeout).send().await.map_err(|e| format!("no answer: {e}"))?;
            let got = answer.status().as_u16();
            if got == *status { Ok(()) } else { Err(format!("answered {got}, expected {status}")) }
        }
        CheckKind::Command { argv } => {
            let run = tokio::process::Command::new(&argv[0]).args(&argv[1..]).kill_on_drop(true).stdin(std::process::Stdio::null()).output();
            let out = tokio::time::timeout(check.timeout, run)
                .await
                .map_err(|_| format!("did not finish within {:?}", check.timeout))?
                .map_err(|e| format!("cannot run: {e}"))?;
            if out.status.success() {
                return Ok(());
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr.trim().chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
            Err(format!("exited {}: {tail}", out.status.code().map_or("by a signal".into(), |c| c.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_passes_on_exit_0_and_fails_with_its_stderr_or_its_timeout() {
        let check = |argv: &[&str], timeout: u64| Check {
            kind: CheckKind::Command { argv: argv.iter().map(|s| (*s).to_owned()).collect() },
            timeout: Duration::from_millis(timeout),
        };
        let client = crate::app::http_client(Duration::from_secs(1), None).unwrap();
        assert!(one(&check(&["true"], 5000), &client).await.is_ok());
        let failed = one(&check(&["sh", "-c", "echo smoke test failed >&2; exit 3"], 5000), &client).await.unwrap_err();
        assert_eq!(failed, "exited 3: smoke test failed");
        assert!(one(&check(&["sleep", "5"], 100), &client).await.unwrap_err().contains("did not finish"));
        assert!(one(&check(&["/no/such/program"], 1000), &client).await.unwrap_err().contains("cannot run"));
    }
}

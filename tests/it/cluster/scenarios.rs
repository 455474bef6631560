//! Cluster mode without process faults: a leader and a warm standby decide one kill for a
//! regression and none under A/A traffic; a graceful shutdown hands the lease over in about a
//! second; one alert delivered to both replicas kills once.

use std::time::{Duration, Instant};

use super::fixture::*;
use super::history::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_decides_one_kill_for_a_regression_and_only_the_leader_calls() {
    let cluster = Cluster::new("pair regression").await;
    let (a, b, leader_epoch) = cluster.pair(Spawn::default(), Spawn::default()).await;
    send_to_all(&[&a, &b], regression(FLAG, "production")).await;
    assert!(wait_confirmed(&cluster.db, Duration::from_secs(20)).await, "the kill is confirmed; leader log:\n{}", a.log_tail(30));

    let calls = cluster.flags.kill_calls();
    let (audit, outbox) = (cluster.db.audit().await, cluster.db.outbox().await);
    let report = RunReport::check(&calls, &audit, &outbox, 0);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!((report.decisions, report.confirmations), (1, 1), "one kill_decided, one kill_confirmed");
    assert!(!calls.is_empty() && calls.iter().all(|c| epoch(c) == Some(leader_epoch)), "every call comes from the leader's epoch {leader_epoch}: {calls:#?}");
    let kills: Vec<_> = outbox.iter().filter(|r| r.kind == "kill").collect();
    assert_eq!(kills.len(), 1, "{outbox:#?}");
    assert_eq!(kills[0].state, "confirmed");
    assert!(kills[0].target.contains(FLAG), "{}", kills[0].target);
    assert!(calls.iter().all(|c| key(c) == Some(kills[0].idempotency_key.as_str())));
    // The standby stays a standby.
    let standby = b.cluster_status().await.expect("the standby answers");
    assert_eq!((standby.leader, standby.epoch, standby.holder.as_deref()), (false, Some(leader_epoch), Some("a")), "{:?}", standby.raw);
    assert_eq!(b.metric("flagguard_cluster_leader").await, Some(0.0));
    assert_eq!(a.metric("flagguard_cluster_leader").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_kills_nothing_under_a_a_traffic() {
    let cluster = Cluster::new("pair a_a").await;
    let (a, b, _) = cluster.pair(Spawn::default(), Spawn::default()).await;
    // A/A on checkout-aa in production, then a regression in staging as the positive control:
    // once that one is confirmed, the earlier A/A traffic has been judged too.
    send_to_all(&[&a, &b], a_a("checkout-aa", "production")).await;
    send_to_all(&[&a, &b], regression(FLAG, "staging")).await;
    assert!(wait_confirmed(&cluster.db, Duration::from_secs(20)).await, "the positive control is killed");
    let decisions = kill_decisions(&cluster.db.audit().await);
    assert_eq!(decisions.len(), 1, "only the control's slice is killed: {decisions:?}");
    // The rule guards the flag as a whole (no environment in its `where`), so its kill targets
    // the flag, not the staging slice: what matters is that checkout-aa is not killed.
    assert!(decisions.keys().all(|t| t.contains(FLAG) && !t.contains("checkout-aa")), "{decisions:?}");
    assert!(cluster.flags.kill_calls().iter().all(|c| c.path == format!("/v1/flags/{FLAG}")), "no call for checkout-aa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_of_the_leader_hands_over_within_two_seconds() {
    let cluster = Cluster::new("sigterm").await;
    let (a, b, first_epoch) = cluster.pair(Spawn::default(), Spawn::default()).await;
    let sent = Instant::now();
    a.terminate();
    let successor = wait_status(&b, "b to acquire after a's SIGTERM", Duration::from_secs(5), |s| s.leader && s.epoch > Some(first_epoch)).await;
    let handover = sent.elapsed();
    println!("graceful handover: {handover:?} (epoch {first_epoch} → {:?})", successor.epoch);
    assert!(handover <= Duration::from_secs(2), "handover took {handover:?}; the lease is released on shutdown, not left to expire");
    assert!(!b.logged("lease acquired").is_empty(), "b logs its acquisition");
    let exit = a.wait_exit(Duration::from_secs(10)).await.expect("a exits");
    assert!(exit.status.success(), "{}", exit.status);
    // The new leader acts.
    send_to_all(&[&b], regression(FLAG, "production")).await;
    assert!(wait_confirmed(&cluster.db, Duration::from_secs(20)).await);
    assert!(cluster.flags.kill_calls().iter().all(|c| epoch(c) == successor.epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_delivered_to_both_replicas_kills_once() {
    let mut tally = Tally::new("alert to both replicas");
    for run in 0..runs(2) {
        let cluster = Cluster::new("alert dedupe").await;
        let (a, b, _) = cluster.pair(Spawn::default(), Spawn::default()).await;
        let body = fixture("alertmanager-v4.json");
        // Run 0: both at once; later runs: the standby first, the leader after a varied delay.
        let (first, second) = if run == 0 {
            tokio::join!(a.post_alert("alertmanager", &body), b.post_alert("alertmanager", &body))
        } else {
            let first = b.post_alert("alertmanager", &body).await;
            tokio::time::sleep(jitter(run, Duration::from_millis(300))).await;
            (first, a.post_alert("alertmanager", &body).await)
        };
        let mut violations = Vec::new();
        for (replica, (status, _, reply)) in [("a", &first), ("b", &second)] {
            if *status != 200 {
                violations.push(format!("replica {replica} answered {status}: {reply}"));
            }
        }
        let confirmed = wait_confirmed(&cluster.db, Duration::from_secs(20)).await;
        let calls = cluster.flags.kill_calls();
        let mut report = RunReport::check(&calls, &cluster.db.audit().await, &cluster.db.outbox().await, 0);
        report.fault_injected = true; // the fault here is the duplicate delivery
        if !confirmed {
            violations.push("no kill_confirmed".into());
        }
        let audit = cluster.db.audit().await;
        if let Some(confirmed) = audit.iter().find(|r| r.kind == "kill_confirmed").filter(|r| r.actor != "rule:alert:checkout-burn") {
            violations.push(format!("the kill was confirmed for {}, not the alert mapping", confirmed.actor));
        }
        if calls.iter().any(|c| c.path != "/v1/flags/checkout-v2") {
            violations.push(format!("calls for other flags: {:?}", calls.iter().map(|c| &c.path).collect::<Vec<_>>()));
        }
        report.violations.extend(violations);
        tally.record(report);
    }
    tally.assert_clean();
}

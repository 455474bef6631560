//! PostgreSQL out of reach. The leader cut off by the proxy stops acting before its lease can
//! expire and a replica that reaches PostgreSQL takes over. PostgreSQL down: nobody acts, alert
//! webhooks answer 503 with `Retry-After`, and once it is back the still-breached slice fires
//! exactly once; the same through a `pg_ctl restart -m immediate` in the middle of a breach.

use std::time::{Duration, Instant};

use super::fixture::*;
use super::history::*;
use super::pg::Postgres;
use super::proxy::Proxy;

/// After PostgreSQL comes back, replicas may first have to notice and reconnect (their pool's
/// backoff): allowed on top of the takeover bound.
const RECONNECT: Duration = Duration::from_secs(2);

fn alert_body() -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/webhooks/alertmanager-v4.json", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// One run: `a` leads through the proxy, `b` reaches PostgreSQL directly; the proxy blackholes
/// (even runs) or resets (odd runs) `a`'s link after a varied delay.
async fn partition_run(run: usize) -> RunReport {
    let cluster = Cluster::new("partition").await;
    let proxy = Proxy::start(([127, 0, 0, 1], cluster.pg.port()).into()).await;
    let through_proxy = Spawn { postgres_url: Some(proxy.postgres_url(&cluster.db.url)), ..Spawn::default() };
    let (a, b, first_epoch) = cluster.pair(through_proxy, Spawn::default()).await;
    tokio::time::sleep(jitter(run, Duration::from_millis(500))).await;
    if run.is_multiple_of(2) {
        proxy.cut()
    } else {
        proxy.reset()
    }
    let cut = Instant::now();
    let mut violations = Vec::new();
    let ttl = cluster.timings.lease_ttl;
    match try_wait_status(&a, ttl, |s| !s.leader).await {
        Ok(_) => println!("partition run {run}: a stepped down {:?} after the cut", cut.elapsed()),
        Err(last) => violations.push(format!("a still led {ttl:?} after its link was cut: {last:?}")),
    }
    let bound = cluster.timings.takeover_bound();
    let new_epoch = match try_wait_status(&b, bound + Duration::from_secs(1), |s| s.leader && s.epoch > Some(first_epoch)).await {
        Ok(status) => status.epoch,
        Err(last) => {
            violations.push(format!("b did not take over: {last:?}"));
            None
        }
    };
    send_to_all(&[&a, &b], regression(FLAG, "production")).await;
    let confirmed = wait_confirmed(&cluster.db, Duration::from_secs(20)).await;
    let calls = cluster.flags.kill_calls();
    if calls.iter().any(|c| epoch(c) != new_epoch) {
        violations.push(format!("calls not from the successor's epoch {new_epoch:?}: {:?}", calls.iter().map(epoch).collect::<Vec<_>>()));
    }
    proxy.restore();
    if try_wait_status(&a, Duration::from_secs(5), |s| !s.leader && s.holder.as_deref() == Some("b")).await.is_err() {
        violations.push("a, reconnected, does not follow b".into());
    }
    let mut report = RunReport::check(&calls, &cluster.db.audit().await, &cluster.db.outbox().await, 0);
    report.fault_injected = true;
    if !confirmed {
        violations.push("no kill_confirmed".into());
    }
    report.violations.extend(violations);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_postgres_stops_acting_within_its_lease_and_the_other_takes_over() {
    let mut tally = Tally::new("leader partitioned from PostgreSQL");
    for run in 0..runs(2) {
        tally.record(partition_run(run).await);
    }
    tally.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_nobody_acts_webhooks_answer_503_and_the_breach_fires_once_it_is_back() {
    let pg = Postgres::own("outage").await;
    let cluster = Cluster::on(pg.clone(), "outage").await;
    let (a, b, _) = cluster.pair(Spawn::default(), Spawn::default()).await;
    pg.stop_immediate().await;
    let down = Instant::now();
    // Ingest and evaluation go on without the store.
    send_to_all(&[&a, &b], regression(FLAG, "production")).await;
    for replica in [&a, &b] {
        let (status, retry_after, reply) = replica.post_alert("alertmanager", &alert_body()).await;
        assert_eq!(status, 503, "replica {}: an alert that cannot be recorded is refused for a retry: {reply}", replica.instance);
        assert!(retry_after.as_deref().and_then(|s| s.parse::<u64>().ok()).is_some(), "with Retry-After in seconds: {retry_after:?}");
    }
    // Down for longer than the trace join and a few evaluations: the slice is breached now.
    let outage = Duration::from_secs(3);
    while down.elapsed() < outage {
        assert!(cluster.flags.kill_calls().is_empty(), "nobody acts while PostgreSQL is down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.flags.kill_calls().is_empty(), "nobody acts while PostgreSQL is down");

    pg.start_again().await;
    let up = Instant::now();
    assert!(wait_confirmed(&cluster.db, Duration::from_secs(20)).await, "the still-breached slice fires once PostgreSQL is back");
    let calls = cluster.flags.kill_calls();
    let bound = cluster.timings.takeover_bound() + RECONNECT;
    let (delay, _) = first_call_after(&calls, up).expect("a call after the return");
    println!("postgres outage {outage:?}: back → first call {delay:?}");
    assert!(delay <= bound, "first call {delay:?} after PostgreSQL came back (bound {bound:?})");
    let report = RunReport::check(&calls, &cluster.db.audit().await, &cluster.db.outbox().await, 0);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!((report.decisions, report.confirmations), (1, 1), "delayed, not lost, not doubled (the refused alert was not acted on)");
    drop((a, b));
    pg.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_restart_during_a_breach_delays_the_kill_but_loses_and_doubles_nothing() {
    let pg = Postgres::own("crash").await;
    let mut tally = Tally::new("PostgreSQL restart -m immediate during a breach");
    for run in 0..runs(2) {
        let cluster = Cluster::on(pg.clone(), "crash").await;
        let (a, b, _) = cluster.pair(Spawn::default(), Spawn::default()).await;
        send_to_all(&[&a, &b], regression(FLAG, "production")).await;
        // Varied: from right after the traffic (before the decision) to around the decision.
        tokio::time::sleep(jitter(run, Duration::from_millis(1500))).await;
        pg.restart_immediate().await;
        let confirmed = wait_confirmed(&cluster.db, Duration::from_secs(25)).await;
        let mut report = RunReport::check(&cluster.flags.kill_calls(), &cluster.db.audit().await, &cluster.db.outbox().await, 0);
        report.fault_injected = true;
        if !confirmed {
            report.violations.push(format!("no kill_confirmed; a's log:\n{}", a.log_tail(15)));
        }
        tally.record(report);
    }
    tally.assert_clean();
    pg.remove().await;
}

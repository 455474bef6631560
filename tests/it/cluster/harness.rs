//! The harness's own pieces, checked against what exists today: the PostgreSQL script and a
//! fresh database per test, the proxy's cut / reset / restore on a real PostgreSQL link, and
//! spawning, logging and signalling the real binary (in embedded mode).

use std::time::{Duration, Instant};

use super::fixture::{Cluster, Spawn};
use super::pg::{Postgres, connect};
use super::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_gives_each_test_an_empty_database_whose_tables_it_reads() {
    let pg = Postgres::shared().await;
    let first = pg.fresh_database("harness db").await;
    let second = pg.fresh_database("harness db").await;
    assert_ne!(first.name, second.name);
    assert!(first.try_audit().await.unwrap().is_empty(), "no schema yet reads as no records");
    let client = connect(&first.url).await.unwrap();
    // The SQLite schema's columns (src/store/migrations.rs), as the cluster store will have them.
    client
        .batch_execute(
            "CREATE TABLE audit (id bigserial PRIMARY KEY, at_ms bigint NOT NULL, actor text NOT NULL, kind text NOT NULL, rule text,
                action_id bigint, target text, before text, after jsonb, evidence text);
             CREATE TABLE outbox (id bigserial PRIMARY KEY, target text NOT NULL, kind text NOT NULL, state text NOT NULL, idempotency_key text NOT NULL);
             INSERT INTO audit (at_ms, actor, kind, action_id, target, after) VALUES (1, 'rule:crashy', 'kill_decided', 1, 'flags|f|production|', '{\"attempts\": 2}');
             INSERT INTO outbox (target, kind, state, idempotency_key) VALUES ('flags|f|production|', 'kill', 'pending', 'key-1');",
        )
        .await
        .unwrap();
    let audit = first.audit().await;
    assert_eq!((audit[0].kind.as_str(), audit[0].action_id, audit[0].after.as_ref().map(|a| a["attempts"].clone())), ("kill_decided", Some(1), Some(2.into())));
    assert_eq!(first.outbox().await[0].idempotency_key, "key-1");
    assert!(second.try_outbox().await.unwrap().is_empty(), "databases are separate");
}

/// Runs `SELECT 1` through `client`, None if it takes longer than `limit`.
async fn select_one(client: &tokio_postgres::Client, limit: Duration) -> Option<Result<i32, tokio_postgres::Error>> {
    tokio::time::timeout(limit, client.query_one("SELECT 1", &[])).await.ok().map(|r| r.map(|row| row.get(0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_proxy_blackholes_resets_and_restores_a_postgres_link() {
    let pg = Postgres::shared().await;
    let db = pg.fresh_database("harness proxy").await;
    let proxy = Proxy::start(([127, 0, 0, 1], pg.port()).into()).await;
    let through = proxy.postgres_url(&db.url);
    assert!(through.ends_with(&format!("{}/{}", proxy.addr, db.name)), "{through}");
    let client = connect(&through).await.unwrap();
    assert_eq!(select_one(&client, Duration::from_secs(5)).await.unwrap().unwrap(), 1);

    proxy.cut();
    assert!(select_one(&client, Duration::from_millis(500)).await.is_none(), "a blackholed link answers nothing, and raises nothing");
    let connecting = tokio::spawn({
        let through = through.clone();
        async move { connect(&through).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // a fault's duration, not a wait for a condition
    assert!(!connecting.is_finished(), "a new connection hangs while cut");

    proxy.restore();
    assert_eq!(select_one(&client, Duration::from_secs(5)).await.unwrap().unwrap(), 1, "the healed link carries the old connection on");
    tokio::time::timeout(Duration::from_secs(5), connecting).await.expect("the held connection completes once healed").unwrap().unwrap();

    proxy.reset();
    let failed = select_one(&client, Duration::from_secs(5)).await.expect("a reset link fails fast");
    assert!(failed.is_err(), "the connection was closed");
    assert!(connect(&through).await.is_err(), "new connections are refused while reset");
    proxy.restore();
    let again = connect(&through).await.unwrap();
    assert_eq!(select_one(&again, Duration::from_secs(5)).await.unwrap().unwrap(), 1);
    assert!(proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_script_crashes_and_restarts_a_postgres_of_the_tests_own() {
    let pg = Postgres::own("harness").await;
    let client = connect(&pg.url).await.unwrap();
    assert_eq!(select_one(&client, Duration::from_secs(5)).await.unwrap().unwrap(), 1);
    pg.restart_immediate().await;
    assert!(select_one(&client, Duration::from_secs(5)).await.unwrap().is_err(), "an immediate restart cuts every connection");
    let after_restart = connect(&pg.url).await.expect("same URL after the restart");
    assert_eq!(select_one(&after_restart, Duration::from_secs(5)).await.unwrap().unwrap(), 1);
    pg.stop_immediate().await;
    assert!(connect(&pg.url).await.is_err(), "down");
    pg.start_again().await;
    assert!(connect(&pg.url).await.is_ok(), "back on its port");
    pg.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_spawns_the_binary_reads_its_log_and_signals_it() {
    let cluster = Cluster::new("harness spawn").await;
    let embedded = Spawn { embedded: true, ..Spawn::default() };
    let replica = cluster.spawn_with("solo", embedded.clone()).await;
    assert!(replica.api.port() != 0 && replica.grpc.port() != 0 && replica.http.port() != 0);
    assert!(replica.metrics().await.is_some_and(|m| m.contains("flagguard_")), "the API answers");

    replica.pause();
    assert!(replica.metrics().await.is_none(), "a stopped process does not answer");
    replica.resume();
    assert!(replica.metrics().await.is_some(), "it answers again once continued");
    // Traffic reaches it over OTLP (the same path the cluster scenarios use).
    replica.send(super::fixture::a_a("checkout-aa", "production")).await;

    let sent = Instant::now();
    replica.terminate();
    let exit = replica.wait_exit(Duration::from_secs(15)).await.expect("SIGTERM ends it");
    assert!(exit.status.success(), "a graceful shutdown exits 0: {}", exit.status);
    assert!(exit.at >= sent);

    let second = cluster.spawn_with("solo", embedded).await;
    second.kill9();
    let exit = second.wait_exit(Duration::from_secs(5)).await.expect("SIGKILL ends it");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit.status.signal(), Some(9));
}

/// The audit and outbox rows of an embedded replica's SQLite store, in the checkers' shape.
fn sqlite_history(data_dir: &std::path::Path) -> (Vec<super::pg::AuditRow>, Vec<super::pg::OutboxRow>) {
    let db = rusqlite::Connection::open(data_dir.join("flagguard.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut audit = db.prepare("SELECT kind, actor, target, action_id, after FROM audit ORDER BY id").unwrap();
    let audit = audit
        .query_map([], |r| {
            Ok(super::pg::AuditRow {
                kind: r.get(0)?,
                actor: r.get(1)?,
                target: r.get(2)?,
                action_id: r.get(3)?,
                after: r.get::<_, Option<String>>(4)?.and_then(|t| serde_json::from_str(&t).ok()),
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut outbox = db.prepare("SELECT target, kind, state, idempotency_key FROM outbox ORDER BY id").unwrap();
    let outbox = outbox
        .query_map([], |r| Ok(super::pg::OutboxRow { target: r.get(0)?, kind: r.get(1)?, state: r.get(2)?, idempotency_key: r.get(3)? }))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (audit, outbox)
}

/// The scenarios' config, rules, traffic and alert fixture, checked on one embedded replica
/// today: the regression is killed once with one key, the A/A slice is not, the alert kills
/// its cohort; the checkers (a) and (b) hold on that real history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_traffic_rules_and_checkers_agree_with_an_embedded_replica() {
    use super::fixture::{FLAG, a_a, regression};
    use super::history::{key_violations, kill_decisions};

    let cluster = Cluster::new("harness embedded").await;
    let replica = cluster.spawn_with("solo", Spawn { embedded: true, ..Spawn::default() }).await;
    replica.send(a_a("checkout-aa", "production")).await;
    replica.send(regression(FLAG, "staging")).await;
    let data = cluster.dir.path().join("solo/data");
    let confirmed = |kind: &str| sqlite_history(&data).0.iter().any(|r| r.kind == kind);
    crate::support::wait_until("the regression's kill confirmed", Duration::from_secs(20), || confirmed("kill_confirmed")).await;

    let body = std::fs::read(format!("{}/tests/fixtures/webhooks/alertmanager-v4.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (status, _, reply) = replica.post_alert("alertmanager", &body).await;
    assert_eq!(status, 200, "{reply}");
    crate::support::wait_until("the alert's kill call", Duration::from_secs(20), || {
        cluster.flags.kill_calls().iter().any(|c| c.path == "/v1/flags/checkout-v2")
    })
    .await;
    crate::support::wait_until("both kills confirmed", Duration::from_secs(20), || {
        sqlite_history(&data).0.iter().filter(|r| r.kind == "kill_confirmed").count() == 2
    })
    .await;

    let (audit, outbox) = sqlite_history(&data);
    let decisions = kill_decisions(&audit);
    assert_eq!(decisions.len(), 2, "the staging regression and the alert, not the A/A slice: {decisions:?}");
    assert!(decisions.values().all(|n| *n == 1), "{decisions:?}");
    assert!(decisions.keys().all(|t| !t.contains("checkout-aa")), "{decisions:?}");
    let calls = cluster.flags.kill_calls();
    assert_eq!(key_violations(&calls, &outbox), Vec::<String>::new());
    let alert_kill = audit.iter().find(|r| r.kind == "kill_confirmed" && r.target.as_deref().is_some_and(|t| t.contains("checkout-v2")));
    assert_eq!(alert_kill.map(|r| r.actor.as_str()), Some("rule:alert:checkout-burn"), "the alert mapping confirms its kill");
}

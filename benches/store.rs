//! Does a slow API read stall the tick? A store with a large audit log (300,000 records), a
//! thread looping the `GET /v1/audit` filters (actor, rule, flag) as the API does, and the
//! pipeline's own store calls (controls, an audit record) timed meanwhile. Also times each
//! filter on the schema before the audit indexes (migration 8) and after (migration 9).
//!
//! `cargo bench --bench store` prints milliseconds. Before this change the API and the tick
//! shared one connection behind one mutex, so a tick call waited for whatever read held it.
//! Under `cargo test` (no `--bench` argument) it runs once on a small log, as a smoke test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flagguard::store::{AuditEntry, AuditFilter, Store};
use flagguard::time::Timestamp;

/// Records in the log: 300,000 when benchmarking, 3,000 as a smoke test.
fn records() -> usize {
    if std::env::args().any(|a| a == "--bench") { 300_000 } else { 3_000 }
}

/// One record in this many has the rare actor, rule and flag.
fn rare_every() -> usize {
    records() / 6
}

fn fill(dir: &std::path::Path, schema: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut conn = rusqlite::Connection::open(dir.join("flagguard.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    flagguard::store::migrations::migrate_to(&mut conn, schema).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx.prepare("INSERT INTO audit (at_ms, actor, kind, rule, target, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6)").unwrap();
        for i in 0..records() {
            // One rare actor, rule and flag among many frequent ones.
            let rare = i % rare_every() == 7;
            let actor = if rare { "token:rare".to_owned() } else { format!("rule:r{}", i % 40) };
            let rule = if rare { "rare".to_owned() } else { format!("r{}", i % 40) };
            let flag = if rare { "rare-flag".to_owned() } else { format!("flag-{}", i % 200) };
            let target = format!("unleash|{flag}|production|region=eu");
            let after = format!("{{\"observed\": {{\"share\": {}, \"exposures\": {}}}}}", i % 97, i);
            stmt.execute(rusqlite::params![i as i64, actor, "kill_decided", rule, target, after]).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn filters() -> Vec<(&'static str, AuditFilter)> {
    let base = AuditFilter { limit: 100, ..AuditFilter::default() };
    vec![
        ("actor", AuditFilter { actor: Some("token:rare".into()), ..base.clone() }),
        ("rule", AuditFilter { rule: Some("rare".into()), ..base.clone() }),
        ("flag", AuditFilter { flag: Some("rare-flag".into()), ..base.clone() }),
    ]
}

fn main() {
    let root = std::env::temp_dir().join(format!("flagguard-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // The filters before and after the audit indexes. Schema 8 has no `flag` column: its flag
    // filter is the old prefix test, run here as raw SQL.
    let old = root.join("schema8");
    fill(&old, 8);
    let conn = rusqlite::Connection::open(old.join("flagguard.db")).unwrap();
    for (name, sql) in [
        ("actor", "SELECT id FROM audit WHERE actor = 'token:rare' ORDER BY id DESC LIMIT 100"),
        ("rule", "SELECT id FROM audit WHERE rule = 'rare' ORDER BY id DESC LIMIT 100"),
        ("flag", "SELECT id FROM audit WHERE target = 'rare-flag' OR substr(target, instr(target, '|') + 1, 10) = 'rare-flag|' ORDER BY id DESC LIMIT 100"),
    ] {
        let times: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                let n = conn.prepare(sql).unwrap().query_map([], |r| r.get::<_, i64>(0)).unwrap().count();
                assert_eq!(n, records() / rare_every());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!("schema 8 (no audit indexes): filter {name}: median {:.2} ms", median(times));
    }
    drop(conn);
    let dir = root.join("current");
    fill(&dir, 8);
    let store = Store::open(&dir).unwrap(); // migrates to the current schema (indexes, flag column)
    for (name, f) in filters() {
        let times: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(store.audit_query(&f).unwrap().len(), records() / rare_every(), "{name}");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!("current schema: filter {name}: median {:.2} ms", median(times));
    }
    // The tick's calls while the API reads without pause: export pages of 10,000 records (the
    // largest read an operator can ask for).
    let tick_calls = |store: &Store, busy: bool| -> Vec<f64> {
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let slow = AuditFilter { limit: 10_000, after_id: Some(0), ..AuditFilter::default() };
                let mut reads = 0;
                while busy && !stop.load(Ordering::Relaxed) {
                    store.audit_query(&slow).unwrap();
                    reads += 1;
                }
                reads
            })
        };
        let mut times = Vec::new();
        let until = Instant::now() + if records() > 100_000 { Duration::from_secs(3) } else { Duration::from_millis(200) };
        while Instant::now() < until {
            let t = Instant::now();
            store.controls().unwrap();
            store.audit(&AuditEntry { at: Timestamp(1), actor: "system".into(), kind: "tick".into(), ..AuditEntry::default() }).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().unwrap();
        times.sort_by(|a, b| a.total_cmp(b));
        println!("  ({} tick calls, {reads} concurrent API reads)", times.len());
        times
    };
    let slow = AuditFilter { limit: 10_000, after_id: Some(0), ..AuditFilter::default() };
    let t = Instant::now();
    store.audit_query(&slow).unwrap();
    println!("one export page (up to 10,000 records): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    for (label, busy) in [("idle API", false), ("API reading without pause", true)] {
        let times = tick_calls(&store, busy);
        let p = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize];
        println!("tick store calls, {label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", p(0.5), p(0.99), p(1.0));
    }
    let _ = std::fs::remove_dir_all(&root);
}

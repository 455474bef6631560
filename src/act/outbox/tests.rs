//! The outbox door's model test: random sequences of producer writes (rule, alert-like and
//! operator kills, rollout changes, restores, notifications), executor outcomes (success,
//! failure), verification steps, drift, acknowledgements and crashes (the store reopened from
//! its file) drive a real file-backed store through [`Outbox`]. After every step the whole
//! outbox is read back and checked against the invariants:
//! - at most one pending action per target;
//! - no decision lost: every action a producer was told about exists, also after a crash;
//! - states only move along [`TRANSITIONS`], and every move comes with an audit record;
//! - a refused move (not in the table) writes nothing;
//! - an automatic kill is suppressed exactly when the target's newest kill is `overridden`,
//!   an operator's never is.

use std::collections::HashMap;
use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::action::{ALL, TRANSITIONS};
use crate::rules::engine::Decision;
use crate::store::Restored;

#[derive(Debug, Clone)]
enum Op {
    RuleKill(usize),
    OperatorKill(usize),
    Rollout(usize),
    /// The executor finishes the pending action at this index: call succeeded (read back?) or failed.
    Succeed(usize, bool),
    Fail(usize),
    /// A verification step of the held kill at this index, to `ALL[state]` (maybe not allowed).
    Verify(usize, usize),
    Drift(usize),
    Restore(usize),
    Acknowledge(usize),
    Notify,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4usize).prop_map(Op::RuleKill),
        1 => (0..4usize).prop_map(Op::OperatorKill),
        1 => (0..4usize).prop_map(Op::Rollout),
        4 => (0..8usize, any::<bool>()).prop_map(|(i, v)| Op::Succeed(i, v)),
        1 => (0..8usize).prop_map(Op::Fail),
        3 => (0..8usize, 0..ALL.len()).prop_map(|(i, s)| Op::Verify(i, s)),
        1 => (0..8usize).prop_map(Op::Drift),
        2 => (0..8usize).prop_map(Op::Restore),
        1 => (0..8usize).prop_map(Op::Acknowledge),
        1 => Just(Op::Notify),
        1 => Just(Op::Crash),
    ]
}

/// Two flags, each whole and in one region, in one environment.
fn target(i: usize) -> (String, Vec<(String, String)>) {
    let flag = if i.is_multiple_of(2) { "shop/checkout" } else { "search" };
    let scope = if i < 2 { vec![] } else { vec![("region".to_owned(), "eu".to_owned())] };
    (flag.to_owned(), scope)
}

fn decision(i: usize, at: Timestamp) -> Decision {
    let (flag, scope) = target(i);
    Decision {
        kind: DecisionKind::Kill,
        rule: "errors".into(),
        mode: Mode::Enforce,
        actuator: Some("flags".into()),
        flag: flag.clone(),
        treatment: vec!["on".into()],
        control: None,
        service: None,
        environment: Some("prod".into()),
        region: scope.first().map(|(_, v)| v.clone()),
        scope: scope.clone(),
        slice_key: format!("errors/{flag}/{scope:?}"),
        record: json!({ "rule": "errors" }),
        at,
        widen: false,
        auto_restore: None,
    }
}

fn operator(i: usize, kind: ActionKind) -> ActionRequest {
    let (flag, scope) = target(i);
    ActionRequest {
        treatment: vec!["on".into()],
        environment: Some("prod".into()),
        scope,
        percent: (kind == ActionKind::Rollout).then_some(25.0),
        actor: Some("token:ops".into()),
        reason: Some("model".into()),
        ..ActionRequest::new(kind, "flags", &flag)
    }
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Dir(std::env::temp_dir().join(format!("flagguard-outbox-model-{}-{n}", std::process::id())))
}

/// Every action's (state, audit records) as stored.
fn observe(store: &Store) -> HashMap<i64, (ActionState, usize, ActionRow)> {
    let rows = store.actions(10_000).unwrap();
    rows.into_iter()
        .map(|row| {
            let audited = store.timeline(row.id).unwrap().len();
            (row.id, (row.state, audited, row))
        })
        .collect()
}

#[derive(Default, Debug)]
struct Counts {
    ops: usize,
    crashes: usize,
    moves: usize,
    refused: usize,
    suppressed: usize,
}

/// Where the model's store lives: a SQLite file, or a PostgreSQL database (cluster mode); a
/// crash re-opens it.
enum Engine {
    Sqlite(Dir),
    Postgres(crate::store::PgOptions),
}

impl Engine {
    fn open(&self) -> Store {
        match self {
            Engine::Sqlite(dir) => Store::open(&dir.0).unwrap(),
            Engine::Postgres(options) => Store::open_postgres(options).unwrap(),
        }
    }
}

fn run(ops: &[Op], counts: &mut Counts) {
    run_on(&Engine::Sqlite(dir()), ops, counts)
}

fn run_on(engine: &Engine, ops: &[Op], counts: &mut Counts) {
    let mut outbox = Outbox::new(
        engine.open(),
        crate::act::notify::Routing::build(Some("http://127.0.0.1:9/notify"), &[], crate::app::http_client(std::time::Duration::from_secs(1), None).unwrap())
            .unwrap(),
    );
    let mut now = 1_000u64;
    let mut told: Vec<i64> = Vec::new();
    let mut seen = observe(outbox.store());
    for op in ops {
        now += 1_000;
        let at = Timestamp(now);
        counts.ops += 1;
        let rows: Vec<ActionRow> = {
            let mut r: Vec<ActionRow> = seen.values().map(|(_, _, row)| row.clone()).collect();
            r.sort_by_key(|r| r.id);
            r
        };
        let pending: Vec<&ActionRow> = rows.iter().filter(|r| r.state == ActionState::Pending).collect();
        let kills: Vec<&ActionRow> = rows.iter().filter(|r| r.kind == ActionKind::Kill && r.state != ActionState::Pending).collect();
        let mut expect_refused = None;
        match op {
            Op::RuleKill(i) => {
                let d = decision(*i, at);
                let newest = rows.iter().rev().find(|r| {
                    r.kind == ActionKind::Kill
                        && r.target
                            == ActionRequest {
                                environment: d.environment.clone(),
                                scope: d.scope.clone(),
                                ..ActionRequest::new(ActionKind::Kill, "flags", &d.flag)
                            }
                            .target()
                });
                let overridden = newest.is_some_and(|r| r.state == ActionState::Overridden);
                let before = outbox.store().audit_log(10_000, None, Some("kill_suppressed")).unwrap().len();
                assert!(outbox.decide(&d).unwrap().queued);
                let after = outbox.store().audit_log(10_000, None, Some("kill_suppressed")).unwrap().len();
                assert_eq!(after > before, overridden, "an automatic kill defers to a human exactly when the newest kill is overridden");
                counts.suppressed += usize::from(overridden);
            }
            Op::OperatorKill(i) => {
                let before = outbox.store().audit_log(10_000, None, Some("kill_suppressed")).unwrap().len();
                let id = outbox.operator_keyed(&operator(*i, ActionKind::Kill), None, at).unwrap().unwrap();
                told.push(id);
                assert_eq!(outbox.store().audit_log(10_000, None, Some("kill_suppressed")).unwrap().len(), before, "an operator's kill never defers");
            }
            Op::Rollout(i) => {
                if let Ok(id) = outbox.operator_keyed(&operator(*i, ActionKind::Rollout), None, at).unwrap() {
                    told.push(id);
                }
            }
            Op::Succeed(i, _) | Op::Fail(i) if !pending.is_empty() => {
                let row = pending[i % pending.len()];
                let ok = matches!(op, Op::Succeed(..));
                let state = match (ok, matches!(op, Op::Succeed(_, true))) {
                    (false, _) => ActionState::Escalated,
                    (true, true) => ActionState::Confirmed,
                    (true, false) => ActionState::Sent,
                };
                let audit = AuditEntry { at, actor: "system".into(), kind: format!("{}_{state}", row.kind), ..AuditEntry::default() };
                let restored = (ok && row.kind == ActionKind::Restore).then(|| Restored {
                    target: row.target.clone(),
                    slice_key: String::new(),
                    audit: AuditEntry { kind: "kill_restored".into(), ..audit.clone() },
                });
                let result = ok.then(|| json!({ "before": { "serving": true }, "after": {}, "request": row.request }));
                let outcome = Outcome { id: row.id, state, attempts: 1, error: None, result, audit, restored, follow_ups: vec![] };
                assert!(outbox.finish(&outcome).unwrap(), "a pending action finishes");
            }
            Op::Verify(i, s) if !kills.is_empty() => {
                let row = kills[i % kills.len()];
                let to = ALL[*s];
                let request: ActionRequest = serde_json::from_value(row.request.clone()).unwrap();
                match outbox.verified(row, &request, to, json!({}), None, Some("fallback"), at) {
                    Ok(moved) => assert!(moved, "{} → {to} is allowed and the row was current", row.state),
                    Err(StoreError::Transition { .. }) => {
                        assert!(!row.state.may_become(to));
                        expect_refused = Some(row.id);
                        counts.refused += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Drift(i) if !kills.is_empty() => {
                let row = kills[i % kills.len()];
                let request: ActionRequest = serde_json::from_value(row.request.clone()).unwrap();
                let moved = outbox.overridden(row, &request, &json!({}), at).unwrap();
                use ActionState::*;
                assert_eq!(moved, matches!(row.state, Confirmed | Drained | Recovered));
            }
            Op::Restore(i) if !kills.is_empty() => {
                let row = kills[i % kills.len()];
                if let Ok(id) = outbox.restore(row, "token:ops", None, at).unwrap() {
                    told.push(id);
                }
            }
            Op::Acknowledge(i) if !kills.is_empty() => {
                let row = kills[i % kills.len()];
                let moved = outbox.acknowledge_drift(row, "token:ops", None, at).unwrap();
                assert_eq!(moved, row.state == ActionState::Overridden);
            }
            Op::Notify => {
                assert!(outbox.notify(&Note::new(Severity::Info, "hello", &json!({}), None), at).unwrap());
            }
            Op::Crash => {
                counts.crashes += 1;
                drop(outbox);
                outbox = Outbox::new(
                    engine.open(),
                    crate::act::notify::Routing::build(
                        Some("http://127.0.0.1:9/notify"),
                        &[],
                        crate::app::http_client(std::time::Duration::from_secs(1), None).unwrap(),
                    )
                    .unwrap(),
                );
            }
            _ => {}
        }
        let now_seen = observe(outbox.store());
        // No decision lost.
        for id in &told {
            assert!(now_seen.contains_key(id), "action {id} was acknowledged to its producer and is gone");
        }
        for (id, (state, audited, _)) in &now_seen {
            match seen.get(id) {
                None => assert!(*audited >= 1, "a new action {id} carries its decision record"),
                Some((old, old_audited, _)) if old != state => {
                    assert!(old.may_become(*state), "action {id}: {old} → {state} is not in the table");
                    assert!(audited > old_audited, "action {id}: {old} → {state} was not audited");
                    counts.moves += 1;
                }
                Some((_, old_audited, _)) if expect_refused == Some(*id) => assert_eq!(audited, old_audited, "a refused move writes nothing"),
                Some(_) => {}
            }
        }
        // One pending action per target.
        let mut open: HashMap<&str, i64> = HashMap::new();
        for (id, (state, _, row)) in &now_seen {
            if *state == ActionState::Pending
                && let Some(other) = open.insert(row.target.as_str(), *id)
            {
                panic!("actions {other} and {id} are both pending for {}", row.target);
            }
        }
        seen = now_seen;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn the_outbox_holds_its_invariants_through_any_sequence(ops in proptest::collection::vec(op(), 1..40)) {
        let mut counts = Counts::default();
        run(&ops, &mut counts);
        // Counted for the record (run with --nocapture): how much each case exercised.
        println!("outbox model: {counts:?}");
    }
}

proptest! {
    // The same model on PostgreSQL: one dialect, the same invariants (fewer cases: each
    // creates a database).
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn the_outbox_holds_its_invariants_on_postgres_too(ops in proptest::collection::vec(op(), 1..40)) {
        let mut counts = Counts::default();
        run_on(&Engine::Postgres(crate::store::test_pg::database("model")), &ops, &mut counts);
        println!("outbox model on postgres: {counts:?}");
    }
}

#[test]
fn the_table_reaches_every_state_from_pending() {
    let mut reached = vec![ActionState::Pending];
    let mut i = 0;
    while i < reached.len() {
        for (from, to) in TRANSITIONS {
            if *from == reached[i] && !reached.contains(to) {
                reached.push(*to);
            }
        }
        i += 1;
    }
    assert_eq!(reached.len(), ALL.len(), "every state is reachable: {reached:?}");
}

#[test]
fn a_fallback_kill_is_as_automatic_as_the_kill_it_replaces() {
    let audit = AuditEntry::default();
    let rule = ActionRequest { rule: "errors".into(), ..ActionRequest::new(ActionKind::Kill, "flags", "f") };
    let by_hand = ActionRequest { actor: Some("token:ops".into()), ..rule.clone() };
    assert!(fallback_kill(&rule, "backup", 1, &audit, Timestamp(1)).automatic, "a rule's fallback defers to a human override");
    assert!(!fallback_kill(&by_hand, "backup", 1, &audit, Timestamp(1)).automatic, "an operator's goes out");
    assert!(!notification("notify", &Note::new(Severity::Info, "t", &json!({}), None), Timestamp(1)).automatic);
}

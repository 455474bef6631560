use super::*;
use serde_json::json;

/// The outbox's producers, as the tests drive them: a rule's or an alert's kill is automatic
/// (it defers to a human's override), anyone else's is not.
trait Put {
    fn put(&self, target: &str, kind: &str, request: &serde_json::Value, key: &str, slice: &str, audit: &AuditEntry) -> Result<Submitted, StoreError>;
    fn put_operator(&self, target: &str, kind: &str, request: &serde_json::Value, key: &str, audit: &AuditEntry) -> Result<Result<i64, Refused>, StoreError>;
}

fn kind(column: &str) -> ActionKind {
    kind_of(column).expect("a known kind")
}

impl Put for Store {
    fn put(&self, target: &str, k: &str, request: &serde_json::Value, key: &str, slice: &str, audit: &AuditEntry) -> Result<Submitted, StoreError> {
        let automatic = audit.actor.starts_with("rule:") || audit.actor.starts_with("alert:");
        self.submit(&NewAction { target, kind: kind(k), request, idempotency_key: key, slice_key: slice, automatic, audit })
    }

    fn put_operator(&self, target: &str, k: &str, request: &serde_json::Value, key: &str, audit: &AuditEntry) -> Result<Result<i64, Refused>, StoreError> {
        self.submit_operator(&NewAction { target, kind: kind(k), request, idempotency_key: key, slice_key: "", automatic: false, audit })
    }
}

thread_local! {
    /// Set while [`the_store_tests_pass_on_postgres`] runs the tests again on PostgreSQL.
    static ON_POSTGRES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A fresh store: in memory, or a database of its own on the test PostgreSQL.
fn new_store() -> Store {
    if ON_POSTGRES.get() { Store::open_postgres(&super::test_pg::database("store")).unwrap() } else { Store::in_memory().unwrap() }
}

/// Every store test written against a fresh store, again on PostgreSQL (cluster mode): the
/// statements are shared, so must be the behaviour.
#[test]
fn the_store_tests_pass_on_postgres() {
    ON_POSTGRES.set(true);
    let tests: &[(&str, fn())] = &[
        ("a_flags_kills_are_found_past_any_number_of_notifications", a_flags_kills_are_found_past_any_number_of_notifications),
        (
            "a_kill_supersedes_a_pending_restore_and_only_automatic_kills_defer_to_drift",
            a_kill_supersedes_a_pending_restore_and_only_automatic_kills_defer_to_drift,
        ),
        ("a_kill_supersedes_pending_rollouts_and_rollouts_wait_for_a_restore", a_kill_supersedes_pending_rollouts_and_rollouts_wait_for_a_restore),
        ("a_plan_state_is_not_overwritten_after_an_operators_change", a_plan_state_is_not_overwritten_after_an_operators_change),
        ("a_second_kill_inherits_only_from_a_kill_that_reached_the_flag_system", a_second_kill_inherits_only_from_a_kill_that_reached_the_flag_system),
        ("audit_filters_page_forward_and_retention_prunes_with_a_record", audit_filters_page_forward_and_retention_prunes_with_a_record),
        ("drained_kills_stop_being_watched_after_a_while_but_undrained_ones_do_not", drained_kills_stop_being_watched_after_a_while_but_undrained_ones_do_not),
        ("finishing_is_audited_once", finishing_is_audited_once),
        ("held_slices_survive_in_rule_state", held_slices_survive_in_rule_state),
        ("kills_since_reads_back_each_kills_rule_and_slice", kills_since_reads_back_each_kills_rule_and_slice),
        ("one_pending_action_per_target_and_triggers_join", one_pending_action_per_target_and_triggers_join),
        ("reschedule_and_due", reschedule_and_due),
        ("targets_are_canonical_and_the_rollout_guard_sees_a_per_environment_kill", targets_are_canonical_and_the_rollout_guard_sees_a_per_environment_kill),
        (
            "transitions_happen_once_from_the_expected_state_and_drift_suppresses_kills",
            transitions_happen_once_from_the_expected_state_and_drift_suppresses_kills,
        ),
    ];
    for (name, test) in tests {
        eprintln!("on postgres: {name}");
        test();
    }
}

fn decided(at: u64) -> AuditEntry {
    AuditEntry {
        at: Timestamp(at),
        actor: "rule:r".into(),
        kind: "kill_decided".into(),
        rule: Some("r".into()),
        target: Some("t".into()),
        evidence: Some(json!({"x": 1})),
        ..AuditEntry::default()
    }
}

#[test]
fn one_pending_action_per_target_and_triggers_join() {
    let store = new_store();
    let a = store.put("t", "kill", &json!({}), "k1", "r/f", &decided(1)).unwrap();
    let b = store.put("t", "kill", &json!({}), "k2", "r/f", &decided(2)).unwrap();
    let Submitted::New(id) = a else { panic!("first is new") };
    assert_eq!(b, Submitted::Joined(id));
    let row = store.action(id).unwrap().unwrap();
    assert_eq!((row.triggers, row.state.as_str(), row.idempotency_key.as_str()), (2, "pending", "k1"));
    let other = store.put("t2", "kill", &json!({}), "k3", "r/g", &decided(3)).unwrap();
    assert!(matches!(other, Submitted::New(_)));
    assert_eq!(store.last_fired().unwrap()["r/f"].at, Timestamp(2));
}

#[test]
fn finishing_is_audited_once() {
    let store = new_store();
    let Submitted::New(id) = store.put("t", "kill", &json!({}), "k", "s", &decided(1)).unwrap() else { panic!() };
    let confirmed = AuditEntry { kind: "kill_confirmed".into(), action_id: Some(id), ..decided(5) };
    store.finish(id, ActionState::Confirmed, 1, None, None, &confirmed).unwrap();
    store.finish(id, ActionState::Confirmed, 1, None, None, &confirmed).unwrap();
    let log = store.audit_log(10, None, Some("kill_confirmed")).unwrap();
    assert_eq!(log.len(), 1);
    assert!(store.due(Timestamp(100)).unwrap().is_empty());
    // After a terminal state, a new trigger opens a new action.
    assert!(matches!(store.put("t", "kill", &json!({}), "k9", "s", &decided(6)).unwrap(), Submitted::New(n) if n != id));
}

#[test]
fn reschedule_and_due() {
    let store = new_store();
    let Submitted::New(id) = store.put("t", "kill", &json!({"a": 1}), "k", "s", &decided(1)).unwrap() else { panic!() };
    assert_eq!(store.due(Timestamp(1)).unwrap().len(), 1);
    store.reschedule(id, 1, Timestamp(500), "503", Timestamp(2)).unwrap();
    assert!(store.due(Timestamp(499)).unwrap().is_empty());
    assert_eq!(store.next_due().unwrap(), Some(Timestamp(500)));
    let due = store.due(Timestamp(500)).unwrap();
    assert_eq!((due[0].attempts, due[0].last_error.as_deref(), &due[0].request), (1, Some("503"), &json!({"a": 1})));
}

#[test]
fn reopening_keeps_everything_and_pagination_works() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            store.audit(&AuditEntry { at: Timestamp(i), actor: "system".into(), kind: "k".into(), ..AuditEntry::default() }).unwrap();
        }
        store.put("t", "kill", &json!({}), "k", "s", &decided(9)).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let first = store.audit_log(3, None, None).unwrap();
    assert_eq!(first.len(), 3);
    let rest = store.audit_log(10, Some(first[2].id), None).unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(store.pending_count().unwrap(), 1);
}

#[test]
fn a_kill_supersedes_pending_rollouts_and_rollouts_wait_for_a_restore() {
    let store = new_store();
    let rollout = store.put_operator("u|f|production|", "rollout", &json!({}), "r1", &decided(1)).unwrap().unwrap();
    let other_env = store.put_operator("u|f|staging|", "rollout", &json!({}), "r2", &decided(1)).unwrap().unwrap();
    assert!(store.put_operator("u|f|production|", "rollout", &json!({}), "r3", &decided(2)).unwrap().is_err(), "one pending per target");
    let Submitted::New(kill) = store.put("u|f|production|", "kill", &json!({}), "k", "s", &decided(3)).unwrap() else { panic!() };
    assert_eq!(store.action(rollout).unwrap().unwrap().state, "superseded");
    assert_eq!(store.action(other_env).unwrap().unwrap().state, "pending", "another environment is untouched");
    assert_eq!(store.audit_log(10, None, Some("rollout_superseded")).unwrap().len(), 1);
    let refused = store.put_operator("u|f|production|region=eu", "rollout", &json!({}), "r4", &decided(4)).unwrap();
    assert!(matches!(refused, Err(Refused::Killed { .. })), "no rollout change while the flag is killed");
    // A kill of one region blocks and supersedes only that region's rollout changes.
    store.put("u|g|production|region=eu", "kill", &json!({}), "k5", "s5", &decided(5)).unwrap();
    assert!(store.put_operator("u|g|production|region=us", "rollout", &json!({}), "r6", &decided(6)).unwrap().is_ok());
    assert!(store.put_operator("u|g|production|region=eu", "rollout", &json!({}), "r7", &decided(7)).unwrap().is_err());
    store.finish(kill, ActionState::Confirmed, 1, None, Some(&json!({"before": {"enabled": true}})), &decided(5)).unwrap();
    assert_eq!(store.action(kill).unwrap().unwrap().result.unwrap()["before"]["enabled"], true);
}

#[test]
fn transitions_happen_once_from_the_expected_state_and_drift_suppresses_kills() {
    let store = new_store();
    let Submitted::New(kill) = store.put("t", "kill", &json!({}), "k", "s", &decided(1)).unwrap() else { panic!() };
    assert!(!store.transition(kill, &[ActionState::Confirmed], ActionState::Drained, None, &decided(2)).unwrap(), "still pending");
    store.finish(kill, ActionState::Confirmed, 1, None, None, &decided(2)).unwrap();
    assert_eq!(store.watched_kills(Timestamp(0)).unwrap().len(), 1);
    assert!(store.transition(kill, &[ActionState::Confirmed], ActionState::Overridden, Some("re-enabled"), &decided(3)).unwrap());
    assert!(!store.transition(kill, &[ActionState::Confirmed], ActionState::Overridden, None, &decided(3)).unwrap(), "audited once");
    assert!(store.watched_kills(Timestamp(0)).unwrap().is_empty());
    assert_eq!(store.put("t", "kill", &json!({}), "k2", "s", &decided(4)).unwrap(), Submitted::Suppressed(kill), "never fight a human");
    assert!(store.transition(kill, &[ActionState::Overridden], ActionState::Restored, None, &decided(5)).unwrap());
    assert!(matches!(store.put("t", "kill", &json!({}), "k3", "s", &decided(6)).unwrap(), Submitted::New(_)), "re-armed after acknowledgement");
    let timeline: Vec<String> = store.timeline(kill).unwrap().into_iter().map(|r| r.kind).collect();
    assert_eq!(timeline, ["kill_decided", "kill_decided", "kill_decided", "kill_suppressed", "kill_decided"]);
}

#[test]
fn drained_kills_stop_being_watched_after_a_while_but_undrained_ones_do_not() {
    let store = new_store();
    let Submitted::New(a) = store.put("a", "kill", &json!({}), "k", "s", &decided(1)).unwrap() else { panic!() };
    let Submitted::New(b) = store.put("b", "kill", &json!({}), "k2", "s2", &decided(1)).unwrap() else { panic!() };
    store.finish(a, ActionState::Confirmed, 1, None, None, &decided(10)).unwrap();
    store.finish(b, ActionState::Confirmed, 1, None, None, &decided(10)).unwrap();
    assert!(store.transition(b, &[ActionState::Confirmed], ActionState::Drained, None, &decided(20)).unwrap());
    let ids = |since| store.watched_kills(Timestamp(since)).unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(0), vec![a, b]);
    assert_eq!(ids(21), vec![a], "drained before `since`: no longer watched; confirmed still is");
}

#[test]
fn a_kill_supersedes_a_pending_restore_and_only_automatic_kills_defer_to_drift() {
    let store = new_store();
    let restore = store.put_operator("t", "restore", &json!({}), "r", &decided(1)).unwrap().unwrap();
    let Submitted::New(kill) = store.put("t", "kill", &json!({}), "k", "s", &decided(2)).unwrap() else { panic!("a new kill, not joined to the restore") };
    assert_eq!(store.action(restore).unwrap().unwrap().state, "superseded");
    store.finish(kill, ActionState::Confirmed, 1, None, Some(&json!({"before": {}})), &decided(3)).unwrap();
    assert!(store.transition(kill, &[ActionState::Confirmed], ActionState::Overridden, None, &decided(4)).unwrap());
    assert!(matches!(store.put("t", "kill", &json!({}), "k2", "s", &decided(5)).unwrap(), Submitted::Suppressed(_)), "a rule defers");
    let operator = AuditEntry { actor: "token:alice".into(), ..decided(6) };
    assert!(matches!(store.put("t", "kill", &json!({}), "k3", "s", &operator).unwrap(), Submitted::New(_)), "an operator's kill goes out");
}

#[test]
fn audit_filters_page_forward_and_retention_prunes_with_a_record() {
    let store = new_store();
    for (i, (actor, target)) in
        [("token:alice", "flags|checkout|production|"), ("rule:r", "flags|search|production|"), ("token:alice", "flags|search|staging|")].iter().enumerate()
    {
        store
            .audit(&AuditEntry {
                at: Timestamp(1_000 * (i as u64 + 1)),
                actor: (*actor).into(),
                kind: "k".into(),
                target: Some((*target).into()),
                ..AuditEntry::default()
            })
            .unwrap();
    }
    let q = |f: AuditFilter| store.audit_query(&AuditFilter { limit: 10, ..f }).unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(q(AuditFilter { actor: Some("token:alice".into()), ..AuditFilter::default() }), vec![3, 1], "newest first");
    assert_eq!(q(AuditFilter { flag: Some("search".into()), ..AuditFilter::default() }), vec![3, 2]);
    assert_eq!(q(AuditFilter { flag: Some("sear".into()), ..AuditFilter::default() }), Vec::<i64>::new(), "a whole flag key, not a prefix");
    assert_eq!(q(AuditFilter { flag: Some("production".into()), ..AuditFilter::default() }), Vec::<i64>::new(), "the flag segment, not the environment");
    store
        .audit(&AuditEntry {
            at: Timestamp(3_500),
            actor: "token:bob".into(),
            kind: "flag_listed".into(),
            target: Some("checkout".into()),
            ..AuditEntry::default()
        })
        .unwrap();
    assert_eq!(q(AuditFilter { flag: Some("checkout".into()), ..AuditFilter::default() }), vec![4, 1], "control changes name the bare flag");
    assert_eq!(q(AuditFilter { after_id: Some(1), ..AuditFilter::default() }), vec![2, 3, 4], "oldest first after an id");
    assert_eq!(q(AuditFilter { since: Some(Timestamp(2_000)), until: Some(Timestamp(3_000)), ..AuditFilter::default() }), vec![2]);

    assert_eq!(store.prune_audit(Timestamp(2_500), Timestamp(10_000)).unwrap(), 2);
    let left = store.audit_log(10, None, None).unwrap();
    assert_eq!(left.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(), vec!["audit_pruned", "flag_listed", "k"]);
    assert_eq!(left[0].after.as_ref().unwrap()["deleted"], 2);
    assert_eq!(store.prune_audit(Timestamp(2_500), Timestamp(11_000)).unwrap(), 0, "nothing more, and no record of nothing");
}

#[test]
fn a_backup_is_a_consistent_copy_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put("t", "kill", &json!({}), "k1", "r/f", &decided(1)).unwrap();
    let out = dir.path().join("backup.db");
    store.backup(&out).unwrap();
    let copy = Store::init(Connection::open(&out).unwrap()).unwrap();
    assert_eq!(copy.actions(10).unwrap().len(), 1);
    assert_eq!(copy.audit_log(10, None, None).unwrap()[0].kind, "kill_decided");
    assert!(store.backup(&out).is_err(), "never overwrites");
}

fn kill_request(scope: &[(&str, &str)], env: Option<&str>) -> crate::act::ActionRequest {
    crate::act::ActionRequest {
        environment: env.map(str::to_owned),
        scope: scope.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        treatment: vec!["on".into()],
        ..crate::act::ActionRequest::new(crate::act::ActionKind::Kill, "flagd", "f")
    }
}

/// Review finding 4: targets are canonical — the environment only in its field, the slice
/// sorted — so the kill/rollout guard and "one action per target" see the same object.
#[test]
fn targets_are_canonical_and_the_rollout_guard_sees_a_per_environment_kill() {
    let per_env = kill_request(&[("environment", "production")], Some("production"));
    let plain = kill_request(&[], Some("production"));
    assert_eq!(per_env.target(), plain.target());
    assert_eq!(per_env.target(), "flagd|f|production|");
    let a = kill_request(&[("region", "eu"), ("service", "api")], Some("production"));
    let b = kill_request(&[("service", "api"), ("region", "eu")], Some("production"));
    assert_eq!(a.target(), b.target());
    assert_eq!(kill_request(&[("environment", "staging")], None).target(), "flagd|f|staging|");
    assert_eq!(target_of_json(&serde_json::to_value(&a).unwrap()), Some(a.target()));

    let store = new_store();
    let Submitted::New(kill) = store.put(&per_env.target(), "kill", &serde_json::to_value(&per_env).unwrap(), "k", "r/f", &decided(1)).unwrap() else {
        panic!()
    };
    store.finish(kill, ActionState::Confirmed, 1, None, Some(&json!({"before": {"serving": true}})), &decided(2)).unwrap();
    let rollout = crate::act::ActionRequest { kind: crate::act::ActionKind::Rollout, percent: Some(50.0), ..plain };
    let refused = store.put_operator(&rollout.target(), "rollout", &serde_json::to_value(&rollout).unwrap(), "k2", &decided(3)).unwrap();
    assert!(refused.unwrap_err().to_string().contains("the flag is killed"));
}

/// Migration 8 re-derives stored targets: an outbox written in the old form (per order,
/// environment in the scope) is canonical after the upgrade.
#[test]
fn migration_makes_old_targets_canonical() {
    let dir = tempfile::tempdir().unwrap();
    let request = kill_request(&[("service", "api"), ("environment", "production"), ("region", "eu")], Some("production"));
    {
        let mut conn = Connection::open(dir.path().join("flagguard.db")).unwrap();
        migrations::migrate_to(&mut conn, 7).unwrap();
        conn.execute(
            "INSERT INTO outbox (created_ms, target, kind, state, request, next_attempt_ms, updated_ms, idempotency_key) VALUES (1, ?1, 'kill', 'confirmed', ?2, 1, 1, 'k')",
            params!["flagd|f|production|service=api,environment=production,region=eu", serde_json::to_value(&request).unwrap().to_string()],
        )
        .unwrap();
        conn.execute("INSERT INTO rule_state (slice, last_fired_ms) VALUES ('notify/x', 1), ('r/f', 1)", []).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.actions(10).unwrap()[0].target, "flagd|f|production|region=eu,service=api");
    assert_eq!(store.last_fired().unwrap().keys().collect::<Vec<_>>(), vec!["r/f"], "notification rows are gone");
}

/// Review finding 14: restoring by flag finds its kill however many rows came after it, and
/// notifications, manual and fallback kills leave no rule state behind.
#[test]
fn a_flags_kills_are_found_past_any_number_of_notifications() {
    let store = new_store();
    let request = kill_request(&[], Some("production"));
    let Submitted::New(kill) = store.put(&request.target(), "kill", &serde_json::to_value(&request).unwrap(), "k", "", &decided(1)).unwrap() else { panic!() };
    for i in 0..1001 {
        crate::act::outbox::Outbox::new(
            store.clone(),
            crate::act::notify::Routing::build(
                Some("http://127.0.0.1:9/notify"),
                &[],
                crate::app::http_client(std::time::Duration::from_secs(1), None).unwrap(),
            )
            .unwrap(),
        )
        .notify(&crate::act::notify::Note::new(crate::act::notify::Severity::Info, &format!("n{i}"), &json!({}), None), Timestamp(10 + i))
        .unwrap();
    }
    let kills = store.flag_kills("f").unwrap();
    assert_eq!(kills.iter().map(|r| r.id).collect::<Vec<_>>(), vec![kill]);
    assert!(store.last_fired().unwrap().is_empty(), "no rule state for notifications or manual kills");
}

/// Review finding 13: a held kill's slice is stored as held, with its rule and flag.
#[test]
fn held_slices_survive_in_rule_state() {
    let store = new_store();
    store.record_fired(&Fired { slice: "r/f/region=eu", rule: "r", flag: "f", held: true }, Timestamp(1), &decided(1)).unwrap();
    store.record_fired(&Fired { slice: "r/g", rule: "r", flag: "g", held: false }, Timestamp(1), &decided(1)).unwrap();
    assert_eq!(store.held_slices().unwrap(), vec![("r/f/region=eu".to_owned(), "f".to_owned(), "r".to_owned())]);
    assert_eq!(store.last_fired().unwrap()["r/f/region=eu"].flag.as_deref(), Some("f"));
}

/// Review S1: the pipeline writes a plan's state only if it is still what it read, so an
/// operator's abort in between is not overwritten by the plan's next step.
#[test]
fn a_plan_state_is_not_overwritten_after_an_operators_change() {
    let store = new_store();
    let read = json!({"status": "running", "step": 0});
    store.save_plan("p", &read, None).unwrap();
    store.save_plan("p", &json!({"status": "aborted"}), Some(&decided(2))).unwrap();
    assert!(!store.save_plan_if("p", Some(&read), &json!({"status": "running", "step": 1}), None).unwrap());
    assert_eq!(store.plan_state("p").unwrap().unwrap()["status"], "aborted");
    assert!(store.save_plan_if("p", Some(&json!({"status": "aborted"})), &json!({"status": "aborted", "x": 1}), None).unwrap());
    assert!(store.save_plan_if("new", None, &read, None).unwrap());
}

/// Review finding 1(c): a second kill inherits what the kill still holding the target saved —
/// only from a kill whose call succeeded (one that never reached the flag system holds nothing).
#[test]
fn a_second_kill_inherits_only_from_a_kill_that_reached_the_flag_system() {
    let store = new_store();
    let request = kill_request(&[], Some("production"));
    let target = request.target();
    let value = serde_json::to_value(&request).unwrap();
    let Submitted::New(a) = store.put(&target, "kill", &value, "ka", "", &decided(1)).unwrap() else { panic!() };
    store.save_snapshot(a, &json!({"serving": true, "on": true})).unwrap();
    store.finish(a, ActionState::Escalated, 1, Some("403"), None, &decided(2)).unwrap();
    assert_eq!(store.holding_before(&target, a + 1).unwrap(), None, "never reached the flag system");
    let Submitted::New(b) = store.put(&target, "kill", &value, "kb", "", &decided(3)).unwrap() else { panic!() };
    store.save_snapshot(b, &json!({"serving": true, "on": true})).unwrap();
    store.save_snapshot(b, &json!({"serving": false})).unwrap();
    store.finish(b, ActionState::Confirmed, 1, None, Some(&json!({"before": {"serving": true, "on": true}})), &decided(4)).unwrap();
    assert_eq!(store.action(b).unwrap().unwrap().saved, Some(json!({"serving": true, "on": true})), "saved once, never replaced");
    assert_eq!(store.holding_before(&target, b + 1).unwrap(), Some(json!({"serving": true, "on": true})));
}

/// The pipeline's store calls never wait behind an API read: the API reads through a
/// connection of its own (WAL), so with that reader busy — here: held — the tick's reads and
/// writes still complete, and the reader then sees what they wrote.
#[test]
fn the_tick_never_waits_behind_an_api_read() {
    let dir = std::env::temp_dir().join(format!("flagguard-reader-{}", std::process::id()));
    let store = Store::open(&dir).unwrap();
    let busy = store.reader.lock().unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let tick = store.clone();
    std::thread::spawn(move || {
        let calls = (|| -> Result<(), StoreError> {
            tick.controls()?;
            tick.watched_kills(Timestamp(0))?;
            tick.put("a|f|prod|", "kill", &json!({}), "k", "r/f", &decided(1))?;
            tick.audit(&decided(2))?;
            Ok(())
        })();
        let _ = done.send(calls);
    });
    let answered = finished.recv_timeout(std::time::Duration::from_secs(30));
    drop(busy);
    assert!(matches!(answered, Ok(Ok(()))), "the tick's store calls waited behind the API's reader: {answered:?}");
    assert_eq!(store.actions(10).unwrap().len(), 1, "the API's reader sees the tick's writes");
    assert!(!store.audit_query(&AuditFilter { limit: 10, rule: Some("r".into()), ..AuditFilter::default() }).unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Migration 9 fills in the flag of audit records written before it, so the indexed flag
/// filter finds old records as the prefix test did.
#[test]
fn old_audit_records_are_found_by_flag_after_the_migration() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    migrations::migrate_to(&mut conn, 8).unwrap();
    for target in ["u|shop/checkout|prod|region=eu", "u|shop/checkout|*|", "u|shop|prod|", "plan-key"] {
        conn.execute("INSERT INTO audit (at_ms, actor, kind, target) VALUES (1, 'rule:r', 'kill_decided', ?1)", [target]).unwrap();
    }
    migrations::migrate(&mut conn).unwrap();
    let store = Store::init(conn).unwrap();
    let by = |flag: &str| store.audit_query(&AuditFilter { limit: 10, flag: Some(flag.into()), ..AuditFilter::default() }).unwrap().len();
    assert_eq!((by("shop/checkout"), by("shop"), by("plan-key"), by("u")), (2, 1, 1, 0));
}

#[test]
fn kills_since_reads_back_each_kills_rule_and_slice() {
    let store = new_store();
    for (i, rule) in ["a", "alert:x"].iter().enumerate() {
        let request = json!({ "kind": "kill", "actuator": "flags", "flag": format!("f{i}"), "rule": rule, "service": "payments", "environment": "prod" });
        let audit = AuditEntry { at: Timestamp(1_000 + i as u64), actor: format!("rule:{rule}"), kind: "kill_decided".into(), ..AuditEntry::default() };
        store.put(&format!("flags|f{i}|prod|"), "kill", &request, &format!("k{i}"), &format!("{rule}/f{i}"), &audit).unwrap();
    }
    let kills = store.kills_since(Timestamp(0)).unwrap();
    let read: Vec<_> = kills.iter().map(|k| (k.rule.as_str(), k.flag.as_str(), k.service.as_deref(), k.environment.as_deref())).collect();
    assert_eq!(read, vec![("a", "f0", Some("payments"), Some("prod")), ("alert:x", "f1", Some("payments"), Some("prod"))]);
    assert_eq!(store.kills_since(Timestamp(1_001)).unwrap().len(), 1, "only those decided since");
}

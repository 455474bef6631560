//! Numbered schema migrations, applied in order inside one transaction each; the applied
//! count is SQLite's `user_version`.

use rusqlite::Connection;

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: audit log, outbox, rule state.
    "CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        kind TEXT NOT NULL,
        rule TEXT,
        action_id INTEGER,
        target TEXT,
        before TEXT,
        after TEXT,
        evidence TEXT
    );
    CREATE INDEX audit_kind ON audit(kind, id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_ms INTEGER NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        request TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT,
        triggers INTEGER NOT NULL DEFAULT 1,
        updated_ms INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL
    );
    CREATE UNIQUE INDEX outbox_one_pending_per_target ON outbox(target) WHERE state = 'pending';
    CREATE INDEX outbox_due ON outbox(state, next_attempt_ms);
    CREATE TABLE rule_state (
        slice TEXT PRIMARY KEY,
        last_fired_ms INTEGER NOT NULL
    );",
    // 2: alert deliveries, for dedupe across re-sends and retries.
    "CREATE TABLE alert_deliveries (
        source TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        status TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        deliveries INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (source, dedup_key, status)
    );
    CREATE INDEX alert_deliveries_age ON alert_deliveries(last_ms);",
    // 3: verified actions: what the flag system answered (`result`, e.g. the state a restore
    // returns to) and when the action entered its current state (drain deadlines).
    "ALTER TABLE outbox ADD COLUMN result TEXT;
    ALTER TABLE outbox ADD COLUMN state_ms INTEGER NOT NULL DEFAULT 0;
    UPDATE outbox SET state_ms = updated_ms;
    CREATE INDEX outbox_state ON outbox(kind, state);",
    // 4: rollout plan instances (JSON state, see `rollout::PlanState`).
    "CREATE TABLE rollouts (
        key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );",
    // 5: when each flag variant was first and last evaluated (flag hygiene).
    "CREATE TABLE flag_usage (
        flag TEXT NOT NULL,
        variant TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        PRIMARY KEY (flag, variant)
    );",
    // 6: operator controls over automatic actions (one JSON document, see `controls::Controls`).
    "CREATE TABLE controls (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );",
    // 7: audit retention and time filters look records up by time.
    "CREATE INDEX audit_at ON audit (at_ms);",
    // 8: a kill's state before its first call (`saved`, what its restore returns to, written
    // before the call so a lost answer or a crash cannot replace it with the killed state);
    // rule state says whose cooldown it is (`rule`, `flag`: no parsing of keys) and whether an
    // operator control held the kill (`held`: re-armed when the control is lifted, also after
    // a restart); rows that were never cooldowns (notifications, manual and fallback kills)
    // go; alert dedupe expires by `first_ms`. Targets are re-derived in their canonical form ([`canonical_targets`]).
    "ALTER TABLE outbox ADD COLUMN saved TEXT;
    ALTER TABLE rule_state ADD COLUMN rule TEXT;
    ALTER TABLE rule_state ADD COLUMN flag TEXT;
    ALTER TABLE rule_state ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    DELETE FROM rule_state WHERE slice = '' OR slice LIKE 'notify/%' OR slice LIKE 'manual/%' OR slice LIKE 'fallback/%';
    CREATE INDEX outbox_kill_flag ON outbox(kind, json_extract(request, '$.flag'));
    CREATE INDEX alert_deliveries_first ON alert_deliveries(first_ms);",
    // 9: the audit filters of `GET /v1/audit` (actor, rule, flag) and action timelines served
    // by indexes instead of a scan of the whole log: a record's flag is stored in its own
    // column (the middle part of an action target `actuator|flag|environment|slice`, filled in
    // for existing records).
    "ALTER TABLE audit ADD COLUMN flag TEXT;
    UPDATE audit SET flag = substr(substr(target, instr(target, '|') + 1), 1, instr(substr(target, instr(target, '|') + 1), '|') - 1)
        WHERE instr(substr(target, instr(target, '|') + 1), '|') > 0;
    CREATE INDEX audit_actor ON audit(actor, id);
    CREATE INDEX audit_rule ON audit(rule, id);
    CREATE INDEX audit_flag ON audit(flag, id);
    CREATE INDEX audit_target ON audit(target, id);
    CREATE INDEX audit_action ON audit(action_id, id);",
    // 10: a caller's idempotency key (`flags set-rollout --idempotency-key`) makes one action,
    // even when two requests with it race.
    "CREATE UNIQUE INDEX outbox_client_key ON outbox(idempotency_key) WHERE idempotency_key LIKE 'client:%';",
    // 11: proposals awaiting a second person's approval (regulated environments).
    "CREATE TABLE proposals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        flag TEXT NOT NULL,
        environment TEXT,
        request TEXT NOT NULL,
        proposer TEXT NOT NULL,
        reason TEXT,
        state TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        decided_by TEXT,
        decided_ms INTEGER,
        action_id INTEGER
    );
    CREATE INDEX proposals_state ON proposals(state, id);",
];

/// The migration after which stored targets are re-derived canonically (in Rust: the target
/// is computed from each row's request).
const CANONICAL_TARGETS: usize = 8;

/// Rewrites every action's target in the canonical form of [`crate::action::Target::key`]. A
/// pending action whose canonical target another pending action already holds keeps its old
/// target (the one-pending-per-target index would refuse it); it runs as before.
fn canonical_targets(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let rows: Vec<(i64, String, String)> = {
        let mut stmt = tx.prepare("SELECT id, target, request FROM outbox WHERE kind != 'notify'")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?
    };
    for (id, target, request) in rows {
        let Ok(request) = serde_json::from_str::<serde_json::Value>(&request) else { continue };
        let Some(canonical) = super::target_of_json(&request) else { continue };
        if canonical != target {
            match tx.execute("UPDATE outbox SET target = ?2 WHERE id = ?1", rusqlite::params![id, canonical]) {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Applies the migrations up to number `last` (tests build older schemas with it).
pub fn migrate_to(conn: &mut Connection, last: usize) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew { found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().take(last).skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if i + 1 == CANONICAL_TARGETS {
            canonical_targets(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

//! The store: one SQLite file (rusqlite, bundled) holding the audit log, the action outbox and
//! rule state. Every call is synchronous and short; async callers use `spawn_blocking`.
//!
//! Invariants:
//! - an action is written to the outbox (with its "decided" audit record, in one transaction)
//!   before any call to a flag system; restart resumes every pending action;
//! - at most one pending action per target: a repeated trigger joins it (`triggers` + 1);
//! - every state change is written together with its audit record, and only from the state
//!   it expects, so an action is audited once per transition even across crashes;
//! - action states: `pending` (in the outbox, being tried) → `sent` (the call succeeded, the
//!   flag system cannot be read back) or `confirmed` (read back) → `drained` (the killed
//!   cohort's traffic is gone) → `restored`; failures end in `escalated`; `unverified` (no
//!   traffic to watch), `overridden` (a human re-enabled the flag: drift, never fought) and
//!   `superseded` (a rollout change overtaken by a kill) are terminal too;
//! - the audit log is append-only; schema changes are numbered migrations (`user_version`).

pub mod diff;
pub mod migrations;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::time::Timestamp;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("unreadable stored state: {0}")]
    Corrupt(String),
    #[error("database schema version {found} is newer than this flagguard ({known})")]
    TooNew { found: i64, known: i64 },
}

/// One audit record to append.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub at: Timestamp,
    /// Who: `rule:NAME`, `api`, `system`.
    pub actor: String,
    /// What: `kill_decided`, `kill_confirmed`, `kill_escalated`, `kill_dry_run`, `incident`,
    /// `rules_reloaded`, …
    pub kind: String,
    pub rule: Option<String>,
    pub action_id: Option<i64>,
    pub target: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub evidence: Option<serde_json::Value>,
}

/// An audit record as stored.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub kind: String,
    pub rule: Option<String>,
    pub action_id: Option<i64>,
    pub target: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub evidence: Option<serde_json::Value>,
}

/// Which audit records to read (every field optional but `limit`).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub limit: u32,
    /// Newest first, older than this id (paging backwards).
    pub before_id: Option<i64>,
    /// Oldest first, newer than this id (paging forwards, export).
    pub after_id: Option<i64>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub rule: Option<String>,
    /// Records whose target names this flag.
    pub flag: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub action_id: Option<i64>,
}

/// An outbox row.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRow {
    pub id: i64,
    pub created: String,
    pub target: String,
    pub kind: String,
    pub state: String,
    /// The serialised request (`act::ActionRequest`).
    pub request: serde_json::Value,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub triggers: u32,
    pub idempotency_key: String,
    /// What the flag system answered (`act::Applied`), once the call succeeded.
    pub result: Option<serde_json::Value>,
    /// When the action entered its current state (ms since the epoch).
    pub state_ms: u64,
    /// A kill: the flag's state before its first call (what its restore returns to).
    pub saved: Option<serde_json::Value>,
}

impl ActionRow {
    /// The request as carried out: a widened kill, or one whose environment the actuator
    /// resolved (`default_environment`), saved it in its result. Drift checks, drain
    /// verification, fallbacks and restores act on this one.
    pub fn effective_request(&self) -> &serde_json::Value {
        self.result.as_ref().and_then(|r| r.get("request")).unwrap_or(&self.request)
    }
}

/// An action to write to the outbox.
pub struct NewAction<'a> {
    pub target: &'a str,
    /// `kill`, `notify`; empty: audit only (dry-run).
    pub kind: &'a str,
    pub request: &'a serde_json::Value,
    pub idempotency_key: &'a str,
    pub slice_key: &'a str,
    pub audit: &'a AuditEntry,
}

/// A slice that fired (for [`Store::record_fired`]).
pub struct Fired<'a> {
    pub slice: &'a str,
    pub rule: &'a str,
    pub flag: &'a str,
    /// An operator control held the kill.
    pub held: bool,
}

/// An action to queue as part of another's outcome (a fallback kill, a notification).
#[derive(Debug, Clone)]
pub struct FollowUp {
    pub target: String,
    pub kind: String,
    pub request: serde_json::Value,
    pub idempotency_key: String,
    pub audit: AuditEntry,
}

/// A restore's effect on the kills it undoes.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Every kill of this target that still holds it off becomes `restored`.
    pub target: String,
    /// The restored rule slice, whose cooldown is forgotten (empty: none).
    pub slice_key: String,
    pub audit: AuditEntry,
}

/// Everything an action's call ends in, written by [`Store::finish_with`] in one transaction.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: i64,
    /// `sent`, `confirmed` or `escalated`.
    pub state: &'static str,
    pub attempts: u32,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub audit: AuditEntry,
    pub restored: Option<Restored>,
    pub follow_ups: Vec<FollowUp>,
}

/// Kill states that still hold the flag off (a restore of the target ends them).
pub const HOLDING: &[&str] = &["sent", "confirmed", "drained", "recovered", "failed", "unverified", "escalated", "overridden"];

/// What became of an alert delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertOutcome {
    pub duplicate: bool,
    pub submitted: Option<Submitted>,
}

/// Whether a submitted action was new or joined an open one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    New(i64),
    Joined(i64),
    /// Not queued: a human re-enabled the flag after this earlier kill (drift); flagguard does
    /// not fight them until an operator acknowledges it.
    Suppressed(i64),
}

/// Whether a kill of `kill_target` covers `other` (same flag; same or any environment; the
/// kill's scope empty — the whole flag — or the same scope).
pub fn kill_covers(kill_target: &str, other: &str) -> bool {
    let (_, flag, env, scope) = target_parts(kill_target);
    let (_, f, e, sc) = target_parts(other);
    f == flag && (e == env || e == "*" || env == "*") && (scope.is_empty() || scope == sc)
}

/// How long a drained or recovered kill stays watched (recovery, auto-restore, drift).
pub const WATCH_AFTER_DRAIN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The canonical target of an action: `actuator|flag|environment|scope`, with the environment
/// only in its field (`*` for none) and the other dimensions sorted (`region=eu,service=api`),
/// so that two requests for the same flag-system object always have the same target — the
/// key of "one action per target", of supersession and of the kill/rollout guards.
pub fn target_string(actuator: &str, flag: &str, environment: Option<&str>, scope: &[(String, String)]) -> String {
    let env = environment.or_else(|| scope.iter().find(|(k, _)| k == "environment").map(|(_, v)| v.as_str()));
    let mut slice: Vec<String> = scope.iter().filter(|(k, _)| k != "environment").map(|(k, v)| format!("{k}={v}")).collect();
    slice.sort();
    slice.dedup();
    format!("{actuator}|{flag}|{}|{}", env.unwrap_or("*"), slice.join(","))
}

/// [`target_string`] of a stored request (`act::ActionRequest` as JSON).
pub fn target_of_json(request: &serde_json::Value) -> Option<String> {
    let s = |k: &str| request.get(k).and_then(serde_json::Value::as_str);
    let scope: Vec<(String, String)> =
        request.get("scope")?.as_array()?.iter().filter_map(|p| Some((p.get(0)?.as_str()?.to_owned(), p.get(1)?.as_str()?.to_owned()))).collect();
    Some(target_string(s("actuator")?, s("flag")?, s("environment"), &scope))
}

/// The parts of an action target (`actuator|flag|environment|scope`).
pub fn target_parts(target: &str) -> (&str, &str, &str, &str) {
    let mut parts = target.splitn(4, '|');
    let mut next = || parts.next().unwrap_or("");
    (next(), next(), next(), next())
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

fn json(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

fn parse(v: Option<String>) -> Option<serde_json::Value> {
    v.and_then(|s| serde_json::from_str(&s).ok())
}

impl Store {
    /// Opens (creating and migrating) `data_dir/flagguard.db`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir { path: data_dir.display().to_string(), source })?;
        let conn = Connection::open(data_dir.join("flagguard.db"))?;
        Store::init(conn)
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert_audit(conn: &Connection, e: &AuditEntry) -> rusqlite::Result<i64> {
        conn.execute(
            "INSERT INTO audit (at_ms, actor, kind, rule, action_id, target, before, after, evidence) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![e.at.as_millis() as i64, e.actor, e.kind, e.rule, e.action_id, e.target, json(&e.before), json(&e.after), json(&e.evidence)],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Appends one audit record.
    pub fn audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        Ok(Store::insert_audit(&self.lock(), entry)?)
    }

    /// Writes an action to the outbox (or joins the pending one for the same target), with its
    /// audit record, and remembers when the slice fired — in one transaction.
    pub fn submit(
        &self,
        target: &str,
        kind: &str,
        request: &serde_json::Value,
        idempotency_key: &str,
        slice_key: &str,
        audit: &AuditEntry,
    ) -> Result<Submitted, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let submitted = Store::submit_in(&tx, &NewAction { target, kind, request, idempotency_key, slice_key, audit })?;
        tx.commit()?;
        Ok(submitted)
    }

    fn submit_in(tx: &rusqlite::Transaction<'_>, a: &NewAction<'_>) -> rusqlite::Result<Submitted> {
        let now = a.audit.at.as_millis() as i64;
        // Only a rule's (or an alert mapping's) slice has a cooldown; notifications, manual and
        // fallback kills leave no rule state behind.
        if !a.slice_key.is_empty() {
            let field = |k: &str| a.request.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
            Store::fire_in(tx, a.slice_key, field("rule").as_deref(), field("flag").as_deref(), false, now)?;
        }
        if a.kind == "kill" {
            let overridden: Option<i64> = tx
                .query_row("SELECT id FROM outbox WHERE target = ?1 AND kind = 'kill' ORDER BY id DESC LIMIT 1", params![a.target], |r| r.get(0))
                .optional()?
                .filter(|id| Store::state_in(tx, *id).as_deref() == Some("overridden"));
            // Only automatic kills defer to the human; an operator's or a plan's kill goes out.
            let automatic = a.audit.actor.starts_with("rule:") || a.audit.actor.starts_with("alert:");
            if let (Some(id), true) = (overridden, automatic) {
                Store::insert_audit(tx, &AuditEntry { kind: "kill_suppressed".into(), action_id: Some(id), ..a.audit.clone() })?;
                return Ok(Submitted::Suppressed(id));
            }
            Store::supersede_rollouts(tx, a.target, a.audit)?;
            // A kill supersedes a pending restore of the same target too (the executor runs one
            // action per target at a time, so one already in flight finishes first).
            let restore: Option<i64> = tx
                .query_row("SELECT id FROM outbox WHERE target = ?1 AND state = 'pending' AND kind = 'restore'", params![a.target], |r| r.get(0))
                .optional()?;
            if let Some(id) = restore {
                tx.execute("UPDATE outbox SET state = 'superseded', state_ms = ?2, updated_ms = ?2 WHERE id = ?1", params![id, now])?;
                Store::insert_audit(tx, &AuditEntry { kind: "restore_superseded".into(), action_id: Some(id), ..a.audit.clone() })?;
            }
        }
        let open: Option<i64> =
            tx.query_row("SELECT id FROM outbox WHERE target = ?1 AND state = 'pending' AND kind = ?2", params![a.target, a.kind], |r| r.get(0)).optional()?;
        Ok(match open {
            Some(id) => {
                tx.execute("UPDATE outbox SET triggers = triggers + 1, updated_ms = ?2 WHERE id = ?1", params![id, now])?;
                Store::insert_audit(tx, &AuditEntry { kind: format!("{}_joined", a.kind), action_id: Some(id), ..a.audit.clone() })?;
                Submitted::Joined(id)
            }
            None => {
                tx.execute(
                    "INSERT INTO outbox (created_ms, target, kind, state, request, attempts, next_attempt_ms, triggers, updated_ms, idempotency_key, state_ms) VALUES (?1, ?2, ?3, 'pending', ?4, 0, ?1, 1, ?1, ?5, ?1)",
                    params![now, a.target, a.kind, a.request.to_string(), a.idempotency_key],
                )?;
                let id = tx.last_insert_rowid();
                Store::insert_audit(tx, &AuditEntry { action_id: Some(id), ..a.audit.clone() })?;
                Submitted::New(id)
            }
        })
    }

    fn state_in(tx: &rusqlite::Transaction<'_>, id: i64) -> Option<String> {
        tx.query_row("SELECT state FROM outbox WHERE id = ?1", params![id], |r| r.get(0)).ok()
    }

    /// A kill supersedes pending rollout changes of the same flag and environment.
    fn supersede_rollouts(tx: &rusqlite::Transaction<'_>, kill_target: &str, audit: &AuditEntry) -> rusqlite::Result<()> {
        let mut stmt = tx.prepare("SELECT id, target FROM outbox WHERE kind = 'rollout' AND state = 'pending'")?;
        let rows: Vec<(i64, String)> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        for (id, target) in rows {
            if kill_covers(kill_target, &target) {
                tx.execute("UPDATE outbox SET state = 'superseded', state_ms = ?2, updated_ms = ?2 WHERE id = ?1", params![id, audit.at.as_millis() as i64])?;
                Store::insert_audit(tx, &AuditEntry { kind: "rollout_superseded".into(), action_id: Some(id), target: Some(target.clone()), ..audit.clone() })?;
            }
        }
        Ok(())
    }

    /// Queues an operator's action (restore, rollout change) unless it conflicts: another
    /// action is pending for the target, or a rollout change while the flag is killed.
    /// Returns the new action's id, or why it was refused.
    pub fn submit_operator(
        &self,
        target: &str,
        kind: &str,
        request: &serde_json::Value,
        idempotency_key: &str,
        audit: &AuditEntry,
    ) -> Result<Result<i64, String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let pending: Option<(i64, String)> =
            tx.query_row("SELECT id, kind FROM outbox WHERE target = ?1 AND state = 'pending'", params![target], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        if let Some((id, other)) = pending {
            return Ok(Err(format!("action {id} ({other}) is still pending for this target")));
        }
        if kind == "rollout" {
            // Any kill that reached the flag system and was not restored (or overridden by a
            // human) still holds the flag off.
            let mut stmt = tx.prepare(
                "SELECT id, target FROM outbox WHERE kind = 'kill' AND (state IN ('pending', 'sent', 'confirmed', 'drained', 'unverified', 'recovered', 'failed') \
                 OR (state = 'escalated' AND result IS NOT NULL))",
            )?;
            let killed: Vec<(i64, String)> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            drop(stmt);
            if let Some((id, _)) = killed.iter().find(|(_, t)| kill_covers(t, target)) {
                return Ok(Err(format!("the flag is killed (action {id}); restore it before changing its rollout")));
            }
        }
        let now = audit.at.as_millis() as i64;
        tx.execute(
            "INSERT INTO outbox (created_ms, target, kind, state, request, attempts, next_attempt_ms, triggers, updated_ms, idempotency_key, state_ms) VALUES (?1, ?2, ?3, 'pending', ?4, 0, ?1, 1, ?1, ?5, ?1)",
            params![now, target, kind, request.to_string(), idempotency_key],
        )?;
        let id = tx.last_insert_rowid();
        Store::insert_audit(&tx, &AuditEntry { action_id: Some(id), target: Some(target.into()), ..audit.clone() })?;
        tx.commit()?;
        Ok(Ok(id))
    }

    /// Records one alert delivery (audited as `received.kind`, or `alert_duplicate` when the
    /// same (source, key, status) was first seen less than 24 h ago) and, for a first delivery, writes
    /// `action` (an outbox entry, or just its audit record when `action.kind` is empty) — in
    /// one transaction, so an acknowledged alert's action is never lost nor doubled.
    pub fn accept_alert(
        &self,
        source: &str,
        dedup_key: &str,
        status: &str,
        received: &AuditEntry,
        action: Option<&NewAction<'_>>,
    ) -> Result<AlertOutcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = received.at.as_millis() as i64;
        // 24 h from the first delivery: re-sends (which refresh `last_ms`) never keep it alive.
        tx.execute("DELETE FROM alert_deliveries WHERE first_ms < ?1", params![now - 24 * 3600 * 1000])?;
        let first = tx.execute(
            "INSERT OR IGNORE INTO alert_deliveries (source, dedup_key, status, first_ms, last_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![source, dedup_key, status, now],
        )? == 1;
        if !first {
            tx.execute(
                "UPDATE alert_deliveries SET deliveries = deliveries + 1, last_ms = ?4 WHERE source = ?1 AND dedup_key = ?2 AND status = ?3",
                params![source, dedup_key, status, now],
            )?;
        }
        let kind = if first { received.kind.clone() } else { "alert_duplicate".to_owned() };
        Store::insert_audit(&tx, &AuditEntry { kind, ..received.clone() })?;
        let submitted = match action.filter(|_| first) {
            Some(a) if a.kind.is_empty() => {
                Store::insert_audit(&tx, a.audit)?;
                None
            }
            Some(a) => Some(Store::submit_in(&tx, a)?),
            None => None,
        };
        tx.commit()?;
        Ok(AlertOutcome { duplicate: !first, submitted })
    }

    fn fire_in(tx: &rusqlite::Transaction<'_>, slice: &str, rule: Option<&str>, flag: Option<&str>, held: bool, at_ms: i64) -> rusqlite::Result<usize> {
        tx.execute(
            "INSERT INTO rule_state (slice, last_fired_ms, rule, flag, held) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT(slice) DO UPDATE SET last_fired_ms = excluded.last_fired_ms, rule = COALESCE(excluded.rule, rule), flag = COALESCE(excluded.flag, flag), held = excluded.held",
            params![slice, at_ms, rule, flag, held],
        )
    }

    /// Remembers that a slice fired without an outbox entry (dry-run, incidents, and kills an
    /// operator control `held`: those are re-armed when the control is lifted, also after a
    /// restart, see [`Store::held_slices`]).
    pub fn record_fired(&self, fired: &Fired<'_>, at: Timestamp, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        Store::fire_in(&tx, fired.slice, Some(fired.rule), Some(fired.flag), fired.held, at.as_millis() as i64)?;
        Store::insert_audit(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    /// When each slice last fired, and whose flag it is (cooldowns across restarts).
    pub fn last_fired(&self) -> Result<HashMap<String, crate::rules::engine::Fired>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT slice, last_fired_ms, flag FROM rule_state")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, crate::rules::engine::Fired { at: Timestamp(r.get::<_, i64>(1)? as u64), flag: r.get(2)? })))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Slices whose kill an operator control held: (slice, flag, rule).
    pub fn held_slices(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT slice, flag, rule FROM rule_state WHERE held = 1 AND flag IS NOT NULL AND rule IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ActionRow> {
        Ok(ActionRow {
            id: r.get(0)?,
            created: Timestamp(r.get::<_, i64>(1)? as u64).rfc3339(),
            target: r.get(2)?,
            kind: r.get(3)?,
            state: r.get(4)?,
            request: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or(serde_json::Value::Null),
            attempts: r.get(6)?,
            next_attempt_ms: r.get::<_, i64>(7)? as u64,
            last_error: r.get(8)?,
            triggers: r.get(9)?,
            idempotency_key: r.get(10)?,
            result: parse(r.get(11)?),
            state_ms: r.get::<_, i64>(12)? as u64,
            saved: parse(r.get(13)?),
        })
    }

    const ROW: &'static str = "SELECT id, created_ms, target, kind, state, request, attempts, next_attempt_ms, last_error, triggers, idempotency_key, result, state_ms, saved FROM outbox";

    /// Pending actions due at `now`, oldest first.
    pub fn due(&self, now: Timestamp) -> Result<Vec<ActionRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{} WHERE state = 'pending' AND next_attempt_ms <= ?1 ORDER BY id", Store::ROW))?;
        let rows = stmt.query_map(params![now.as_millis() as i64], Store::row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next pending action is due.
    pub fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let conn = self.lock();
        let next: Option<i64> = conn.query_row("SELECT MIN(next_attempt_ms) FROM outbox WHERE state = 'pending'", [], |r| r.get(0))?;
        Ok(next.map(|n| Timestamp(n as u64)))
    }

    /// Records a failed attempt to retry at `next`.
    pub fn reschedule(&self, id: i64, attempts: u32, next: Timestamp, error: &str, now: Timestamp) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4, updated_ms = ?5 WHERE id = ?1 AND state = 'pending'",
            params![id, attempts, next.as_millis() as i64, error, now.as_millis() as i64],
        )?;
        Ok(())
    }

    /// Finishes a pending action's call (`sent`, `confirmed`, `escalated`) with what the flag
    /// system answered, together with its audit record.
    pub fn finish(
        &self,
        id: i64,
        state: &str,
        attempts: u32,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE outbox SET state = ?2, attempts = ?3, last_error = COALESCE(?4, last_error), updated_ms = ?5, state_ms = ?5, result = COALESCE(?6, result) WHERE id = ?1 AND state = 'pending'",
            params![id, state, attempts, error, audit.at.as_millis() as i64, result.map(|r| r.to_string())],
        )?;
        if changed == 1 {
            Store::insert_audit(&tx, &AuditEntry { action_id: Some(id), ..audit.clone() })?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Finishes an action's call with everything that follows from it — its state and result,
    /// the kills a restore undoes (and their slice's cooldown), a fallback kill, notifications
    /// — in one transaction: a crash or a failed write loses none of it and half of it never
    /// shows. The action must be `pending`, or `superseded` while its call was in flight (the
    /// call was made: its outcome is recorded truthfully). Returns false, writing nothing,
    /// when it is in another state (already finished).
    pub fn finish_with(&self, o: &Outcome) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let at = o.audit.at.as_millis() as i64;
        let changed = tx.execute(
            "UPDATE outbox SET state = ?2, attempts = ?3, last_error = COALESCE(?4, last_error), updated_ms = ?5, state_ms = ?5, result = COALESCE(?6, result) \
             WHERE id = ?1 AND state IN ('pending', 'superseded')",
            params![o.id, o.state, o.attempts, o.error, at, o.result.as_ref().map(|r| r.to_string())],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        Store::insert_audit(&tx, &AuditEntry { action_id: Some(o.id), ..o.audit.clone() })?;
        if let Some(r) = &o.restored {
            let kills: Vec<i64> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT id FROM outbox WHERE kind = 'kill' AND target = ?1 AND id != ?2 AND state IN ({}) ORDER BY id",
                    HOLDING.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
                ))?;
                stmt.query_map(params![r.target, o.id], |row| row.get(0))?.collect::<Result<_, _>>()?
            };
            for kill in kills {
                tx.execute("UPDATE outbox SET state = 'restored', updated_ms = ?2, state_ms = ?2 WHERE id = ?1", params![kill, at])?;
                Store::insert_audit(&tx, &AuditEntry { action_id: Some(kill), ..r.audit.clone() })?;
            }
            if !r.slice_key.is_empty() {
                tx.execute("DELETE FROM rule_state WHERE slice = ?1", params![r.slice_key])?;
            }
        }
        Store::follow_ups_in(&tx, &o.follow_ups)?;
        tx.commit()?;
        Ok(true)
    }

    /// Queues the actions an outcome brings (no rule state: they are not a rule's slice).
    fn follow_ups_in(tx: &rusqlite::Transaction<'_>, follow_ups: &[FollowUp]) -> rusqlite::Result<()> {
        for f in follow_ups {
            let action =
                NewAction { target: &f.target, kind: &f.kind, request: &f.request, idempotency_key: &f.idempotency_key, slice_key: "", audit: &f.audit };
            Store::submit_in(tx, &action)?;
        }
        Ok(())
    }

    /// Stores a kill's state before its first call (once: a later attempt never replaces it).
    pub fn save_snapshot(&self, id: i64, saved: &serde_json::Value) -> Result<(), StoreError> {
        self.lock().execute("UPDATE outbox SET saved = ?2 WHERE id = ?1 AND saved IS NULL", params![id, saved.to_string()])?;
        Ok(())
    }

    /// What the newest earlier kill of `target` that still holds it off (its call succeeded)
    /// saved, if that one saw the target serving: a kill of an already killed target restores to the state before
    /// the first kill, not to "off".
    pub fn holding_before(&self, target: &str, except: i64) -> Result<Option<serde_json::Value>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT COALESCE(saved, json_extract(result, '$.before')) FROM outbox WHERE kind = 'kill' AND target = ?1 AND id != ?2 AND state IN ({}) AND result IS NOT NULL ORDER BY id DESC",
            HOLDING.iter().filter(|s| **s != "overridden").map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
        ))?;
        let rows = stmt.query_map(params![target, except], |r| r.get::<_, Option<String>>(0))?;
        for row in rows {
            let Some(before) = parse(row?) else { continue };
            if before.get("serving").and_then(serde_json::Value::as_bool) == Some(true) {
                return Ok(Some(before));
            }
        }
        Ok(None)
    }

    /// Records what a call that succeeded applied, before its read-back: even if the action
    /// later escalates (the read-back never agrees), its restore knows what to undo.
    pub fn record_applied(&self, id: i64, result: &serde_json::Value) -> Result<(), StoreError> {
        self.lock().execute("UPDATE outbox SET result = ?2 WHERE id = ?1 AND state IN ('pending', 'superseded')", params![id, result.to_string()])?;
        Ok(())
    }

    /// Whether the action is still pending (not superseded since it was read).
    pub fn is_pending(&self, id: i64) -> Result<bool, StoreError> {
        let conn = self.lock();
        Ok(conn.query_row("SELECT COUNT(*) FROM outbox WHERE id = ?1 AND state = 'pending'", params![id], |r| r.get::<_, i64>(0))? > 0)
    }

    /// The newest kill per target of `flag` (narrowed by environment and region), newest
    /// first, whatever the size of the outbox.
    pub fn flag_kills(&self, flag: &str) -> Result<Vec<ActionRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "{} WHERE id IN (SELECT MAX(id) FROM outbox WHERE kind = 'kill' AND json_extract(request, '$.flag') = ?1 GROUP BY target) ORDER BY id DESC",
            Store::ROW
        ))?;
        let rows = stmt.query_map(params![flag], Store::row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves an action from one of the `from` states to `to`, with its audit record, in one
    /// transaction. Returns false (and audits nothing) when it was in another state.
    pub fn transition(&self, id: i64, from: &[&str], to: &str, error: Option<&str>, audit: &AuditEntry) -> Result<bool, StoreError> {
        self.transition_with(id, from, to, error, audit, &[])
    }

    /// [`Store::transition`] that also queues `follow_ups` (a fallback kill, notifications) in
    /// the same transaction, only when the transition happens.
    pub fn transition_with(
        &self,
        id: i64,
        from: &[&str],
        to: &str,
        error: Option<&str>,
        audit: &AuditEntry,
        follow_ups: &[FollowUp],
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let state = Store::state_in(&tx, id);
        if !state.as_deref().is_some_and(|s| from.contains(&s)) {
            return Ok(false);
        }
        tx.execute(
            "UPDATE outbox SET state = ?2, last_error = COALESCE(?3, last_error), updated_ms = ?4, state_ms = ?4 WHERE id = ?1",
            params![id, to, error, audit.at.as_millis() as i64],
        )?;
        Store::insert_audit(&tx, &AuditEntry { action_id: Some(id), ..audit.clone() })?;
        Store::follow_ups_in(&tx, follow_ups)?;
        tx.commit()?;
        Ok(true)
    }

    /// Kills whose effect is being watched, oldest first: `sent` and `confirmed` (until they
    /// drain or the drain deadline passes), and `drained` / `recovered` ones that entered that
    /// state after `since` (recovery, auto-restore and drift checks end after a while).
    pub fn watched_kills(&self, since: Timestamp) -> Result<Vec<ActionRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "{} WHERE kind = 'kill' AND (state IN ('sent', 'confirmed') OR (state IN ('drained', 'recovered') AND state_ms >= ?1)) ORDER BY id",
            Store::ROW
        ))?;
        let rows = stmt.query_map(params![since.as_millis() as i64], Store::row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Actions in `state` that entered it at or after `since` (e.g. recent restores).
    pub fn in_state_since(&self, state: &str, since: Timestamp) -> Result<Vec<ActionRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{} WHERE state = ?1 AND state_ms >= ?2 ORDER BY id", Store::ROW))?;
        let rows = stmt.query_map(params![state, since.as_millis() as i64], Store::row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every rollout plan instance's state (`rollout::PlanState` as JSON), by key.
    pub fn plan_states(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT state FROM rollouts ORDER BY key")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.filter_map(|r| r.ok().and_then(|s| serde_json::from_str(&s).ok())).collect())
    }

    pub fn plan_state(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let conn = self.lock();
        let state: Option<String> = conn.query_row("SELECT state FROM rollouts WHERE key = ?1", params![key], |r| r.get(0)).optional()?;
        Ok(state.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Writes a plan instance's state, with its audit record, in one transaction.
    pub fn save_plan(&self, key: &str, state: &serde_json::Value, audit: Option<&AuditEntry>) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        Store::write_plan_in(&tx, key, state, audit)?;
        tx.commit()?;
        Ok(())
    }

    fn write_plan_in(tx: &rusqlite::Transaction<'_>, key: &str, state: &serde_json::Value, audit: Option<&AuditEntry>) -> rusqlite::Result<()> {
        let now = audit.map_or(0, |a| a.at.as_millis() as i64);
        tx.execute(
            "INSERT INTO rollouts (key, state, updated_ms) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
            params![key, state.to_string(), now],
        )?;
        if let Some(audit) = audit {
            Store::insert_audit(tx, audit)?;
        }
        Ok(())
    }

    /// [`Store::save_plan`] only if the stored state is still `expected` (`None`: none stored);
    /// false, writing nothing, when someone else wrote it since (compare-and-swap).
    pub fn save_plan_if(
        &self,
        key: &str,
        expected: Option<&serde_json::Value>,
        state: &serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let current: Option<String> = tx.query_row("SELECT state FROM rollouts WHERE key = ?1", params![key], |r| r.get(0)).optional()?;
        if parse(current).as_ref() != expected {
            return Ok(false);
        }
        Store::write_plan_in(&tx, key, state, audit)?;
        tx.commit()?;
        Ok(true)
    }

    /// Merges first/last evaluation times of flag variants, in one transaction.
    pub fn record_usage(&self, usage: &[crate::rollout::hygiene::Usage]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for u in usage {
            tx.execute(
                "INSERT INTO flag_usage (flag, variant, first_ms, last_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(flag, variant) DO UPDATE SET first_ms = MIN(first_ms, excluded.first_ms), last_ms = MAX(last_ms, excluded.last_ms)",
                params![u.flag, u.variant, u.first_ms as i64, u.last_ms as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn usage(&self) -> Result<Vec<crate::rollout::hygiene::Usage>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT flag, variant, first_ms, last_ms FROM flag_usage")?;
        let rows = stmt.query_map([], |r| {
            Ok(crate::rollout::hygiene::Usage {
                flag: r.get(0)?,
                variant: r.get(1)?,
                first_ms: r.get::<_, i64>(2)? as u64,
                last_ms: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether a restore of kill `kill_id` was ever queued (auto-restore tries once).
    pub fn restore_attempted(&self, kill_id: i64) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n: i64 =
            conn.query_row("SELECT COUNT(*) FROM outbox WHERE kind = 'restore' AND json_extract(request, '$.restores') = ?1", params![kill_id], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// Whether an action for `target` is pending (e.g. a restore in flight).
    pub fn has_pending(&self, target: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        Ok(conn.query_row("SELECT COUNT(*) FROM outbox WHERE target = ?1 AND state = 'pending'", params![target], |r| r.get::<_, i64>(0))? > 0)
    }

    /// Forgets a slice's cooldown (after a restore).
    pub fn clear_cooldown(&self, slice_key: &str) -> Result<(), StoreError> {
        self.lock().execute("DELETE FROM rule_state WHERE slice = ?1", params![slice_key])?;
        Ok(())
    }

    /// Most recent actions first.
    pub fn actions(&self, limit: u32) -> Result<Vec<ActionRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{} ORDER BY id DESC LIMIT ?1", Store::ROW))?;
        let rows = stmt.query_map(params![limit], Store::row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn action(&self, id: i64) -> Result<Option<ActionRow>, StoreError> {
        let conn = self.lock();
        Ok(conn.query_row(&format!("{} WHERE id = ?1", Store::ROW), params![id], Store::row).optional()?)
    }

    /// An action's audit records, oldest first: its timeline.
    pub fn timeline(&self, action_id: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT id, at_ms, actor, kind, rule, action_id, target, before, after, evidence FROM audit WHERE action_id = ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![action_id], Store::audit_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
        Ok(AuditRecord {
            id: r.get(0)?,
            at: Timestamp(r.get::<_, i64>(1)? as u64).rfc3339(),
            actor: r.get(2)?,
            kind: r.get(3)?,
            rule: r.get(4)?,
            action_id: r.get(5)?,
            target: r.get(6)?,
            before: parse(r.get(7)?),
            after: parse(r.get(8)?),
            evidence: parse(r.get(9)?),
        })
    }

    /// Audit records, newest first, optionally before an id (pagination) and of one kind.
    pub fn audit_log(&self, limit: u32, before_id: Option<i64>, kind: Option<&str>) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_query(&AuditFilter { limit, before_id, kind: kind.map(str::to_owned), ..AuditFilter::default() })
    }

    /// Audit records matching `filter`: newest first, or oldest first from `after_id`.
    pub fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.lock();
        let order = if f.after_id.is_some() { "ASC" } else { "DESC" };
        let mut stmt = conn.prepare(&format!(
            "SELECT id, at_ms, actor, kind, rule, action_id, target, before, after, evidence FROM audit \
             WHERE (?2 IS NULL OR id < ?2) AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR id > ?4) \
             AND (?5 IS NULL OR actor = ?5) AND (?6 IS NULL OR rule = ?6) \
             AND (?7 IS NULL OR target = ?7 OR substr(target, instr(target, '|') + 1, length(?7) + 1) = ?7 || '|') \
             AND (?8 IS NULL OR at_ms >= ?8) AND (?9 IS NULL OR at_ms < ?9) AND (?10 IS NULL OR action_id = ?10) \
             ORDER BY id {order} LIMIT ?1"
        ))?;
        let rows = stmt.query_map(
            params![
                f.limit,
                f.before_id,
                f.kind,
                f.after_id,
                f.actor,
                f.rule,
                f.flag,
                f.since.map(|t| t.as_millis() as i64),
                f.until.map(|t| t.as_millis() as i64),
                f.action_id
            ],
            Store::audit_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Retention: deletes audit records older than `cutoff` and records that it did (the one
    /// deletion of the append-only log, by configuration, itself audited). Returns the count.
    pub fn prune_audit(&self, cutoff: Timestamp, now: Timestamp) -> Result<usize, StoreError> {
        // In batches, the lock released between them: a first prune of a large log does not
        // stall the pipeline, the executor and the API behind one long transaction.
        let mut deleted = 0;
        loop {
            let n = self
                .lock()
                .execute("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at_ms < ?1 ORDER BY id LIMIT 5000)", params![cutoff.as_millis() as i64])?;
            deleted += n;
            if n < 5000 {
                break;
            }
        }
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if deleted > 0 {
            Store::insert_audit(
                &tx,
                &AuditEntry {
                    at: now,
                    actor: "system".into(),
                    kind: "audit_pruned".into(),
                    after: Some(serde_json::json!({ "deleted": deleted, "older_than": cutoff.rfc3339() })),
                    ..AuditEntry::default()
                },
            )?;
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// An online, consistent copy of the whole database to `path` (SQLite `VACUUM INTO`; the
    /// daemon keeps running). `path` must not exist.
    pub fn backup(&self, path: &Path) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute("VACUUM INTO ?1", params![path.to_string_lossy()])?;
        Ok(())
    }

    /// The configuration recorded by the last `started` record, if any (to audit what changed).
    pub fn last_started_config(&self) -> Result<Option<serde_json::Value>, StoreError> {
        let conn = self.lock();
        let after: Option<Option<String>> =
            conn.query_row("SELECT after FROM audit WHERE kind = 'started' ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).optional()?;
        Ok(parse(after.flatten()).and_then(|v| v.get("config").cloned()))
    }

    /// The operator controls in force (pause, allow/deny lists, silences).
    pub fn controls(&self) -> Result<crate::controls::Controls, StoreError> {
        let conn = self.lock();
        let state: Option<String> = conn.query_row("SELECT state FROM controls WHERE id = 1", [], |r| r.get(0)).optional()?;
        Store::parse_controls(state)
    }

    /// Unreadable controls are an error, never "no controls": a lost pause or deny list must
    /// hold automatic actions (the decision is re-armed), not let them through.
    fn parse_controls(state: Option<String>) -> Result<crate::controls::Controls, StoreError> {
        match state {
            None => Ok(crate::controls::Controls::default()),
            Some(s) => serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("controls: {e}"))),
        }
    }

    /// Changes the controls with `change` and audits before and after, in one transaction.
    /// `change` may refuse (`Err(e)`); nothing is written then.
    pub fn update_controls<E>(
        &self,
        change: impl FnOnce(&mut crate::controls::Controls) -> Result<(), E>,
        audit: &AuditEntry,
    ) -> Result<Result<crate::controls::Controls, E>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let state: Option<String> = tx.query_row("SELECT state FROM controls WHERE id = 1", [], |r| r.get(0)).optional()?;
        let before = Store::parse_controls(state)?;
        let mut after = before.clone();
        if let Err(why) = change(&mut after) {
            return Ok(Err(why));
        }
        let json = serde_json::to_string(&after).unwrap_or_default();
        tx.execute(
            "INSERT INTO controls (id, state, updated_ms) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
            params![json, audit.at.as_millis() as i64],
        )?;
        let entry = AuditEntry { before: serde_json::to_value(&before).ok(), after: serde_json::to_value(&after).ok(), ..audit.clone() };
        Store::insert_audit(&tx, &entry)?;
        tx.commit()?;
        Ok(Ok(after))
    }

    /// Pending actions (for /readyz and /metrics).
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        Ok(conn.query_row("SELECT COUNT(*) FROM outbox WHERE state = 'pending'", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

#[cfg(test)]
mod tests;

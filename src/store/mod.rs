//! The store: one SQLite file (rusqlite, bundled) holding the audit log, the action outbox and
//! rule state. Every call is synchronous and short; async callers use `spawn_blocking`.
//!
//! Two connections: every write, and the reads of the pipeline and the executor, go through
//! the writer; the API's reads (the audit log, action lists and timelines, usage, plans) go
//! through a reader of their own. In WAL mode a reader never blocks the writer, so a slow
//! filtered `GET /v1/audit` over a large log cannot stall rule evaluation or a kill (measured
//! in `benches/store.rs`).
//!
//! Invariants:
//! - an action is written to the outbox (with its "decided" audit record, in one transaction)
//!   before any call to a flag system; restart resumes every pending action;
//! - at most one pending action per target: a repeated trigger joins it (`triggers` + 1);
//! - every state change is written together with its audit record, and only from the state
//!   it expects, so an action is audited once per transition even across crashes;
//! - an action's state moves only along [`crate::action::TRANSITIONS`] (one table; the store
//!   refuses any other move with [`StoreError::Transition`]);
//! - only automatic kills (a rule's, an alert's) defer to a human's override; the producer
//!   says which (`NewAction::automatic`), the store does not guess from the actor;
//! - the audit log is append-only; schema changes are numbered migrations (`user_version`).

mod audit;
mod db;
pub mod diff;
pub mod fence;
pub mod migrate;
pub mod migrations;
mod outbox;
pub mod postgres;
pub mod proposals;
mod row;
mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use serde::Serialize;

use db::{Conn, Row};
pub use fence::Fence;
pub use outbox::CLIENT_KEY;
pub use postgres::PgOptions;

use crate::action::{ActionKind, ActionState, HOLDING, Refused, Target};
use crate::time::Timestamp;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused a statement.
    #[error("postgres: {0}")]
    Postgres(String),
    /// PostgreSQL cannot be reached (down, restarting, cut off): retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A fenced write of a replica that does not hold the lease: nothing was written.
    #[error("not the lease holder: the write was refused (fenced)")]
    Fenced,
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("unreadable stored state: {0}")]
    Corrupt(String),
    #[error("database schema version {found} is newer than this flagguard ({known})")]
    TooNew { found: i64, known: i64 },
    /// A move [`crate::action::TRANSITIONS`] does not allow: a bug, refused, nothing written.
    #[error("action {id}: {from} → {to} is not an allowed transition")]
    Transition { id: i64, from: ActionState, to: ActionState },
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

/// A kill decided recently, as the incident limit counts it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentKill {
    pub rule: String,
    pub flag: String,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub at: Timestamp,
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
    pub kind: ActionKind,
    pub state: ActionState,
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
    /// The canonical target key ([`Target::key`]; a notification's own unique key).
    pub target: &'a str,
    pub kind: ActionKind,
    pub request: &'a serde_json::Value,
    pub idempotency_key: &'a str,
    /// The rule slice that decided it (its cooldown); empty: none.
    pub slice_key: &'a str,
    /// A rule's or an alert's kill: it defers to a human who re-enabled the flag after an
    /// earlier kill (drift). An operator's or a plan's kill goes out.
    pub automatic: bool,
    pub audit: &'a AuditEntry,
}

/// What an alert delivery records besides its receipt.
pub enum AlertAction<'a> {
    /// An outbox entry.
    Queue(NewAction<'a>),
    /// Only an audit record (dry-run, held).
    Audit(&'a AuditEntry),
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
    pub kind: ActionKind,
    pub request: serde_json::Value,
    pub idempotency_key: String,
    /// See [`NewAction::automatic`]: a fallback of a rule's or an alert's kill is automatic.
    pub automatic: bool,
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
    /// `Sent`, `Confirmed` or `Escalated`.
    pub state: ActionState,
    pub attempts: u32,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub audit: AuditEntry,
    pub restored: Option<Restored>,
    pub follow_ups: Vec<FollowUp>,
}

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

/// How long a drained or recovered kill stays watched (recovery, auto-restore, drift).
pub const WATCH_AFTER_DRAIN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The canonical target key ([`Target::key`]) of a stored request (`act::ActionRequest` as JSON).
pub fn target_of_json(request: &serde_json::Value) -> Option<String> {
    let s = |k: &str| request.get(k).and_then(serde_json::Value::as_str);
    let scope: Vec<(String, String)> =
        request.get("scope")?.as_array()?.iter().filter_map(|p| Some((p.get(0)?.as_str()?.to_owned(), p.get(1)?.as_str()?.to_owned()))).collect();
    Some(Target::new(s("actuator")?, s("flag")?, s("environment"), &scope).key())
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Conn>>,
    /// The API's reads; the same connection as `conn` for an in-memory store.
    reader: Arc<Mutex<Conn>>,
    /// Cluster mode: writes through this handle need the lease ([`Store::fenced`]).
    fence: Option<Arc<Fence>>,
}

impl StoreError {
    /// The database cannot be reached now (a caller answers 503 and lets the sender retry).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

fn kind_of(column: &str) -> Option<ActionKind> {
    [ActionKind::Kill, ActionKind::Restore, ActionKind::Rollout, ActionKind::Notify].into_iter().find(|k| k.column() == column)
}

fn corrupt(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, format!("unknown action {what}").into())
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
        let path = data_dir.join("flagguard.db");
        let mut store = Store::init(Connection::open(&path)?)?;
        let reader = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        store.reader = Arc::new(Mutex::new(Conn::Sqlite(reader)));
        Ok(store)
    }

    /// Opens the cluster's PostgreSQL store (creating its schema): a writer connection and a
    /// reader for the API, like SQLite's.
    pub fn open_postgres(options: &PgOptions) -> Result<Store, StoreError> {
        let mut writer = postgres::PgConn::connect(options)?;
        writer.ensure_schema()?;
        let reader = postgres::PgConn::connect(options)?;
        Ok(Store { conn: Arc::new(Mutex::new(Conn::Postgres(Box::new(writer)))), reader: Arc::new(Mutex::new(Conn::Postgres(Box::new(reader)))), fence: None })
    }

    /// This store, whose writes need the lease `fence` holds (the leader's decisions, calls
    /// and verification). Without one (the API's alerts and operator actions) any replica writes.
    pub fn fenced(&self, fence: Arc<Fence>) -> Store {
        Store { fence: Some(fence), ..self.clone() }
    }

    /// Whether this is the cluster's PostgreSQL store.
    pub fn is_postgres(&self) -> bool {
        self.lock().is_postgres()
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
        let conn = Arc::new(Mutex::new(Conn::Sqlite(conn)));
        Ok(Store { reader: conn.clone(), conn, fence: None })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reader's connection (the API's reads).
    fn read(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begins a write transaction on `conn`; a fenced handle on PostgreSQL then checks, in the
    /// same transaction, that this replica holds the lease (else [`StoreError::Fenced`], nothing
    /// written).
    fn begin<'c>(&self, conn: &'c mut Conn) -> Result<db::Tx<'c>, StoreError> {
        let mut tx = conn.begin()?;
        if let Some(fence) = &self.fence
            && tx.is_postgres()
        {
            fence.check(&mut tx)?;
        }
        Ok(tx)
    }

    fn insert_audit(conn: &mut Conn, e: &AuditEntry) -> Result<i64, StoreError> {
        // The flag of an action target (`actuator|flag|environment|slice`), for the indexed filter.
        let flag = e.target.as_deref().and_then(|t| t.split('|').nth(1).filter(|_| t.matches('|').count() >= 2));
        conn.scalar(
            "INSERT INTO audit (at_ms, actor, kind, rule, action_id, target, before, after, evidence, flag) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
            params![e.at.as_millis() as i64, e.actor, e.kind, e.rule, e.action_id, e.target, json(&e.before), json(&e.after), json(&e.evidence), flag],
        )?
        .ok_or_else(|| StoreError::Corrupt("an insert returned no id".into()))
    }

    /// Appends one audit record.
    pub fn audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let id = Store::insert_audit(&mut tx, entry)?;
        tx.commit()?;
        Ok(id)
    }
}

#[cfg(test)]
pub(crate) mod test_pg;
#[cfg(test)]
mod tests;

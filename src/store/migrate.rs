//! `flagguard store migrate`: copies an embedded SQLite store (a data directory) into an empty
//! PostgreSQL store when a site switches to cluster mode — the audit log, the outbox (pending
//! actions resume on the cluster's leader), rule state, alert dedupe, plans, usage,
//! controls and proposals, with their ids (action ids in links and audit records stay valid), in one
//! transaction: all of it or nothing.

use super::*;

/// Tables and their columns, in an order that keeps references valid.
const TABLES: &[(&str, &str)] = &[
    ("audit", "id, at_ms, actor, kind, rule, action_id, target, before, after, evidence, flag"),
    (
        "outbox",
        "id, created_ms, target, kind, state, request, attempts, next_attempt_ms, last_error, triggers, updated_ms, idempotency_key, result, state_ms, saved",
    ),
    ("rule_state", "slice, last_fired_ms, rule, flag, held"),
    ("alert_deliveries", "source, dedup_key, status, first_ms, last_ms, deliveries"),
    ("rollouts", "key, state, updated_ms"),
    ("flag_usage", "flag, variant, first_ms, last_ms"),
    ("controls", "id, state, updated_ms"),
    ("proposals", "id, created_ms, kind, flag, environment, request, proposer, reason, state, expires_ms, decided_by, decided_ms, action_id"),
];

/// Rows copied per table.
pub type Copied = Vec<(&'static str, usize)>;

impl Store {
    /// Copies this (SQLite) store into `target` (PostgreSQL, empty). Refuses a target that
    /// already holds audit records or actions: a migration never merges two histories.
    pub fn copy_into(&self, target: &Store) -> Result<Copied, StoreError> {
        if self.is_postgres() || !target.is_postgres() {
            return Err(StoreError::Unsupported("store migrate copies a SQLite data directory into PostgreSQL"));
        }
        let mut source = self.lock();
        let mut conn = target.lock();
        let mut tx = conn.begin()?;
        for table in ["audit", "outbox"] {
            if tx.scalar::<i64>(&format!("SELECT COUNT(*) FROM {table}"), &[])?.unwrap_or(0) > 0 {
                return Err(StoreError::Config(format!("the PostgreSQL store already has {table} rows; migrate into an empty database")));
            }
        }
        let mut copied = Vec::new();
        for (table, columns) in TABLES {
            let rows = source.query(&format!("SELECT {columns} FROM {table}"), &[])?;
            let n = columns.split(',').count();
            let placeholders: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
            let insert = format!("INSERT INTO {table} ({columns}) VALUES ({})", placeholders.join(", "));
            for row in &rows {
                let params: Vec<&dyn rusqlite::ToSql> = row.0.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
                tx.execute(&insert, &params)?;
            }
            copied.push((*table, rows.len()));
        }
        // New rows continue after the copied ids.
        for table in ["audit", "outbox", "proposals"] {
            tx.query(&format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"), &[])?;
        }
        tx.commit()?;
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the daemon wrote embedded reads the same from PostgreSQL after the copy, and new
    /// actions there continue after the copied ids.
    #[test]
    fn a_data_directory_copies_into_postgres_with_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(dir.path()).unwrap();
        let audit =
            AuditEntry { at: Timestamp(5), actor: "rule:r".into(), kind: "kill_decided".into(), target: Some("flags|f||".into()), ..AuditEntry::default() };
        let request = serde_json::json!({ "flag": "f", "rule": "r" });
        let action = NewAction {
            target: "flags|f||",
            kind: ActionKind::Kill,
            request: &request,
            idempotency_key: "k1",
            slice_key: "r/f",
            automatic: true,
            audit: &audit,
        };
        let Submitted::New(id) = sqlite.submit(&action).unwrap() else { panic!("new") };
        sqlite.record_usage(&[crate::rollout::hygiene::Usage { flag: "f".into(), variant: "on".into(), first_ms: 1, last_ms: 9 }]).unwrap();

        let pg = Store::open_postgres(&super::test_pg::database("migrate")).unwrap();
        let copied = sqlite.copy_into(&pg).unwrap();
        assert!(copied.contains(&("outbox", 1)) && copied.contains(&("rule_state", 1)) && copied.contains(&("flag_usage", 1)), "{copied:?}");
        let row = pg.action(id).unwrap().expect("the action keeps its id");
        assert_eq!((row.state, row.idempotency_key.as_str()), (ActionState::Pending, "k1"));
        assert_eq!(pg.timeline(id).unwrap().len(), 1);
        assert_eq!(pg.last_fired().unwrap()["r/f"].at, Timestamp(5));
        let other = NewAction { target: "flags|g||", idempotency_key: "k2", slice_key: "", ..action };
        let Submitted::New(next) = pg.submit(&other).unwrap() else { panic!("new") };
        assert!(next > id, "new ids continue after the copied ones");
        assert!(sqlite.copy_into(&pg).is_err(), "a second copy would merge two histories");
    }
}

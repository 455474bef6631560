//! The audit log's reads (the API's, through the reader connection), retention and backup.

use super::*;

impl Store {
    /// An action's audit records, oldest first: its timeline.
    pub fn timeline(&self, action_id: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self.read().query(
            "SELECT id, at_ms, actor, kind, rule, action_id, target, before, after, evidence FROM audit WHERE action_id = ?1 ORDER BY id",
            params![action_id],
        )?;
        Ok(rows.iter().map(Store::audit_row).collect::<Result<_, _>>()?)
    }

    fn audit_row(r: &Row) -> rusqlite::Result<AuditRecord> {
        Ok(AuditRecord {
            id: r.get(0)?,
            at: Timestamp(r.get::<i64>(1)? as u64).rfc3339(),
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

    /// Audit records matching `filter`: newest first, or oldest first from `after_id`. Only the
    /// given filters become conditions, so SQLite can serve each from its index (a generic
    /// `?n IS NULL OR col = ?n` defeats them: measured in `benches/store.rs`).
    pub fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut conditions: Vec<&str> = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |condition: &'static str, value: rusqlite::types::Value| {
            conditions.push(condition);
            values.push(value);
        };
        use rusqlite::types::Value::{Integer, Text};
        if let Some(id) = f.before_id {
            add("id < ?", Integer(id));
        }
        if let Some(id) = f.after_id {
            add("id > ?", Integer(id));
        }
        if let Some(kind) = &f.kind {
            add("kind = ?", Text(kind.clone()));
        }
        if let Some(actor) = &f.actor {
            add("actor = ?", Text(actor.clone()));
        }
        if let Some(rule) = &f.rule {
            add("rule = ?", Text(rule.clone()));
        }
        if let Some(flag) = &f.flag {
            // A record names a flag in its own column (action targets) or as its whole target.
            add("id IN (SELECT id FROM audit WHERE flag = ?1 UNION SELECT id FROM audit WHERE target = ?1)", Text(flag.clone()));
        }
        if let Some(since) = f.since {
            add("at_ms >= ?", Integer(since.as_millis() as i64));
        }
        if let Some(until) = f.until {
            add("at_ms < ?", Integer(until.as_millis() as i64));
        }
        if let Some(id) = f.action_id {
            add("action_id = ?", Integer(id));
        }
        // Numbered placeholders, in order (the flag's subquery uses its one twice).
        let mut sql_conditions = Vec::new();
        for (i, c) in conditions.iter().enumerate() {
            let n = i + 1;
            sql_conditions.push(if c.contains("?1") { c.replace("?1", &format!("?{n}")) } else { c.replace('?', &format!("?{n}")) });
        }
        let order = if f.after_id.is_some() { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT id, at_ms, actor, kind, rule, action_id, target, before, after, evidence FROM audit {} ORDER BY id {order} LIMIT {}",
            if sql_conditions.is_empty() { String::new() } else { format!("WHERE {}", sql_conditions.join(" AND ")) },
            f.limit
        );
        let params: Vec<&dyn rusqlite::ToSql> = values.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
        let rows = self.read().query(&sql, &params)?;
        Ok(rows.iter().map(Store::audit_row).collect::<Result<_, _>>()?)
    }

    /// Retention: deletes audit records older than `cutoff` and records that it did (the one
    /// deletion of the append-only log, by configuration, itself audited). Returns the count.
    pub fn prune_audit(&self, cutoff: Timestamp, now: Timestamp) -> Result<usize, StoreError> {
        // In batches, the lock released between them: a first prune of a large log does not
        // stall the pipeline, the executor and the API behind one long transaction.
        let mut deleted = 0;
        loop {
            let n =
                self.write("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at_ms < ?1 ORDER BY id LIMIT 5000)", params![cutoff.as_millis() as i64])?;
            deleted += n;
            if n < 5000 {
                break;
            }
        }
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        if deleted > 0 {
            Store::insert_audit(
                &mut tx,
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
        match &mut *self.lock() {
            Conn::Sqlite(conn) => {
                conn.execute("VACUUM INTO ?1", params![path.to_string_lossy()])?;
                Ok(())
            }
            Conn::Postgres(_) => Err(StoreError::Unsupported("a PostgreSQL store is backed up with PostgreSQL's own tools (pg_dump, base backups)")),
        }
    }

    /// The configuration recorded by the last `started` record, if any (to audit what changed).
    pub fn last_started_config(&self) -> Result<Option<serde_json::Value>, StoreError> {
        let mut conn = self.lock();
        let after: Option<Option<String>> = conn.scalar("SELECT after FROM audit WHERE kind = 'started' ORDER BY id DESC LIMIT 1", &[])?;
        Ok(parse(after.flatten()).and_then(|v| v.get("config").cloned()))
    }
}

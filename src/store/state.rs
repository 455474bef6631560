//! Rollout plan instances, flag usage and the operator controls.

use super::*;

impl Store {
    /// Every rollout plan instance's state (`rollout::PlanState` as JSON), by key.
    pub fn plan_states(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let conn = self.read();
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
        let conn = self.read();
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
}

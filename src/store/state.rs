//! Rollout plan instances, flag usage and the operator controls.

use super::*;

impl Store {
    /// Every rollout plan instance's state (`rollout::PlanState` as JSON), by key.
    pub fn plan_states(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows = self.read().query("SELECT state FROM rollouts ORDER BY key", &[])?;
        Ok(rows.iter().filter_map(|r| r.get::<String>(0).ok().and_then(|s| serde_json::from_str(&s).ok())).collect())
    }

    pub fn plan_state(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let mut conn = self.lock();
        let state: Option<String> = conn.scalar("SELECT state FROM rollouts WHERE key = ?1", params![key])?;
        Ok(state.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Writes a plan instance's state, with its audit record, in one transaction.
    pub fn save_plan(&self, key: &str, state: &serde_json::Value, audit: Option<&AuditEntry>) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        Store::write_plan_in(&mut tx, key, state, audit)?;
        tx.commit()?;
        Ok(())
    }

    fn write_plan_in(tx: &mut Conn, key: &str, state: &serde_json::Value, audit: Option<&AuditEntry>) -> Result<(), StoreError> {
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
        let mut tx = self.begin(&mut conn)?;
        let current: Option<String> = tx.scalar("SELECT state FROM rollouts WHERE key = ?1", params![key])?;
        if parse(current).as_ref() != expected {
            return Ok(false);
        }
        Store::write_plan_in(&mut tx, key, state, audit)?;
        tx.commit()?;
        Ok(true)
    }

    /// Merges first/last evaluation times of flag variants, in one transaction.
    pub fn record_usage(&self, usage: &[crate::rollout::hygiene::Usage]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        for u in usage {
            tx.execute(
                "INSERT INTO flag_usage (flag, variant, first_ms, last_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(flag, variant) DO UPDATE SET \
                 first_ms = CASE WHEN excluded.first_ms < flag_usage.first_ms THEN excluded.first_ms ELSE flag_usage.first_ms END, \
                 last_ms = CASE WHEN excluded.last_ms > flag_usage.last_ms THEN excluded.last_ms ELSE flag_usage.last_ms END",
                params![u.flag, u.variant, u.first_ms as i64, u.last_ms as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn usage(&self) -> Result<Vec<crate::rollout::hygiene::Usage>, StoreError> {
        let rows = self.read().query("SELECT flag, variant, first_ms, last_ms FROM flag_usage", &[])?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(crate::rollout::hygiene::Usage { flag: r.get(0)?, variant: r.get(1)?, first_ms: r.get::<i64>(2)? as u64, last_ms: r.get::<i64>(3)? as u64 })
            })
            .collect::<Result<_, rusqlite::Error>>()?)
    }

    /// The operator controls in force (pause, allow/deny lists, silences).
    pub fn controls(&self) -> Result<crate::controls::Controls, StoreError> {
        let mut conn = self.lock();
        let state: Option<String> = conn.scalar("SELECT state FROM controls WHERE id = 1", &[])?;
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
        let mut tx = self.begin(&mut conn)?;
        let state: Option<String> = tx.scalar("SELECT state FROM controls WHERE id = 1", &[])?;
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
        Store::insert_audit(&mut tx, &entry)?;
        tx.commit()?;
        Ok(Ok(after))
    }
}

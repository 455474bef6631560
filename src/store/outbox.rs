//! The action outbox and rule state: submissions (one pending action per target), outcomes
//! and transitions along `crate::action::TRANSITIONS`, each with its audit record in one
//! transaction. Written only through `act::outbox::Outbox`.

use super::*;

impl Store {
    /// One statement in a write transaction of its own (fenced when this handle is).
    pub(super) fn write(&self, sql: &str, params: db::Params<'_>) -> Result<usize, StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let n = tx.execute(sql, params)?;
        tx.commit()?;
        Ok(n)
    }

    /// Writes an action to the outbox (or joins the pending one for the same target), with its
    /// audit record, and remembers when the slice fired — in one transaction.
    pub fn submit(&self, action: &NewAction<'_>) -> Result<Submitted, StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let submitted = Store::submit_in(&mut tx, action)?;
        tx.commit()?;
        Ok(submitted)
    }

    fn submit_in(tx: &mut Conn, a: &NewAction<'_>) -> Result<Submitted, StoreError> {
        let now = a.audit.at.as_millis() as i64;
        // Only a rule's (or an alert mapping's) slice has a cooldown; notifications, manual and
        // fallback kills leave no rule state behind.
        if !a.slice_key.is_empty() {
            let field = |k: &str| a.request.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
            Store::fire_in(tx, a.slice_key, field("rule").as_deref(), field("flag").as_deref(), false, now)?;
        }
        if a.kind == ActionKind::Kill {
            let overridden: Option<i64> = tx.scalar("SELECT id FROM outbox WHERE target = ?1 AND kind = 'kill' ORDER BY id DESC LIMIT 1", params![a.target])?;
            let overridden = match overridden {
                Some(id) if Store::state_in(tx, id)? == Some(ActionState::Overridden) => Some(id),
                _ => None,
            };
            // Only automatic kills defer to the human; an operator's or a plan's kill goes out.
            if let (Some(id), true) = (overridden, a.automatic) {
                Store::insert_audit(tx, &AuditEntry { kind: "kill_suppressed".into(), action_id: Some(id), ..a.audit.clone() })?;
                return Ok(Submitted::Suppressed(id));
            }
            Store::supersede_rollouts(tx, a.target, a.audit)?;
            // A kill supersedes a pending restore of the same target too (the executor runs one
            // action per target at a time, so one already in flight finishes first).
            let restore: Option<i64> = tx.scalar("SELECT id FROM outbox WHERE target = ?1 AND state = 'pending' AND kind = 'restore'", params![a.target])?;
            if let Some(id) = restore {
                tx.execute("UPDATE outbox SET state = 'superseded', state_ms = ?2, updated_ms = ?2 WHERE id = ?1", params![id, now])?;
                Store::insert_audit(tx, &AuditEntry { kind: "restore_superseded".into(), action_id: Some(id), ..a.audit.clone() })?;
            }
        }
        let open: Option<i64> = tx.scalar("SELECT id FROM outbox WHERE target = ?1 AND state = 'pending' AND kind = ?2", params![a.target, a.kind.column()])?;
        Ok(match open {
            Some(id) => {
                tx.execute("UPDATE outbox SET triggers = triggers + 1, updated_ms = ?2 WHERE id = ?1", params![id, now])?;
                Store::insert_audit(tx, &AuditEntry { kind: format!("{}_joined", a.kind.column()), action_id: Some(id), ..a.audit.clone() })?;
                Submitted::Joined(id)
            }
            None => {
                let id = Store::insert_action(tx, a.target, a.kind, a.request, a.idempotency_key, now)?;
                Store::insert_audit(tx, &AuditEntry { action_id: Some(id), ..a.audit.clone() })?;
                Submitted::New(id)
            }
        })
    }

    fn state_in(tx: &mut Conn, id: i64) -> Result<Option<ActionState>, StoreError> {
        Ok(tx.scalar::<String>("SELECT state FROM outbox WHERE id = ?1", params![id])?.and_then(|s| ActionState::parse(&s)))
    }

    /// A new pending action (with the epoch that decided it, in cluster mode); its id.
    fn insert_action(tx: &mut Conn, target: &str, kind: ActionKind, request: &serde_json::Value, key: &str, now: i64) -> Result<i64, StoreError> {
        tx.scalar(
            "INSERT INTO outbox (created_ms, target, kind, state, request, attempts, next_attempt_ms, triggers, updated_ms, idempotency_key, state_ms) VALUES (?1, ?2, ?3, 'pending', ?4, 0, ?1, 1, ?1, ?5, ?1) RETURNING id",
            params![now, target, kind.column(), request.to_string(), key],
        )?
        .ok_or_else(|| StoreError::Corrupt("an insert returned no id".into()))
    }

    /// A kill supersedes pending rollout changes of the same flag and environment.
    fn supersede_rollouts(tx: &mut Conn, kill_target: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        let rows: Vec<(i64, String)> = tx
            .query("SELECT id, target FROM outbox WHERE kind = 'rollout' AND state = 'pending'", &[])?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect::<Result<_, rusqlite::Error>>()?;
        let kill = Target::parse(kill_target);
        for (id, target) in rows {
            if kill.covers(&Target::parse(&target)) {
                tx.execute("UPDATE outbox SET state = 'superseded', state_ms = ?2, updated_ms = ?2 WHERE id = ?1", params![id, audit.at.as_millis() as i64])?;
                Store::insert_audit(tx, &AuditEntry { kind: "rollout_superseded".into(), action_id: Some(id), target: Some(target.clone()), ..audit.clone() })?;
            }
        }
        Ok(())
    }

    /// Queues an operator's action (restore, rollout change) unless it conflicts: another
    /// action is pending for the target, or a rollout change while the flag is killed.
    /// Returns the new action's id, or why it was refused.
    pub fn submit_operator(&self, a: &NewAction<'_>) -> Result<Result<i64, Refused>, StoreError> {
        let (target, audit) = (a.target, a.audit);
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        // A caller's key (`client:…`, unique in the outbox) makes its change once.
        if a.idempotency_key.starts_with(CLIENT_KEY)
            && let Some(r) = tx.query_opt("SELECT id, target, request FROM outbox WHERE idempotency_key = ?1", params![a.idempotency_key])?
        {
            let (id, old_target, old_request): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let same = old_target == target && serde_json::from_str::<serde_json::Value>(&old_request).ok().is_some_and(|old| same_change(&old, a.request));
            return Ok(Err(if same { Refused::SameKey { id } } else { Refused::KeyReused { id } }));
        }
        let pending: Option<(i64, String)> = match tx.query_opt("SELECT id, kind FROM outbox WHERE target = ?1 AND state = 'pending'", params![target])? {
            Some(r) => Some((r.get(0)?, r.get(1)?)),
            None => None,
        };
        if let Some((id, other)) = pending {
            return Ok(Err(Refused::Pending { id, kind: kind_of(&other).unwrap_or(ActionKind::Kill) }));
        }
        if a.kind == ActionKind::Rollout {
            // Any kill that reached the flag system and was not restored (or overridden by a
            // human) still holds the flag off.
            use ActionState::*;
            let killed: Vec<(i64, String)> = tx
                .query(
                    &format!(
                        "SELECT id, target FROM outbox WHERE kind = 'kill' AND (state IN ({}) OR (state = 'escalated' AND result IS NOT NULL))",
                        ActionState::sql_list(&[Pending, Sent, Confirmed, Drained, Unverified, Recovered, Failed])
                    ),
                    &[],
                )?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<_, rusqlite::Error>>()?;
            let wanted = Target::parse(target);
            if let Some((id, _)) = killed.iter().find(|(_, t)| Target::parse(t).covers(&wanted)) {
                return Ok(Err(crate::action::Refused::Killed { id: *id }));
            }
        }
        let now = audit.at.as_millis() as i64;
        let id = Store::insert_action(&mut tx, target, a.kind, a.request, a.idempotency_key, now)?;
        Store::insert_audit(&mut tx, &AuditEntry { action_id: Some(id), target: Some(target.into()), ..audit.clone() })?;
        tx.commit()?;
        Ok(Ok(id))
    }

    /// Records one alert delivery (audited as `received.kind`, or `alert_duplicate` when the
    /// same (source, key, status) was first seen less than 24 h ago) and, for a first delivery, writes
    /// `action` (an outbox entry, or just its audit record) — in
    /// one transaction, so an acknowledged alert's action is never lost nor doubled.
    pub fn accept_alert(
        &self,
        source: &str,
        dedup_key: &str,
        status: &str,
        received: &AuditEntry,
        action: Option<&AlertAction<'_>>,
    ) -> Result<AlertOutcome, StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let now = received.at.as_millis() as i64;
        // 24 h from the first delivery: re-sends (which refresh `last_ms`) never keep it alive.
        tx.execute("DELETE FROM alert_deliveries WHERE first_ms < ?1", params![now - 24 * 3600 * 1000])?;
        let first = tx.execute(
            "INSERT INTO alert_deliveries (source, dedup_key, status, first_ms, last_ms) VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING",
            params![source, dedup_key, status, now],
        )? == 1;
        if !first {
            tx.execute(
                "UPDATE alert_deliveries SET deliveries = deliveries + 1, last_ms = ?4 WHERE source = ?1 AND dedup_key = ?2 AND status = ?3",
                params![source, dedup_key, status, now],
            )?;
        }
        let kind = if first { received.kind.clone() } else { "alert_duplicate".to_owned() };
        Store::insert_audit(&mut tx, &AuditEntry { kind, ..received.clone() })?;
        let submitted = match action.filter(|_| first) {
            Some(AlertAction::Audit(audit)) => {
                Store::insert_audit(&mut tx, audit)?;
                None
            }
            Some(AlertAction::Queue(a)) => Some(Store::submit_in(&mut tx, a)?),
            None => None,
        };
        tx.commit()?;
        Ok(AlertOutcome { duplicate: !first, submitted })
    }

    fn fire_in(tx: &mut Conn, slice: &str, rule: Option<&str>, flag: Option<&str>, held: bool, at_ms: i64) -> Result<usize, StoreError> {
        tx.execute(
            "INSERT INTO rule_state (slice, last_fired_ms, rule, flag, held) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT(slice) DO UPDATE SET last_fired_ms = excluded.last_fired_ms, rule = COALESCE(excluded.rule, rule_state.rule), flag = COALESCE(excluded.flag, rule_state.flag), held = excluded.held",
            params![slice, at_ms, rule, flag, held],
        )
    }

    /// Remembers that a slice fired without an outbox entry (dry-run, incidents, and kills an
    /// operator control `held`: those are re-armed when the control is lifted, also after a
    /// restart, see [`Store::held_slices`]).
    pub fn record_fired(&self, fired: &Fired<'_>, at: Timestamp, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        Store::fire_in(&mut tx, fired.slice, Some(fired.rule), Some(fired.flag), fired.held, at.as_millis() as i64)?;
        Store::insert_audit(&mut tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    /// When each slice last fired, and whose flag it is (cooldowns across restarts).
    pub fn last_fired(&self) -> Result<HashMap<String, crate::rules::engine::Fired>, StoreError> {
        let rows = self.lock().query("SELECT slice, last_fired_ms, flag FROM rule_state", &[])?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.get::<String>(0)?, crate::rules::engine::Fired { at: Timestamp(r.get::<i64>(1)? as u64), flag: r.get(2)? })))
            .collect::<Result<_, rusqlite::Error>>()?)
    }

    /// Kills decided since `since` (any replica's, any state), with the rule and slice that
    /// decided them: the incident limit's memory, read back on a takeover.
    pub fn kills_since(&self, since: Timestamp) -> Result<Vec<RecentKill>, StoreError> {
        let rows = self
            .lock()
            .query("SELECT request, created_ms FROM outbox WHERE kind = 'kill' AND created_ms >= ?1 ORDER BY id", params![since.as_millis() as i64])?;
        let mut kills = Vec::new();
        for r in &rows {
            let request: serde_json::Value = serde_json::from_str(&r.get::<String>(0)?).unwrap_or_default();
            let text = |k: &str| request[k].as_str().map(str::to_owned);
            if let (Some(rule), Some(flag)) = (text("rule"), text("flag")) {
                kills.push(RecentKill { rule, flag, service: text("service"), environment: text("environment"), at: Timestamp(r.get::<i64>(1)? as u64) });
            }
        }
        Ok(kills)
    }

    /// Slices whose kill an operator control held: (slice, flag, rule).
    pub fn held_slices(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = self.lock().query("SELECT slice, flag, rule FROM rule_state WHERE held = 1 AND flag IS NOT NULL AND rule IS NOT NULL", &[])?;
        Ok(rows.iter().map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).collect::<Result<_, rusqlite::Error>>()?)
    }

    fn row(r: &Row) -> Result<ActionRow, StoreError> {
        Ok(ActionRow {
            id: r.get(0)?,
            created: Timestamp(r.get::<i64>(1)? as u64).rfc3339(),
            target: r.get(2)?,
            kind: kind_of(&r.get::<String>(3)?).ok_or_else(|| corrupt(3, "kind"))?,
            state: ActionState::parse(&r.get::<String>(4)?).ok_or_else(|| corrupt(4, "state"))?,
            request: serde_json::from_str(&r.get::<String>(5)?).unwrap_or(serde_json::Value::Null),
            attempts: r.get(6)?,
            next_attempt_ms: r.get::<i64>(7)? as u64,
            last_error: r.get(8)?,
            triggers: r.get(9)?,
            idempotency_key: r.get(10)?,
            result: parse(r.get(11)?),
            state_ms: r.get::<i64>(12)? as u64,
            saved: parse(r.get(13)?),
        })
    }

    const ROW: &'static str = "SELECT id, created_ms, target, kind, state, request, attempts, next_attempt_ms, last_error, triggers, idempotency_key, result, state_ms, saved FROM outbox";

    /// Pending actions due at `now`, oldest first.
    pub fn due(&self, now: Timestamp) -> Result<Vec<ActionRow>, StoreError> {
        let rows =
            self.lock().query(&format!("{} WHERE state = 'pending' AND next_attempt_ms <= ?1 ORDER BY id", Store::ROW), params![now.as_millis() as i64])?;
        rows.iter().map(Store::row).collect()
    }

    /// When the next pending action is due.
    pub fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = self.lock().scalar("SELECT MIN(next_attempt_ms) FROM outbox WHERE state = 'pending'", &[])?;
        Ok(next.map(|n| Timestamp(n as u64)))
    }

    /// Cluster mode: claims a pending action for a call under this replica's lease — fenced,
    /// and only if the lease outlives `call` (the call's timeout), so a call never outlasts
    /// the authority it started under. Returns the epoch, or `None` when the action is no longer
    /// pending. Embedded (no fence): nothing to claim, `Some(0)`.
    pub fn claim(&self, id: i64, call: std::time::Duration) -> Result<Option<i64>, StoreError> {
        let Some(fence) = &self.fence else { return Ok(Some(0)) };
        let mut conn = self.lock();
        let mut tx = conn.begin()?;
        if tx.is_postgres() {
            fence.check_outliving(&mut tx, call)?;
        }
        let epoch = fence.epoch().ok_or(StoreError::Fenced)?;
        let claimed = tx.execute("UPDATE outbox SET claim_epoch = ?2 WHERE id = ?1 AND state = 'pending'", params![id, epoch])?;
        tx.commit()?;
        Ok((claimed == 1).then_some(epoch))
    }

    /// Records a failed attempt to retry at `next`.
    pub fn reschedule(&self, id: i64, attempts: u32, next: Timestamp, error: &str, now: Timestamp) -> Result<(), StoreError> {
        self.write(
            "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4, updated_ms = ?5 WHERE id = ?1 AND state = 'pending'",
            params![id, attempts, next.as_millis() as i64, error, now.as_millis() as i64],
        )?;
        Ok(())
    }

    /// Finishes a pending action's call (`sent`, `confirmed`, `escalated`) with what the flag
    /// system answered, together with its audit record: the tests' short form of
    /// [`Store::finish_with`] (which the executor uses), for an action still `pending`.
    #[cfg(test)]
    pub fn finish(
        &self,
        id: i64,
        state: ActionState,
        attempts: u32,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        if !ActionState::Pending.may_become(state) {
            return Err(StoreError::Transition { id, from: ActionState::Pending, to: state });
        }
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let changed = tx.execute(
            "UPDATE outbox SET state = ?2, attempts = ?3, last_error = COALESCE(?4, last_error), updated_ms = ?5, state_ms = ?5, result = COALESCE(?6, result) WHERE id = ?1 AND state = 'pending'",
            params![id, state.as_str(), attempts, error, audit.at.as_millis() as i64, result.map(|r| r.to_string())],
        )?;
        if changed == 1 {
            Store::insert_audit(&mut tx, &AuditEntry { action_id: Some(id), ..audit.clone() })?;
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
        if !ActionState::Pending.may_become(o.state) {
            return Err(StoreError::Transition { id: o.id, from: ActionState::Pending, to: o.state });
        }
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let at = o.audit.at.as_millis() as i64;
        let changed = tx.execute(
            "UPDATE outbox SET state = ?2, attempts = ?3, last_error = COALESCE(?4, last_error), updated_ms = ?5, state_ms = ?5, result = COALESCE(?6, result) \
             WHERE id = ?1 AND state IN ('pending', 'superseded')",
            params![o.id, o.state.as_str(), o.attempts, o.error, at, o.result.as_ref().map(|r| r.to_string())],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        Store::insert_audit(&mut tx, &AuditEntry { action_id: Some(o.id), ..o.audit.clone() })?;
        if let Some(r) = &o.restored {
            let sql =
                format!("SELECT id FROM outbox WHERE kind = 'kill' AND target = ?1 AND id != ?2 AND state IN ({}) ORDER BY id", ActionState::sql_list(HOLDING));
            let kills: Vec<i64> = tx.query(&sql, params![r.target, o.id])?.iter().map(|row| row.get(0)).collect::<Result<_, _>>()?;
            for kill in kills {
                tx.execute("UPDATE outbox SET state = 'restored', updated_ms = ?2, state_ms = ?2 WHERE id = ?1", params![kill, at])?;
                Store::insert_audit(&mut tx, &AuditEntry { action_id: Some(kill), ..r.audit.clone() })?;
            }
            if !r.slice_key.is_empty() {
                tx.execute("DELETE FROM rule_state WHERE slice = ?1", params![r.slice_key])?;
            }
        }
        Store::follow_ups_in(&mut tx, &o.follow_ups)?;
        tx.commit()?;
        Ok(true)
    }

    /// Queues the actions an outcome brings (no rule state: they are not a rule's slice).
    fn follow_ups_in(tx: &mut Conn, follow_ups: &[FollowUp]) -> Result<(), StoreError> {
        for f in follow_ups {
            // No slice key: a fallback kill or a notification has no cooldown of its own.
            let action = NewAction {
                target: &f.target,
                kind: f.kind,
                request: &f.request,
                idempotency_key: &f.idempotency_key,
                slice_key: "",
                automatic: f.automatic,
                audit: &f.audit,
            };
            Store::submit_in(tx, &action)?;
        }
        Ok(())
    }

    /// Stores a kill's state before its first call (once: a later attempt never replaces it).
    pub fn save_snapshot(&self, id: i64, saved: &serde_json::Value) -> Result<(), StoreError> {
        self.write("UPDATE outbox SET saved = ?2 WHERE id = ?1 AND saved IS NULL", params![id, saved.to_string()])?;
        Ok(())
    }

    /// What the newest earlier kill of `target` that still holds it off (its call succeeded)
    /// saved, if that one saw the target serving: a kill of an already killed target restores to the state before
    /// the first kill, not to "off".
    pub fn holding_before(&self, target: &str, except: i64) -> Result<Option<serde_json::Value>, StoreError> {
        let sql = format!(
            "SELECT COALESCE(saved, json_extract(result, '$.before')) FROM outbox WHERE kind = 'kill' AND target = ?1 AND id != ?2 AND state IN ({}) AND result IS NOT NULL ORDER BY id DESC",
            ActionState::sql_list(&HOLDING.iter().copied().filter(|s| *s != ActionState::Overridden).collect::<Vec<_>>())
        );
        let rows = self.lock().query(&sql, params![target, except])?;
        for row in rows {
            let Some(before) = parse(row.get(0)?) else { continue };
            if before.get("serving").and_then(serde_json::Value::as_bool) == Some(true) {
                return Ok(Some(before));
            }
        }
        Ok(None)
    }

    /// Records what a call that succeeded applied, before its read-back: even if the action
    /// later escalates (the read-back never agrees), its restore knows what to undo.
    pub fn record_applied(&self, id: i64, result: &serde_json::Value) -> Result<(), StoreError> {
        self.write("UPDATE outbox SET result = ?2 WHERE id = ?1 AND state IN ('pending', 'superseded')", params![id, result.to_string()])?;
        Ok(())
    }

    /// Whether the action is still pending (not superseded since it was read).
    pub fn is_pending(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.lock().scalar::<i64>("SELECT COUNT(*) FROM outbox WHERE id = ?1 AND state = 'pending'", params![id])?.unwrap_or(0) > 0)
    }

    /// The newest kill per target of `flag` (narrowed by environment and region), newest
    /// first, whatever the size of the outbox.
    pub fn flag_kills(&self, flag: &str) -> Result<Vec<ActionRow>, StoreError> {
        let sql = format!(
            "{} WHERE id IN (SELECT MAX(id) FROM outbox WHERE kind = 'kill' AND json_extract(request, '$.flag') = ?1 GROUP BY target) ORDER BY id DESC",
            Store::ROW
        );
        let rows = self.read().query(&sql, params![flag])?;
        rows.iter().map(Store::row).collect()
    }

    /// Moves an action from one of the `from` states to `to`, with its audit record, in one
    /// transaction. Returns false (and audits nothing) when it was in another state.
    pub fn transition(&self, id: i64, from: &[ActionState], to: ActionState, error: Option<&str>, audit: &AuditEntry) -> Result<bool, StoreError> {
        self.transition_with(id, from, to, error, audit, &[])
    }

    /// [`Store::transition`] that also queues `follow_ups` (a fallback kill, notifications) in
    /// the same transaction, only when the transition happens.
    pub fn transition_with(
        &self,
        id: i64,
        from: &[ActionState],
        to: ActionState,
        error: Option<&str>,
        audit: &AuditEntry,
        follow_ups: &[FollowUp],
    ) -> Result<bool, StoreError> {
        if let Some(bad) = from.iter().find(|f| !f.may_become(to)) {
            return Err(StoreError::Transition { id, from: *bad, to });
        }
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let Some(state) = Store::state_in(&mut tx, id)?.filter(|s| from.contains(s)) else { return Ok(false) };
        tx.execute(
            "UPDATE outbox SET state = ?2, last_error = COALESCE(?3, last_error), updated_ms = ?4, state_ms = ?4 WHERE id = ?1",
            params![id, to.as_str(), error, audit.at.as_millis() as i64],
        )?;
        debug_assert!(state.may_become(to));
        Store::insert_audit(&mut tx, &AuditEntry { action_id: Some(id), ..audit.clone() })?;
        Store::follow_ups_in(&mut tx, follow_ups)?;
        tx.commit()?;
        Ok(true)
    }

    /// Kills whose effect is being watched, oldest first: `sent` and `confirmed` (until they
    /// drain or the drain deadline passes), and `drained` / `recovered` ones that entered that
    /// state after `since` (recovery, auto-restore and drift checks end after a while).
    pub fn watched_kills(&self, since: Timestamp) -> Result<Vec<ActionRow>, StoreError> {
        let rows = self.lock().query(
            &format!(
                "{} WHERE kind = 'kill' AND (state IN ('sent', 'confirmed') OR (state IN ('drained', 'recovered') AND state_ms >= ?1)) ORDER BY id",
                Store::ROW
            ),
            params![since.as_millis() as i64],
        )?;
        rows.iter().map(Store::row).collect()
    }

    /// Actions in `state` that entered it at or after `since` (e.g. recent restores).
    pub fn in_state_since(&self, state: ActionState, since: Timestamp) -> Result<Vec<ActionRow>, StoreError> {
        let rows =
            self.lock().query(&format!("{} WHERE state = ?1 AND state_ms >= ?2 ORDER BY id", Store::ROW), params![state.as_str(), since.as_millis() as i64])?;
        rows.iter().map(Store::row).collect()
    }

    /// Whether a restore of kill `kill_id` was ever queued (auto-restore tries once).
    pub fn restore_attempted(&self, kill_id: i64) -> Result<bool, StoreError> {
        let n: Option<i64> =
            self.lock().scalar("SELECT COUNT(*) FROM outbox WHERE kind = 'restore' AND json_extract(request, '$.restores') = ?1", params![kill_id])?;
        Ok(n.unwrap_or(0) > 0)
    }

    /// The newest `limit` kills of a flag (every target), newest first.
    pub fn recent_kills(&self, flag: &str, limit: u32) -> Result<Vec<ActionRow>, StoreError> {
        let sql = format!("{} WHERE kind = 'kill' AND json_extract(request, '$.flag') = ?1 ORDER BY id DESC LIMIT ?2", Store::ROW);
        let rows = self.read().query(&sql, params![flag, limit])?;
        rows.iter().map(Store::row).collect()
    }

    /// The pending actions of a flag (every target), oldest first.
    pub fn pending_for_flag(&self, flag: &str) -> Result<Vec<ActionRow>, StoreError> {
        let sql = format!("{} WHERE state = 'pending' AND json_extract(request, '$.flag') = ?1 ORDER BY id", Store::ROW);
        let rows = self.read().query(&sql, params![flag])?;
        rows.iter().map(Store::row).collect()
    }

    /// Whether an action for `target` is pending (e.g. a restore in flight).
    pub fn has_pending(&self, target: &str) -> Result<bool, StoreError> {
        Ok(self.lock().scalar::<i64>("SELECT COUNT(*) FROM outbox WHERE target = ?1 AND state = 'pending'", params![target])?.unwrap_or(0) > 0)
    }

    /// Forgets a slice's cooldown (after a restore).
    pub fn clear_cooldown(&self, slice_key: &str) -> Result<(), StoreError> {
        self.write("DELETE FROM rule_state WHERE slice = ?1", params![slice_key])?;
        Ok(())
    }

    /// Most recent actions first.
    pub fn actions(&self, limit: u32) -> Result<Vec<ActionRow>, StoreError> {
        let rows = self.read().query(&format!("{} ORDER BY id DESC LIMIT ?1", Store::ROW), params![limit])?;
        rows.iter().map(Store::row).collect()
    }

    pub fn action(&self, id: i64) -> Result<Option<ActionRow>, StoreError> {
        let row = self.lock().query_opt(&format!("{} WHERE id = ?1", Store::ROW), params![id])?;
        row.as_ref().map(Store::row).transpose()
    }

    /// Pending actions (for /readyz and /metrics).
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().scalar::<i64>("SELECT COUNT(*) FROM outbox WHERE state = 'pending'", &[])?.unwrap_or(0) as u64)
    }
}

/// The prefix of idempotency keys a caller chose (`flags set-rollout --idempotency-key`).
pub const CLIENT_KEY: &str = "client:";

/// Whether two stored requests are the same step: the same kind of change (the target is
/// compared too). A retried `set-rollout --by 5` computes its percentages anew from a flag the
/// first attempt already moved; the key names the step, and the first attempt's change stands.
fn same_change(old: &serde_json::Value, new: &serde_json::Value) -> bool {
    old.get("kind") == new.get("kind")
}

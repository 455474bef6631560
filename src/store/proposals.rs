//! Proposals: changes in a regulated environment waiting for a second person's approval
//! (`api::approvals`). Each move — proposed, approved, rejected, expired — is one transaction
//! with its audit record; a proposal is decided once.

use super::*;

/// Whether changes in `environment` need approval when `regulated` environments are listed (a
/// change in every environment does when any is).
pub fn regulated(regulated: &[String], environment: Option<&str>) -> bool {
    match environment {
        Some(env) => regulated.iter().any(|r| r == env),
        None => !regulated.is_empty(),
    }
}

/// A rollout this close to 100 % is a promotion to everyone (LaunchDarkly rounds to
/// thousandths of a percent).
pub fn to_everyone(percent: f64) -> bool {
    percent >= 99.9995
}

/// What a proposal would do once approved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalKind {
    /// A rollout change to 100 %.
    Rollout,
    /// The restore of a killed flag.
    Restore,
    /// The resume of a paused rollout plan (or a plan's own step to 100 %).
    Resume,
    /// A change of the flag manifests in a regulated environment: a flag removed or made
    /// permanent. Until approved the drift watch keeps the flag as it was.
    Manifest,
}

impl ProposalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalKind::Rollout => "rollout",
            ProposalKind::Restore => "restore",
            ProposalKind::Resume => "resume",
            ProposalKind::Manifest => "manifest",
        }
    }

    fn parse(s: &str) -> Option<ProposalKind> {
        [ProposalKind::Rollout, ProposalKind::Restore, ProposalKind::Resume, ProposalKind::Manifest].into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a proposal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalState {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl ProposalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalState::Pending => "pending",
            ProposalState::Approved => "approved",
            ProposalState::Rejected => "rejected",
            ProposalState::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<ProposalState> {
        [ProposalState::Pending, ProposalState::Approved, ProposalState::Rejected, ProposalState::Expired].into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProposalRow {
    pub id: i64,
    pub created: String,
    pub kind: ProposalKind,
    pub flag: String,
    pub environment: Option<String>,
    /// What carries it out (an `act::ActionRequest`, the kill to restore, the plan to resume).
    pub request: serde_json::Value,
    pub proposer: String,
    pub reason: Option<String>,
    pub state: ProposalState,
    pub expires: String,
    pub decided_by: Option<String>,
    pub decided: Option<String>,
    /// The action the approval queued.
    pub action_id: Option<i64>,
}

pub struct NewProposal<'a> {
    pub kind: ProposalKind,
    pub flag: &'a str,
    pub environment: Option<&'a str>,
    pub request: &'a serde_json::Value,
    pub proposer: &'a str,
    pub reason: Option<&'a str>,
    pub at: Timestamp,
    pub expires: Timestamp,
}

const ROW: &str =
    "SELECT id, created_ms, kind, flag, environment, request, proposer, reason, state, expires_ms, decided_by, decided_ms, action_id FROM proposals";

fn row(r: &db::Row) -> Result<ProposalRow, StoreError> {
    let ms = |v: i64| Timestamp(v.max(0) as u64).rfc3339();
    let kind: String = r.get(2)?;
    let state: String = r.get(8)?;
    let request: String = r.get(5)?;
    Ok(ProposalRow {
        id: r.get(0)?,
        created: ms(r.get(1)?),
        kind: ProposalKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("proposal kind {kind:?}")))?,
        flag: r.get(3)?,
        environment: r.get(4)?,
        request: serde_json::from_str(&request).unwrap_or(serde_json::Value::Null),
        proposer: r.get(6)?,
        reason: r.get(7)?,
        state: ProposalState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("proposal state {state:?}")))?,
        expires: ms(r.get(9)?),
        decided_by: r.get(10)?,
        decided: r.get::<Option<i64>>(11)?.map(ms),
        action_id: r.get(12)?,
    })
}

impl Store {
    /// Records a proposal with its audit record (`proposal_created`).
    pub fn propose(&self, p: &NewProposal<'_>) -> Result<i64, StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let id = tx
            .scalar::<i64>(
                "INSERT INTO proposals (created_ms, kind, flag, environment, request, proposer, reason, state, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8) RETURNING id",
                params![p.at.as_millis() as i64, p.kind.as_str(), p.flag, p.environment, p.request.to_string(), p.proposer, p.reason, p.expires.as_millis() as i64],
            )?
            .ok_or_else(|| StoreError::Corrupt("an insert returned no id".into()))?;
        let audit = AuditEntry {
            at: p.at,
            actor: p.proposer.into(),
            kind: "proposal_created".into(),
            target: Some(format!("|{}|{}|", p.flag, p.environment.unwrap_or(""))),
            after: Some(serde_json::json!({ "proposal": id, "kind": p.kind, "request": p.request, "reason": p.reason, "expires": p.expires.rfc3339() })),
            ..AuditEntry::default()
        };
        Store::insert_audit(&mut tx, &audit)?;
        tx.commit()?;
        Ok(id)
    }

    /// Proposals, newest first (`state`: only those), after expiring the pending ones past due.
    pub fn proposals(&self, state: Option<ProposalState>, now: Timestamp) -> Result<Vec<ProposalRow>, StoreError> {
        self.expire_proposals(now)?;
        let rows = match state {
            Some(state) => self.read().query(&format!("{ROW} WHERE state = ?1 ORDER BY id DESC LIMIT 500"), params![state.as_str()])?,
            None => self.read().query(&format!("{ROW} ORDER BY id DESC LIMIT 500"), &[])?,
        };
        rows.iter().map(row).collect()
    }

    /// The pending or approved proposal an earlier request with this idempotency key made.
    pub fn proposal_by_key(&self, key: &str) -> Result<Option<ProposalRow>, StoreError> {
        let found = self.lock().query_opt(
            &format!("{ROW} WHERE json_extract(request, '$.client_key') = ?1 AND state IN ('pending', 'approved') ORDER BY id DESC LIMIT 1"),
            params![key],
        )?;
        found.as_ref().map(row).transpose()
    }

    pub fn proposal(&self, id: i64, now: Timestamp) -> Result<Option<ProposalRow>, StoreError> {
        self.expire_proposals(now)?;
        let found = self.lock().query_opt(&format!("{ROW} WHERE id = ?1"), params![id])?;
        found.as_ref().map(row).transpose()
    }

    /// Pending proposals past their expiry become `expired`, each audited (`proposal_expired`).
    fn expire_proposals(&self, now: Timestamp) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let due: Vec<(i64, String, Option<String>)> = conn
            .query("SELECT id, flag, environment FROM proposals WHERE state = 'pending' AND expires_ms < ?1", params![now.as_millis() as i64])?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .collect::<Result<_, rusqlite::Error>>()?;
        if due.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin(&mut conn)?;
        for (id, flag, env) in due {
            if tx.execute("UPDATE proposals SET state = 'expired', decided_ms = ?2 WHERE id = ?1 AND state = 'pending'", params![id, now.as_millis() as i64])?
                == 1
            {
                let audit = AuditEntry {
                    at: now,
                    actor: "system".into(),
                    kind: "proposal_expired".into(),
                    target: Some(format!("|{flag}|{}|", env.unwrap_or_default())),
                    after: Some(serde_json::json!({ "proposal": id })),
                    ..AuditEntry::default()
                };
                Store::insert_audit(&mut tx, &audit)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Decides a pending proposal (approved or rejected) with its audit record naming both
    /// actors; false, writing nothing, when it was decided already.
    pub fn decide_proposal(
        &self,
        p: &ProposalRow,
        to: ProposalState,
        by: &str,
        reason: Option<&str>,
        action: Option<i64>,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        let changed = tx.execute(
            "UPDATE proposals SET state = ?2, decided_by = ?3, decided_ms = ?4, action_id = ?5 WHERE id = ?1 AND state = 'pending'",
            params![p.id, to.as_str(), by, at.as_millis() as i64, action],
        )?;
        if changed != 1 {
            return Ok(false);
        }
        let audit = AuditEntry {
            at,
            actor: by.into(),
            kind: format!("proposal_{}", to.as_str()),
            action_id: action,
            target: Some(format!("|{}|{}|", p.flag, p.environment.as_deref().unwrap_or(""))),
            after: Some(serde_json::json!({ "proposal": p.id, "kind": p.kind, "proposer": p.proposer, "approver": by, "reason": reason, "action": action })),
            ..AuditEntry::default()
        };
        Store::insert_audit(&mut tx, &audit)?;
        tx.commit()?;
        Ok(true)
    }
}

impl Store {
    /// The action an approved proposal queued.
    pub fn set_proposal_action(&self, id: i64, action: i64) -> Result<(), StoreError> {
        self.write("UPDATE proposals SET action_id = ?2 WHERE id = ?1", params![id, action])?;
        Ok(())
    }

    /// An approval whose change could not be made (a conflict): the proposal is pending again,
    /// audited (`proposal_reopened`) with why.
    pub fn reopen_proposal(&self, p: &ProposalRow, by: &str, why: &str, at: Timestamp) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = self.begin(&mut conn)?;
        if tx.execute("UPDATE proposals SET state = 'pending', decided_by = NULL, decided_ms = NULL WHERE id = ?1 AND state = 'approved'", params![p.id])? == 1
        {
            let audit = AuditEntry {
                at,
                actor: by.into(),
                kind: "proposal_reopened".into(),
                target: Some(format!("|{}|{}|", p.flag, p.environment.as_deref().unwrap_or(""))),
                after: Some(serde_json::json!({ "proposal": p.id, "why": why })),
                ..AuditEntry::default()
            };
            Store::insert_audit(&mut tx, &audit)?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposal_past_its_expiry_expires_once_and_cannot_be_decided() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let request = serde_json::json!({ "percent": 100 });
        let new = |at: u64, expires: u64| NewProposal {
            kind: ProposalKind::Rollout,
            flag: "f",
            environment: Some("production"),
            request: &request,
            proposer: "token:alice",
            reason: None,
            at: Timestamp(at),
            expires: Timestamp(expires),
        };
        let old = store.propose(&new(1_000, 2_000)).unwrap();
        let fresh = store.propose(&new(1_000, 9_000)).unwrap();
        let pending = store.proposals(Some(ProposalState::Pending), Timestamp(5_000)).unwrap();
        assert_eq!(pending.iter().map(|p| p.id).collect::<Vec<_>>(), [fresh]);
        let expired = store.proposal(old, Timestamp(6_000)).unwrap().unwrap();
        assert_eq!(expired.state, ProposalState::Expired);
        assert!(!store.decide_proposal(&expired, ProposalState::Approved, "token:bob", None, None, Timestamp(6_000)).unwrap());
        assert_eq!(store.audit_log(10, None, Some("proposal_expired")).unwrap().len(), 1, "audited once");
        let p = store.proposal(fresh, Timestamp(6_000)).unwrap().unwrap();
        assert!(store.decide_proposal(&p, ProposalState::Approved, "token:bob", Some("ok"), Some(7), Timestamp(6_000)).unwrap());
        assert!(!store.decide_proposal(&p, ProposalState::Rejected, "token:carol", None, None, Timestamp(6_001)).unwrap(), "decided once");
        assert_eq!(store.proposal(fresh, Timestamp(6_002)).unwrap().unwrap().action_id, Some(7));
    }
}

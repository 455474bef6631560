//! The fenced lease: one row in PostgreSQL (`fg_lease`) naming the replica that acts, with an
//! epoch (the fencing token) and an expiry set by the database's clock. A standby takes an
//! expired lease (epoch + 1) every `acquire_interval`; the leader renews every
//! `renew_interval` and, by its own monotonic clock, stops starting calls `act.timeout` +
//! [`super::CALL_MARGIN`] before the lease could run out and stops writing when it could
//! ([`Fence`]). A graceful shutdown releases the lease, so a standby takes over within one
//! `acquire_interval`.
//!
//! The database clock decides expiry; the local clock only makes the leader give up early
//! (it counts from the moment the renewal was *sent*), so the two need equal rates, not equal
//! times.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Settings;
use crate::store::fence::LEASE;
use crate::store::postgres::PgConn;
use crate::store::{Fence, StoreError};
use crate::telemetry::Metrics;

/// This replica's side of the lease.
pub struct Lease {
    settings: Settings,
    fence: Arc<Fence>,
    /// Its own connection: renewals never queue behind the store's calls.
    conn: Arc<Mutex<PgConn>>,
    metrics: Arc<Metrics>,
    /// The API address others may reach this replica at (for `cluster status`).
    api: String,
    /// The lease row and members as last read (status answers from it without waiting for
    /// the database: it must answer while PostgreSQL does not).
    observed: Mutex<Option<(Instant, ClusterRows)>>,
}

/// The cluster's lease and members as PostgreSQL holds them (`flagguard cluster status`).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRows {
    /// Who holds the lease, and until when (ms from the read, by the database's clock; ≤ 0:
    /// expired).
    pub holder: Option<String>,
    pub epoch: i64,
    pub lease_expires_in_ms: i64,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub instance: String,
    pub api: Option<String>,
    /// Since the member last renewed or tried to acquire the lease.
    pub seen_ms_ago: i64,
}

/// What one attempt found.
enum Step {
    Held(i64),
    NotHeld,
}

impl Lease {
    pub fn connect(settings: &Settings, metrics: Arc<Metrics>, api: String) -> Result<Lease, StoreError> {
        let conn = PgConn::connect(&settings.store)?;
        Ok(Lease {
            fence: Arc::new(Fence::new(&settings.instance)),
            settings: settings.clone(),
            conn: Arc::new(Mutex::new(conn)),
            metrics,
            api,
            observed: Mutex::new(None),
        })
    }

    pub fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// Acquires, renews and finally releases the lease until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        // The epoch this replica last knew it held (to report each change once).
        let mut leading: Option<i64> = None;
        // Whether the last attempt failed (an outage is logged once, not every interval).
        let mut failing = false;
        loop {
            let sent = Instant::now();
            let held = self.fence.epoch();
            if let (Some(epoch), None) = (leading, held) {
                self.stepped_down(epoch, "it ran out by the local clock before a renewal succeeded (paused, or cut off from PostgreSQL)");
                leading = None;
            }
            let this = self.clone();
            let step = tokio::task::spawn_blocking(move || this.step(held)).await;
            let failed = matches!(step, Ok(Err(_)));
            if failing && !failed {
                tracing::info!("PostgreSQL answers again");
            }
            match step {
                Ok(Ok(Step::Held(epoch))) => {
                    self.fence.granted(epoch, sent, self.settings.lease_ttl, self.settings.call_margin());
                    if leading != Some(epoch) {
                        self.metrics.cluster_leadership_changes.inc();
                        tracing::info!(epoch, instance = %self.settings.instance, role = "this replica decides and acts", "lease acquired");
                    }
                    leading = Some(epoch);
                }
                Ok(Ok(Step::NotHeld)) => {
                    if let Some(epoch) = leading.take() {
                        self.fence.lost();
                        self.stepped_down(epoch, "another replica holds it");
                    }
                }
                // Unreachable database: the lease stays until the local clock says it may have
                // run out (the fence refuses every write from then on); try again.
                Ok(Err(e)) if !failing => tracing::warn!(error = %e, "cannot reach PostgreSQL for the lease; retrying every interval"),
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot reach PostgreSQL for the lease"),
                Err(e) => tracing::error!(error = %e, "the lease task failed"),
            }
            failing = failed;
            self.metrics.cluster_leader.set(i64::from(self.fence.epoch().is_some()));
            let rejected = self.fence.rejections().saturating_sub(self.metrics.cluster_fence_rejections.get());
            self.metrics.cluster_fence_rejections.inc_by(rejected);
            let wait = if self.fence.epoch().is_some() { self.settings.renew_interval } else { self.settings.acquire_interval };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(epoch) = self.fence.epoch() {
            self.fence.lost();
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.release(epoch)).await {
                Ok(Ok(())) => tracing::info!(epoch, next = "a standby takes over", "lease released"),
                other => tracing::warn!(error = ?other.map(|r| r.err()), "cannot release the lease; it expires by itself"),
            }
            self.metrics.cluster_leader.set(0);
        }
    }

    fn stepped_down(&self, epoch: i64, why: &str) {
        self.metrics.cluster_leadership_changes.inc();
        tracing::warn!(epoch, why, role = "stepping down: this replica keeps judging and does not act", "lease lost");
    }

    /// Renews the lease held (`Some(epoch)`), or tries to take an expired one.
    fn step(&self, held: Option<i64>) -> Result<Step, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let (instance, ttl) = (self.settings.instance.as_str(), self.settings.lease_ttl.as_secs_f64());
        conn.execute(
            "INSERT INTO fg_members (instance, api, started_at, seen_at) VALUES (?1, ?2, now(), now()) ON CONFLICT (instance) DO UPDATE SET api = excluded.api, seen_at = now()",
            rusqlite::params![instance, self.api],
        )?;
        let epoch: Option<i64> = match held {
            Some(epoch) => conn
                .query(
                    "UPDATE fg_lease SET expires_at = now() + make_interval(secs => ?3), renewed_at = now() \
                     WHERE name = ?1 AND holder = ?2 AND epoch = ?4 AND expires_at > now() RETURNING epoch",
                    rusqlite::params![LEASE, instance, ttl, epoch],
                )?
                .first()
                .map(|r| r.get(0))
                .transpose()?,
            None => conn
                .query(
                    "INSERT INTO fg_lease (name, holder, epoch, expires_at, renewed_at) VALUES (?1, ?2, 1, now() + make_interval(secs => ?3), now()) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = fg_lease.epoch + 1, expires_at = excluded.expires_at, renewed_at = excluded.renewed_at \
                     WHERE fg_lease.expires_at < now() RETURNING epoch",
                    rusqlite::params![LEASE, instance, ttl],
                )?
                .first()
                .map(|r| r.get(0))
                .transpose()?,
        };
        let observed = observe(&mut conn)?;
        *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), observed));
        Ok(epoch.map_or(Step::NotHeld, Step::Held))
    }

    /// Reads the lease row and members again when the last read is older than two intervals
    /// (a replica just resumed, or a lease loop waiting on the database), within `deadline`;
    /// otherwise, or past it, the last read stands.
    pub async fn refresh_if_stale(self: &Arc<Self>, deadline: std::time::Duration) {
        let stale = 2 * self.settings.renew_interval.max(self.settings.acquire_interval);
        let age = self.observed.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(at, _)| at.elapsed());
        if age.is_some_and(|a| a < stale) {
            return;
        }
        let this = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut conn = this.conn.lock().unwrap_or_else(|p| p.into_inner());
            let rows = observe(&mut conn)?;
            *this.observed.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), rows));
            Ok::<_, StoreError>(())
        });
        let _ = tokio::time::timeout(deadline, read).await;
    }

    /// This replica's view of the cluster, from its own state: whether it leads by its own
    /// clock, and the lease row and members as last read (with their age).
    pub fn status(&self) -> serde_json::Value {
        let observed = self.observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = Instant::now();
        let (age, rows) = match observed {
            Some((at, rows)) => (Some(now.saturating_duration_since(at).as_millis() as u64), Some(rows)),
            None => (None, None),
        };
        serde_json::json!({
            "mode": "cluster",
            "instance": self.settings.instance,
            "leader": self.fence.epoch().is_some(),
            "epoch": rows.as_ref().map(|r| r.epoch),
            "holder": rows.as_ref().and_then(|r| r.holder.clone()),
            "lease_expires_in_ms": rows.as_ref().map(|r| r.lease_expires_in_ms - age.unwrap_or(0) as i64),
            "local_lease_left_ms": self.fence.until().map(|u| u.saturating_duration_since(now).as_millis() as u64),
            "observed_ms_ago": age,
            "fence_rejections": self.fence.rejections(),
            "lease_ttl_ms": self.settings.lease_ttl.as_millis() as u64,
            "members": rows.map(|r| r.members).unwrap_or_default(),
        })
    }

    fn release(&self, epoch: i64) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "UPDATE fg_lease SET expires_at = now() WHERE name = ?1 AND holder = ?2 AND epoch = ?3",
            rusqlite::params![LEASE, self.settings.instance, epoch],
        )?;
        Ok(())
    }
}

/// The lease row and the members.
fn observe(conn: &mut PgConn) -> Result<ClusterRows, StoreError> {
    let lease = conn.query(
        "SELECT holder, epoch, CAST(EXTRACT(EPOCH FROM (expires_at - now())) * 1000 AS BIGINT) FROM fg_lease WHERE name = ?1",
        rusqlite::params![LEASE],
    )?;
    let (holder, epoch, lease_expires_in_ms) = match lease.first() {
        Some(r) => (r.get(0)?, r.get(1)?, r.get(2)?),
        None => (None, 0, 0),
    };
    let members = conn
        .query("SELECT instance, api, CAST(EXTRACT(EPOCH FROM (now() - seen_at)) * 1000 AS BIGINT) FROM fg_members ORDER BY instance", &[])?
        .iter()
        .map(|r| Ok(Member { instance: r.get(0)?, api: r.get(1)?, seen_ms_ago: r.get(2)? }))
        .collect::<Result<_, rusqlite::Error>>()?;
    Ok(ClusterRows { holder, epoch, lease_expires_in_ms, members })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{AuditEntry, Store};

    fn settings(instance: &str, store: &crate::store::PgOptions) -> Settings {
        Settings {
            instance: instance.into(),
            store: store.clone(),
            lease_ttl: Duration::from_secs(30),
            renew_interval: Duration::from_secs(1),
            acquire_interval: Duration::from_secs(1),
            act_timeout: Duration::from_secs(1),
        }
    }

    fn epoch(step: Step) -> Option<i64> {
        match step {
            Step::Held(e) => Some(e),
            Step::NotHeld => None,
        }
    }

    fn entry(kind: &str) -> AuditEntry {
        AuditEntry { actor: "test".into(), kind: kind.into(), ..AuditEntry::default() }
    }

    /// The zombie leader (Argo Rollouts #2117): a leader paused past its lease, whose own
    /// clock has not noticed, resumes and tries to write — the fence in the transaction
    /// refuses it, it steps down, and nothing of it is written.
    #[test]
    fn a_deposed_leader_cannot_write_even_before_it_notices() {
        let db = crate::store::test_pg::database("lease");
        let store = Store::open_postgres(&db).unwrap();
        let metrics = Arc::new(Metrics::new());
        let a = Lease::connect(&settings("a", &db), metrics.clone(), String::new()).unwrap();
        let b = Lease::connect(&settings("b", &db), metrics, String::new()).unwrap();
        assert_eq!(epoch(a.step(None).unwrap()), Some(1), "the first replica takes the lease");
        assert_eq!(epoch(b.step(None).unwrap()), None, "a held lease is not taken");
        a.fence.granted(1, Instant::now(), Duration::from_secs(30), Duration::from_secs(2));
        let leader = store.fenced(a.fence());
        leader.audit(&entry("while_leading")).expect("the holder writes");
        assert_eq!(epoch(a.step(Some(1)).unwrap()), Some(1), "the holder renews");

        // `a` is paused past its lease (expired by the database's clock); `b` takes over.
        a.conn.lock().unwrap().execute("UPDATE fg_lease SET expires_at = now() - interval '1 second'", &[]).unwrap();
        assert_eq!(epoch(b.step(None).unwrap()), Some(2), "an expired lease is taken with a new epoch");
        assert_eq!(a.fence.epoch(), Some(1), "a's own clock still says it leads");
        let refused = leader.audit(&entry("zombie_write"));
        assert!(matches!(refused, Err(StoreError::Fenced)), "the fence refuses the write: {refused:?}");
        assert_eq!(a.fence.epoch(), None, "and a steps down");
        assert_eq!(a.fence.rejections(), 1);
        assert!(store.audit_log(10, None, Some("zombie_write")).unwrap().is_empty(), "nothing of the zombie is written");
        assert_eq!(epoch(a.step(Some(1)).unwrap()), None, "nor can it renew");

        // A release hands over at the next attempt.
        b.release(2).unwrap();
        assert_eq!(epoch(a.step(None).unwrap()), Some(3));
    }

    /// A call starts only if the lease outlives it: a claim under a lease about to expire is
    /// refused, so a call never runs past the authority it started under.
    #[test]
    fn a_claim_needs_the_lease_to_outlive_the_call() {
        let db = crate::store::test_pg::database("claim");
        let store = Store::open_postgres(&db).unwrap();
        let a = Lease::connect(&settings("a", &db), Arc::new(Metrics::new()), String::new()).unwrap();
        assert_eq!(epoch(a.step(None).unwrap()), Some(1));
        a.fence.granted(1, Instant::now(), Duration::from_secs(30), Duration::from_secs(2));
        let leader = store.fenced(a.fence());
        let request = serde_json::json!({ "flag": "f" });
        let audit = entry("kill_decided");
        let action = crate::store::NewAction {
            target: "flags|f||",
            kind: crate::action::ActionKind::Kill,
            request: &request,
            idempotency_key: "k",
            slice_key: "",
            automatic: false,
            audit: &audit,
        };
        let crate::store::Submitted::New(id) = leader.submit(&action).unwrap() else { panic!("a new action") };
        assert_eq!(leader.claim(id, Duration::from_secs(5)).unwrap(), Some(1), "a 30 s lease outlives a 5 s call");
        a.conn.lock().unwrap().execute("UPDATE fg_lease SET expires_at = now() + interval '2 seconds'", &[]).unwrap();
        assert!(matches!(leader.claim(id, Duration::from_secs(5)), Err(StoreError::Fenced)), "2 s left do not cover a 5 s call");
        assert_eq!(a.fence.epoch(), Some(1), "the holder still holds it: the next renewal extends it");
        assert_eq!(epoch(a.step(Some(1)).unwrap()), Some(1));
        assert_eq!(leader.claim(id, Duration::from_secs(5)).unwrap(), Some(1), "renewed, the call may start");
    }
}

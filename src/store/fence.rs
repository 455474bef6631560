//! The lease as the store sees it: which epoch this replica holds (if any) and until when its
//! local clock lets it act. `cluster::lease` grants and takes it; the store checks it inside
//! every fenced write transaction against the lease row itself ([`Fence::check`]), so a
//! replica that lost the lease — deposed, paused past its expiry, cut off — writes nothing
//! even if it has not noticed yet.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StoreError;
use super::db::Conn;

/// The lease row's name: one actuator per cluster.
pub const LEASE: &str = "actuator";

#[derive(Debug, Clone, Copy, Default)]
struct Held {
    epoch: i64,
    /// Writes and the executor's outcomes: renewal sent + `lease_ttl` (monotonic).
    until: Option<Instant>,
    /// Starting a flag-system call: `until` − `act.timeout` − a margin, so a call that starts
    /// ends before the lease can expire.
    calls_until: Option<Instant>,
}

/// This replica's hold on the lease.
#[derive(Debug)]
pub struct Fence {
    holder: String,
    held: Mutex<Held>,
    rejections: AtomicU64,
}

impl Fence {
    pub fn new(holder: &str) -> Fence {
        Fence { holder: holder.to_owned(), held: Mutex::new(Held::default()), rejections: AtomicU64::new(0) }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn held(&self) -> Held {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch held, while the local clock still allows it.
    pub fn epoch(&self) -> Option<i64> {
        let h = self.held();
        (h.epoch > 0 && h.until.is_some_and(|u| Instant::now() < u)).then_some(h.epoch)
    }

    /// Whether a flag-system call may start now (it would end before the lease can expire).
    pub fn may_call(&self) -> bool {
        let h = self.held();
        h.epoch > 0 && h.calls_until.is_some_and(|u| Instant::now() < u)
    }

    /// The lease was acquired or renewed by a request sent at `sent`.
    pub fn granted(&self, epoch: i64, sent: Instant, ttl: Duration, call_margin: Duration) {
        let until = sent + ttl;
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Held { epoch, until: Some(until), calls_until: Some(until - call_margin.min(ttl)) };
    }

    /// The lease is gone (deposed, expired, released).
    pub fn lost(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Held::default();
    }

    /// Until when the lease is held by the local clock (for status).
    pub fn until(&self) -> Option<Instant> {
        let h = self.held();
        h.until.filter(|_| h.epoch > 0)
    }

    /// Writes refused because the lease was not (or no longer) held.
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// Inside a write transaction: the lease row still names this replica with its epoch and
    /// has not expired by the database's clock (locked `FOR SHARE`: a takeover waits for this
    /// transaction). Otherwise the lease is dropped locally and the write refused.
    pub(crate) fn check(&self, conn: &mut Conn) -> Result<(), StoreError> {
        self.check_outliving(conn, Duration::ZERO)
    }

    /// [`Fence::check`], and the lease outlives `margin` (a call about to start).
    pub(crate) fn check_outliving(&self, conn: &mut Conn, margin: Duration) -> Result<(), StoreError> {
        let Some(epoch) = self.epoch() else {
            self.rejections.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Fenced);
        };
        let held = conn.query_opt(
            "SELECT expires_at > now() + make_interval(secs => ?4) FROM fg_lease WHERE name = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at > now() FOR SHARE",
            rusqlite::params![LEASE, self.holder, epoch, margin.as_secs_f64()],
        )?;
        match held {
            None => {
                self.rejections.fetch_add(1, Ordering::Relaxed);
                self.lost();
                tracing::warn!(epoch, why = "a write failed the fence", role = "stepping down: this replica keeps judging and does not act", "lease lost");
                return Err(StoreError::Fenced);
            }
            // Still the holder, but the lease ends too soon for what is about to start: refused,
            // and the next renewal extends it.
            Some(row) if !row.get::<bool>(0)? => {
                self.rejections.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Fenced);
            }
            Some(_) => {}
        }
        Ok(())
    }
}

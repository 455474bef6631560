//! Injected time. Everything below ingest takes `now` as a [`Timestamp`] instead of reading a
//! clock, so windows, rules and the correlator are deterministic in tests and in replay.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (arrival time, never a span's own timestamp).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Returns the wall-clock time now.
    pub fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(since.as_millis() as u64)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Returns the time `d` later.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_millis() as u64))
    }

    /// Returns the time `d` earlier (saturating at the epoch).
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(d.as_millis() as u64))
    }

    /// Returns how long after `earlier` this is (zero when it is not after).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Formats as RFC 3339 with milliseconds (UTC).
    /// Times past the year 9999 (which RFC 3339 cannot write) print as 9999-12-31T23:59:59.999Z.
    pub fn rfc3339(self) -> String {
        const MAX_MS: u64 = 253_402_300_799_999;
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(self.0.min(MAX_MS))).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// A source of "now" for the async shells (wall clock live, recorded arrival times in replay).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// A clock set by its owner (replay drives it from recorded arrival times).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

//! Cluster mode (`[cluster]`): several replicas on one PostgreSQL. Every replica ingests and
//! judges (hot standby: windows, `for` clocks and sequential tests stay warm); only the holder
//! of a fenced lease ([`lease`]) decides and acts. Without `[cluster]` nothing here runs: one
//! process, SQLite, no network dependency.
//!
//! The fence is PostgreSQL's transaction: every write of the leader's decisions, calls and
//! verification re-checks the lease row inside its own transaction (`store::fence`), so a
//! deposed, paused or cut-off leader writes nothing even before it notices.

pub mod failpoint;
pub mod lease;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[cluster]`: replicas on PostgreSQL.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This replica's name, unique in the cluster (e.g. `"${POD_NAME}"`). Required.
    pub instance_id: String,
    /// PostgreSQL URL of the writer endpoint, e.g. `"${FLAGGUARD_PG_URL}"` (read from the
    /// environment: it may hold a password). Required.
    pub postgres_url: String,
    /// How long a lease lasts without renewal. Default `8s`.
    #[serde(with = "humantime_serde", default = "defaults::lease_ttl")]
    pub lease_ttl: Duration,
    /// How often the leader renews. Default `2s`.
    #[serde(with = "humantime_serde", default = "defaults::renew_interval")]
    pub renew_interval: Duration,
    /// How often a standby tries to take an expired lease. Default `1s`.
    #[serde(with = "humantime_serde", default = "defaults::acquire_interval")]
    pub acquire_interval: Duration,
}

mod defaults {
    use std::time::Duration;
    pub fn lease_ttl() -> Duration {
        Duration::from_secs(8)
    }
    pub fn renew_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub fn acquire_interval() -> Duration {
        Duration::from_secs(1)
    }
}

/// A margin for the network and the clocks' rates between a call's end and the lease's.
pub const CALL_MARGIN: Duration = Duration::from_millis(500);

/// Validated `[cluster]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub instance: String,
    pub store: crate::store::PgOptions,
    pub lease_ttl: Duration,
    pub renew_interval: Duration,
    pub acquire_interval: Duration,
    /// `act.timeout`: a call starts only if the lease outlives it.
    pub act_timeout: Duration,
}

impl Settings {
    /// How long before the lease's end the leader stops starting calls.
    pub fn call_margin(&self) -> Duration {
        self.act_timeout + CALL_MARGIN
    }
}

impl ClusterConfig {
    /// Checks the section (errors as `cluster.FIELD: …`); the settings when valid.
    pub fn validate(&self, act_timeout: Duration, errors: &mut Vec<String>) -> Option<Settings> {
        let before = errors.len();
        let instance = match crate::secrets::expand_env(&self.instance_id) {
            Ok(v) if !v.trim().is_empty() => v,
            Ok(_) => {
                errors.push("cluster.instance_id: empty".into());
                String::new()
            }
            Err(var) => {
                errors.push(format!("cluster.instance_id: environment variable {var} is not set"));
                String::new()
            }
        };
        let url = match crate::secrets::expand_env(&self.postgres_url) {
            Ok(url) if url.parse::<tokio_postgres::Config>().is_ok() => url,
            Ok(_) => {
                errors.push("cluster.postgres_url: not a PostgreSQL URL (postgres://user@host:port/db)".into());
                String::new()
            }
            Err(var) => {
                errors.push(format!("cluster.postgres_url: environment variable {var} is not set"));
                String::new()
            }
        };
        if self.renew_interval.is_zero() || self.acquire_interval.is_zero() {
            errors.push("cluster.renew_interval, cluster.acquire_interval: must be positive".into());
        }
        // A call must be able to start in steady state: the lease left after a renewal must
        // outlive a whole call.
        if self.lease_ttl < self.renew_interval + act_timeout + CALL_MARGIN {
            errors.push(format!(
                "cluster.lease_ttl: {:?} is too short; it must be at least renew_interval ({:?}) + act.timeout ({act_timeout:?}) + {CALL_MARGIN:?}",
                self.lease_ttl, self.renew_interval
            ));
        }
        if errors.len() > before {
            return None;
        }
        // A call to PostgreSQL gives up well before the lease could run out.
        let op_timeout = (self.lease_ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(2));
        Some(Settings {
            instance,
            store: crate::store::PgOptions { url, op_timeout },
            lease_ttl: self.lease_ttl,
            renew_interval: self.renew_interval,
            acquire_interval: self.acquire_interval,
            act_timeout,
        })
    }
}

tokio::task_local! {
    /// The lease epoch under which a flag-system call is made (cluster mode), sent as
    /// `X-Flagguard-Epoch` by the actuators that can carry it.
    pub static EPOCH: i64;
}

/// The epoch of the call under way, if in cluster mode.
pub fn current_epoch() -> Option<i64> {
    EPOCH.try_with(|e| *e).ok()
}

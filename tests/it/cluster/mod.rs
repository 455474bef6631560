//! Cluster mode under faults (issue 17): 2 replicas of the real binary on one PostgreSQL, a
//! recording flag system, the synthetic OTLP traffic, a TCP proxy that partitions a replica
//! from PostgreSQL, failpoints (`FLAGGUARD_FAILPOINTS`) that abort the leader at each step of a
//! kill, and checkers over the recorded history. Lease timings are short ([`fixture::FAST`]:
//! TTL 2 s, renew 400 ms, acquire 200 ms, act timeout 1 s), so the takeover bound is 3.2 s.
//!
//! Layout:
//! - `pg`: the test PostgreSQL (`scripts/setup-postgres.sh`), a database per test, audit and
//!   outbox rows read back;
//! - `proxy`: blackhole / reset / restore a replica's link to PostgreSQL;
//! - `replica`: spawn the binary, its JSON log, its exit, signals, `/v1/cluster`, metrics;
//! - `fixture`: a cluster's config, a leader and a standby, traffic to every replica;
//! - `history`: the checkers and the per-loop tally;
//! - `harness`: the pieces above checked on their own;
//! - the scenarios, one file per fault.
//!
//! Fault loops run `FLAGGUARD_CLUSTER_RUNS` times (default 2–3) with varied timing and print
//! `NAME: runs R, faults injected F, kills missed M, kills doubled D, …`.
//!
//! What the scenarios assume of the binary (black-box, beyond the `[cluster]` keys):
//! - `GET /v1/cluster` answers from the replica's own state, also while PostgreSQL is out of
//!   reach, within 1 s; `leader` is a bool, `epoch` the current lease epoch (a standby reports
//!   its leader's), `holder` the leader's `instance_id`;
//! - every webhook call carries `X-Flagguard-Epoch: N` (decimal) with the calling leader's
//!   epoch; epochs grow by one per acquisition;
//! - `flagguard_cluster_leader` and `flagguard_cluster_fence_rejections_total` are unlabelled;
//! - a failpoint ends the process with a non-zero status (abort or SIGKILL) before anything
//!   else happens; it fires in the leader's executor, so only the first leader is armed;
//! - SIGTERM releases the lease (standby leads within 2 s) and exits 0;
//! - with PostgreSQL down, `POST /v1/alerts/…` answers 503 with `Retry-After` (seconds)
//!   within 5 s, and OTLP ingest still answers;
//! - the PostgreSQL tables `audit` and `outbox` keep the SQLite columns' names (any integer,
//!   text or JSON types: the checkers cast).

mod failover;
mod fixture;
mod harness;
mod history;
mod partition;
mod pg;
pub(crate) mod proxy;
mod replica;
mod scenarios;

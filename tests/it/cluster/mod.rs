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

mod fixture;
mod harness;
mod history;
mod pg;
mod proxy;
mod replica;

//! Scale-out (cluster phase 2): trace-ID shards and the evaluators that judge their merged
//! windows (docs/cluster.md, "Scale-out").
//!
//! A **shard** (`[shard]`) ingests the traces the OpenTelemetry Collector's `loadbalancing`
//! exporter routes to it by trace ID (so each trace is joined where all of its spans are),
//! keeps its windows as any instance does, judges nothing, and streams what its windows gained
//! since its last flush — one delta frame per tick, numbered — to every evaluator that
//! subscribes ([`hub`], [`server`]). An **evaluator** (`[merge]`) subscribes to every shard
//! ([`subscriber`]), adds the deltas into its own windows (every part of a window is additive:
//! counts, histograms, user buckets, sketches) and judges and acts as any instance does — with
//! `[cluster]`, as an HA pair whose leader alone acts.
//!
//! Invariants:
//! - a frame is applied at most once: the evaluator keeps each shard's (incarnation, last
//!   sequence number) and skips what it has; a reconnect resumes after it from the shard's
//!   buffer of recent frames;
//! - what cannot be resumed (the shard restarted, or the frames fell out of its buffer) is a
//!   **gap**: counted, reported in the decision records as reduced coverage, never filled by
//!   re-sending data the evaluator may already hold;
//! - an evaluator with nothing of a shard (a new one) bootstraps from the shard's whole windows,
//!   taken at a sequence number, then applies the frames after it;
//! - an evaluator's checkpoint keeps each shard's position with its windows, so a restart
//!   resumes rather than bootstrapping again (which would count the data twice).

pub mod frame;
pub mod hub;
pub mod server;
pub mod subscriber;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[shard]`: this instance is a shard; evaluators subscribe to its window deltas.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Where evaluators subscribe (gRPC, e.g. `"0.0.0.0:4320"`). Required.
    pub stream_listen: String,
    /// Bearer token evaluators must send (`${VAR}` from the environment). Default none: keep
    /// the port on a private network.
    #[serde(default)]
    pub token: Option<String>,
    /// Bytes of recent frames kept so that an evaluator that reconnects resumes without a gap.
    /// Default 64 MiB.
    #[serde(default = "defaults::buffer_bytes")]
    pub buffer_bytes: usize,
}

/// `[merge]`: this instance judges the merged windows of these shards.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// The shards' stream addresses, e.g. `["http://flagguard-shard-0.flagguard-shard:4320"]`.
    pub shards: Vec<String>,
    /// Bearer token sent to the shards (`${VAR}`). Default none.
    #[serde(default)]
    pub token: Option<String>,
    /// How long to wait before reconnecting to a shard. Default `1s`.
    #[serde(with = "humantime_serde", default = "defaults::reconnect")]
    pub reconnect: Duration,
}

mod defaults {
    pub fn buffer_bytes() -> usize {
        64 << 20
    }
    pub fn reconnect() -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
}

/// `[shard]`, validated: the address parsed, the token read from the environment.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub stream_listen: std::net::SocketAddr,
    pub token: Option<String>,
    pub buffer_bytes: usize,
}

/// `[merge]`, validated.
#[derive(Clone, Debug)]
pub struct MergeSettings {
    pub shards: Vec<String>,
    pub token: Option<String>,
    pub reconnect: Duration,
}

/// A token as the other ones: `${VAR}` from the environment, at least 16 characters.
fn token(field: &str, token: &Option<String>, errors: &mut Vec<String>) -> Option<String> {
    let t = token.as_ref()?;
    if !t.contains("${") {
        errors.push(format!("{field}: give the token as ${{VAR}} (read from the environment), not literally"));
        return None;
    }
    match crate::secrets::expand_env(t) {
        Ok(secret) if secret.len() >= 16 => Some(secret),
        Ok(_) => {
            errors.push(format!("{field}: the token is shorter than 16 characters"));
            None
        }
        Err(var) => {
            errors.push(format!("{field}: environment variable {var} is not set"));
            None
        }
    }
}

impl ShardConfig {
    pub fn validate(&self, errors: &mut Vec<String>) -> Option<ShardSettings> {
        let stream_listen = match self.stream_listen.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(format!("shard.stream_listen: {e}"));
                None
            }
        };
        if self.buffer_bytes < 1 << 20 {
            errors.push("shard.buffer_bytes: at least 1 MiB".into());
        }
        let token = token("shard.token", &self.token, errors);
        Some(ShardSettings { stream_listen: stream_listen?, token, buffer_bytes: self.buffer_bytes })
    }
}

impl MergeConfig {
    pub fn validate(&self, errors: &mut Vec<String>) -> Option<MergeSettings> {
        if self.shards.is_empty() {
            errors.push("merge.shards: name at least one shard".into());
        }
        for (i, shard) in self.shards.iter().enumerate() {
            if !(shard.starts_with("http://") || shard.starts_with("https://")) || shard.parse::<http::Uri>().is_err() {
                errors.push(format!("merge.shards[{i}]: {shard:?} is not an http:// or https:// address"));
            }
        }
        let unique: std::collections::BTreeSet<&String> = self.shards.iter().collect();
        if unique.len() != self.shards.len() {
            errors.push("merge.shards: a shard is named twice (its data would count twice)".into());
        }
        let token = token("merge.token", &self.token, errors);
        Some(MergeSettings { shards: self.shards.clone(), token, reconnect: self.reconnect })
    }
}

/// The gRPC method of the stream.
pub const PATH: &str = "/flagguard.shard.v1.Shard/Subscribe";
pub const SERVICE: &str = "flagguard.shard.v1.Shard";
/// Largest frame either side accepts (a bootstrap is sent in parts well below it).
pub const MAX_FRAME: usize = 256 << 20;

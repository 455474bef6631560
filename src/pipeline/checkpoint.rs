//! Checkpoints: the windows and the rule engine's slice state written to `data_dir/state.ckpt`
//! every `state.checkpoint_interval` and at a graceful stop, and restored before the first batch
//! after a start, so that a restart (an upgrade, a crash, a replica rescheduled) does not throw
//! away hours of windows, `for` clocks and sequential tests' evidence.
//!
//! Invariants:
//! - a checkpoint is written whole or not at all (a temporary file, fsync, rename), so a crash
//!   while writing leaves the previous one;
//! - the file carries a format version and a SHA-256 of its body: a damaged or foreign file is
//!   refused whole (logged, audited, moved aside as `state.ckpt.bad`), and the daemon starts
//!   blind rather than from half a state;
//! - a checkpoint older than the windows' longest reach (6 h) holds nothing still in any
//!   window and is not restored;
//! - the pipeline task only takes the image (a copy of the state), a slice of series per tick
//!   within a small budget, so a checkpoint never stalls detection; encoding and the write run
//!   on a blocking thread, one at a time, so a slow disk delays the next checkpoint, not
//!   detection. Each series is imaged once within the checkpoint's few seconds, the engine's
//!   slices at its end.
//!
//! Lost across a restart: the traces still being joined (at most `correlate.trace_idle` of
//! requests), the evidence since the last checkpoint after a crash (at most the interval;
//! nothing after a graceful stop), and the telemetry sent while no process listened (the
//! Collector's retry queue covers a short gap). Cooldowns and held slices are the store's and
//! were never lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Pipeline;
use crate::aggregate::SERIES_IDLE;
use crate::aggregate::image::AggregatorImage;
use crate::rules::engine::image::EngineImage;
use crate::store::AuditEntry;
use crate::telemetry::Metrics;
use crate::time::Timestamp;

const MAGIC: &[u8; 4] = b"FGCK";
/// Bumped whenever an image's layout changes: an older file is then refused, not misread.
const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 32;

/// The file name under `data_dir`.
pub const FILE: &str = "state.ckpt";

/// Where and how often.
#[derive(Clone, Debug)]
pub struct CheckpointSettings {
    pub path: PathBuf,
    pub interval: Duration,
}

/// One checkpoint's content.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub written_at: u64,
    pub aggregator: AggregatorImage,
    pub engine: EngineImage,
    /// Restored actions already applied to the windows, and since when to look for new ones
    /// (a restore during the downtime still resets its flag's windows).
    pub restores_seen: Vec<i64>,
    pub restores_since: u64,
    /// An evaluator: each shard's (address, incarnation, last frame applied), taken with the
    /// slices at the end, so that a restart resumes after them (a frame applied to a series
    /// after it was imaged is then lost with the crash, never counted twice).
    pub shards: Vec<(String, u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a flagguard checkpoint (too short or wrong magic)")]
    NotACheckpoint,
    #[error("checkpoint format {found}, this flagguard reads {VERSION}")]
    Version { found: u32 },
    #[error("checksum mismatch: the file is damaged")]
    Checksum,
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot restore: {0}")]
    Restore(String),
}

/// The file's bytes: header, then the body.
pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, CheckpointError> {
    // Sized up front: growing a Vec to 170 MB by doubling made encoding twice as slow.
    let size_hint = checkpoint.aggregator.size_hint();
    let mut out = Vec::with_capacity(HEADER + size_hint + size_hint / 8 + 4096);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 32]);
    let mut out = postcard::to_extend(checkpoint, out).map_err(|e| CheckpointError::Encode(e.to_string()))?;
    let digest = Sha256::digest(&out[HEADER..]);
    out[8..HEADER].copy_from_slice(&digest);
    Ok(out)
}

/// Encodes and writes: the bytes written.
fn encode_and_write(checkpoint: &Checkpoint, path: &Path) -> Result<usize, CheckpointError> {
    let bytes = encode(checkpoint)?;
    write(path, &bytes)?;
    Ok(bytes.len())
}

/// Clears "a checkpoint is being written" when the write ends, however it ends (a panic in
/// it must not stop every later checkpoint).
struct Writing(Arc<AtomicBool>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(CheckpointError::NotACheckpoint);
    }
    let found = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if found != VERSION {
        return Err(CheckpointError::Version { found });
    }
    let body = &bytes[HEADER..];
    if Sha256::digest(body).as_slice() != &bytes[8..HEADER] {
        return Err(CheckpointError::Checksum);
    }
    postcard::from_bytes(body).map_err(|e| CheckpointError::Decode(e.to_string()))
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_owned(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // The rename is durable once the directory is (best effort where a directory cannot be
    // opened for sync).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The checkpoint at `path`, `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io { path: path.to_owned(), source }),
    }
}

/// What a start found.
#[derive(Debug, PartialEq)]
pub enum Restore {
    /// No checkpoint (first start, or checkpoints off).
    None,
    /// Restored: its age and what came back.
    Restored { age: Duration, series: usize, slices: usize, dropped_slices: usize },
    /// Too old to hold anything still in a window.
    TooOld { age: Duration },
    /// Refused whole (and moved aside).
    Failed(String),
}

/// How much of one tick imaging may take: a checkpoint of many series is taken a slice per
/// tick, so that it never stalls detection (10,000 series of 1 h took 510–570 ms to image).
const STEP_BUDGET: Duration = Duration::from_millis(2);

/// The pipeline's checkpoint chore: when the last one was started, the one being taken (a
/// slice of series per tick), and whether one is being written.
pub struct Checkpointer {
    settings: CheckpointSettings,
    last: Timestamp,
    taking: Option<Taking>,
    writing: Arc<AtomicBool>,
}

/// A checkpoint being taken: the series still to image, and the images so far.
struct Taking {
    keys: Vec<crate::model::SeriesKey>,
    series: Vec<(crate::aggregate::image::SeriesImage, crate::aggregate::window::image::WindowImage)>,
}

impl Checkpointer {
    pub fn new(settings: CheckpointSettings, now: Timestamp) -> Self {
        Checkpointer { settings, last: now, taking: None, writing: Arc::new(AtomicBool::new(false)) }
    }
}

fn record(metrics: &Metrics, result: &Result<usize, CheckpointError>, at: Timestamp) {
    match result {
        Ok(bytes) => {
            Metrics::count(&metrics.checkpoints, &[("result", "written")]);
            metrics.checkpoint_bytes.set(*bytes as i64);
            metrics.checkpoint_written.set((at.as_millis() / 1000) as i64);
        }
        Err(e) => {
            Metrics::count(&metrics.checkpoints, &[("result", "failed")]);
            tracing::error!(error = %e, "cannot write the checkpoint; a restart would lose the evidence since the last one");
        }
    }
}

impl Pipeline {
    /// The state to checkpoint, taken whole now.
    pub fn checkpoint(&self, now: Timestamp) -> Checkpoint {
        self.checkpoint_with(self.aggregator.image(), now)
    }

    /// A checkpoint of these windows and of everything else (the engine's slices, restores,
    /// shard positions) taken now.
    fn checkpoint_with(&self, aggregator: AggregatorImage, now: Timestamp) -> Checkpoint {
        Checkpoint {
            written_at: now.as_millis(),
            aggregator,
            engine: self.engine.image(),
            restores_seen: self.restores_seen.iter().copied().collect(),
            restores_since: self.restores_since.as_millis(),
            shards: self
                .merge
                .as_ref()
                .map_or_else(Vec::new, |m| m.positions.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(s, &(i, q))| (s.clone(), i, q)).collect()),
        }
    }

    /// On every tick: starts a checkpoint when one is due and none is being written, images
    /// series for at most [`STEP_BUDGET`], and once every series is imaged takes the rest (the
    /// engine's slices, the baselines) and writes it all on a blocking thread. Each series is
    /// imaged once within the checkpoint's few seconds; a series dropped meanwhile is left out.
    pub(super) fn checkpoint_step(&mut self, now: Timestamp) {
        let Some(c) = &mut self.checkpointer else { return };
        if c.taking.is_none() {
            if now.since(c.last) < c.settings.interval || c.writing.load(Ordering::Acquire) {
                return;
            }
            c.last = now;
            c.taking = Some(Taking { keys: self.aggregator.series_keys(), series: Vec::new() });
        }
        let Some(taking) = &mut c.taking else { return };
        let started = std::time::Instant::now();
        while let Some(key) = taking.keys.pop() {
            taking.series.extend(self.aggregator.image_of(&key));
            if taking.keys.len() % 32 == 0 && started.elapsed() >= STEP_BUDGET {
                return;
            }
        }
        let Some(taking) = c.taking.take() else { return };
        c.writing.store(true, Ordering::Release);
        let (writing, path, metrics) = (Writing(c.writing.clone()), c.settings.path.clone(), self.metrics.clone());
        let checkpoint = self.checkpoint_with(self.aggregator.image_with(taking.series), now);
        tokio::task::spawn_blocking(move || {
            let _writing = writing;
            record(&metrics, &encode_and_write(&checkpoint, &path), now);
        });
    }

    /// At a graceful stop, after the last batch: the final checkpoint, whole (a stall no longer
    /// matters), waited for.
    pub(super) async fn checkpoint_at_stop(&mut self, now: Timestamp) {
        let Some(c) = &mut self.checkpointer else { return };
        c.taking = None;
        // A write still running finishes first (its file would otherwise replace this one).
        while c.writing.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (path, metrics) = (c.settings.path.clone(), self.metrics.clone());
        let checkpoint = self.checkpoint(now);
        let written = tokio::task::spawn_blocking(move || {
            let result = encode_and_write(&checkpoint, &path);
            record(&metrics, &result, now);
            result.is_ok()
        })
        .await;
        if let Ok(true) = written {
            tracing::info!("checkpoint written: a restart resumes from here");
        }
    }

    /// Before the first batch: restores the checkpoint, if there is one fit to restore; audits
    /// what it did (a refused checkpoint is moved aside so the next start does not trip on it).
    pub fn restore_checkpoint(&mut self, now: Timestamp) -> Restore {
        let Some(c) = &self.checkpointer else { return Restore::None };
        let path = c.settings.path.clone();
        let outcome = match read(&path) {
            Ok(None) => Restore::None,
            Ok(Some(checkpoint)) => self.restore_from(checkpoint, now),
            Err(e) => Restore::Failed(e.to_string()),
        };
        let evidence = match &outcome {
            Restore::None => return outcome,
            Restore::Restored { age, series, slices, dropped_slices } => {
                tracing::info!(age_s = age.as_secs(), series, slices, "state restored from the checkpoint");
                serde_json::json!({ "age_s": age.as_secs(), "series": series, "slices": slices, "dropped_slices": dropped_slices })
            }
            Restore::TooOld { age } => {
                tracing::warn!(age_s = age.as_secs(), "the checkpoint is older than every window: starting blind");
                serde_json::json!({ "age_s": age.as_secs(), "restored": false, "why": "older than the longest window" })
            }
            Restore::Failed(why) => {
                let aside = path.with_extension("ckpt.bad");
                let _ = std::fs::rename(&path, &aside);
                tracing::error!(error = %why, moved_to = %aside.display(), "cannot restore the checkpoint: starting blind");
                serde_json::json!({ "restored": false, "why": why, "moved_to": aside.display().to_string() })
            }
        };
        let kind = if matches!(outcome, Restore::Restored { .. }) { "state_restored" } else { "state_not_restored" };
        let audit = AuditEntry { at: now, actor: "system".into(), kind: kind.into(), evidence: Some(evidence), ..AuditEntry::default() };
        if let Err(e) = self.store.audit(&audit) {
            tracing::error!(error = %e, "cannot audit the restore");
        }
        outcome
    }

    fn restore_from(&mut self, checkpoint: Checkpoint, now: Timestamp) -> Restore {
        let age = now.since(Timestamp(checkpoint.written_at));
        if age > SERIES_IDLE {
            return Restore::TooOld { age };
        }
        // Both images are checked before either replaces anything: a restore is all or nothing.
        let mut aggregator = crate::aggregate::Aggregator::new(self.aggregator.max_series());
        let windows = match aggregator.restore(checkpoint.aggregator) {
            Ok(r) => r,
            Err(e) => return Restore::Failed(CheckpointError::Restore(e).to_string()),
        };
        let slices = match self.engine.restore(checkpoint.engine) {
            Ok(r) => r,
            Err(e) => return Restore::Failed(CheckpointError::Restore(e).to_string()),
        };
        self.aggregator = aggregator;
        self.restores_seen = checkpoint.restores_seen.into_iter().collect();
        if let Some(merge) = &self.merge {
            let mut positions = merge.positions.lock().unwrap_or_else(|p| p.into_inner());
            positions.extend(checkpoint.shards.into_iter().map(|(s, i, q)| (s, (i, q))));
        }
        self.restores_since = Timestamp(checkpoint.restores_since).min(now);
        if let Some(c) = &mut self.checkpointer {
            c.last = now;
        }
        Restore::Restored { age, series: windows.series, slices: slices.slices, dropped_slices: slices.dropped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Checkpoint {
        let engine = crate::rules::engine::RuleEngine::new(
            Arc::new(crate::rules::RuleSet::default()),
            crate::rules::engine::EngineSettings {
                sequential_fdr: true,
                stale_after: Duration::from_secs(60),
                max_concurrent_kills: 1,
                incident_window: Duration::from_secs(60),
            },
            Default::default(),
            Timestamp(0),
        );
        Checkpoint {
            written_at: 42,
            aggregator: crate::aggregate::Aggregator::new(10).image(),
            engine: engine.image(),
            restores_seen: vec![7],
            restores_since: 3,
            shards: vec![("http://s0".into(), 5, 9)],
        }
    }

    #[test]
    fn a_damaged_foreign_or_newer_file_is_refused_whole() {
        let bytes = encode(&empty()).unwrap();
        assert_eq!(decode(&bytes).expect("round trip"), empty());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(decode(&flipped), Err(CheckpointError::Checksum)));
        assert!(matches!(decode(&bytes[..HEADER - 1]), Err(CheckpointError::NotACheckpoint)));
        assert!(matches!(decode(b"SQLite format 3\0 and more bytes than the header"), Err(CheckpointError::NotACheckpoint)));
        let mut newer = bytes.clone();
        newer[4..8].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert!(matches!(decode(&newer), Err(CheckpointError::Version { found }) if found == VERSION + 1));
        // A body that hashes right but is not a checkpoint (a bug, or a hand-made file).
        let mut forged = bytes[..8].to_vec();
        forged.extend_from_slice(&Sha256::digest(b"nonsense"));
        forged.extend_from_slice(b"nonsense");
        assert!(matches!(decode(&forged), Err(CheckpointError::Decode(_))));
    }

    #[test]
    fn a_write_replaces_the_file_whole_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join(FILE);
        assert!(read(&path).expect("no file is not an error").is_none());
        write(&path, &encode(&empty()).unwrap()).unwrap();
        let mut second = empty();
        second.written_at = 43;
        write(&path, &encode(&second).unwrap()).unwrap();
        assert_eq!(read(&path).unwrap().map(|c| c.written_at), Some(43));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(FILE)], "no temporary file left behind");
    }

    /// A pipeline on an in-memory store with checkpoints to `path` every second, and `n`
    /// series of a few requests each.
    fn pipeline(path: PathBuf, n: u64, now: Timestamp) -> Pipeline {
        use crate::correlate::Sink;
        use crate::model::{Dims, FlagKey, Outcome, SpanId, TraceId, Variant};
        let clock = Arc::new(crate::time::ManualClock::default());
        clock.set(now);
        let settings = crate::rules::engine::EngineSettings {
            sequential_fdr: true,
            stale_after: Duration::from_secs(60),
            max_concurrent_kills: 1,
            incident_window: Duration::from_secs(60),
        };
        let engine = crate::rules::engine::RuleEngine::new(Arc::new(crate::rules::RuleSet::default()), settings, Default::default(), now);
        let store = crate::store::Store::in_memory().unwrap();
        let mut pipeline = Pipeline::new(
            crate::correlate::Correlator::new(crate::correlate::CorrelateSettings::default()),
            crate::aggregate::Aggregator::new(n as usize + 1),
            engine,
            crate::act::outbox::Outbox::new(store, crate::act::notify::Routing::none()),
            Arc::new(Metrics::new()),
            clock,
            Arc::new(tokio::sync::Notify::new()),
            tokio::sync::watch::channel(Arc::new(crate::view::Snapshot::default())).0,
            super::super::PipelineSettings {
                tick: Duration::from_millis(25),
                snapshot_interval: Duration::from_secs(1),
                reload_interval: Duration::from_secs(3600),
                rules_dir: "rules".into(),
                actuators: Default::default(),
                verify: Default::default(),
                audit_retention: None,
            },
        )
        .with_checkpoints(CheckpointSettings { path, interval: Duration::from_secs(1) });
        for i in 0..n {
            let dims = Dims { service: format!("svc-{}", i % 50).into(), environment: "prod".into(), region: "eu".into() };
            let outcome = Outcome { trace: TraceId([1; 16]), span: SpanId([1; 8]), dims, error: i % 7 == 0, latency_us: 1_000 + i };
            for r in 0..3 {
                pipeline.aggregator.observe(
                    &FlagKey(format!("flag-{i}").into()),
                    &Variant("on".into()),
                    &outcome,
                    None,
                    now.minus(Duration::from_secs(r * 70)),
                );
            }
        }
        pipeline
    }

    /// Many series are imaged a slice per tick (never one long stall), and the checkpoint
    /// written at the end holds every one of them as a whole image would.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_of_many_series_is_taken_a_slice_per_tick_and_holds_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let t0 = Timestamp(10_000_000);
        let mut p = pipeline(path.clone(), 20_000, t0);
        let mut now = t0;
        p.checkpoint_step(now);
        assert!(p.checkpointer.as_ref().unwrap().taking.is_none(), "not due before its interval");
        let mut steps = 0;
        now = now.plus(Duration::from_secs(1));
        loop {
            p.checkpoint_step(now);
            steps += 1;
            let c = p.checkpointer.as_ref().unwrap();
            if c.taking.is_none() {
                break;
            }
            assert!(steps < 100_000, "the checkpoint finishes");
            now = now.plus(Duration::from_millis(25));
        }
        assert!(steps > 1, "20,000 series are imaged over several ticks ({steps})");
        let writing = p.checkpointer.as_ref().unwrap().writing.clone();
        for _ in 0..2_000 {
            if !writing.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let written = read(&path).unwrap().expect("written");
        let mut restored = crate::aggregate::Aggregator::new(20_001);
        assert_eq!(restored.restore(written.aggregator).unwrap().series, 20_000);
        let (mut a, mut b): (Vec<_>, Vec<_>) = (restored.series_keys(), p.aggregator.series_keys());
        a.sort();
        b.sort();
        assert_eq!(a, b);
        for key in &a {
            assert_eq!(restored.image_of(key), p.aggregator.image_of(key), "{key:?}");
        }
    }
}

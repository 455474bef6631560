//! Scale-out in the pipeline (`crate::shard`): on a shard, every observation also goes into a
//! fresh delta aggregator that is published as one numbered frame per tick, and bootstraps get
//! the whole windows as of a frame; on an evaluator, the shards' frames are applied to the
//! windows in order, each at most once, and what could not be resumed is counted as a gap and
//! reported with every decision (`coverage`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::Pipeline;
use crate::aggregate::Aggregator;
use crate::aggregate::image::AggregatorImage;
use crate::correlate::Sink;
use crate::model::{Dims, Evaluation, FlagKey, Outcome, Variant};
use crate::shard::frame::Frame;
use crate::shard::hub::{Hub, ImageRequest};

use crate::shard::subscriber::{Input, Positions};
use crate::time::Timestamp;

/// A shard's part: the delta since the last frame, the frames' numbers, and the encoder they
/// go to (`Hub::encode_frames`, which publishes them in order).
pub struct ShardSide {
    pub(super) deltas: Aggregator,
    /// The last sequence number handed to the encoder.
    pub(super) seq: u64,
    encoder: mpsc::Sender<(u64, Aggregator, Timestamp)>,
    pub(super) images: Option<mpsc::Receiver<ImageRequest>>,
    /// Bootstraps waiting for the pending delta to be handed over (the encoder was busy).
    waiting: Vec<ImageRequest>,
}

/// Frames the encoder may fall behind by before the pipeline keeps adding to one delta.
const ENCODER_QUEUE: usize = 8;

impl ShardSide {
    /// The shard's part, and its encoder's task (to spawn).
    pub fn new(hub: Arc<Hub>, images: mpsc::Receiver<ImageRequest>, max_series: usize) -> (Self, impl std::future::Future<Output = ()>) {
        let (encoder, frames) = mpsc::channel(ENCODER_QUEUE);
        let side = ShardSide { deltas: Aggregator::for_delta(max_series), seq: hub.seq(), encoder, images: Some(images), waiting: Vec::new() };
        (side, hub.encode_frames(frames))
    }
}

/// An evaluator's part: the shards' positions and coverage, and the frames coming in.
pub struct MergeSide {
    pub(super) positions: Positions,
    pub(super) coverage: BTreeMap<String, Coverage>,
    /// Image parts of a bootstrap in progress, per shard: merged only once the last arrives.
    pending: HashMap<String, (u64, u64, Vec<AggregatorImage>)>,
    pub(super) inputs: Option<mpsc::Receiver<Input>>,
    /// Tells the subscribers the positions are known (after the checkpoint's restore).
    pub(super) ready: watch::Sender<bool>,
}

/// One shard as this evaluator sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Coverage {
    pub connected: bool,
    /// Breaks that could not be resumed, and the frames known to be missing across them.
    pub gaps: u64,
    pub missing_frames: u64,
    pub last_gap: Option<Timestamp>,
    /// Our clock minus the shard's at its last frame.
    pub lag_ms: u64,
}

impl Coverage {
    /// One break that could not be resumed, `missing` frames known lost across it.
    fn gap(&mut self, shard: &str, missing: u64, now: Timestamp, metrics: &crate::telemetry::Metrics) {
        self.gaps += 1;
        self.missing_frames += missing;
        self.last_gap = Some(now);
        metrics.shard_gaps.get_or_create(&vec![("shard", shard.to_owned())]).inc();
    }
}

impl MergeSide {
    pub fn new(shards: &[String], positions: Positions, inputs: mpsc::Receiver<Input>, ready: watch::Sender<bool>) -> Self {
        let coverage = shards.iter().map(|s| (s.clone(), Coverage::default())).collect();
        MergeSide { positions, coverage, pending: HashMap::new(), inputs: Some(inputs), ready }
    }

    fn position(&self, shard: &str) -> Option<(u64, u64)> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).get(shard).copied()
    }

    fn set_position(&self, shard: &str, at: (u64, u64)) {
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).insert(shard.to_owned(), at);
    }

    /// What the decision records say of the shards.
    pub fn coverage_json(&self) -> serde_json::Value {
        let shards: Vec<_> = self
            .coverage
            .iter()
            .map(|(shard, c)| {
                json!({ "shard": shard, "connected": c.connected, "gaps": c.gaps, "missing_frames": c.missing_frames,
                        "last_gap_ms": c.last_gap.map(Timestamp::as_millis), "lag_ms": c.lag_ms })
            })
            .collect();
        let complete = self.coverage.values().all(|c| c.connected && c.gaps == 0);
        json!({ "complete": complete, "shards": shards })
    }
}

/// Feeds the windows and the delta at once.
pub(super) struct Tee<'a> {
    pub windows: &'a mut Aggregator,
    pub delta: &'a mut Aggregator,
}

impl Sink for Tee<'_> {
    fn observe(&mut self, flag: &FlagKey, variant: &Variant, outcome: &Outcome, user: Option<u64>, now: Timestamp) {
        self.windows.observe(flag, variant, outcome, user, now);
        self.delta.observe(flag, variant, outcome, user, now);
    }
    fn unflagged(&mut self, dims: &Dims, error: bool, latency_us: u64, now: Timestamp) {
        self.windows.unflagged(dims, error, latency_us, now);
        self.delta.unflagged(dims, error, latency_us, now);
    }
    fn exposure(&mut self, evaluation: &Evaluation, now: Timestamp) {
        self.windows.exposure(evaluation, now);
        self.delta.exposure(evaluation, now);
    }
}

impl Pipeline {
    /// A shard hands what its windows gained since the last frame to the encoder as the next
    /// numbered frame (nothing when idle). A busy encoder: the delta keeps growing until the
    /// next tick, nothing is dropped. Then answers the bootstraps that waited for it.
    pub(super) fn flush_delta(&mut self, now: Timestamp) {
        let Some(shard) = &mut self.shard else { return };
        if !shard.deltas.is_empty() {
            let delta = std::mem::replace(&mut shard.deltas, Aggregator::for_delta(self.aggregator.max_series()));
            match shard.encoder.try_send((shard.seq + 1, delta, now)) {
                Ok(()) => {
                    shard.seq += 1;
                    self.metrics.shard_stream_seq.set(shard.seq as i64);
                }
                Err(mpsc::error::TrySendError::Full((_, delta, _))) => {
                    shard.deltas = delta;
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        // The image holds exactly the frames up to `seq`.
        let seq = shard.seq;
        for reply in shard.waiting.drain(..) {
            let _ = reply.send((seq, self.aggregator.image()));
        }
    }

    /// A bootstrap: answered once the pending delta is handed over, with the whole windows and
    /// the sequence number they hold every frame up to.
    pub(super) fn answer_image(&mut self, reply: ImageRequest, now: Timestamp) {
        let Some(shard) = &mut self.shard else { return };
        shard.waiting.push(reply);
        self.flush_delta(now);
    }

    /// An evaluator applies one shard's input.
    pub(super) fn apply_input(&mut self, input: Input, now: Timestamp) {
        let Some(merge) = &mut self.merge else { return };
        match input {
            Input::Disconnected { shard, .. } => {
                merge.pending.remove(&shard);
                if let Some(c) = merge.coverage.get_mut(&shard) {
                    c.connected = false;
                }
            }
            Input::Frame { shard, frame } => {
                let position = merge.position(&shard);
                let c = merge.coverage.entry(shard.clone()).or_default();
                match frame {
                    Frame::Hello { incarnation, seq, resumed, bootstrap, .. } => {
                        c.connected = true;
                        merge.pending.remove(&shard);
                        if bootstrap {
                            merge.pending.insert(shard, (incarnation, seq, Vec::new()));
                        } else if !resumed {
                            // The frames after our position are gone (or of another
                            // incarnation): count the gap, go on from the shard's now.
                            let missing = position.filter(|(i, _)| *i == incarnation).map_or(0, |(_, ours)| seq.saturating_sub(ours));
                            c.gap(&shard, missing, now, &self.metrics);
                            tracing::warn!(%shard, "shard stream resumed with a gap: coverage reduced");
                            merge.set_position(&shard, (incarnation, seq));
                        }
                    }
                    Frame::Image { part, last, .. } => {
                        let Some((incarnation, seq, parts)) = merge.pending.get_mut(&shard) else { return };
                        parts.push(part);
                        if last {
                            let (incarnation, seq) = (*incarnation, *seq);
                            let parts = merge.pending.remove(&shard).map(|p| p.2).unwrap_or_default();
                            for part in parts {
                                if let Err(e) = self.aggregator.merge_image(part, now) {
                                    tracing::error!(%shard, error = %e, "a shard's bootstrap image is damaged; part left out");
                                }
                            }
                            merge.set_position(&shard, (incarnation, seq));
                            tracing::info!(%shard, seq, "bootstrapped from the shard's windows");
                        }
                    }
                    Frame::Delta { seq, at, delta } => {
                        let Some((incarnation, ours)) = position else { return };
                        if seq <= ours {
                            return;
                        }
                        if seq > ours + 1 {
                            c.gap(&shard, seq - ours - 1, now, &self.metrics);
                        }
                        c.lag_ms = now.as_millis().saturating_sub(at);
                        self.metrics.shard_lag.get_or_create(&vec![("shard", shard.clone())]).set(c.lag_ms as i64);
                        if let Err(e) = self.aggregator.apply_delta(delta, now) {
                            tracing::error!(%shard, error = %e, "a shard's frame is damaged; left out");
                        }
                        merge.set_position(&shard, (incarnation, seq));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::image::AggregatorImage;
    use crate::correlate::{CorrelateSettings, Correlator};
    use crate::ingest::otlp::{ExtractOptions, convert_traces};
    use crate::model::Batch;
    use crate::shard::frame::{decode, encode};

    /// A shard: its correlator, windows and the delta since its last frame.
    struct Shard {
        correlator: Correlator,
        windows: Aggregator,
        delta: Aggregator,
    }

    impl Shard {
        fn new() -> Self {
            Shard { correlator: Correlator::new(CorrelateSettings::default()), windows: Aggregator::new(10_000), delta: Aggregator::new(10_000) }
        }

        fn feed(&mut self, batch: &Batch, now: Timestamp) {
            let mut sink = Tee { windows: &mut self.windows, delta: &mut self.delta };
            for e in &batch.evaluations {
                self.correlator.evaluation(e, now, &mut sink);
            }
            for o in &batch.outcomes {
                self.correlator.outcome(o.clone(), now, &mut sink);
            }
        }

        fn tick(&mut self, now: Timestamp) -> AggregatorImage {
            self.correlator.evict_idle(now, &mut Tee { windows: &mut self.windows, delta: &mut self.delta });
            // Through the wire encoding, as a frame travels.
            let delta = std::mem::replace(&mut self.delta, Aggregator::new(10_000)).image();
            decode(&encode(&delta)).expect("a frame decodes")
        }
    }

    /// The trace's shard, as the Collector's loadbalancing exporter routes by trace id.
    fn shard_of(trace: &crate::model::TraceId, n: usize) -> usize {
        (u64::from_le_bytes(trace.0[8..].try_into().unwrap()) % n as u64) as usize
    }

    fn split(batch: &Batch, n: usize) -> Vec<Batch> {
        let mut parts: Vec<Batch> = (0..n).map(|_| Batch::default()).collect();
        for e in &batch.evaluations {
            parts[e.trace.as_ref().map_or(0, |t| shard_of(t, n))].evaluations.push(e.clone());
        }
        for o in &batch.outcomes {
            parts[shard_of(&o.trace, n)].outcomes.push(o.clone());
        }
        parts
    }

    /// Everything a rule reads of the windows, per series and baseline, in one comparable form.
    fn reading(agg: &Aggregator, now: Timestamp) -> Vec<String> {
        let since = now.minus(std::time::Duration::from_secs(3600));
        let mut out: Vec<String> = agg
            .series()
            .map(|(k, w)| {
                let s = w.summary_since(since);
                let users = w.user_buckets().map(|u| u.0.iter().map(|b| b[0] as u64 * 1_000 + b[1] as u64).sum::<u64>());
                format!(
                    "{k:?} req={} err={} exp={} evalerr={} p50={:?} p99={:?} n={} users={users:?} distinct={:?}",
                    s.requests,
                    s.errors,
                    s.exposures,
                    s.evaluation_errors,
                    s.quantile_ms(0.5),
                    s.quantile_ms(0.99),
                    s.latency.len(),
                    agg.distinct_users(&k.flag, k.variant.as_str())
                )
            })
            .chain(agg.unflagged_iter().map(|(d, w)| {
                let s = w.summary_since(since);
                format!("{d:?} req={} err={} n={}", s.requests, s.errors, s.latency.len())
            }))
            .collect();
        out.sort();
        out
    }

    /// Issue 17's check: a router hashes trace ids into 3 shards, each streams its deltas, and
    /// the evaluator's merged windows read exactly as one instance's that saw all the traffic —
    /// and so do those of an evaluator that joined halfway and bootstrapped from the shards.
    #[test]
    fn merged_shard_windows_equal_one_instances_and_a_late_evaluator_bootstraps_to_them() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut single = (Correlator::new(CorrelateSettings::default()), Aggregator::new(10_000));
        let mut shards: Vec<Shard> = (0..3).map(|_| Shard::new()).collect();
        let mut evaluator = Aggregator::new(10_000);
        let mut late: Option<Aggregator> = None;
        let t0 = Timestamp(1_700_000_000_000);
        for step in 0..240u64 {
            let now = t0.plus(std::time::Duration::from_millis(step * 500));
            let requests: Vec<crate::cli::traffic::Request> = (0..40)
                .map(|i| crate::cli::traffic::Request {
                    user: (step * 40 + i) % 700,
                    variant: if i % 3 == 0 { "on" } else { "off" }.into(),
                    region: if i % 2 == 0 { "eu" } else { "us" }.into(),
                    payments_error: i % 3 == 0 && (step + i) % 7 == 0,
                })
                .collect();
            let flag = if step % 2 == 0 { "checkout-v2" } else { "search-v3" };
            let request = crate::cli::traffic::build(flag, "production", &requests, now.as_millis() * 1_000_000, &mut rng);
            let batch = convert_traces(&request, &ExtractOptions::default()).batch;
            for e in &batch.evaluations {
                single.0.evaluation(e, now, &mut single.1);
            }
            for o in &batch.outcomes {
                single.0.outcome(o.clone(), now, &mut single.1);
            }
            single.0.evict_idle(now, &mut single.1);
            for (shard, part) in shards.iter_mut().zip(split(&batch, 3)) {
                shard.feed(&part, now);
                let delta = shard.tick(now);
                evaluator.apply_delta(delta.clone(), now).expect("applies");
                if let Some(late) = &mut late {
                    late.apply_delta(delta, now).expect("applies");
                }
            }
            if step == 120 {
                // Bootstrap: each shard's whole windows, as of the frame just sent, in parts.
                let mut joined = Aggregator::new(10_000);
                for shard in &shards {
                    for part in shard.windows.image().split(7) {
                        joined.merge_image(decode(&encode(&part)).unwrap(), now).expect("merges");
                    }
                }
                late = Some(joined);
            }
        }
        let end = t0.plus(std::time::Duration::from_secs(180));
        single.0.evict_idle(end, &mut single.1);
        for shard in &mut shards {
            let delta = shard.tick(end);
            evaluator.apply_delta(delta.clone(), end).unwrap();
            late.as_mut().unwrap().apply_delta(delta, end).unwrap();
        }
        let truth = reading(&single.1, end);
        assert!(truth.len() >= 8, "series in both regions, flags and variants, and baselines: {truth:#?}");
        assert_eq!(reading(&evaluator, end), truth, "merged shards read as one instance");
        assert_eq!(reading(late.as_ref().unwrap(), end), truth, "a late evaluator bootstrapped from the shards reads the same");
    }
}

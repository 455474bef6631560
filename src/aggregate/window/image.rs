//! A window as plain data for the checkpoint (`pipeline::checkpoint`): every bucket of every
//! level with its counts and its latency as the sparse encoding's bytes, and the window's
//! bookkeeping. Restoring validates what it reads (bucket order, histogram bytes, level
//! bounds): a checkpoint is input from disk, and a bad one must fail to restore, not panic.

use serde::{Deserialize, Serialize};

use super::{Bucket, LEVELS, Stats, Window};
use crate::aggregate::latency::{Latency, Sparse};
use crate::stats::{NonZeroBuckets, UserBuckets};
use crate::time::Timestamp;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowImage {
    /// Per level, finest first, oldest bucket first.
    levels: Vec<Vec<BucketImage>>,
    /// Every bucket's latency histogram ([`Sparse`]'s bytes), concatenated in bucket order:
    /// one allocation per window instead of one per bucket (imaging 10,000 series of 1 h took
    /// 600 ms with one per bucket).
    #[serde(with = "bytes")]
    latency: Vec<u8>,
    advanced_to: u64,
    cascaded_1: u64,
    dropped_before: Vec<u64>,
    last_record: u64,
    /// The user buckets that are not all zero: (bucket, [requests, errors, slow]). Sparse: a
    /// shard's delta frame touches a few buckets of each series (276 bytes per changed series
    /// per frame with all 64 buckets, most of it zeros).
    users: Option<NonZeroBuckets>,
    slow_over_us: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct BucketImage {
    start: u64,
    requests: u64,
    errors: u64,
    exposures: u64,
    evaluation_errors: u64,
    /// Length of its histogram in [`WindowImage::latency`] (`None`: no latency recorded).
    latency: Option<u32>,
}

/// Bytes as one byte string (a length and a copy) instead of a sequence of numbers (one call
/// per byte, 3× slower to encode and decode).
mod bytes {
    use serde::de::{Deserializer, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Buf;
        impl<'de> Visitor<'de> for Buf {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(Buf)
    }
}

impl Window {
    pub fn image(&self) -> WindowImage {
        let mut latency = Vec::with_capacity(self.levels.iter().flatten().map(|b| b.stats.latency.as_ref().map_or(0, Latency::bytes)).sum());
        let mut bucket = |b: &Bucket| {
            let len = b.stats.latency.as_ref().map(|l| {
                let before = latency.len();
                match l {
                    Latency::Sparse(sparse) => latency.extend_from_slice(sparse.bytes()),
                    live => latency.extend_from_slice(live.to_sparse().bytes()),
                }
                (latency.len() - before) as u32
            });
            let s = &b.stats;
            BucketImage { start: b.start, requests: s.requests, errors: s.errors, exposures: s.exposures, evaluation_errors: s.evaluation_errors, latency: len }
        };
        let levels = self.levels.iter().map(|level| level.iter().map(&mut bucket).collect()).collect();
        WindowImage {
            levels,
            latency,
            advanced_to: self.advanced_to,
            cascaded_1: self.cascaded_1,
            dropped_before: self.dropped_before.to_vec(),
            last_record: self.last_record.as_millis(),
            users: self.users.as_ref().map(|u| u.nonzero()),
            slow_over_us: self.slow_over_us,
        }
    }
}

impl WindowImage {
    /// About how many bytes this image encodes to.
    pub fn size_hint(&self) -> usize {
        // Histograms, ~20 bytes of varint counts per bucket, the user buckets and the rest.
        self.latency.len() + self.levels.iter().map(Vec::len).sum::<usize>() * 20 + self.users.as_ref().map_or(0, |u| u.len() * 8) + 64
    }

    /// The window this image was taken of, or what is wrong with it.
    pub fn restore(self) -> Result<Window, String> {
        if self.levels.len() != LEVELS.len() || self.dropped_before.len() != LEVELS.len() {
            return Err(format!("{} levels, {} retention bounds (expected {})", self.levels.len(), self.dropped_before.len(), LEVELS.len()));
        }
        let mut window = Window::default();
        let mut latency: &[u8] = &self.latency;
        for (level, buckets) in self.levels.into_iter().enumerate() {
            let (width, keep) = LEVELS[level];
            if buckets.len() > keep + LEVELS.get(level + 1).map_or(0, |next| (next.0 / width) as usize) {
                return Err(format!("level {level} holds {} buckets", buckets.len()));
            }
            let mut previous = None;
            for b in buckets {
                let start = b.start;
                if start % width != 0 || previous.is_some_and(|p| p >= start) {
                    return Err(format!("level {level}: bucket at {start} ms out of order or off its {width} ms grid"));
                }
                previous = Some(start);
                let histogram = match b.latency {
                    Some(len) if len as usize <= latency.len() => {
                        let (mine, rest) = latency.split_at(len as usize);
                        latency = rest;
                        let sparse = Sparse::from_bytes(mine.to_vec()).ok_or_else(|| format!("level {level}: bucket at {start} ms: bad latency histogram"))?;
                        Some(Latency::Sparse(sparse))
                    }
                    Some(_) => return Err(format!("level {level}: bucket at {start} ms: latency histogram past the end")),
                    None => None,
                };
                let stats =
                    Stats { requests: b.requests, errors: b.errors, exposures: b.exposures, evaluation_errors: b.evaluation_errors, latency: histogram };
                window.levels[level].push_back(Bucket { start, stats });
            }
            window.dropped_before[level] = self.dropped_before[level];
        }
        if !latency.is_empty() {
            return Err(format!("{} latency bytes belong to no bucket", latency.len()));
        }
        window.advanced_to = self.advanced_to;
        window.cascaded_1 = self.cascaded_1;
        window.last_record = Timestamp(self.last_record);
        window.slow_over_us = self.slow_over_us;
        if let Some(nonzero) = self.users {
            window.users = Some(Box::new(UserBuckets::from_nonzero(nonzero)?));
        }
        Ok(window)
    }
}

impl Window {
    /// Adds a delta window's data (a shard's windows' gain since its last flush: a fresh window
    /// per flush, so its level 0 holds all of it) into this window's open bucket at `now`, and
    /// its user-bucket counts into this one's. A delta arrives a tick or so after its data: the
    /// sums over any window are a single instance's, a bucket boundary may fall one flush later.
    pub fn add_delta(&mut self, delta: &Window, now: Timestamp) {
        for bucket in &delta.levels[0] {
            self.open_bucket(now).add(&bucket.stats);
        }
        if let Some(theirs) = &delta.users {
            self.users.get_or_insert_with(Default::default).add(theirs);
        }
    }

    /// Adds a whole window (a shard's at bootstrap) into this one, both advanced to `now`.
    pub fn add_window(&mut self, mut other: Window, now: Timestamp) {
        self.advance(now);
        other.advance(now);
        self.merge(&other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy_window() -> Window {
        let mut w = Window::new();
        // 2 h of traffic: every level holds buckets, the open one dense.
        for i in 0..7_200u64 {
            let at = Timestamp(1_000_000 + i * 1_000);
            w.record_request(at, i % 17 == 0, 1_000 + (i * 37) % 90_000);
            w.record_exposure(at, i % 101 == 0);
            w.record_user(i % 300, i % 17 == 0, 50_000);
        }
        for _ in 0..200 {
            w.record_request(Timestamp(1_000_000 + 7_200_000), false, 4_000);
        }
        w.set_slow_over_us(40_000);
        w
    }

    #[test]
    fn a_restored_window_answers_every_query_as_the_original() {
        let w = busy_window();
        let restored = w.image().restore().expect("restores");
        assert_eq!(restored.image(), w.image(), "the image of the copy is the image of the original");
        let now = Timestamp(1_000_000 + 7_200_000);
        for back_s in [10, 60, 300, 3_600, 6 * 3_600] {
            let since = now.minus(std::time::Duration::from_secs(back_s));
            let (a, b) = (w.summary_since(since), restored.summary_since(since));
            assert_eq!((a.requests, a.errors, a.exposures, a.evaluation_errors), (b.requests, b.errors, b.exposures, b.evaluation_errors));
            assert_eq!(a.latency, b.latency, "latency since {back_s} s");
            assert_eq!(a.covered_from, b.covered_from);
        }
        assert_eq!(restored.user_buckets(), w.user_buckets());
        assert_eq!(restored.slow_over_us(), Some(40_000));
        assert_eq!(restored.last_record(), w.last_record());
        // It keeps working: new data lands where the original's would.
        let (mut a, mut b) = (w.clone(), restored);
        for t in [now, now.plus(std::time::Duration::from_secs(7)), now.plus(std::time::Duration::from_secs(4_000))] {
            a.record_request(t, true, 9_000);
            b.record_request(t, true, 9_000);
        }
        assert_eq!(a.image(), b.image());
    }

    #[test]
    fn a_damaged_image_is_refused_not_restored() {
        let good = busy_window().image();
        let mut shuffled = good.clone();
        shuffled.levels[1].reverse();
        let mut off_grid = good.clone();
        off_grid.levels[0][0].start += 1;
        let mut histogram = good.clone();
        // The first histogram's bytes all continuation bits: a varint that never ends.
        let first = histogram.levels.iter().flatten().find_map(|b| b.latency).expect("a bucket with latency") as usize;
        histogram.latency[..first].fill(0x80);
        let mut short = good.clone();
        short.latency.pop();
        let mut long = good.clone();
        long.latency.push(1);
        let mut users = good.clone();
        users.users = Some(vec![(64, [1, 0, 0])]);
        let mut reordered = good.clone();
        reordered.users.as_mut().unwrap().reverse();
        let mut levels = good.clone();
        levels.levels.pop();
        for (what, image) in [
            ("order", shuffled),
            ("grid", off_grid),
            ("latency", histogram),
            ("short latency", short),
            ("long latency", long),
            ("user bucket", users),
            ("user bucket order", reordered),
            ("levels", levels),
        ] {
            let error = image.restore().err().unwrap_or_else(|| panic!("a damaged {what} must be refused"));
            assert!(!error.is_empty(), "{what}: says what is wrong");
        }
    }
}

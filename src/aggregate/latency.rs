//! Latency histograms: dense hdrhistogram for the live bucket, sparse for closed buckets.
//! Range 1 µs – 1 h at 2 significant digits (≤ 0.8 % relative quantile error); larger values
//! saturate at 1 h.

use hdrhistogram::Histogram;

pub const LOWEST_US: u64 = 1;
pub const HIGHEST_US: u64 = 3_600_000_000;
pub const SIGFIGS: u8 = 2;

/// Creates an empty dense histogram with flagguard's fixed configuration.
pub fn dense() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (1 ≤ low, high ≥ 2·low, sigfig ≤ 5).
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIGS).expect("constant histogram bounds are valid")
}

/// Latencies a live bucket keeps raw before it needs a dense histogram (27 KB each): most
/// series of a big fleet see a few requests per 5-second bucket.
pub const RAW_MAX: usize = 64;

/// The configuration's bucket arithmetic (no counts are ever recorded in it).
fn template() -> &'static Histogram<u64> {
    static TEMPLATE: std::sync::OnceLock<Histogram<u64>> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(dense)
}

/// A latency distribution in one bucket.
#[derive(Clone, Debug)]
pub enum Latency {
    /// A live bucket with few requests: the raw values (µs, saturating at `u32::MAX`).
    Raw(Vec<u32>),
    /// A busy live bucket: O(1) record.
    Dense(Box<Histogram<u64>>),
    /// Closed buckets: the non-empty (value, count) pairs in ascending order, as varints of the
    /// value's delta from the previous one and of the count ([`Sparse`]): about 3 bytes per
    /// distinct value instead of 16. Closed buckets are most of the windows' memory (README
    /// "Performance").
    Sparse(Sparse),
}

impl Latency {
    pub fn record(&mut self, latency_us: u64) {
        match self {
            Latency::Raw(values) if values.len() < RAW_MAX => values.push(u32::try_from(latency_us).unwrap_or(u32::MAX)),
            Latency::Raw(_) => {
                let mut h = self.to_dense();
                h.saturating_record(latency_us.max(LOWEST_US));
                *self = Latency::Dense(Box::new(h));
            }
            Latency::Dense(h) => h.saturating_record(latency_us.max(LOWEST_US)),
            Latency::Sparse(_) => {
                let mut h = self.to_dense();
                h.saturating_record(latency_us.max(LOWEST_US));
                *self = Latency::Dense(Box::new(h));
            }
        }
    }

    /// Converts to the sparse form (what closed buckets keep).
    pub fn to_sparse(&self) -> Sparse {
        match self {
            Latency::Dense(h) => Sparse::from_pairs(h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value()))),
            Latency::Sparse(s) => s.clone(),
            Latency::Raw(values) => {
                // The same (bucket value, count) pairs a dense histogram would give.
                let t = template();
                let mut bins: Vec<u64> = values.iter().map(|&v| t.highest_equivalent(u64::from(v).clamp(LOWEST_US, HIGHEST_US))).collect();
                bins.sort_unstable();
                let mut pairs: Vec<(u64, u64)> = Vec::new();
                for b in bins {
                    match pairs.last_mut() {
                        Some((value, count)) if *value == b => *count += 1,
                        _ => pairs.push((b, 1)),
                    }
                }
                Sparse::from_pairs(pairs)
            }
        }
    }

    pub fn to_dense(&self) -> Histogram<u64> {
        let mut h = dense();
        self.add_into(&mut h);
        h
    }

    /// Adds this distribution into `target` (same configuration).
    pub fn add_into(&self, target: &mut Histogram<u64>) {
        match self {
            // Same bounds on both sides: add cannot fail.
            Latency::Dense(h) => {
                let _ = target.add(h.as_ref());
            }
            Latency::Sparse(s) => {
                for (value, count) in s.pairs() {
                    target.saturating_record_n(value, count);
                }
            }
            Latency::Raw(values) => {
                for &v in values {
                    target.saturating_record(u64::from(v).max(LOWEST_US));
                }
            }
        }
    }

    /// Adds `other` into this one, keeping the sparse form sparse.
    pub fn merge(&mut self, other: &Latency) {
        match self {
            Latency::Dense(h) => other.add_into(h),
            Latency::Sparse(mine) => *mine = mine.merge(&other.to_sparse()),
            Latency::Raw(_) => *self = Latency::Sparse(self.to_sparse().merge(&other.to_sparse())),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Latency::Dense(h) => h.distinct_values() * 8 + std::mem::size_of::<Histogram<u64>>(),
            Latency::Sparse(s) => s.0.len(),
            Latency::Raw(values) => values.capacity() * 4,
        }
    }
}

/// A sparse histogram: (value, count) pairs ascending by value, each stored as two LEB128
/// varints (prost's) — the value as the delta from the previous value, then the count. Exactly
/// sized. Lossless: the pairs are hdrhistogram's own bucket values and counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sparse(Box<[u8]>);

impl Sparse {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u64, u64)>) -> Sparse {
        let mut out = Vec::new();
        let mut previous = 0;
        for (value, count) in pairs {
            prost::encoding::encode_varint(value - previous, &mut out);
            prost::encoding::encode_varint(count, &mut out);
            previous = value;
        }
        Sparse(out.into_boxed_slice())
    }

    /// The encoded bytes (what a checkpoint stores).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// A sparse histogram from [`Sparse::bytes`], if they decode to whole (value, count) pairs
    /// of ascending values within the histograms' range.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Sparse> {
        let mut buf: &[u8] = &bytes;
        let mut value = 0u64;
        let mut first = true;
        while !buf.is_empty() {
            let delta = prost::encoding::decode_varint(&mut buf).ok()?;
            prost::encoding::decode_varint(&mut buf).ok()?;
            if delta == 0 && !first {
                return None;
            }
            first = false;
            value = value.checked_add(delta).filter(|&v| v <= template().highest_equivalent(HIGHEST_US))?;
        }
        Some(Sparse(bytes.into_boxed_slice()))
    }

    /// The (value, count) pairs, ascending.
    pub fn pairs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut buf: &[u8] = &self.0;
        let mut value = 0u64;
        std::iter::from_fn(move || {
            if buf.is_empty() {
                return None;
            }
            // Written by `from_pairs` only: a decode error cannot happen; stop if it did.
            let delta = prost::encoding::decode_varint(&mut buf).ok()?;
            let count = prost::encoding::decode_varint(&mut buf).ok()?;
            value += delta;
            Some((value, count))
        })
    }

    /// The sum of two sparse histograms.
    pub fn merge(&self, other: &Sparse) -> Sparse {
        let (mut a, mut b) = (self.pairs().peekable(), other.pairs().peekable());
        let mut merged = Vec::new();
        loop {
            match (a.peek().copied(), b.peek().copied()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    merged.push((x.0, x.1.saturating_add(y.1)));
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    merged.push(x);
                    a.next();
                }
                (_, Some(y)) => {
                    merged.push(y);
                    b.next();
                }
                (Some(x), None) => {
                    merged.push(x);
                    a.next();
                }
                (None, None) => break,
            }
        }
        Sparse::from_pairs(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_encoding_is_lossless_and_merges_like_dense() {
        let a = Sparse::from_pairs([(1, 3), (130, 1), (3_599_999_999, 7)]);
        assert_eq!(a.pairs().collect::<Vec<_>>(), vec![(1, 3), (130, 1), (3_599_999_999, 7)]);
        let b = Sparse::from_pairs([(130, 2), (500, u64::MAX)]);
        assert_eq!(a.merge(&b).pairs().collect::<Vec<_>>(), vec![(1, 3), (130, 3), (500, u64::MAX), (3_599_999_999, 7)]);
        assert_eq!(Sparse::default().merge(&a), a);
        assert!(a.0.len() <= 3 * 4, "a few bytes per pair, not 16");
    }

    #[test]
    fn raw_buckets_give_the_same_distribution_as_dense_ones() {
        let values: Vec<u64> = (0..RAW_MAX as u64 + 10).map(|i| 1_000 + i * i * 37).collect();
        let (mut raw, mut dense_one) = (Latency::Raw(Vec::new()), Latency::Dense(Box::new(dense())));
        for (i, &v) in values.iter().enumerate() {
            raw.record(v);
            dense_one.record(v);
            if i + 1 == RAW_MAX {
                assert!(matches!(raw, Latency::Raw(_)), "raw up to RAW_MAX values");
                assert_eq!(raw.to_sparse(), dense_one.to_sparse(), "same bins as the dense histogram");
            }
        }
        assert!(matches!(raw, Latency::Dense(_)), "dense beyond RAW_MAX");
        assert_eq!(raw.to_sparse(), dense_one.to_sparse());
    }

    #[test]
    fn sparse_round_trip_keeps_quantiles() {
        let mut live = Latency::Dense(Box::new(dense()));
        for v in [120, 950, 3_000, 3_100, 250_000, 9_000_000_000] {
            live.record(v);
        }
        let sparse = Latency::Sparse(live.to_sparse());
        let (a, b) = (live.to_dense(), sparse.to_dense());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.value_at_quantile(q), b.value_at_quantile(q));
        }
        assert!(a.max() <= HIGHEST_US + HIGHEST_US / 100, "saturates at 1 h");
    }

    #[test]
    fn quantile_error_is_within_one_percent() {
        let mut h = dense();
        for v in 1..=100_000u64 {
            h.record(v * 37).unwrap();
        }
        for q in [0.5, 0.95, 0.99] {
            let exact = ((q * 100_000.0) as u64) * 37;
            let got = h.value_at_quantile(q);
            let err = (got as f64 - exact as f64).abs() / exact as f64;
            assert!(err <= 0.01, "q={q} exact={exact} got={got} err={err}");
        }
    }
}

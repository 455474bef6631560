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

/// A latency distribution in one bucket.
#[derive(Clone, Debug)]
pub enum Latency {
    /// The live bucket: O(1) record.
    Dense(Box<Histogram<u64>>),
    /// Closed buckets: (bucket value, count) ascending, only non-empty buckets.
    Sparse(Vec<(u64, u64)>),
}

impl Latency {
    pub fn record(&mut self, latency_us: u64) {
        match self {
            Latency::Dense(h) => h.saturating_record(latency_us.max(LOWEST_US)),
            Latency::Sparse(_) => {
                let mut h = self.to_dense();
                h.saturating_record(latency_us.max(LOWEST_US));
                *self = Latency::Dense(Box::new(h));
            }
        }
    }

    /// Converts to the sparse form (what closed buckets keep).
    pub fn to_sparse(&self) -> Vec<(u64, u64)> {
        match self {
            Latency::Dense(h) => h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect(),
            Latency::Sparse(s) => s.clone(),
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
                for &(value, count) in s {
                    target.saturating_record_n(value, count);
                }
            }
        }
    }

    /// Adds `other` into this one, keeping the sparse form sparse.
    pub fn merge(&mut self, other: &Latency) {
        match self {
            Latency::Dense(h) => other.add_into(h),
            Latency::Sparse(mine) => *mine = merge_sparse(mine, &other.to_sparse()),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Latency::Dense(h) => h.distinct_values() * 8 + std::mem::size_of::<Histogram<u64>>(),
            Latency::Sparse(s) => s.capacity() * 16,
        }
    }
}

/// Merges two ascending sparse lists, summing counts of equal values.
pub fn merge_sparse(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1 + b[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

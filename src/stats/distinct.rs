//! Distinct counts in bounded memory: a k-minimum-values sketch (Bar-Yossef et al. 2002).
//! It keeps the `K` smallest hashes seen; below `K` the count is exact, above it the estimate
//! `(K − 1) / (K-th smallest / 2^64)` has a relative standard error of about `1/√(K − 2)`
//! (≈ 3 % at K = 1024). Sketches merge by keeping the `K` smallest of both, so daemons can
//! later combine them. Hand-written because it is a few lines, tested against exact counts;
//! a HyperLogLog crate would serve as well if more sketches are ever needed.

use std::collections::BTreeSet;

const K: usize = 1024;

#[derive(Clone, Debug, Default)]
pub struct Distinct {
    smallest: BTreeSet<u64>,
}

/// Spreads a (possibly weak) 64-bit hash over the whole range (SplitMix64 finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Distinct {
    pub fn insert(&mut self, hash: u64) {
        let h = mix(hash);
        if self.smallest.len() < K {
            self.smallest.insert(h);
        } else if let Some(&largest) = self.smallest.last()
            && h < largest
            && self.smallest.insert(h)
        {
            self.smallest.pop_last();
        }
    }

    /// The estimated number of distinct values inserted.
    pub fn estimate(&self) -> f64 {
        match self.smallest.last() {
            Some(&kth) if self.smallest.len() == K => (K as f64 - 1.0) / (kth as f64 / u64::MAX as f64),
            _ => self.smallest.len() as f64,
        }
    }

    /// Whether the count is exact (fewer distinct values than the sketch keeps).
    pub fn is_exact(&self) -> bool {
        self.smallest.len() < K
    }

    /// The relative variance of the estimate: 0 when exact, about 1/(K − 2) otherwise.
    pub fn relative_variance(&self) -> f64 {
        if self.is_exact() { 0.0 } else { 1.0 / (K as f64 - 2.0) }
    }

    /// The hashes kept (what a checkpoint stores).
    pub fn smallest(&self) -> impl Iterator<Item = u64> + '_ {
        self.smallest.iter().copied()
    }

    /// A sketch from [`Distinct::smallest`] (at most `K` of them are kept).
    pub fn from_smallest(hashes: impl IntoIterator<Item = u64>) -> Distinct {
        let mut smallest: BTreeSet<u64> = hashes.into_iter().collect();
        while smallest.len() > K {
            smallest.pop_last();
        }
        Distinct { smallest }
    }

    pub fn merge(&mut self, other: &Distinct) {
        for &h in &other.smallest {
            self.smallest.insert(h);
        }
        while self.smallest.len() > K {
            self.smallest.pop_last();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_when_small_close_when_large_and_mergeable() {
        let mut small = Distinct::default();
        for i in 0..500u64 {
            small.insert(i);
            small.insert(i);
        }
        assert_eq!(small.estimate(), 500.0);
        let (mut a, mut b) = (Distinct::default(), Distinct::default());
        for i in 0..100_000u64 {
            if i % 2 == 0 { a.insert(i) } else { b.insert(i) }
        }
        a.merge(&b);
        let e = a.estimate();
        assert!((e - 100_000.0).abs() / 100_000.0 < 0.1, "{e}");
    }
}

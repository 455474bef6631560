//! Sequential statistics that stay valid when checked after every observation.
//!
//! - [`msprt`]: a mixture sequential probability ratio test (mSPRT; Robbins 1970, Johari,
//!   Pekelis & Walsh 2017 "Always valid inference") for the difference of two proportions,
//!   `p_treatment − p_control`, against a margin `δ`, under the normal approximation of the
//!   difference of the two sample proportions. Its statistic Λ is an e-process: comparing it
//!   with `1/α` at every tick keeps the false-positive rate at most `α` however often one
//!   looks; inverting it gives a confidence sequence for the effect.
//! - [`e_bh`]: the e-BH procedure (Wang & Ramdas 2022) that turns one e-value per guarded
//!   series into rejections with the false discovery rate controlled at `α` across them,
//!   whatever their dependence.
//! - [`distinct`]: distinct-user counts in bounded memory, for sample-ratio mismatch.
//! - [`srm`]: the sample-ratio-mismatch test (χ², one degree of freedom).
//! - [`binomial_upper`]: an exact one-sided upper bound of a binomial proportion, used by the
//!   tests that check false-kill rates.

pub mod distinct;

/// How many buckets users are hashed into for the user-level (cluster-robust) variance.
pub const USER_BUCKETS: usize = 64;

/// (requests, errors, slow requests) per bucket of hashed users. The counters wrap: only the
/// difference between two readings of the same series is meaningful
/// ([`UserBuckets::add_since_into`]).
#[derive(Clone, Debug, PartialEq)]
pub struct UserBuckets(pub [[u32; 3]; USER_BUCKETS]);

impl Default for UserBuckets {
    fn default() -> Self {
        UserBuckets([[0; 3]; USER_BUCKETS])
    }
}

/// The user buckets that are not all zero, as (bucket, [requests, errors, slow]).
pub type NonZeroBuckets = Vec<(u8, [u32; 3])>;

/// Which event of a request the user buckets are read for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    Error = 1,
    Slow = 2,
}

impl UserBuckets {
    /// The buckets that are not all zero, as (bucket, counts): what a checkpoint or a shard's
    /// frame carries (most buckets of a frame's delta are zero).
    pub fn nonzero(&self) -> NonZeroBuckets {
        self.0.iter().enumerate().filter(|(_, b)| **b != [0; 3]).map(|(i, b)| (i as u8, *b)).collect()
    }

    /// The buckets from [`UserBuckets::nonzero`], or what is wrong with them.
    pub fn from_nonzero(nonzero: NonZeroBuckets) -> Result<UserBuckets, String> {
        let mut users = UserBuckets::default();
        let mut previous = None;
        for (i, counts) in nonzero {
            if usize::from(i) >= USER_BUCKETS || previous.is_some_and(|p| p >= i) {
                return Err(format!("user bucket {i} out of range or out of order (of {USER_BUCKETS})"));
            }
            previous = Some(i);
            users.0[usize::from(i)] = counts;
        }
        Ok(users)
    }

    pub fn add(&mut self, other: &UserBuckets) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m = m.wrapping_add(*t);
            }
        }
    }

    pub fn record(&mut self, user: u64, error: bool, slow: bool) {
        let b = &mut self.0[user_bucket(user)];
        b[0] = b[0].wrapping_add(1);
        b[1] = b[1].wrapping_add(u32::from(error));
        b[2] = b[2].wrapping_add(u32::from(slow));
    }

    /// Adds the requests and `event`s recorded since `base` (an earlier reading of this
    /// series; `None`: since the start) into `sum`. A base that reads ahead of this one (a
    /// series that was dropped and started again) counts as no base.
    pub fn add_since_into(&self, base: Option<&UserBuckets>, event: Event, sum: &mut [[u64; 2]; USER_BUCKETS]) {
        let j = event as usize;
        let diff = |base: &UserBuckets, i: usize, j: usize| self.0[i][j].wrapping_sub(base.0[i][j]);
        // Fewer than 2^31 requests per bucket within one test segment: a larger difference is a
        // counter that went backwards.
        let base = base.filter(|b| (0..USER_BUCKETS).all(|i| diff(b, i, 0) < 1 << 31 && diff(b, i, j) <= diff(b, i, 0)));
        for (i, s) in sum.iter_mut().enumerate() {
            let (n, x) = match base {
                Some(b) => (diff(b, i, 0), diff(b, i, j)),
                None => (self.0[i][0], self.0[i][j]),
            };
            s[0] += u64::from(n);
            s[1] += u64::from(x);
        }
    }
}

/// The bucket of a user (a 64-bit hash): the top bits of a multiplicative mix.
pub fn user_bucket(user: u64) -> usize {
    (user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - USER_BUCKETS.trailing_zeros())) as usize
}

/// The design effect of a proportion (errors / requests) observed over users: the user-level
/// (cluster-robust) variance of the proportion divided by the binomial variance that treats
/// every request as independent, at least 1.
///
/// Every request of a user lands in the same bucket, so buckets are independent groups of whole
/// users and the spread of their residuals `x_k − p̂·n_k` estimates the variance of `x − p̂·n`
/// whatever the correlation within a user (the random-groups estimator of survey sampling;
/// the linearised variance of a ratio): `V_users = B/(B−1) · Σ (x_k − p̂ n_k)² / n²` over the
/// `B` buckets with requests, against `V_binomial = p̂(1 − p̂)/n`. With independent requests the
/// ratio is about 1 (its noise is that of a χ² with `B − 1` degrees of freedom, so it is floored
/// at 1); a few heavy users whose error rates differ make it large. Fewer than two buckets with
/// requests cannot show the spread: 1.
pub fn design_effect(buckets: &[[u64; 2]]) -> f64 {
    let (n, x) = buckets.iter().fold((0u64, 0u64), |(n, x), b| (n + b[0], x + b[1]));
    let used = buckets.iter().filter(|b| b[0] > 0).count();
    if n == 0 || used < 2 {
        return 1.0;
    }
    let p = x as f64 / n as f64;
    let spread: f64 = buckets.iter().map(|b| (b[1] as f64 - p * b[0] as f64).powi(2)).sum::<f64>() * used as f64 / (used - 1) as f64;
    // The binomial variance with the same half pseudo-count as the test (zero errors still give a
    // positive variance), times n², to compare with the spread.
    let q = (x as f64 + 0.5) / (n as f64 + 1.0);
    let binomial = q * (1.0 - q) * n as f64;
    (spread / binomial).max(1.0)
}

/// The p-value of a sample-ratio mismatch: `treatment` users out of `treatment + control`,
/// when the treatment should get `expected_share` of them. With exact counts this is the χ²
/// test with one degree of freedom; the relative variance of each estimate (sketches) is added
/// to the variance of the observed share, so estimation error is not taken for a mismatch.
pub fn srm(treatment: f64, control: f64, expected_share: f64, relative_variance: (f64, f64)) -> f64 {
    let total = treatment + control;
    if total <= 0.0 || expected_share <= 0.0 || expected_share >= 1.0 {
        return 1.0;
    }
    let share = treatment / total;
    let sampling = expected_share * (1.0 - expected_share) / total;
    let estimation = (share * (1.0 - share)).powi(2) * (relative_variance.0 + relative_variance.1);
    let z = (share - expected_share) / (sampling + estimation).sqrt();
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Successes (errors, slow requests) out of trials, per arm.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Arms {
    pub treatment_n: u64,
    pub treatment_x: u64,
    pub control_n: u64,
    pub control_x: u64,
    /// Per arm, the factor the binomial variance is multiplied by ([`design_effect`]); values
    /// below 1 (the default 0) count as 1: requests independent.
    pub design_effect: (f64, f64),
}

/// One mSPRT evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Msprt {
    /// Λ⁺: the one-sided (half-normal) mixture likelihood ratio of θ > margin against
    /// θ = margin; an e-value for H0: θ ≤ margin at any stopping time.
    pub statistic: f64,
    /// 1/α: H0 is rejected when Λ reaches it with the effect above the margin.
    pub boundary: f64,
    /// θ̂ = p̂_t − p̂_c.
    pub effect: f64,
    /// The (1 − α) two-sided confidence sequence for θ at this time (for the record).
    pub interval: (f64, f64),
    /// H0 (θ ≤ margin) rejected (Λ⁺ ≥ 1/α): the treatment is worse than the control by more
    /// than the margin.
    pub rejected: bool,
}

/// Runs the mSPRT of H0: `p_t − p_c ≤ margin` with mixing variance `tau²`.
///
/// Proportions are estimated with half a pseudo-count so that zero errors still give a positive
/// variance. Until both arms have at least one trial the statistic is 1 (no evidence).
pub fn msprt(arms: Arms, margin: f64, alpha: f64, tau: f64) -> Msprt {
    let boundary = 1.0 / alpha;
    if arms.treatment_n == 0 || arms.control_n == 0 {
        return Msprt { statistic: 1.0, boundary, effect: 0.0, interval: (-1.0, 1.0), rejected: false };
    }
    let p = |x: u64, n: u64| (x as f64 + 0.5) / (n as f64 + 1.0);
    let (pt, pc) = (p(arms.treatment_x, arms.treatment_n), p(arms.control_x, arms.control_n));
    let effect = arms.treatment_x as f64 / arms.treatment_n as f64 - arms.control_x as f64 / arms.control_n as f64;
    let (dt, dc) = (arms.design_effect.0.max(1.0), arms.design_effect.1.max(1.0));
    let v = dt * pt * (1.0 - pt) / arms.treatment_n as f64 + dc * pc * (1.0 - pc) / arms.control_n as f64;
    let t2 = tau * tau;
    let d = effect - margin;
    // Two-sided normal mixture centred on the margin...
    let log_lambda = 0.5 * (v / (v + t2)).ln() + t2 * d * d / (2.0 * v * (v + t2));
    // ...restricted to alternatives above the margin (a half-normal mixture): Λ⁺ = 2 Λ Φ(τd/√(V(V+τ²))).
    // Λ⁺ is an e-process for the whole composite null θ ≤ margin; the two-sided Λ is not (it
    // also grows when the treatment is far *better* than the margin).
    let log_lambda_plus = std::f64::consts::LN_2 + log_lambda + normal_cdf(tau * d / (v * (v + t2)).sqrt()).max(1e-300).ln();
    let statistic = log_lambda_plus.min(700.0).exp();
    // Inverting the two-sided Λ(θ0) < 1/α gives the confidence sequence |θ̂ − θ0| < w.
    let w = ((2.0 * v * (v + t2) / t2) * (boundary.ln() + 0.5 * ((v + t2) / v).ln())).max(0.0).sqrt();
    let interval = (effect - w, effect + w);
    Msprt { statistic, boundary, effect, interval, rejected: statistic >= boundary }
}

/// The standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// e-BH at level `alpha`: which of the e-values are rejected. With K e-values sorted from the
/// largest, the largest k with `e_(k) ≥ K / (α k)` rejects the top k.
pub fn e_bh(e_values: &[f64], alpha: f64) -> Vec<bool> {
    let k_total = e_values.len();
    let mut order: Vec<usize> = (0..k_total).collect();
    order.sort_by(|&a, &b| e_values[b].total_cmp(&e_values[a]));
    let mut cut = 0;
    for (rank, &i) in order.iter().enumerate() {
        let k = rank + 1;
        if e_values[i] >= k_total as f64 / (alpha * k as f64) {
            cut = k;
        }
    }
    let mut rejected = vec![false; k_total];
    for &i in &order[..cut] {
        rejected[i] = true;
    }
    rejected
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// Lanczos approximation of ln Γ(x) for x > 0 (accurate to ~1e-13).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// P(X ≥ k) for X ~ Binomial(n, p).
pub fn binomial_tail(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    (k..=n).map(|i| (ln_choose(n, i) + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()).exp()).sum::<f64>().min(1.0)
}

/// The exact (Clopper–Pearson) one-sided upper confidence bound at level `1 − beta` of a
/// binomial proportion after `k` successes in `n` trials.
pub fn binomial_upper(n: u64, k: u64, beta: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    // P(X ≤ k | p) decreases in p: find p with P(X ≤ k) = beta by bisection.
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        let cdf = 1.0 - binomial_tail(n, k + 1, mid);
        if cdf > beta { lo = mid } else { hi = mid }
    }
    hi
}

#[cfg(test)]
mod tests;

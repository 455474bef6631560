use super::*;

#[test]
fn no_difference_is_no_evidence() {
    let m = msprt(Arms { treatment_n: 1000, treatment_x: 10, control_n: 1000, control_x: 10, ..Default::default() }, 0.0, 0.01, 0.01);
    assert!(!m.rejected);
    assert!(m.statistic < 1.0);
    assert!(m.interval.0 < 0.0 && m.interval.1 > 0.0);
}

#[test]
fn a_large_difference_is_rejected_and_the_interval_excludes_the_margin() {
    let m = msprt(Arms { treatment_n: 2000, treatment_x: 200, control_n: 2000, control_x: 20, ..Default::default() }, 0.01, 0.01, 0.02);
    assert!(m.rejected, "{m:?}");
    assert!(m.statistic >= m.boundary);
    assert!((m.effect - 0.09).abs() < 1e-9);
    assert!(m.interval.0 > 0.01 && m.interval.1 > m.effect);
}

#[test]
fn the_margin_protects_small_effects() {
    // 1.5 points worse, with a 2-point margin: never rejected, however many samples.
    let m = msprt(Arms { treatment_n: 1_000_000, treatment_x: 25_000, control_n: 1_000_000, control_x: 10_000, ..Default::default() }, 0.02, 0.01, 0.01);
    assert!(!m.rejected, "{m:?}");
}

#[test]
fn rejection_is_one_sided() {
    let mut crossed = false;
    for x in 0..60 {
        let m = msprt(Arms { treatment_n: 500, treatment_x: x, control_n: 500, control_x: 5, ..Default::default() }, 0.0, 0.05, 0.02);
        assert_eq!(m.rejected, m.statistic >= m.boundary, "x={x}: {m:?}");
        crossed |= m.rejected;
        assert!(!m.rejected || m.effect > 0.0, "never rejects on a better treatment: x={x}");
    }
    assert!(crossed);
}

/// The evidence of a healthy slice stays small when the margin is positive (the two-sided
/// mixture would grow without bound here and poison e-BH).
#[test]
fn a_healthy_slice_has_no_evidence_against_a_positive_margin() {
    for n in [1_000u64, 10_000, 100_000] {
        let m = msprt(Arms { treatment_n: n, treatment_x: n / 100, control_n: n, control_x: n / 100, ..Default::default() }, 0.01, 0.01, 0.01);
        assert!(m.statistic < 1.0, "n={n}: {m:?}");
    }
}

#[test]
fn e_bh_rejects_by_rank() {
    // K = 4, α = 0.1: thresholds 40, 20, 13.3, 10 for ranks 1..4.
    assert_eq!(e_bh(&[50.0, 1.0, 25.0, 2.0], 0.1), vec![true, false, true, false]);
    assert_eq!(e_bh(&[39.0, 1.0, 1.0, 1.0], 0.1), vec![false; 4]);
    assert_eq!(e_bh(&[11.0, 11.0, 11.0, 11.0], 0.1), vec![true; 4]);
    assert!(e_bh(&[], 0.1).is_empty());
}

#[test]
fn binomial_helpers() {
    assert!((binomial_tail(10, 1, 0.5) - (1.0 - 0.5f64.powi(10))).abs() < 1e-12);
    assert!((binomial_tail(20, 0, 0.3) - 1.0).abs() < 1e-12);
    // 0 successes in 200: the 95 % upper bound is about 3/200 ("rule of three").
    let u = binomial_upper(200, 0, 0.05);
    assert!((u - 0.0149).abs() < 0.0005, "{u}");
    assert!(binomial_upper(100, 10, 0.05) > 0.1);
}

#[test]
fn sample_ratio_mismatch() {
    let exact = (0.0, 0.0);
    assert!(srm(500.0, 500.0, 0.5, exact) > 0.9);
    assert!(srm(560.0, 440.0, 0.5, exact) < 0.001, "56 % where 50 % was expected");
    assert!(srm(52.0, 948.0, 0.05, exact) > 0.05);
    assert!((srm(531.0, 469.0, 0.5, exact) - 0.0505).abs() < 0.005, "chi2 = 3.84 at the 5 % point");
    // 51 % of 200 000 is a mismatch with exact counts, but not with two 1024-sketches (~3 % error each).
    assert!(srm(102_000.0, 98_000.0, 0.5, exact) < 0.001);
    assert!(srm(102_000.0, 98_000.0, 0.5, (1.0 / 1022.0, 1.0 / 1022.0)) > 0.05);
}

/// Independent requests: the user-level variance matches the binomial one (design effect near
/// 1); a few heavy users with their own error rates: far above 1.
#[test]
fn the_design_effect_sees_errors_concentrated_in_users() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut independent = [[0u64; 2]; USER_BUCKETS];
    let mut clustered = [[0u64; 2]; USER_BUCKETS];
    for _ in 0..20_000 {
        let b = &mut independent[user_bucket(rng.random())];
        b[0] += 1;
        b[1] += u64::from(rng.random_bool(0.01));
        // 5 heavy users send half the requests; one of them fails 10 % of the time.
        let user: u64 = if rng.random_bool(0.5) { rng.random_range(0..5) } else { rng.random_range(100..100_000) };
        let b = &mut clustered[user_bucket(user)];
        b[0] += 1;
        b[1] += u64::from(rng.random_bool(if user == 0 { 0.1 } else { 0.002 }));
    }
    let d = design_effect(&independent);
    assert!((1.0..1.6).contains(&d), "independent: {d}");
    let d = design_effect(&clustered);
    assert!(d > 5.0, "clustered: {d}");
    assert_eq!(design_effect(&[[100, 3], [0, 0]]), 1.0, "one bucket cannot show a spread");
}

#[test]
fn a_design_effect_widens_the_test() {
    let arms = Arms { treatment_n: 5000, treatment_x: 75, control_n: 5000, control_x: 50, ..Default::default() };
    let plain = msprt(arms, 0.0, 0.05, 0.01);
    let clustered = msprt(Arms { design_effect: (6.0, 6.0), ..arms }, 0.0, 0.05, 0.01);
    assert!(clustered.statistic < plain.statistic, "{plain:?} vs {clustered:?}");
    assert!(clustered.interval.1 - clustered.interval.0 > 2.0 * (plain.interval.1 - plain.interval.0));
}

/// Differences of wrapping counters: what was recorded since a reading, across a wrap; a
/// reading ahead of the counters (a series that started again) counts as no reading.
#[test]
fn user_buckets_read_differences_since_a_base() {
    let mut buckets = UserBuckets::default();
    let b = user_bucket(7);
    buckets.0[b] = [u32::MAX - 1, u32::MAX - 3, 5];
    let base = buckets.clone();
    for (error, slow) in [(true, false), (false, true), (true, false), (true, false)] {
        buckets.record(7, error, slow);
    }
    let mut sum = [[0u64; 2]; USER_BUCKETS];
    buckets.add_since_into(Some(&base), Event::Error, &mut sum);
    assert_eq!(sum[b], [4, 3], "across the wrap");
    assert_eq!(sum.iter().map(|s| s[0]).sum::<u64>(), 4);
    let mut sum = [[0u64; 2]; USER_BUCKETS];
    buckets.add_since_into(Some(&base), Event::Slow, &mut sum);
    assert_eq!(sum[b], [4, 1], "slow requests");
    let mut restarted = UserBuckets::default();
    restarted.record(7, false, false);
    let mut sum = [[0u64; 2]; USER_BUCKETS];
    restarted.add_since_into(Some(&base), Event::Error, &mut sum);
    assert_eq!(sum[b], [1, 0], "a base ahead of the counters is ignored");
    let mut sum = [[0u64; 2]; USER_BUCKETS];
    restarted.add_since_into(None, Event::Error, &mut sum);
    assert_eq!(sum[b], [1, 0]);
}

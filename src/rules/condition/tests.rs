//! The conditions' validation (file:line:field) and judging edges, one table per kind that
//! needs one; the kinds that existed before the registry keep their tests in `evaluate` and
//! `engine`.

use super::*;

#[test]
fn every_registered_kind_is_a_key_of_the_shape() {
    assert_eq!(KEYS, ["error_rate", "latency", "burn_rate"]);
}

#[test]
fn reads_say_what_the_engine_prepares() {
    use super::{burn_rate::BurnRate, error_rate::ErrorRate, latency::Latency};
    let d = std::time::Duration::from_secs;
    assert_eq!(Condition::ErrorRate(ErrorRate::Above(0.1)).reads(), Reads::default());
    assert_eq!(Condition::ErrorRate(ErrorRate::AboveControl { margin: 0.0, alpha: 0.01, tau: 0.02 }).reads().cumulative, Some(false));
    let latency = Condition::Latency(Latency::AboveControl { quantile: 0.95, ratio: 1.5, alpha: 0.01 }).reads();
    assert_eq!((latency.cumulative, latency.fixed_threshold), (Some(true), Some((0.95, 1.5))));
    let burn = Condition::BurnRate(BurnRate { objective: 0.99, windows: vec![(d(3600), d(300), 14.4)] }).reads();
    assert_eq!(burn.window_pairs, vec![(d(3600), d(300))]);
}

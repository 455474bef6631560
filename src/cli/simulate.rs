//! `flagguard simulate`: evidence that the sequential rules keep their promises. Synthetic
//! treatment/control streams, second by second, go through the real windows and the real rule
//! engine (the same code as `serve`); the table reports false-kill rates under A/A and time to
//! kill under regressions, next to a naive z-test that peeks at every tick.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::aggregate::Aggregator;
use crate::correlate::Sink;
use crate::model::{Dims, FlagKey, Outcome, SpanId, TraceId, Variant};
use crate::rulefile::parse;
use crate::rules::RuleSet;
use crate::rules::engine::{DecisionKind, EngineSettings, RuleEngine};
use crate::stats::binomial_upper;
use crate::time::Timestamp;

/// One arm's traffic.
#[derive(Clone, Copy, Debug)]
pub struct ArmSpec {
    pub rate_per_s: f64,
    pub error_p: f64,
    /// Median latency (ms); latencies are log-normal with σ = 0.5.
    pub latency_ms: f64,
}

/// A scenario: arms, duration, and the rule's `when` (YAML) and `min_samples`.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub treatment: ArmSpec,
    pub control: ArmSpec,
    /// The regression starts at this second (treatment's spec; before it, the control's).
    pub regression_at_s: u64,
    pub horizon_s: u64,
    /// Concurrently guarded slices (independent flags) in one engine.
    pub series: usize,
    /// Users whose errors are correlated (a few heavy users with a high error propensity).
    pub bursty: bool,
    pub when: &'static str,
    pub min_samples: u64,
}

impl Scenario {
    /// Whether the naive z-test on error rates is a comparison for this scenario's rule.
    fn naive(&self) -> bool {
        self.when.contains("error_rate")
    }
}

/// What happened in one simulated rollout.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Seconds after the regression started when the first slice was killed.
    pub killed_after_s: Option<u64>,
    /// Slices killed (family-wise scenario).
    pub kills: usize,
    /// The naive z-test (one-sided, 99 %) checked every second on the same data.
    pub naive_after_s: Option<u64>,
}

fn poisson(rng: &mut StdRng, lambda: f64) -> u64 {
    // Knuth for small λ, normal approximation for large.
    if lambda > 50.0 {
        let z: f64 = (-2.0 * rng.random::<f64>().max(1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.random::<f64>()).cos();
        return (lambda + z * lambda.sqrt()).round().max(0.0) as u64;
    }
    let (l, mut k, mut p) = ((-lambda).exp(), 0u64, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

fn latency_us(rng: &mut StdRng, median_ms: f64) -> u64 {
    let z: f64 = (-2.0 * rng.random::<f64>().max(1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.random::<f64>()).cos();
    (median_ms * 1000.0 * (0.5 * z).exp()) as u64
}

/// Runs one rollout of `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Run {
    let yaml = format!(
        "rules:\n  - name: sim\n    flag: \"sim-*\"\n    treatment: \"on\"\n    control: \"off\"\n    when:\n{}\n    window: 1m\n    min_samples: {}\n    action: {{ kill: sim }}\n    cooldown: 6h\n",
        scenario.when, scenario.min_samples
    );
    let crate::rulefile::Parsed { rules, .. } =
        parse(std::path::Path::new("simulate.yaml"), &yaml, &Default::default()).unwrap_or_else(|e| panic!("simulator rule: {e:?}"));
    let set = Arc::new(RuleSet { rules, ..RuleSet::default() });
    let settings = EngineSettings {
        sequential_fdr: true,
        stale_after: Duration::from_secs(24 * 3600),
        max_concurrent_kills: usize::MAX,
        incident_window: Duration::from_secs(1),
    };
    let t0 = Timestamp(1_000_000_000);
    let mut engine = RuleEngine::new(set, settings, HashMap::new(), t0);
    let mut agg = Aggregator::new(10_000);
    let mut rng = StdRng::seed_from_u64(seed);
    let dims = Dims { service: "svc".into(), environment: "prod".into(), region: "r".into() };
    let flags: Vec<FlagKey> = (0..scenario.series).map(|i| FlagKey(format!("sim-{i}").into())).collect();
    let (on, off) = (Variant("on".into()), Variant("off".into()));
    // Bursty traffic: persistent users, each in one arm, sending requests by weight; 2 % are
    // heavy (40× the requests) and a quarter of those are broken (8 % errors, 2× the latency)
    // for the whole rollout. Which arm the broken heavy users land in differs run by run, so
    // the arms differ by user composition, not by the flag — errors and slow requests are
    // correlated within users. Mean error rate ≈ 1 %.
    let users: Vec<(f64, f64, usize)> = (0..400)
        .map(|u| {
            let heavy = u % 50 == 0;
            let p = if heavy { if rng.random_bool(0.25) { 0.08 } else { 0.0 } } else { 0.002 };
            (if heavy { 40.0 } else { 1.0 }, p, usize::from(rng.random_bool(0.5)))
        })
        .collect();
    let weight_of = |arm: usize| users.iter().filter(|u| u.2 == arm).map(|u| u.0).sum::<f64>();
    let total_weight = [weight_of(0), weight_of(1)];
    let mut counts = vec![[0u64; 4]; scenario.series];
    let mut run = Run::default();
    let mut killed = vec![false; scenario.series];
    for second in 0..scenario.horizon_s {
        let now = t0.plus(Duration::from_secs(second));
        let regressed = second >= scenario.regression_at_s;
        for (k, flag) in flags.iter().enumerate() {
            for (arm, variant) in [(0usize, &on), (1, &off)] {
                let spec = if arm == 0 && regressed { scenario.treatment } else { scenario.control };
                let rate = if arm == 0 { scenario.treatment.rate_per_s } else { scenario.control.rate_per_s };
                for _ in 0..poisson(&mut rng, rate) {
                    // The request's user (its context id hash): a persistent user when bursty, a
                    // fresh one per request otherwise.
                    let (p, user, slower) = if scenario.bursty {
                        let mut pick = rng.random::<f64>() * total_weight[arm];
                        let mut chosen = (0.0, 0u64);
                        for (u, &(w, p, _)) in users.iter().enumerate().filter(|(_, u)| u.2 == arm) {
                            chosen = (p, u as u64);
                            if pick < w {
                                break;
                            }
                            pick -= w;
                        }
                        let broken = chosen.0 > 0.01;
                        (chosen.0 * spec.error_p / 0.01, chosen.1, if broken { 2.0 } else { 1.0 })
                    } else {
                        (spec.error_p, rng.random::<u64>(), 1.0)
                    };
                    let error = rng.random::<f64>() < p;
                    counts[k][arm * 2] += 1;
                    counts[k][arm * 2 + 1] += error as u64;
                    let outcome = Outcome {
                        trace: TraceId([1; 16]),
                        span: SpanId([1; 8]),
                        dims: dims.clone(),
                        error,
                        latency_us: latency_us(&mut rng, spec.latency_ms * slower),
                    };
                    agg.observe(flag, variant, &outcome, Some(user), now);
                }
            }
            // The naive comparison: a one-sided z-test at 99 % on the cumulative counts, every second.
            let [nt, et, nc, ec] = counts[k];
            if scenario.naive() && run.naive_after_s.is_none() && nt >= scenario.min_samples && nc >= scenario.min_samples {
                let (pt, pc) = (et as f64 / nt as f64, ec as f64 / nc as f64);
                let v = pt * (1.0 - pt) / nt as f64 + pc * (1.0 - pc) / nc as f64;
                if v > 0.0 && (pt - pc) / v.sqrt() > 2.326 {
                    run.naive_after_s = Some(second.saturating_sub(scenario.regression_at_s));
                }
            }
        }
        for decision in engine.evaluate(&mut agg, None, now) {
            if decision.kind != DecisionKind::Kill {
                continue;
            }
            let k: usize = decision.flag.trim_start_matches("sim-").parse().unwrap_or(0);
            if !killed[k] {
                killed[k] = true;
                run.kills += 1;
                run.killed_after_s.get_or_insert(second.saturating_sub(scenario.regression_at_s));
            }
        }
        // Stop once nothing more can happen (the naive test compares error rates only).
        if scenario.series == 1 && run.killed_after_s.is_some() && (run.naive_after_s.is_some() || !scenario.naive()) {
            break;
        }
    }
    run
}

/// The scenarios of the README table, at `horizon` for the A/A ones.
pub fn scenarios(horizon_s: u64) -> Vec<Scenario> {
    let base = ArmSpec { rate_per_s: 10.0, error_p: 0.01, latency_ms: 40.0 };
    let seq = "      - error_rate: { above_control_by: 0.0, confidence: 0.99 }";
    vec![
        Scenario {
            name: "A/A, independent requests (margin 0, confidence 0.99)",
            treatment: base,
            control: base,
            regression_at_s: 0,
            horizon_s,
            series: 1,
            bursty: false,
            when: seq,
            min_samples: 100,
        },
        Scenario {
            name: "A/A, bursty users (2 % heavy, error-prone)",
            treatment: base,
            control: base,
            regression_at_s: 0,
            horizon_s,
            series: 1,
            bursty: true,
            when: seq,
            min_samples: 100,
        },
        Scenario {
            name: "A/B error 0.1 % -> 2 % at 10 req/s, control 190 req/s (margin 0.01, 0.99)",
            treatment: ArmSpec { rate_per_s: 10.0, error_p: 0.02, latency_ms: 40.0 },
            control: ArmSpec { rate_per_s: 190.0, error_p: 0.001, latency_ms: 40.0 },
            regression_at_s: 60,
            horizon_s: 60 + 3600,
            series: 1,
            bursty: false,
            when: "      - error_rate: { above_control_by: 0.01, confidence: 0.99 }",
            min_samples: 100,
        },
        Scenario {
            name: "A/B latency p95 +50 % (ratio 1.3 of the control's p95, 0.99)",
            treatment: ArmSpec { rate_per_s: 10.0, error_p: 0.0, latency_ms: 60.0 },
            control: ArmSpec { rate_per_s: 190.0, error_p: 0.0, latency_ms: 40.0 },
            regression_at_s: 60,
            horizon_s: 60 + 3600,
            series: 1,
            bursty: false,
            when: "      - latency: { quantile: 0.95, above_control_ratio: 1.3, confidence: 0.99 }",
            min_samples: 100,
        },
        Scenario {
            name: "A/A latency, bursty users (the broken heavy users 2x slower; ratio 1.3, 0.99)",
            treatment: base,
            control: base,
            regression_at_s: 0,
            horizon_s,
            series: 1,
            bursty: true,
            when: "      - latency: { quantile: 0.95, above_control_ratio: 1.3, confidence: 0.99 }",
            min_samples: 100,
        },
    ]
}

/// The family-wise scenario: `series` A/A slices guarded at once.
pub fn family(series: usize, horizon_s: u64) -> Scenario {
    let base = ArmSpec { rate_per_s: 5.0, error_p: 0.01, latency_ms: 40.0 };
    Scenario {
        name: "A/A, concurrently guarded slices, e-BH across them",
        treatment: base,
        control: base,
        regression_at_s: 0,
        horizon_s,
        series,
        bursty: false,
        when: "      - error_rate: { above_control_by: 0.0, confidence: 0.99 }",
        min_samples: 100,
    }
}

fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * q).round() as usize])
}

/// Runs every scenario `runs` times (seeds `seed..`) and renders the Markdown table.
pub fn report(runs: u64, seed: u64, horizon_s: u64, family_series: usize, family_runs: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| scenario | runs | killed | rate (95 % upper bound) | naive z-test killed | median / p95 time to kill |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for scenario in scenarios(horizon_s) {
        let results: Vec<Run> = parallel(runs, |i| run(&scenario, seed + i));
        let killed = results.iter().filter(|r| r.killed_after_s.is_some()).count() as u64;
        let naive = results.iter().filter(|r| r.naive_after_s.is_some()).count() as u64;
        let mut times: Vec<u64> = results.iter().filter_map(|r| r.killed_after_s).collect();
        times.sort_unstable();
        let timing = match (quantile(&times, 0.5), quantile(&times, 0.95)) {
            (Some(m), Some(p)) if scenario.regression_at_s > 0 => format!("{m} s / {p} s"),
            _ => "–".into(),
        };
        let naive = if scenario.naive() { format!("{naive} ({:.1} %)", 100.0 * naive as f64 / runs as f64) } else { "–".into() };
        let _ = writeln!(
            out,
            "| {} | {runs} | {killed} | {:.2} % ({:.2} %) | {naive} | {timing} |",
            scenario.name,
            100.0 * killed as f64 / runs as f64,
            100.0 * binomial_upper(runs, killed, 0.05),
        );
    }
    if family_runs == 0 {
        return out;
    }
    let fam = family(family_series, horizon_s);
    let results: Vec<Run> = parallel(family_runs, |i| run(&fam, seed + 10_000 + i));
    let any = results.iter().filter(|r| r.kills > 0).count() as u64;
    let kills: usize = results.iter().map(|r| r.kills).sum();
    let _ = writeln!(
        out,
        "| {} ({family_series} slices) | {family_runs} | {any} runs with a kill, {kills} kills | {:.2} % of runs ({:.2} %) | – | – |",
        fam.name,
        100.0 * any as f64 / family_runs as f64,
        100.0 * binomial_upper(family_runs, any, 0.05)
    );
    out
}

/// Runs `n` jobs on the machine's cores.
fn parallel(n: u64, job: impl Fn(u64) -> Run + Sync) -> Vec<Run> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut out: Vec<(u64, Run)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let job = &job;
                s.spawn(move || (t..n).step_by(threads as usize).map(|i| (i, job(i))).collect::<Vec<_>>())
            })
            .collect();
        // A panicking worker is a bug in the simulation: stop rather than report fewer runs.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| panic!("a simulation worker panicked"))).collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::binomial_tail;

    /// Runs `runs` rollouts of `scenario` (seeds `seed..`): (rollouts killed, rollouts the
    /// naive test killed).
    fn kills(scenario: &Scenario, runs: u64, seed: u64) -> (u64, u64) {
        let results = parallel(runs, |i| run(scenario, seed + i));
        let count = |f: fn(&Run) -> bool| results.iter().filter(|r| f(r)).count() as u64;
        (count(|r| r.killed_after_s.is_some()), count(|r| r.naive_after_s.is_some()))
    }

    /// Under A/A, with peeking every second, the sequential rule's false-kill rate is
    /// consistent with its α = 1 %, while the naive z-test's is far above it.
    #[test]
    fn a_a_false_kills_stay_within_alpha_and_the_naive_test_does_not() {
        let scenario = &scenarios(600)[0];
        let runs = 120u64;
        let (killed, naive) = kills(scenario, runs, 1_000);
        assert!(binomial_tail(runs, killed, 0.01) > 0.001, "{killed}/{runs} false kills is significantly above 1 %");
        assert!(binomial_tail(runs, naive, 0.01) < 0.001, "the naive test should fail this check: {naive}/{runs}");
    }

    /// The same with a few heavy, error-prone users: the arms differ by which users they got,
    /// not by the flag. Requests are not independent; the user-level variance (design effect)
    /// keeps the rule within α where a test on requests — the naive one here — kills often.
    #[test]
    fn a_a_with_bursty_users_stays_within_alpha() {
        let mut scenario = scenarios(300)[1].clone();
        assert!(scenario.bursty);
        scenario.horizon_s = 300;
        let runs = 60u64;
        let (killed, naive) = kills(&scenario, runs, 5_000);
        assert!(binomial_tail(runs, killed, 0.01) > 0.001, "{killed}/{runs} false kills is significantly above 1 %");
        assert!(binomial_tail(runs, naive, 0.01) < 0.001, "requests are correlated here, the naive test should fail: {naive}/{runs}");
    }

    /// The latency comparison under the same bursty users, whose broken heavy users are also
    /// slow: the share of slow requests differs between the arms by user composition. The
    /// per-user slow counts keep it within α (it killed 14 of 60 with requests counted as
    /// independent).
    #[test]
    fn a_a_latency_with_bursty_users_stays_within_alpha() {
        let scenario = scenarios(300)[4].clone();
        assert!(scenario.bursty && scenario.when.contains("latency"));
        let runs = 60u64;
        let (killed, _) = kills(&scenario, runs, 7_000);
        assert!(binomial_tail(runs, killed, 0.01) > 0.001, "{killed}/{runs} false kills is significantly above 1 %");
    }

    #[test]
    fn a_clear_regression_is_killed() {
        let mut scenario = scenarios(600)[2].clone();
        scenario.horizon_s = 60 + 900;
        let results = parallel(10, |i| run(&scenario, 77 + i));
        let times: Vec<u64> = results.iter().filter_map(|r| r.killed_after_s).collect();
        assert_eq!(times.len(), 10, "every regressed rollout is killed within 15 min: {results:?}");
    }
}

//! Time series of one flag's cohorts for the dashboard, read from the windows the daemon
//! already keeps (no second store): per variant, one point per bucket — 5 s buckets for the
//! last minutes, coarser further back.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::Aggregator;
use super::latency;
use crate::time::Timestamp;

/// Which slice of the flag to show; `None` sums every value.
#[derive(Clone, Debug, Default, serde::Deserialize, Serialize)]
pub struct HistoryQuery {
    /// Taken from the path in the API.
    #[serde(default)]
    pub flag: String,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub region: Option<String>,
    /// How far back, seconds. Default 15 min.
    pub seconds: Option<u64>,
}

/// One bucket of one variant.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Point {
    /// Bucket start, ms since the epoch.
    pub t: u64,
    pub width_s: u64,
    /// Seconds of the bucket that have elapsed (less than `width_s` for the open bucket): the
    /// divisor for rates.
    pub elapsed_s: f64,
    /// Requests of the judged service(s) in this bucket.
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Evaluations of this variant (any service), to see a kill drain.
    pub exposures: u64,
}

/// The dashboard's flag page data.
#[derive(Clone, Debug, Serialize, Default)]
pub struct History {
    pub flag: String,
    pub from: u64,
    pub to: u64,
    pub services: BTreeSet<String>,
    pub environments: BTreeSet<String>,
    pub regions: BTreeSet<String>,
    pub variants: BTreeMap<String, Vec<Point>>,
}

#[derive(Default)]
struct Acc {
    requests: u64,
    errors: u64,
    exposures: u64,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

/// Builds the history of `query.flag` in the selected slice.
pub fn history(aggregator: &Aggregator, query: &HistoryQuery, now: Timestamp) -> History {
    let since = now.minus(std::time::Duration::from_secs(query.seconds.unwrap_or(900).clamp(10, 6 * 3600)));
    let mut out = History { flag: query.flag.clone(), from: since.as_millis(), to: now.as_millis(), ..History::default() };
    let mut acc: BTreeMap<String, BTreeMap<(u64, u64), Acc>> = BTreeMap::new();
    let want = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    // Series switch resolution at different times; re-bin every point to the coarsest
    // resolution any series has at that time, so summed points never overlap.
    let (mut g1, mut g0) = (0u64, 0u64);
    for (_, window) in aggregator.series().filter(|(k, _)| k.flag.as_str() == query.flag) {
        let (l1, l0) = window.level_bounds();
        g1 = g1.max(l1.min(u64::MAX / 2));
        g0 = g0.max(l0.min(u64::MAX / 2));
    }
    let (w0, w1, w2) = (super::window::LEVELS[0].0, super::window::LEVELS[1].0, super::window::LEVELS[2].0);
    let bin = |start: u64| {
        let width = if start >= g0 {
            w0
        } else if start >= g1 {
            w1
        } else {
            w2
        };
        (start - start % width, width)
    };
    for (key, window) in aggregator.series().filter(|(k, _)| k.flag.as_str() == query.flag) {
        out.services.insert(key.dims.service.to_string());
        out.environments.insert(key.dims.environment.to_string());
        out.regions.insert(key.dims.region.to_string());
        if !want(&query.environment, &key.dims.environment) || !want(&query.region, &key.dims.region) {
            continue;
        }
        let judged = want(&query.service, &key.dims.service);
        let points = acc.entry(key.variant.to_string()).or_default();
        for (start, _, stats) in window.points_since(since) {
            let a = points.entry(bin(start)).or_default();
            // Exposures count in whichever service evaluated the flag.
            a.exposures += stats.exposures;
            if judged {
                a.requests += stats.requests;
                a.errors += stats.errors;
                if let Some(l) = &stats.latency {
                    l.add_into(a.latency.get_or_insert_with(latency::dense));
                }
            }
        }
    }
    for (variant, points) in acc {
        let series = points
            .into_iter()
            .map(|((t, width), a)| {
                let q = |q: f64| a.latency.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(q) as f64 / 1000.0);
                Point {
                    t,
                    width_s: width / 1000,
                    elapsed_s: (now.as_millis().saturating_sub(t).min(width) as f64 / 1000.0).max(1.0),
                    requests: a.requests,
                    errors: a.errors,
                    error_rate: (a.requests > 0).then(|| a.errors as f64 / a.requests as f64),
                    p50_ms: q(0.5),
                    p95_ms: q(0.95),
                    p99_ms: q(0.99),
                    exposures: a.exposures,
                }
            })
            .collect();
        out.variants.insert(variant, series);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::Sink;
    use crate::model::{Dims, Evaluation, FlagKey, Outcome, SpanId, TraceId, Variant};

    #[test]
    fn requests_of_the_judged_service_and_exposures_of_any() {
        let mut agg = Aggregator::new(100);
        let dims = |s: &str| Dims { service: s.into(), environment: "prod".into(), region: "eu".into() };
        let t = Timestamp(1_000_000);
        for (service, error) in [("payments", true), ("payments", false), ("checkout", false)] {
            let o = Outcome { trace: TraceId([1; 16]), span: SpanId([1; 8]), dims: dims(service), error, latency_us: 2000 };
            agg.observe(&FlagKey("f".into()), &Variant("on".into()), &o, None, t);
        }
        let e =
            Evaluation { trace: None, flag: FlagKey("f".into()), variant: Some(Variant("on".into())), error_type: None, dims: dims("checkout"), context: None };
        agg.exposure(&e, t);
        let h = history(
            &agg,
            &HistoryQuery { flag: "f".into(), service: Some("payments".into()), ..HistoryQuery::default() },
            t.plus(std::time::Duration::from_secs(1)),
        );
        assert_eq!(h.services.len(), 2);
        let points = &h.variants["on"];
        assert_eq!(points.len(), 1);
        assert_eq!((points[0].requests, points[0].errors, points[0].exposures), (2, 1, 1));
        assert_eq!(points[0].error_rate, Some(0.5));
        assert!((points[0].p50_ms.unwrap() - 2.0).abs() < 0.05);
    }

    #[test]
    fn points_of_series_with_different_resolutions_never_overlap() {
        let mut agg = Aggregator::new(100);
        let t0 = Timestamp(60_000_000);
        let o = |service: &str| Outcome {
            trace: TraceId([1; 16]),
            span: SpanId([1; 8]),
            dims: Dims { service: service.into(), environment: "p".into(), region: "r".into() },
            error: false,
            latency_us: 1000,
        };
        // `a` has data long ago and now; `b` only now: their windows switch resolution at different times.
        // `a` reports every 5 s for 4 min (its oldest minutes move to 1-min buckets); `b` once.
        for s in (0..240u64).step_by(5) {
            agg.observe(&FlagKey("f".into()), &Variant("on".into()), &o("a"), None, t0.plus(std::time::Duration::from_secs(s)));
        }
        agg.observe(&FlagKey("f".into()), &Variant("on".into()), &o("b"), None, t0.plus(std::time::Duration::from_secs(30)));
        let h = history(&agg, &HistoryQuery { flag: "f".into(), ..HistoryQuery::default() }, t0.plus(std::time::Duration::from_secs(5 * 60)));
        let points = &h.variants["on"];
        for pair in points.windows(2) {
            assert!(pair[0].t + pair[0].width_s * 1000 <= pair[1].t, "overlap: {pair:?}");
        }
        assert_eq!(points.iter().map(|p| p.requests).sum::<u64>(), 49);
    }
}

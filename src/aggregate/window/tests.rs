use super::*;
use crate::time::Timestamp;
use proptest::prelude::*;

fn brute(records: &[(u64, bool, u64)], from: u64) -> (u64, u64) {
    let in_range: Vec<_> = records.iter().filter(|r| r.0 >= from).collect();
    (in_range.len() as u64, in_range.iter().filter(|r| r.1).count() as u64)
}

#[test]
fn a_window_sees_what_was_recorded() {
    let mut w = Window::new();
    for i in 0..100u64 {
        w.record_request(Timestamp(1_000_000 + i * 100), i % 10 == 0, 1000 + i);
    }
    let s = w.summary_since(Timestamp(1_000_000));
    assert_eq!((s.requests, s.errors), (100, 10));
    assert_eq!(s.error_rate(), Some(0.1));
    let p50 = s.quantile_ms(0.5).unwrap();
    assert!((p50 - 1.05).abs() < 0.02, "{p50}");
}

#[test]
fn old_data_leaves_the_window() {
    let mut w = Window::new();
    w.record_request(Timestamp(0), true, 10);
    w.record_request(Timestamp(600_000), false, 10);
    let s = w.summary_since(Timestamp(600_000 - 60_000));
    assert_eq!((s.requests, s.errors), (1, 0));
    let all = w.summary_since(Timestamp(0));
    assert_eq!((all.requests, all.errors), (2, 1));
}

#[test]
fn closed_buckets_are_sparse_and_reach_coarse_levels() {
    let mut w = Window::new();
    for minute in 0..90u64 {
        w.record_request(Timestamp(minute * 60_000), minute % 2 == 0, 500);
    }
    // 90 min of data: older than 1 h lives only in level 2.
    let s = w.summary_since(Timestamp(0));
    assert_eq!((s.requests, s.errors), (90, 45));
    assert!(w.bytes() < 90 * 2_000, "closed buckets must be compact: {} bytes", w.bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the rotation, a query equals the records in the range it says it covered,
    /// and it covers at least what was asked.
    #[test]
    fn query_matches_brute_force(
        gaps in prop::collection::vec((0u64..400_000, any::<bool>()), 1..120),
        back in 0u64..20_000_000,
    ) {
        let mut w = Window::new();
        let mut records = Vec::new();
        let mut t = 1_000_000u64;
        for (gap, error) in gaps {
            t += gap;
            w.record_request(Timestamp(t), error, 100 + gap % 1000);
            records.push((t, error, gap));
        }
        let start = t.saturating_sub(back);
        let s = w.summary_since(Timestamp(start));
        let (n, e) = brute(&records, s.covered_from.as_millis());
        prop_assert_eq!((s.requests, s.errors), (n, e));
        prop_assert!(s.requests >= brute(&records, start).0, "covers at least what was asked");
        prop_assert_eq!(s.latency.len(), n);
    }

    /// Merging two windows advanced to the same time answers like the union of their records.
    #[test]
    fn merge_is_additive(
        a in prop::collection::vec((0u64..200_000, any::<bool>()), 1..60),
        b in prop::collection::vec((0u64..200_000, any::<bool>()), 1..60),
        back in 0u64..8_000_000,
    ) {
        let fill = |gaps: &[(u64, bool)], records: &mut Vec<(u64, bool, u64)>| {
            let mut w = Window::new();
            let mut t = 1_000_000u64;
            for &(gap, error) in gaps {
                t += gap;
                w.record_request(Timestamp(t), error, 100 + gap % 500);
                records.push((t, error, gap));
            }
            (w, t)
        };
        let mut union = Vec::new();
        let (mut wa, ta) = fill(&a, &mut union);
        let (mut wb, tb) = fill(&b, &mut union);
        let now = Timestamp(ta.max(tb));
        wa.advance(now);
        wb.advance(now);
        let mut merged = wa.clone();
        merged.merge(&wb);
        let all = merged.summary_since(Timestamp(0));
        prop_assert_eq!(all.requests, (a.len() + b.len()) as u64);
        prop_assert_eq!(all.errors, wa.summary_since(Timestamp(0)).errors + wb.summary_since(Timestamp(0)).errors);
        let start = Timestamp(now.as_millis().saturating_sub(back));
        let sm = merged.summary_since(start);
        let (n, e) = brute(&union, sm.covered_from.as_millis());
        prop_assert_eq!((sm.requests, sm.errors), (n, e));
        prop_assert_eq!(sm.latency.len(), n);
    }
}

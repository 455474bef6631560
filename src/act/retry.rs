//! Retry delays: exponential with equal jitter, capped; a provider's Retry-After is honoured
//! (capped too).

use std::time::Duration;

/// The delay before attempt `attempt + 1` after `attempt` failures (attempt ≥ 1).
/// `jitter` is a uniform sample in [0, 1).
pub fn delay(attempt: u32, initial: Duration, max: Duration, retry_after: Option<Duration>, jitter: f64) -> Duration {
    if let Some(after) = retry_after {
        return after.min(max);
    }
    let exp = initial.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX)).min(max);
    exp / 2 + exp.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// Parses `Retry-After` given in seconds (the HTTP-date form is treated as absent).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_exponential_jittered_and_capped() {
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(delay(1, i, m, None, 0.0), Duration::from_millis(250));
        assert_eq!(delay(1, i, m, None, 0.999_999).as_millis(), 499);
        assert_eq!(delay(2, i, m, None, 0.0), Duration::from_millis(500));
        assert_eq!(delay(4, i, m, None, 0.0), Duration::from_secs(2));
        assert_eq!(delay(30, i, m, None, 0.0), Duration::from_secs(15), "capped at max before jitter");
        assert!(delay(30, i, m, None, 0.99) <= m);
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(delay(1, i, m, Some(Duration::from_secs(7)), 0.5), Duration::from_secs(7));
        assert_eq!(delay(1, i, m, Some(Duration::from_secs(700)), 0.5), m);
        assert_eq!(parse_retry_after(Some(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
    }
}

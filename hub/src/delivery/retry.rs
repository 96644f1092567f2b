//! The retry policy: exponential backoff with full jitter, `Retry-After`, attempt budget.

use std::time::Duration;

use crate::config::RetryConfig;
use crate::store::{Handover, Millis, Outcome};

/// How one attempt ended, as the transport saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered {
        via: Handover,
    },
    /// Worth trying again (connect error, timeout, 408, 429, 5xx).
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refused the message itself (other 4xx); trying again cannot help.
    Permanent {
        error: String,
    },
}

/// The longest `Retry-After` Lotse honours; a receiver asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Backoff ceiling for the `n`-th attempt (1-based): `initial * 2^(n-1)`, capped at `max`.
pub fn backoff_cap(policy: &RetryConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    policy.initial_backoff.saturating_mul(1u32 << exp).min(policy.max_backoff)
}

/// Decides the settlement of an attempt. `budget_attempt` counts attempts since creation or the
/// last replay; `jitter` is a number in [0, 1] (random in production, fixed in tests).
pub fn decide(policy: &RetryConfig, budget_attempt: u32, result: AttemptResult, now: Millis, jitter: f64) -> Outcome {
    match result {
        AttemptResult::Delivered { via } => Outcome::Delivered { via },
        AttemptResult::Permanent { error } => Outcome::Dead { error: format!("{error} (permanent, not retried)") },
        AttemptResult::Transient { error, .. } if budget_attempt >= policy.max_attempts => {
            Outcome::Dead { error: format!("{error} (gave up after {budget_attempt} attempts)") }
        }
        AttemptResult::Transient { error, retry_after } => {
            // Full jitter (random between 0 and the cap) spreads retries of many deliveries that
            // failed together, so a receiver coming back is not hit by a synchronized storm.
            let cap = backoff_cap(policy, budget_attempt);
            let mut delay = cap.mul_f64(jitter.clamp(0.0, 1.0));
            if let Some(ra) = retry_after {
                delay = delay.max(ra.min(MAX_RETRY_AFTER));
            }
            Outcome::Retry { not_before: now + delay.as_millis() as u64, error }
        }
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    fn transient(retry_after: Option<Duration>) -> AttemptResult {
        AttemptResult::Transient { error: "HTTP 503".into(), retry_after }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let caps: Vec<u128> = (1..=6).map(|n| backoff_cap(&p, n).as_millis()).collect();
        assert_eq!(caps, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_cap(&p, 1000), Duration::from_secs(1), "huge attempt numbers do not overflow");
    }

    #[test]
    fn full_jitter_stays_between_zero_and_the_cap() {
        let p = policy();
        assert_eq!(
            decide(&p, 3, transient(None), 10_000, 0.0),
            Outcome::Retry { not_before: 10_000, error: "HTTP 503".into() }
        );
        assert_eq!(
            decide(&p, 3, transient(None), 10_000, 1.0),
            Outcome::Retry { not_before: 10_400, error: "HTTP 503".into() }
        );
        assert_eq!(
            decide(&p, 3, transient(None), 10_000, 0.5),
            Outcome::Retry { not_before: 10_200, error: "HTTP 503".into() }
        );
    }

    #[test]
    fn retry_after_is_honoured_but_bounded() {
        let p = policy();
        let o = decide(&p, 1, transient(Some(Duration::from_secs(30))), 0, 0.3);
        assert_eq!(o, Outcome::Retry { not_before: 30_000, error: "HTTP 503".into() });
        let o = decide(&p, 1, transient(Some(Duration::from_secs(1_000_000))), 0, 0.3);
        assert_eq!(o, Outcome::Retry { not_before: MAX_RETRY_AFTER.as_millis() as u64, error: "HTTP 503".into() });
    }

    #[test]
    fn budget_exhausted_or_permanent_means_dead() {
        let p = policy();
        assert!(
            matches!(decide(&p, 5, transient(None), 0, 0.5), Outcome::Dead { error } if error.contains("gave up after 5"))
        );
        assert!(matches!(decide(&p, 4, transient(None), 0, 0.5), Outcome::Retry { .. }));
        let perm = AttemptResult::Permanent { error: "HTTP 400".into() };
        assert!(matches!(decide(&p, 1, perm, 0, 0.5), Outcome::Dead { error } if error.contains("permanent")));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

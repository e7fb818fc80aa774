//! When to retry a failed provider call, and how long to wait first.
//!
//! Exponential backoff with jitter for transient failures, the provider's own word
//! (`Retry-After`, or a rate-limit reset time) when it gives one, and an overall deadline so a
//! reconcile never waits forever. Pure: the caller passes the attempt count, the time spent so
//! far, a random number for the jitter and, for header parsing, the current time.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::error::ProviderError;

/// Backoff settings for one kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each later one.
    pub base: Duration,
    /// Longest single wait we choose ourselves.
    pub max_delay: Duration,
    /// Give up rather than start a wait that would end after this much time in total.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(250),
            max_delay: Duration::from_secs(20),
            deadline: Duration::from_secs(120),
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Stop and report the error.
    GiveUp,
}

impl RetryPolicy {
    /// Decide after `attempts` attempts (at least 1) that took `elapsed` in all. `jitter` is a
    /// uniform random number in [0, 1); it spreads retries of many clients apart ("equal
    /// jitter": between half and all of the backoff).
    pub fn decide(
        &self,
        attempts: u32,
        error: &ProviderError,
        elapsed: Duration,
        jitter: f64,
    ) -> Decision {
        if !error.is_retryable() || attempts >= self.max_attempts {
            return Decision::GiveUp;
        }
        let delay = match error.retry_after {
            // The provider said when: believe it, even past our own max_delay.
            Some(d) => d,
            None => {
                let exp = self
                    .base
                    .saturating_mul(
                        1u32.checked_shl(attempts.saturating_sub(1))
                            .unwrap_or(u32::MAX),
                    )
                    .min(self.max_delay);
                exp.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
            }
        };
        if elapsed.saturating_add(delay) > self.deadline {
            Decision::GiveUp
        } else {
            Decision::RetryAfter(delay)
        }
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110, section 10.2.3).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// `X-RateLimit-Reset` as Vercel and GitHub send it: the Unix time (seconds) when the window
/// resets.
pub fn parse_reset_epoch(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let at = DateTime::from_timestamp(value.trim().parse::<i64>().ok()?, 0)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Provider;
    use crate::providers::ErrorKind;

    fn err(kind: ErrorKind, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::new(
            Provider::Neon,
            kind,
            "get project",
            Some(503),
            "busy",
            None,
            retry_after,
        )
    }

    #[test]
    fn backs_off_exponentially_within_bounds() {
        let p = RetryPolicy::default();
        let e = err(ErrorKind::Transient, None);
        let d1 = p.decide(1, &e, Duration::ZERO, 0.999);
        let d2 = p.decide(2, &e, Duration::ZERO, 0.999);
        let d3 = p.decide(3, &e, Duration::ZERO, 0.0);
        assert!(
            matches!(d1, Decision::RetryAfter(d) if d <= Duration::from_millis(250) && d >= Duration::from_millis(125))
        );
        assert!(
            matches!(d2, Decision::RetryAfter(d) if d <= Duration::from_millis(500) && d > Duration::from_millis(250))
        );
        assert_eq!(d3, Decision::RetryAfter(Duration::from_millis(500)));
        assert_eq!(p.decide(6, &e, Duration::ZERO, 0.5), Decision::GiveUp);
        let capped = p.decide(5, &e, Duration::ZERO, 0.999);
        assert!(matches!(capped, Decision::RetryAfter(d) if d <= p.max_delay));
    }

    #[test]
    fn honours_retry_after_and_the_deadline() {
        let p = RetryPolicy::default();
        let e = err(ErrorKind::RateLimited, Some(Duration::from_secs(30)));
        assert_eq!(
            p.decide(1, &e, Duration::ZERO, 0.3),
            Decision::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            p.decide(1, &e, Duration::from_secs(100), 0.3),
            Decision::GiveUp
        );
        assert_eq!(
            p.decide(1, &err(ErrorKind::Auth, None), Duration::ZERO, 0.3),
            Decision::GiveUp
        );
        assert_eq!(
            p.decide(1, &err(ErrorKind::Conflict, None), Duration::ZERO, 0.3),
            Decision::GiveUp
        );
    }

    #[test]
    fn parses_rate_limit_headers() {
        let now = DateTime::parse_from_rfc3339("2026-11-29T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 08:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_reset_epoch(&(now.timestamp() + 12).to_string(), now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(parse_reset_epoch("-x", now), None);
    }
}

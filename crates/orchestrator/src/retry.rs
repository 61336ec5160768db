//! How often, and how long apart, a unit of work is re-run after a transient failure.

use std::time::Duration;

/// Exponential backoff with jitter, applied when an attempt fails with a transient error
/// ([`Error::is_transient`](crate::Error::is_transient)).
///
/// The delay before attempt `n + 1` is `base_delay × multiplier^(n-1)`, capped at
/// `max_delay`, then reduced by a random fraction of up to `jitter` so that units of work
/// that collided once do not collide again in lockstep.
///
/// The default (5 attempts, 10 ms, ×2, at most 500 ms, jitter 0.5) suits row contention
/// inside one service: it rides out a burst of conflicts in well under a second and gives
/// up before a request times out.
///
/// ```
/// use std::time::Duration;
/// use keel_orchestrator::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(10)
///     .base_delay(Duration::from_millis(5))
///     .jitter(0.0);
/// assert_eq!(policy.delay_before(2), Duration::from_millis(5));
/// assert_eq!(policy.delay_before(3), Duration::from_millis(10));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            multiplier: 2.0,
            max_delay: Duration::from_millis(500),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// A policy that runs the unit of work once and never retries.
    pub fn never() -> Self {
        RetryPolicy::default().max_attempts(1)
    }

    /// Total number of attempts, the first included (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Delay before the second attempt.
    #[must_use]
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// Factor applied to the delay after each attempt (at least 1.0).
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Upper bound of any delay.
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Fraction (0.0 to 1.0) of each delay that is randomly taken off.
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The configured number of attempts.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether another attempt is allowed after `attempt` (1-based) failed.
    pub fn allows_another_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay, before jitter, to wait before attempt number `attempt` (1-based; the
    /// first attempt has no delay).
    pub fn delay_before(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let exponent = (attempt - 2).min(64) as i32;
        let secs = self.base_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = secs.min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(capped.max(0.0))
    }

    /// The delay before attempt `attempt` with jitter applied.
    pub fn jittered_delay_before(&self, attempt: u32) -> Duration {
        let delay = self.delay_before(attempt);
        let cut = self.jitter * fastrand::f64();
        delay.mul_f64(1.0 - cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_by_the_multiplier_and_stop_at_the_cap() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_millis(10))
            .multiplier(3.0)
            .max_delay(Duration::from_millis(200))
            .jitter(0.0);
        let ms: Vec<u128> = (1..=6).map(|n| p.delay_before(n).as_millis()).collect();
        assert_eq!(ms, vec![0, 10, 30, 90, 200, 200]);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_millis(100))
            .jitter(0.5);
        let mut seen_short = false;
        for _ in 0..200 {
            let d = p.jittered_delay_before(2);
            assert!(d <= Duration::from_millis(100) && d >= Duration::from_millis(50));
            seen_short |= d < Duration::from_millis(95);
        }
        assert!(seen_short, "jitter never applied");
    }

    #[test]
    fn attempts_are_counted_from_one() {
        let p = RetryPolicy::default().max_attempts(3);
        assert!(p.allows_another_after(1));
        assert!(p.allows_another_after(2));
        assert!(!p.allows_another_after(3));
        assert_eq!(RetryPolicy::never().attempts(), 1);
        assert_eq!(RetryPolicy::default().max_attempts(0).attempts(), 1);
    }

    #[test]
    fn nonsense_values_are_clamped() {
        let p = RetryPolicy::default()
            .multiplier(f64::NAN)
            .jitter(7.0)
            .base_delay(Duration::from_millis(10));
        assert_eq!(p.delay_before(5), Duration::from_millis(10));
        assert!(p.jittered_delay_before(2) <= Duration::from_millis(10));
    }
}

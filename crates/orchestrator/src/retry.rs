//! How often, and how long apart, a unit of work is re-run after a transient failure.

use std::time::Duration;

/// Exponential backoff with jitter, applied when an attempt fails with a transient error
/// ([`Error::is_transient`](crate::Error::is_transient)).
///
/// The delay before attempt `n + 1` is `base_delay × multiplier^(n-1)`, moved by a random
/// fraction of up to `jitter` either way (so that units of work that collided once do not
/// collide again in lockstep), then capped at `max_delay`. No delay is ever longer than
/// [`RetryPolicy::LONGEST_DELAY`], whatever the settings.
///
/// The default (5 attempts, 10 ms, ×2, at most 500 ms, jitter 0.5) suits row contention
/// inside one service: it rides out a burst of conflicts in well under a second and gives
/// up before a request times out.
///
/// Symfony Messenger's retry settings map one to one:
///
/// | Messenger (`retry_strategy`) | `RetryPolicy` |
/// |---|---|
/// | `max_retries: 3` (retries after the first attempt) | `.max_attempts(4)` |
/// | `delay: 1000` (ms, before the first retry) | `.base_delay(Duration::from_secs(1))` |
/// | `multiplier: 2` | `.multiplier(2.0)` |
/// | `max_delay: 0` (no cap) | `.max_delay(Duration::ZERO)` (no cap) |
/// | `jitter: 0.1` (±10 %) | `.jitter(0.1)` |
///
/// Messenger's default is therefore [`RetryPolicy::messenger_default`].
///
/// ```
/// # mod keel { pub use keel_orchestrator::RetryPolicy; }
/// use std::time::Duration;
/// use keel::RetryPolicy;
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
    /// `None`: no cap.
    max_delay: Option<Duration>,
    jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            multiplier: 2.0,
            max_delay: Some(Duration::from_millis(500)),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The longest delay any policy waits (about 100 years): "no cap" in practice, and
    /// within what every clock and database time type can add.
    pub const LONGEST_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// Symfony Messenger's default: 4 attempts (3 retries), 1 s, ×2, no cap, ±10 %.
    pub fn messenger_default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: None,
            jitter: 0.1,
        }
    }

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

    /// Delay before the second attempt. A base delay longer than the cap lifts the cap to
    /// it (the default cap, 500 ms, suits units of work, not a handler's "retry in an
    /// hour"); a [`max_delay`](Self::max_delay) set afterwards still applies.
    #[must_use]
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        if self.max_delay.is_some_and(|cap| cap < delay) {
            self.max_delay = Some(delay);
        }
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

    /// Upper bound of any delay; `Duration::ZERO` means no cap (as Messenger's
    /// `max_delay: 0`). To retry without waiting, set `base_delay(Duration::ZERO)`.
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = (!delay.is_zero()).then_some(delay);
        self
    }

    /// Fraction (0.0 to 1.0) by which each delay is randomly lengthened or shortened
    /// (0.1: ±10 %).
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
        self.capped(self.uncapped_secs(attempt))
    }

    /// The delay before attempt `attempt` with jitter applied (then capped).
    pub fn jittered_delay_before(&self, attempt: u32) -> Duration {
        let shift = self.jitter * (2.0 * fastrand::f64() - 1.0);
        self.capped(self.uncapped_secs(attempt) * (1.0 + shift))
    }

    /// `base_delay × multiplier^(attempt - 2)` in seconds, before jitter and cap (0 for the
    /// first attempt).
    fn uncapped_secs(&self, attempt: u32) -> f64 {
        if attempt <= 1 {
            return 0.0;
        }
        let exponent = (attempt - 2).min(1_000) as i32;
        self.base_delay.as_secs_f64() * self.multiplier.powi(exponent)
    }

    /// `secs` within `max_delay` and [`RetryPolicy::LONGEST_DELAY`] (never panics: an
    /// infinite or NaN product is the longest delay).
    fn capped(&self, secs: f64) -> Duration {
        let ceiling = self
            .max_delay
            .unwrap_or(Self::LONGEST_DELAY)
            .min(Self::LONGEST_DELAY)
            .as_secs_f64();
        let secs = if secs.is_nan() {
            ceiling
        } else {
            secs.clamp(0.0, ceiling)
        };
        Duration::from_secs_f64(secs)
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
    fn a_base_delay_longer_than_the_default_cap_is_waited() {
        // The default cap (500 ms) suits units of work; a handler's "retry in an hour"
        // must not be cut to it.
        let p = RetryPolicy::default()
            .base_delay(Duration::from_secs(3600))
            .jitter(0.0);
        assert_eq!(p.delay_before(2), Duration::from_secs(3600));
        assert_eq!(p.delay_before(3), Duration::from_secs(3600));
        // A cap set afterwards still applies.
        let capped = p.max_delay(Duration::from_secs(60));
        assert_eq!(capped.delay_before(2), Duration::from_secs(60));
    }

    #[test]
    fn jitter_moves_delays_both_ways_within_its_fraction() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::ZERO)
            .jitter(0.5);
        let (mut seen_short, mut seen_long) = (false, false);
        for _ in 0..500 {
            let d = p.jittered_delay_before(2);
            assert!(d <= Duration::from_millis(150) && d >= Duration::from_millis(50));
            seen_short |= d < Duration::from_millis(95);
            seen_long |= d > Duration::from_millis(105);
        }
        assert!(seen_short && seen_long, "jitter is one-sided");
    }

    #[test]
    fn jitter_never_passes_the_cap() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(100))
            .jitter(0.5);
        for _ in 0..200 {
            assert!(p.jittered_delay_before(2) <= Duration::from_millis(100));
        }
    }

    #[test]
    fn a_zero_cap_is_no_cap() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_secs(1))
            .multiplier(2.0)
            .max_delay(Duration::ZERO)
            .jitter(0.0);
        assert_eq!(p.delay_before(12), Duration::from_secs(1024));
    }

    #[test]
    fn huge_caps_and_attempt_numbers_never_panic() {
        for cap in [
            Duration::MAX,
            Duration::ZERO,
            Duration::from_secs(u64::MAX / 2),
        ] {
            let p = RetryPolicy::default()
                .max_attempts(u32::MAX)
                .base_delay(Duration::MAX)
                .multiplier(10.0)
                .max_delay(cap)
                .jitter(1.0);
            for attempt in [2, 66, 67, 1_000, u32::MAX] {
                assert!(p.delay_before(attempt) <= RetryPolicy::LONGEST_DELAY);
                assert!(p.jittered_delay_before(attempt) <= RetryPolicy::LONGEST_DELAY);
            }
        }
    }

    #[test]
    fn messengers_default_is_expressible() {
        let p = RetryPolicy::default()
            .max_attempts(4)
            .base_delay(Duration::from_secs(1))
            .multiplier(2.0)
            .max_delay(Duration::ZERO)
            .jitter(0.1);
        assert_eq!(p, RetryPolicy::messenger_default());
        let secs: Vec<u64> = (2..=4).map(|n| p.delay_before(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4]);
        assert!(!p.allows_another_after(4));
        for _ in 0..200 {
            let d = p.jittered_delay_before(2);
            assert!(d >= Duration::from_millis(900) && d <= Duration::from_millis(1100));
        }
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
        assert!(p.jittered_delay_before(2) <= Duration::from_millis(20));
    }
}

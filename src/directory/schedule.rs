//! Retry schedules as pure functions, so their bounds are tested without clocks.

use std::time::Duration;

/// First retry delay after a failed enrollment.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between enrollment attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The delay before retry number `attempt` (1-based): doubling from `base`, capped at `cap`,
/// with up to 20 % jitter subtracted (`jitter` in 0..=1) so a fleet restarted together does not
/// retry in lockstep.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let raw = base.saturating_mul(1u32 << exp.min(31)).min(cap);
    let cut = raw.mul_f64(0.2 * jitter.clamp(0.0, 1.0));
    raw.saturating_sub(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_then_caps() {
        let d = |n| backoff(n, BACKOFF_BASE, BACKOFF_CAP, 0.0);
        assert_eq!(d(1), Duration::from_secs(1));
        assert_eq!(d(2), Duration::from_secs(2));
        assert_eq!(d(5), Duration::from_secs(16));
        assert_eq!(d(6), BACKOFF_CAP);
        assert_eq!(d(1000), BACKOFF_CAP);
    }

    proptest! {
        #[test]
        fn always_within_bounds(attempt in 0u32..10_000, jitter in 0.0f64..=1.0) {
            let d = backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, jitter);
            prop_assert!(d <= BACKOFF_CAP);
            prop_assert!(d >= BACKOFF_BASE.mul_f64(0.8));
        }

        #[test]
        fn never_shrinks_without_jitter(attempt in 1u32..100) {
            let a = backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, 0.0);
            let b = backoff(attempt + 1, BACKOFF_BASE, BACKOFF_CAP, 0.0);
            prop_assert!(b >= a);
        }
    }
}

//! The restart backoff, as a pure function of the crash streak. The supervisor never gives up:
//! past the budget it waits longer between tries (up to [`BACKOFF_LONG_CAP`]) and keeps trying,
//! saying so (Erlang/OTP's restart intensity, then escalation, never a silent stop).

use std::time::{Duration, Instant};

/// Up to this many crashes in a row restart quickly (systemd's default is 5 starts per 10 s).
pub const MAX_CRASHES: usize = 5;
/// A relay that runs this long after its restart ends the streak.
pub const WINDOW: Duration = Duration::from_secs(60);
/// First restart delay; doubles per crash in the streak.
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest quick restart delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// The first delay past the budget; doubles per crash after it.
pub const BACKOFF_LONG: Duration = Duration::from_secs(30);
/// The longest delay between two tries.
pub const BACKOFF_LONG_CAP: Duration = Duration::from_secs(600);

/// The crash streak.
#[derive(Debug, Default)]
pub struct Budget {
    streak: usize,
    /// When the last restart was due.
    last_restart: Option<Instant>,
}

/// What to do after a crash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget: restart after this delay.
    RestartAfter(Duration),
    /// Past the budget: restart after this (long) delay, and say so.
    BackOff(Duration),
}

impl Verdict {
    /// The delay.
    #[must_use]
    pub fn delay(&self) -> Duration {
        match self {
            Self::RestartAfter(d) | Self::BackOff(d) => *d,
        }
    }
}

impl Budget {
    /// Records a crash at `now` and decides. A relay that ran [`WINDOW`] since its last
    /// restart starts a new streak.
    pub fn crash(&mut self, now: Instant) -> Verdict {
        if self
            .last_restart
            .is_none_or(|t| now.saturating_duration_since(t) >= WINDOW)
        {
            self.streak = 0;
        }
        self.streak += 1;
        let v = verdict(self.streak);
        self.last_restart = Some(now + v.delay());
        v
    }

    /// The relay served a whole [`WINDOW`]: the streak ends.
    pub fn reset(&mut self) {
        self.streak = 0;
        self.last_restart = None;
    }

    /// Crashes in a row so far.
    #[must_use]
    pub fn streak(&self) -> usize {
        self.streak
    }
}

/// The decision for the `streak`-th crash in a row.
#[must_use]
pub fn verdict(streak: usize) -> Verdict {
    let doubling = |base: Duration, n: usize, cap: Duration| {
        let exp = u32::try_from(n).unwrap_or(u32::MAX).min(16);
        base.saturating_mul(1 << exp).min(cap)
    };
    if streak <= MAX_CRASHES {
        Verdict::RestartAfter(doubling(
            BACKOFF_BASE,
            streak.saturating_sub(1),
            BACKOFF_CAP,
        ))
    } else {
        Verdict::BackOff(doubling(
            BACKOFF_LONG,
            streak - MAX_CRASHES - 1,
            BACKOFF_LONG_CAP,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_backs_off_long_and_never_gives_up() {
        assert_eq!(verdict(1), Verdict::RestartAfter(BACKOFF_BASE));
        assert_eq!(verdict(2), Verdict::RestartAfter(BACKOFF_BASE * 2));
        for n in 1..=MAX_CRASHES {
            assert!(matches!(verdict(n), Verdict::RestartAfter(d) if d <= BACKOFF_CAP));
        }
        assert_eq!(verdict(MAX_CRASHES + 1), Verdict::BackOff(BACKOFF_LONG));
        assert_eq!(verdict(MAX_CRASHES + 2), Verdict::BackOff(BACKOFF_LONG * 2));
        assert_eq!(verdict(1000), Verdict::BackOff(BACKOFF_LONG_CAP));
    }

    #[test]
    fn a_relay_that_runs_a_while_ends_the_streak() {
        let mut b = Budget::default();
        let mut t = Instant::now();
        for _ in 0..MAX_CRASHES {
            let v = b.crash(t);
            assert!(matches!(v, Verdict::RestartAfter(_)));
            t += v.delay() + Duration::from_millis(10);
        }
        assert_eq!(b.crash(t), Verdict::BackOff(BACKOFF_LONG));
        assert_eq!(b.streak(), MAX_CRASHES + 1);
        // It then serves past the window after its restart: the next crash starts over.
        t += BACKOFF_LONG + WINDOW;
        assert_eq!(b.crash(t), Verdict::RestartAfter(BACKOFF_BASE));
        assert_eq!(b.streak(), 1);
    }
}

//! The crash budget and restart backoff, as pure functions of the crash history.

use std::time::{Duration, Instant};

/// At most this many crashes inside [`WINDOW`] (systemd's default is 5 starts per 10 s; a relay
/// that needs seconds to start gets a wider window).
pub const MAX_CRASHES: usize = 5;
/// The window the budget counts crashes in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// First restart delay; doubles per crash in the window.
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest restart delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Crash history.
#[derive(Debug, Default)]
pub struct Budget {
    crashes: Vec<Instant>,
}

/// What to do after a crash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Restart after this delay.
    RestartAfter(Duration),
    /// The budget is spent: give up.
    GiveUp,
}

impl Budget {
    /// Records a crash at `now` and decides.
    pub fn crash(&mut self, now: Instant) -> Verdict {
        self.crashes.retain(|t| now.duration_since(*t) < WINDOW);
        self.crashes.push(now);
        verdict(self.crashes.len())
    }
}

/// The decision for `recent` crashes inside the window.
pub fn verdict(recent: usize) -> Verdict {
    if recent > MAX_CRASHES {
        return Verdict::GiveUp;
    }
    let exp = u32::try_from(recent.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    Verdict::RestartAfter(BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_the_budget_runs_out() {
        assert_eq!(verdict(1), Verdict::RestartAfter(BACKOFF_BASE));
        assert_eq!(verdict(2), Verdict::RestartAfter(BACKOFF_BASE * 2));
        assert_eq!(verdict(MAX_CRASHES + 1), Verdict::GiveUp);
        for n in 1..=MAX_CRASHES {
            assert!(matches!(verdict(n), Verdict::RestartAfter(d) if d <= BACKOFF_CAP));
        }
    }

    #[test]
    fn old_crashes_leave_the_window() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        for i in 0..MAX_CRASHES {
            assert!(matches!(
                b.crash(t0 + Duration::from_millis(i as u64)),
                Verdict::RestartAfter(_)
            ));
        }
        assert_eq!(b.crash(t0 + Duration::from_secs(1)), Verdict::GiveUp);
        assert!(matches!(
            b.crash(t0 + WINDOW + Duration::from_secs(2)),
            Verdict::RestartAfter(_)
        ));
    }
}

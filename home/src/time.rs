//! Times as the home's files keep them: milliseconds since the Unix epoch (the journal, the state
//! the relay writes for `status`, the rollout service's state).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` in milliseconds since the epoch (0 before it, `u64::MAX` far beyond).
#[must_use]
pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, in milliseconds since the epoch.
#[must_use]
pub fn now_ms() -> u64 {
    ms(SystemTime::now())
}

/// The instant `ms` milliseconds after the epoch.
#[must_use]
pub fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

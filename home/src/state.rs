//! `upgrade-state.json`: the highest version ever committed on this host, `{"highest_committed":
//! "V"}`. It only rises, and only after a commit (never from an announcement): the floor below
//! which no release installs automatically (rollback protection).

use std::path::Path;

use semver::Version;

use crate::files::STATE;

/// The highest committed version, if any (a missing or unreadable file: none).
#[must_use]
pub fn highest_committed(home: &Path) -> Option<Version> {
    let text = std::fs::read_to_string(home.join(STATE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Version::parse(v.get("highest_committed")?.as_str()?).ok()
}

/// Records `version` as committed: the highest committed version rises to it if it is higher.
///
/// # Errors
/// An I/O error writing the file.
pub fn record_committed(home: &Path, version: &Version) -> std::io::Result<()> {
    if highest_committed(home).is_some_and(|h| *version <= h) {
        return Ok(());
    }
    let state = serde_json::json!({"highest_committed": version.to_string()}).to_string();
    crate::durable::write_atomic(&home.join(STATE), state.as_bytes(), 0o644)
}

/// What the relay last learnt from the release server ([`crate::files::RELEASE_INFO`]): for
/// `status`, and for freeze detection (the age of the information).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseInfo {
    /// When channel information or a rollout document was last fetched and valid (ms since
    /// the epoch; 0: never).
    pub fresh_ms: u64,
    /// Since when the relay has been trying (ms since the epoch): the age when never fresh.
    pub since_ms: u64,
    /// Past this age (seconds), the information is stale.
    pub stale_after_secs: u64,
    /// What the last rollout document said.
    pub rollout: Option<String>,
    /// A version held back by its rollout.
    pub held_back: Option<String>,
}

impl ReleaseInfo {
    /// Reads the file of `home` (`None`: absent or unreadable).
    #[must_use]
    pub fn load(home: &std::path::Path) -> Option<Self> {
        let bytes =
            crate::durable::read_regular(&home.join(crate::files::RELEASE_INFO), 64 * 1024, None)
                .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes it to `home`.
    ///
    /// # Errors
    ///
    /// The write's.
    pub fn save(&self, home: &std::path::Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::durable::write_atomic(&home.join(crate::files::RELEASE_INFO), &bytes, 0o644)
    }

    /// The age in seconds at `now_ms`, and whether it is stale.
    #[must_use]
    pub fn age(&self, now_ms: u64) -> (u64, bool) {
        let from = if self.fresh_ms > 0 {
            self.fresh_ms
        } else {
            self.since_ms
        };
        let age = now_ms.saturating_sub(from) / 1000;
        (age, age > self.stale_after_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_only_rises() {
        let home = tempfile::tempdir().unwrap();
        assert_eq!(highest_committed(home.path()), None);
        record_committed(home.path(), &Version::new(0, 9, 0)).unwrap();
        record_committed(home.path(), &Version::new(0, 8, 0)).unwrap();
        assert_eq!(highest_committed(home.path()), Some(Version::new(0, 9, 0)));
        record_committed(home.path(), &Version::new(1, 0, 0)).unwrap();
        assert_eq!(highest_committed(home.path()), Some(Version::new(1, 0, 0)));
    }
}

//! `upgrade-state.json`: the highest version ever committed on this host, `{"highest_committed":
//! "V"}`. It only rises, and only after a commit (never from an announcement): the floor below
//! which no release installs automatically (rollback protection).

use std::path::Path;

use semver::Version;

use crate::files::STATE;

/// The highest committed version: `None` when nothing was committed here (no file).
///
/// # Errors
/// The file exists but cannot be read or holds no version: the floor is unknown, and a caller
/// that protects against rollbacks must refuse rather than take it for "none" (which would let
/// any older signed release in). The text names the file and says how to repair it.
pub fn highest_committed(home: &Path) -> Result<Option<Version>, String> {
    let path = home.join(STATE);
    let unusable = |why: String| {
        format!(
            "{}: {why}; the highest committed version (the floor for upgrades) is unknown, so no \
             release is accepted until the file is repaired (write {{\"highest_committed\": \"<the \
             highest version this relay ran>\"}}) or removed",
            path.display()
        )
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unusable(e.to_string())),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| unusable(e.to_string()))?;
    let Some(object) = v.as_object() else {
        return Err(unusable("not a JSON object".to_owned()));
    };
    // `{}`: nothing committed yet (privilege separation creates the file so).
    let Some(field) = object.get("highest_committed") else {
        return Ok(None);
    };
    let field = field
        .as_str()
        .ok_or_else(|| unusable(format!("\"highest_committed\" is {field}, not a version")))?;
    Version::parse(field)
        .map(Some)
        .map_err(|e| unusable(format!("{field:?}: {e}")))
}

/// Records `version` as committed: the highest committed version rises to it if it is higher.
/// An unreadable file is replaced (a commit is the one moment the floor is known again: what
/// runs now).
///
/// # Errors
/// An I/O error writing the file.
pub fn record_committed(home: &Path, version: &Version) -> std::io::Result<()> {
    if highest_committed(home).is_ok_and(|h| h.is_some_and(|h| *version <= h)) {
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
        assert_eq!(highest_committed(home.path()), Ok(None));
        record_committed(home.path(), &Version::new(0, 9, 0)).unwrap();
        record_committed(home.path(), &Version::new(0, 8, 0)).unwrap();
        assert_eq!(
            highest_committed(home.path()),
            Ok(Some(Version::new(0, 9, 0)))
        );
        record_committed(home.path(), &Version::new(1, 0, 0)).unwrap();
        assert_eq!(
            highest_committed(home.path()),
            Ok(Some(Version::new(1, 0, 0)))
        );
    }

    /// A file that exists but cannot be read as a floor is an unknown one, never "none" (a caller
    /// would otherwise let any older signed release in); `{}` is "none". A commit writes it.
    #[test]
    fn an_unreadable_floor_is_an_error_until_a_commit_rewrites_it() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(STATE), "{}").unwrap();
        assert_eq!(
            highest_committed(home.path()),
            Ok(None),
            "privsep's empty state"
        );
        for bad in [
            "",
            "{",
            "[]",
            r#"{"highest_committed": 7}"#,
            r#"{"highest_committed": "x"}"#,
        ] {
            std::fs::write(home.path().join(STATE), bad).unwrap();
            let e = highest_committed(home.path()).unwrap_err();
            assert!(
                e.contains("upgrade-state.json") && e.contains("repaired"),
                "{bad:?}: {e}"
            );
        }
        record_committed(home.path(), &Version::new(0, 9, 0)).unwrap();
        assert_eq!(
            highest_committed(home.path()),
            Ok(Some(Version::new(0, 9, 0)))
        );
    }
}

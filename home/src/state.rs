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

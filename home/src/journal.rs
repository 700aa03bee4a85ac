//! The supervisor's upgrade journal, `upgrade-journal.jsonl`: one JSON object per line
//! (`{"time_ms":…,"version":"…","step":"…","detail":"…"}`), appended and fsync'd at every step
//! of a change, read back by a supervisor that restarts (recovery), by `status` and by the demo.
//! The steps are [`Step`]; a step this build does not know (written by a newer supervisor)
//! reads as [`Step::Other`], which recovery leaves alone.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::files::JOURNAL;

/// One step of an upgrade or a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The staged release verified (signature, digest, version); detail `from <version>`.
    Verified,
    /// The staged release did not verify; it was removed and skipped.
    VerifyFailed,
    /// The new binary migrated the home directory.
    Migrated,
    /// The new generation serves; the old one drains.
    Swapped,
    /// The health window passed; the renames are under way.
    Committing,
    /// The new version is installed.
    Committed,
    /// The renames of a commit failed.
    CommitFailed,
    /// The new version failed and was rolled back (and skipped).
    RolledBack,
    /// Undoing a failed version's migrations failed.
    MigrateDownFailed,
    /// A restarted supervisor undid an unfinished change.
    Recovered,
    /// The operator's rollback started; detail `from <version>`.
    RollbackStarted,
    /// The current binary migrated the home down for the previous one.
    RollbackMigrated,
    /// The previous version's generation serves.
    RollbackSwapped,
    /// The rollback's renames are under way.
    RollbackCommitting,
    /// The previous version is installed again.
    RollbackCommitted,
    /// The rollback failed; the current version serves on.
    RollbackFailed,
    /// The release's own supervisor, verified, started to take over on trial; detail
    /// `from <version>`.
    SupervisorTrial,
    /// The new supervisor serves and is installed as `wireleap-relay-supervisor`.
    SupervisorCommitted,
    /// The new supervisor failed its trial: the old one runs again, and the version is skipped.
    SupervisorRolledBack,
    /// A step this build does not know.
    #[serde(other)]
    Other,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub time_ms: u64,
    /// The version the step is about.
    pub version: String,
    /// The step.
    pub step: Step,
    /// Free text: `from <version>` on the first step of a change, why on a failure.
    #[serde(default)]
    pub detail: String,
}

// === impl Step ===

impl Step {
    /// The step's name in the journal (and in the supervisor's failpoints).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::VerifyFailed => "verify-failed",
            Self::Migrated => "migrated",
            Self::Swapped => "swapped",
            Self::Committing => "committing",
            Self::Committed => "committed",
            Self::CommitFailed => "commit-failed",
            Self::RolledBack => "rolled-back",
            Self::MigrateDownFailed => "migrate-down-failed",
            Self::Recovered => "recovered",
            Self::RollbackStarted => "rollback-started",
            Self::RollbackMigrated => "rollback-migrated",
            Self::RollbackSwapped => "rollback-swapped",
            Self::RollbackCommitting => "rollback-committing",
            Self::RollbackCommitted => "rollback-committed",
            Self::RollbackFailed => "rollback-failed",
            Self::SupervisorTrial => "supervisor-trial",
            Self::SupervisorCommitted => "supervisor-committed",
            Self::SupervisorRolledBack => "supervisor-rolled-back",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === the file ===

/// Appends one step for `version` to the journal in `home` and fsyncs it.
///
/// # Errors
/// An I/O error.
pub fn append(home: &Path, version: &str, step: Step, detail: &str) -> std::io::Result<()> {
    let entry = Entry {
        time_ms: crate::time::now_ms(),
        version: version.to_owned(),
        step,
        detail: detail.to_owned(),
    };
    let line = serde_json::to_string(&entry).map_err(std::io::Error::other)?;
    let path = home.join(JOURNAL);
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
    {
        Ok(file) => {
            // Readable by the relay's user (its `status`) whatever the creator's umask.
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            file
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)?,
        Err(e) => return Err(e),
    };
    // A line cut short by a crash or a full disk gets its end first, so that it does not take
    // this one down with it; then the whole line in one write.
    let len = file.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, len - 1)?;
    }
    let mut text = String::with_capacity(line.len() + 2);
    if last[0] != b'\n' {
        text.push('\n');
    }
    text.push_str(&line);
    text.push('\n');
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Every readable line of the journal in `home`, oldest first (a missing journal is empty; an
/// unreadable line, e.g. one cut by a crash, is left out).
#[must_use]
pub fn read(home: &Path) -> Vec<Entry> {
    std::fs::read_to_string(home.join(JOURNAL))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The journal's last readable line.
#[must_use]
pub fn last(home: &Path) -> Option<Entry> {
    read(home).pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_by_their_names_and_unknown_ones_read_as_other() {
        let home = tempfile::tempdir().unwrap();
        append(home.path(), "0.8.0", Step::Verified, "from 0.7.0").unwrap();
        append(home.path(), "0.8.0", Step::RollbackCommitting, "").unwrap();
        let text = std::fs::read_to_string(home.path().join(JOURNAL)).unwrap();
        assert!(
            text.contains("\"step\":\"verified\"")
                && text.contains("\"step\":\"rollback-committing\"")
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(home.path().join(JOURNAL))
            .unwrap()
            .write_all(b"{\"version\":\"0.9.0\",\"step\":\"from-the-future\"}\n{\"cut")
            .unwrap();
        let all = read(home.path());
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[0].step, Step::Verified);
        assert_eq!(all[0].detail, "from 0.7.0");
        assert_eq!(all[2].step, Step::Other);
        assert_eq!(last(home.path()).unwrap().version, "0.9.0");
        // The next step after the cut line is read: the cut one alone is lost.
        append(home.path(), "0.9.1", Step::Committing, "").unwrap();
        let after = last(home.path()).unwrap();
        assert_eq!(
            (after.version.as_str(), after.step),
            ("0.9.1", Step::Committing)
        );
        assert_eq!(read(home.path()).len(), 4);
        for step in [
            Step::VerifyFailed,
            Step::MigrateDownFailed,
            Step::RollbackSwapped,
        ] {
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(json, format!("\"{step}\""));
        }
    }
}

//! The upgrade steps the supervisor takes for a staged release (DESIGN.md steps 3-4), each
//! journaled with fsync:
//!
//! 1. verify again, offline, with the trusted keys: the statement `wireleap-relay.next.hash`
//!    and the binary `wireleap-relay.next` (it trusts nothing the relay hands it);
//! 2. start the new binary as a generation on the inherited listener (the handover of `run`);
//! 3. watch a health window;
//! 4. commit: `wireleap-relay` → `wireleap-relay.prev`, `wireleap-relay.next` → `wireleap-relay`,
//!    durable renames, and raise the highest committed version; or roll back: the old binary
//!    serves, the staged files go, the version joins `.skip-upgrade-version`.
//!
//! Migrations between the two versions (the `relay-migrations` crate) and crash recovery from
//! the journal come with the rest of issue #7.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use relay_release::{Expected, Product, TrustedKeys, parse_version};
use semver::Version;

/// The staged binary.
pub const NEXT: &str = "wireleap-relay.next";
/// The staged binary's signed statement.
pub const NEXT_STATEMENT: &str = "wireleap-relay.next.hash";
/// The previous binary, kept for `rollback`.
pub const PREV: &str = "wireleap-relay.prev";
/// The running binary.
pub const CURRENT: &str = "wireleap-relay";
/// Extra trusted release keys for a private network: every `*.pub` file in this folder.
pub const TRUSTED_KEYS_DIR: &str = "trusted-keys";
/// The journal of upgrade steps, one JSON object per line.
pub const JOURNAL: &str = "upgrade-journal.jsonl";
/// The highest committed version.
pub const STATE: &str = "upgrade-state.json";
/// Versions automatic upgrades skip.
pub const SKIP: &str = ".skip-upgrade-version";

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested version is not a plain semver.
    #[error("bad version {0:?}")]
    Version(String),
    /// The staged release did not verify.
    #[error("the staged release did not verify: {0}")]
    Verify(#[from] relay_release::Error),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Appends one step to the journal and fsyncs it.
pub fn journal(home: &Path, version: &str, step: &str, detail: &str) {
    let line = serde_json::json!({
        "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "version": version, "step": step, "detail": detail,
    });
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(home.join(JOURNAL))
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_all()
        });
    if let Err(e) = result {
        crate::run::log(&format!("could not write the upgrade journal: {e}"));
    }
}

/// The highest committed version, if any.
pub fn highest_committed(home: &Path) -> Option<Version> {
    let text = std::fs::read_to_string(home.join(STATE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Version::parse(v.get("highest_committed")?.as_str()?).ok()
}

/// The trusted keys: the embedded project key plus `<home>/trusted-keys/*.pub`.
///
/// # Errors
/// [`Error::Verify`] when a key file is unreadable or not a key.
pub fn trusted_keys(home: &Path) -> Result<TrustedKeys, Error> {
    let mut keys = TrustedKeys::project()?;
    if let Ok(dir) = std::fs::read_dir(home.join(TRUSTED_KEYS_DIR)) {
        let mut files: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        files.sort();
        for f in files {
            keys = keys.with_file(&f)?;
        }
    }
    Ok(keys)
}

/// Step 1: verifies the staged release for `version` above `running` (and the highest committed).
///
/// # Errors
/// [`Error::Version`] or [`Error::Verify`] with the failing step.
pub fn verify_staged(home: &Path, version: &str, running: &Version) -> Result<Version, Error> {
    let version = parse_version(version).map_err(|_| Error::Version(version.to_owned()))?;
    let keys = trusted_keys(home)?;
    let expected = Expected::for_host(
        Product::relay(),
        version.clone(),
        running.clone(),
        highest_committed(home),
    )?;
    relay_release::verify_release_files(
        &home.join(NEXT_STATEMENT),
        &home.join(NEXT),
        &keys,
        &expected,
    )?;
    Ok(version)
}

/// Step 4, success: the durable renames and the new highest committed version.
///
/// # Errors
/// [`Error::Io`]; the journal says how far it got.
pub fn commit(home: &Path, version: &Version) -> Result<(), Error> {
    let (current, prev, next) = (home.join(CURRENT), home.join(PREV), home.join(NEXT));
    if current.exists() {
        std::fs::rename(&current, &prev)
            .map_err(io("keeping the old binary as wireleap-relay.prev"))?;
    }
    std::fs::rename(&next, &current).map_err(io("putting the new binary in place"))?;
    let _ = std::fs::rename(home.join(NEXT_STATEMENT), home.join("wireleap-relay.hash"));
    let state = serde_json::json!({"highest_committed": version.to_string()}).to_string();
    relay_migrations::write_atomic(&home.join(STATE), state.as_bytes(), 0o644)
        .map_err(io("recording the committed version"))?;
    sync_dir(home);
    Ok(())
}

/// Step 4, failure: the staged files go (no `.next` is left behind, spec §10 #8) and the version
/// joins the skip list.
pub fn roll_back(home: &Path, version: &str) {
    let _ = std::fs::remove_file(home.join(NEXT));
    let _ = std::fs::remove_file(home.join(NEXT_STATEMENT));
    skip(home, version);
    sync_dir(home);
}

/// Adds `version` to `.skip-upgrade-version` (one per line, spec §10 #15), once.
pub fn skip(home: &Path, version: &str) {
    let path = home.join(SKIP);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    if text.lines().any(|l| l.trim().trim_matches('"') == version) {
        return;
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(version);
    new.push('\n');
    if let Err(e) = relay_migrations::write_atomic(&path, new.as_bytes(), 0o644) {
        crate::run::log(&format!("could not write {SKIP}: {e}"));
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

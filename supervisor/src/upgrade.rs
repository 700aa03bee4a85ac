//! The upgrade steps the supervisor takes for a staged release (DESIGN.md steps 3-4), each
//! journaled with fsync:
//!
//! 1. verify again, offline, with the home's release trust (the same root and files the relay
//!    uses, `relay_release::trust`): the statement `wireleap-relay.next.hash`
//!    and the binary `wireleap-relay.next` (it trusts nothing the relay hands it);
//! 2. start the new binary as a generation on the inherited listener (the handover of `run`);
//! 3. watch a health window;
//! 4. commit: `wireleap-relay` → `wireleap-relay.prev`, `wireleap-relay.next` → `wireleap-relay`,
//!    durable renames, and raise the highest committed version; or roll back: the old binary
//!    serves, the staged files go, the version joins `.skip-upgrade-version`.
//!
//! Between steps 1 and 2 the new binary migrates the home directory (`migrate FROM`: its own
//! migrations, since only it knows them; config changes go to `config.json.next`, which the new
//! generation reads and the old one ignores). A rollback undoes them with `migrate --down`.

use std::path::Path;

use relay_release::{Expected, Product, Trust, TrustedKeys, parse_version};
use semver::Version;
use wireleap_home::journal::Step;
use wireleap_home::skip::SkipList;

pub use wireleap_home::files::{
    CONFIG, CONFIG_NEXT, CONFIG_PREV, CURRENT, CURRENT_STATEMENT, JOURNAL, NEXT, NEXT_STATEMENT,
    PREV, PREV_STATEMENT, SKIP_VERSION as SKIP, STATE,
};
/// How long one `migrate` run may take.
pub const MIGRATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Upgrades and rollbacks replace `<home>/wireleap-relay`. When the relay runs from another file
/// (`--relay`, or `WIRELEAP_RELAY_HOME` away from the binary), a commit would never reach the
/// binary that runs, so both are refused, with this reason. A generation running as
/// `wireleap-relay.next` or `.prev` (until a commit renames it) is in its home.
///
/// # Errors
/// The reason, naming both files.
pub fn runs_from_home(home: &Path, relay: &Path) -> Result<(), String> {
    let installed = home.join(CURRENT);
    let relay_dir = std::fs::canonicalize(relay)
        .ok()
        .and_then(|p| Some((p.parent()?.to_path_buf(), p.file_name()?.to_owned())));
    match (relay_dir, std::fs::canonicalize(home)) {
        (Some((dir, name)), Ok(home))
            if dir == home
                && [CURRENT, NEXT, PREV]
                    .map(std::ffi::OsStr::new)
                    .contains(&name.as_os_str()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "upgrades replace {}, but the relay runs from {}: put the relay binary in its home directory (and unset WIRELEAP_RELAY_HOME or --relay) to upgrade",
            installed.display(),
            relay.display()
        )),
    }
}

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

/// Appends one step to the journal and fsyncs it (a failure is logged: the change goes on).
pub fn journal(home: &Path, version: &str, step: Step, detail: &str) {
    if let Err(e) = wireleap_home::journal::append(home, version, step, detail) {
        crate::run::log(&format!("could not write the upgrade journal: {e}"));
    }
}

/// The highest committed version, if any.
pub fn highest_committed(home: &Path) -> Option<Version> {
    let text = std::fs::read_to_string(home.join(STATE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Version::parse(v.get("highest_committed")?.as_str()?).ok()
}

/// What a release of `version` is checked against on this host, by the Upgrader, the `upgrade`
/// command and step 1 alike: the release keys of the home's trust (its root, or its key files;
/// [`relay_release::trust`]), and the expectations for the host's target with the floor (above
/// `running` and the highest committed version).
///
/// # Errors
/// The trust's errors (unsafe trust files, a root that does not verify, an expired root); an
/// unusable host target.
pub fn release_check(
    home: &Path,
    version: &Version,
    running: &Version,
) -> Result<(TrustedKeys, Expected), relay_release::Error> {
    release_check_with(&Trust::load(home)?, home, version, running)
}

/// [`release_check`] with a trust already loaded (the Upgrader follows root rotations first).
///
/// # Errors
/// As [`release_check`].
pub fn release_check_with(
    trust: &Trust,
    home: &Path,
    version: &Version,
    running: &Version,
) -> Result<(TrustedKeys, Expected), relay_release::Error> {
    let expected = Expected::for_host(
        Product::relay(),
        version.clone(),
        running.clone(),
        highest_committed(home),
    )?;
    let keys = trust.release_keys(expected.expiry)?;
    Ok((keys, expected))
}

/// Step 1: verifies the staged release for `version` above `running` (and the highest committed).
///
/// # Errors
/// [`Error::Version`] or [`Error::Verify`] with the failing step.
pub fn verify_staged(home: &Path, version: &str, running: &Version) -> Result<Version, Error> {
    let version = parse_version(version).map_err(|_| Error::Version(version.to_owned()))?;
    let (keys, expected) = release_check(home, &version, running)?;
    relay_release::verify_release_files(
        &home.join(NEXT_STATEMENT),
        &home.join(NEXT),
        &keys,
        &expected,
    )?;
    Ok(version)
}

/// Runs `<binary> migrate <version>` (up from `version`) or `migrate --down <version>` in
/// `home`, bounded by [`MIGRATE_TIMEOUT`].
///
/// # Errors
/// What the command printed on stderr when it fails, exits non-zero or times out.
pub fn migrate(home: &Path, binary: &Path, version: &str, down: bool) -> Result<(), String> {
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("migrate");
    if down {
        cmd.arg("--down");
    }
    cmd.arg(version)
        .current_dir(home)
        .env(crate::run::HOME_ENV, home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not run {} migrate: {e}", binary.display()))?;
    let deadline = std::time::Instant::now() + MIGRATE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("migrate did not finish in {MIGRATE_TIMEOUT:?}"));
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut pipe, 4096), &mut err);
    }
    Err(format!("migrate exited ({status}): {}", err.trim()))
}

/// Step 4, success: the durable renames and the new highest committed version. Idempotent, so
/// a supervisor that died halfway finishes it on restart.
///
/// # Errors
/// [`Error::Io`]; the journal says how far it got.
pub fn commit(home: &Path, version: &Version) -> Result<(), Error> {
    let (current, prev, next) = (home.join(CURRENT), home.join(PREV), home.join(NEXT));
    if next.exists() {
        if current.exists() {
            std::fs::rename(&current, &prev)
                .map_err(io("keeping the old binary as wireleap-relay.prev"))?;
            let _ = std::fs::rename(home.join(CURRENT_STATEMENT), home.join(PREV_STATEMENT));
        }
        std::fs::rename(&next, &current).map_err(io("putting the new binary in place"))?;
    }
    if home.join(NEXT_STATEMENT).exists() {
        let _ = std::fs::rename(home.join(NEXT_STATEMENT), home.join(CURRENT_STATEMENT));
    }
    if home.join(CONFIG_NEXT).exists() {
        if home.join(CONFIG).exists() {
            std::fs::rename(home.join(CONFIG), home.join(CONFIG_PREV))
                .map_err(io("keeping the old config as config.json.prev"))?;
        }
        std::fs::rename(home.join(CONFIG_NEXT), home.join(CONFIG))
            .map_err(io("putting the migrated config in place"))?;
    }
    let raise = highest_committed(home).is_none_or(|h| *version > h);
    if raise {
        let state = serde_json::json!({"highest_committed": version.to_string()}).to_string();
        wireleap_home::durable::write_atomic(&home.join(STATE), state.as_bytes(), 0o644)
            .map_err(io("recording the committed version"))?;
    }
    sync_dir(home);
    Ok(())
}

/// Step 4, failure: the migrations are undone by the new binary (if it got that far), the staged
/// files go (no `.next` is left behind, spec §10 #8), and `skip` joins the skip list.
pub fn roll_back(home: &Path, version: &str, migrated_from: Option<&str>, skip_it: bool) {
    if let Some(from) = migrated_from
        && home.join(NEXT).exists()
        && let Err(e) = migrate(home, &home.join(NEXT), from, true)
    {
        crate::run::log(&format!(
            "undoing the migrations of {version} failed: {e}; the home directory needs a look"
        ));
        journal(home, version, Step::MigrateDownFailed, &e);
    }
    let _ = std::fs::remove_file(home.join(CONFIG_NEXT));
    let _ = std::fs::remove_file(home.join(NEXT));
    let _ = std::fs::remove_file(home.join(NEXT_STATEMENT));
    if skip_it {
        skip(home, version);
    }
    sync_dir(home);
}

/// The operator's rollback, committed once the previous binary serves: it replaces the current
/// one (which is not kept), with its statement, and the down-migrated `config.json.next` becomes
/// `config.json`. The highest committed version stays: automatic upgrades do not bring the
/// rolled-back version back (DESIGN.md invariant 7). Idempotent.
///
/// # Errors
/// [`Error::Io`].
pub fn commit_rollback(home: &Path) -> Result<(), Error> {
    if home.join(PREV).exists() {
        std::fs::rename(home.join(PREV), home.join(CURRENT))
            .map_err(io("putting wireleap-relay.prev back in place"))?;
        if home.join(PREV_STATEMENT).exists() {
            let _ = std::fs::rename(home.join(PREV_STATEMENT), home.join(CURRENT_STATEMENT));
        } else {
            let _ = std::fs::remove_file(home.join(CURRENT_STATEMENT));
        }
    }
    if home.join(CONFIG_NEXT).exists() {
        std::fs::rename(home.join(CONFIG_NEXT), home.join(CONFIG))
            .map_err(io("putting the rolled-back config in place"))?;
        let _ = std::fs::remove_file(home.join(CONFIG_PREV));
    }
    sync_dir(home);
    Ok(())
}

/// The versions in `.skip-upgrade-version` ([`wireleap_home::skip`]).
pub fn skipped(home: &Path) -> Vec<String> {
    SkipList::load(home)
        .map(|l| l.versions.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// Adds `version` to `.skip-upgrade-version` (spec §10 #15), once. Only a plain version ever goes
/// in: anything else (a newline, a comment) could add others.
pub fn skip(home: &Path, version: &str) {
    let added = parse_version(version)
        .map_err(|e| e.to_string())
        .and_then(|v| SkipList::add(home, &v).map_err(|e| e.to_string()));
    if let Err(e) = added {
        crate::run::log(&format!("not adding {version:?} to {SKIP}: {e}"));
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

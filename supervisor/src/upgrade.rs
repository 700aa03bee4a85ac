//! The upgrade steps the supervisor takes for a staged release (DESIGN.md steps 3-4), each
//! journaled with fsync:
//!
//! 1. copy `wireleap-relay.next` into the supervisor's own folder ([`crate::verified`]) and
//!    verify the copy again, offline, with the home's release trust (the same root and files the
//!    relay uses, `relay_release::trust`) against `wireleap-relay.next.hash`; the copy must
//!    report the signed version (it trusts nothing the relay hands it);
//! 2. start the copy as a generation on the inherited listener (the handover of `run`);
//! 3. watch a health window;
//! 4. commit: `wireleap-relay` → `wireleap-relay.prev`, the verified copy's bytes (and the
//!    statement they matched) → `wireleap-relay`, durably, and raise the highest committed
//!    version; or roll back: the old binary serves, the staged files go, the version joins
//!    `.skip-upgrade-version`.
//!
//! Between steps 1 and 2 the new binary (its verified copy) migrates the home directory (`migrate FROM`: its own
//! migrations, since only it knows them; config changes go to `config.json.next`, which the new
//! generation reads and the old one ignores). A rollback undoes them with `migrate --down`.

use std::path::Path;

use relay_release::{Expected, Trust, TrustedKeys, parse_version};

use crate::machine::Recall;
use crate::verified::Verified;
use semver::Version;
use wireleap_home::journal::Step;
use wireleap_home::migrate::Direction;
use wireleap_home::skip::SkipList;

pub use wireleap_home::files::{
    CONFIG, CONFIG_NEXT, CONFIG_PREV, CURRENT, CURRENT_STATEMENT, JOURNAL, MIGRATION_GROUP, NEXT,
    NEXT_STATEMENT, PREV, PREV_STATEMENT, SKIP_VERSION as SKIP, STATE, SUPERVISOR_NEXT,
};
pub use wireleap_home::migrate::MIGRATE_TIMEOUT;

/// This supervisor's bound on one migration (`--migrate-timeout`), set once at start.
static MIGRATE_BOUND: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// Sets the bound on one migration (once, at start; [`MIGRATE_TIMEOUT`] otherwise).
pub fn set_migrate_timeout(timeout: std::time::Duration) {
    let _ = MIGRATE_BOUND.set(timeout);
}

pub use wireleap_home::files::runs_from_home;

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
        crate::run::warn(&format!("could not write the upgrade journal: {e}"));
    }
}

pub use wireleap_home::state::highest_committed;

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
    relay_release::trust::release_check(&trust(home)?, home, version, running)
}

/// The home's trust, as the supervisor keeps it: the root embedded in this build written to
/// `trusted-keys/roots/` when it is in effect, and the rotations a relay fetched but could not
/// write itself (privilege separation: [`wireleap_home::files::ROOTS_STAGED`]) moved in when
/// they follow the current root.
///
/// # Errors
/// The trust's errors.
pub fn trust(home: &Path) -> Result<Trust, relay_release::Error> {
    // One at a time in this process: loading moves staged roots in and removes what it read.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut trust = Trust::load(home)?;
    if let Err(e) = trust.persist_embedded() {
        crate::run::warn(&format!("could not keep the embedded release root: {e}"));
    }
    let imported = trust.import_staged(std::time::SystemTime::now());
    for v in imported.accepted {
        crate::run::log(&format!("release root {v}: a valid rotation, now trusted"));
    }
    if let Some(why) = imported.refused {
        crate::run::warn(&format!(
            "a release root the relay fetched was refused: {why}"
        ));
    }
    Ok(trust)
}

/// Verifies a recall of `running`: a rollout document of that version, signed by the rollout
/// role of the home's trust, not expired, that recalls it. Returns its serial.
///
/// # Errors
/// Why the recall is refused, for the reply and the log.
pub fn verify_recall(home: &Path, recall: &Recall, running: &Version) -> Result<u64, String> {
    let now = std::time::SystemTime::now();
    let keys = trust(home)
        .and_then(|t| t.rollout_keys(now))
        .map_err(|e| format!("the recall cannot be checked: {e}"))?;
    // When this home last committed the version (its own journal): a recall issued before that
    // was overridden (an operator who upgrades to a recalled version again means it).
    let running_text = running.to_string();
    let committed = wireleap_home::journal::read(home)
        .into_iter()
        .rev()
        .find(|e| e.version == running_text && e.step == Step::Committed)
        .map(|e| wireleap_home::time::at_ms(e.time_ms));
    recall_of(recall.0.as_bytes(), &keys, running, now, committed)
}

/// How much earlier than the release server's clock this host's may be for a recall issued
/// after a commit to still count as issued after it.
const RECALL_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// [`verify_recall`] with the rollout role's `keys` at `now`, the version committed here at
/// `committed`.
fn recall_of(
    document: &[u8],
    keys: &TrustedKeys,
    running: &Version,
    now: std::time::SystemTime,
    committed: Option<std::time::SystemTime>,
) -> Result<u64, String> {
    let verified = relay_release::rollout::verify(document, keys, running, now, None)
        .map_err(|e| format!("the recall of {running} does not verify: {e}"))?;
    if !verified.document.recall {
        return Err(format!(
            "the rollout document of {running} (serial {}) does not recall it",
            verified.document.serial
        ));
    }
    if let Some(committed) = committed
        && verified.issued + RECALL_CLOCK_SKEW < committed
    {
        return Err(format!(
            "the recall of {running} (serial {}, issued {}) is older than its commit here: an upgrade made after a recall overrides it",
            verified.document.serial, verified.document.issued
        ));
    }
    Ok(verified.document.serial)
}

/// Step 1: copies the staged binary and verifies the copy as the release `version` above
/// `running` (and the highest committed).
///
/// # Errors
/// [`Error::Version`], [`Error::Verify`] with the failing step, or [`Error::Io`] (the staged
/// binary could not be copied).
pub fn verify_staged(
    home: &Path,
    version: &str,
    running: &Version,
) -> Result<(Version, Verified, Option<Verified>), Error> {
    let version = parse_version(version).map_err(|_| Error::Version(version.to_owned()))?;
    let (keys, expected) = release_check(home, &version, running)?;
    let mut copy = Verified::copy(home, &home.join(NEXT)).map_err(|e| Error::Io {
        what: "copying the staged binary".into(),
        source: std::io::Error::other(e),
    })?;
    let verified = copy.check(&home.join(NEXT_STATEMENT), &keys, &expected)?;
    let supervisor = check_staged_supervisor(home, &verified)?;
    Ok((version, copy, supervisor))
}

/// The release's own supervisor, staged beside it (`wireleap-relay-supervisor.next`), is
/// verified by the same statement as the relay (one release, never a mix): a supervisor the
/// statement does not list, or whose bytes it does not sign, refuses the whole release.
///
/// Returns its verified copy: after the relay's commit the supervisor hands over to it
/// ([`crate::swap`]).
///
/// # Errors
/// [`Error::Verify`], or [`Error::Io`] when the staged supervisor cannot be copied.
fn check_staged_supervisor(
    home: &Path,
    verified: &relay_release::VerifiedStatement,
) -> Result<Option<Verified>, Error> {
    let path = home.join(SUPERVISOR_NEXT);
    if std::fs::symlink_metadata(&path).is_err() {
        // A relay stages the supervisor before the binary, so a staged binary without it
        // comes from a relay that does not fetch supervisors (an older one): the relay is
        // upgraded, this supervisor stays.
        if let Some(entry) = verified.supervisor_entry() {
            crate::run::log(&format!(
                "the release carries its supervisor ({}), but the relay did not stage it: this supervisor stays",
                entry.name
            ));
        }
        return Ok(None);
    }
    let entry = verified.supervisor_entry().ok_or_else(|| {
        Error::Verify(relay_release::Error::asset_not_listed(
            relay_release::layout::asset_name(
                &relay_release::Product::supervisor(),
                &verified.statement.target,
            ),
            &verified.raw,
        ))
    })?;
    let name = entry.name.clone();
    let copy = Verified::copy(home, &path).map_err(|e| Error::Io {
        what: "copying the staged supervisor".into(),
        source: std::io::Error::other(e),
    })?;
    relay_release::verify::verify_file(&copy.path(), verified, &name)?;
    crate::run::log(&format!(
        "the release's supervisor ({name}) verified with it"
    ));
    Ok(Some(copy))
}

/// Runs `<binary> migrate <version>` (up from `version`) or `migrate --down <version>` in
/// `home` from its verified copy, bounded by `--migrate-timeout` ([`MIGRATE_TIMEOUT`] by
/// default; [`wireleap_home::migrate`]). While it runs, its process group is written to
/// [`MIGRATION_GROUP`], so that a supervisor started after this one died kills what it left.
///
/// # Errors
/// What the command printed on stderr when it fails, exits non-zero or times out.
pub fn migrate(
    home: &Path,
    binary: &Verified,
    version: &str,
    direction: Direction,
) -> Result<(), String> {
    let group = home.join(MIGRATION_GROUP);
    let result = wireleap_home::migrate::run_with(
        binary.command(Vec::new())?,
        home,
        version,
        direction,
        *MIGRATE_BOUND.get().unwrap_or(&MIGRATE_TIMEOUT),
        &mut |pid| {
            if let Err(e) =
                wireleap_home::durable::write_atomic(&group, pid.to_string().as_bytes(), 0o644)
            {
                crate::run::warn(&format!("could not write {MIGRATION_GROUP}: {e}"));
            }
        },
    );
    let _ = std::fs::remove_file(&group);
    result
}

/// Step 4, success: `wireleap-relay` becomes `.prev`, the verified copy's bytes become
/// `wireleap-relay` (with their statement), the migrated config is put in place, and the highest
/// committed version rises. Idempotent, so a supervisor that died halfway finishes it on restart
/// (with `staged` `None` once `wireleap-relay.next` is gone: the binary was installed).
///
/// # Errors
/// [`Error::Io`]; the journal says how far it got.
pub fn commit(home: &Path, version: &Version, staged: Option<&Verified>) -> Result<(), Error> {
    let current = home.join(CURRENT);
    if let Some(staged) = staged
        && !staged.same_as(&current)
    {
        // The old binary gets its second name `.prev` first; then the new bytes replace
        // `wireleap-relay` in one rename. At no moment is there no `wireleap-relay`, and a
        // failure (a full disk) leaves the old one in place.
        if current.exists() {
            link_as(&current, &home.join(PREV))
                .map_err(io("keeping the old binary as wireleap-relay.prev"))?;
            if home.join(CURRENT_STATEMENT).exists() {
                link_as(&home.join(CURRENT_STATEMENT), &home.join(PREV_STATEMENT))
                    .map_err(io("keeping the old statement"))?;
            } else {
                remove(&home.join(PREV_STATEMENT))?;
            }
        }
        staged
            .install(&current, &home.join(CURRENT_STATEMENT))
            .map_err(io("putting the new binary in place"))?;
    } else if let Some(staged) = staged {
        // The bytes are in place already (a commit cut short after the binary's rename): the
        // statement beside them may still be the old one.
        staged
            .install_statement(&home.join(CURRENT_STATEMENT))
            .map_err(io("putting the new binary's statement in place"))?;
    }
    remove(&home.join(NEXT))?;
    remove(&home.join(NEXT_STATEMENT))?;
    remove(&home.join(SUPERVISOR_NEXT))?;
    remove(&kept_statement(home))?;
    if home.join(CONFIG_NEXT).exists() {
        // As the binary: the old config gets its second name first, then the migrated one
        // replaces it in one rename, so there is a `config.json` at every moment (the unit does
        // not start without one, and then nothing would finish this commit).
        // A file the supervisor may not link (another user's, with `protected_hardlinks`) is
        // renamed, as before.
        if home.join(CONFIG).exists() {
            link_as(&home.join(CONFIG), &home.join(CONFIG_PREV))
                .or_else(|_| std::fs::rename(home.join(CONFIG), home.join(CONFIG_PREV)))
                .map_err(io("keeping the old config as config.json.prev"))?;
        }
        std::fs::rename(home.join(CONFIG_NEXT), home.join(CONFIG))
            .map_err(io("putting the migrated config in place"))?;
    }
    wireleap_home::state::record_committed(home, version)
        .map_err(io("recording the committed version"))?;
    sync_dir(home);
    Ok(())
}

/// Gives `from` the name `to` too (a hard link under a fresh name, renamed over `to`).
fn link_as(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_file_name(format!(
        ".{}.link{}",
        to.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(from, &tmp)?;
    std::fs::rename(&tmp, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Step 4, failure: the migrations are undone by the new binary's verified copy (`undo`: the
/// copy and the version it migrated from), the staged files go (no `.next` is left behind, spec
/// §10 #8), and `skip` joins the skip list.
pub fn roll_back(home: &Path, version: &str, undo: Option<(&Verified, &str)>, skip_it: bool) {
    if let Some((binary, from)) = undo
        && let Err(e) = migrate(home, binary, from, Direction::Down)
    {
        crate::run::log(&format!(
            "undoing the migrations of {version} failed: {e}; the home directory needs a look"
        ));
        journal(home, version, Step::MigrateDownFailed, &e);
    }
    let _ = std::fs::remove_file(home.join(CONFIG_NEXT));
    let _ = std::fs::remove_file(home.join(NEXT));
    let _ = std::fs::remove_file(home.join(NEXT_STATEMENT));
    let _ = std::fs::remove_file(home.join(SUPERVISOR_NEXT));
    let _ = std::fs::remove_file(kept_statement(home));
    if skip_it {
        skip(home, version);
    }
    sync_dir(home);
}

/// The operator's rollback, committed once the previous binary serves: the verified copy of
/// `.prev` replaces the current binary (which is not kept), with its statement, and the
/// down-migrated `config.json.next` becomes `config.json`. The highest committed version stays:
/// automatic upgrades do not bring the rolled-back version back (DESIGN.md invariant 7).
/// Idempotent (`prev` `None` once `.prev` is gone: it was installed).
///
/// # Errors
/// [`Error::Io`].
pub fn commit_rollback(home: &Path, prev: Option<&Verified>) -> Result<(), Error> {
    if let Some(prev) = prev
        && home.join(PREV).exists()
    {
        if prev.same_as(&home.join(CURRENT)) {
            // Its bytes are back in place already (cut short after the binary's rename).
            prev.install_statement(&home.join(CURRENT_STATEMENT))
                .map_err(io("putting wireleap-relay.prev's statement back in place"))?;
        } else {
            prev.install(&home.join(CURRENT), &home.join(CURRENT_STATEMENT))
                .map_err(io("putting wireleap-relay.prev back in place"))?;
        }
        remove(&home.join(PREV))?;
        remove(&home.join(PREV_STATEMENT))?;
    }
    if home.join(CONFIG_NEXT).exists() {
        std::fs::rename(home.join(CONFIG_NEXT), home.join(CONFIG))
            .map_err(io("putting the rolled-back config in place"))?;
        let _ = std::fs::remove_file(home.join(CONFIG_PREV));
    }
    sync_dir(home);
    Ok(())
}

/// A fresh copy of an installed binary (`wireleap-relay` or `.prev`), checked against the
/// statement beside it if there is one (a binary installed by hand has none), with the version
/// it reports. The copy must report the version its statement signs (and `version`, when the
/// caller knows it). A copy that does not answer `version` in time still runs: with a statement
/// its version is the signed one; without, it is unknown (`None`) and the reason is logged.
///
/// # Errors
/// Why it may not run.
pub fn installed_copy(
    home: &Path,
    binary: &Path,
    statement: &Path,
    version: Option<&Version>,
) -> Result<(Verified, Option<Version>), String> {
    crate::privsep::trusted_file(binary)?;
    crate::privsep::trusted_file(statement)?;
    let mut copy = Verified::copy(home, binary)?;
    let signed = if statement.exists() {
        let trust = trust(home).map_err(|e| e.to_string())?;
        copy.check_installed(&trust, statement).map_err(|e| {
            format!(
                "{} does not match its signed statement: {e}",
                binary.display()
            )
        })?
    } else {
        None
    };
    let reported = match crate::generation::version_of(&copy) {
        Ok(v) => v,
        Err(e) => {
            crate::run::warn(&e);
            copy.version.clone_from(&signed);
            return Ok((copy, signed));
        }
    };
    for want in signed.iter().chain(version) {
        if *want != reported {
            return Err(format!(
                "{} reports version {reported}, not {want}",
                binary.display()
            ));
        }
    }
    copy.version = Some(reported.clone());
    Ok((copy, Some(reported)))
}

/// The version the statement at `statement` signs, its signature checked with the home's trust
/// (the binary beside it is not read): what `status` shows for `.prev`.
#[must_use]
pub fn signed_version(home: &Path, statement: &Path) -> Option<Version> {
    let keys = Trust::load(home)
        .ok()?
        .release_keys(relay_release::ExpiryCheck::UnsafeIgnore)
        .ok()?;
    crate::verified::signed_version(statement, &keys).ok()
}

/// Where the supervisor keeps the staged release's statement as it verified it
/// ([`wireleap_home::files::STAGED_STATEMENT_KEPT`], in its own folder).
fn kept_statement(home: &Path) -> std::path::PathBuf {
    home.join(crate::verified::VERIFIED_DIR)
        .join(wireleap_home::files::STAGED_STATEMENT_KEPT)
}

/// Keeps the statement the staged copy `staged` verified against, in the supervisor's own
/// folder, until the commit or the undo (for [`staged_copy`]).
///
/// # Errors
/// Why it could not be written.
pub fn keep_statement(home: &Path, staged: &Verified) -> Result<(), String> {
    let bytes = staged
        .statement
        .as_deref()
        .ok_or("the staged release has no verified statement")?;
    crate::verified::private_dir(&home.join(crate::verified::VERIFIED_DIR))?;
    let path = kept_statement(home);
    wireleap_home::durable::write_atomic(&path, bytes, 0o600).map_err(|e| {
        format!(
            "could not keep the staged statement in {}: {e}",
            path.display()
        )
    })
}

/// A fresh verified copy of the release `version` staged for an unfinished upgrade (during
/// recovery: no floor, no expiry; the version was checked when it was staged). Its statement is
/// the one the supervisor kept when it verified the release ([`keep_statement`]), else the
/// staged `wireleap-relay.next.hash` (a home left by a supervisor that kept none): either must
/// verify, and bytes without a statement never run. The bytes are `wireleap-relay.next`'s, or
/// `wireleap-relay`'s when a commit cut short had already put them in place.
///
/// # Errors
/// Why it may not run.
pub fn staged_copy(home: &Path, version: &Version) -> Result<Verified, String> {
    let mut refused = Vec::new();
    // The kept one first: it is in the supervisor's own folder, nobody else makes or removes it.
    let statements: Vec<(std::path::PathBuf, Vec<u8>)> =
        [kept_statement(home), home.join(NEXT_STATEMENT)]
            .into_iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .filter_map(|p| match relay_release::verify::read_statement(&p) {
                Ok(bytes) => Some((p, bytes)),
                Err(e) => {
                    refused.push(e.to_string());
                    None
                }
            })
            .collect();
    if statements.is_empty() {
        refused.push(format!(
            "no statement of {version} (neither kept nor {NEXT_STATEMENT})"
        ));
        return Err(refused.join("; "));
    }
    let keys = trust(home)
        .and_then(|t| t.release_keys(relay_release::ExpiryCheck::UnsafeIgnore))
        .map_err(|e| e.to_string())?;
    let expected = Expected {
        product: relay_release::Product::relay(),
        version: version.clone(),
        target: relay_release::Target::host().map_err(|e| e.to_string())?,
        floor: relay_release::VersionFloor::UnsafeAllowAny,
        expiry: relay_release::ExpiryCheck::UnsafeIgnore,
    };
    for name in [NEXT, CURRENT] {
        let path = home.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            refused.push(format!("{name} is missing"));
            continue;
        }
        let mut copy = Verified::copy(home, &path)?;
        let mut matched = false;
        for (from, bytes) in &statements {
            match copy.check_bytes(bytes.clone(), &keys, &expected) {
                Ok(_) => {
                    matched = true;
                    break;
                }
                Err(e) => refused.push(format!("{name} does not match {}: {e}", from.display())),
            }
        }
        if !matched {
            continue;
        }
        match crate::generation::version_of(&copy) {
            Ok(reported) if reported != *version => {
                return Err(format!("{name} reports version {reported}, not {version}"));
            }
            Ok(_) => {}
            // Signed as `version`: it runs as that (a loaded host may be slow to answer).
            Err(e) => crate::run::warn(&e),
        }
        copy.version = Some(version.clone());
        return Ok(copy);
    }
    Err(refused.join("; "))
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
    let _one = SKIPPING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let added = parse_version(version)
        .map_err(|e| e.to_string())
        .and_then(|v| SkipList::add(home, &v).map_err(|e| e.to_string()));
    if let Err(e) = added {
        crate::run::log(&format!("not adding {version:?} to {SKIP}: {e}"));
    }
}

/// One writer of the skip list at a time in this process (the loop's, a job's, a skip asked).
static SKIPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A skip the relay asked for (it may not write the list: privilege separation), with its
/// proof: `statement` must be the signed release statement of `version` for this host, checked
/// with this supervisor's own trust up to the listing (signature, product, target, version,
/// above `running` and the highest committed, not expired), and list no binary for this host.
///
/// # Errors
/// Why it was not added.
pub fn skip_asked(
    home: &Path,
    version: &str,
    statement: &str,
    running: &Version,
) -> Result<(), String> {
    let version = parse_version(version).map_err(|e| e.to_string())?;
    let (keys, expected) = release_check(home, &version, running)
        .map_err(|e| format!("the statement of {version} cannot be checked: {e}"))?;
    match relay_release::verify::verify_statement(statement.as_bytes(), &keys, &expected) {
        Err(relay_release::Error::AssetNotListed { asset, .. }) => {
            let _one = SKIPPING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            SkipList::add(home, &version).map_err(|e| format!("{SKIP}: {e}"))?;
            crate::run::log(&format!(
                "{version} added to {SKIP} at the relay's request: its signed statement lists no {asset}"
            ));
            Ok(())
        }
        Ok(_) => Err(format!(
            "the statement of {version} lists this host's binary: not skipped"
        )),
        Err(e) => Err(format!("the statement of {version} does not verify: {e}")),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A recall is taken only as a document of the running version, signed by the rollout role,
    /// in force, and recalling it; anything else (forged, another version's, expired, a plain
    /// schedule, not a document at all, a root without a rollout role) says why.
    #[test]
    fn a_recall_must_be_a_signed_unexpired_recall_of_the_running_version() {
        use relay_release::rollout::{Document, steps};
        use std::time::{Duration, SystemTime};
        let now = SystemTime::now();
        let made = now - Duration::from_secs(24 * 3600);
        let rollout =
            relay_release::SigningKey::generate_at("rollout <r@example.test>", made).unwrap();
        let other = relay_release::SigningKey::generate_at("other <o@example.test>", made).unwrap();
        let keys = rollout
            .trusted()
            .unwrap()
            .with_role(relay_release::Role::Rollout);
        let running = Version::new(0, 9, 0);
        let doc = |version: &Version, recall: bool, by: &relay_release::SigningKey| {
            Document::new(
                version,
                7,
                now - Duration::from_secs(60),
                Duration::from_secs(3600),
                now - Duration::from_secs(600),
                steps(&[(0, 100.0)]),
                false,
                recall,
            )
            .unwrap()
            .sign(std::slice::from_ref(by), now - Duration::from_secs(60))
            .unwrap()
        };
        let good = doc(&running, true, &rollout);
        assert_eq!(recall_of(&good, &keys, &running, now, None), Ok(7));
        // Issued a minute ago: it counts against a commit made before it, or made just after it
        // by a clock a little ahead; a commit made well after it (an operator who upgraded to
        // the recalled version again) overrides it.
        for (committed, counts) in [
            (now - Duration::from_secs(3600), true),
            (now, true),
            (now + Duration::from_secs(3600), false),
        ] {
            let got = recall_of(&good, &keys, &running, now, Some(committed));
            assert_eq!(got.is_ok(), counts, "{got:?}");
        }
        for (bytes, keys, at, says) in [
            (
                doc(&running, false, &rollout),
                &keys,
                now,
                "does not recall it",
            ),
            (
                doc(&Version::new(0, 8, 0), true, &rollout),
                &keys,
                now,
                "does not verify",
            ),
            (doc(&running, true, &other), &keys, now, "does not verify"),
            (
                good.clone(),
                &keys,
                now + Duration::from_secs(7200),
                "does not verify",
            ),
            (
                b"a recall, trust me".to_vec(),
                &keys,
                now,
                "does not verify",
            ),
            (
                good.clone(),
                &TrustedKeys::empty().with_role(relay_release::Role::Rollout),
                now,
                "does not verify",
            ),
        ] {
            let why = recall_of(&bytes, keys, &running, at, None).unwrap_err();
            assert!(why.contains(says), "{why}");
        }
    }

    /// A relay's skip is taken only with its proof: a statement of the version for this host,
    /// signed by a trusted key, that lists no binary for it. A statement that lists it, one of
    /// another version, one no trusted key signed, or one at or below the running version is
    /// refused, and nothing is skipped.
    #[test]
    fn a_skip_asked_for_needs_a_signed_statement_without_this_hosts_binary() {
        use relay_release::layout::{CHANGELOG_NAME, asset_name, statement_name};
        use relay_release::{FileEntry, Product, SigningKey, Statement, Target, sign};
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../releases/testdata/keys");
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::create_dir(h.join("trusted-keys")).unwrap();
        std::fs::copy(
            keys.join("test-only-project.pub"),
            h.join("trusted-keys/test-only-project.pub"),
        )
        .unwrap();
        let asset = asset_name(&Product::relay(), &Target::host().unwrap());
        // Issued `age` seconds ago, valid for an hour.
        let issued = |age: u64| {
            relay_release::manifest::whole_seconds(std::time::SystemTime::now())
                - std::time::Duration::from_secs(age)
        };
        let dated = |version: &str, key: &str, with_binary: bool, now| {
            let mut files = vec![
                FileEntry::digest(CHANGELOG_NAME, &b"# notes\n"[..], Path::new(CHANGELOG_NAME))
                    .unwrap(),
            ];
            if with_binary {
                files.push(FileEntry::digest(&asset, &b"binary"[..], Path::new(&asset)).unwrap());
            }
            let statement = Statement {
                product: Product::relay(),
                version: parse_version(version).unwrap(),
                target: Target::host().unwrap(),
                issued: now,
                expires: now + std::time::Duration::from_secs(3600),
                files,
            };
            let key = SigningKey::from_file(&keys.join(format!("test-only-{key}.key"))).unwrap();
            let signed = sign::sign_statement(&key, &statement, &statement_name(&asset)).unwrap();
            String::from_utf8(signed).unwrap()
        };
        let statement = |version: &str, key: &str, with_binary: bool| {
            dated(version, key, with_binary, issued(0))
        };
        let running = Version::new(0, 7, 0);
        for (version, proof, says) in [
            (
                "9.0.0",
                statement("9.0.0", "project", true),
                "lists this host's binary",
            ),
            (
                "9.0.0",
                statement("9.0.1", "project", false),
                "does not verify",
            ),
            (
                "9.0.0",
                statement("9.0.0", "unknown", false),
                "does not verify",
            ),
            (
                "0.6.0",
                statement("0.6.0", "project", false),
                "does not verify",
            ),
            (
                "9.0.0",
                dated("9.0.0", "project", false, issued(7200)),
                "does not verify",
            ),
            (
                "9.0.0",
                "a statement, trust me".to_owned(),
                "does not verify",
            ),
        ] {
            let why = skip_asked(h, version, &proof, &running).unwrap_err();
            assert!(why.contains(says), "{version}: {why}");
            assert!(skipped(h).is_empty(), "{why}");
        }
        skip_asked(h, "9.0.0", &statement("9.0.0", "project", false), &running).unwrap();
        assert_eq!(skipped(h), vec!["9.0.0".to_owned()]);
    }

    /// A rollback cut short after `.prev`'s bytes were renamed into place, before the statement
    /// beside them was dealt with: finishing it must not leave the new version's statement beside
    /// the old bytes (a supervisor would refuse that binary on every start).
    #[test]
    fn a_rollback_cut_short_between_its_renames_is_finished_with_the_right_statement() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let old = b"#!/bin/sh\necho 0.7.0\n";
        // `.prev` was installed by hand (no statement); its bytes are already in place, and the
        // statement of the version rolled back from is still there.
        for name in [PREV, CURRENT] {
            std::fs::write(h.join(name), old).unwrap();
            std::fs::set_permissions(h.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(h.join(CURRENT_STATEMENT), "the 9.0.0 statement").unwrap();
        let prev = Verified::copy(h, &h.join(PREV)).unwrap();
        commit_rollback(h, Some(&prev)).unwrap();
        assert_eq!(std::fs::read(h.join(CURRENT)).unwrap(), old);
        assert!(
            !h.join(CURRENT_STATEMENT).exists(),
            "a stale statement stayed beside the rolled-back binary"
        );
        assert!(!h.join(PREV).exists());
        // Finishing it again changes nothing.
        commit_rollback(h, None).unwrap();
        assert_eq!(std::fs::read(h.join(CURRENT)).unwrap(), old);
    }
}

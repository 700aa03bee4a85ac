//! The slow steps of an upgrade or a rollback, each a [`Job`] the loop runs on a thread of its
//! own while supervision goes on; each journals its steps and, when it fails, cleans up after
//! itself before it reports.

use std::path::Path;
use std::sync::Arc;

use wireleap_home::journal::Step;

use crate::failpoint::step;
use crate::generation::version_of;
use crate::machine::{Cause, Done, Job, Kind, Recall, Versions};
use crate::run::log;
use crate::upgrade::{self, journal};
use crate::verified::Verified;
use wireleap_home::migrate::Direction;

/// The verified copies a job may use.
#[derive(Debug, Clone)]
pub struct Copies {
    /// Of `wireleap-relay`.
    pub current: Arc<Verified>,
    /// Of the staged release, once prepared.
    pub staged: Option<Arc<Verified>>,
    /// Of `.prev`, once a rollback is prepared.
    pub prev: Option<Arc<Verified>>,
    /// Of the release's own supervisor, with the release's version, once prepared.
    pub staged_supervisor: Option<(Arc<Verified>, String)>,
}

/// How a job ended, with the copy a prepare verified.
#[derive(Debug)]
pub struct Outcome {
    /// For the machine.
    pub done: Done,
    /// The copy [`Job::Prepare`] made (the staged release, or `.prev`).
    pub copy: Option<Verified>,
    /// The release's own supervisor, verified with it.
    pub supervisor: Option<Verified>,
}

/// Runs `job` in `home` (whose relay binary is `relay`).
#[must_use]
pub fn run(home: &Path, relay: &Path, job: Job, copies: &Copies) -> Outcome {
    match job {
        Job::Prepare {
            kind,
            asked,
            recall,
        } => {
            let prepared = match kind {
                Kind::Upgrade => prepare_upgrade(home, relay, &copies.current, asked.as_deref()),
                Kind::Rollback => prepare_rollback(home, relay, &copies.current, recall.as_ref())
                    .map(|(v, c)| (v, c, None)),
            };
            match prepared {
                Ok((versions, copy, supervisor)) => Outcome {
                    done: Done::Prepared(Ok(versions)),
                    copy: Some(copy),
                    supervisor,
                },
                Err(why) => Outcome {
                    done: Done::Prepared(Err(why)),
                    copy: None,
                    supervisor: None,
                },
            }
        }
        Job::Probe { pid } => Outcome {
            done: Done::Probed {
                pid,
                // The committed binary's probe judges the new version (a release's own probe
                // could be as broken as the release); a binary too old to know the command
                // leaves it to the new one's.
                outcome: match probe(Some(&copies.current)) {
                    crate::machine::Probe::Unavailable(_) => probe(copies.staged.as_deref()),
                    judged => judged,
                },
            },
            copy: None,
            supervisor: None,
        },
        Job::Commit { kind, versions } => Outcome {
            done: Done::Committed(commit(home, kind, &versions, copies)),
            copy: None,
            supervisor: None,
        },
        Job::Undo {
            kind,
            versions,
            why,
            cause,
        } => {
            undo(home, kind, &versions, &why, cause, copies);
            Outcome {
                done: Done::Undone,
                copy: None,
                supervisor: None,
            }
        }
    }
}

/// Where the probe reaches the relay, how many pings it sends and how far apart (set once at
/// start).
static PROBE: std::sync::OnceLock<(std::net::SocketAddr, u32, std::time::Duration)> =
    std::sync::OnceLock::new();

/// Each ping's bound (a relay answers PING at once, without any I/O of its own).
const PING_TIMEOUT_SECS: u64 = 2;

/// Sets the probe's target: the listening socket's own address (a wildcard address is reached
/// on loopback), its count of pings, and the health window they spread over (the last one
/// near its end: a version that stops answering midway is seen).
pub fn set_probe(listening: std::net::SocketAddr, count: u32, window: std::time::Duration) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut at = listening;
    if at.ip().is_unspecified() {
        at.set_ip(if at.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        });
    }
    let interval = window.checked_div(count.max(1)).unwrap_or_default();
    let _ = PROBE.set((at, count, interval));
}

/// `binary probe` through the public socket (the new version is the only generation that
/// accepts while its window runs), bounded.
fn probe(binary: Option<&Verified>) -> crate::machine::Probe {
    use crate::machine::Probe;
    let (Some(&(address, count, interval)), Some(binary)) = (PROBE.get(), binary) else {
        return Probe::Unavailable("nothing to probe with".into());
    };
    let mut cmd = match binary.command(Vec::new()) {
        Ok(c) => c,
        Err(e) => return Probe::Unavailable(e),
    };
    cmd.args([
        "probe".to_owned(),
        address.to_string(),
        "--count".to_owned(),
        count.to_string(),
        "--timeout".to_owned(),
        PING_TIMEOUT_SECS.to_string(),
        "--interval-ms".to_owned(),
        interval.as_millis().to_string(),
    ]);
    let bound = (std::time::Duration::from_secs(PING_TIMEOUT_SECS) + interval) * count
        + std::time::Duration::from_secs(5);
    match wireleap_home::migrate::bounded(cmd, bound) {
        Ok(out) if out.status.success() => {
            Probe::Passed(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        // A relay that does not know the command answers with clap's usage error (exit 2).
        Ok(out)
            if out.status.code() == Some(2)
                && String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand") =>
        {
            Probe::Unavailable("it has no probe command".into())
        }
        Ok(out) => Probe::Failed(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("wireleap-relay probe: ")
                .to_owned(),
        ),
        Err(e) => Probe::Failed(format!("the probe {e}")),
    }
}

/// Upgrade step 1 (copy and verify) and the migrations. On failure the staged files go and the
/// version is skipped when the release itself is at fault.
fn prepare_upgrade(
    home: &Path,
    relay: &Path,
    current: &Verified,
    asked: Option<&str>,
) -> Result<(Versions, Verified, Option<Verified>), String> {
    let asked = asked.unwrap_or_default();
    if let Err(why) = upgrade::runs_from_home(home, relay) {
        upgrade::roll_back(home, asked, None, false);
        return Err(why);
    }
    let running = match &current.version {
        Some(v) => v.clone(),
        None => version_of(current)?,
    };
    let from = running.to_string();
    let (version, mut staged, supervisor) = match upgrade::verify_staged(home, asked, &running) {
        Ok(v) => v,
        Err(e) => {
            let why = e.to_string();
            // Skipped only when the release itself is at fault (forged, stale, wrong): a local
            // problem (trust files, an expired root, the disk) is the operator's to fix, and the
            // version installs once it is fixed.
            let skip = matches!(&e, upgrade::Error::Verify(e) if e.is_peer_fault())
                || matches!(&e, upgrade::Error::Version(_));
            journal(home, asked, Step::VerifyFailed, &why);
            upgrade::roll_back(home, asked, None, skip);
            return Err(why);
        }
    };
    let v = version.to_string();
    // The copy must say it is the version its statement signs: one that reports another would
    // be committed as that version and refuse genuine later releases as "not above".
    match version_of(&staged) {
        Ok(reported) if reported == version => staged.version = Some(reported),
        Ok(reported) => {
            let why = format!(
                "the staged binary reports version {reported}, but its signed statement is for {v}"
            );
            journal(home, &v, Step::VerifyFailed, &why);
            upgrade::roll_back(home, &v, None, true);
            return Err(why);
        }
        Err(e) => {
            // Not skipped: a loaded host may be slow to answer; the next notice tries again.
            let why = format!("the staged binary's version could not be read: {e}");
            journal(home, &v, Step::VerifyFailed, &why);
            upgrade::roll_back(home, &v, None, false);
            return Err(why);
        }
    }
    // Recovery checks the staged bytes against this copy of their statement, never against
    // the relay's `wireleap-relay.next.hash`.
    if let Err(why) = upgrade::keep_statement(home, &staged) {
        journal(home, &v, Step::VerifyFailed, &why);
        upgrade::roll_back(home, &v, None, false);
        return Err(why);
    }
    step(home, &v, Step::Verified, &format!("from {from}"));
    // The release's own supervisor must start here before anything changes: one that cannot
    // (it crashes, hangs, or refuses this home) would fail its trial after the relay's commit.
    if let Some(supervisor) = &supervisor {
        match crate::swap::preflight(home, supervisor) {
            Ok(said) => log(&format!(
                "upgrade to {v}: the release's supervisor passed its preflight ({said})"
            )),
            Err((fault, e)) => {
                let why = format!("the release's supervisor failed before it ran: {e}");
                log(&format!(
                    "upgrade to {v}: {why}; {}",
                    if fault {
                        format!("{v} will be skipped")
                    } else {
                        "not skipped: the next notice tries again".to_owned()
                    }
                ));
                journal(home, &v, Step::SupervisorRolledBack, &why);
                upgrade::roll_back(home, &v, None, fault);
                return Err(why);
            }
        }
    }
    if let Err(e) = upgrade::migrate(home, &staged, &from, Direction::Up) {
        let why = format!("migration failed: {e}");
        log(&format!("upgrade to {v}: {why}; {v} will be skipped"));
        // A migration that failed by itself undid its own steps, but one killed on its
        // deadline did not: the down-migrations run either way (each is a no-op when its up
        // did not run).
        upgrade::roll_back(home, &v, Some((&staged, &from)), true);
        journal(home, &v, Step::RolledBack, &why);
        return Err(why);
    }
    step(home, &v, Step::Migrated, "");
    Ok((Versions { to: v, from }, staged, supervisor))
}

/// The operator's rollback, up to starting the previous binary: `.prev` is copied and checked
/// against its statement; the config is the current one migrated down by the current binary
/// (`config.json.next`, which the new generation reads).
/// A rollback to `.prev`: the operator's, or a recall's once the recall verified (the recalled
/// version is then skipped).
fn prepare_rollback(
    home: &Path,
    relay: &Path,
    current: &Verified,
    recall: Option<&Recall>,
) -> Result<(Versions, Verified), String> {
    upgrade::runs_from_home(home, relay)?;
    let prev_path = home.join(upgrade::PREV);
    if !prev_path.exists() {
        return Err("there is no wireleap-relay.prev to roll back to".into());
    }
    let (prev, to) =
        upgrade::installed_copy(home, &prev_path, &home.join(upgrade::PREV_STATEMENT), None)?;
    let to = to.ok_or("the version of wireleap-relay.prev cannot be read")?;
    let from = match &current.version {
        Some(v) => v.clone(),
        None => version_of(current)?,
    };
    let mut started = format!("from {from}");
    if let Some(recall) = recall {
        let serial = upgrade::verify_recall(home, recall, &from)?;
        log(&format!(
            "{from} is recalled (rollout serial {serial}, verified): skipping it and rolling back to {to}"
        ));
        upgrade::skip(home, &from.to_string());
        started = format!("{started}, recalled (rollout serial {serial})");
    }
    let v = to.to_string();
    step(home, &v, Step::RollbackStarted, &started);
    // config.json is the relay's: its own user copies it to config.json.next and migrates the
    // copy down (the supervisor needs no right to give it a file).
    if let Err(e) = upgrade::migrate(home, current, &v, Direction::DownOnCopy) {
        let _ = std::fs::remove_file(home.join(upgrade::CONFIG_NEXT));
        journal(home, &v, Step::RollbackFailed, &e);
        return Err(e);
    }
    step(home, &v, Step::RollbackMigrated, "");
    Ok((
        Versions {
            to: v,
            from: from.to_string(),
        },
        prev,
    ))
}

/// The renames of a commit (the machine journaled its first step).
fn commit(home: &Path, kind: Kind, versions: &Versions, copies: &Copies) -> Result<(), String> {
    match kind {
        Kind::Upgrade => {
            let version = semver::Version::parse(&versions.to).map_err(|e| e.to_string())?;
            let staged = copies
                .staged
                .as_deref()
                .ok_or("no verified copy of the staged release")?;
            upgrade::commit(home, &version, Some(staged)).map_err(|e| e.to_string())
        }
        Kind::Rollback => {
            let prev = copies
                .prev
                .as_deref()
                .ok_or("no verified copy of wireleap-relay.prev")?;
            upgrade::commit_rollback(home, Some(prev)).map_err(|e| e.to_string())
        }
    }
}

/// Undoes a prepared change: an upgrade's migrations go down (by its own binary) and its staged
/// files go, skipped if it failed; a rollback's down-migrations are redone by the current binary.
fn undo(home: &Path, kind: Kind, versions: &Versions, why: &str, cause: Cause, copies: &Copies) {
    let v = versions.to.as_str();
    match (kind, cause) {
        (Kind::Upgrade, Cause::Failed) => {
            let undo = copies
                .staged
                .as_deref()
                .map(|s| (s, versions.from.as_str()));
            upgrade::roll_back(home, v, undo, true);
            journal(home, v, Step::RolledBack, why);
        }
        (Kind::Upgrade, Cause::Interrupted) => {
            let undo = copies
                .staged
                .as_deref()
                .map(|s| (s, versions.from.as_str()));
            upgrade::roll_back(home, v, undo, false);
            journal(
                home,
                v,
                Step::Recovered,
                &format!("undone, not skipped: {why}"),
            );
        }
        (Kind::Rollback, _) => {
            // Redo what `migrate --down` undid; `config.json.next` goes.
            if let Err(e) = upgrade::migrate(home, &copies.current, v, Direction::Up) {
                log(&format!("redoing the migrations of {}: {e}", versions.from));
            }
            let _ = std::fs::remove_file(home.join(upgrade::CONFIG_NEXT));
            journal(home, v, Step::RollbackFailed, why);
        }
    }
}

//! Crash recovery (DESIGN.md invariant 5): a supervisor that starts after its predecessor died
//! finishes or undoes what the journal says was in progress, and takes over the relay
//! generations that outlived it.
//!
//! The journal's last line decides:
//!
//! | last step | meaning | recovery |
//! | --- | --- | --- |
//! | `verified`, `migrated`, `swapped` | an upgrade before its health window passed | undo it: migrations down, staged files removed, and the version skipped: a version during whose change the supervisor died (a migration that hung until systemd restarted it, say) must not run again in a loop; the operator can still install it by hand |
//! | `committing` | the health window passed, the renames were under way | finish the commit |
//! | `rollback-started`, `rollback-migrated`, `rollback-swapped` | an operator's rollback before its commit | undo it: migrations up again, `config.json.next` removed |
//! | `rollback-committing` | the rollback's renames were under way | finish them |
//! | anything else | nothing in progress | nothing |
//!
//! Every step of both tables is idempotent, so a supervisor killed during recovery recovers
//! again. Surviving generations are listed in [`CHILDREN`]; the new supervisor takes over their
//! listening socket, so not one connection waits on a closed socket (under systemd from the
//! unit's file descriptor store, where its predecessor put it; else with `pidfd_getfd` from
//! them, [`adopt_listener`]), starts its own generation from the committed binary and, once that
//! is ready, has them drain and exit.

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::run::{log, warn};
use wireleap_home::journal::{Entry, Step};

use crate::upgrade::{self, journal};
use wireleap_home::migrate::Direction;

/// The pids of the supervisor's relay generations, rewritten whenever they change.
pub use wireleap_home::files::CHILDREN;

/// The journal's last readable line.
pub fn last_entry(home: &Path) -> Option<Entry> {
    wireleap_home::journal::last(home)
}

/// The version a change started from, as journaled by its first step (`from <version>`).
fn started_from(home: &Path, version: &str, first_step: Step) -> Option<String> {
    wireleap_home::journal::read(home)
        .into_iter()
        .rev()
        .find(|e| e.version == version && e.step == first_step)
        .and_then(|e| e.detail.strip_prefix("from ").map(str::to_owned))
}

/// Finishes or undoes what the journal says was in progress; returns what was done. Every
/// binary it runs is a verified copy: the staged release's against its statement, the current
/// one as [`crate::upgrade::installed_copy`] checks it.
pub fn journal_steps(home: &Path, relay: &Path) -> Option<String> {
    let last = last_entry(home)?;
    let v = last.version.as_str();
    let version = semver::Version::parse(v).ok();
    let staged = || {
        version
            .as_ref()
            .ok_or_else(|| format!("{v:?} is not a version"))
            .and_then(|version| upgrade::staged_copy(home, version))
    };
    let done = match last.step {
        Step::Verified | Step::Migrated | Step::Swapped => {
            // Skipped first: should this recovery itself be cut short (a down-migration that
            // outlasts systemd's patience), the version still never runs again by itself.
            upgrade::skip(home, v);
            // After `verified` the migration may have been running, killed mid-way with the
            // supervisor: the down-migrations run whenever the staged release still verifies
            // (each is a no-op when its up did not run).
            let from = started_from(home, v, Step::Verified);
            let copy = if from.is_some() {
                staged()
                    .map_err(|e| {
                        warn(&format!(
                            "the staged release of {v} cannot run its down-migrations: {e}"
                        ));
                        journal(home, v, Step::MigrateDownFailed, &e);
                    })
                    .ok()
            } else {
                None
            };
            let undo = copy.as_ref().zip(from.as_deref());
            upgrade::roll_back(home, v, undo, true);
            journal(
                home,
                v,
                Step::Recovered,
                "unfinished upgrade undone and skipped",
            );
            format!(
                "the upgrade to {v} was unfinished ({}): undone, and {v} is skipped",
                last.step
            )
        }
        Step::Committing | Step::CommitFailed => {
            let version = version.clone()?;
            let copy = match staged() {
                Ok(copy) => Some(copy),
                Err(e) => {
                    // Finished already only if `wireleap-relay` is that version by its own
                    // statement (the commit got past both renames).
                    let installed = upgrade::installed_copy(
                        home,
                        &home.join(upgrade::CURRENT),
                        &home.join(upgrade::CURRENT_STATEMENT),
                        None,
                    );
                    if !matches!(&installed, Ok((_, Some(iv))) if *iv == version) {
                        upgrade::roll_back(home, v, None, true);
                        journal(home, v, Step::Recovered, &format!("not committed: {e}"));
                        return Some(format!(
                            "the commit of {v} was under way, but the staged release no longer verifies ({e}): undone, and {v} is skipped"
                        ));
                    }
                    None
                }
            };
            match upgrade::commit(home, &version, copy.as_ref()) {
                Ok(()) => {
                    journal(home, v, Step::Committed, "finished after a restart");
                    format!("the commit of {v} was under way: finished")
                }
                Err(e) => format!("the commit of {v} was under way and could not be finished: {e}"),
            }
        }
        Step::RollbackStarted | Step::RollbackMigrated | Step::RollbackSwapped => {
            if last.step != Step::RollbackStarted {
                let redone = upgrade::installed_copy(
                    home,
                    relay,
                    &home.join(upgrade::CURRENT_STATEMENT),
                    None,
                )
                .and_then(|(current, _)| upgrade::migrate(home, &current, v, Direction::Up));
                if let Err(e) = redone {
                    log(&format!(
                        "redoing the migrations after an unfinished rollback: {e}"
                    ));
                }
            }
            let _ = std::fs::remove_file(home.join(upgrade::CONFIG_NEXT));
            journal(home, v, Step::Recovered, "unfinished rollback undone");
            format!("the rollback to {v} was unfinished ({}): undone", last.step)
        }
        Step::SupervisorTrial => {
            // The release's supervisor did not finish taking over (it, or its predecessor,
            // died): the binary that runs now is the old one, as it was.
            upgrade::skip(home, v);
            journal(
                home,
                v,
                Step::SupervisorRolledBack,
                "the new supervisor did not finish its trial",
            );
            format!(
                "the supervisor of {v} did not finish its trial: the previous one runs, and {v} is skipped"
            )
        }
        Step::RollbackCommitting => {
            let prev = home.join(upgrade::PREV);
            let copy = if prev.exists() {
                match upgrade::installed_copy(
                    home,
                    &prev,
                    &home.join(upgrade::PREV_STATEMENT),
                    version.as_ref(),
                ) {
                    Ok((copy, _)) => Some(copy),
                    Err(e) => {
                        journal(
                            home,
                            v,
                            Step::RollbackFailed,
                            &format!("not committed: {e}"),
                        );
                        let _ = std::fs::remove_file(home.join(upgrade::CONFIG_NEXT));
                        return Some(format!(
                            "the rollback to {v} was under way, but wireleap-relay.prev no longer verifies ({e}): not done"
                        ));
                    }
                }
            } else {
                None
            };
            match upgrade::commit_rollback(home, copy.as_ref()) {
                Ok(()) => {
                    journal(home, v, Step::RollbackCommitted, "finished after a restart");
                    format!("the rollback to {v} was under way: finished")
                }
                Err(e) => {
                    format!("the rollback to {v} was under way and could not be finished: {e}")
                }
            }
        }
        _ => return None,
    };
    Some(done)
}

/// Kills what the migration of a supervisor that died left running: every process of its
/// process group ([`upgrade::MIGRATION_GROUP`]) that still works in `home`. Returns how many.
pub fn leftover_migration(home: &Path) -> usize {
    let file = home.join(upgrade::MIGRATION_GROUP);
    let Some(group) = read_own(&file).and_then(|t| t.trim().parse::<u32>().ok()) else {
        return 0;
    };
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_owned());
    let mut killed = 0;
    for pid in crate::procfs::pids() {
        if crate::procfs::stat(pid).is_some_and(|s| s.pgrp == group)
            && crate::procfs::cwd(pid).is_some_and(|cwd| cwd == home)
            && let Ok(p) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed += 1;
        }
    }
    let _ = std::fs::remove_file(&file);
    if killed > 0 {
        warn(&format!(
            "killed {killed} process(es) left by the migration of a supervisor that died (process group {group})"
        ));
    }
    killed
}

/// Removes the partial downloads (`.<name>.*.part`) a relay killed mid-download left in `home`,
/// once they are an hour old (a download in progress is never that old: it is bounded far
/// below); returns how many.
pub fn stale_downloads(home: &Path) -> usize {
    let hour = std::time::Duration::from_secs(3600);
    let mut removed = 0;
    for entry in std::fs::read_dir(home).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = [upgrade::NEXT, upgrade::SUPERVISOR_NEXT]
            .iter()
            .any(|n| name.starts_with(&format!(".{n}.")) && name.ends_with(".part"));
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= hour);
        if ours && old && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
            removed += 1;
        }
    }
    if removed > 0 {
        log(&format!(
            "removed {removed} partial download(s) a relay left"
        ));
    }
    removed
}

/// One of the supervisor's own small files: a regular file this user owns (under privilege
/// separation the relay's user could otherwise plant a link, a FIFO or its own list there).
fn read_own(path: &Path) -> Option<String> {
    wireleap_home::durable::read_regular(path, 64 * 1024, Some(rustix::process::geteuid().as_raw()))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Writes the generations' pids (atomically; a failure is only logged).
pub fn record_children(home: &Path, pids: &[u32]) {
    let text = serde_json::json!(pids).to_string();
    if let Err(e) =
        wireleap_home::durable::write_atomic(&home.join(CHILDREN), text.as_bytes(), 0o644)
    {
        warn(&format!("could not write {CHILDREN}: {e}"));
    }
}

/// Adds one pid to [`CHILDREN`] at once (a generation just started: if the supervisor dies before
/// its loop rewrites the list, the successor must still find it).
pub fn add_child(home: &Path, pid: u32) {
    let mut pids: Vec<u32> = read_own(&home.join(CHILDREN))
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if !pids.contains(&pid) {
        pids.push(pid);
        record_children(home, &pids);
    }
}

/// Relay generations a previous supervisor left running in `home`: listed in [`CHILDREN`], alive,
/// and still a `start --fg` of a relay in `home` (so a reused pid is not mistaken for one).
pub fn orphans(home: &Path) -> Vec<u32> {
    let Some(text) = read_own(&home.join(CHILDREN)) else {
        return Vec::new();
    };
    let pids: Vec<u32> = serde_json::from_str(&text).unwrap_or_default();
    let own = std::process::id();
    pids.into_iter()
        .filter(|&pid| pid != own && is_relay_in(pid, home))
        .collect()
}

fn is_relay_in(pid: u32, home: &Path) -> bool {
    let args = crate::procfs::cmdline(pid);
    std::fs::canonicalize(home).is_ok_and(|home| crate::procfs::cwd(pid) == Some(home))
        && crate::procfs::alive(pid)
        && args.get(1..3) == Some(&[b"start".to_vec(), b"--fg".to_vec()][..])
}

/// The listening socket of a surviving generation: its descriptor 3 (the `LISTEN_FDS` socket),
/// copied with `pidfd_getfd`, if it is still a listening socket.
pub fn adopt_listener(pids: &[u32]) -> Option<(u32, OwnedFd)> {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    for &pid in pids {
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            continue;
        };
        let fd = pidfd_open(p, PidfdFlags::empty())
            .and_then(|pidfd| pidfd_getfd(&pidfd, 3, PidfdGetfdFlags::empty()));
        match fd {
            Ok(fd) if rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false) => {
                return Some((pid, fd));
            }
            Ok(_) => log(&format!("pid {pid}: descriptor 3 is no longer listening")),
            Err(e) => warn(&format!("could not take the listener of pid {pid}: {e}")),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_partial_downloads_of_the_staged_files_are_removed() {
        let home = tempfile::tempdir().unwrap();
        let make = |name: &str, age: std::time::Duration| {
            let path = home.path().join(name);
            let f = std::fs::File::create(&path).unwrap();
            f.set_modified(std::time::SystemTime::now() - age).unwrap();
            path
        };
        let hour = std::time::Duration::from_secs(3601);
        let old_relay = make(".wireleap-relay.next.Ab12.part", hour);
        let old_supervisor = make(".wireleap-relay-supervisor.next.Cd34.part", hour);
        let fresh = make(".wireleap-relay.next.Ef56.part", std::time::Duration::ZERO);
        let other = make(".config.json.x.part", hour);
        assert_eq!(stale_downloads(home.path()), 2);
        assert!(!old_relay.exists() && !old_supervisor.exists());
        assert!(fresh.exists(), "a download in progress");
        assert!(other.exists(), "not a staged file's");
    }
}

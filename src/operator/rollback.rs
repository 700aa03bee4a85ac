//! The operator's `rollback` (spec §3.7 with §10 #8): back to the previous version.
//!
//! With a supervisor running, it does the work: it starts `wireleap-relay.prev` beside the
//! running relay, hands over without dropping a connection, runs the migrations down, and
//! answers; this command prints the outcome. Without one, the rollback is done here, offline:
//! an unsupervised daemon is stopped, `wireleap-relay.prev` is renamed over `wireleap-relay` and
//! `config.json.prev` over `config.json` (if present), no `.next` file is left behind (unlike the
//! reference, whose leftover `config.json.next` would override the restored config), and a
//! daemon that was running is started again. Every step is printed. Who calls it: `main`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wireleap_home::control::{self as ctl, Request};
use wireleap_home::files as sv;

use super::control;
use super::supervised::{self, SUPERVISOR_BIN};
use crate::home::files;
use crate::lifecycle::pidfile::{self, State};

use crate::upgrader::handover::SUPERVISOR_WAIT;
/// How long `<binary> version` may take.
const VERSION_WAIT: Duration = Duration::from_secs(5);
/// Files an offline rollback removes: a half-done upgrade's staged release and migrated config.
const LEFTOVERS: [&str; 3] = [sv::NEXT, sv::NEXT_STATEMENT, files::CONFIG_NEXT];

/// Why an offline rollback failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no previous version.
    #[error("nothing to roll back to: {} does not exist", .0.display())]
    NoPrevious(PathBuf),
    /// A rename or removal failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The running daemon could not be stopped or started again.
    #[error(transparent)]
    Control(#[from] control::Error),
}

/// `rollback`: through the supervisor when it runs, else offline. Returns the exit code.
pub fn run(home: &Path) -> u8 {
    if let State::Running(spid) = supervised::supervisor_state(home) {
        return through_supervisor(home, spid);
    }
    match offline(home) {
        Ok(()) => crate::exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            crate::exit::FAILURE
        }
    }
}

fn through_supervisor(home: &Path, spid: i32) -> u8 {
    crate::out!(
        "asking {SUPERVISOR_BIN} (pid {spid}) to roll back: it starts the previous version beside the running one and hands over..."
    );
    match ctl::call(home, &Request::Rollback { recall: None }, SUPERVISOR_WAIT) {
        Ok(reply) if reply.ok => {
            let to = reply.version.as_deref().unwrap_or("the previous version");
            match &reply.from {
                Some(from) => crate::out!("rolled back to wireleap-relay {to} (was {from})"),
                None => crate::out!("rolled back to wireleap-relay {to}"),
            }
            crate::exit::OK
        }
        Ok(reply) => {
            let why = reply.error.as_deref().unwrap_or("the supervisor refused");
            eprintln!("error: rollback failed: {why}");
            crate::exit::FAILURE
        }
        Err(e) => {
            eprintln!(
                "error: no answer from {SUPERVISOR_BIN}: {e}; `wireleap-relay status` tells which version runs"
            );
            crate::exit::FAILURE
        }
    }
}

/// The offline rollback (no supervisor runs).
///
/// # Errors
/// [`Error::NoPrevious`] (nothing changed), [`Error::Io`] (the step that failed is named),
/// [`Error::Control`] when a running daemon cannot be stopped or started again.
pub fn offline(home: &Path) -> Result<(), Error> {
    let current = home.join(sv::CURRENT);
    let prev = home.join(sv::PREV);
    if !prev.exists() {
        return Err(Error::NoPrevious(prev));
    }
    let was_running = matches!(pidfile::state(&home.join(files::PID)), State::Running(_));
    if was_running {
        // Spec §3.7 step 2: the old binary must not run on.
        control::stop(home)?;
    }
    // The home is ours while the files move: a supervisor or relay starting meanwhile (systemd's
    // restart, say) is refused until the rollback is done.
    let instance = wireleap_home::instance::Instance::acquire(home, "wireleap-relay rollback")
        .map_err(|why| Error::Io {
            what: why,
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        })?;
    let from = binary_version(&current);
    let to = binary_version(&prev);
    // The running binary undoes its own migrations (the ledger schema; the config comes back
    // from config.json.prev below). A failed `migrate` undid its steps: nothing changed.
    if let Some(to) = &to {
        wireleap_home::migrate::run(
            home,
            &current,
            to,
            wireleap_home::migrate::Direction::Down,
            wireleap_home::migrate::MIGRATE_TIMEOUT,
        )
        .map_err(|e| Error::Io {
            what: format!("could not undo the migrations down to {to}"),
            source: std::io::Error::other(e),
        })?;
        crate::out!("migrations undone down to {to}");
    }
    std::fs::rename(&prev, &current).map_err(|source| Error::Io {
        what: format!(
            "could not rename {} to {}",
            prev.display(),
            current.display()
        ),
        source,
    })?;
    crate::out!(
        "restored {} (version {}) from {} (was {})",
        sv::CURRENT,
        to.as_deref().unwrap_or("unknown"),
        sv::PREV,
        from.as_deref().unwrap_or("unknown"),
    );
    let config_prev = home.join(files::CONFIG_PREV);
    if config_prev.exists() {
        let config = home.join(files::CONFIG);
        std::fs::rename(&config_prev, &config).map_err(|source| Error::Io {
            what: format!(
                "could not rename {} to {}",
                config_prev.display(),
                config.display()
            ),
            source,
        })?;
        crate::out!("restored {} from {}", files::CONFIG, files::CONFIG_PREV);
    } else {
        crate::out!(
            "{} unchanged (there is no {})",
            files::CONFIG,
            files::CONFIG_PREV
        );
    }
    for name in LEFTOVERS {
        match std::fs::remove_file(home.join(name)) {
            Ok(()) => crate::out!("removed {name}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: format!("could not remove {name}"),
                    source,
                });
            }
        }
    }
    if let Ok(dir) = std::fs::File::open(home) {
        let _ = dir.sync_all();
    }
    if let Some(to) = &to
        && let Err(e) = wireleap_home::journal::append(
            home,
            to,
            wireleap_home::journal::Step::RollbackCommitted,
            &format!("offline, from {}", from.as_deref().unwrap_or("unknown")),
        )
    {
        eprintln!("warning: could not write the upgrade journal: {e}");
    }
    drop(instance);
    if was_running {
        control::start(home, &current)?;
    }
    Ok(())
}

/// What `<binary> version` prints (first line), if it answers within [`VERSION_WAIT`].
fn binary_version(binary: &Path) -> Option<String> {
    let mut child = Command::new(binary)
        .arg("version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + VERSION_WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    out.lines()
        .next()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_without_a_previous_version_changes_nothing() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(sv::CURRENT), "current").unwrap();
        let err = offline(home.path()).unwrap_err();
        assert!(matches!(err, Error::NoPrevious(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(home.path().join(sv::CURRENT)).unwrap(),
            "current"
        );
    }

    #[test]
    fn offline_restores_binary_and_config_and_leaves_no_next_files() {
        let home = tempfile::tempdir().unwrap();
        let put = |name: &str, text: &str| std::fs::write(home.path().join(name), text).unwrap();
        put(sv::CURRENT, "new binary");
        put(sv::PREV, "old binary");
        put(files::CONFIG, "new config");
        put(files::CONFIG_PREV, "old config");
        put(files::CONFIG_NEXT, "migrated");
        put(sv::NEXT, "staged");
        offline(home.path()).unwrap();
        let read = |name: &str| std::fs::read_to_string(home.path().join(name)).ok();
        assert_eq!(read(sv::CURRENT).as_deref(), Some("old binary"));
        assert_eq!(read(files::CONFIG).as_deref(), Some("old config"));
        for gone in [sv::PREV, files::CONFIG_PREV, files::CONFIG_NEXT, sv::NEXT] {
            assert_eq!(read(gone), None, "{gone} left behind");
        }
    }
}

//! The commands that control a daemon from outside: `start` (background), `stop`, `status`,
//! `reload` and `restart` (spec §1.2). Messages and exit codes are the reference's, so scripts
//! written for the Go relay keep working; `start` is stricter: it reports success only once the
//! daemon said it is ready, and otherwise prints why it is not.
//!
//! Two ways to run: when `wireleap-relay-supervisor` sits beside the executable, `start` runs it
//! in the background and the other commands act on it ([`super::supervised`]); without it, the
//! relay daemonizes itself as the reference does. `stop`, `reload`, `status` and `restart` pick
//! the supervised path whenever the supervisor's pid file names a live process.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::supervised;
use crate::home::files;
use crate::lifecycle::notify::{self, Event};
use crate::lifecycle::pidfile::{self, State};

/// How long `start` waits for the daemon to report ready before giving up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// `stop`: poll interval and count after SIGTERM before SIGKILL (3 s, spec §1.2).
const STOP_POLL: Duration = Duration::from_millis(100);
const STOP_POLLS: u32 = 30;
/// `restart`: how long to wait for the old daemon to vanish (5 s, spec §1.2).
const RESTART_WAIT: Duration = Duration::from_secs(5);

/// Why a control command failed. The message is what the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `start` while a daemon runs.
    #[error("wireleap-relay daemon is already running! (pid {0})")]
    AlreadyRunning(i32),
    /// The daemon exited before it was ready; the log tail says why.
    #[error("wireleap-relay is not running, {} follows:\n{log}", path.display())]
    DiedAtStart {
        /// The log file.
        path: PathBuf,
        /// What the daemon wrote during this start.
        log: String,
    },
    /// The daemon did not report ready in time; it was stopped.
    #[error("wireleap-relay did not become ready within {0:?} and was stopped; see {1}")]
    NotReady(Duration, String),
    /// No pid file or an unreadable one.
    #[error("could not read {}: {source}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pid file names no live process.
    #[error("wireleap-relay is not running (pid {0} from the pid file is gone)")]
    NotRunning(i32),
    /// A signal could not be delivered.
    #[error("could not signal pid {pid}: {source}")]
    Signal {
        /// The daemon.
        pid: i32,
        /// Why.
        source: nix::Error,
    },
    /// The daemon survived SIGKILL.
    #[error("wireleap-relay (pid {0}) is still running after SIGKILL")]
    Unkillable(i32),
    /// `restart` waited for the old daemon in vain.
    #[error("timed out waiting for wireleap-relay to stop")]
    StopTimeout,
    /// Spawning or log handling failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// `status`: prints the reference's line, then the details below it (the relay's enrollment,
/// sharetokens and upgrades; a supervised relay's supervisor); with `json` one JSON object
/// instead (`docs/status.md`). Returns the exit code (0 running, 1 not running, 2 unreadable).
/// A home directory that does not exist is not created.
pub fn status(home: &Path, json: bool) -> u8 {
    let now = std::time::SystemTime::now();
    if !home.is_dir() {
        if json {
            crate::out!(
                "{}",
                serde_json::json!({"running": false, "pid": null, "error": format!("no home directory {}", home.display())})
            );
        } else {
            crate::out!(
                "wireleap-relay is not running (there is no home directory {})",
                home.display()
            );
        }
        return 1;
    }
    let supervisor = supervised::supervisor_state(home);
    if let State::Running(spid) = supervisor {
        return supervised::status(home, spid, json);
    }
    let state = pidfile::state(&home.join(files::PID));
    if json {
        let (running, pid, code) = match &state {
            State::Running(pid) => (true, Some(*pid), 0),
            State::Unreadable(_) => (false, None, 2),
            _ => (false, None, 1),
        };
        crate::out!("{}", super::report::json(home, running, pid, None, now));
        return code;
    }
    match state {
        // The supervisor died without cleaning up (killed) and took no relay with it to report.
        State::Absent if matches!(supervisor, State::Stale(_)) => {
            crate::out!(
                "wireleap-relay is not running (might have crashed, see {})",
                files::LOG
            );
            1
        }
        State::Running(pid) => {
            crate::out!("wireleap-relay is running, pid {pid}");
            crate::outp!(
                "{}",
                super::report::lines(super::report::relay_state(home, Some(pid)).as_ref(), now)
            );
            0
        }
        State::Absent => {
            crate::out!("wireleap-relay is not running");
            1
        }
        State::Stale(_) => {
            crate::out!(
                "wireleap-relay is not running (might have crashed, see {})",
                files::LOG
            );
            1
        }
        State::Unreadable(e) => {
            crate::out!("could not read wireleap-relay status");
            eprintln!("{e}");
            2
        }
    }
}

/// `start` without `--fg`: with `wireleap-relay-supervisor` beside `exe`, runs it in the
/// background ([`supervised::start`]); otherwise spawns `<exe> start --fg` with its output
/// appended to the log. Either way it waits until the relay reports ready, exits, or a timeout
/// passes. Returns the relay's pid.
///
/// # Errors
/// [`Error::AlreadyRunning`], [`Error::DiedAtStart`] with the log of this attempt,
/// [`Error::NotReady`], or [`Error::Io`].
pub fn start(home: &Path, exe: &Path) -> Result<i32, Error> {
    if let Some(supervisor) = supervised::supervisor_beside(exe) {
        return supervised::start(home, exe, &supervisor);
    }
    if let State::Running(pid) = pidfile::state(&home.join(files::PID)) {
        return Err(Error::AlreadyRunning(pid));
    }
    let (log, log_path, offset) = open_log(home)?;
    let listener =
        notify::Listener::bind().map_err(io_err("could not create the readiness socket"))?;
    let mut child = Command::new(exe)
        .args(["start", "--fg"])
        .current_dir(home)
        .env(notify::NOTIFY_SOCKET, listener.name())
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(io_err("could not duplicate the log handle"))?,
        )
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal that ran `start` must not reach it.
        .process_group(0)
        .spawn()
        .map_err(io_err(format!("could not run {}", exe.display())))?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    crate::out!(
        "starting wireleap-relay with pid {pid}, writing to {}...",
        log_path.display()
    );
    wait_ready(&listener, &mut child, &log_path, offset)?;
    crate::out!("successfully spawned wireleap-relay daemon (pid {pid})");
    Ok(pid)
}

fn wait_ready(
    listener: &notify::Listener,
    child: &mut Child,
    log_path: &Path,
    offset: u64,
) -> Result<(), Error> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let events = listener
            .recv(Duration::from_millis(100))
            .map_err(io_err("could not read the readiness socket"))?;
        if events.contains(&Event::Ready) {
            return Ok(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(Error::DiedAtStart {
                path: log_path.to_owned(),
                log: read_from(log_path, offset),
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::NotReady(
                START_TIMEOUT,
                log_path.display().to_string(),
            ));
        }
    }
}

/// Opens `wireleap-relay.log` for appending (created 0644, as the reference does); returns it,
/// its path, and its length now, from where [`read_from`] reads what a start logged.
pub(super) fn open_log(home: &Path) -> Result<(File, PathBuf, u64), Error> {
    let path = home.join(files::LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&path)
        .map_err(io_err(format!("could not open {}", path.display())))?;
    let offset = log
        .metadata()
        .map_err(io_err("could not stat the log"))?
        .len();
    Ok((log, path, offset))
}

pub(super) fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// `stop`: SIGTERM, wait up to 3 s, then SIGKILL. Returns the pid that was stopped. A
/// supervised relay is stopped through its supervisor ([`supervised::stop`]).
///
/// # Errors
/// [`Error::PidFile`], [`Error::NotRunning`] (the stale pid file is removed),
/// [`Error::Signal`] or [`Error::Unkillable`].
pub fn stop(home: &Path) -> Result<i32, Error> {
    match supervised::supervisor_state(home) {
        State::Running(spid) => return supervised::stop(home, spid),
        State::Stale(spid) => pidfile::remove_if_own(&home.join(supervised::SUPERVISOR_PID), spid),
        State::Absent | State::Unreadable(_) => {}
    }
    let path = home.join(files::PID);
    let pid = running_pid(&path)?;
    signal(pid, Signal::SIGTERM)?;
    for _ in 0..STOP_POLLS {
        std::thread::sleep(STOP_POLL);
        if !pidfile::is_alive(pid) {
            pidfile::remove_if_own(&path, pid);
            crate::out!("stopped wireleap-relay daemon (was pid {pid})");
            return Ok(pid);
        }
    }
    signal(pid, Signal::SIGKILL)?;
    // SIGKILL is asynchronous; give the kernel a moment to tear the process down.
    for _ in 0..10 {
        std::thread::sleep(STOP_POLL);
        if !pidfile::is_alive(pid) {
            pidfile::remove_if_own(&path, pid);
            crate::out!("stopped wireleap-relay daemon (was pid {pid}, killed after 3s)");
            return Ok(pid);
        }
    }
    Err(Error::Unkillable(pid))
}

/// `reload`: SIGUSR1 to the daemon (to the supervisor of a supervised one, which passes it on).
///
/// # Errors
/// As [`stop`] for a missing daemon, or [`Error::Signal`].
pub fn reload(home: &Path) -> Result<i32, Error> {
    if let State::Running(spid) = supervised::supervisor_state(home) {
        return supervised::reload(home, spid);
    }
    let pid = running_pid(&home.join(files::PID))?;
    signal(pid, Signal::SIGUSR1)?;
    crate::out!("reloaded wireleap-relay daemon (pid {pid})");
    Ok(pid)
}

/// `restart`: `stop` if running, wait for the pid to vanish, then `start`.
///
/// # Errors
/// Any error of [`stop`] other than "not running", [`Error::StopTimeout`], or any of [`start`].
pub fn restart(home: &Path, exe: &Path) -> Result<i32, Error> {
    match stop(home) {
        Ok(pid) => {
            let deadline = Instant::now() + RESTART_WAIT;
            while pidfile::is_alive(pid) {
                if Instant::now() >= deadline {
                    return Err(Error::StopTimeout);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Err(Error::NotRunning(_)) => {}
        Err(Error::PidFile { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    start(home, exe)
}

fn running_pid(path: &Path) -> Result<i32, Error> {
    match pidfile::state(path) {
        State::Running(pid) => Ok(pid),
        State::Stale(pid) => {
            let _ = std::fs::remove_file(path);
            Err(Error::NotRunning(pid))
        }
        State::Absent => Err(Error::PidFile {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file (is the relay running?)",
            ),
        }),
        State::Unreadable(source) => Err(Error::PidFile {
            path: path.to_owned(),
            source,
        }),
    }
}

pub(super) fn signal(pid: i32, sig: Signal) -> Result<(), Error> {
    kill(Pid::from_raw(pid), sig).map_err(|source| Error::Signal { pid, source })
}

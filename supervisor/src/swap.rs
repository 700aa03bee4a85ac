//! The supervisor replaces itself with the release's own supervisor, on trial.
//!
//! After a release's relay is committed, a release that carries its supervisor (verified with
//! the relay by one statement, [`crate::upgrade`]) takes over from the running one:
//!
//! 1. the old supervisor journals `supervisor-trial` and starts the new one from its verified
//!    copy, handing it the home's lock (the same open file) and a pipe; should the old one die
//!    before the new one took over, the new one gives up too (never two supervisors);
//! 2. the new one takes over as a restarted supervisor would ([`crate::recover`]): it binds the
//!    control and readiness sockets, takes the listening socket from the running generations,
//!    starts its own generation, and once that serves has the old generations drain;
//! 3. then it tells systemd it is the main process (`MAINPID=`), says so on the pipe, and the
//!    old supervisor exits without touching the generations;
//! 4. the new one installs its own bytes as `wireleap-relay-supervisor` (the path the old one
//!    ran from, which the unit names) and journals `supervisor-committed`.
//!
//! A new supervisor that exits, or does not take over within the trial, is killed; the old one
//! journals `supervisor-rolled-back`, skips the version, and starts itself again (same pid:
//! systemd sees nothing), taking over whatever generations run then. A new one that dies after
//! taking over but before installing itself leaves the old binary in place: systemd (or an
//! operator) starts the old one, which recovers from the journal's `supervisor-trial` the same
//! way. Nothing installs a supervisor that never served.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use command_fds::FdMapping;
use wireleap_home::files::{SUPERVISOR_BIN, SUPERVISOR_INSTALLED_ENV, TAKEOVER_ENV};
use wireleap_home::journal::Step;

use crate::run::{log, warn};
use crate::verified::Verified;

/// How long the new supervisor has to take over by default.
pub const TRIAL: Duration = Duration::from_secs(60);
/// The descriptors the new supervisor gets: the pipe it reports on, the lock.
const PIPE_FD: i32 = 5;
const LOCK_FD: i32 = 6;
const LISTENER_FD: i32 = 7;

/// The listening socket a supervisor hands to the one that follows it (its descriptor number):
/// whatever it came from (systemd's socket activation included), the same socket serves on.
pub const LISTENER_ENV: &str = "WIRELEAP_SUPERVISOR_LISTENER";

/// Where this supervisor is installed, if it runs from `home` (only then does a commit of its
/// successor reach the binary that runs next): the path its predecessor handed over
/// ([`SUPERVISOR_INSTALLED_ENV`], when it runs from a verified copy itself), else its own.
#[must_use]
pub fn installed_path(home: &Path) -> Option<PathBuf> {
    let exe = match std::env::var_os(SUPERVISOR_INSTALLED_ENV) {
        Some(path) => PathBuf::from(path),
        None => std::fs::canonicalize(std::env::current_exe().ok()?).ok()?,
    };
    let home = std::fs::canonicalize(home).ok()?;
    (exe.parent() == Some(home.as_path())
        && exe.file_name() == Some(std::ffi::OsStr::new(SUPERVISOR_BIN)))
    .then_some(exe)
}

/// How a trial ended.
#[derive(Debug)]
pub enum Trial {
    /// The new supervisor took over: this one exits now, touching nothing.
    TookOver,
    /// It failed (journaled, skipped, killed): this one starts itself again.
    Failed(String),
    /// It could not be started (nothing changed; nothing skipped): this one serves on.
    NotStarted(String),
    /// A stop arrived during the trial: the new one was killed (not skipped); this one starts
    /// itself again and then stops.
    Stopped,
}

/// What the supervisor hands over: the home's lock and its listening socket.
#[derive(Debug, Clone, Copy)]
pub struct Handed<'a> {
    /// The home's lock.
    pub lock: BorrowedFd<'a>,
    /// The listening socket.
    pub listener: BorrowedFd<'a>,
}

/// Runs the new supervisor `copy` (the release `version`) on trial, at most `bound`.
/// `tend` is called on every turn of the wait: it pings systemd's watchdog, and says whether a
/// stop was asked for.
#[must_use]
pub fn hand_over(
    home: &Path,
    version: &str,
    copy: &Verified,
    handed: Handed<'_>,
    bound: Duration,
    notify_socket: Option<&str>,
    tend: &mut dyn FnMut() -> bool,
) -> Trial {
    let Handed { lock, listener } = handed;
    let fail = |why: String| {
        warn(&format!(
            "the release's supervisor ({version}) failed its trial: {why}; this one serves on and {version} is skipped"
        ));
        crate::upgrade::journal(home, version, Step::SupervisorRolledBack, &why);
        crate::upgrade::skip(home, version);
        Trial::Failed(why)
    };
    let not_started = |why: String| {
        warn(&format!(
            "the release's supervisor ({version}) is not started: {why}; this one serves on"
        ));
        Trial::NotStarted(why)
    };
    let Some(installed) = installed_path(home) else {
        return not_started(
            "this supervisor does not run from its home directory, where its successor would be installed"
                .into(),
        );
    };
    let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return not_started(format!("a pipe: {e}")),
    };
    let lock = match lock.try_clone_to_owned() {
        Ok(l) => l,
        Err(e) => return not_started(format!("duplicating the lock: {e}")),
    };
    let listener = match listener.try_clone_to_owned() {
        Ok(l) => l,
        Err(e) => return not_started(format!("duplicating the listener: {e}")),
    };
    let mut cmd = match copy.command_as_supervisor(vec![
        FdMapping {
            parent_fd: write,
            child_fd: PIPE_FD,
        },
        FdMapping {
            parent_fd: lock,
            child_fd: LOCK_FD,
        },
        FdMapping {
            parent_fd: listener,
            child_fd: LISTENER_FD,
        },
    ]) {
        Ok(c) => c,
        Err(e) => return not_started(e),
    };
    cmd.args(std::env::args_os().skip(1))
        // It runs from a nameless copy: it cannot find its home by its own path.
        .env(wireleap_home::files::HOME_ENV, home)
        .env(
            TAKEOVER_ENV,
            format!("{PIPE_FD}:{LOCK_FD}:{}", std::process::id()),
        )
        .env(SUPERVISOR_INSTALLED_ENV, &installed)
        .env(LISTENER_ENV, LISTENER_FD.to_string())
        // systemd's watchdog is this process's until the new one is the main process.
        .env_remove("WATCHDOG_PID");
    crate::failpoint::step(home, version, Step::SupervisorTrial, "");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("could not be started: {e}")),
    };
    log(&format!(
        "the release's supervisor ({version}, pid {}) takes over on trial ({bound:?})",
        child.id()
    ));
    drop(cmd);
    let mut read = std::fs::File::from(read);
    let _ = nix::fcntl::fcntl(
        read.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let deadline = Instant::now() + bound;
    let mut said = Vec::new();
    let mut reported = |said: &mut Vec<u8>| {
        let mut buf = [0u8; 64];
        while let Ok(n) = read.read(&mut buf) {
            if n == 0 {
                break;
            }
            said.extend_from_slice(&buf[..n]);
        }
        said.starts_with(b"took over\n")
    };
    let outcome = loop {
        let stop = tend();
        // The report first: a new supervisor that took over is not judged by what follows.
        if reported(&mut said) {
            break Ok(());
        }
        if stop {
            break Err(None);
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(Some(format!("it exited ({status})")));
        }
        if Instant::now() >= deadline {
            break Err(Some(format!("it did not take over within {bound:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match outcome {
        Ok(()) => {
            // systemd follows the new one from now on (only the main process may say so).
            crate::notify::to_systemd(notify_socket, &format!("MAINPID={}", child.id()));
            log(&format!(
                "the release's supervisor (pid {}) took over; this one exits",
                child.id()
            ));
            Trial::TookOver
        }
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            match why {
                Some(why) => fail(why),
                None => {
                    warn(
                        "stopped during the supervisor's trial: the new one is killed, not skipped",
                    );
                    crate::upgrade::journal(
                        home,
                        version,
                        Step::SupervisorRolledBack,
                        "stopped during the trial",
                    );
                    Trial::Stopped
                }
            }
        }
    }
}

/// Starts this supervisor again, in place (same pid): after a failed trial it takes over from
/// scratch, as after a crash. Returns only if that fails.
pub fn restart_self(stop_after: bool, listener: BorrowedFd<'_>) -> std::io::Error {
    use std::os::fd::AsRawFd as _;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(std::env::args_os().skip(1));
    // The same listening socket serves on across the restart.
    if nix::fcntl::fcntl(
        listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .is_ok()
    {
        cmd.env(LISTENER_ENV, listener.as_raw_fd().to_string());
    }
    if stop_after {
        cmd.env(STOP_AFTER_ENV, "1");
    }
    cmd.exec()
}

/// Set for a supervisor started again after a stop arrived during a trial: it takes over and
/// then stops (the stop was asked of it).
pub const STOP_AFTER_ENV: &str = "WIRELEAP_SUPERVISOR_STOP_AFTER_START";

/// What a supervisor started on trial was handed ([`TAKEOVER_ENV`]).
#[derive(Debug)]
pub struct Takeover {
    pipe: Option<std::fs::File>,
    /// The home's lock, held.
    pub lock: Option<OwnedFd>,
    installed: Option<PathBuf>,
    /// The predecessor: if it dies before this one took over, this one gives up (never two
    /// supervisors after a crash during the trial); once it is gone after, this one installs
    /// itself.
    parent: i32,
}

impl Takeover {
    /// The handover this process was started for, if any.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        let spec = std::env::var(TAKEOVER_ENV).ok()?;
        let mut parts = spec.split(':');
        let (pipe, lock, parent): (i32, i32, i32) = (
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        if pipe == lock || !passed(pipe) || !passed(lock) {
            return None;
        }
        let (pipe, lock) = (adopt_one(pipe), adopt_one(lock));
        for fd in [&pipe, &lock] {
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
        Some(Self {
            pipe: Some(std::fs::File::from(pipe)),
            lock: Some(lock),
            installed: std::env::var_os(SUPERVISOR_INSTALLED_ENV).map(PathBuf::from),
            parent,
        })
    }

    /// This supervisor serves: it says so to its predecessor, which then makes it systemd's
    /// main process and exits.
    pub fn took_over(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"took over\n");
            log("took over from the previous supervisor; it hands systemd over and exits");
        }
    }

    /// Whether it has yet to report.
    #[must_use]
    pub fn pending(&self) -> bool {
        self.pipe.is_some()
    }

    fn parent_gone(&self) -> bool {
        rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()) != self.parent
    }

    /// Whether the predecessor died before this one took over (it must then give up).
    #[must_use]
    pub fn orphaned(&self) -> bool {
        self.pending() && self.parent_gone()
    }

    /// Once the predecessor has accepted (it exited after the report), this supervisor
    /// installs itself where that one ran from, and journals the commit. Call on every turn.
    pub fn commit_when_accepted(&mut self, home: &Path) {
        if self.pending() || self.installed.is_none() || !self.parent_gone() {
            return;
        }
        let Some(path) = self.installed.take() else {
            return;
        };
        let release = crate::recover::last_entry(home)
            .filter(|e| e.step == Step::SupervisorTrial)
            .map_or_else(|| env!("CARGO_PKG_VERSION").to_owned(), |e| e.version);
        let installed = std::fs::File::open("/proc/self/exe")
            .and_then(|mut me| wireleap_home::durable::write_atomic_from(&path, &mut me, 0o755));
        match installed {
            Ok(()) => {
                log(&format!("installed as {}", path.display()));
                crate::failpoint::step(home, &release, Step::SupervisorCommitted, "");
            }
            Err(e) => warn(&format!(
                "took over, but could not install this supervisor as {}: {e}; the previous binary stays for the next start",
                path.display()
            )),
        }
    }
}
/// The listening socket a predecessor handed over ([`LISTENER_ENV`]), if it is one.
#[must_use]
pub fn inherited_listener() -> Option<std::net::TcpListener> {
    let fd: i32 = std::env::var(LISTENER_ENV).ok()?.parse().ok()?;
    if !passed(fd) {
        return None;
    }
    let fd = adopt_one(fd);
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    rustix::net::sockopt::socket_acceptconn(&fd)
        .unwrap_or(false)
        .then(|| std::net::TcpListener::from(fd))
}

/// Whether `fd` may be a descriptor a predecessor passed: open, not a standard stream.
fn passed(fd: i32) -> bool {
    fd > 2 && std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok()
}

/// Takes ownership of a descriptor a predecessor passed ([`passed`]).
#[allow(unsafe_code)]
fn adopt_one(fd: i32) -> OwnedFd {
    // SAFETY: the predecessor passed this descriptor to this process for one purpose only
    // (TAKEOVER_ENV or LISTENER_ENV names it); it is open (checked by `passed`), each is taken
    // once, and nothing else in this process owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

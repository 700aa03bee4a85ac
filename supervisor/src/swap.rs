//! The supervisor replaces itself with the release's own supervisor, in place and on trial.
//!
//! After a release's relay is committed, a release that carries its supervisor (verified with
//! the relay by one statement, [`crate::upgrade`]) replaces the running one in the same process:
//!
//! 0. while the release is prepared, its supervisor runs once with `--preflight` (bounded by
//!    the trial): one that crashes, hangs or refuses the home there never runs as the
//!    supervisor; the release is refused and skipped ([`preflight`]);
//! 1. the supervisor journals `supervisor-trial` and starts a guardian: its own binary, given
//!    the listening socket and the read end of a pipe;
//! 2. it execs the release's supervisor from its verified copy ([`exec_successor`]): same pid,
//!    so it stays systemd's main process and the relay generations stay its children; the
//!    home's lock and the listening socket stay open across the exec. The new image takes over
//!    as a restarted supervisor would ([`crate::recover`]): it binds the control and readiness
//!    sockets again, starts its own generation on the same socket, and once that serves has
//!    the old generations drain;
//! 3. then it says so on the pipe and the guardian exits; the new image installs its own bytes
//!    as `wireleap-relay-supervisor` (the path the unit names) and journals
//!    `supervisor-committed`.
//!
//! The guardian ([`guard`]) ends a trial that fails: when the new image exits, or does not take
//! over within the trial, it kills it, journals `supervisor-rolled-back` and skips the version.
//! Under systemd, the death of the main process has the unit started again, with the unit's
//! binary, which changes only at the commit: the old supervisor, which recovers from the
//! journal and takes over the generations still serving. Without systemd the guardian execs the
//! old supervisor itself. A supervisor killed at any step is replaced the same way. Nothing
//! installs a supervisor that never served.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt as _, FdMapping};
use wireleap_home::files::{SUPERVISOR_BIN, SUPERVISOR_INSTALLED_ENV, TAKEOVER_ENV};
use wireleap_home::journal::Step;

use crate::run::{log, warn};
use crate::verified::Verified;

/// How long the new supervisor has to take over by default.
pub const TRIAL: Duration = Duration::from_secs(60);
/// The descriptors handed across the exec (and to the guardian): the pipe, the lock, the
/// listening socket.
const PIPE_FD: i32 = 5;
const LOCK_FD: i32 = 6;
const LISTENER_FD: i32 = 7;

/// The listening socket a supervisor hands to the one that follows it (its descriptor number):
/// whatever it came from (systemd's socket activation included), the same socket serves on.
pub const LISTENER_ENV: &str = "WIRELEAP_SUPERVISOR_LISTENER";

/// Set for a guardian: `<pipe fd>:<pid on trial>:<trial in ms>:<version>`.
pub const GUARD_ENV: &str = "WIRELEAP_SUPERVISOR_GUARD";

/// The trial, in milliseconds (set once at start, read by the prepare job's preflight).
static TRIAL_MS: AtomicU64 = AtomicU64::new(60_000);

/// Sets how long a release's supervisor has to pass its preflight and to take over.
pub fn set_trial(bound: Duration) {
    TRIAL_MS.store(
        u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

fn trial() -> Duration {
    Duration::from_millis(TRIAL_MS.load(Ordering::Relaxed))
}

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

/// Runs the release's supervisor `copy` once with this one's arguments and `--preflight`,
/// bounded by the trial: it must parse them, find and check the home, and exit 0. Returns what
/// it printed.
///
/// # Errors
/// Why it failed, and whether that is the release's fault (it crashed, hung, or refused the
/// arguments: skip it) or not (it could not be started here, or refused the home as this one
/// would now: the operator's to fix; the release installs once fixed).
pub fn preflight(home: &Path, copy: &Verified) -> Result<String, (bool, String)> {
    let mut cmd = copy
        .command_as_supervisor(Vec::new())
        .map_err(|e| (false, e))?;
    cmd.args(std::env::args_os().skip(1))
        .arg("--preflight")
        .env(wireleap_home::files::HOME_ENV, home);
    let bound = trial();
    let out = wireleap_home::migrate::bounded(cmd, bound).map_err(|e| {
        let fault = !e.starts_with("could not be started");
        (fault, format!("its preflight {e} (the trial is {bound:?})"))
    })?;
    if !out.status.success() {
        let fault = out.status.code() != Some(i32::from(crate::exit::CONFIG));
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.trim();
        return Err((
            fault,
            format!(
                "it exited ({}) in its preflight{}",
                out.status,
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {}", said.lines().last().unwrap_or_default())
                }
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Why [`exec_successor`] returned.
#[derive(Debug)]
pub enum NotSwapped {
    /// Nothing changed: this supervisor serves on.
    NotStarted(String),
    /// The exec failed after its descriptors were arranged: this supervisor must start again.
    ExecFailed(String),
}

/// What the supervisor hands over: the home's lock and its listening socket.
#[derive(Debug, Clone, Copy)]
pub struct Handed<'a> {
    /// The home's lock.
    pub lock: BorrowedFd<'a>,
    /// The listening socket.
    pub listener: BorrowedFd<'a>,
}

/// Replaces this process's image with the release's supervisor `copy` (the release `version`),
/// on trial under a guardian. Returns only when that could not begin, with why; if the exec
/// itself failed, this process's descriptors 4 to 7 may have been replaced: the caller starts
/// it again ([`restart_self`]).
#[must_use]
pub fn exec_successor(
    home: &Path,
    version: &str,
    copy: &Verified,
    handed: Handed<'_>,
) -> NotSwapped {
    let Handed { lock, listener } = handed;
    let not_started = |why: String| {
        warn(&format!(
            "the release's supervisor ({version}) is not started: {why}; this one serves on"
        ));
        NotSwapped::NotStarted(why)
    };
    let Some(installed) = installed_path(home) else {
        return not_started(
            "this supervisor does not run from its home directory, where its successor would be installed"
                .into(),
        );
    };
    let dup = |fd: BorrowedFd<'_>, what: &str| {
        fd.try_clone_to_owned()
            .map_err(|e| format!("duplicating the {what}: {e}"))
    };
    let fds = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("a pipe: {e}"))
        .and_then(|pipe| Ok((pipe, dup(listener, "listener")?, dup(listener, "listener")?)))
        .and_then(|(pipe, l1, l2)| Ok((pipe, l1, l2, dup(lock, "lock")?)));
    let ((read, write), for_guard, for_new, lock) = match fds {
        Ok(f) => f,
        Err(why) => return not_started(why),
    };
    let me = std::process::id();
    let bound = trial();
    let mut guardian = std::process::Command::new("/proc/self/exe");
    guardian
        .arg0(SUPERVISOR_BIN)
        .args(std::env::args_os().skip(1))
        .env(wireleap_home::files::HOME_ENV, home)
        .env(
            GUARD_ENV,
            format!("{PIPE_FD}:{me}:{}:{version}", bound.as_millis()),
        )
        .env(LISTENER_ENV, LISTENER_FD.to_string())
        // Not the main process: it never pings systemd's watchdog.
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove(TAKEOVER_ENV);
    if let Err(e) = guardian.fd_mappings(vec![
        FdMapping {
            parent_fd: read,
            child_fd: PIPE_FD,
        },
        FdMapping {
            parent_fd: for_guard,
            child_fd: LISTENER_FD,
        },
    ]) {
        return not_started(format!("passing descriptors to the guardian: {e}"));
    }
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
            parent_fd: for_new,
            child_fd: LISTENER_FD,
        },
    ]) {
        Ok(c) => c,
        Err(e) => return not_started(e),
    };
    crate::failpoint::step(home, version, Step::SupervisorTrial, "");
    let rolled_back = |why: String| {
        crate::upgrade::journal(home, version, Step::SupervisorRolledBack, &why);
        not_started(why)
    };
    let mut guardian = match guardian.spawn() {
        Ok(g) => g,
        Err(e) => return rolled_back(format!("its guardian could not be started: {e}")),
    };
    let guard_pid = guardian.id();
    cmd.args(std::env::args_os().skip(1))
        // It runs from a nameless copy: it cannot find its home by its own path.
        .env(wireleap_home::files::HOME_ENV, home)
        .env(TAKEOVER_ENV, format!("{PIPE_FD}:{LOCK_FD}:{guard_pid}"))
        .env(SUPERVISOR_INSTALLED_ENV, &installed)
        .env(LISTENER_ENV, LISTENER_FD.to_string());
    log(&format!(
        "the release's supervisor ({version}) takes over on trial ({bound:?}) in this process (pid {me}), guarded by pid {guard_pid}"
    ));
    let e = cmd.exec();
    // Still the old image, its descriptors 4 to 7 perhaps replaced: the guardian goes, and the
    // caller starts this supervisor again from scratch.
    let _ = guardian.kill();
    let _ = guardian.wait();
    let why = format!("it could not be executed: {e}");
    crate::upgrade::journal(home, version, Step::SupervisorRolledBack, &why);
    warn(&format!(
        "the release's supervisor ({version}) is not started: {why}; this one starts again"
    ));
    NotSwapped::ExecFailed(why)
}

/// How a trial the guardian watches ended.
enum Ended {
    TookOver,
    Stopped,
    Failed(String),
}

/// Whether this process is a guardian ([`GUARD_ENV`]); if so, watches the trial and returns
/// the exit code (or execs the old supervisor again, [`restart_self`]).
#[must_use]
pub fn guard_from_env(home: &Path) -> Option<u8> {
    let spec = std::env::var(GUARD_ENV).ok()?;
    let mut parts = spec.splitn(4, ':');
    let pipe: i32 = parts.next()?.parse().ok()?;
    let pid: i32 = parts.next()?.parse().ok()?;
    let ms: u64 = parts.next()?.parse().ok()?;
    let version = parts.next()?.to_owned();
    if !passed(pipe) {
        return None;
    }
    let pipe = adopt_one(pipe);
    let _ = nix::fcntl::fcntl(
        &pipe,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let listener = inherited_listener();
    Some(guard(
        home,
        &version,
        pid,
        std::fs::File::from(pipe),
        listener.as_ref().map(std::os::fd::AsFd::as_fd),
        Duration::from_millis(ms),
    ))
}

/// The guardian's watch over the new image in `pid` (its parent), at most `bound` unless the
/// image said it is stopping.
fn guard(
    home: &Path,
    version: &str,
    pid: i32,
    mut pipe: std::fs::File,
    listener: Option<BorrowedFd<'_>>,
    bound: Duration,
) -> u8 {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    // Signals are the supervisor's (a process group's stop reaches both): a stop ends the
    // watch, leaving the supervisor to carry it out; the others are ignored here.
    let mut signals = match signal_hook::iterator::Signals::new([
        SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGHUP,
    ]) {
        Ok(s) => Some(s),
        Err(e) => {
            warn(&format!("guardian: signal handlers: {e}"));
            None
        }
    };
    let _ = nix::fcntl::fcntl(
        pipe.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let deadline = Instant::now() + bound;
    let mut said = Vec::new();
    let mut closed = false;
    let parent_is_it = || rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()) == pid;
    let ended = loop {
        let mut buf = [0u8; 64];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) if said.len() < 256 => said.extend_from_slice(&buf[..n]),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // The report first: a new supervisor that took over is not judged by what follows.
        if said.starts_with(b"took over\n") {
            break Ended::TookOver;
        }
        let stopping = said.starts_with(b"stopping\n");
        if signals.as_mut().is_some_and(|s| {
            s.pending()
                .any(|sig| matches!(sig, SIGTERM | SIGINT | SIGQUIT))
        }) {
            log("guardian: stopped; the supervisor on trial carries on by itself");
            return crate::exit::OK;
        }
        if closed || !parent_is_it() {
            break if stopping {
                Ended::Stopped
            } else {
                Ended::Failed("it exited".to_owned())
            };
        }
        if !stopping && Instant::now() >= deadline {
            break Ended::Failed(format!("it did not take over within {bound:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let why = match ended {
        Ended::TookOver => {
            log(&format!(
                "guardian: the release's supervisor ({version}, pid {pid}) took over; the guardian exits"
            ));
            return crate::exit::OK;
        }
        Ended::Stopped => {
            warn(&format!(
                "guardian: the release's supervisor ({version}) was stopped during its trial; not skipped"
            ));
            crate::upgrade::journal(
                home,
                version,
                Step::SupervisorRolledBack,
                "stopped during the trial",
            );
            return crate::exit::OK;
        }
        Ended::Failed(why) => why,
    };
    warn(&format!(
        "the release's supervisor ({version}) failed its trial: {why}; {version} is skipped and the previous supervisor starts again"
    ));
    crate::upgrade::journal(home, version, Step::SupervisorRolledBack, &why);
    crate::upgrade::skip(home, version);
    // Only while it is still this process's parent: a pid that died may be another's by now.
    if parent_is_it() {
        kill_and_wait(pid);
    }
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        // systemd saw its main process die: it starts the unit again, with the unit's binary
        // (the previous supervisor), which takes over the generations still serving.
        log("guardian: systemd starts the previous supervisor again");
        return crate::exit::OK;
    }
    // The old supervisor, in this process, takes over whatever generations run now, once the
    // home's lock is free (a process the failed image started may hold it a little longer).
    drop(signals);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match wireleap_home::instance::Instance::acquire(home, crate::run::SUPERVISOR_NAME) {
            Ok(lock) => {
                drop(lock);
                break;
            }
            Err(e) if Instant::now() >= deadline => {
                warn(&format!("guardian: {e}"));
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let e = restart_self(listener);
    warn(&format!(
        "guardian: could not start the previous supervisor again: {e}"
    ));
    crate::exit::FAILURE
}

/// Kills `pid` and waits (bounded) until it is gone: its lock is free then.
fn kill_and_wait(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = u32::try_from(pid).unwrap_or_default();
    while crate::procfs::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts this supervisor again, in place (same pid): after a failed trial it takes over from
/// scratch, as after a crash. Returns only if that fails.
pub fn restart_self(listener: Option<BorrowedFd<'_>>) -> std::io::Error {
    use std::os::fd::AsRawFd as _;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(std::env::args_os().skip(1))
        .env_remove(GUARD_ENV)
        .env_remove(LISTENER_ENV)
        .env_remove(TAKEOVER_ENV);
    // The same listening socket serves on across the restart.
    if let Some(listener) = listener
        && nix::fcntl::fcntl(
            listener,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .is_ok()
    {
        cmd.env(LISTENER_ENV, listener.as_raw_fd().to_string());
    }
    cmd.exec()
}

/// What a supervisor started on trial was handed ([`TAKEOVER_ENV`]).
#[derive(Debug)]
pub struct Takeover {
    pipe: Option<std::fs::File>,
    /// The home's lock, held.
    pub lock: Option<OwnedFd>,
    installed: Option<PathBuf>,
    /// The guardian of the trial (this process's child), or a predecessor that waits as this
    /// one's parent (as supervisors before the in-place exec handed over): if it dies before
    /// this one took over, this one goes on unguarded; once it is gone after this one took
    /// over, this one installs itself.
    guardian: i32,
    /// The guardian was seen gone (reaped, when it was this process's child).
    gone: bool,
    /// This supervisor took over (its generation serves).
    took: bool,
}

impl Takeover {
    /// The handover this process was started for, if any.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        let spec = std::env::var(TAKEOVER_ENV).ok()?;
        let mut parts = spec.split(':');
        let (pipe, lock, guardian): (i32, i32, i32) = (
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
            guardian,
            gone: false,
            took: false,
        })
    }

    /// This supervisor serves: it says so to its guardian, which exits (a predecessor of the
    /// earlier design makes it systemd's main process first).
    pub fn took_over(&mut self) {
        if std::mem::replace(&mut self.took, true) {
            return;
        }
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"took over\n");
            log("took over from the previous supervisor; its guardian exits");
        }
    }

    /// A stop began during the trial: the guardian is told (it no longer holds the trial's
    /// bound against this process, and skips nothing when it exits).
    pub fn stopping(&mut self) {
        if let Some(pipe) = self.pipe.as_mut() {
            let _ = pipe.write_all(b"stopping\n");
        }
    }

    /// Whether it has yet to report.
    #[must_use]
    pub fn pending(&self) -> bool {
        self.pipe.is_some()
    }

    fn guardian_gone(&mut self) -> bool {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        if self.gone {
            return true;
        }
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        self.gone = if parent == self.guardian {
            false
        } else {
            match waitpid(
                nix::unistd::Pid::from_raw(self.guardian),
                Some(WaitPidFlag::WNOHANG),
            ) {
                Ok(WaitStatus::StillAlive) => false,
                Ok(_) => true,
                // Not this process's child: a predecessor that waited as its parent is gone.
                Err(_) => !crate::procfs::alive(u32::try_from(self.guardian).unwrap_or_default()),
            }
        };
        self.gone
    }

    /// Whether the guardian died before this one took over (then, once): this supervisor goes
    /// on unguarded; it installs itself only once it took over.
    #[must_use]
    pub fn guardian_lost(&mut self) -> bool {
        let lost = self.pending() && self.guardian_gone();
        if lost {
            self.pipe = None;
        }
        lost
    }

    /// Once the predecessor has accepted (it exited after the report), this supervisor
    /// installs itself where that one ran from, and journals the commit. Call on every turn.
    pub fn commit_when_accepted(&mut self, home: &Path) {
        if !self.took || self.pending() || self.installed.is_none() || !self.guardian_gone() {
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

/// A supervisor that runs from a verified copy (exec'd through `/proc/self/fd/4`) keeps that
/// descriptor to itself: the relays it starts do not inherit it.
pub fn keep_own_binary() {
    use std::os::unix::fs::MetadataExt as _;
    let fd = crate::verified::BINARY_FD;
    let same =
        |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    let (Ok(own), Ok(passed)) = (
        std::fs::metadata("/proc/self/exe"),
        std::fs::metadata(format!("/proc/self/fd/{fd}")),
    ) else {
        return;
    };
    if same(&own, &passed) {
        #[allow(unsafe_code)]
        // SAFETY: descriptor 4 is open (its metadata was just read) and is this process's own
        // binary, which nothing else in this process owns; it is only borrowed to set a flag.
        let binary = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = nix::fcntl::fcntl(
            binary,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
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

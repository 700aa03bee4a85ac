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

/// Where this supervisor is installed, if it runs from `home` (only then does a commit of its
/// successor reach the binary that runs next).
#[must_use]
pub fn installed_path(home: &Path) -> Option<PathBuf> {
    let exe = std::fs::canonicalize(std::env::current_exe().ok()?).ok()?;
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
}

/// Runs the new supervisor `copy` (the release `version`) on trial, at most `bound`.
/// `watchdog` pings systemd meanwhile.
#[must_use]
pub fn hand_over(
    home: &Path,
    version: &str,
    copy: &Verified,
    lock: BorrowedFd<'_>,
    bound: Duration,
    watchdog: &mut dyn FnMut(),
) -> Trial {
    let fail = |why: String| {
        warn(&format!(
            "the release's supervisor ({version}) failed its trial: {why}; this one serves on and {version} is skipped"
        ));
        crate::upgrade::journal(home, version, Step::SupervisorRolledBack, &why);
        crate::upgrade::skip(home, version);
        Trial::Failed(why)
    };
    let Some(installed) = installed_path(home) else {
        return fail("this supervisor does not run from its home directory, so its successor could not be installed".into());
    };
    let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(format!("a pipe: {e}")),
    };
    let lock = match lock.try_clone_to_owned() {
        Ok(l) => l,
        Err(e) => return fail(format!("duplicating the lock: {e}")),
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
    ]) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    cmd.args(std::env::args_os().skip(1))
        .env(
            TAKEOVER_ENV,
            format!("{PIPE_FD}:{LOCK_FD}:{}", std::process::id()),
        )
        .env(SUPERVISOR_INSTALLED_ENV, &installed);
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
    let outcome = loop {
        watchdog();
        let mut buf = [0u8; 64];
        match read.read(&mut buf) {
            Ok(n) if n > 0 => {
                said.extend_from_slice(&buf[..n]);
                if said.starts_with(b"took over\n") {
                    break Ok(());
                }
            }
            _ => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("it exited ({status})"));
        }
        if Instant::now() >= deadline {
            break Err(format!("it did not take over within {bound:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match outcome {
        Ok(()) => {
            log(&format!(
                "the release's supervisor (pid {}) took over; this one exits",
                child.id()
            ));
            Trial::TookOver
        }
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            fail(why)
        }
    }
}

/// Starts this supervisor again, in place (same pid): after a failed trial it takes over from
/// scratch, as after a crash. Returns only if that fails.
pub fn restart_self() -> std::io::Error {
    match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    }
}

/// What a supervisor started on trial was handed ([`TAKEOVER_ENV`]).
#[derive(Debug)]
pub struct Takeover {
    pipe: Option<std::fs::File>,
    /// The home's lock, held.
    pub lock: Option<OwnedFd>,
    installed: Option<PathBuf>,
    /// The predecessor: if it dies before this one took over, this one gives up (never two
    /// supervisors after a crash during the trial).
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
        let open = |fd: i32| std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok();
        if pipe == lock || pipe <= 2 || lock <= 2 || !open(pipe) || !open(lock) {
            return None;
        }
        let (pipe, lock) = adopt(pipe, lock);
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

    /// This supervisor serves: it outlives its predecessor from now on, becomes systemd's main
    /// process, says so to its predecessor, and installs itself where that one ran from.
    pub fn took_over(&mut self, home: &Path, notify_socket: Option<&str>) {
        let Some(mut pipe) = self.pipe.take() else {
            return;
        };
        crate::notify::to_systemd(notify_socket, &format!("MAINPID={}", std::process::id()));
        let _ = pipe.write_all(b"took over\n");
        drop(pipe);
        let version = env!("CARGO_PKG_VERSION");
        let installed = self.installed.take().and_then(|path| {
            let mut me = std::fs::File::open("/proc/self/exe").ok()?;
            wireleap_home::durable::write_atomic_from(&path, &mut me, 0o755)
                .map_err(|e| warn(&format!("installing {}: {e}", path.display())))
                .ok()
                .map(|()| path)
        });
        match installed {
            Some(path) => {
                let last = crate::recover::last_entry(home);
                let release = last
                    .filter(|e| e.step == Step::SupervisorTrial)
                    .map_or_else(|| version.to_owned(), |e| e.version);
                log(&format!(
                    "took over from the previous supervisor; installed as {}",
                    path.display()
                ));
                crate::failpoint::step(home, &release, Step::SupervisorCommitted, "");
            }
            None => warn(
                "took over, but could not install this supervisor: the previous binary stays for the next start",
            ),
        }
    }

    /// Whether it has yet to report.
    #[must_use]
    pub fn pending(&self) -> bool {
        self.pipe.is_some()
    }

    /// Whether the predecessor died before this one took over (it must then give up).
    #[must_use]
    pub fn orphaned(&self) -> bool {
        self.pending()
            && rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()) != self.parent
    }
}

/// Takes ownership of the two descriptors a predecessor passed (checked open, distinct, not
/// the standard streams).
#[allow(unsafe_code)]
fn adopt(pipe: i32, lock: i32) -> (OwnedFd, OwnedFd) {
    // SAFETY: the predecessor mapped both descriptors into this process for this purpose
    // only (TAKEOVER_ENV names them); they are open, distinct, and nothing else in this
    // process owns or closes them.
    unsafe { (OwnedFd::from_raw_fd(pipe), OwnedFd::from_raw_fd(lock)) }
}

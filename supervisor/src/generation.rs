//! Starting relay processes and watching them: the generations (`start --fg` on the listener),
//! and the short commands the supervisor asks a binary (`version`, `check-config`,
//! `supervisor-settings`), each bounded in time with its process group killed.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use command_fds::FdMapping;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid as NixPid;
use wireleap_home::files::{HOME_ENV, RESTARTS_ENV};
use wireleap_home::migrate::bounded;

use crate::machine::{Exit, Pid, Sig};
use crate::verified::Verified;

/// How long a relay binary may take to say its version.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `check-config` and `supervisor-settings` may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit codes of a relay stopped gracefully by a signal (128 + SIGINT, SIGQUIT, SIGTERM): an
/// operator's `wireleap-relay stop`, not a crash.
const GRACEFUL: [i32; 3] = [130, 131, 143];

/// Crashed relays restarted so far; each generation gets it in [`RESTARTS_ENV`] (its
/// `/metrics`).
pub static RESTARTS: AtomicU64 = AtomicU64::new(0);
/// Crashes in a row so far; each generation gets it in
/// [`wireleap_home::files::CRASH_STREAK_ENV`].
pub static STREAK: AtomicU64 = AtomicU64::new(0);
/// Hung relays replaced so far; each generation gets it in
/// [`wireleap_home::files::HUNG_REPLACED_ENV`].
pub static HUNG: AtomicU64 = AtomicU64::new(0);
/// New versions rolled back for each health criterion ([`crate::machine::CRITERIA`]); each
/// generation gets them in [`wireleap_home::files::HEALTH_ROLLBACKS_ENV`].
pub static UNHEALTHY: [AtomicU64; crate::machine::CRITERIA.len()] =
    [const { AtomicU64::new(0) }; crate::machine::CRITERIA.len()];

/// Counts a new version rolled back for `criterion`.
pub fn count_unhealthy(criterion: &str) {
    if let Some(i) = crate::machine::CRITERIA
        .iter()
        .position(|c| *c == criterion)
    {
        UNHEALTHY[i].fetch_add(1, Ordering::Relaxed);
    }
}

fn unhealthy_counts() -> String {
    crate::machine::CRITERIA
        .iter()
        .zip(&UNHEALTHY)
        .map(|(c, n)| format!("{c}={}", n.load(Ordering::Relaxed)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `binary start --fg` in `home` with the listener as descriptor 3 (`LISTEN_FDS=1`) and
/// `ready` as its `NOTIFY_SOCKET`; `installed` is where the relay binary lives (what a staged
/// release becomes at its commit).
///
/// # Errors
/// Why it could not be started.
pub fn spawn(
    home: &Path,
    installed: &Path,
    liveness: Option<Duration>,
    binary: &Verified,
    listener: &TcpListener,
    ready: &str,
) -> Result<Child, String> {
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating the listener: {e}"))?;
    let mut cmd = binary.command(vec![FdMapping {
        parent_fd: fd,
        child_fd: 3,
    }])?;
    cmd.args(["start", "--fg"])
        .current_dir(home)
        .env(HOME_ENV, home)
        .env(wireleap_home::files::RELAY_BINARY_ENV, installed)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env(
            wireleap_home::files::HUNG_REPLACED_ENV,
            HUNG.load(Ordering::Relaxed).to_string(),
        )
        .env(
            wireleap_home::files::HEALTH_ROLLBACKS_ENV,
            unhealthy_counts(),
        )
        .env("NOTIFY_SOCKET", ready)
        .env(RESTARTS_ENV, RESTARTS.load(Ordering::Relaxed).to_string())
        .env(
            wireleap_home::files::CRASH_STREAK_ENV,
            STREAK.load(Ordering::Relaxed).to_string(),
        );
    if let Some(every) = liveness {
        // The relay pings (`WATCHDOG=1` on its NOTIFY_SOCKET) three times per period.
        cmd.env("WATCHDOG_USEC", every.as_micros().to_string());
    }
    cmd.spawn()
        .map_err(|e| format!("could not start {}: {e}", binary.source().display()))
}

/// The supervisor's children, by pid.
#[derive(Debug, Default)]
pub struct Children(HashMap<Pid, Child>);

impl Children {
    /// Watches a child.
    pub fn add(&mut self, child: Child) -> Pid {
        let pid = child.id();
        self.0.insert(pid, child);
        pid
    }

    /// The children that ended since the last call, reaped.
    pub fn reap(&mut self) -> Vec<(Pid, Exit)> {
        let mut ended = Vec::new();
        self.0.retain(|&pid, child| match child.try_wait() {
            Ok(Some(status)) => {
                ended.push((pid, exit_of(status)));
                false
            }
            Ok(None) => true,
            Err(e) => {
                ended.push((pid, Exit::Failed(format!("could not be waited for: {e}"))));
                false
            }
        });
        ended
    }
}

/// How a relay ended, for the machine.
#[must_use]
pub fn exit_of(status: ExitStatus) -> Exit {
    match status.code() {
        Some(c) if GRACEFUL.contains(&c) => Exit::Graceful,
        _ => Exit::Failed(status.to_string()),
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: Pid, sig: Sig) {
    let sig = match sig {
        Sig::Term => Signal::SIGTERM,
        Sig::Kill => Signal::SIGKILL,
        Sig::Hup => Signal::SIGHUP,
        Sig::Usr1 => Signal::SIGUSR1,
        Sig::Usr2 => Signal::SIGUSR2,
        Sig::Cont => Signal::SIGCONT,
        Sig::Winch => Signal::SIGWINCH,
    };
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(NixPid::from_raw(pid), sig);
    }
}

/// The version `binary` reports (`version`, first line), within [`VERSION_TIMEOUT`].
///
/// # Errors
/// It did not answer in time, failed, or said something that is not a version.
pub fn version_of(binary: &Verified) -> Result<semver::Version, String> {
    let name = binary.source().display();
    let mut cmd = binary.command(Vec::new())?;
    cmd.arg("version");
    let out =
        bounded(cmd, VERSION_TIMEOUT).map_err(|e| format!("{name} version did not answer: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    semver::Version::parse(text.lines().next().unwrap_or("").trim())
        .map_err(|e| format!("{name} version said {:?}: {e}", text.trim()))
}

/// Why `check-config` did not say the config is good.
#[derive(Debug)]
pub enum CheckConfigError {
    /// The relay ran and refused the config: its exit code and what it printed.
    Refused(i32, String),
    /// The relay could not be asked, or gave no answer: it could not start, was killed (by a
    /// signal: the OOM killer, say) or did not finish in time. Nothing is known of the config.
    NotAsked(String),
}

/// `binary check-config` in `home`.
///
/// # Errors
/// The relay refused the config, or could not be asked.
pub fn check_config(binary: &Verified, home: &Path) -> Result<(), CheckConfigError> {
    let mut cmd = binary
        .command(Vec::new())
        .map_err(CheckConfigError::NotAsked)?;
    cmd.arg("check-config").env(HOME_ENV, home);
    let out = bounded(cmd, CHECK_TIMEOUT)
        .map_err(|e| CheckConfigError::NotAsked(format!("check-config {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    // The problems are on stdout (as the reference prints them; earlier relays of ours printed them
    // on stderr), anything else on stderr: both, in that order.
    let said: Vec<String> = [&out.stdout, &out.stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    match out.status.code() {
        Some(code) => Err(CheckConfigError::Refused(code, said.join("\n"))),
        None => Err(CheckConfigError::NotAsked(format!(
            "check-config ended by {}: {}",
            out.status,
            said.join("\n")
        ))),
    }
}

/// `binary supervisor-settings` (config.json parsed by the relay's own parser); `None` when it
/// cannot say (a relay too old to know the command, or a config it refuses).
#[must_use]
pub fn settings(binary: &Verified, home: &Path) -> Option<Vec<u8>> {
    let mut cmd = binary.command(Vec::new()).ok()?;
    cmd.arg("supervisor-settings").env(HOME_ENV, home);
    let out = bounded(cmd, CHECK_TIMEOUT).ok()?;
    out.status.success().then_some(out.stdout)
}

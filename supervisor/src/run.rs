//! The supervision loop: one relay generation at a time on the supervisor's listener.

use std::net::TcpListener;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt as _, FdMapping};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use wireleap_home::journal::Step;

use crate::budget::{Budget, Verdict};
use crate::control::{Control, Pending, Reply, Request, State};
use crate::exit;
use crate::notify::{self, Kind, ReadySocket};
use crate::recover;
use crate::upgrade;

/// The variable that names the relay's home directory.
pub use wireleap_home::files::HOME_ENV;
/// How long a new relay generation has to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a serving generation has to confirm its heartbeats paused before a successor starts.
const PAUSE_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping relay gets before SIGKILL (its own shutdown grace is shorter).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit codes of a relay stopped gracefully by a signal (128 + SIGINT, SIGQUIT, SIGTERM): an
/// operator's `wireleap-relay stop`, not a crash.
const GRACEFUL: [i32; 3] = [130, 131, 143];

/// What the supervisor runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The relay's home directory.
    pub home: PathBuf,
    /// The relay binary.
    pub relay: PathBuf,
    /// systemd's `NOTIFY_SOCKET`, if set.
    pub notify_socket: Option<String>,
    /// How long a new version must run without crashing before it is committed.
    pub health_window: Duration,
    /// How long a new generation has to report ready.
    pub ready_timeout: Duration,
}

/// Default health window (the anchors: ChromeOS 45 s, Cribl 30 s).
pub const HEALTH_WINDOW: Duration = Duration::from_secs(30);

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// To a staged, verified release.
    Upgrade,
    /// The operator's rollback to `wireleap-relay.prev`.
    Rollback,
}

/// An upgrade or rollback in progress.
struct Upgrading {
    change: Change,
    /// The version being installed.
    version: semver::Version,
    /// The version that ran before.
    from: semver::Version,
    request: Pending,
    /// `None` while the new generation starts; then when it took over.
    took_over: Option<Instant>,
}

impl Upgrading {
    fn fail(self, home: &Path, why: &str) {
        let v = self.version.to_string();
        let from = self.from.to_string();
        match self.change {
            Change::Upgrade => {
                log(&format!(
                    "upgrade to {v} rolled back: {why}; {v} will be skipped"
                ));
                upgrade::roll_back(home, &v, Some(&from), true);
                upgrade::journal(home, &v, Step::RolledBack, why);
            }
            Change::Rollback => {
                warn(&format!("rollback to {v} failed: {why}; {from} serves on"));
                // Redo what `migrate --down` undid; `config.json.next` goes.
                if let Err(e) = upgrade::migrate(home, &home.join(upgrade::CURRENT), &v, false) {
                    log(&format!("redoing the migrations of {from}: {e}"));
                }
                let _ = std::fs::remove_file(home.join(upgrade::CONFIG_NEXT));
                upgrade::journal(home, &v, Step::RollbackFailed, why);
            }
        }
        self.request
            .reply(&Reply::error(why).versions(&v, Some(&from)));
    }

    /// The supervisor is stopping (its generations already stopped): the change is undone
    /// without blaming the version.
    fn interrupt(self, home: &Path) {
        let v = self.version.to_string();
        let from = self.from.to_string();
        let why = "the supervisor was stopped during the change";
        match self.change {
            Change::Upgrade => {
                log(&format!(
                    "upgrade to {v} interrupted by a stop: undone, not skipped"
                ));
                upgrade::roll_back(home, &v, Some(&from), false);
                upgrade::journal(
                    home,
                    &v,
                    Step::Recovered,
                    "interrupted by a stop: undone, not skipped",
                );
                self.request
                    .reply(&Reply::error(why).versions(&v, Some(&from)));
            }
            Change::Rollback => self.fail(home, why),
        }
    }
}

/// The fault-injection variable of the crash-recovery tests (see [`failpoint`]).
pub use wireleap_home::files::FAILPOINT_ENV;

/// A generation a failpoint is to kill on the next turn of the loop: "old" or "new".
static KILL: std::sync::Mutex<Option<&'static str>> = std::sync::Mutex::new(None);

/// A test hook (fault injection for the crash-recovery tests): with
/// `WIRELEAP_SUPERVISOR_FAILPOINT=<step>[:<victim>]`, right after journaling `<step>` the
/// supervisor kills with SIGKILL itself (victim `supervisor`, the default), the generation that
/// served before the change (`old`) or the one the change starts (`new`).
fn failpoint(step: &str) {
    let Ok(spec) = std::env::var(FAILPOINT_ENV) else {
        return;
    };
    let (at, victim) = spec
        .split_once(':')
        .unwrap_or((spec.as_str(), "supervisor"));
    if at != step {
        return;
    }
    match victim {
        "supervisor" => {
            log(&format!("failpoint {step}: killing myself"));
            let _ = nix::sys::signal::raise(Signal::SIGKILL);
        }
        "old" | "new" => {
            if let Ok(mut kill) = KILL.lock() {
                *kill = Some(if victim == "old" { "old" } else { "new" });
            }
        }
        other => warn(&format!("failpoint {step}: unknown victim {other:?}")),
    }
}

fn take_kill() -> Option<&'static str> {
    KILL.lock().ok().and_then(|mut k| k.take())
}

/// Journals a step and passes its failpoint.
fn step(home: &Path, version: &str, name: Step, detail: &str) {
    upgrade::journal(home, version, name, detail);
    failpoint(name.as_str());
}

/// Why supervision could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The relay refused its config.
    #[error("the relay's check-config failed (exit {0}); fix config.json and start again")]
    Config(i32),
    /// config.json has no usable `address`.
    #[error("{path}: {why}")]
    Address {
        /// The config file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Another process holds the home (a supervisor, or a relay without one).
    #[error("{0}")]
    AlreadyRunning(String),
    /// An OS call failed.
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

/// Logs one line on stderr (the unit's journal, or the log file), as an info event
/// ([`wireleap_home::log`]: timestamp and level, journald priority under systemd).
pub fn log(message: &str) {
    tracing::info!("{message}");
}

/// Logs a warning: something failed or was refused, and supervision goes on.
pub fn warn(message: &str) {
    tracing::warn!("{message}");
}

/// One relay process the supervisor started.
struct Generation {
    child: Child,
    started: Instant,
    /// Stopped by the supervisor for not getting ready: its exit is a failure, whatever its code.
    abandoned: bool,
}

impl Generation {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Supervises until stopped; returns the exit code.
///
/// SIGHUP hands over: a new generation starts on the same socket, and only once it reports ready
/// is the old one told (SIGHUP) to stop accepting and drain its streams; it stays enrolled, the
/// new one carries on. If the new generation fails to get ready, it is stopped and the old one
/// keeps serving.
///
/// # Errors
/// Startup failures ([`Error`]); once the first relay runs, failures become exit codes.
pub fn run(opts: &Options) -> Result<u8, Error> {
    check_config(opts)?;
    // First: it refuses a second supervisor (or one beside an unsupervised relay) for this home
    // before it touches anything.
    let _instance = wireleap_home::instance::Instance::acquire(&opts.home, SUPERVISOR_NAME)
        .map_err(Error::AlreadyRunning)?;
    let ready = ReadySocket::bind(&opts.home).map_err(io("readiness socket"))?;
    // Only the instance that holds the home writes its pid file, and only it removes it.
    let _pid_file = PidFile::write(&opts.home);
    if let Some(done) = recover::journal_steps(&opts.home) {
        log(&format!("recovered: {done}"));
    }
    let mut orphans = recover::orphans(&opts.home);
    let listener = listener(opts, &orphans)?;
    let local = listener.local_addr().map_err(io("listener address"))?;
    log(&format!("listening on {local}"));
    log(&format!(
        "health window {:?}, ready timeout {:?}",
        opts.health_window, opts.ready_timeout
    ));
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGHUP])
        .map_err(io("signal handlers"))?;
    let mut budget = Budget::default();
    let mut told_systemd = false;
    let control = Control::bind(&opts.home).map_err(io("control socket"))?;
    pause_heartbeats(&ready, &orphans);
    let mut current = start(opts, &opts.relay, &listener, ready.name())?;
    let mut current_ready = false;
    let mut pending: Option<Generation> = None;
    let mut draining: Vec<Generation> = Vec::new();
    let mut upgrading: Option<Upgrading> = None;
    let mut versions = Versions::read(&opts.home, &opts.relay);
    let mut recorded: Vec<u32> = Vec::new();
    // The serving generation died while a new one was starting: the new one takes over.
    let mut current_gone = false;
    let watchdog = notify::watchdog_interval();
    let mut last_watchdog = Instant::now();
    let mut last_status = String::new();
    loop {
        if let Some(every) = watchdog
            && last_watchdog.elapsed() >= every
        {
            notify::to_systemd(opts.notify_socket.as_deref(), "WATCHDOG=1");
            last_watchdog = Instant::now();
        }
        let status_line = match &upgrading {
            Some(u) if u.change == Change::Rollback => format!("rolling back to {}", u.version),
            Some(u) => format!("upgrading to {}", u.version),
            None if current_ready => format!(
                "serving: relay {} (pid {})",
                versions.current.as_deref().unwrap_or("?"),
                current.pid()
            ),
            None => "starting the relay".to_owned(),
        };
        if told_systemd && status_line != last_status {
            notify::to_systemd(
                opts.notify_socket.as_deref(),
                &format!("STATUS={status_line}"),
            );
            last_status = status_line;
        }
        if let Some(victim) = take_kill() {
            let pid = match (victim, pending.as_ref()) {
                ("new", Some(p)) => Some(p.pid()),
                ("new", None) => Some(current.pid()),
                (_, Some(_)) => Some(current.pid()),
                (_, None) => draining.last().map(Generation::pid),
            };
            if let Some(pid) = pid {
                log(&format!(
                    "failpoint: killing the {victim} generation (pid {pid})"
                ));
                forward(pid, Signal::SIGKILL);
            }
        }
        // The generations' pids, for a successor after a crash (orphans are not ours to list).
        let pids: Vec<u32> = std::iter::once(current.pid())
            .chain(pending.iter().map(Generation::pid))
            .chain(draining.iter().map(Generation::pid))
            .collect();
        if pids != recorded {
            recover::record_children(&opts.home, &pids);
            recorded = pids;
        }
        if let Some((request, req)) = control.poll() {
            let busy = upgrading.is_some() || pending.is_some() || !current_ready;
            match request {
                Request::Status => {
                    let mut reply = Reply::ok();
                    reply.pid = Some(current.pid());
                    reply.state = Some(match &upgrading {
                        Some(u) if u.change == Change::Rollback => State::RollingBack,
                        Some(_) => State::Upgrading,
                        None if current_ready => State::Serving,
                        None => State::Starting,
                    });
                    reply.version.clone_from(&versions.current);
                    reply.prev_version.clone_from(&versions.prev);
                    reply.draining = draining.iter().map(Generation::pid).collect();
                    reply.highest_committed =
                        upgrade::highest_committed(&opts.home).map(|v| v.to_string());
                    reply.skipped = Some(upgrade::skipped(&opts.home));
                    reply.last = recover::last_entry(&opts.home);
                    req.reply(&reply);
                }
                Request::Upgrade { .. } | Request::Rollback if busy => {
                    req.reply(&Reply::error(
                        "busy: the relay is starting or another change is in progress",
                    ));
                }
                Request::Upgrade { version: asked } => match begin_upgrade(opts, &asked) {
                    Err(why) => {
                        warn(&format!("upgrade to {asked:?} refused: {why}"));
                        req.reply(&Reply::error(why).versions(&asked, None::<&str>));
                    }
                    Ok((version, from)) => {
                        pause_heartbeats(&ready, &[current.pid()]);
                        let next = start(
                            opts,
                            &opts.home.join(upgrade::NEXT),
                            &listener,
                            ready.name(),
                        )?;
                        log(&format!(
                            "upgrade to {version}: verified and migrated; new generation pid {}",
                            next.pid()
                        ));
                        pending = Some(next);
                        upgrading = Some(Upgrading {
                            change: Change::Upgrade,
                            version,
                            from,
                            request: req,
                            took_over: None,
                        });
                    }
                },
                Request::Rollback => match begin_rollback(opts) {
                    Err(why) => {
                        warn(&format!("rollback refused: {why}"));
                        req.reply(&Reply::error(why));
                    }
                    Ok((version, from)) => {
                        pause_heartbeats(&ready, &[current.pid()]);
                        let prev = start(
                            opts,
                            &opts.home.join(upgrade::PREV),
                            &listener,
                            ready.name(),
                        )?;
                        log(&format!(
                            "rollback to {version}: new generation pid {}",
                            prev.pid()
                        ));
                        pending = Some(prev);
                        upgrading = Some(Upgrading {
                            change: Change::Rollback,
                            version,
                            from,
                            request: req,
                            took_over: None,
                        });
                    }
                },
            }
        }
        for sig in signals.pending() {
            match sig {
                SIGUSR1 => forward(current.pid(), Signal::SIGUSR1),
                // USR2: the supervisor says where things stand and passes it on, so the
                // serving relay prints its status JSON too (as it does on its own USR2).
                SIGUSR2 => {
                    forward(current.pid(), Signal::SIGUSR2);
                    log(&format!(
                        "status: relay pid {} {}, version {}, {} draining, {}",
                        current.pid(),
                        if current_ready { "serving" } else { "starting" },
                        versions.current.as_deref().unwrap_or("unknown"),
                        draining.len(),
                        match &upgrading {
                            Some(u) => format!("changing to {}", u.version),
                            None => "no change in progress".to_owned(),
                        }
                    ));
                }
                SIGHUP if pending.is_none() && upgrading.is_none() && current_ready => {
                    pause_heartbeats(&ready, &[current.pid()]);
                    let next = start(opts, &opts.relay, &listener, ready.name())?;
                    log(&format!(
                        "handover: started a new generation (pid {})",
                        next.pid()
                    ));
                    pending = Some(next);
                }
                SIGHUP => log("handover: one is already in progress or the relay is not ready yet"),
                _ => {
                    log("stopping");
                    notify::to_systemd(opts.notify_socket.as_deref(), "STOPPING=1");
                    for g in pending
                        .iter_mut()
                        .chain(std::iter::once(&mut current))
                        .chain(draining.iter_mut())
                    {
                        stop(&mut g.child);
                    }
                    for pid in orphans.drain(..) {
                        forward(pid, Signal::SIGTERM);
                    }
                    // A change a stop interrupts is undone here and journaled as such: the
                    // version did not fail, so it is not skipped (recovery skips only a change
                    // whose supervisor died).
                    if let Some(u) = upgrading.take() {
                        u.interrupt(&opts.home);
                    }
                    let _ = std::fs::remove_file(opts.home.join(recover::CHILDREN));
                    return Ok(exit::OK);
                }
            }
        }

        // Readiness: of the pending generation during a handover, else of the current one.
        let readiness = if pending.is_some() || !current_ready {
            ready
                .ready_within(Duration::from_millis(100))
                .unwrap_or(None)
        } else {
            None
        };
        let from_pending =
            readiness.is_some_and(|pid| pending.as_ref().is_some_and(|p| sent_by(pid, p.pid())));
        let from_current =
            readiness.is_some_and(|pid| !current_ready && sent_by(pid, current.pid()));
        if let Some(pid) = readiness.filter(|_| !from_pending && !from_current) {
            log(&format!(
                "READY from pid {pid}, which is not a starting generation: ignored"
            ));
        }
        if from_pending || from_current {
            if from_pending && let Some(next) = pending.take() {
                log(&format!(
                    "handover: pid {} ready after {:?}; pid {} stops accepting and drains",
                    next.pid(),
                    next.started.elapsed(),
                    current.pid()
                ));
                if current_gone {
                    current = next;
                    current_gone = false;
                } else {
                    forward(current.pid(), Signal::SIGHUP);
                    draining.push(std::mem::replace(&mut current, next));
                }
                current_ready = true;
                if let Some(u) = upgrading.as_mut() {
                    u.took_over = Some(Instant::now());
                    let name = match u.change {
                        Change::Upgrade => Step::Swapped,
                        Change::Rollback => Step::RollbackSwapped,
                    };
                    step(&opts.home, &u.version.to_string(), name, "");
                }
            } else {
                current_ready = true;
                log(&format!(
                    "relay ready (pid {}) after {:?}",
                    current.pid(),
                    current.started.elapsed()
                ));
                // Generations a crashed predecessor left behind drain and exit now.
                for pid in &orphans {
                    log(&format!(
                        "pid {pid} (left by a previous supervisor) stops accepting and drains"
                    ));
                    forward(*pid, Signal::SIGHUP);
                }
                if !told_systemd {
                    notify::to_systemd(
                        opts.notify_socket.as_deref(),
                        &format!(
                            "READY=1\nSTATUS=relay pid {}\nMAINPID={}",
                            current.pid(),
                            std::process::id()
                        ),
                    );
                    told_systemd = true;
                }
            }
        } else if readiness.is_none() && pending.is_none() && current_ready {
            std::thread::sleep(Duration::from_millis(100));
        }
        if current_ready {
            orphans.retain(|&pid| {
                let alive = recover::alive(pid);
                if !alive {
                    log(&format!("pid {pid} (left by a previous supervisor) exited"));
                }
                alive
            });
        }

        // A pending generation that dies or never gets ready is abandoned; the old one serves on.
        if let Some(next) = pending.as_mut() {
            let failed = match next.child.try_wait() {
                Ok(Some(status)) => Some(format!("exited ({status})")),
                _ if next.started.elapsed() > opts.ready_timeout => {
                    Some(format!("was not ready after {:?}", opts.ready_timeout))
                }
                _ => None,
            };
            if let Some(why) = failed {
                log(&format!(
                    "handover failed: the new generation (pid {}) {why}; pid {} keeps serving",
                    next.pid(),
                    current.pid()
                ));
                stop(&mut next.child);
                pending = None;
                if let Some(u) = upgrading.take() {
                    u.fail(&opts.home, &format!("the new version {why} at start"));
                }
                if current_gone {
                    current = start(opts, &opts.relay, &listener, ready.name())?;
                    current_ready = false;
                    current_gone = false;
                } else {
                    forward(current.pid(), Signal::SIGCONT);
                }
            }
        }

        draining.retain_mut(|g| match g.child.try_wait() {
            Ok(Some(status)) => {
                log(&format!("pid {} drained and exited ({status})", g.pid()));
                false
            }
            _ => true,
        });

        if !current_ready && current.started.elapsed() > opts.ready_timeout {
            log(&format!(
                "relay (pid {}) not ready after {:?}; stopping it",
                current.pid(),
                opts.ready_timeout
            ));
            stop(&mut current.child);
            current.abandoned = true;
        }
        // The health window passed (a rollback returns to a version that ran before: it commits
        // once ready): commit.
        if upgrading
            .as_ref()
            .and_then(|u| u.took_over.map(|t| (t, u.change)))
            .is_some_and(|(t, change)| {
                change == Change::Rollback || t.elapsed() >= opts.health_window
            })
            && let Some(u) = upgrading.take()
        {
            finish(&opts.home, u);
            versions = Versions::read(&opts.home, &opts.relay);
        }
        if current_gone {
            continue;
        }
        let Ok(Some(outcome)) = current.child.try_wait() else {
            continue;
        };
        let pid = current.pid();
        if pending.is_some() && upgrading.as_ref().is_none_or(|u| u.took_over.is_none()) {
            log(&format!(
                "relay (pid {pid}) exited ({outcome}) while a new generation starts; it takes over once ready"
            ));
            current_gone = true;
            continue;
        }
        // The new version died inside its health window: the old binary serves again.
        if upgrading.as_ref().is_some_and(|u| u.took_over.is_some()) {
            if let Some(u) = upgrading.take() {
                u.fail(
                    &opts.home,
                    &format!("the new version exited ({outcome}) inside the health window"),
                );
            }
            current = start(opts, &opts.relay, &listener, ready.name())?;
            current_ready = false;
            continue;
        }
        if !current.abandoned && outcome.code().is_some_and(|c| GRACEFUL.contains(&c)) {
            log(&format!(
                "relay (pid {pid}) was stopped ({outcome}); stopping too"
            ));
            let _ = std::fs::remove_file(opts.home.join(recover::CHILDREN));
            return Ok(exit::OK);
        }
        match budget.crash(Instant::now()) {
            Verdict::RestartAfter(delay) => {
                RESTARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log(&format!(
                    "relay (pid {pid}) exited ({outcome}); restarting in {delay:?}"
                ));
                std::thread::sleep(delay);
                current = start(opts, &opts.relay, &listener, ready.name())?;
                current_ready = false;
            }
            Verdict::GiveUp => {
                log(&format!(
                    "relay (pid {pid}) exited ({outcome}); more than {} crashes in {:?}, giving up",
                    crate::budget::MAX_CRASHES,
                    crate::budget::WINDOW
                ));
                return Ok(exit::CRASH_BUDGET);
            }
        }
    }
}

/// Whether a READY from `sender` counts for the generation `pid`: it is that process or one of its
/// descendants (a release may be a wrapper that starts the relay), within a few generations.
fn sent_by(sender: u32, pid: u32) -> bool {
    let mut at = sender;
    for _ in 0..4 {
        if at == pid {
            return true;
        }
        let Some((_, ppid)) = recover::proc_stat(at) else {
            return false;
        };
        at = ppid;
    }
    false
}

/// The versions of the installed binaries, for `status`.
struct Versions {
    current: Option<String>,
    prev: Option<String>,
}

impl Versions {
    fn read(home: &Path, relay: &Path) -> Self {
        let prev = home.join(upgrade::PREV);
        Self {
            current: relay_version(relay).ok().map(|v| v.to_string()),
            prev: prev
                .exists()
                .then(|| relay_version(&prev).ok().map(|v| v.to_string()))
                .flatten(),
        }
    }
}

/// Upgrade steps 1 (verify) and the migrations; on failure the staged files go and the version
/// is skipped. Returns the version and the running one.
fn begin_upgrade(
    opts: &Options,
    asked: &str,
) -> Result<(semver::Version, semver::Version), String> {
    let home = &opts.home;
    if let Err(why) = upgrade::runs_from_home(home, &opts.relay) {
        upgrade::roll_back(home, asked, None, false);
        return Err(why);
    }
    let running = relay_version(&opts.relay)?;
    let from = running.to_string();
    let version = match upgrade::verify_staged(home, asked, &running) {
        Ok(v) => v,
        Err(e) => {
            let why = e.to_string();
            // Skipped only when the release itself is at fault (forged, stale, wrong): a local
            // problem (trust files, an expired root, the disk) is the operator's to fix, and the
            // version installs once it is fixed.
            let skip = matches!(&e, upgrade::Error::Verify(e) if e.is_peer_fault())
                || matches!(&e, upgrade::Error::Version(_));
            upgrade::journal(home, asked, Step::VerifyFailed, &why);
            upgrade::roll_back(home, asked, None, skip);
            return Err(why);
        }
    };
    let v = version.to_string();
    // The binary must say it is the version its statement signs: one that reports another
    // would be committed as that version and refuse genuine later releases as "not above".
    match relay_version(&home.join(upgrade::NEXT)) {
        Ok(reported) if reported == version => {}
        Ok(reported) => {
            let why = format!(
                "the staged binary reports version {reported}, but its signed statement is for {v}"
            );
            upgrade::journal(home, &v, Step::VerifyFailed, &why);
            upgrade::roll_back(home, &v, None, true);
            return Err(why);
        }
        Err(e) => {
            // Not skipped: a loaded host may be slow to answer; the next notice tries again.
            let why = format!("the staged binary's version could not be read: {e}");
            upgrade::journal(home, &v, Step::VerifyFailed, &why);
            upgrade::roll_back(home, &v, None, false);
            return Err(why);
        }
    }
    step(home, &v, Step::Verified, &format!("from {from}"));
    if let Err(e) = upgrade::migrate(home, &home.join(upgrade::NEXT), &from, false) {
        let why = format!("migration failed: {e}");
        log(&format!("upgrade to {v}: {why}; {v} will be skipped"));
        // A failed `migrate` undid its own steps.
        upgrade::roll_back(home, &v, None, true);
        upgrade::journal(home, &v, Step::RolledBack, &why);
        return Err(why);
    }
    step(home, &v, Step::Migrated, "");
    Ok((version, running))
}

/// The operator's rollback, up to starting the previous binary: its config is the current one
/// migrated down by the current binary (`config.json.next`, which the new generation reads).
fn begin_rollback(opts: &Options) -> Result<(semver::Version, semver::Version), String> {
    let home = &opts.home;
    upgrade::runs_from_home(home, &opts.relay)?;
    let prev = home.join(upgrade::PREV);
    if !prev.exists() {
        return Err("there is no wireleap-relay.prev to roll back to".into());
    }
    let to = relay_version(&prev)?;
    let from = relay_version(&opts.relay)?;
    let v = to.to_string();
    step(home, &v, Step::RollbackStarted, &format!("from {from}"));
    let copied = std::fs::read(home.join(upgrade::CONFIG)).and_then(|bytes| {
        wireleap_home::durable::write_atomic(&home.join(upgrade::CONFIG_NEXT), &bytes, 0o644)
    });
    let migrated = copied
        .map_err(|e| format!("could not copy config.json: {e}"))
        .and_then(|()| upgrade::migrate(home, &opts.relay, &v, true));
    if let Err(e) = migrated {
        let _ = std::fs::remove_file(home.join(upgrade::CONFIG_NEXT));
        upgrade::journal(home, &v, Step::RollbackFailed, &e);
        return Err(e);
    }
    step(home, &v, Step::RollbackMigrated, "");
    Ok((to, from))
}

/// Commits an upgrade or a rollback whose new generation serves.
fn finish(home: &Path, u: Upgrading) {
    let v = u.version.to_string();
    let (committing, committed, result) = match u.change {
        Change::Upgrade => (Step::Committing, Step::Committed, None),
        Change::Rollback => (Step::RollbackCommitting, Step::RollbackCommitted, Some(())),
    };
    step(home, &v, committing, "");
    let done = match result {
        None => upgrade::commit(home, &u.version),
        Some(()) => upgrade::commit_rollback(home),
    };
    match done {
        Ok(()) => {
            log(&format!("{committed} {v} (was {})", u.from));
            step(home, &v, committed, "");
            u.request.reply(&Reply::ok().versions(&v, Some(&u.from)));
        }
        Err(e) => {
            warn(&format!("{v}: {committing} failed: {e}"));
            upgrade::journal(home, &v, Step::CommitFailed, &e.to_string());
            u.request
                .reply(&Reply::error(e.to_string()).versions(&v, None::<&str>));
        }
    }
}

fn start(
    opts: &Options,
    binary: &Path,
    listener: &TcpListener,
    ready: &str,
) -> Result<Generation, Error> {
    let child = spawn(opts, binary, listener, ready)?;
    log(&format!("started relay (pid {})", child.id()));
    recover::add_child(&opts.home, child.id());
    Ok(Generation {
        child,
        started: Instant::now(),
        abandoned: false,
    })
}

pub use wireleap_home::control::Waits;

/// Asks `relay supervisor-settings` (so config.json is parsed by the relay's own parser, with its
/// errors). A relay too old to know the command, or a config it refuses, leaves the defaults;
/// [`run`] then refuses a bad config with the relay's reason anyway.
pub fn configured_waits(relay: &Path, home: &Path) -> Waits {
    let out = match Command::new(relay)
        .arg("supervisor-settings")
        .env(HOME_ENV, home)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => out.stdout,
        _ => return Waits::default(),
    };
    let waits = Waits::from_json(&out);
    for (_, key, d) in waits.entries() {
        if let Some(d) = d {
            log(&format!("config.json: supervisor.{key} {d:?}"));
        }
    }
    waits
}

fn check_config(opts: &Options) -> Result<(), Error> {
    let status = Command::new(&opts.relay)
        .arg("check-config")
        .env(HOME_ENV, &opts.home)
        .status()
        .map_err(io(format!("could not run {}", opts.relay.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Config(status.code().unwrap_or(-1)))
    }
}

/// The listener: from systemd socket activation if given; else the socket of a generation a
/// crashed predecessor left serving; else bound to config.json's address (with `SO_REUSEPORT`,
/// so that a successor can bind beside generations it could not take the socket from).
fn listener(opts: &Options, orphans: &[u32]) -> Result<TcpListener, Error> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0
        && let Some(l) = fds.take_tcp_listener(0).map_err(io("inherited socket"))?
    {
        log("using the socket passed by systemd");
        return Ok(l);
    }
    if let Some((pid, fd)) = recover::adopt_listener(orphans) {
        log(&format!("took over the listening socket of pid {pid}"));
        return Ok(TcpListener::from(fd));
    }
    let address = address(&opts.home.join("config.json"))?;
    bind_reuseport(&address).map_err(io(format!("could not listen on {address}")))
}

fn bind_reuseport(address: &str) -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketType, bind, listen, socket, sockopt};
    let addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(address)?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = socket(family, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    bind(&fd, &addr)?;
    listen(&fd, 1024)?;
    Ok(TcpListener::from(fd))
}

fn address(path: &Path) -> Result<String, Error> {
    let err = |why: String| Error::Address {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
    value
        .get("address")
        .and_then(serde_json::Value::as_str)
        .map(|s| s.trim_start_matches('[').replacen("]:", ":", 1).to_owned())
        .map(|s| {
            if s.matches(':').count() > 1 {
                bracket(&s)
            } else {
                s
            }
        })
        .ok_or_else(|| err("no \"address\"".into()))
}

/// `::1:443` → `[::1]:443`.
fn bracket(host_port: &str) -> String {
    match host_port.rsplit_once(':') {
        Some((h, p)) => format!("[{h}]:{p}"),
        None => host_port.to_owned(),
    }
}

/// Crashed relays restarted so far; each generation gets it in [`RESTARTS_ENV`] (for its
/// `/metrics`).
static RESTARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The environment variable that carries [`RESTARTS`] to the relay.
pub use wireleap_home::files::RESTARTS_ENV;

fn spawn(
    opts: &Options,
    binary: &Path,
    listener: &TcpListener,
    ready: &str,
) -> Result<Child, Error> {
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(io("duplicating the listener"))?;
    let mut cmd = Command::new(binary);
    cmd.args(["start", "--fg"])
        .current_dir(&opts.home)
        .env(HOME_ENV, &opts.home)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", ready)
        .env(
            RESTARTS_ENV,
            RESTARTS
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        );
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: fd,
        child_fd: 3,
    }])
    .map_err(|e| Error::Io {
        what: "passing the listener".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    cmd.spawn()
        .map_err(io(format!("could not start {}", opts.relay.display())))
}

/// The supervisor's pid file, `wireleap-relay-supervisor.pid`: written once this instance holds
/// the home (its readiness socket), removed on exit only if it still names this process.
#[derive(Debug)]
struct PidFile {
    path: std::path::PathBuf,
}

/// The supervisor's name, as it holds the home ([`crate::instance`]).
pub use wireleap_home::files::SUPERVISOR_BIN as SUPERVISOR_NAME;

/// The supervisor's pid file name.
pub use wireleap_home::files::SUPERVISOR_PID as PID_FILE;

impl PidFile {
    fn write(home: &Path) -> Self {
        let path = home.join(PID_FILE);
        if let Err(e) = std::fs::write(&path, std::process::id().to_string()) {
            warn(&format!("could not write {}: {e}", path.display()));
        }
        Self { path }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let mine = std::fs::read_to_string(&self.path)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if mine {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How long a relay binary may take to say its version.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The version a relay binary reports (`version`, first line), within [`VERSION_TIMEOUT`]: a
/// binary that hangs is killed with its process group, and the loop goes on.
fn relay_version(binary: &Path) -> Result<semver::Version, String> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(binary)
        .arg("version")
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("could not run {} version: {e}", binary.display()))?;
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // The answer is read beside the wait, so that neither a full pipe nor a process that keeps
    // the pipe open holds the loop.
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.take(4096).read_to_end(&mut out);
            let _ = tx.send(out);
        });
    }
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let did_not_answer = || {
        format!(
            "{} version did not answer in {VERSION_TIMEOUT:?}",
            binary.display()
        )
    };
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                // Not reaped yet: the group is still the child's.
                let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
                let _ = child.wait();
                return Err(did_not_answer());
            }
        }
    }
    let out = match rx.recv_timeout(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100)),
    ) {
        Ok(out) => out,
        Err(_) => {
            // Something the binary left in its group holds the pipe open (so the group still
            // exists): it goes.
            let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
            return Err(did_not_answer());
        }
    };
    let text = String::from_utf8_lossy(&out);
    semver::Version::parse(text.lines().next().unwrap_or("").trim())
        .map_err(|e| format!("{} version said {:?}: {e}", binary.display(), text.trim()))
}

/// Before a successor starts (and enrolls), the serving generations pause their heartbeats; this
/// waits, at most [`PAUSE_WAIT`], until each says no directory call of its own is in flight, so
/// that the directory never hears two versions of the relay in turn. A generation that does not
/// answer (one too old to know the signal ignores it) is logged and the handover goes on.
fn pause_heartbeats(ready: &ReadySocket, pids: &[u32]) {
    let mut waiting = pids.to_vec();
    for &pid in &waiting {
        forward(pid, Signal::SIGWINCH);
    }
    let deadline = Instant::now() + PAUSE_WAIT;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log(&format!(
                "pid {waiting:?} did not confirm its heartbeats paused within {PAUSE_WAIT:?}; starting the new generation anyway"
            ));
            return;
        }
        if let Ok(Some(n)) = ready.notice_within(left)
            && n.kind == Kind::Paused
        {
            waiting.retain(|&pid| !sent_by(n.pid, pid));
        }
    }
}

fn forward(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; reaps the child.
fn stop(child: &mut Child) {
    forward(child.id(), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log(&format!(
        "relay (pid {}) did not stop in {STOP_TIMEOUT:?}; killing it",
        child.id()
    ));
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_travel_from_the_relay_to_the_supervisor() {
        let both = Waits {
            health_window: Some(Duration::from_millis(2500)),
            ready_timeout: Some(Duration::from_secs(45)),
        };
        assert_eq!(
            both.to_json(),
            r#"{"health_window_secs":2.5,"ready_timeout_secs":45.0}"#
        );
        assert_eq!(Waits::from_json(both.to_json().as_bytes()), both);
        let one = Waits {
            ready_timeout: Some(Duration::from_secs(5)),
            ..Waits::default()
        };
        assert_eq!(one.to_json(), r#"{"ready_timeout_secs":5.0}"#);
        assert_eq!(Waits::from_json(one.to_json().as_bytes()), one);
        assert_eq!(Waits::from_json(b"not json"), Waits::default());
        assert_eq!(
            Waits::from_json(br#"{"health_window_secs":-1}"#),
            Waits::default()
        );
    }

    #[test]
    fn addresses_from_config() {
        let dir = std::env::temp_dir().join(format!("wlrs-addr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        for (text, want) in [
            (r#"{"address":"127.0.0.1:0"}"#, "127.0.0.1:0"),
            (r#"{"address":"[::1]:13499"}"#, "[::1]:13499"),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(address(&path).unwrap(), want);
        }
        std::fs::write(&path, "{}").unwrap();
        assert!(address(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

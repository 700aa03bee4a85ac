//! The supervision loop: it performs what the state machine ([`crate::machine`]) decides and
//! turns what happens back into events. It never waits on anything but its readiness socket,
//! for a tenth of a second at most: slow steps run as jobs on threads of their own
//! ([`crate::change`]), every child is watched with `try_wait`, so `WATCHDOG=1` means the loop
//! turns.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::change::{self, Copies, Outcome};
use crate::control::{Control, Pending, Reply};
use crate::generation::{self, Children, RESTARTS};
use crate::machine::{
    Action, Answer, Binary, Done, Event, Kind, Machine, Notify, OsSignal, Request, Role,
    StreamCounts, Timing,
};
use crate::notify::{self, ReadySocket};
use crate::verified::Verified;
use crate::{failpoint, listener, recover, upgrade};

/// The variable that names the relay's home directory.
pub use wireleap_home::files::HOME_ENV;
/// How long a new relay generation has to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a serving generation has to confirm its heartbeats paused before a successor starts.
const PAUSE_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping relay gets before SIGKILL (its own shutdown grace is shorter).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a draining generation may take before SIGKILL: the relay's own drain bound
/// (120 s) and its shutdown, with a margin.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(135);
/// Default health window (the anchors: ChromeOS 45 s, Cribl 30 s).
pub const HEALTH_WINDOW: Duration = Duration::from_secs(30);
/// How long a serving relay may go without its liveness ping by default.
pub const LIVENESS: Duration = Duration::from_secs(15);
/// How many PINGs a new version must answer through the public socket by default.
pub const PROBE_COUNT: u32 = 3;
/// The longest the loop waits for a notice before it looks at everything else.
const TURN: Duration = Duration::from_millis(50);

/// What the supervisor runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The relay's home directory.
    pub home: PathBuf,
    /// The relay binary.
    pub relay: PathBuf,
    /// systemd's `NOTIFY_SOCKET`, if set.
    pub notify_socket: Option<String>,
    /// How long a new version must run without crashing before it is committed (a flag; else
    /// config.json's, else [`HEALTH_WINDOW`]).
    pub health_window: Option<Duration>,
    /// How long a new generation has to report ready (a flag; else config.json's, else
    /// [`READY_TIMEOUT`]).
    pub ready_timeout: Option<Duration>,
    /// How long one migration may take.
    pub migrate_timeout: Duration,
    /// How long a serving relay may go without its liveness ping (a flag, 0 for not watched;
    /// else config.json's; else [`LIVENESS`]).
    pub liveness: Option<Duration>,
    /// The resident memory a new version may reach inside its health window (a flag, 0 for
    /// none; else config.json's; else [`MAX_MEMORY`]).
    pub max_memory: Option<u64>,
    /// How many pings the in-band probe of a new version sends (a flag, 0 for no probe; else
    /// config.json's; else [`PROBE_COUNT`]).
    pub probe_count: Option<u32>,
    /// How long the release's own supervisor has to take over.
    pub supervisor_trial: Duration,
}

/// Why supervision could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The relay refused its config.
    #[error("the relay's check-config failed (exit {0}): {1}; fix config.json and start again")]
    Config(i32, String),
    /// config.json has no usable `address`.
    #[error("{path}: {why}")]
    Address {
        /// The config file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The relay binary may not run (it does not match its statement, or cannot be copied).
    #[error("{0}")]
    Binary(String),
    /// Privilege separation was asked for and cannot hold (see [`crate::privsep`]).
    #[error("{0}")]
    Privileges(String),
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

/// Maps an I/O error to [`Error::Io`] saying what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
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

pub use wireleap_home::control::Waits;

/// The supervisor's name, as it holds the home ([`wireleap_home::instance`]).
pub use wireleap_home::files::SUPERVISOR_BIN as SUPERVISOR_NAME;
/// The supervisor's pid file name.
pub use wireleap_home::files::SUPERVISOR_PID as PID_FILE;

/// Supervises until stopped; returns the exit code.
///
/// SIGHUP hands over: a new generation starts on the same socket, and only once it reports ready
/// is the old one told (SIGHUP) to stop accepting and drain its streams. If the new generation
/// fails to get ready, it is stopped and the old one keeps serving.
///
/// # Errors
/// Startup failures ([`Error`]); once the first relay runs, failures become exit codes.
pub fn run(opts: &Options) -> Result<u8, Error> {
    let home = opts.home.as_path();
    // First: it refuses a second supervisor (or one beside an unsupervised relay) for this home
    // before it touches anything.
    // A supervisor started on trial by its predecessor holds the lock it was handed.
    // Its signals are caught from the first moment (an image exec'd on trial must not be ended
    // by a reload or a stop meant for the supervisor while it starts); they wait for the loop.
    let signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGHUP])
        .map_err(io("signal handlers"))?;
    crate::swap::keep_own_binary();
    let mut takeover = crate::swap::Takeover::from_env();
    let instance = match takeover.as_mut().and_then(|t| t.lock.take()) {
        Some(lock) => wireleap_home::instance::Instance::adopt(lock),
        None => wireleap_home::instance::Instance::acquire(home, SUPERVISOR_NAME),
    }
    .map_err(Error::AlreadyRunning)?;
    crate::privsep::check(home, &opts.relay).map_err(Error::Privileges)?;
    let ready = ReadySocket::bind(home).map_err(io("readiness socket"))?;
    // Only the instance that holds the home writes its pid file, and only it removes it.
    let _pid_file = PidFile::write(home);
    upgrade::set_migrate_timeout(opts.migrate_timeout);
    recover::leftover_migration(home);
    recover::stale_downloads(home);
    // On trial, the journal's `supervisor-trial` is this process's own step.
    if takeover.is_none()
        && let Some(done) = recover::journal_steps(home, &opts.relay)
    {
        log(&format!("recovered: {done}"));
    }
    // Only verified bytes run: the committed binary, copied and checked against its statement.
    let (current, version) =
        upgrade::installed_copy(home, &opts.relay, &statement_of(&opts.relay), None)
            .map_err(Error::Binary)?;
    log(&format!(
        "relay {}: {}",
        version.map_or_else(|| "of unknown version".to_owned(), |v| v.to_string()),
        if current.statement.is_some() {
            "matches its signed statement"
        } else {
            "no signed statement beside it (installed by hand)"
        }
    ));
    // Only a refusal stops the unit for good (exit 78); a relay that could not be asked (no
    // process, killed, too slow on a loaded host) is a failure systemd restarts.
    generation::check_config(&current, home).map_err(|e| match e {
        generation::CheckConfigError::Refused(code, why) => Error::Config(code, why),
        generation::CheckConfigError::NotAsked(why) => Error::Io {
            what: "asking the relay to check its config".into(),
            source: std::io::Error::other(why),
        },
    })?;
    let timing = timing(opts, &current);
    let orphans = recover::orphans(home);
    let listener = listener::listener(home, &orphans, opts.notify_socket.as_deref())?;
    let local = listener.local_addr().map_err(io("listener address"))?;
    log(&format!("listening on {local}"));
    change::set_probe(local, timing.probe_count, timing.health_window);
    log(&format!(
        "health window {:?}, ready timeout {:?}",
        timing.health_window, timing.ready_timeout
    ));
    let control = Control::bind(home).map_err(io("control socket"))?;
    let (jobs, done) = std::sync::mpsc::channel();
    let mut world = World {
        opts,
        liveness: timing.liveness,
        listener,
        ready,
        control,
        children: Children::default(),
        copies: Copies {
            current: Arc::new(current),
            staged: None,
            prev: None,
            staged_supervisor: None,
        },
        pending: HashMap::new(),
        next_id: 0,
        jobs,
        versions: Arc::new(Mutex::new(Versions::default())),
        takeover,
        instance: &instance,
        swap: None,
    };
    // A release's supervisor has this long for its preflight and, after, to take over (its
    // generation must get ready within it).
    crate::swap::set_trial(
        opts.supervisor_trial
            .max(timing.ready_timeout + Duration::from_secs(5)),
    );
    world.refresh_versions();
    let mut machine = Machine::new(timing, orphans);
    let first = machine.start();
    if let Some(code) = world.perform(&mut machine, first) {
        return Ok(code);
    }
    world.turn(&mut machine, signals, &done)
}

/// `--preflight`: what a start checks before it takes the home (the arguments, the home's
/// ownership, config.json's address), with nothing taken, bound or started; prints this
/// supervisor's version and control protocol.
///
/// # Errors
/// As [`run`] would fail for them.
pub fn preflight(opts: &Options) -> Result<u8, Error> {
    crate::privsep::check(&opts.home, &opts.relay).map_err(Error::Privileges)?;
    listener::address(&opts.home.join(wireleap_home::files::CONFIG))?;
    println!(
        "wireleap-relay-supervisor {} (control protocol {}): ready to take over {}",
        env!("CARGO_PKG_VERSION"),
        wireleap_home::control::PROTOCOL,
        opts.home.display()
    );
    Ok(crate::exit::OK)
}

/// `<relay>.hash`: the statement beside a binary (`wireleap-relay.hash` for the home's).
fn statement_of(relay: &Path) -> PathBuf {
    let mut name = relay.as_os_str().to_owned();
    name.push(".hash");
    PathBuf::from(name)
}

/// The waits: the flags, else config.json's `supervisor` section (read by the relay's own
/// parser, `supervisor-settings`), else the defaults.
fn timing(opts: &Options, current: &Verified) -> Timing {
    // Always read: some settings (the refusal margin, the enrollment criterion) have no flag.
    let configured = generation::settings(current, &opts.home)
        .map(|out| Waits::from_json(&out))
        .unwrap_or_default();
    for (_, key, d) in configured.entries() {
        if let Some(d) = d {
            log(&format!("config.json: supervisor.{key} {d:?}"));
        }
    }
    if let Some(bytes) = configured.max_memory {
        log(&format!(
            "config.json: supervisor.max_memory {} MiB",
            bytes >> 20
        ));
    }
    Timing {
        ready_timeout: opts
            .ready_timeout
            .or(configured.ready_timeout)
            .unwrap_or(READY_TIMEOUT),
        health_window: opts
            .health_window
            .or(configured.health_window)
            .unwrap_or(HEALTH_WINDOW),
        pause_wait: PAUSE_WAIT,
        stop_timeout: STOP_TIMEOUT,
        drain_timeout: DRAIN_TIMEOUT,
        liveness: opts
            .liveness
            .or(configured.liveness)
            .or(Some(LIVENESS))
            .filter(|d| !d.is_zero()),
        max_memory: opts
            .max_memory
            .or(configured.max_memory)
            .or(Some(MAX_MEMORY))
            .filter(|&b| b > 0),
        probe_count: opts
            .probe_count
            .or(configured.probe_count)
            .unwrap_or(PROBE_COUNT),
        refused_margin_percent: configured
            .refused_margin
            .unwrap_or(crate::machine::REFUSED_MARGIN_PERCENT),
        require_enrollment: configured.require_enrollment.unwrap_or(true),
    }
}

/// The resident memory a new version may reach inside its health window by default: far above
/// what a relay needs (tens of MiB), so that only a leak or a runaway allocation passes it.
pub const MAX_MEMORY: u64 = 1 << 30;

/// The versions of the installed binaries, for `status` (read beside the loop).
#[derive(Debug, Default, Clone)]
struct Versions {
    current: Option<String>,
    prev: Option<String>,
}

/// What the loop holds besides the machine: sockets, children, verified copies, requests
/// waiting for their replies.
struct World<'a> {
    opts: &'a Options,
    /// How long a relay may go without its liveness ping (the flag, config.json or the
    /// default; `None`: not watched): each relay is told.
    liveness: Option<Duration>,
    listener: TcpListener,
    ready: ReadySocket,
    control: Control,
    children: Children,
    copies: Copies,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    jobs: Sender<Outcome>,
    versions: Arc<Mutex<Versions>>,
    /// Set when this supervisor runs on trial, until it has taken over.
    takeover: Option<crate::swap::Takeover>,
    /// The home's lock (handed to a successor on trial).
    instance: &'a wireleap_home::instance::Instance,
    /// The release's own supervisor to hand over to, once the relay is committed.
    swap: Option<(Arc<Verified>, String)>,
}

impl<'a> World<'a> {
    fn home(&self) -> &Path {
        &self.opts.home
    }

    /// The loop.
    fn turn(
        &mut self,
        machine: &mut Machine,
        mut signals: Signals,
        done: &Receiver<Outcome>,
    ) -> Result<u8, Error> {
        let watchdog = notify::watchdog_interval();
        let mut last_watchdog = Instant::now();
        let mut last_status = String::new();
        let mut recorded: Vec<u32> = Vec::new();
        let mut last_memory = Instant::now();
        loop {
            if let Some(every) = watchdog
                && last_watchdog.elapsed() >= every
            {
                self.systemd("WATCHDOG=1");
                last_watchdog = Instant::now();
            }
            let status = self.status_line(machine);
            // Before READY too: while a start keeps failing, `systemctl status` says so.
            if status != last_status {
                self.systemd(&format!("STATUS={status}"));
                last_status = status;
            }
            if let Some(t) = self.takeover.as_mut() {
                t.commit_when_accepted(&self.opts.home);
            }
            if let Some(new) = failpoint::victim()
                && let Some(pid) = machine.victim(new)
            {
                failpoint::clear();
                let which = if new { "new" } else { "old" };
                log(&format!(
                    "failpoint: killing the {which} generation (pid {pid})"
                ));
                generation::signal(pid, crate::machine::Sig::Kill);
            }
            // What the next generation's metrics show.
            generation::STREAK.store(
                machine.crash_streak() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            // The generations' pids, for a successor after a crash.
            let pids = machine.children();
            if pids != recorded {
                recover::record_children(self.home(), &pids);
                recorded = pids;
            }
            // After the record: the supervisor started again finds this one's generation.
            if self
                .takeover
                .as_mut()
                .is_some_and(crate::swap::Takeover::guardian_lost)
            {
                warn(
                    "the trial's guardian died before this supervisor took over: it goes on unguarded",
                );
            }
            let mut events = Vec::new();
            // One request per turn; whatever becomes of it, the turn goes on (a flood of refused
            // requests cannot keep the loop from its readiness socket and signals).
            if let Some((request, conn)) = self.control.poll()
                && let Some(event) = self.admit(request, conn)
            {
                events.push(event);
            }
            for sig in signals.pending() {
                events.push(Event::Signal(match sig {
                    SIGUSR1 => OsSignal::Reload,
                    SIGUSR2 => OsSignal::Dump,
                    SIGHUP => OsSignal::Handover,
                    _ => OsSignal::Stop,
                }));
            }
            while let Ok(outcome) = done.try_recv() {
                self.keep_copy(machine, outcome.copy, outcome.supervisor, &outcome.done);
                events.push(Event::Done(outcome.done));
            }
            match self.ready.notice_within(TURN) {
                Ok(Some(n)) => {
                    let pid = generation_of(machine, n.pid);
                    match n.kind {
                        notify::Kind::Ready => events.push(Event::Ready(pid)),
                        notify::Kind::Paused => events.push(Event::Paused(pid)),
                        notify::Kind::Watchdog => events.push(Event::Alive(pid)),
                        notify::Kind::Streams(admitted, failed, refused) => {
                            events.push(Event::Streams {
                                pid,
                                counts: StreamCounts {
                                    admitted,
                                    failed,
                                    refused,
                                },
                            });
                        }
                        notify::Kind::Enrolled(enrolled, contracts) => {
                            events.push(Event::Enrolled {
                                pid,
                                enrolled,
                                contracts,
                            });
                        }
                        notify::Kind::Other => {}
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn(&format!("readiness socket: {e}"));
                    std::thread::sleep(TURN);
                }
            }
            for (pid, how) in self.children.reap() {
                events.push(Event::Exited { pid, how });
            }
            // A new version's memory, once a second inside its health window.
            if let Some(pid) = machine.watched()
                && last_memory.elapsed() >= Duration::from_secs(1)
            {
                last_memory = Instant::now();
                if let Some(bytes) = crate::procfs::resident(pid) {
                    events.push(Event::Memory { pid, bytes });
                }
            }
            for &pid in machine.orphans() {
                // One that is this process's own child (it started itself again in place)
                // is reaped here, not left a zombie.
                if let Ok(p) = i32::try_from(pid) {
                    let _ = nix::sys::wait::waitpid(
                        nix::unistd::Pid::from_raw(p),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                    );
                }
                if !crate::procfs::alive(pid) {
                    events.push(Event::Exited {
                        pid,
                        how: crate::machine::Exit::Failed("gone".to_owned()),
                    });
                }
            }
            events.push(Event::Tick);
            for event in events {
                let actions = machine.handle(Instant::now(), event);
                if let Some(code) = self.perform(machine, actions) {
                    return Ok(code);
                }
            }
            if machine.change().is_none()
                && machine.successor().is_none()
                && matches!(machine.serving(), crate::machine::Serving::Ready { .. })
                && !machine.exiting()
                && let Some((copy, version)) = self.swap.take()
            {
                self.swap_supervisor(&copy, &version);
            }
        }
    }

    /// Performs `actions` (and what the events they answer at once lead to); `Some(code)` to
    /// exit.
    fn perform(&mut self, machine: &mut Machine, actions: Vec<Action>) -> Option<u8> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let answer = match action {
                Action::Spawn { role, binary } => Some(self.spawn(role, binary)),
                Action::Signal { pid, sig } => {
                    generation::signal(pid, sig);
                    None
                }
                Action::Job(job) => {
                    let (home, relay) = (self.opts.home.clone(), self.opts.relay.clone());
                    let copies = self.copies.clone();
                    let tx = self.jobs.clone();
                    std::thread::spawn(move || {
                        let _ = tx.send(change::run(&home, &relay, job, &copies));
                    });
                    None
                }
                Action::Journal {
                    version,
                    step,
                    detail,
                } => {
                    failpoint::step(self.home(), &version, step, &detail);
                    None
                }
                Action::Reply { id, answer } => {
                    if let Some(conn) = self.pending.remove(&id) {
                        conn.reply(&self.reply(machine, answer));
                    }
                    None
                }
                Action::Systemd(Notify::Ready) => {
                    let pid = machine.serving_pid().unwrap_or_default();
                    self.systemd(&format!(
                        "READY=1\nSTATUS=relay pid {pid}\nMAINPID={}",
                        std::process::id()
                    ));
                    if let Some(t) = self.takeover.as_mut() {
                        t.took_over();
                    }
                    None
                }
                Action::Systemd(Notify::Stopping) => {
                    if let Some(t) = self.takeover.as_mut() {
                        t.stopping();
                    }
                    self.systemd("STOPPING=1");
                    None
                }
                Action::Dump => {
                    let v = self.versions();
                    log(&format!(
                        "status: relay pid {} {:?}, version {}, {} draining, {}",
                        machine
                            .serving_pid()
                            .map_or_else(|| "none".to_owned(), |p| p.to_string()),
                        machine.serving(),
                        v.current.as_deref().unwrap_or("unknown"),
                        machine.draining().len(),
                        self.status_line(machine),
                    ));
                    None
                }
                Action::Log {
                    warn: true,
                    message,
                } => {
                    warn(&message);
                    None
                }
                Action::Log { message, .. } => {
                    log(&message);
                    None
                }
                Action::CountUnhealthy(criterion) => {
                    generation::count_unhealthy(criterion);
                    None
                }
                Action::CountHung => {
                    generation::HUNG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                Action::CountRestart => {
                    RESTARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                Action::Exit(code) => {
                    let _ = std::fs::remove_file(self.home().join(recover::CHILDREN));
                    for (_, conn) in self.pending.drain() {
                        conn.reply(&Reply::error("the supervisor stopped"));
                    }
                    return Some(code);
                }
            };
            if let Some(event) = answer {
                queue.extend(machine.handle(Instant::now(), event));
            }
        }
        None
    }

    /// Replaces this process's image with the release's own supervisor, on trial
    /// ([`crate::swap`]); returns only when that could not begin (this one serves on).
    fn swap_supervisor(&mut self, copy: &Verified, version: &str) {
        use std::os::fd::AsFd as _;
        let outcome = crate::swap::exec_successor(
            &self.opts.home,
            version,
            copy,
            crate::swap::Handed {
                lock: self.instance.as_fd(),
                listener: self.listener.as_fd(),
            },
        );
        if let crate::swap::NotSwapped::NotStarted(_) = outcome {
            return;
        }
        // The exec failed, its descriptor mappings perhaps half done: this
        // supervisor starts again from scratch on the same socket (same pid, still systemd's
        // main process), or exits for systemd to start it again.
        let listening =
            rustix::net::sockopt::socket_acceptconn(self.listener.as_fd()).unwrap_or(false);
        let e = crate::swap::restart_self(listening.then(|| self.listener.as_fd()));
        warn(&format!(
            "could not start this supervisor again after a failed exec: {e}; exiting"
        ));
        std::process::exit(i32::from(crate::exit::FAILURE));
    }

    fn spawn(&mut self, role: Role, binary: Binary) -> Event {
        let copy = match binary {
            Binary::Current => Some(&self.copies.current),
            Binary::Staged => self.copies.staged.as_ref(),
            Binary::Prev => self.copies.prev.as_ref(),
        };
        let started = copy
            .ok_or_else(|| format!("no verified copy of the {binary:?} binary"))
            .and_then(|copy| {
                generation::spawn(
                    &self.opts.home,
                    &self.opts.relay,
                    self.liveness,
                    copy,
                    &self.listener,
                    self.ready.name(),
                )
            });
        match started {
            Ok(child) => {
                let pid = self.children.add(child);
                // At once: if the supervisor dies before the loop rewrites the list, its
                // successor must still find this one.
                recover::add_child(self.home(), pid);
                Event::Spawned { role, pid }
            }
            Err(why) => Event::SpawnFailed { role, why },
        }
    }

    /// A control request read: refused (on trial, not the asker's to ask), done at once (a
    /// skip), or passed to the machine as an event, its connection kept for the reply.
    fn admit(
        &mut self,
        request: crate::control::Request,
        conn: crate::control::Pending,
    ) -> Option<Event> {
        use crate::control::Request as Asked;
        if self
            .takeover
            .as_ref()
            .is_some_and(crate::swap::Takeover::pending)
            && !matches!(request, Asked::Status | Asked::Skip { .. })
        {
            conn.reply(&Reply::error(
                "busy: this supervisor is on trial, taking over from the previous one",
            ));
            return None;
        }
        let asker = crate::control::Asker {
            peer: conn.peer(),
            relay: crate::privsep::user(),
            own: rustix::process::geteuid().as_raw(),
        };
        let home = self.home();
        let skipped = |v: &str| {
            let list = wireleap_home::skip::SkipList::load(home).map_err(|e| e.to_string())?;
            Ok(semver::Version::parse(v).is_ok_and(|v| list.contains(&v)))
        };
        if let Err(why) = crate::control::authorize(&request, &asker, home, skipped) {
            warn(&format!("control request refused: {why}"));
            conn.reply(&Reply::error(why));
            return None;
        }
        let request = match request {
            Asked::Status => Request::Status,
            Asked::Upgrade { version } => Request::Upgrade(version),
            Asked::Rollback { recall } => Request::Rollback(recall.map(crate::machine::Recall)),
            // A skip changes no state of the machine's: done beside the loop, which answers.
            Asked::Skip { version, statement } => {
                check_skip(self.home(), &self.copies.current, version, statement, conn);
                return None;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, conn);
        Some(Event::Request { id, request })
    }

    /// Keeps the copy a job verified, and moves the copies along when a change commits.
    fn keep_copy(
        &mut self,
        machine: &Machine,
        copy: Option<Verified>,
        supervisor: Option<Verified>,
        done: &Done,
    ) {
        let kind = machine.change().map(|c| c.kind);
        match (done, kind) {
            (Done::Prepared(Ok(v)), Some(Kind::Upgrade)) => {
                self.copies.staged = copy.map(Arc::new);
                self.copies.staged_supervisor = supervisor.map(|s| (Arc::new(s), v.to.clone()));
            }
            (Done::Prepared(Ok(_)), Some(Kind::Rollback)) => {
                self.copies.prev = copy.map(Arc::new);
            }
            (Done::Committed(Ok(())), Some(kind)) => {
                let new = match kind {
                    Kind::Upgrade => self.copies.staged.take(),
                    Kind::Rollback => self.copies.prev.take(),
                };
                if let Some(new) = new {
                    self.copies.current = new;
                }
                self.copies.staged = None;
                self.copies.prev = None;
                // The relay is committed: the release's own supervisor takes over next.
                self.swap = self.copies.staged_supervisor.take();
                self.refresh_versions();
            }
            // A failed commit is tried again with the same copies.
            (Done::Committed(Err(_)), _) => {}
            (Done::Undone, _) => {
                self.copies.staged = None;
                self.copies.prev = None;
                self.copies.staged_supervisor = None;
            }
            _ => {}
        }
    }

    fn reply(&self, machine: &Machine, answer: Answer) -> Reply {
        match answer {
            Answer::Status => {
                let v = self.versions();
                let mut reply = Reply::ok();
                reply.pid = machine.serving_pid();
                reply.state = Some(machine.shown());
                reply.version = v.current;
                reply.prev_version = v.prev;
                reply.draining = machine.draining().to_vec();
                reply.highest_committed = upgrade::highest_committed(self.home())
                    .ok()
                    .flatten()
                    .map(|v| v.to_string());
                reply.skipped = Some(upgrade::skipped(self.home()));
                reply.last = recover::last_entry(self.home());
                reply
            }
            Answer::Ok(v) => Reply::ok().versions(&v.to, Some(&v.from)),
            Answer::Refused { why, version, from } => {
                let mut reply = Reply::error(why);
                reply.version = version;
                reply.from = from;
                reply
            }
        }
    }

    fn status_line(&self, machine: &Machine) -> String {
        use wireleap_home::control::State;
        match (machine.shown(), machine.change()) {
            (State::RollingBack, Some(c)) => format!(
                "rolling back to {}",
                c.versions
                    .as_ref()
                    .map_or("wireleap-relay.prev", |v| v.to.as_str())
            ),
            (State::Upgrading, Some(c)) => format!("upgrading to {}", c.asked),
            (_, None) if let crate::machine::Serving::Restarting { at, .. } = machine.serving() => {
                format!(
                    "relay exited {} times in a row; next try in {}s",
                    machine.crash_streak(),
                    at.saturating_duration_since(Instant::now()).as_secs()
                )
            }
            (State::Serving, _) => format!(
                "serving: relay {} (pid {})",
                self.versions().current.as_deref().unwrap_or("?"),
                machine.serving_pid().unwrap_or_default()
            ),
            _ => "starting the relay".to_owned(),
        }
    }

    fn versions(&self) -> Versions {
        self.versions.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Reads the installed versions beside the loop (each binary's `version`, bounded).
    fn refresh_versions(&self) {
        let current = Arc::clone(&self.copies.current);
        let home = self.opts.home.clone();
        let versions = Arc::clone(&self.versions);
        std::thread::spawn(move || {
            let prev = home.join(upgrade::PREV);
            let read = Versions {
                current: current
                    .version
                    .clone()
                    .or_else(|| generation::version_of(&current).ok())
                    .map(|v| v.to_string()),
                // What its statement signs (`.prev` is then neither copied nor run just to be
                // shown); one installed by hand, without a statement, is asked.
                prev: prev
                    .exists()
                    .then(|| {
                        let statement = home.join(upgrade::PREV_STATEMENT);
                        if statement.exists() {
                            upgrade::signed_version(&home, &statement)
                        } else {
                            upgrade::installed_copy(&home, &prev, &statement, None)
                                .ok()
                                .and_then(|(_, v)| v)
                        }
                    })
                    .flatten()
                    .map(|v| v.to_string()),
            };
            if let Ok(mut v) = versions.lock() {
                *v = read;
            }
        });
    }

    fn systemd(&self, message: &str) {
        notify::to_systemd(self.opts.notify_socket.as_deref(), message);
    }
}

/// The generation a notice from `sender` counts for: the serving one or the successor when it
/// is that process or one of its descendants (a release may be a wrapper that starts the relay);
/// else the sender itself (which the machine ignores).
fn generation_of(machine: &Machine, sender: u32) -> u32 {
    machine
        .successor_pid()
        .into_iter()
        .chain(machine.serving_pid())
        .find(|&pid| sent_by(sender, pid))
        .unwrap_or(sender)
}

/// Whether `sender` is `pid` or one of its descendants, within a few generations.
fn sent_by(sender: u32, pid: u32) -> bool {
    let mut at = sender;
    for _ in 0..4 {
        if at == pid {
            return true;
        }
        let Some(stat) = crate::procfs::stat(at) else {
            return false;
        };
        at = stat.ppid;
    }
    false
}

/// The supervisor's pid file, `wireleap-relay-supervisor.pid`: written once this instance holds
/// the home, removed on exit only if it still names this process.
#[derive(Debug)]
struct PidFile {
    path: PathBuf,
}

impl PidFile {
    fn write(home: &Path) -> Self {
        let path = home.join(PID_FILE);
        // Replaced, never written through: whatever is at the name (a link someone planted)
        // is not followed.
        if let Err(e) = wireleap_home::durable::write_atomic(
            &path,
            std::process::id().to_string().as_bytes(),
            0o644,
        ) {
            warn(&format!("could not write {}: {e}", path.display()));
        }
        Self { path }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let mine = wireleap_home::durable::read_regular(&self.path, 64, Some(own_uid()))
            .is_ok_and(|t| String::from_utf8_lossy(&t).trim() == std::process::id().to_string());
        if mine {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// This process's effective uid.
fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A skip the relay asked for: its proof is checked on a thread of its own (the trust is read
/// and a signature verified), one at a time (another is answered busy), which answers `conn`.
fn check_skip(
    home: &Path,
    current: &Arc<Verified>,
    version: String,
    statement: String,
    conn: crate::control::Pending,
) {
    use std::sync::atomic::Ordering::SeqCst;
    /// Whether a check runs.
    static CHECKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    /// Lets the next check run, however this one ends.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            CHECKING.store(false, SeqCst);
        }
    }
    if CHECKING.swap(true, SeqCst) {
        conn.reply(&Reply::error("busy: another skip is being checked"));
        return;
    }
    let (home, current) = (home.to_path_buf(), current.clone());
    let checked = std::thread::Builder::new()
        .name("skip".into())
        .spawn(move || {
            let _done = Done;
            let asked = match &current.version {
                Some(v) => Ok(v.clone()),
                None => crate::generation::version_of(&current),
            }
            .and_then(|running| crate::upgrade::skip_asked(&home, &version, &statement, &running));
            conn.reply(&match asked {
                Ok(()) => Reply::ok(),
                Err(why) => {
                    warn(&format!("skip of {version} refused: {why}"));
                    Reply::error(why)
                }
            });
        });
    if let Err(e) = checked {
        CHECKING.store(false, SeqCst);
        warn(&format!("a skip request was dropped: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_travel_from_the_relay_to_the_supervisor() {
        let both = Waits {
            health_window: Some(Duration::from_millis(2500)),
            ready_timeout: Some(Duration::from_secs(45)),
            max_memory: Some(512 << 20),
            liveness: Some(Duration::from_secs(5)),
            probe_count: Some(0),
            refused_margin: Some(20),
            require_enrollment: Some(false),
        };
        assert_eq!(
            both.to_json(),
            r#"{"health_window_secs":2.5,"ready_timeout_secs":45.0,"liveness_secs":5.0,"max_memory_bytes":536870912,"probe_count":0,"refused_margin_percent":20,"require_enrollment":false}"#
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
    fn the_statement_sits_beside_its_binary() {
        assert_eq!(
            statement_of(Path::new("/h/wireleap-relay")),
            Path::new("/h").join(wireleap_home::files::CURRENT_STATEMENT)
        );
    }
}

//! The supervisor's state machine, with no I/O.
//!
//! [`Machine::handle`] takes one [`Event`] at an instant and returns the [`Action`]s the loop
//! ([`crate::run`]) performs; the loop turns what happens (a child exits, a READY arrives, a job
//! finishes, a control request or a signal comes in, time passes) back into events. Every wait
//! is a deadline checked on [`Event::Tick`], and every slow step (verifying, migrating,
//! committing, undoing) is a [`Job`] the loop runs beside itself, so nothing here waits and every
//! state has a way out.
//!
//! What the machine knows, each an enum of its own:
//!
//! | part | states |
//! | --- | --- |
//! | the serving generation ([`Serving`]) | launching, starting, ready, abandoned (stopped for not getting ready), gone (died while a successor starts), restarting (backoff), waiting (for an undo), stopped |
//! | the successor ([`Successor`]) | pausing (the serving one confirms its heartbeats paused), launching, starting |
//! | a change ([`Phase`]) | preparing (job), handing over, watching (health window), committing (job), undoing (job), interrupted (undone at exit) |
//!
//! Besides: the generations draining, the processes told to stop (killed at a deadline), the
//! generations a crashed predecessor left (orphans), the crash budget, and whether the
//! supervisor is exiting.

use std::time::{Duration, Instant};

use wireleap_home::control::State as Shown;
use wireleap_home::journal::Step;

use crate::budget::{Budget, Verdict};
use crate::exit;

/// A process id.
pub type Pid = u32;
/// How long a relay replaced for hanging gets to drain before SIGKILL.
pub const HUNG_GRACE: Duration = Duration::from_secs(2);

/// How long after a failed commit it is tried again.
pub const COMMIT_RETRY: Duration = Duration::from_secs(10);

/// A control request waiting for its reply (the loop keeps its connection under this id).
pub type RequestId = u64;

/// Which binary a generation runs (the loop maps each to the verified copy it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `wireleap-relay`, the committed one.
    Current,
    /// The staged release, verified.
    Staged,
    /// `wireleap-relay.prev`, for the operator's rollback.
    Prev,
}

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// To a staged, verified release.
    Upgrade,
    /// The operator's rollback to `wireleap-relay.prev`.
    Rollback,
}

impl Kind {
    /// The verified copy the change's new generation runs from until the commit.
    #[must_use]
    pub fn binary(self) -> Binary {
        match self {
            Kind::Upgrade => Binary::Staged,
            Kind::Rollback => Binary::Prev,
        }
    }
}

/// Which slot a started process fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The serving generation (first start, restart after a crash).
    Serving,
    /// The generation that takes over (handover, upgrade, rollback).
    Successor,
}

/// A signal sent to a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// Stop (gracefully).
    Term,
    /// Stop now.
    Kill,
    /// Stop accepting and drain.
    Hup,
    /// Reload the config.
    Usr1,
    /// Print status.
    Usr2,
    /// Resume heartbeats after a pause.
    Cont,
    /// Pause heartbeats (a successor is about to start).
    Winch,
}

/// A signal the supervisor received, by what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsSignal {
    /// SIGTERM, SIGINT, SIGQUIT.
    Stop,
    /// SIGUSR1: passed on.
    Reload,
    /// SIGUSR2: status in the log, passed on.
    Dump,
    /// SIGHUP: a new generation of the same binary.
    Handover,
}

/// A control request, as far as the machine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Where things stand.
    Status,
    /// Install the staged release of this version.
    Upgrade(String),
    /// Go back to `wireleap-relay.prev`: the operator's (`None`), or a recall's, with the signed
    /// rollout document [`Job::Prepare`] verifies.
    Rollback(Option<Recall>),
}

/// A recall's rollout document, as the relay passed it on (clear-signed text, not verified
/// yet). Shown by its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Recall(pub String);

impl std::fmt::Debug for Recall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recall({} bytes)", self.0.len())
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal an operator sends to stop it (exit 130, 131, 143).
    Graceful,
    /// Anything else, described (`exit status: 1`, `signal: 9`).
    Failed(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Graceful => f.write_str("stopped"),
            Self::Failed(how) => f.write_str(how),
        }
    }
}

/// The versions a change goes between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// The version being installed.
    pub to: String,
    /// The version that ran before.
    pub from: String,
}

/// Why a change is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The new version failed: an upgrade's version is skipped.
    Failed,
    /// The supervisor is stopping, or the relay stopped serving meanwhile: nothing is blamed.
    Interrupted,
}

/// Slow work the loop runs beside itself; its end comes back as [`Event::Done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Verify the staged release (an upgrade to `asked`) or find `.prev` (a rollback), read the
    /// versions, migrate. On failure the job itself journals and cleans up.
    Prepare {
        /// Upgrade or rollback.
        kind: Kind,
        /// The version asked for (an upgrade).
        asked: Option<String>,
        /// A rollback's recall, verified before anything is done.
        recall: Option<Recall>,
    },
    /// The renames of a commit.
    Commit {
        /// Upgrade or rollback.
        kind: Kind,
        /// Between which versions.
        versions: Versions,
    },
    /// The in-band probe of a new version inside its health window: PINGs through the public
    /// listening socket, answered by the relay's own key.
    Probe {
        /// The generation probed (the only one accepting then).
        pid: Pid,
    },
    /// Undo a prepared change: migrations back, staged files gone, skipped if it failed.
    Undo {
        /// Upgrade or rollback.
        kind: Kind,
        /// Between which versions.
        versions: Versions,
        /// Why, for the journal and the reply.
        why: String,
        /// Failed or interrupted.
        cause: Cause,
    },
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// [`Job::Prepare`]: ready to start the new generation, or refused with why.
    Prepared(Result<Versions, String>),
    /// [`Job::Commit`].
    Committed(Result<(), String>),
    /// [`Job::Undo`].
    Undone,
    /// [`Job::Probe`].
    Probed {
        /// The generation probed.
        pid: Pid,
        /// How it went.
        outcome: Probe,
    },
}

/// How a probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Every ping was answered PONG by the relay's key (what it printed).
    Passed(String),
    /// One was not: why.
    Failed(String),
    /// The version cannot probe (a relay built before the command): not judged.
    Unavailable(String),
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed (deadlines are checked).
    Tick,
    /// A [`Action::Spawn`] started this process.
    Spawned {
        /// Its slot.
        role: Role,
        /// Its pid.
        pid: Pid,
    },
    /// A [`Action::Spawn`] could not start the binary.
    SpawnFailed {
        /// Its slot.
        role: Role,
        /// Why.
        why: String,
    },
    /// A generation (or a process it started) said `READY=1`.
    Ready(Pid),
    /// A generation confirmed its heartbeats are paused.
    Paused(Pid),
    /// A generation's liveness ping (`WATCHDOG=1`): it serves.
    Alive(Pid),
    /// A generation's counts of streams since it started (`WIRELEAP_STREAMS`, each second when
    /// they changed).
    Streams {
        /// Its pid.
        pid: Pid,
        /// Its counts.
        counts: StreamCounts,
    },
    /// A generation's count of contracts it is enrolled in changed.
    Enrolled {
        /// Its pid.
        pid: Pid,
        /// Enrolled in so many.
        enrolled: u32,
        /// Of so many contracts.
        contracts: u32,
    },
    /// The resident memory of a generation whose health window runs (read from `/proc`).
    Memory {
        /// Its pid.
        pid: Pid,
        /// Its resident set, in bytes.
        bytes: u64,
    },
    /// A process the supervisor watches ended.
    Exited {
        /// Its pid.
        pid: Pid,
        /// How.
        how: Exit,
    },
    /// A control request.
    Request {
        /// Its connection.
        id: RequestId,
        /// What it asks.
        request: Request,
    },
    /// A signal to the supervisor.
    Signal(OsSignal),
    /// A job ended.
    Done(Done),
}

/// What a control request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The status (the loop adds what the files say).
    Status,
    /// The change is done.
    Ok(Versions),
    /// Refused or failed, with why and what versions it concerned.
    Refused {
        /// Why.
        why: String,
        /// The version asked for or being installed.
        version: Option<String>,
        /// The version that ran.
        from: Option<String>,
    },
}

/// What systemd is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// `READY=1`: the first generation serves.
    Ready,
    /// `STOPPING=1`.
    Stopping,
}

/// Something for the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a generation of `binary` in `role`; answer with [`Event::Spawned`] or
    /// [`Event::SpawnFailed`] before anything else.
    Spawn {
        /// Its slot.
        role: Role,
        /// What it runs.
        binary: Binary,
    },
    /// Send a signal.
    Signal {
        /// To whom.
        pid: Pid,
        /// Which.
        sig: Sig,
    },
    /// Run a job beside the loop.
    Job(Job),
    /// Append a step to the journal (and pass its failpoint).
    Journal {
        /// The version concerned.
        version: String,
        /// The step.
        step: Step,
        /// Detail.
        detail: String,
    },
    /// Answer a control request.
    Reply {
        /// Its connection.
        id: RequestId,
        /// The answer.
        answer: Answer,
    },
    /// Tell systemd.
    Systemd(Notify),
    /// Log the supervisor's status (SIGUSR2).
    Dump,
    /// Log a line.
    Log {
        /// A warning (something failed or was refused) rather than information.
        warn: bool,
        /// The line.
        message: String,
    },
    /// A crashed relay is restarted (counted for the metrics).
    CountRestart,
    /// A relay that hung is replaced (counted for the metrics).
    CountHung,
    /// A new version failed this health criterion (one of [`CRITERIA`]; counted for the
    /// metrics).
    CountUnhealthy(&'static str),
    /// Exit with this code (every child is gone).
    Exit(u8),
}

/// The waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a new generation has to report ready.
    pub ready_timeout: Duration,
    /// How long a new version must serve before it is committed.
    pub health_window: Duration,
    /// How long a serving generation has to confirm its heartbeats paused.
    pub pause_wait: Duration,
    /// How long a stopping process gets before SIGKILL.
    pub stop_timeout: Duration,
    /// How long a draining generation gets before SIGKILL (its own drain bound, and some).
    pub drain_timeout: Duration,
    /// How long a serving generation that pinged once may go without a liveness ping before it
    /// is replaced; `None`: not watched.
    pub liveness: Option<Duration>,
    /// A new version whose resident memory passes this inside its health window is rolled
    /// back; `None`: not watched.
    pub max_memory: Option<u64>,
    /// How many PINGs a new version must answer in the in-band probe ([`Job::Probe`]) inside
    /// its window (0: no probe).
    pub probe_count: u32,
    /// How many percentage points more of its streams a new version may refuse than the old
    /// one did.
    pub refused_margin_percent: u32,
    /// Whether a new version must end its window enrolled in every contract (when the old one
    /// was).
    pub require_enrollment: bool,
}

/// The health criteria a new version is judged by inside its window (owned by the home crate:
/// the relay's outcome reports name them too).
pub use wireleap_home::control::HEALTH_CRITERIA as CRITERIA;

/// How long after its window a new version's probe may still report.
pub const PROBE_GRACE: Duration = Duration::from_secs(120);

/// A new version is judged by its share of refused streams once it saw this many.
pub const MIN_STREAMS_JUDGED: u64 = 20;

/// How much larger than the old version's share of refused streams a new version's may be by
/// default, in percentage points (clients' own mistakes are refused by both alike).
pub const REFUSED_MARGIN_PERCENT: u32 = 10;

/// A generation's counts of streams since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCounts {
    /// Admitted.
    pub admitted: u64,
    /// Refused for its own failure (a 5xx other than the target's).
    pub failed: u64,
    /// Refused at all, a client's mistake included (`None`: an older relay does not say).
    pub refused: Option<u64>,
}

/// Keeps `report` as the latest of its generation's, and only the reports of `live` ones.
fn latest<T>(reports: &mut Vec<(Pid, T)>, live: [Option<Pid>; 2], report: (Pid, T)) {
    reports.retain(|(p, _)| *p != report.0 && live.contains(&Some(*p)));
    if live.contains(&Some(report.0)) {
        reports.push(report);
    }
}

/// The share of streams refused, if any were seen.
#[allow(clippy::cast_precision_loss)]
fn refused_share(admitted: u64, refused: u64) -> Option<f64> {
    let all = admitted.checked_add(refused)?;
    (all > 0).then(|| refused as f64 / all as f64)
}

/// The serving generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// Its [`Action::Spawn`] is out.
    Launching,
    /// Started, not ready yet.
    Starting {
        /// Its pid.
        pid: Pid,
        /// Since when.
        since: Instant,
    },
    /// Serving.
    Ready {
        /// Its pid.
        pid: Pid,
    },
    /// Stopped by the supervisor for not getting ready: its exit is a crash, whatever its code.
    Abandoned {
        /// Its pid.
        pid: Pid,
    },
    /// It exited while a successor starts: the successor takes over once ready.
    Gone,
    /// Waiting out the backoff after a crash.
    Restarting {
        /// When to start again.
        at: Instant,
        /// What starts then (the committed binary; the new version's verified copy while its
        /// commit waits to be tried again).
        binary: Binary,
    },
    /// Waiting for an undo before the committed binary starts again.
    Waiting,
    /// Told to stop: the supervisor is exiting.
    Stopped,
}

impl Serving {
    fn pid(&self) -> Option<Pid> {
        match *self {
            Self::Starting { pid, .. } | Self::Ready { pid } | Self::Abandoned { pid } => Some(pid),
            _ => None,
        }
    }
}

/// The generation that takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Successor {
    /// The serving generation was asked to pause its heartbeats; the successor starts once it
    /// confirms, or at `until`.
    Pausing {
        /// What it will run.
        binary: Binary,
        /// Who has not confirmed yet.
        waiting: Vec<Pid>,
        /// The deadline.
        until: Instant,
    },
    /// Its [`Action::Spawn`] is out.
    Launching {
        /// What it runs.
        binary: Binary,
    },
    /// Started, not ready yet.
    Starting {
        /// Its pid.
        pid: Pid,
        /// Since when.
        since: Instant,
    },
}

/// Where a change stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// [`Job::Prepare`] runs.
    Preparing,
    /// The successor starts.
    HandingOver,
    /// The new generation serves; the health window runs.
    Watching {
        /// Since when.
        since: Instant,
    },
    /// [`Job::Commit`] runs.
    Committing,
    /// A commit failed (the disk, say): the new version serves and the commit is tried again
    /// then.
    CommitRetry {
        /// When.
        at: Instant,
    },
    /// The new generation failed and was told to stop: the undo starts once it has exited
    /// (it must not write the home while its migrations are undone).
    Failing {
        /// The failed generation.
        pid: Pid,
        /// Why it failed.
        why: String,
        /// What follows the undo.
        after: AfterUndo,
    },
    /// [`Job::Undo`] runs; then this.
    Undoing(AfterUndo),
    /// Prepared, then the supervisor began to stop: undone once its generations are gone.
    Interrupted,
}

/// What follows an undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUndo {
    /// Nothing: the old generation serves on.
    Nothing,
    /// The old generation serves on and resumes its heartbeats (its successor never took over).
    Resume,
    /// The committed binary starts again (nothing serves).
    StartCurrent,
    /// The supervisor is exiting.
    Exit,
}

/// A change in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Upgrade or rollback.
    pub kind: Kind,
    /// The request that asked for it (answered when it ends).
    pub id: RequestId,
    /// The version asked for (an upgrade; empty for a rollback).
    pub asked: String,
    /// Known once prepared.
    pub versions: Option<Versions>,
    /// Where it stands.
    pub phase: Phase,
    /// Why it is being undone (the reply's reason).
    pub why: Option<String>,
}

/// A process told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stopping {
    pid: Pid,
    /// SIGKILL then; `None` once sent.
    kill_at: Option<Instant>,
}

/// The supervisor's state.
#[derive(Debug)]
pub struct Machine {
    timing: Timing,
    serving: Serving,
    successor: Option<Successor>,
    change: Option<Change>,
    draining: Vec<Pid>,
    orphans: Vec<Pid>,
    stopping: Vec<Stopping>,
    budget: Budget,
    told_systemd: bool,
    exiting: Option<u8>,
    /// The last liveness ping of the serving generation and of its successor (a generation
    /// that never pinged, such as an older relay, is not watched).
    pings: Vec<(Pid, Instant)>,
    /// The probe of the new version being watched: `(pid, passed)`, `passed` false while it
    /// runs.
    probe: Option<(Pid, bool)>,
    /// The last enrollment count each live generation reported: `(pid, (enrolled, contracts))`.
    enrolled: Vec<(Pid, (u32, u32))>,
    /// Whether the generation that handed over to the one serving was enrolled in all its
    /// contracts then.
    old_enrolled_all: bool,
    /// The last counts of streams each live generation reported.
    streams: Vec<(Pid, StreamCounts)>,
    /// The counts of streams of the generation that handed over, over its life.
    old_streams: Option<StreamCounts>,
    /// A hung generation being replaced: killed once its successor is ready.
    hung: Option<Pid>,
    /// No hung generation is replaced before then (past the crash budget).
    hung_hold: Option<Instant>,
    /// Since when the serving generation serves (a whole [`crate::budget::WINDOW`] of it ends
    /// a crash streak).
    ready_since: Option<(Pid, Instant)>,
}

impl Machine {
    /// The machine at start: the first generation is to be launched (with
    /// [`Machine::start`]); `orphans` are generations a crashed predecessor left serving.
    #[must_use]
    pub fn new(timing: Timing, orphans: Vec<Pid>) -> Self {
        Self {
            timing,
            serving: Serving::Launching,
            successor: None,
            change: None,
            draining: Vec::new(),
            orphans,
            stopping: Vec::new(),
            budget: Budget::default(),
            told_systemd: false,
            exiting: None,
            pings: Vec::new(),
            probe: None,
            enrolled: Vec::new(),
            old_enrolled_all: false,
            streams: Vec::new(),
            old_streams: None,
            hung: None,
            hung_hold: None,
            ready_since: None,
        }
    }

    /// The first actions: start the committed binary.
    #[must_use]
    pub fn start(&self) -> Vec<Action> {
        vec![Action::Spawn {
            role: Role::Serving,
            binary: Binary::Current,
        }]
    }

    /// The serving generation's state.
    #[must_use]
    pub fn serving(&self) -> &Serving {
        &self.serving
    }

    /// The successor, if one starts.
    #[must_use]
    pub fn successor(&self) -> Option<&Successor> {
        self.successor.as_ref()
    }

    /// The change in progress.
    #[must_use]
    pub fn change(&self) -> Option<&Change> {
        self.change.as_ref()
    }

    /// The serving generation's pid.
    #[must_use]
    pub fn serving_pid(&self) -> Option<Pid> {
        self.serving.pid()
    }

    /// The successor's pid, once started.
    #[must_use]
    pub fn successor_pid(&self) -> Option<Pid> {
        match self.successor {
            Some(Successor::Starting { pid, .. }) => Some(pid),
            _ => None,
        }
    }

    /// The generations draining.
    #[must_use]
    pub fn draining(&self) -> &[Pid] {
        &self.draining
    }

    /// The generations a predecessor left, still running.
    #[must_use]
    pub fn orphans(&self) -> &[Pid] {
        &self.orphans
    }

    /// The relay processes this supervisor answers for (for its successor after a crash, or
    /// the supervisor it hands over to): the serving one, the successor, those draining, those
    /// told to stop, and the ones a predecessor left that still run.
    #[must_use]
    pub fn children(&self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self
            .serving
            .pid()
            .into_iter()
            .chain(self.successor_pid())
            .chain(self.draining.iter().copied())
            .chain(self.stopping.iter().map(|s| s.pid))
            .chain(self.orphans.iter().copied())
            .collect();
        let mut seen = std::collections::HashSet::new();
        pids.retain(|p| seen.insert(*p));
        pids
    }

    /// Whether the supervisor is on its way out.
    #[must_use]
    pub fn exiting(&self) -> bool {
        self.exiting.is_some()
    }

    /// What `status` shows.
    #[must_use]
    pub fn shown(&self) -> Shown {
        match (&self.change, &self.serving) {
            (Some(c), _) if c.kind == Kind::Rollback => Shown::RollingBack,
            (Some(_), _) => Shown::Upgrading,
            (None, Serving::Ready { .. }) => Shown::Serving,
            (None, _) => Shown::Starting,
        }
    }

    /// The pid a failpoint's victim names, once it exists: the generation the change starts
    /// (`new`: the successor, or the serving one once it took over) or the one that served
    /// before it (`old`: the serving one until the successor takes over, then the last to drain).
    #[must_use]
    pub fn victim(&self, new: bool) -> Option<Pid> {
        let took_over = self.change.as_ref().is_none_or(|c| {
            matches!(
                c.phase,
                Phase::Watching { .. } | Phase::Committing | Phase::CommitRetry { .. }
            )
        });
        match (new, self.successor_pid(), took_over) {
            (true, Some(p), _) => Some(p),
            (true, None, true) => self.serving.pid(),
            (true, None, false) => None,
            (false, Some(_), _) | (false, None, false) => self.serving.pid(),
            (false, None, true) => self.draining.last().copied(),
        }
    }

    /// Handles one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Out::default();
        match event {
            Event::Tick => self.tick(now, &mut out),
            Event::Spawned { role, pid } => self.spawned(now, role, pid, &mut out),
            Event::SpawnFailed { role, why } => self.spawn_failed(now, role, &why, &mut out),
            Event::Ready(pid) => self.ready(now, pid, &mut out),
            Event::Paused(pid) => self.paused(pid, &mut out),
            Event::Alive(pid) => {
                if self.serving.pid() == Some(pid) || self.successor_pid() == Some(pid) {
                    self.pinged(pid, Some(now));
                }
            }
            Event::Streams { pid, counts } => {
                let live = [self.serving.pid(), self.successor_pid()];
                latest(&mut self.streams, live, (pid, counts));
            }
            Event::Enrolled {
                pid,
                enrolled,
                contracts,
            } => {
                let live = [self.serving.pid(), self.successor_pid()];
                latest(&mut self.enrolled, live, (pid, (enrolled, contracts)));
            }
            Event::Memory { pid, bytes } => {
                if let Some(bound) = self.timing.max_memory
                    && bytes > bound
                    && self.watched() == Some(pid)
                {
                    self.unhealthy(
                        format!(
                            "memory: {} MiB resident, above the bound of {} MiB",
                            bytes >> 20,
                            bound >> 20
                        ),
                        &mut out,
                    );
                }
            }
            Event::Exited { pid, how } => self.exited(now, pid, &how, &mut out),
            Event::Request { id, request } => self.request(id, request, &mut out),
            Event::Signal(sig) => self.signal(now, sig, &mut out),
            Event::Done(done) => self.done(now, done, &mut out),
        }
        if self.exiting.is_some() {
            self.finish_exit(&mut out);
        }
        out.0
    }

    fn tick(&mut self, now: Instant, out: &mut Out) {
        for s in &mut self.stopping {
            if s.kill_at.is_some_and(|at| now >= at) {
                s.kill_at = None;
                out.log(format!(
                    "pid {} did not stop in {:?}; killing it",
                    s.pid, self.timing.stop_timeout
                ));
                out.signal(s.pid, Sig::Kill);
            }
        }
        match self.serving {
            Serving::Starting { pid, since } if now >= since + self.timing.ready_timeout => {
                out.log(format!(
                    "relay (pid {pid}) not ready after {:?}; stopping it",
                    self.timing.ready_timeout
                ));
                self.stop(now, pid, out);
                self.serving = Serving::Abandoned { pid };
            }
            Serving::Restarting { at, binary } if now >= at && self.exiting.is_none() => {
                self.serving = Serving::Launching;
                out.spawn(Role::Serving, binary);
            }
            _ => {}
        }
        match &self.successor {
            Some(Successor::Pausing { waiting, until, .. }) if now >= *until => {
                out.log(format!(
                    "pid {waiting:?} did not confirm its heartbeats paused within {:?}; starting the new generation anyway",
                    self.timing.pause_wait
                ));
                self.launch_successor(out);
            }
            Some(Successor::Starting { since, .. })
                if now >= *since + self.timing.ready_timeout =>
            {
                let why = format!("was not ready after {:?}", self.timing.ready_timeout);
                self.successor_failed(now, &why, false, out);
            }
            _ => {}
        }
        self.check_liveness(now, out);
        if let (Some((pid, since)), Some(serving)) = (self.ready_since, self.serving.pid())
            && pid == serving
            && matches!(self.serving, Serving::Ready { .. })
            && now.saturating_duration_since(since) >= crate::budget::WINDOW
            && self.budget.streak() > 0
        {
            self.budget.reset();
        }
        self.check_window(now, out);
        // A new version that pinged is committed only on a fresh ping: one that hangs at the
        // end of its window is caught by the liveness bound first.
        let fresh = match (self.timing.liveness, self.watched()) {
            (Some(bound), Some(pid)) => self
                .last_ping(pid)
                .is_none_or(|at| now.saturating_duration_since(at) <= bound / 2),
            _ => true,
        };
        // At the end of its window a new version must be enrolled in every contract, unless
        // the old one was not either when it handed over (the directory's trouble, not the
        // release's): a version that reports no count (an older relay) is not judged.
        if let Some((pid, _)) = self.window_over(now)
            && let Some(&(_, (enrolled, contracts))) = self.enrolled.iter().find(|(p, _)| *p == pid)
            && enrolled < contracts
            && self.old_enrolled_all
            && self.timing.require_enrollment
        {
            self.unhealthy(
                format!(
                    "enrollment: enrolled in {enrolled} of its {contracts} contracts at the end of its window (the previous version was in all)"
                ),
                out,
            );
            return;
        }
        // Nor may it fail a larger share of its streams than the old one did (judged once it
        // saw enough of them to tell).
        let new_streams = self
            .window_over(now)
            .and_then(|(pid, _)| self.streams.iter().find(|(p, _)| *p == pid))
            .map(|&(_, counts)| counts);
        let old_failed = self
            .old_streams
            .and_then(|o| refused_share(o.admitted, o.failed))
            .unwrap_or(0.0);
        if let Some(StreamCounts {
            admitted, failed, ..
        }) = new_streams
            && let Some(share) = refused_share(admitted, failed)
            && admitted + failed >= MIN_STREAMS_JUDGED
            && share > old_failed + f64::from(self.timing.refused_margin_percent) / 100.0
        {
            self.unhealthy(
                format!(
                    "streams: refused {failed} of {} for its own failure ({:.0} %), the previous version {:.0} %",
                    admitted + failed,
                    share * 100.0,
                    old_failed * 100.0
                ),
                out,
            );
            return;
        }
        // Nor may it turn away every stream it saw, whatever the code (a release that refuses
        // valid tokens says 400, one that cannot dial says 502: the client's codes), where the
        // old one admitted most of its own: a stranger's junk alone could only look so on a
        // relay that no real client reached in the whole window.
        if let Some(StreamCounts {
            admitted: 0,
            refused: Some(refused),
            ..
        }) = new_streams
            && refused >= MIN_STREAMS_JUDGED
            && let Some(StreamCounts {
                admitted: old_admitted,
                refused: Some(old_refused),
                ..
            }) = self.old_streams
            && old_admitted >= MIN_STREAMS_JUDGED
            && old_admitted >= old_refused
        {
            self.unhealthy(
                format!(
                    "streams: refused all {refused} streams it saw, the previous version admitted {old_admitted} of {}",
                    old_admitted.saturating_add(old_refused)
                ),
                out,
            );
            return;
        }
        // And only once its probe passed. A probe is bounded and always reports; should its
        // report never come, the version does not wait for it forever.
        if let Some((pid, over)) = self.window_over(now)
            && self.probe == Some((pid, false))
            && over >= PROBE_GRACE
        {
            self.unhealthy(
                format!("probe: no result {PROBE_GRACE:?} after the window"),
                out,
            );
            return;
        }
        let probed = match (self.probe, self.watched()) {
            (Some((pid, passed)), Some(watched)) => pid != watched || passed,
            _ => true,
        };
        let due = |c: &Change| match c.phase {
            Phase::Watching { since } => {
                c.kind == Kind::Rollback
                    || (now >= since + self.timing.health_window && fresh && probed)
            }
            Phase::CommitRetry { at } => now >= at,
            _ => false,
        };
        if let Some(c) = &mut self.change
            && due(c)
            && let Some(versions) = c.versions.clone()
        {
            c.phase = Phase::Committing;
            let step = match c.kind {
                Kind::Upgrade => Step::Committing,
                Kind::Rollback => Step::RollbackCommitting,
            };
            out.journal(&versions.to, step, "");
            out.0.push(Action::Job(Job::Commit {
                kind: c.kind,
                versions,
            }));
        }
    }

    /// The new version inside its health window: the serving generation of an upgrade being
    /// watched.
    #[must_use]
    pub fn watched(&self) -> Option<Pid> {
        match (&self.change, &self.serving) {
            (
                Some(Change {
                    kind: Kind::Upgrade,
                    phase: Phase::Watching { .. },
                    ..
                }),
                Serving::Ready { pid },
            ) => Some(*pid),
            _ => None,
        }
    }

    fn last_ping(&self, pid: Pid) -> Option<Instant> {
        self.pings
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, at)| *at)
    }

    /// Records (or, with `None`, forgets) `pid`'s last ping; only live generations are kept.
    fn pinged(&mut self, pid: Pid, at: Option<Instant>) {
        let keep = [self.serving.pid(), self.successor_pid(), self.hung];
        self.pings
            .retain(|(p, _)| *p != pid && keep.contains(&Some(*p)));
        if let Some(at) = at {
            self.pings.push((pid, at));
        }
    }

    /// The health window's liveness criterion: a new version that pinged (before or after it
    /// was ready) and then is silent for longer than the liveness bound fails it.
    fn check_window(&mut self, now: Instant, out: &mut Out) {
        let (Some(bound), Some(pid)) = (self.timing.liveness, self.watched()) else {
            return;
        };
        if let Some(at) = self.last_ping(pid)
            && now.saturating_duration_since(at) > bound
        {
            self.unhealthy(
                format!(
                    "liveness: no ping for {:?} (the bound is {bound:?}): it hangs",
                    now.saturating_duration_since(at)
                ),
                out,
            );
        }
    }

    fn probed(&mut self, now: Instant, pid: Pid, outcome: Probe, out: &mut Out) {
        if self.watched() != Some(pid) || self.probe.is_none_or(|(p, _)| p != pid) {
            return;
        }
        match outcome {
            Probe::Passed(said) => out.log(format!(
                "the new version (pid {pid}) passed its probe: {said}"
            )),
            Probe::Unavailable(why) => out.warn(format!(
                "the new version (pid {pid}) cannot be probed ({why}): its window judges the rest"
            )),
            Probe::Failed(why) => return self.unhealthy(format!("probe: {why}"), out),
        }
        self.probe = Some((pid, true));
        self.tick(now, out);
    }

    /// The new version whose health window has run out at `now`, and for how long it has.
    fn window_over(&self, now: Instant) -> Option<(Pid, Duration)> {
        let pid = self.watched()?;
        let Phase::Watching { since } = self.change.as_ref()?.phase else {
            return None;
        };
        let end = since + self.timing.health_window;
        (now >= end).then(|| (pid, now.saturating_duration_since(end)))
    }

    /// The new version failed a criterion of its health window (`what` names it): it is
    /// killed at once (it may hang: no drain), the change is undone once it is gone, and the
    /// old binary serves again; the version is skipped. Connections wait in the listening
    /// socket's backlog meanwhile: none is refused.
    fn unhealthy(&mut self, what: String, out: &mut Out) {
        let Some(pid) = self.watched() else {
            return;
        };
        let why = format!("{}{what}", wireleap_home::control::HEALTH_PREFIX);
        if let Some(criterion) = CRITERIA.iter().find(|c| what.starts_with(*c)) {
            out.0.push(Action::CountUnhealthy(criterion));
        }
        out.warn(format!(
            "the new version (pid {pid}) failed its health window: {why}; it is killed and the old version serves again"
        ));
        out.signal(pid, Sig::Kill);
        self.stopping.push(Stopping { pid, kill_at: None });
        self.serving = Serving::Waiting;
        self.pinged(pid, None);
        if let Some(c) = &mut self.change {
            c.phase = Phase::Failing {
                pid,
                why,
                after: AfterUndo::StartCurrent,
            };
        }
    }

    /// A serving generation that pinged before and is silent for longer than the liveness
    /// bound hangs: a new generation starts at once (no pause: the hung one cannot confirm
    /// it), and the hung one is killed once the new one is ready.
    fn check_liveness(&mut self, now: Instant, out: &mut Out) {
        let (Some(bound), Serving::Ready { pid }) = (self.timing.liveness, &self.serving) else {
            return;
        };
        let pid = *pid;
        let Some(at) = self.last_ping(pid) else {
            return;
        };
        // During a change the generations are the change's to judge, but for a commit that
        // waits to be tried again (a full disk): the new version serves then, for as long as
        // the disk takes, and is replaced from the same verified bytes should it hang.
        let binary = match &self.change {
            None => Binary::Current,
            Some(Change {
                phase: Phase::CommitRetry { .. },
                kind,
                ..
            }) => kind.binary(),
            Some(_) => return,
        };
        if now.saturating_duration_since(at) <= bound
            || self.successor.is_some()
            || self.exiting.is_some()
            || self.hung_hold.is_some_and(|until| now < until)
        {
            return;
        }
        // Replacements count as crashes: a relay that keeps hanging (or is too slow to ping)
        // is replaced ever less often, not every few seconds.
        let verdict = self.budget.crash(now);
        if let Verdict::BackOff(delay) = verdict {
            out.warn(format!(
                "relays replaced for hanging {} times in a row: the next replacement waits at least {delay:?}",
                self.budget.streak()
            ));
            self.hung_hold = Some(now + delay);
        }
        out.warn(format!(
            "relay (pid {pid}) sent no liveness ping for {:?}: it hangs; a new generation starts, then it is killed",
            now.saturating_duration_since(at)
        ));
        out.0.push(Action::CountHung);
        self.pinged(pid, None);
        self.hung = Some(pid);
        self.successor = Some(Successor::Launching { binary });
        out.spawn(Role::Successor, binary);
    }

    fn spawned(&mut self, now: Instant, role: Role, pid: Pid, out: &mut Out) {
        match role {
            Role::Serving => {
                out.log(format!("started relay (pid {pid})"));
                self.serving = Serving::Starting { pid, since: now };
                if self.exiting.is_some() {
                    self.stop(now, pid, out);
                    self.serving = Serving::Stopped;
                }
            }
            Role::Successor => {
                out.log(format!("started a new generation (pid {pid})"));
                self.successor = Some(Successor::Starting { pid, since: now });
            }
        }
    }

    fn spawn_failed(&mut self, now: Instant, role: Role, why: &str, out: &mut Out) {
        match role {
            Role::Serving => {
                out.warn(format!("could not start the relay: {why}"));
                self.crashed(now, why, out);
            }
            Role::Successor => {
                self.successor = None;
                if let Some(hung) = self.hung.take() {
                    self.pinged(hung, Some(now));
                }
                self.after_successor_failed(&format!("could not be started ({why})"), None, out);
            }
        }
    }

    fn ready(&mut self, now: Instant, pid: Pid, out: &mut Out) {
        if self.successor_pid() == Some(pid) {
            self.take_over(now, pid, out);
            return;
        }
        if let Serving::Starting { pid: p, since } = self.serving
            && p == pid
        {
            self.serving = Serving::Ready { pid };
            self.ready_since = Some((pid, now));
            out.log(format!(
                "relay ready (pid {pid}) after {:?}",
                now.saturating_duration_since(since)
            ));
            for &o in &self.orphans {
                out.log(format!(
                    "pid {o} (left by a previous supervisor) stops accepting and drains"
                ));
                out.signal(o, Sig::Hup);
            }
            let drain = now + self.timing.drain_timeout;
            for &o in &self.orphans {
                self.stopping.push(Stopping {
                    pid: o,
                    kill_at: Some(drain),
                });
            }
            if !self.told_systemd {
                self.told_systemd = true;
                out.0.push(Action::Systemd(Notify::Ready));
            }
            return;
        }
        out.log(format!(
            "READY from pid {pid}, which is not a starting generation: ignored"
        ));
    }

    fn take_over(&mut self, now: Instant, pid: Pid, out: &mut Out) {
        // Whether the generation handing over was enrolled in all its contracts (unknown: an
        // older relay that does not say; the new one is then not judged by it).
        self.old_streams = self.serving.pid().and_then(|old| {
            self.streams
                .iter()
                .find(|&&(p, _)| p == old)
                .map(|&(_, counts)| counts)
        });
        self.old_enrolled_all = self
            .serving
            .pid()
            .is_some_and(|old| self.enrolled.iter().any(|&(p, (k, n))| p == old && k == n));
        self.successor = None;
        self.ready_since = Some((pid, now));
        if let Some(hung) = self.hung.take()
            && self.serving.pid() == Some(hung)
        {
            out.log(format!(
                "pid {pid} ready and serving; the hung pid {hung} is told to drain, and killed in {HUNG_GRACE:?} if it still runs"
            ));
            // A relay only slow for a while drains its streams; a hung one is killed soon.
            out.signal(hung, Sig::Hup);
            self.stopping.push(Stopping {
                pid: hung,
                kill_at: Some(now + HUNG_GRACE),
            });
            self.serving = Serving::Ready { pid };
            return;
        }
        match std::mem::replace(&mut self.serving, Serving::Ready { pid }) {
            Serving::Ready { pid: old } | Serving::Starting { pid: old, .. } => {
                out.log(format!(
                    "handover: pid {pid} ready; pid {old} stops accepting and drains"
                ));
                out.signal(old, Sig::Hup);
                self.draining.push(old);
                self.stopping.push(Stopping {
                    pid: old,
                    kill_at: Some(now + self.timing.drain_timeout),
                });
            }
            Serving::Abandoned { pid: old } => {
                out.log(format!("handover: pid {pid} ready; pid {old} stops"));
            }
            _ => out.log(format!("handover: pid {pid} ready and serving")),
        }
        if let Some(c) = &mut self.change
            && c.phase == Phase::HandingOver
            && let Some(v) = &c.versions
        {
            c.phase = Phase::Watching { since: now };
            let step = match c.kind {
                Kind::Upgrade => Step::Swapped,
                Kind::Rollback => Step::RollbackSwapped,
            };
            out.journal(&v.to, step, "");
            if c.kind == Kind::Upgrade && self.timing.probe_count > 0 {
                self.probe = Some((pid, false));
                out.0.push(Action::Job(Job::Probe { pid }));
            }
            // A rollback returns to a version that ran before: it commits once ready.
            self.tick(now, out);
        }
    }

    fn paused(&mut self, pid: Pid, out: &mut Out) {
        if let Some(Successor::Pausing { waiting, .. }) = &mut self.successor {
            waiting.retain(|&p| p != pid);
            if waiting.is_empty() {
                self.launch_successor(out);
            }
        }
    }

    fn launch_successor(&mut self, out: &mut Out) {
        if let Some(Successor::Pausing { binary, .. }) = self.successor {
            self.successor = Some(Successor::Launching { binary });
            out.spawn(Role::Successor, binary);
        }
    }

    /// Starts a successor of `binary`: the serving generation pauses its heartbeats first.
    fn begin_succession(&mut self, now: Instant, binary: Binary, out: &mut Out) {
        let waiting: Vec<Pid> = match self.serving {
            Serving::Ready { pid } => vec![pid],
            _ => Vec::new(),
        };
        for &pid in &waiting {
            out.signal(pid, Sig::Winch);
        }
        self.successor = Some(Successor::Pausing {
            binary,
            waiting,
            until: now + self.timing.pause_wait,
        });
        if matches!(&self.successor, Some(Successor::Pausing { waiting, .. }) if waiting.is_empty())
        {
            self.launch_successor(out);
        }
    }

    /// The successor failed: it `exited` already, or is told to stop now.
    fn successor_failed(&mut self, now: Instant, why: &str, exited: bool, out: &mut Out) {
        if let Some(hung) = self.hung.take() {
            // It stays, hung; the next liveness bound tries again.
            self.pinged(hung, Some(now));
        }
        if let Some(Successor::Starting { pid, .. }) = self.successor.take() {
            out.log(format!(
                "handover failed: the new generation (pid {pid}) {why}; {}",
                match self.serving.pid() {
                    Some(old) => format!("pid {old} keeps serving"),
                    None => "the committed binary starts again".to_owned(),
                }
            ));
            if exited {
                self.after_successor_failed(why, None, out);
            } else {
                self.stop(now, pid, out);
                self.after_successor_failed(why, Some(pid), out);
            }
        } else {
            self.after_successor_failed(why, None, out);
        }
    }

    /// The successor is gone without taking over: the change (if any) is undone, and the old
    /// generation serves on (resuming its heartbeats), or the committed binary starts again if
    /// it died meanwhile.
    fn after_successor_failed(&mut self, why: &str, failed: Option<Pid>, out: &mut Out) {
        let gone = matches!(self.serving, Serving::Gone);
        if let Some(c) = &self.change
            && c.phase == Phase::HandingOver
        {
            // The old generation resumes its heartbeats once the change is undone.
            let after = if gone {
                self.serving = Serving::Waiting;
                AfterUndo::StartCurrent
            } else {
                AfterUndo::Resume
            };
            let why = format!("the new version {why} at start");
            match failed {
                // Undone once it is gone: it must not write the home meanwhile.
                Some(pid) => {
                    if let Some(c) = &mut self.change {
                        c.phase = Phase::Failing { pid, why, after };
                    }
                }
                None => self.undo(why, Cause::Failed, after, out),
            }
            return;
        }
        if let Some(old) = self.serving.pid() {
            out.signal(old, Sig::Cont);
        }
        if gone && self.exiting.is_none() {
            self.serving = Serving::Launching;
            out.spawn(Role::Serving, Binary::Current);
        }
    }

    fn exited(&mut self, now: Instant, pid: Pid, how: &Exit, out: &mut Out) {
        let was_stopping = self.stopping.iter().any(|s| s.pid == pid);
        self.stopping.retain(|s| s.pid != pid);
        if let Some(c) = &self.change
            && let Phase::Failing {
                pid: failed,
                why,
                after,
            } = &c.phase
            && *failed == pid
        {
            let (why, after) = (why.clone(), *after);
            self.undo(why, Cause::Failed, after, out);
        }
        if let Some(i) = self.draining.iter().position(|&p| p == pid) {
            self.draining.remove(i);
            out.log(format!("pid {pid} drained and exited ({how})"));
            return;
        }
        if let Some(i) = self.orphans.iter().position(|&p| p == pid) {
            self.orphans.remove(i);
            out.log(format!("pid {pid} (left by a previous supervisor) exited"));
            return;
        }
        if self.successor_pid() == Some(pid) {
            self.successor_failed(now, &format!("exited ({how})"), true, out);
            return;
        }
        if self.serving.pid() == Some(pid) {
            self.serving_exited(now, pid, how, out);
            return;
        }
        if was_stopping {
            out.log(format!("pid {pid} exited ({how})"));
        }
    }

    fn serving_exited(&mut self, now: Instant, pid: Pid, how: &Exit, out: &mut Out) {
        let abandoned = matches!(self.serving, Serving::Abandoned { .. });
        if self.exiting.is_some() {
            self.serving = Serving::Stopped;
            return;
        }
        if !abandoned && *how == Exit::Graceful {
            // An operator stopped the relay (`wireleap-relay stop`, SIGTERM): whatever is in
            // progress, the supervisor stops too; a change is undone without blame.
            out.log(format!(
                "relay (pid {pid}) was stopped ({how}); stopping too"
            ));
            self.serving = Serving::Stopped;
            self.begin_exit(now, exit::OK, out);
            return;
        }
        if self.successor.is_some() {
            out.log(format!(
                "relay (pid {pid}) exited ({how}) while a new generation starts; it takes over once ready"
            ));
            self.serving = Serving::Gone;
            // It cannot confirm a pause any more.
            if let Some(Successor::Pausing { waiting, .. }) = &mut self.successor {
                waiting.retain(|&p| p != pid);
                if waiting.is_empty() {
                    self.launch_successor(out);
                }
            }
            return;
        }
        if let Some(c) = &self.change
            && matches!(c.phase, Phase::Watching { .. })
        {
            // The new version died inside its health window: the old binary serves again.
            self.serving = Serving::Waiting;
            self.undo(
                format!("the new version exited ({how}) inside the health window"),
                Cause::Failed,
                AfterUndo::StartCurrent,
                out,
            );
            return;
        }
        if let Some(c) = &self.change
            && let Phase::CommitRetry { .. } = c.phase
        {
            // Not committed yet: the new version starts again from its verified copy, after
            // the backoff.
            let binary = c.kind.binary();
            self.crashed_restart(
                now,
                &format!(
                    "relay (pid {pid}) exited ({how}) while its commit waits to be tried again"
                ),
                binary,
                out,
            );
            return;
        }
        if let Some(c) = &self.change
            && c.phase == Phase::Committing
        {
            // The commit decides which binary is the committed one: it starts once it is done.
            out.warn(format!(
                "relay (pid {pid}) exited ({how}) during the commit; it starts again once the commit is done"
            ));
            self.serving = Serving::Waiting;
            return;
        }
        self.crashed(now, &format!("relay (pid {pid}) exited ({how})"), out);
    }

    /// The serving generation crashed (or could not start): restart after the backoff, a long
    /// one past the crash budget (it never gives up).
    fn crashed(&mut self, now: Instant, what: &str, out: &mut Out) {
        self.crashed_restart(now, what, Binary::Current, out);
    }

    /// [`Self::crashed`], restarting `binary`.
    fn crashed_restart(&mut self, now: Instant, what: &str, binary: Binary, out: &mut Out) {
        if self.exiting.is_some() {
            self.serving = Serving::Stopped;
            return;
        }
        let verdict = self.budget.crash(now);
        let delay = verdict.delay();
        out.0.push(Action::CountRestart);
        match verdict {
            Verdict::RestartAfter(_) => out.log(format!("{what}; restarting in {delay:?}")),
            Verdict::BackOff(_) => out.warn(format!(
                "{what}: {} crashes in a row, more than {} in {:?}; backing off: next try in {delay:?} (it keeps trying)",
                self.budget.streak(),
                crate::budget::MAX_CRASHES,
                crate::budget::WINDOW
            )),
        }
        self.serving = Serving::Restarting {
            at: now + delay,
            binary,
        };
    }

    /// Crashes in a row so far (the relay's metrics show it).
    #[must_use]
    pub fn crash_streak(&self) -> usize {
        self.budget.streak()
    }

    fn request(&mut self, id: RequestId, request: Request, out: &mut Out) {
        let (kind, asked, recall) = match request {
            Request::Status => {
                out.0.push(Action::Reply {
                    id,
                    answer: Answer::Status,
                });
                return;
            }
            Request::Upgrade(v) => (Kind::Upgrade, v, None),
            Request::Rollback(recall) => (Kind::Rollback, String::new(), recall),
        };
        let busy = if self.exiting.is_some() {
            Some("the supervisor is stopping")
        } else if self.change.is_some()
            || self.successor.is_some()
            || !matches!(self.serving, Serving::Ready { .. })
        {
            Some("busy: the relay is starting or another change is in progress")
        } else {
            None
        };
        if let Some(why) = busy {
            out.0.push(Action::Reply {
                id,
                answer: Answer::Refused {
                    why: why.to_owned(),
                    version: Some(asked).filter(|a| !a.is_empty()),
                    from: None,
                },
            });
            return;
        }
        self.change = Some(Change {
            kind,
            id,
            asked: asked.clone(),
            versions: None,
            phase: Phase::Preparing,
            why: None,
        });
        out.0.push(Action::Job(Job::Prepare {
            kind,
            asked: Some(asked).filter(|_| kind == Kind::Upgrade),
            recall,
        }));
    }

    fn signal(&mut self, now: Instant, sig: OsSignal, out: &mut Out) {
        match sig {
            OsSignal::Reload => {
                if let Some(pid) = self.serving.pid() {
                    out.signal(pid, Sig::Usr1);
                }
            }
            OsSignal::Dump => {
                if let Some(pid) = self.serving.pid() {
                    out.signal(pid, Sig::Usr2);
                }
                out.0.push(Action::Dump);
            }
            OsSignal::Handover => {
                if self.exiting.is_none()
                    && self.change.is_none()
                    && self.successor.is_none()
                    && matches!(self.serving, Serving::Ready { .. })
                {
                    out.log("handover: starting a new generation".to_owned());
                    self.begin_succession(now, Binary::Current, out);
                } else {
                    out.log(
                        "handover: one is already in progress or the relay is not ready yet"
                            .to_owned(),
                    );
                }
            }
            OsSignal::Stop => {
                if self.exiting.is_none() {
                    out.log("stopping".to_owned());
                    self.begin_exit(now, exit::OK, out);
                }
            }
        }
    }

    fn done(&mut self, now: Instant, done: Done, out: &mut Out) {
        if let Done::Probed { pid, outcome } = done {
            self.probed(now, pid, outcome, out);
            return;
        }
        let Some(c) = self.change.as_mut() else {
            out.warn(format!("a job ended with no change in progress: {done:?}"));
            return;
        };
        let what = match c.kind {
            Kind::Upgrade => "upgrade",
            Kind::Rollback => "rollback",
        };
        match (done, c.phase.clone()) {
            (Done::Prepared(Err(why)), Phase::Preparing) => {
                let asked = c.asked.clone();
                let id = c.id;
                self.change = None;
                out.warn(if asked.is_empty() {
                    format!("{what} refused: {why}")
                } else {
                    format!("{what} to {asked:?} refused: {why}")
                });
                out.0.push(Action::Reply {
                    id,
                    answer: Answer::Refused {
                        why,
                        version: Some(asked).filter(|a| !a.is_empty()),
                        from: None,
                    },
                });
            }
            (Done::Prepared(Ok(versions)), Phase::Preparing) => {
                c.versions = Some(versions.clone());
                let kind = c.kind;
                if self.exiting.is_some() {
                    c.phase = Phase::Interrupted;
                } else if matches!(self.serving, Serving::Waiting | Serving::Stopped) {
                    self.undo(
                        "the relay stopped serving during the change; try again".to_owned(),
                        Cause::Interrupted,
                        AfterUndo::Nothing,
                        out,
                    );
                } else {
                    c.phase = Phase::HandingOver;
                    // A generation restarting after a crash meanwhile is not waited for: the
                    // new version takes over.
                    if matches!(self.serving, Serving::Restarting { .. }) {
                        self.serving = Serving::Gone;
                    }
                    out.log(match kind {
                        Kind::Upgrade => format!(
                            "upgrade to {}: verified and migrated; starting it beside {}",
                            versions.to, versions.from
                        ),
                        Kind::Rollback => format!(
                            "rollback to {}: migrated down; starting it beside {}",
                            versions.to, versions.from
                        ),
                    });
                    self.begin_succession(now, kind.binary(), out);
                }
            }
            (Done::Committed(result), Phase::Committing) => {
                let id = c.id;
                let kind = c.kind;
                let versions = c.versions.clone().unwrap_or_else(|| Versions {
                    to: c.asked.clone(),
                    from: String::new(),
                });
                match result {
                    Ok(()) => {
                        self.change = None;
                        let step = match kind {
                            Kind::Upgrade => Step::Committed,
                            Kind::Rollback => Step::RollbackCommitted,
                        };
                        out.log(format!("{step} {} (was {})", versions.to, versions.from));
                        out.journal(&versions.to, step, "");
                        out.0.push(Action::Reply {
                            id,
                            answer: Answer::Ok(versions),
                        });
                        if self.serving == Serving::Waiting && self.exiting.is_none() {
                            self.serving = Serving::Launching;
                            out.spawn(Role::Serving, Binary::Current);
                        }
                    }
                    Err(why) => {
                        // The new version serves; the files are as the journal says. The commit
                        // is tried again (a full disk gets freed), and a restarted supervisor
                        // finishes it too.
                        c.phase = Phase::CommitRetry {
                            at: now + COMMIT_RETRY,
                        };
                        out.warn(format!(
                            "{}: committing failed: {why}; trying again in {COMMIT_RETRY:?}",
                            versions.to
                        ));
                        out.journal(&versions.to, Step::CommitFailed, &why);
                        out.0.push(Action::Reply {
                            id,
                            answer: Answer::Refused {
                                why: format!(
                                    "committing failed: {why}; the supervisor tries again"
                                ),
                                version: Some(versions.to),
                                from: None,
                            },
                        });
                        if self.serving == Serving::Waiting && self.exiting.is_none() {
                            // Not committed: the new version, from its verified copy.
                            self.serving = Serving::Launching;
                            out.spawn(Role::Serving, kind.binary());
                        }
                    }
                }
            }
            (Done::Undone, Phase::Undoing(after)) => {
                let id = c.id;
                let why = c.why.clone().unwrap_or_default();
                let versions = c.versions.clone();
                self.change = None;
                out.0.push(Action::Reply {
                    id,
                    answer: Answer::Refused {
                        why,
                        version: versions.as_ref().map(|v| v.to.clone()),
                        from: versions.map(|v| v.from),
                    },
                });
                match after {
                    AfterUndo::StartCurrent if self.exiting.is_none() => {
                        self.serving = Serving::Launching;
                        out.spawn(Role::Serving, Binary::Current);
                    }
                    AfterUndo::Resume => {
                        if let Some(pid) = self.serving.pid() {
                            out.signal(pid, Sig::Cont);
                        }
                    }
                    _ => {}
                }
            }
            (done, phase) => {
                out.warn(format!(
                    "a job ended ({done:?}) in a phase that runs none ({phase:?}): ignored"
                ));
            }
        }
    }

    /// Undoes the prepared change with a [`Job::Undo`].
    fn undo(&mut self, why: String, cause: Cause, after: AfterUndo, out: &mut Out) {
        let Some(c) = self.change.as_mut() else {
            return;
        };
        let Some(versions) = c.versions.clone() else {
            return;
        };
        out.0.push(Action::Log {
            warn: true,
            message: match (c.kind, cause) {
                (Kind::Upgrade, Cause::Failed) => format!(
                    "upgrade to {} rolled back: {why}; {} will be skipped",
                    versions.to, versions.to
                ),
                (Kind::Upgrade, Cause::Interrupted) => {
                    format!("upgrade to {} undone, not skipped: {why}", versions.to)
                }
                (Kind::Rollback, _) => format!(
                    "rollback to {} failed: {why}; {} serves on",
                    versions.to, versions.from
                ),
            },
        });
        c.phase = Phase::Undoing(after);
        c.why = Some(why.clone());
        out.0.push(Action::Job(Job::Undo {
            kind: c.kind,
            versions,
            why,
            cause,
        }));
    }

    /// Tells `pid` to stop; SIGKILL after the stop timeout.
    fn stop(&mut self, now: Instant, pid: Pid, out: &mut Out) {
        out.signal(pid, Sig::Term);
        let kill_at = now + self.timing.stop_timeout;
        match self.stopping.iter_mut().find(|s| s.pid == pid) {
            Some(s) => s.kill_at = s.kill_at.map(|k| k.min(kill_at)),
            None => self.stopping.push(Stopping {
                pid,
                kill_at: Some(kill_at),
            }),
        }
    }

    fn begin_exit(&mut self, now: Instant, code: u8, out: &mut Out) {
        if self.exiting.is_some() {
            return;
        }
        self.exiting = Some(code);
        out.0.push(Action::Systemd(Notify::Stopping));
        let mut pids: Vec<Pid> = self.serving.pid().into_iter().collect();
        pids.extend(self.successor_pid());
        pids.append(&mut self.draining);
        pids.extend(self.orphans.iter().copied());
        for pid in pids {
            self.stop(now, pid, out);
        }
        self.successor = None;
        self.serving = match self.serving {
            Serving::Starting { pid, .. } | Serving::Ready { pid } | Serving::Abandoned { pid } => {
                // Stays known until its exit.
                Serving::Abandoned { pid }
            }
            _ => Serving::Stopped,
        };
        if let Some(c) = &mut self.change
            && matches!(
                c.phase,
                Phase::HandingOver | Phase::Watching { .. } | Phase::Failing { .. }
            )
        {
            c.phase = Phase::Interrupted;
        }
    }

    /// While exiting: once every process is gone and no job runs, an interrupted change is
    /// undone, then the supervisor exits.
    fn finish_exit(&mut self, out: &mut Out) {
        let Some(code) = self.exiting else {
            return;
        };
        if !self.stopping.is_empty() || self.serving.pid().is_some() || !self.orphans.is_empty() {
            return;
        }
        if out.0.iter().any(|a| matches!(a, Action::Exit(_))) {
            return;
        }
        match self.change.as_ref().map(|c| &c.phase) {
            // The journal says `commit-failed`: the next start finishes the commit.
            Some(Phase::CommitRetry { .. }) => out.0.push(Action::Exit(code)),
            Some(Phase::Interrupted | Phase::Failing { .. }) => {
                self.undo(
                    "the supervisor was stopped during the change".to_owned(),
                    match self.change.as_ref().map(|c| c.kind) {
                        Some(Kind::Rollback) => Cause::Failed,
                        _ => Cause::Interrupted,
                    },
                    AfterUndo::Exit,
                    out,
                );
            }
            Some(_) => {}
            None => out.0.push(Action::Exit(code)),
        }
    }
}

/// The actions of one event.
#[derive(Debug, Default)]
struct Out(Vec<Action>);

impl Out {
    fn log(&mut self, message: String) {
        self.0.push(Action::Log {
            warn: false,
            message,
        });
    }

    fn warn(&mut self, message: String) {
        self.0.push(Action::Log {
            warn: true,
            message,
        });
    }

    fn signal(&mut self, pid: Pid, sig: Sig) {
        self.0.push(Action::Signal { pid, sig });
    }

    fn spawn(&mut self, role: Role, binary: Binary) {
        self.0.push(Action::Spawn { role, binary });
    }

    fn journal(&mut self, version: &str, step: Step, detail: &str) {
        self.0.push(Action::Journal {
            version: version.to_owned(),
            step,
            detail: detail.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests;

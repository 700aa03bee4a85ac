//! The daemon itself (`start --fg`, spec §1.4): load everything, start the actors, serve until a
//! signal, then shut down in a fixed, logged order under a deadline.
//!
//! Startup validates the config and loads the keys and TLS material before binding anything, and
//! tells the parent (`start`) or systemd `READY=1` only once the listener is bound and the actors
//! run. Shutdown phases (see [`Phase`]): stop accepting → disenroll → drain → flush the ledger →
//! stop the actors, all under [`SHUTDOWN_GRACE`]; a second terminating signal exits at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use tracing::{error, info, warn};
use wireleap_home::control::PAUSED;

use crate::config::{self, Config};
use crate::directory::{self, Enrollment};
use crate::exit;
use crate::home::{Environment, files};
use crate::identity::{self, Identity};
use crate::ledger::{self, Ledger};
use crate::lifecycle::notify;
use crate::lifecycle::phase::Phase;
use crate::lifecycle::pidfile;
use crate::lifecycle::signals::{SignalEvent, Signals};
use crate::metrics;
use crate::restapi;
use crate::status::StatusSource;
use crate::transport::{self, Transport};
use crate::upgrader::Upgrader;
use crate::usage::{self, Usage};

/// The whole shutdown, from the signal to exit, fits in this (less than `stop`'s 3 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(2500);
/// How long startup waits for the first enrollment round before accepting anyway.
const FIRST_ROUND_BUDGET: Duration = Duration::from_secs(15);
/// The longest heartbeats stay paused for a successor that never takes over (its supervisor
/// normally says so at once; this covers one that died). Above the supervisor's ready timeout.
const PAUSE_LEASE: Duration = Duration::from_secs(90);
/// How long the old generation lets its in-flight streams finish after a handover.
pub const HANDOVER_DRAIN: Duration = Duration::from_secs(120);
/// Disenrollment is best effort and gets at most this much of the grace period.
const DEREGISTER_BUDGET: Duration = Duration::from_millis(1000);
/// Every request to an actor has a timeout.
const ACTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The key could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// The listener or TLS could not be set up.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// The sharetoken ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
    /// The pid file could not be written.
    #[error("could not write {}: {source}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The REST API could not start.
    #[error(transparent)]
    RestApi(#[from] restapi::Error),
    /// The network usage file could not be written.
    #[error(transparent)]
    Usage(#[from] usage::Error),
    /// The metrics server could not start.
    #[error(transparent)]
    Metrics(#[from] metrics::Error),
    /// Another process holds the home: a supervisor, or another relay without one.
    #[error("{0}")]
    AlreadyRunning(String),
    /// A contract or its directory refused to enroll the relay for good at start.
    #[error(
        "could not enroll: {0} (fix config.json or ask the network's operator; the relay does not start)"
    )]
    Refused(String),
    /// The runtime could not be built or signals could not be installed.
    #[error("could not start the runtime: {0}")]
    Runtime(std::io::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Identity(identity::Error::BadSeed { .. }) => exit::CONFIG,
            _ => exit::FAILURE,
        }
    }
}

/// Which config file the daemon reads: `config.json.next` if it exists and loads, else
/// `config.json` (spec §2.4).
///
/// # Errors
/// The error of `config.json` when neither loads.
pub fn load_config(home: &Path) -> Result<config::Loaded, config::Error> {
    let next = home.join(files::CONFIG_NEXT);
    if next.exists() {
        match config::load(&next) {
            Ok(loaded) => {
                info!(file = %next.display(), "using the migrated config");
                return Ok(loaded);
            }
            Err(e) => warn!(error = %e, "ignoring config.json.next"),
        }
    }
    config::load(&home.join(files::CONFIG))
}

/// Runs the daemon until a signal stops it; returns the exit code (128 + signal on a graceful
/// stop, as the reference does).
///
/// # Errors
/// Any startup failure; the caller prints it and exits with [`Error::exit_code`].
pub fn run(home: &Path, env: &dyn Environment, version: &semver::Version) -> Result<u8, Error> {
    // First, while the process has one thread: the environment is read (and cleared) here.
    let inherited = crate::lifecycle::listenfds::take_from_env().map_err(Error::Runtime)?;
    let loaded = load_config(home)?;
    for w in &loaded.warnings {
        warn!(key = %w.path, "config: {}", w.message);
    }
    let config = loaded.config;
    let identity = Identity::load(home)?;
    if let Some(said) = identity.repair_public(home) {
        warn!("{said}");
    }
    let tls = transport::tls::server_config(home).map_err(transport::Error::from)?;
    // A relay that binds for itself holds the home, as a supervisor does, before it writes its
    // pid file; the generations a supervisor starts (inheriting its listener) do not: their
    // supervisor holds it for them.
    let _instance = if inherited {
        None
    } else {
        Some(
            wireleap_home::instance::Instance::acquire(home, "wireleap-relay")
                .map_err(Error::AlreadyRunning)?,
        )
    };
    // A port of the REST API or the metrics that another relay holds refuses the start here,
    // before the relay enrolls or accepts a stream (the servers test it again when they bind).
    if let Some(api) = &config.rest_api {
        restapi::check(api, home)?;
    }
    if let Some(m) = &config.metrics {
        metrics::check(m.address, home)?;
    }
    let pid_path = home.join(files::PID);
    pidfile::write_own(&pid_path).map_err(|source| Error::PidFile {
        path: pid_path.clone(),
        source,
    })?;
    let own_pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    if inherited {
        info!("using the listening socket inherited from the parent (LISTEN_FDS)");
    }
    info!(version = %version, pid = own_pid, relay = %identity.public_key_b64(), home = %home.display(), "wireleap-relay starting");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("relay-worker")
        .build()
        .map_err(Error::Runtime)?;
    let system = actix_rt::System::with_tokio_rt(move || runtime);
    let notify_socket = env.var(notify::NOTIFY_SOCKET);
    let restarts = env.var(metrics::SUPERVISOR_RESTARTS_ENV);
    let supervised = restarts.is_some();
    let metrics_facts = metrics::Facts::new(&version.to_string(), restarts.as_deref())
        .with_crash_streak(env.var(wireleap_home::files::CRASH_STREAK_ENV).as_deref())
        .with_hung_replaced(env.var(wireleap_home::files::HUNG_REPLACED_ENV).as_deref())
        .with_health_rollbacks(
            env.var(wireleap_home::files::HEALTH_ROLLBACKS_ENV)
                .as_deref(),
        );
    let api =
        directory::client::Client::try_new(identity.signing_key().clone(), &version.to_string())
            .map_err(|e| Error::Runtime(std::io::Error::other(e)))?;
    let daemon = Daemon {
        home: home.to_owned(),
        config,
        version: version.clone(),
        relay_pubkey: identity.public_key_b64(),
        identity_pubkey: wireleap_protocol::PublicKey::from(identity.signing_key()),
        identity: identity.clone(),
        api,
        watchdog: notify::watchdog_interval(
            env.var("WATCHDOG_USEC").as_deref(),
            env.var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        ),
        notify_socket,
        metrics_facts,
        supervised,
    };
    let result = system.block_on(daemon.serve(tls));
    if result.is_err() {
        // Actors started before the failure first run (their `started` sets timers) while the
        // runtime is still there: dropped with it unpolled, they would panic in its drop.
        system.block_on(async {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
        });
    }
    pidfile::remove_if_own(&pid_path, own_pid);
    result
}

struct Daemon {
    home: PathBuf,
    config: Config,
    version: semver::Version,
    relay_pubkey: String,
    identity_pubkey: wireleap_protocol::PublicKey,
    /// For phased rollouts (position) and signed upgrade outcome reports.
    identity: Identity,
    api: directory::client::Client,
    notify_socket: Option<String>,
    /// How often the supervisor (or systemd) wants `WATCHDOG=1`, if it does.
    watchdog: Option<Duration>,
    /// Version and supervisor restarts, for `/metrics`.
    metrics_facts: metrics::Facts,
    /// Whether a supervisor runs this relay (it passes [`metrics::SUPERVISOR_RESTARTS_ENV`] to
    /// every generation): SIGHUP, SIGWINCH and SIGCONT are then its (see [`Signals`]).
    supervised: bool,
}

struct Actors {
    transport: Addr<Transport>,
    enrollment: Addr<Enrollment>,
    ledger: Addr<Ledger>,
    status: StatusSource,
    /// Network usage accounting (spec §2.5).
    usage: Usage,
}

impl Daemon {
    async fn serve(self, tls: std::sync::Arc<rustls::ServerConfig>) -> Result<u8, Error> {
        let mut signals = Signals::install(self.supervised).map_err(Error::Runtime)?;
        let usage = match &self.config.network_usage {
            Some(n) => Usage::load(&self.home, &self.relay_pubkey, n)?,
            None => Usage::disabled(),
        };
        let admission = directory::Admission::with_usage(usage.clone());
        let usage_stop = tokio_util::sync::CancellationToken::new();
        let gates = admission.clone();
        tokio::spawn(usage::run(
            usage.clone(),
            move |id| gates.is_open(id),
            usage_stop.clone(),
        ));
        let ledger = Ledger::try_open(
            &self.home,
            &self.config,
            self.api.clone(),
            admission.clone(),
        )?;
        let admitter = ledger.admitter();
        let ledger = ledger.start();
        let deps = transport::Deps {
            relay_pubkey: self.relay_pubkey.clone(),
            admission: admission.clone(),
            ledger: admitter,
        };
        let transport = Transport::bind(&self.config, tls, deps).await?;
        let bound = transport.local_addr();
        info!(address = %bound, "Listening for H/2 requests on https://{bound}");
        log_release_trust(&self.home, self.config.auto_upgrade);
        let upgrader = Upgrader::new(
            self.home.clone(),
            self.config.auto_upgrade,
            self.version.clone(),
            self.config.release_url.clone(),
        )
        .with_rollouts(
            self.identity.clone(),
            self.config.release_check_interval,
            self.config.release_stale_after,
        )
        .start();
        // The actors' addresses before they run: the REST API and the metrics bind first, so
        // that when one cannot (a port taken, a socket it may not create), the daemon stops
        // with that error before it enrolls or accepts anything.
        let enrollment_context = actix::Context::<Enrollment>::new();
        let transport_context = actix::Context::<Transport>::new();
        let status = StatusSource {
            version: self.version.to_string(),
            enrollment: enrollment_context.address(),
            transport: transport_context.address(),
            ledger: ledger.clone(),
            upgrader: upgrader.clone(),
            usage: usage.clone(),
        };
        let rest = match &self.config.rest_api {
            Some(api) => Some(restapi::start(api, &self.home, status.clone()).await?),
            None => None,
        };
        let metrics = match &self.config.metrics {
            Some(m) => {
                let facts = self.metrics_facts.clone();
                Some(metrics::start(m.address, &self.home, facts, status.clone()).await?)
            }
            None => None,
        };
        let enrollment = enrollment_context.run(Enrollment::new(
            &self.config,
            admission,
            self.api.clone(),
            self.identity_pubkey,
            &self.version.to_string(),
            upgrader.recipient(),
        ));
        // Accept only once every contract had its first enrollment attempt: a generation that
        // takes over a shared listener must not refuse streams as "not available" meanwhile.
        // Connections made until then wait in the listener's backlog.
        match enrollment
            .send(directory::WaitFirstRound)
            .timeout(FIRST_ROUND_BUDGET)
            .await
        {
            Ok(refusals) if refusals.is_empty() => info!("first enrollment round done"),
            Ok(refusals) if self.supervised => {
                // A supervised generation may be a successor whose predecessor is listed under
                // the same key: it neither withdraws that listing nor fails the release for a
                // refusal the release did not cause (a rotated enrollment key). It serves the
                // other contracts and keeps asking; `status` names the refusal.
                warn!(refused = %refusals.join("; "), "enrollment refused; retrying with backoff");
            }
            Ok(refusals) => {
                // Refused for good (spec §4.4: fatal at start). What did enroll is withdrawn, so
                // the directory lists no relay that is not running.
                let _ = enrollment
                    .send(directory::DisenrollAll)
                    .timeout(DEREGISTER_BUDGET)
                    .await;
                return Err(Error::Refused(refusals.join("; ")));
            }
            Err(_) => {
                warn!(budget = ?FIRST_ROUND_BUDGET, "first enrollment round still running; accepting anyway")
            }
        }
        let transport = transport_context.run(transport);
        let actors = Actors {
            ledger,
            enrollment,
            transport,
            status,
            usage,
        };
        info!(phase = %Phase::Serving, "ready");
        if self.watchdog.is_some() {
            // The first liveness ping before READY: whoever watches knows from the start that
            // this generation pings (one that hangs right after READY is then caught).
            notify::send(self.notify_socket.as_deref(), "WATCHDOG=1");
        }
        notify::send(self.notify_socket.as_deref(), "READY=1\nSTATUS=serving");
        // Start-up's code ran once; only what serving uses comes back (see `memory`).
        crate::memory::release_startup_code();
        fault::after_ready();
        if self.notify_socket.is_some() {
            actix_rt::spawn(report(
                actors.enrollment.clone(),
                actors.transport.clone(),
                self.notify_socket.clone(),
            ));
        }
        let publisher = actix_rt::spawn(publish_status(self.home.clone(), actors.status.clone()));
        if let Some(every) = self.watchdog {
            actix_rt::spawn(liveness(
                actors.transport.clone(),
                self.notify_socket.clone(),
                every,
            ));
        }

        let stop = loop {
            match signals.next().await {
                SignalEvent::Reload => self.reload(&actors).await,
                SignalEvent::DumpStatus => self.dump_status(&actors).await,
                SignalEvent::Pause => {
                    pause(&actors.enrollment, self.notify_socket.as_deref()).await;
                }
                SignalEvent::Resume => {
                    actors.enrollment.do_send(directory::ResumeHeartbeats);
                }
                stop @ (SignalEvent::Terminate(_) | SignalEvent::HandOver) => break stop,
            }
        };
        let (handover, code, grace) = match stop {
            SignalEvent::Terminate(sig) => {
                info!(signal = sig, "shutting down");
                let code = u8::try_from(128 + sig).unwrap_or(exit::FAILURE);
                (false, code, SHUTDOWN_GRACE)
            }
            _ => {
                info!("handing over to the new generation: draining without disenrolling");
                (true, exit::OK, HANDOVER_DRAIN + Duration::from_secs(5))
            }
        };
        notify::send(self.notify_socket.as_deref(), "STOPPING=1");
        // The status file is the next generation's from now on (or nobody's).
        publisher.abort();
        // Scrapes go to the next generation (it shares the port) while this one drains.
        if let Some(metrics) = &metrics {
            metrics.stop();
        }
        // A second terminating signal means "now". A pause (the supervisor starts yet another
        // generation) is confirmed once no directory call of this one is in flight.
        let enrollment = actors.enrollment.clone();
        let notify_socket = self.notify_socket.clone();
        tokio::spawn(async move {
            loop {
                let event = signals.next().await;
                if let Some(sig) = event.forces_exit() {
                    warn!(
                        signal = sig,
                        "second signal: exiting without finishing the shutdown"
                    );
                    std::process::exit(128 + sig);
                }
                if event == SignalEvent::Pause {
                    pause(&enrollment, notify_socket.as_deref()).await;
                }
            }
        });
        if tokio::time::timeout(grace, shutdown(&actors, handover))
            .await
            .is_err()
        {
            warn!(?grace, "shutdown did not finish in time; exiting anyway");
        }
        usage_stop.cancel();
        if let Some(rest) = &rest {
            rest.stop();
        }
        System::current().stop();
        info!(phase = %Phase::Stopped, "stopped");
        Ok(code)
    }

    /// SIGUSR1: re-read `config.json` (never `.next`), validate, apply. Errors are logged and the
    /// daemon keeps its current config.
    async fn reload(&self, actors: &Actors) {
        let path = self.home.join(files::CONFIG);
        let config = match config::load(&path) {
            Ok(loaded) => loaded.config,
            Err(e) => {
                error!("reload refused, keeping the running config: {e}");
                return;
            }
        };
        if config.address != self.config.address {
            warn!(old = %self.config.address, new = %config.address, "reload: a new listen address needs a restart");
        }
        match actors
            .enrollment
            .send(directory::ApplyConfig(config))
            .timeout(ACTOR_TIMEOUT)
            .await
        {
            Ok(s) => {
                info!(added = ?s.added, updated = ?s.updated, removed = ?s.removed, refused = ?s.refused, heartbeats = ?s.heartbeats, "config reloaded")
            }
            Err(e) => error!(error = %e, "reload: enrollment did not answer"),
        }
    }

    /// SIGUSR2: the status JSON (the REST `/api/status` shape, spec §2.6) on stdout, and
    /// `stats.json` written (spec §1.4).
    async fn dump_status(&self, actors: &Actors) {
        println!("{}", actors.status.json().await);
        save_usage(&actors.usage).await;
    }
}

/// How often the serving relay's state is written for `status`.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Writes [`wireleap_home::files::RELAY_STATUS`] every [`STATUS_EVERY`] when the state changed
/// or another process wrote the file last (a generation that handed over), and at least once a
/// minute, so that its age tells whether the relay still writes it. Stopped when the relay stops
/// serving. The write runs off the serving threads and is not synced (a lost file is rewritten).
async fn publish_status(home: PathBuf, status: StatusSource) {
    let path = home.join(wireleap_home::files::RELAY_STATUS);
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(serde_json::Value, std::time::Instant)> = None;
    let mut failed_before = false;
    loop {
        tick.tick().await;
        let state = status.json().await;
        let ours = crate::operator::report::written_by(&home) == Some(std::process::id());
        if ours
            && last
                .as_ref()
                .is_some_and(|(v, at)| *v == state && at.elapsed() < Duration::from_secs(60))
        {
            continue;
        }
        let mut object = state.clone();
        if let Some(map) = object.as_object_mut() {
            map.insert("pid".into(), std::process::id().into());
            map.insert("time_ms".into(), wireleap_home::time::now_ms().into());
        }
        let bytes = serde_json::to_vec_pretty(&object).unwrap_or_default();
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write_unsynced(&target, &bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(()) => {
                last = Some((state, std::time::Instant::now()));
                failed_before = false;
            }
            Err(e) if !failed_before => {
                failed_before = true;
                warn!(path = %path.display(), error = %e, "could not write the status file");
            }
            Err(_) => {}
        }
    }
}

/// Replaces `path` with `bytes` (a temp file renamed over it: a reader never sees half a file),
/// without an fsync: the file is rewritten every few seconds anyway.
fn write_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

/// SIGWINCH from the supervisor (while serving or draining): a successor is about to start and
/// enroll. Heartbeats pause (for [`PAUSE_LEASE`] at most) and, once no directory call is in
/// flight, the supervisor hears [`PAUSED`]: the directory never hears two generations in turn.
/// Sends `WATCHDOG=1` three times per `period` while the transport actor answers (its mailbox
/// turns: the relay serves), so that whoever watches (the supervisor, or systemd) replaces a
/// relay that hangs, and a relay merely slow for a moment misses no more than a ping or two.
async fn liveness(transport: Addr<Transport>, notify_socket: Option<String>, period: Duration) {
    let half = period / 3;
    let mut tick = tokio::time::interval(half);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Ok(Ok(_)) =
            tokio::time::timeout(half, transport.send(transport::TransportStatus)).await
        {
            notify::send(notify_socket.as_deref(), "WATCHDOG=1");
        }
    }
}

/// Tells the supervisor, each second when they changed, what it judges a new version by at
/// the end of its health window:
/// - in how many of its contracts this generation is enrolled
///   ([`wireleap_home::control::ENROLLED`]; a contract whose usage cap was reached counts as
///   enrolled: it is out by design);
/// - its counts of streams admitted, and refused for its own failure, since it started
///   ([`wireleap_home::control::STREAMS`]), with every stream it refused
///   ([`wireleap_home::control::STREAMS_REFUSED`]).
async fn report(
    enrollment: Addr<Enrollment>,
    transport: Addr<Transport>,
    notify_socket: Option<String>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = None;
    let mut last_streams = None;
    loop {
        tick.tick().await;
        if let Ok(t) = transport.send(transport::TransportStatus).await {
            // The relay's own failures apart (a client's mistakes, or a stranger's junk, must not
            // decide whether a version stays), and every refusal on a line of its own (a version
            // that admits nothing, refusing with a client's code, is judged by it).
            let now = (t.streams_admitted, t.streams_failed, t.streams_refused);
            if last_streams != Some(now) {
                notify::send(
                    notify_socket.as_deref(),
                    &format!(
                        "{}{}/{}\n{}{}",
                        wireleap_home::control::STREAMS,
                        now.0,
                        now.1,
                        wireleap_home::control::STREAMS_REFUSED,
                        now.2
                    ),
                );
                last_streams = Some(now);
            }
        }
        let Ok(states) = enrollment.send(directory::ContractStatuses).await else {
            return;
        };
        let now = (
            states
                .iter()
                .filter(|s| s.enrolled || s.network_cap_reached)
                .count(),
            states.len(),
        );
        if last != Some(now) {
            notify::send(
                notify_socket.as_deref(),
                &format!("{}{}/{}", wireleap_home::control::ENROLLED, now.0, now.1),
            );
            last = Some(now);
        }
    }
}

async fn pause(enrollment: &Addr<Enrollment>, notify_socket: Option<&str>) {
    let paused = enrollment
        .send(directory::PauseHeartbeats { lease: PAUSE_LEASE })
        .timeout(ACTOR_TIMEOUT)
        .await;
    match paused {
        Ok(()) => notify::send(notify_socket, PAUSED),
        Err(e) => warn!(error = %e, "pause: enrollment did not answer"),
    }
}

/// The shutdown phases, in order, each logged. A handover skips deregistration (the new
/// generation keeps the enrollment) and drains for [`HANDOVER_DRAIN`] instead of the short grace.
async fn shutdown(actors: &Actors, handover: bool) {
    info!(phase = %Phase::StopAccepting, "shutdown phase");
    let _ = actors
        .transport
        .send(transport::StopAccepting)
        .timeout(ACTOR_TIMEOUT)
        .await;

    if handover {
        let _ = actors
            .enrollment
            .send(directory::StopHeartbeats)
            .timeout(ACTOR_TIMEOUT)
            .await;
    } else {
        info!(phase = %Phase::Deregister, "shutdown phase");
        match actors
            .enrollment
            .send(directory::DisenrollAll)
            .timeout(DEREGISTER_BUDGET)
            .await
        {
            Ok(n) => info!(directories = n, "deregistered"),
            Err(e) => warn!(error = %e, "deregistration incomplete"),
        }
    }

    info!(phase = %Phase::Drain, "shutdown phase");
    let deadline = if handover {
        HANDOVER_DRAIN
    } else {
        SHUTDOWN_GRACE.saturating_sub(DEREGISTER_BUDGET + Duration::from_millis(500))
    };
    match actors
        .transport
        .send(transport::Drain { deadline })
        .timeout(deadline + ACTOR_TIMEOUT)
        .await
    {
        Ok(r) if r.remaining == 0 => info!("drained"),
        Ok(r) => warn!(
            remaining = r.remaining,
            "drain deadline passed; closing remaining connections"
        ),
        Err(e) => warn!(error = %e, "transport did not answer the drain"),
    }

    info!(phase = %Phase::FlushLedger, "shutdown phase");
    if let Err(e) = actors
        .ledger
        .send(ledger::Flush)
        .timeout(ACTOR_TIMEOUT)
        .await
    {
        error!(error = %e, "ledger flush failed");
    }

    save_usage(&actors.usage).await;
    info!(phase = %Phase::StopActors, "shutdown phase");
}

/// Writes `stats.json` off the async threads; a failure is logged (the counters stay in memory).
async fn save_usage(usage: &Usage) {
    let usage = usage.clone();
    match tokio::task::spawn_blocking(move || usage.write()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "network usage not saved"),
        Err(e) => error!(error = %e, "network usage writer failed"),
    }
}

/// Says at start what this relay trusts to sign its releases, and what is wrong with it.
fn log_release_trust(home: &std::path::Path, auto_upgrade: bool) {
    match relay_release::Trust::load(home) {
        Ok(trust) => {
            if let Some(line) = trust.describe().first() {
                info!("{line}");
            }
            if trust.is_empty() && auto_upgrade {
                tracing::warn!(
                    "auto_upgrade is on but no release key is trusted: upgrades will be refused (docs/releasing.md)"
                );
            }
            for w in trust.warnings(std::time::SystemTime::now()) {
                tracing::warn!("{w}");
            }
        }
        Err(e) => tracing::warn!("release trust unusable, upgrades will be refused: {e}"),
    }
}

/// Fault injection for the supervisor's health tests (like the supervisor's failpoint), set by
/// a release under test in a wrapper script; nothing else sets it. Once ready, a relay with
/// `WIRELEAP_RELAY_FAULT=`
/// - `leak` allocates (and touches) 16 MiB every 100 ms, up to 2 GiB;
/// - `blackhole` accepts streams and never answers them (its liveness pings go on);
///
/// - `refuse` refuses every stream but PING (503);
///
/// and from its start, with `no-enroll`, every enrollment and heartbeat fails.
pub(crate) mod fault {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The fault-injection variable.
    const FAULT_ENV: &str = "WIRELEAP_RELAY_FAULT";

    static BLACKHOLE: AtomicBool = AtomicBool::new(false);

    /// Whether enrollments and heartbeats fail.
    pub(crate) fn no_enroll() -> bool {
        static NO_ENROLL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *NO_ENROLL.get_or_init(|| std::env::var(FAULT_ENV).as_deref() == Ok("no-enroll"))
    }

    /// The code every stream is refused with (0: none is).
    static REFUSE: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

    /// The code every stream is refused with, if they are.
    pub(crate) fn refuse() -> Option<u16> {
        Some(REFUSE.load(Ordering::Relaxed)).filter(|&c| c != 0)
    }

    /// Whether streams go unanswered.
    pub(crate) fn blackhole() -> bool {
        BLACKHOLE.load(Ordering::Relaxed)
    }

    pub(super) fn after_ready() {
        let fault = std::env::var(FAULT_ENV).unwrap_or_default();
        // `refuse`: as a relay that fails (503); `refuse-400`: as one that wrongly finds every
        // token bad (a client's code).
        let code = match fault.as_str() {
            "refuse" => 503,
            "refuse-400" => 400,
            _ => 0,
        };
        if code != 0 {
            tracing::warn!(
                "{FAULT_ENV}={fault}: this relay now refuses every stream with {code} (a test fault)"
            );
            REFUSE.store(code, Ordering::Relaxed);
            return;
        }
        if fault == "blackhole" {
            tracing::warn!(
                "{FAULT_ENV}=blackhole: this relay now answers no stream (a test fault)"
            );
            BLACKHOLE.store(true, Ordering::Relaxed);
            return;
        }
        if fault != "leak" {
            return;
        }
        tracing::warn!("{FAULT_ENV}=leak: this relay now leaks memory (a test fault)");
        std::thread::spawn(|| {
            let mut kept: Vec<Vec<u8>> = Vec::new();
            for _ in 0..128 {
                kept.push(vec![1u8; 16 << 20]);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            std::thread::park();
            drop(kept);
        });
    }
}

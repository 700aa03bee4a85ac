//! The rollout service (`release-tool rollout serve`): serves a release tree, signs each phased
//! version's rollout document with the rollout key, counts the relays' outcome reports per step,
//! and halts a rollout once its rollbacks pass the threshold.
//!
//! - **HTTP** (the relays' `release_url`): `GET` any file of the tree (names checked as
//!   [`check_file_name`] does, no listing), `GET /v<VERSION>/rollout` (the current signed
//!   document; 404 when the version is not phased), `POST /reports` (an outcome report,
//!   [`crate::outcome`]).
//! - **Admin** (`release-tool rollout start|halt|resume|recall|status`): one JSON request and one
//!   JSON reply per connection on the Unix socket `<state>/admin.sock` (mode 0600, in the state
//!   folder: whoever can write there is the release manager).
//! - **State**: `<state>/rollouts.json`, written atomically after every change, read at start:
//!   a restarted service keeps its plans, counts and halts.
//!
//! Documents are signed on demand: again when the plan changed (the serial grows) or when half
//! of the last one's lifetime has passed (the serial stays; relays accept an equal serial).
//! Every download of a version's binary is counted, with the asking relay when it names itself
//! ([`crate::fetch::RELAY_HEADER`]), so that "no relay outside the first step downloaded it" can
//! be checked at the server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::SigningKey;
use crate::fetch::RELAY_HEADER;
use crate::layout::{STATEMENT_SUFFIX, check_file_name};
use crate::outcome::{Counted, MAX_REPORT_SIZE, Outcome, REPORTS_PATH, Report, StepCount, Tally};
use crate::rollout::{Document, ROLLOUT_NAME, Step};

/// The admin socket's name in the state folder.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// The state file's name in the state folder.
pub const STATE_FILE: &str = "rollouts.json";
/// The default lifetime of a rollout document.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// The default number of rollbacks in one step that halts a rollout.
pub const DEFAULT_HALT_AFTER: u64 = 2;
/// How often changed counts are written.
const SAVE_EVERY: Duration = Duration::from_millis(500);
/// The cap on an admin request.
const MAX_ADMIN_REQUEST: u64 = 64 * 1024;
/// How long an admin client waits for the reply.
const ADMIN_WAIT: Duration = Duration::from_secs(10);

/// How the service runs.
#[derive(Debug)]
pub struct Options {
    /// The release tree it serves (what `release-tool publish` writes).
    pub tree: PathBuf,
    /// Its state folder (plans, counts, the admin socket).
    pub state: PathBuf,
    /// The rollout role's signing keys (as many as the root's rollout threshold).
    pub keys: Vec<SigningKey>,
    /// How long each document is valid (at most [`crate::rollout::MAX_LIFETIME`]).
    pub lifetime: Duration,
    /// Where it listens for HTTP.
    pub listen: SocketAddr,
    /// Count the reports of any validly signed relay key, not only of relays that downloaded
    /// the version here (for a service behind a front server that serves the binaries itself).
    pub open_reports: bool,
}

/// The most relays remembered per version (reports, downloads, halts seen): made-up keys cannot
/// grow the state without bound.
pub const MAX_TRACKED: usize = 100_000;

/// One version's rollout, as the service keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The version.
    pub version: String,
    /// When the schedule's offsets count from (ms since the epoch).
    pub start_ms: u64,
    /// The schedule.
    pub steps: Vec<Step>,
    /// Rollbacks in one step that halt it.
    pub halt_after: u64,
    /// The serial of the current document (grows with every change).
    pub serial: u64,
    /// Whether it is halted.
    pub halted: bool,
    /// Why (the service's count, or the release manager's reason).
    pub halt_reason: Option<String>,
    /// When it halted (ms).
    pub halted_ms: Option<u64>,
    /// Whether the version is recalled.
    pub recall: bool,
    /// The outcome reports counted.
    pub tally: Tally,
    /// When the first rollback report was counted (ms).
    pub first_rollback_ms: Option<u64>,
    /// Reports of upgrades that ended before this (ms) are not counted: they belong to an
    /// earlier attempt (before a start or a resume), or are replayed.
    #[serde(default)]
    pub counted_since_ms: u64,
    /// Relays that fetched a halted document, with when they first did (ms).
    pub saw_halt: BTreeMap<String, u64>,
}

/// Downloads of one version's binaries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Downloads {
    /// Requests for a binary of the version.
    pub count: u64,
    /// The relays that named themselves.
    pub relays: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    plans: BTreeMap<String, Plan>,
    downloads: BTreeMap<String, Downloads>,
}

/// A request on the admin socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum AdminRequest {
    /// Starts (or replaces) the rollout of a version.
    Start {
        /// The version; its statement must be in the tree.
        version: String,
        /// The schedule.
        steps: Vec<Step>,
        /// Rollbacks in one step that halt it.
        halt_after: u64,
        /// The start (RFC 3339; `None`: now).
        start: Option<String>,
    },
    /// Halts a rollout.
    Halt {
        /// The version.
        version: String,
        /// Why.
        reason: Option<String>,
    },
    /// Resumes a halted rollout (the counts start again).
    Resume {
        /// The version.
        version: String,
    },
    /// Recalls a version: relays that committed it go back.
    Recall {
        /// The version.
        version: String,
    },
    /// Every plan's status (or one version's).
    Status {
        /// Only this version.
        version: Option<String>,
    },
}

/// The reply to an admin request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminReply {
    /// Whether it was done.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// The plans affected or asked for.
    pub rollouts: Vec<RolloutStatus>,
}

/// What `release-tool rollout status` shows of one version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The version.
    pub version: String,
    /// The document's serial.
    pub serial: u64,
    /// The start, RFC 3339.
    pub start: String,
    /// The schedule.
    pub steps: Vec<Step>,
    /// The cumulative percent open now.
    pub percent_now: f64,
    /// Whether it is halted, and why and when (RFC 3339).
    pub halted: bool,
    /// Why.
    pub halt_reason: Option<String>,
    /// When, RFC 3339.
    pub halted_at: Option<String>,
    /// Whether it is recalled.
    pub recall: bool,
    /// Rollbacks in one step that halt it.
    pub halt_after: u64,
    /// Counts per step.
    pub per_step: Vec<StepCount>,
    /// Rollbacks per criterion.
    pub criteria: BTreeMap<String, u64>,
    /// Downloads of the version's binaries (all, and distinct relays that named themselves).
    pub downloads: u64,
    /// Distinct relays that downloaded it.
    pub downloaders: usize,
    /// From the first rollback report to the halt, in ms.
    pub first_rollback_to_halt_ms: Option<u64>,
    /// Relays that fetched the halted document.
    pub saw_halt: usize,
    /// From the halt to the last relay (so far) fetching the halted document, in ms.
    pub halt_to_last_seen_ms: Option<u64>,
}

/// A signed document: its serial, when it was signed, its bytes.
type Signed = (u64, SystemTime, Arc<Vec<u8>>);

struct Shared {
    opts: Options,
    state: Mutex<Persisted>,
    /// The state changed since it was last written (counts are written at most every
    /// [`SAVE_EVERY`]; plans and halts at once).
    dirty: std::sync::atomic::AtomicBool,
    /// Per version: the serial, when it was signed, and the document.
    signed: Mutex<BTreeMap<String, Signed>>,
}

use wireleap_home::time::{at_ms, ms, now_ms};

fn time_text(ms: u64) -> String {
    crate::manifest::format_time(at_ms(ms))
}

// === impl Plan ===

impl Plan {
    fn start(&self) -> SystemTime {
        at_ms(self.start_ms)
    }

    fn document(&self, issued: SystemTime, lifetime: Duration) -> Result<Document, crate::Error> {
        let version = crate::parse_version(&self.version)?;
        Document::new(
            &version,
            self.serial,
            issued,
            lifetime,
            self.start(),
            self.steps.clone(),
            self.halted,
            self.recall,
        )
    }

    fn percent_now(&self) -> f64 {
        crate::rollout::percent_at(&self.steps, self.start(), SystemTime::now())
    }

    /// The next serial: above the last, and from the clock, so that a service that lost its
    /// state still issues serials above what relays accepted before.
    fn next_serial(&mut self) {
        self.serial = (self.serial + 1).max(now_ms());
    }

    /// Halts it (a new serial).
    fn halt(&mut self, reason: String) {
        if !self.halted {
            self.halted = true;
            self.halted_ms = Some(now_ms());
            self.halt_reason = Some(reason);
            self.next_serial();
        }
    }

    fn status(&self, downloads: Option<&Downloads>) -> RolloutStatus {
        let last_seen = self.saw_halt.values().max().copied();
        RolloutStatus {
            version: self.version.clone(),
            serial: self.serial,
            start: time_text(self.start_ms),
            steps: self.steps.clone(),
            percent_now: self.percent_now(),
            halted: self.halted,
            halt_reason: self.halt_reason.clone(),
            halted_at: self.halted_ms.map(time_text),
            recall: self.recall,
            halt_after: self.halt_after,
            per_step: self.tally.per_step(self.steps.len()),
            criteria: self.tally.criteria(),
            downloads: downloads.map_or(0, |d| d.count),
            downloaders: downloads.map_or(0, |d| d.relays.len()),
            first_rollback_to_halt_ms: self
                .first_rollback_ms
                .zip(self.halted_ms)
                .map(|(a, b)| b.saturating_sub(a)),
            saw_halt: self.saw_halt.len(),
            halt_to_last_seen_ms: self
                .halted_ms
                .zip(last_seen)
                .map(|(h, l)| l.saturating_sub(h)),
        }
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Persisted> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that counts changed: written within [`SAVE_EVERY`].
    fn changed(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes the state if counts changed since the last write (serialized outside the lock,
    /// so requests are not held up by the write).
    fn save_if_changed(&self) {
        if self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let snapshot = self.lock().clone();
            self.save(&snapshot);
        }
    }

    /// Writes the state now.
    fn save(&self, state: &Persisted) {
        self.dirty
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let path = self.opts.state.join(STATE_FILE);
        let result = serde_json::to_vec_pretty(state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| wireleap_home::durable::write_atomic(&path, &bytes, 0o600));
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "could not save the rollout state");
        }
    }

    /// The signed document of `version` (`None`: not phased).
    fn document(&self, version: &str, relay: Option<&str>) -> Result<Option<Arc<Vec<u8>>>, String> {
        let plan = {
            let mut state = self.lock();
            let Some(plan) = state.plans.get_mut(version) else {
                return Ok(None);
            };
            if plan.halted
                && let Some(relay) = relay
                && !plan.saw_halt.contains_key(relay)
                && plan.saw_halt.len() < MAX_TRACKED
            {
                plan.saw_halt.insert(relay.to_owned(), now_ms());
                self.changed();
                plan.clone()
            } else {
                plan.clone()
            }
        };
        let now = SystemTime::now();
        let mut signed = self.signed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((serial, at, bytes)) = signed.get(version)
            && *serial == plan.serial
            && now.duration_since(*at).unwrap_or_default() < self.opts.lifetime / 2
        {
            return Ok(Some(bytes.clone()));
        }
        let bytes = plan
            .document(now, self.opts.lifetime)
            .and_then(|d| d.sign(&self.opts.keys, now))
            .map_err(|e| e.to_string())?;
        let bytes = Arc::new(bytes);
        // A request that read the plan before a halt must not replace the halted document.
        if signed
            .get(version)
            .is_none_or(|(serial, _, _)| *serial <= plan.serial)
        {
            signed.insert(version.to_owned(), (plan.serial, now, bytes.clone()));
        }
        Ok(Some(bytes))
    }

    /// Counts a report; halts when the threshold is passed.
    fn report(&self, report: &Report) -> Result<Counted, (StatusCode, String)> {
        let mut state = self.lock();
        let downloaded = self.opts.open_reports
            || state
                .downloads
                .get(&report.version)
                .is_some_and(|d| d.relays.contains(&report.relay.to_b64()));
        let Some(plan) = state.plans.get_mut(&report.version) else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no rollout of version {}", report.version),
            ));
        };
        let ended = crate::manifest::parse_time(&report.time).map_or(0, ms);
        // A minute of clock skew between a relay and the service is tolerated.
        if ended.saturating_add(60_000) < plan.counted_since_ms {
            return Err((
                StatusCode::CONFLICT,
                "the report is older than the rollout's last start or resume: not counted"
                    .to_owned(),
            ));
        }
        if !downloaded {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "relay {} did not download {} here: not counted",
                    report.relay, report.version
                ),
            ));
        }
        if plan.tally.len() >= MAX_TRACKED && !plan.tally.has(&report.relay) {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "too many relays reported on this version".to_owned(),
            ));
        }
        let percent = plan.percent_now();
        let counted = plan.tally.record(report, &plan.steps, percent);
        if let Counted::Step(step) = counted {
            tracing::info!(relay = %report.relay, version = %report.version, step = step + 1, outcome = ?report.outcome, criterion = ?report.criterion, "outcome report counted");
            if report.outcome == Outcome::RolledBack && plan.first_rollback_ms.is_none() {
                plan.first_rollback_ms = Some(now_ms());
            }
            if !plan.halted
                && let Some(reason) = plan.tally.halt_reason(plan.steps.len(), plan.halt_after)
            {
                tracing::warn!(version = %plan.version, %reason, "rollout halted automatically");
                plan.halt(reason);
                self.save(&state);
                return Ok(counted);
            }
            self.changed();
        }
        Ok(counted)
    }

    fn count_download(&self, version: &str, relay: Option<&str>) {
        let mut state = self.lock();
        let d = state.downloads.entry(version.to_owned()).or_default();
        d.count += 1;
        if let Some(relay) = relay
            && d.relays.len() < MAX_TRACKED
        {
            d.relays.insert(relay.to_owned());
        }
        self.changed();
    }

    fn admin(&self, request: AdminRequest) -> AdminReply {
        let mut state = self.lock();
        let fail = |error: String| AdminReply {
            ok: false,
            error: Some(error),
            rollouts: Vec::new(),
        };
        let version = match &request {
            AdminRequest::Status { version } => version.clone(),
            AdminRequest::Start { version, .. }
            | AdminRequest::Halt { version, .. }
            | AdminRequest::Resume { version }
            | AdminRequest::Recall { version } => Some(version.clone()),
        };
        if let Some(v) = &version
            && let Err(e) = crate::parse_version(v)
        {
            return fail(e.to_string());
        }
        match request {
            AdminRequest::Status { .. } => {}
            AdminRequest::Start {
                version,
                steps,
                halt_after,
                start,
            } => {
                let start = match start.as_deref().map(crate::manifest::parse_time) {
                    None => SystemTime::now(),
                    Some(Some(t)) => t,
                    Some(None) => return fail("start is not an RFC 3339 UTC time".to_owned()),
                };
                if let Err(e) = self.has_statement(&version) {
                    return fail(e);
                }
                let serial = state
                    .plans
                    .get(&version)
                    .map_or(0, |p| p.serial)
                    .saturating_add(1)
                    .max(now_ms());
                let plan = Plan {
                    version: version.clone(),
                    start_ms: ms(start),
                    steps,
                    halt_after: halt_after.max(1),
                    serial,
                    halted: false,
                    halt_reason: None,
                    halted_ms: None,
                    recall: false,
                    tally: Tally::default(),
                    first_rollback_ms: None,
                    counted_since_ms: now_ms(),
                    saw_halt: BTreeMap::new(),
                };
                if let Err(e) = plan.document(SystemTime::now(), self.opts.lifetime) {
                    return fail(e.to_string());
                }
                tracing::info!(%version, serial, "rollout started");
                state.plans.insert(version, plan);
            }
            AdminRequest::Halt { version, reason } => {
                let Some(plan) = state.plans.get_mut(&version) else {
                    return fail(format!("no rollout of version {version}"));
                };
                plan.halt(reason.unwrap_or_else(|| "halted by the release manager".to_owned()));
            }
            AdminRequest::Resume { version } => {
                let Some(plan) = state.plans.get_mut(&version) else {
                    return fail(format!("no rollout of version {version}"));
                };
                if plan.halted || plan.recall {
                    plan.halted = false;
                    plan.recall = false;
                    plan.halt_reason = None;
                    plan.halted_ms = None;
                    plan.first_rollback_ms = None;
                    plan.counted_since_ms = now_ms();
                    plan.saw_halt.clear();
                    plan.tally = Tally::default();
                    plan.next_serial();
                }
            }
            AdminRequest::Recall { version } => {
                let Some(plan) = state.plans.get_mut(&version) else {
                    return fail(format!("no rollout of version {version}"));
                };
                plan.halt("recalled".to_owned());
                if !plan.recall {
                    plan.recall = true;
                    plan.next_serial();
                }
            }
        }
        self.save(&state);
        let rollouts = state
            .plans
            .values()
            .filter(|p| version.as_ref().is_none_or(|v| *v == p.version))
            .map(|p| p.status(state.downloads.get(&p.version)))
            .collect();
        AdminReply {
            ok: true,
            error: None,
            rollouts,
        }
    }

    /// Whether the tree holds a relay statement of `version`.
    fn has_statement(&self, version: &str) -> Result<(), String> {
        let dir = self.opts.tree.join(format!("v{version}"));
        let found = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}: publish the release first", dir.display()))?
            .filter_map(Result::ok)
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("wireleap-relay_") && name.ends_with(STATEMENT_SUFFIX)
            });
        if found {
            Ok(())
        } else {
            Err(format!(
                "{} holds no signed relay statement: publish the release first",
                dir.display()
            ))
        }
    }
}

/// Runs the service until SIGTERM or Ctrl-C. `ready` gets the bound HTTP address.
///
/// # Errors
///
/// The state cannot be read or the sockets cannot be bound.
pub async fn serve(opts: Options, ready: impl FnOnce(SocketAddr, &Path)) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(&opts.state)
        .with_context(|| format!("create {}", opts.state.display()))?;
    // Only the release manager's user may read the state or reach the admin socket in it.
    std::fs::set_permissions(
        &opts.state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("chmod {}", opts.state.display()))?;
    let lock_path = opts.state.join("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| {
            anyhow::anyhow!(
                "another rollout service uses {} ({e})",
                opts.state.display()
            )
        })?;
    let state_path = opts.state.join(STATE_FILE);
    let persisted = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a rollout state", state_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
        Err(e) => return Err(e).with_context(|| format!("read {}", state_path.display())),
    };
    let admin_path = opts.state.join(ADMIN_SOCKET);
    let _ = std::fs::remove_file(&admin_path);
    let admin = tokio::net::UnixListener::bind(&admin_path)
        .with_context(|| format!("bind {}", admin_path.display()))?;
    std::fs::set_permissions(
        &admin_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("bind {}", opts.listen))?;
    let shared = Arc::new(Shared {
        opts,
        state: Mutex::new(persisted),
        dirty: std::sync::atomic::AtomicBool::new(false),
        signed: Mutex::new(BTreeMap::new()),
    });
    ready(listener.local_addr()?, &admin_path);
    let admin_task = tokio::spawn(admin_loop(admin, shared.clone()));
    let saver = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAVE_EVERY);
            loop {
                tick.tick().await;
                let shared = shared.clone();
                let _ = tokio::task::spawn_blocking(move || shared.save_if_changed()).await;
            }
        })
    };
    let app = Router::new()
        .route(&format!("/{REPORTS_PATH}"), axum::routing::post(report))
        .fallback(get_file)
        .with_state(shared.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    admin_task.abort();
    saver.abort();
    shared.save_if_changed();
    let _ = std::fs::remove_file(&admin_path);
    Ok(())
}

async fn admin_loop(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader =
                tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_ADMIN_REQUEST));
            let read = tokio::time::timeout(ADMIN_WAIT, reader.read_line(&mut line)).await;
            let reply = match read {
                Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(request) => shared.admin(request),
                    Err(e) => AdminReply {
                        ok: false,
                        error: Some(format!("not an admin request: {e}")),
                        rollouts: Vec::new(),
                    },
                },
                _ => return,
            };
            let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
}

/// Sends `request` to the service whose state folder is `state`.
///
/// # Errors
///
/// The service is not running or did not answer.
pub fn admin_call(state: &Path, request: &AdminRequest) -> anyhow::Result<AdminReply> {
    use anyhow::Context as _;
    use std::io::{BufRead as _, Write as _};
    let path = state.join(ADMIN_SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "no rollout service answers on {} (is `release-tool rollout serve` running with this --state?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(ADMIN_WAIT))?;
    stream.set_write_timeout(Some(ADMIN_WAIT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).context("the rollout service's reply does not parse")
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

fn relay_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(RELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && wireleap_protocol::PublicKey::try_from_b64(v).is_ok())
        .map(str::to_owned)
}

async fn report(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let body = match axum::body::to_bytes(request.into_body(), MAX_REPORT_SIZE + 1).await {
        Ok(b) => b,
        Err(_) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a report is at most {MAX_REPORT_SIZE} bytes\n"),
            );
        }
    };
    let report = match Report::verify(&body) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match shared.report(&report) {
        Ok(Counted::Step(step)) => plain(
            StatusCode::ACCEPTED,
            format!("counted in step {}\n", step + 1),
        ),
        Ok(Counted::NotOpen) => plain(
            StatusCode::ACCEPTED,
            "not counted: this relay's step is not open\n".to_owned(),
        ),
        Err((status, why)) => plain(status, format!("{why}\n")),
    }
}

async fn get_file(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n".to_owned());
    }
    let relay = relay_of(request.headers());
    let segments: Vec<&str> = request
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if segments.is_empty()
        || segments.len() > 2
        || segments.iter().any(|s| check_file_name(s).is_err())
    {
        return plain(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    let version = segments
        .first()
        .filter(|_| segments.len() == 2)
        .and_then(|d| d.strip_prefix('v'))
        .map(str::to_owned);
    if let Some(version) = &version
        && segments[1] == ROLLOUT_NAME
    {
        return match shared.document(version, relay.as_deref()) {
            Ok(Some(bytes)) => (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "text/plain"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                bytes.as_ref().clone(),
            )
                .into_response(),
            Ok(None) => plain(
                StatusCode::NOT_FOUND,
                "this version is not phased\n".to_owned(),
            ),
            Err(e) => {
                tracing::error!(%version, error = %e, "cannot sign the rollout document");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot sign\n".to_owned(),
                )
            }
        };
    }
    let path: PathBuf = segments
        .iter()
        .fold(shared.opts.tree.clone(), |p, s| p.join(s));
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return plain(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let Ok(meta) = file.metadata().await else {
        return plain(StatusCode::NOT_FOUND, "not found\n".to_owned());
    };
    if !meta.is_file() {
        return plain(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    if let Some(version) = &version
        && request.method() == Method::GET
        && segments[1].starts_with("wireleap-relay")
        && !segments[1].ends_with(STATEMENT_SUFFIX)
    {
        shared.count_download(version, relay.as_deref());
    }
    let body = if request.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::new(file))
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, meta.len())
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

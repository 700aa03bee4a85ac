//! Prometheus metrics: counters kept in atomics on the data path, and `GET /metrics` in the text
//! exposition format (version 0.0.4) on the address in `config.json`'s `metrics.address`.
//!
//! Off by default. The counters live in one process-wide [`Registry`] ([`REGISTRY`]): the hot
//! path only does relaxed atomic adds (never a lock, never a mailbox message), so a hook is one
//! line where the event happens. State that the actors already hold (enrollment per contract,
//! the upgrade decision) is asked from them at scrape time, through the same [`StatusSource`] as
//! `/api/status`, with the same timeouts: a scrape never blocks the data path.
//!
//! Counters count since this process started; Prometheus's `rate()` handles the reset that a
//! restart or an upgrade (a new relay process) causes. The supervisor's restart count comes in
//! the environment ([`SUPERVISOR_RESTARTS_ENV`]), since the supervisor is another process.
//!
//! Who calls it: the transport (streams, bytes, dials, admitted tokens), the ledger's submitter
//! (submitted, expired), the enrollment tasks (heartbeat latency), and the daemon, which starts
//! the server. It must never panic on a request and never log per request above `debug`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::directory::ContractStatuses;
use crate::shared_port;
use crate::status::StatusSource;
use crate::upgrader::UpgraderStatus;

/// The environment variable through which the supervisor tells each relay generation how many
/// times it has restarted a crashed relay so far.
pub use wireleap_home::files::RESTARTS_ENV as SUPERVISOR_RESTARTS_ENV;
/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The config.json key of the address, for messages.
const OPTION: &str = "metrics.address";
/// How long the actors have to answer a scrape, each.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds of the dial latency histogram, in seconds.
const DIAL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the relayed stream duration histogram, in seconds.
const STREAM_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
];
/// Upper bounds of the heartbeat latency histogram, in seconds.
const HEARTBEAT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Status codes always shown (at 0 until they happen), so `rate()` sees them from the start.
const USUAL_CODES: &[u16] = &[400, 405, 408, 410, 500, 502];
/// Status codes are counted exactly in 100..=599 (slots 1..=500); anything else in slot 0.
const CODES: usize = 501;
/// Longest histogram (bucket slots, +Inf included).
const MAX_BUCKETS: usize = 16;

/// The process-wide registry every hook writes to.
pub static REGISTRY: Registry = Registry::new();

/// The relay's counters, gauges and histograms (all atomics).
#[derive(Debug)]
pub struct Registry {
    /// HTTP/2 streams received (any method, any outcome).
    streams: AtomicU64,
    /// Streams being handled now.
    streams_active: AtomicU64,
    /// Streams that ended with an error status (the `wl-status` code, or HTTP 405), by code
    /// minus 99; slot 0 counts codes outside 100..=599.
    errors: [AtomicU64; CODES],
    /// Bytes written to remotes (from clients).
    bytes_to_remote: AtomicU64,
    /// Bytes sent to clients (from remotes).
    bytes_to_client: AtomicU64,
    /// Sharetokens stored by the ledger and admitted.
    tokens_admitted: AtomicU64,
    /// Sharetokens the contract accepted.
    tokens_submitted: AtomicU64,
    /// Sharetokens whose settlement window closed before the contract accepted them.
    tokens_expired: AtomicU64,
    /// Time to dial a remote (success or failure).
    dial: Histogram,
    /// Lifetime of relayed streams (from the dialed remote to the end).
    stream_duration: Histogram,
    /// Round trip of a heartbeat to a directory (success or failure).
    heartbeat: Histogram,
}

impl Registry {
    const fn new() -> Self {
        Self {
            streams: AtomicU64::new(0),
            streams_active: AtomicU64::new(0),
            errors: [const { AtomicU64::new(0) }; CODES],
            bytes_to_remote: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            tokens_admitted: AtomicU64::new(0),
            tokens_submitted: AtomicU64::new(0),
            tokens_expired: AtomicU64::new(0),
            dial: Histogram::new(DIAL_BUCKETS),
            stream_duration: Histogram::new(STREAM_BUCKETS),
            heartbeat: Histogram::new(HEARTBEAT_BUCKETS),
        }
    }

    fn stream_failed(&self, code: u16) {
        let slot = match code {
            100..=599 => usize::from(code - 99),
            _ => 0,
        };
        if let Some(c) = self.errors.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// === hooks (one line each at the call site) ===

/// A stream arrived: counts it and keeps it active until the guard drops. Call
/// [`StreamGuard::relaying`] once its remote is dialed so its duration is recorded.
pub fn stream_started() -> StreamGuard {
    REGISTRY.streams.fetch_add(1, Ordering::Relaxed);
    REGISTRY.streams_active.fetch_add(1, Ordering::Relaxed);
    StreamGuard { relaying: None }
}

/// A stream ended with an error status `code` (a `wl-status` code, or HTTP 405).
pub fn stream_failed(code: u16) {
    REGISTRY.stream_failed(code);
}

/// `n` bytes were written to a remote.
pub fn bytes_to_remote(n: usize) {
    REGISTRY
        .bytes_to_remote
        .fetch_add(n as u64, Ordering::Relaxed);
}

/// `n` bytes were handed to a client's stream.
pub fn bytes_to_client(n: usize) {
    REGISTRY
        .bytes_to_client
        .fetch_add(n as u64, Ordering::Relaxed);
}

/// A sharetoken was stored and its stream admitted.
pub fn token_admitted() {
    REGISTRY.tokens_admitted.fetch_add(1, Ordering::Relaxed);
}

/// `n` sharetokens were accepted by their contract.
pub fn tokens_submitted(n: usize) {
    REGISTRY
        .tokens_submitted
        .fetch_add(n as u64, Ordering::Relaxed);
}

/// A sharetoken expired unsubmitted.
pub fn token_expired() {
    REGISTRY.tokens_expired.fetch_add(1, Ordering::Relaxed);
}

/// Runs a dial and records how long it took.
pub async fn timed_dial<T>(dial: impl Future<Output = T>) -> T {
    timed(&REGISTRY.dial, dial).await
}

/// Runs a heartbeat request and records how long it took.
pub async fn timed_heartbeat<T>(request: impl Future<Output = T>) -> T {
    timed(&REGISTRY.heartbeat, request).await
}

async fn timed<T>(h: &Histogram, f: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    h.observe(started.elapsed());
    out
}

/// Keeps a stream counted as active; see [`stream_started`].
#[derive(Debug)]
pub struct StreamGuard {
    relaying: Option<Instant>,
}

impl StreamGuard {
    /// The remote is dialed: the stream's relayed duration starts now.
    pub fn relaying(&mut self) {
        self.relaying = Some(Instant::now());
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        REGISTRY.streams_active.fetch_sub(1, Ordering::Relaxed);
        if let Some(t) = self.relaying {
            REGISTRY.stream_duration.observe(t.elapsed());
        }
    }
}

// === histogram ===

/// A histogram with fixed buckets: per-bucket counts (not cumulative; summed when rendered),
/// the total count and the sum in nanoseconds.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len()` buckets, then the +Inf bucket; the rest unused.
    buckets: [AtomicU64; MAX_BUCKETS],
    sum_nanos: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() < MAX_BUCKETS, "too many histogram buckets");
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0u64;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets.get(i).map_or(0, |b| b.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self
            .buckets
            .get(self.bounds.len())
            .map_or(0, |b| b.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

// === rendering ===

/// What a scrape shows besides the registry: the process's fixed facts.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The running version.
    pub version: String,
    /// Crashed relays the supervisor restarted before starting this process (0 unsupervised).
    pub supervisor_restarts: u64,
    /// Whether a supervisor started this process.
    pub supervised: bool,
    /// Crashes in a row before the supervisor started this process.
    pub supervisor_crash_streak: u64,
    /// Hung relays the supervisor replaced before it started this process.
    pub supervisor_hung_replaced: u64,
    /// New versions the supervisor rolled back, by failed health criterion.
    pub supervisor_health_rollbacks: Vec<(String, u64)>,
}

impl Facts {
    /// The facts of this process; `restarts` is the value of [`SUPERVISOR_RESTARTS_ENV`], if
    /// set (a value that is not a number counts as unsupervised).
    pub fn new(version: &str, restarts: Option<&str>) -> Self {
        let parsed = restarts.and_then(|s| s.trim().parse::<u64>().ok());
        Self {
            version: version.to_owned(),
            supervisor_restarts: parsed.unwrap_or(0),
            supervised: parsed.is_some(),
            supervisor_crash_streak: 0,
            supervisor_hung_replaced: 0,
            supervisor_health_rollbacks: Vec::new(),
        }
    }

    /// With the supervisor's counts of new versions rolled back by health criterion
    /// ([`wireleap_home::files::HEALTH_ROLLBACKS_ENV`], `name=count,...`; at most 8, names of
    /// lowercase letters).
    #[must_use]
    pub fn with_health_rollbacks(mut self, counts: Option<&str>) -> Self {
        self.supervisor_health_rollbacks = counts
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                let name_ok =
                    !k.is_empty() && k.len() <= 16 && k.bytes().all(|b| b.is_ascii_lowercase());
                name_ok.then_some((k.to_owned(), v.trim().parse().ok()?))
            })
            .take(8)
            .collect();
        self
    }

    /// With the crash streak the supervisor passed ([`wireleap_home::files::CRASH_STREAK_ENV`]).
    #[must_use]
    pub fn with_crash_streak(mut self, streak: Option<&str>) -> Self {
        self.supervisor_crash_streak = streak.and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        self
    }

    /// With the count of hung relays replaced
    /// ([`wireleap_home::files::HUNG_REPLACED_ENV`]).
    #[must_use]
    pub fn with_hung_replaced(mut self, hung: Option<&str>) -> Self {
        self.supervisor_hung_replaced = hung.and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        self
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value with `\`, `"` and newlines escaped (exposition format rules).
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// The registry's counters as exposition text (no actor state).
pub fn render_registry(r: &Registry, out: &mut String) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    single(
        out,
        "wireleap_relay_streams_total",
        "counter",
        "HTTP/2 streams received, whatever their outcome.",
        load(&r.streams),
    );
    single(
        out,
        "wireleap_relay_streams_active",
        "gauge",
        "Streams being handled now.",
        load(&r.streams_active),
    );
    header(
        out,
        "wireleap_relay_stream_errors_total",
        "counter",
        "Streams ended with an error status, by wl-status code (405: a method other than PUT; 0: a code outside 100-599).",
    );
    for (i, c) in r.errors.iter().enumerate() {
        let code = if i == 0 { 0 } else { i + 99 };
        let n = load(c);
        let usual = u16::try_from(code).is_ok_and(|c| USUAL_CODES.contains(&c));
        if n > 0 || usual {
            let _ = writeln!(
                out,
                "wireleap_relay_stream_errors_total{{code=\"{code}\"}} {n}"
            );
        }
    }
    header(
        out,
        "wireleap_relay_relayed_bytes_total",
        "counter",
        "Bytes relayed, by direction.",
    );
    let _ = writeln!(
        out,
        "wireleap_relay_relayed_bytes_total{{direction=\"client_to_remote\"}} {}",
        load(&r.bytes_to_remote)
    );
    let _ = writeln!(
        out,
        "wireleap_relay_relayed_bytes_total{{direction=\"remote_to_client\"}} {}",
        load(&r.bytes_to_client)
    );
    r.stream_duration.render(
        out,
        "wireleap_relay_stream_duration_seconds",
        "Lifetime of relayed streams, from the dialed remote to the end.",
    );
    r.dial.render(
        out,
        "wireleap_relay_dial_duration_seconds",
        "Time to dial a stream's remote, failed dials included.",
    );
    single(
        out,
        "wireleap_relay_sharetokens_admitted_total",
        "counter",
        "Sharetokens stored in the ledger and admitted.",
        load(&r.tokens_admitted),
    );
    single(
        out,
        "wireleap_relay_sharetokens_submitted_total",
        "counter",
        "Sharetokens accepted by their service contract.",
        load(&r.tokens_submitted),
    );
    single(
        out,
        "wireleap_relay_sharetokens_expired_total",
        "counter",
        "Sharetokens whose settlement window closed before they were accepted.",
        load(&r.tokens_expired),
    );
    r.heartbeat.render(
        out,
        "wireleap_relay_heartbeat_duration_seconds",
        "Round trip of a heartbeat to a directory, failed ones included.",
    );
}

fn render_facts(facts: &Facts, out: &mut String) {
    header(
        out,
        "wireleap_relay_build_info",
        "gauge",
        "Always 1; the running version is in the label.",
    );
    let _ = writeln!(
        out,
        "wireleap_relay_build_info{{version=\"{}\"}} 1",
        label(&facts.version)
    );
    single(
        out,
        "wireleap_relay_supervised",
        "gauge",
        "1 when a supervisor started this relay process.",
        u64::from(facts.supervised),
    );
    single(
        out,
        "wireleap_relay_supervisor_restarts",
        "gauge",
        "Crashed relays the supervisor restarted before it started this process.",
        facts.supervisor_restarts,
    );
    single(
        out,
        "wireleap_relay_supervisor_crash_streak",
        "gauge",
        "Crashes in a row before the supervisor started this process; past 5 it waits up to 10 minutes between tries, and keeps trying.",
        facts.supervisor_crash_streak,
    );
    single(
        out,
        "wireleap_relay_supervisor_hung_replaced",
        "gauge",
        "Relays the supervisor replaced for not sending their liveness ping, before it started this process.",
        facts.supervisor_hung_replaced,
    );
    if !facts.supervisor_health_rollbacks.is_empty() {
        header(
            out,
            "wireleap_relay_supervisor_health_rollbacks",
            "gauge",
            "New versions the supervisor rolled back inside their health window, by the criterion they failed, before it started this process.",
        );
        for (criterion, n) in &facts.supervisor_health_rollbacks {
            let _ = writeln!(
                out,
                "wireleap_relay_supervisor_health_rollbacks{{criterion=\"{}\"}} {n}",
                label(criterion)
            );
        }
    }
}

/// The whole scrape: the registry, the facts, and what the actors answer.
pub async fn render(facts: &Facts, source: &StatusSource) -> String {
    let mut out = String::with_capacity(8 << 10);
    render_registry(&REGISTRY, &mut out);
    render_facts(facts, &mut out);
    let contracts = source
        .enrollment
        .send(ContractStatuses)
        .timeout(ASK_TIMEOUT)
        .await
        .unwrap_or_default();
    header(
        &mut out,
        "wireleap_relay_enrolled",
        "gauge",
        "1 when the relay is enrolled in the contract's directory, else 0.",
    );
    for c in &contracts {
        let _ = writeln!(
            out,
            "wireleap_relay_enrolled{{contract=\"{}\",role=\"{}\"}} {}",
            label(&c.url),
            c.role,
            u8::from(c.enrolled)
        );
    }
    if let Ok(u) = source
        .upgrader
        .send(UpgraderStatus)
        .timeout(ASK_TIMEOUT)
        .await
    {
        single(
            &mut out,
            "wireleap_relay_auto_upgrade",
            "gauge",
            "1 when the relay acts on upgrade notices (auto_upgrade).",
            u64::from(u.auto_upgrade),
        );
        header(
            &mut out,
            "wireleap_relay_upgrade_announced_info",
            "gauge",
            "Always 1 when a directory announced a version; the version is in the label.",
        );
        if let Some(v) = &u.announced {
            let _ = writeln!(
                out,
                "wireleap_relay_upgrade_announced_info{{version=\"{}\"}} 1",
                label(v)
            );
        }
        single(
            &mut out,
            "wireleap_relay_upgrade_skipped_versions",
            "gauge",
            "Versions in .skip-upgrade-version.",
            u.skipped.len() as u64,
        );
        if let Some(age) = u.release_info_age_secs {
            single(
                &mut out,
                "wireleap_relay_release_info_age_seconds",
                "gauge",
                "Seconds since the release server's channel information or a rollout document was last fetched and valid (freeze detection: alert when it grows past release_stale_after).",
                age,
            );
            single(
                &mut out,
                "wireleap_relay_release_info_stale",
                "gauge",
                "1 when release information is older than release_stale_after.",
                u64::from(u.release_info_stale),
            );
        }
        single(
            &mut out,
            "wireleap_relay_upgrade_held_back",
            "gauge",
            "1 when an announced version waits for its rollout step or is halted.",
            u64::from(u.held_back.is_some()),
        );
    }
    out
}

// === the server ===

/// Errors starting the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound, or another relay (or process) holds the port.
    #[error("could not start the metrics server on {address}: {source}")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// Why.
        source: shared_port::Error,
    },
}

/// A running metrics server; [`MetricsHandle::stop`] stops it.
#[derive(Debug)]
pub struct MetricsHandle {
    stop: CancellationToken,
    /// The bound address (the real port when the config says 0).
    pub address: SocketAddr,
}

impl MetricsHandle {
    /// Stops accepting scrapes.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Whether the server can bind `address`: free, or held only by this relay's previous
/// generation (see [`crate::shared_port`]). Run before the relay starts anything.
///
/// # Errors
/// [`Error::Bind`].
pub fn check(address: SocketAddr, home: &Path) -> Result<(), Error> {
    shared_port::check(address, OPTION, home).map_err(|source| Error::Bind { address, source })
}

/// Binds `address` and serves `GET /metrics` in the background. The port is shared with the
/// next generation during a handover (the kernel spreads scrapes over both until the old one
/// stops its server at the start of its drain) and with no other relay
/// ([`crate::shared_port`]).
///
/// # Errors
/// [`Error::Bind`].
pub async fn start(
    address: SocketAddr,
    home: &Path,
    facts: Facts,
    source: StatusSource,
) -> Result<MetricsHandle, Error> {
    let bind_err = |source| Error::Bind { address, source };
    let listener = shared_port::bind(address, OPTION, home)
        .await
        .map_err(bind_err)?;
    let bound = listener
        .local_addr()
        .map_err(|e| bind_err(shared_port::Error::Io(e)))?;
    info!(address = %bound, "metrics on http://{bound}/metrics");
    let stop = CancellationToken::new();
    let state = Arc::new((facts, source));
    tokio::spawn(serve(listener, state, stop.clone()));
    Ok(MetricsHandle {
        stop,
        address: bound,
    })
}

async fn serve(listener: TcpListener, state: Arc<(Facts, StatusSource)>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&req, &state.0, &state.1).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                () = stop.cancelled() => {}
                r = conn => if let Err(e) = r {
                    debug!(error = %e, "metrics connection ended");
                },
            }
        });
    }
}

async fn respond(
    req: &Request<Incoming>,
    facts: &Facts,
    source: &StatusSource,
) -> Response<Full<Bytes>> {
    let (code, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render(facts, source).await),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed: use GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rollbacks_from_the_supervisor_are_a_labelled_gauge_and_bad_entries_are_dropped() {
        let facts = Facts::new("1.0.0", Some("0"))
            .with_health_rollbacks(Some("liveness=1,memory=0,BAD=3,probe=x,streams=2"));
        assert_eq!(
            facts.supervisor_health_rollbacks,
            vec![
                ("liveness".to_owned(), 1),
                ("memory".to_owned(), 0),
                ("streams".to_owned(), 2)
            ]
        );
        let mut out = String::new();
        render_facts(&facts, &mut out);
        assert!(
            out.contains("wireleap_relay_supervisor_health_rollbacks{criterion=\"liveness\"} 1")
        );
        assert!(out.contains("# TYPE wireleap_relay_supervisor_health_rollbacks gauge"));
        let mut none = String::new();
        render_facts(&Facts::new("1.0.0", None), &mut none);
        assert!(!none.contains("health_rollbacks"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 5.55\n"), "{out}");
    }

    #[test]
    fn error_codes_outside_the_range_count_as_0() {
        let r = Registry::new();
        for code in [99u16, 600, 700, 100, 599, 502] {
            r.stream_failed(code);
        }
        let mut out = String::new();
        render_registry(&r, &mut out);
        assert!(
            out.contains("wireleap_relay_stream_errors_total{code=\"0\"} 3\n"),
            "{out}"
        );
        for code in [100, 599, 502] {
            let line = format!("wireleap_relay_stream_errors_total{{code=\"{code}\"}} 1\n");
            assert!(out.contains(&line), "{out}");
        }
        assert!(
            out.contains("wireleap_relay_stream_errors_total{code=\"400\"} 0\n"),
            "{out}"
        );
    }

    #[test]
    fn facts_read_the_supervisor_restart_count() {
        let f = Facts::new("1.2.3", Some("4"));
        assert_eq!((f.supervised, f.supervisor_restarts), (true, 4));
        let f = Facts::new("1.2.3", None);
        assert_eq!((f.supervised, f.supervisor_restarts), (false, 0));
        let f = Facts::new("1.2.3", Some("many"));
        assert_eq!((f.supervised, f.supervisor_restarts), (false, 0));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}

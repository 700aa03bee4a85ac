//! Network usage accounting and caps (spec §2.5): byte counters per contract, `stats.json`, the
//! archive of finished periods, and the cap levels the Enrollment actor acts on.
//!
//! What it owns: one [`Meter`] per contract id (the contract's public key), shared with the
//! transport through the admission gates; the current period (`created_at` and the next reset);
//! the files `stats.json` and `<network_usage.archive_dir>/<relay_id>-<end_ms>.json`. Who calls it:
//! the daemon (load at start, [`run`] in the background, [`Usage::write`] on SIGUSR2 and at
//! shutdown), the per-stream tasks ([`Meter::add`], once per chunk read from either side), the
//! Enrollment actor ([`Usage::set_cap`], [`Usage::level`]) and the status object. It never talks
//! to a directory: enrolling and disenrolling is the Enrollment actor's job.
//!
//! # Decisions (where the spec is silent or the reference is odd)
//! - The data path does one relaxed atomic add per chunk on the contract's counter and one on
//!   the relay-wide counter, plus two compares; no lock. When a chunk takes a counter over a
//!   threshold (90 % or 93 % of a contract's cap, 93 % of the global cap) it wakes the cap check
//!   at once, instead of waiting for the reference's 10 s tick (which still runs too). So a relay
//!   overshoots a cap by a few chunks, not by 10 s of traffic.
//! - Counters are counted even when accounting is off (it costs the same atomic add), but are
//!   neither shown, persisted nor capped then.
//! - `stats.json` is written atomically (temp file, fsync, rename, fsync of the folder). Every
//!   counter is written, zero ones included (the reference omits zeros; a reader treats a
//!   missing `network_bytes` as 0, and so do we). A `stats.json` that does not parse is moved
//!   aside to `stats.json.bad-<ms>` with a warning and a new period starts; the reference
//!   silently disables accounting instead.
//! - Counters of contracts that are no longer configured ("legacy") are kept, shown in
//!   `stats.json`, counted towards the global cap, archived (as not active) at the next period
//!   end and then dropped, as in the reference.
//! - Changing `timeframe`, `write_interval` or `archive_dir`, or turning accounting on or off,
//!   needs a restart; per-contract caps and `global_limit` follow a reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::NetworkUsage;

/// The usage file in the home directory (reference `filenames.Stats`).
pub const STATS_FILE: &str = "stats.json";
/// Above this share of a contract's cap the relay disenrolls from the contract (spec §2.5).
pub const SOFT_CAP: f64 = 0.90;
/// Above this share of a contract's cap the contract's streams are cut too; at this share of the
/// global cap everything is (spec §2.5).
pub const HARD_CAP: f64 = 0.93;
/// How often the caps are checked even when no threshold was crossed (the reference's tick).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// "No threshold" for a meter.
const NONE: u64 = u64::MAX;

/// Errors reading or writing the usage files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A usage file could not be written.
    #[error("could not write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How far a counter is into its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Under 90 % (or no cap).
    Under,
    /// Over 90 %: disenroll, keep running streams.
    Soft,
    /// Over 93 % (or the global cap's 93 % reached): disenroll and cut every stream.
    Hard,
}

/// The byte counter of one contract. The transport adds to it; the rest reads it.
#[derive(Debug)]
pub struct Meter {
    /// Bytes read from both sides of this contract's streams in the current period.
    bytes: AtomicU64,
    /// Soft threshold in bytes (exclusive), or [`NONE`].
    soft: AtomicU64,
    /// Hard threshold in bytes (exclusive), or [`NONE`].
    hard: AtomicU64,
    /// The relay-wide counter and the wake-up for the cap check.
    tally: Arc<Tally>,
}

/// What every meter shares.
#[derive(Debug)]
struct Tally {
    /// Bytes of every contract in the current period.
    bytes: AtomicU64,
    /// 93 % of the global cap (inclusive), or [`NONE`].
    hard: AtomicU64,
    /// The global cap in force, or [`NONE`].
    limit: AtomicU64,
    /// Woken when a counter crosses a threshold or a period ends.
    crossed: Notify,
}

impl Meter {
    /// Counts `n` bytes read from one side of a stream. Lock-free; wakes the cap check only when
    /// this chunk crosses a threshold.
    #[inline]
    pub fn add(&self, n: usize) {
        let n = n as u64;
        let before = self.bytes.fetch_add(n, Ordering::Relaxed);
        let global = self.tally.bytes.fetch_add(n, Ordering::Relaxed);
        let after = before.saturating_add(n);
        let crossed = |t: u64| before <= t && after > t;
        let global_hard = self.tally.hard.load(Ordering::Relaxed);
        if crossed(self.soft.load(Ordering::Relaxed))
            || crossed(self.hard.load(Ordering::Relaxed))
            || (global < global_hard && global.saturating_add(n) >= global_hard)
        {
            self.tally.crossed.notify_one();
        }
    }

    /// Bytes counted in the current period.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn new(tally: Arc<Tally>, bytes: u64) -> Self {
        Self {
            bytes: AtomicU64::new(bytes),
            soft: AtomicU64::new(NONE),
            hard: AtomicU64::new(NONE),
            tally,
        }
    }

    fn level(&self) -> Level {
        let b = self.bytes();
        if b > self.hard.load(Ordering::Relaxed) {
            Level::Hard
        } else if b > self.soft.load(Ordering::Relaxed) {
            Level::Soft
        } else {
            Level::Under
        }
    }
}

/// `share` of `limit`, rounded down as the reference does.
fn threshold(limit: u64, share: f64) -> u64 {
    // A u64 cap as f64 loses precision only above 2^53 bytes (8 PiB); rounding down is the
    // reference's `uint64(float64(limit) * factor)`.
    (limit as f64 * share) as u64
}

/// Accounting state: the meters, the period, the files. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Usage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` when accounting is off.
    settings: Option<Settings>,
    /// The relay's public key (base64url), for the archive.
    relay_id: String,
    tally: Arc<Tally>,
    state: Mutex<State>,
    /// Held while a usage file is written, so two writers never share the temp file.
    writing: Mutex<()>,
}

/// The parts of `network_usage` this module uses, with paths resolved.
#[derive(Debug, Clone)]
struct Settings {
    timeframe_ms: i64,
    write_interval: Duration,
    stats: PathBuf,
    archive: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct State {
    /// Start of the current period, epoch ms.
    created_at: i64,
    /// When the current period ends, epoch ms.
    next_reset: i64,
    meters: BTreeMap<String, Arc<Meter>>,
}

/// The relay-wide usage, for the status object (spec §2.6 `network_usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Start of the period, epoch ms.
    pub timeframe_since: i64,
    /// End of the period, epoch ms.
    pub timeframe_until: i64,
    /// The global cap, if any.
    pub cap: Option<u64>,
    /// Bytes of every contract this period.
    pub usage: u64,
}

/// `stats.json` (spec §2.5).
#[derive(Debug, Default, Serialize, Deserialize)]
struct StatsFile {
    #[serde(default)]
    contract_stats: BTreeMap<String, ContractStat>,
    #[serde(default)]
    created_at: i64,
    #[serde(default)]
    updated_at: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ContractStat {
    #[serde(default)]
    network_bytes: u64,
}

/// One archived period (spec §2.5).
#[derive(Debug, Serialize, Deserialize)]
struct ArchiveFile {
    relay_id: String,
    metrics: Vec<ArchivedContract>,
    start_at: i64,
    end_at: i64,
    updated_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ArchivedContract {
    contract: String,
    active: bool,
    network_usage_bytes: u64,
}

impl Usage {
    /// Accounting off: meters count, nothing is shown, persisted or capped.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: None,
                relay_id: String::new(),
                tally: Arc::default(),
                state: Mutex::default(),
                writing: Mutex::default(),
            }),
        }
    }

    /// Accounting on: loads `stats.json` from `home` (or starts a period), and if the stored
    /// period already ended, archives it and starts the next one at once (spec §2.5), so a relay
    /// that was down over a period end does not carry old usage into the new period.
    ///
    /// # Errors
    /// [`Error::Write`] when `stats.json` (or an archive file) cannot be written.
    pub fn load(home: &Path, relay_id: &str, config: &NetworkUsage) -> Result<Self, Error> {
        let settings = Settings {
            timeframe_ms: i64::try_from(config.timeframe.as_millis()).unwrap_or(i64::MAX),
            write_interval: config.write_interval,
            stats: home.join(STATS_FILE),
            archive: config.archive_dir.as_ref().map(|d| under(home, d)),
        };
        let tally = Arc::new(Tally::default());
        tally.set_limit(config.global_limit);
        let now = now_ms();
        let file = read_stats(&settings.stats, now);
        let fresh = file.created_at == 0;
        let created_at = if fresh { now } else { file.created_at };
        let mut meters = BTreeMap::new();
        let mut total = 0u64;
        for (id, stat) in file.contract_stats {
            total = total.saturating_add(stat.network_bytes);
            meters.insert(
                id,
                Arc::new(Meter::new(Arc::clone(&tally), stat.network_bytes)),
            );
        }
        tally.bytes.store(total, Ordering::Relaxed);
        let (next_reset, reset_now) = next_reset(created_at, settings.timeframe_ms, now);
        let usage = Self {
            inner: Arc::new(Inner {
                settings: Some(settings),
                relay_id: relay_id.to_owned(),
                tally,
                state: Mutex::new(State {
                    created_at,
                    next_reset,
                    meters,
                }),
                writing: Mutex::default(),
            }),
        };
        if reset_now {
            let start = next_reset.saturating_sub(usage.timeframe_ms());
            info!(
                period_started = created_at,
                "the stored usage period has ended; archiving it"
            );
            usage.rollover(start, &|_| false)?;
        } else if fresh {
            info!("initialising the network usage file");
        }
        usage.write()?;
        Ok(usage)
    }

    /// Whether accounting is on.
    pub fn is_enabled(&self) -> bool {
        self.inner.settings.is_some()
    }

    /// The meter of contract `id` (created at 0 if it has none yet).
    pub fn meter(&self, id: &str) -> Arc<Meter> {
        let mut state = self.lock();
        Arc::clone(
            state
                .meters
                .entry(id.to_owned())
                .or_insert_with(|| Arc::new(Meter::new(Arc::clone(&self.inner.tally), 0))),
        )
    }

    /// Sets contract `id`'s cap (`None`: no cap). Ignored when accounting is off.
    pub fn set_cap(&self, id: &str, limit: Option<u64>) {
        if !self.is_enabled() {
            return;
        }
        let meter = self.meter(id);
        let (soft, hard) = limit.map_or((NONE, NONE), |l| {
            (threshold(l, SOFT_CAP), threshold(l, HARD_CAP))
        });
        meter.soft.store(soft, Ordering::Relaxed);
        meter.hard.store(hard, Ordering::Relaxed);
    }

    /// Sets the global cap after a reload. Ignored when accounting is off.
    pub fn set_global_limit(&self, limit: Option<u64>) {
        if !self.is_enabled() {
            return;
        }
        self.inner.tally.set_limit(limit);
    }

    /// How far contract `id` is into its cap, the global cap included (spec §2.5: 93 % of the
    /// global cap is the hard level for every contract). Always [`Level::Under`] when off.
    pub fn level(&self, id: &str) -> Level {
        if !self.is_enabled() {
            return Level::Under;
        }
        let global_hard = self.inner.tally.hard.load(Ordering::Relaxed);
        if self.inner.tally.bytes.load(Ordering::Relaxed) >= global_hard {
            return Level::Hard;
        }
        self.lock()
            .meters
            .get(id)
            .map_or(Level::Under, |m| m.level())
    }

    /// Bytes counted for contract `id` this period; `None` when accounting is off.
    pub fn bytes(&self, id: &str) -> Option<u64> {
        self.is_enabled()
            .then(|| self.lock().meters.get(id).map_or(0, |m| m.bytes()))
    }

    /// The relay-wide usage; `None` when accounting is off.
    pub fn summary(&self) -> Option<Summary> {
        self.inner.settings.as_ref()?;
        let state = self.lock();
        let limit = self.inner.tally.limit.load(Ordering::Relaxed);
        Some(Summary {
            timeframe_since: state.created_at,
            timeframe_until: state.next_reset,
            cap: (limit != NONE).then_some(limit),
            usage: self.inner.tally.bytes.load(Ordering::Relaxed),
        })
    }

    /// Completes when a counter crosses a threshold or a period ends (the cap check's wake-up).
    pub async fn crossed(&self) {
        self.inner.tally.crossed.notified().await;
    }

    /// Writes `stats.json` atomically. Does nothing when accounting is off.
    ///
    /// # Errors
    /// [`Error::Write`] with the file and the OS error.
    pub fn write(&self) -> Result<(), Error> {
        let Some(settings) = &self.inner.settings else {
            return Ok(());
        };
        let file = {
            let state = self.lock();
            StatsFile {
                contract_stats: state
                    .meters
                    .iter()
                    .map(|(id, m)| {
                        let stat = ContractStat {
                            network_bytes: m.bytes(),
                        };
                        (id.clone(), stat)
                    })
                    .collect(),
                created_at: state.created_at,
                updated_at: now_ms(),
            }
        };
        let _writing = self
            .inner
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        write_json(&settings.stats, &file)
    }

    /// Ends the current period if it is due (`now` ≥ its end): archives it, zeroes every counter
    /// and starts the next period. `active` tells whether the relay is enrolled in a contract
    /// (the archive's `active`). Returns whether a period ended; the cap check is woken then.
    ///
    /// # Errors
    /// [`Error::Write`] when the archive file or `stats.json` cannot be written (the counters
    /// are reset all the same).
    pub fn roll_if_due(&self, now: i64, active: &dyn Fn(&str) -> bool) -> Result<bool, Error> {
        let due = self.lock().next_reset;
        if !self.is_enabled() || now < due {
            return Ok(false);
        }
        let result = self.rollover(due, active).and_then(|()| self.write());
        self.inner.tally.crossed.notify_one();
        result.map(|()| true)
    }

    /// How long until the current period ends (zero if it is due).
    pub fn until_next_reset(&self, now: i64) -> Duration {
        let due = self.lock().next_reset;
        Duration::from_millis(u64::try_from(due.saturating_sub(now)).unwrap_or(0))
    }

    /// The `write_interval`, when accounting is on.
    pub fn write_interval(&self) -> Option<Duration> {
        self.inner.settings.as_ref().map(|s| s.write_interval)
    }

    /// Zeroes the counters into a new period starting at `start`, archiving the old one first.
    fn rollover(&self, start: i64, active: &dyn Fn(&str) -> bool) -> Result<(), Error> {
        let Some(settings) = &self.inner.settings else {
            return Ok(());
        };
        let (record, start_at) =
            {
                let mut state = self.lock();
                let mut metrics = Vec::new();
                let mut total = 0u64;
                for (id, m) in &state.meters {
                    let bytes = m.bytes.swap(0, Ordering::Relaxed);
                    total = total.saturating_add(bytes);
                    metrics.push(ArchivedContract {
                        contract: id.clone(),
                        active: active(id),
                        network_usage_bytes: bytes,
                    });
                }
                let _ = self.inner.tally.bytes.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |g| Some(g.saturating_sub(total)),
                );
                // Legacy counters (no stream can hold them any more) are archived once and dropped.
                state
                    .meters
                    .retain(|id, m| Arc::strong_count(m) > 1 || active(id));
                let start_at = state.created_at;
                state.created_at = start;
                state.next_reset = next_reset(start, settings.timeframe_ms, now_ms().max(start)).0;
                (metrics, start_at)
            };
        info!(
            period_started = start_at,
            period_ended = start,
            "network usage period ended; counters reset"
        );
        let Some(dir) = &settings.archive else {
            return Ok(());
        };
        let archive = ArchiveFile {
            relay_id: self.inner.relay_id.clone(),
            metrics: record,
            start_at,
            end_at: start,
            updated_at: now_ms(),
        };
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{}-{}.json", self.inner.relay_id, start));
        let _writing = self
            .inner
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        write_json(&path, &archive)?;
        info!(file = %path.display(), "network usage period archived");
        Ok(())
    }

    fn timeframe_ms(&self) -> i64 {
        self.inner.settings.as_ref().map_or(0, |s| s.timeframe_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            bytes: AtomicU64::new(0),
            hard: AtomicU64::new(NONE),
            limit: AtomicU64::new(NONE),
            crossed: Notify::new(),
        }
    }
}

impl Tally {
    fn set_limit(&self, limit: Option<u64>) {
        self.limit.store(limit.unwrap_or(NONE), Ordering::Relaxed);
        let hard = limit.map_or(NONE, |l| threshold(l, HARD_CAP));
        self.hard.store(hard, Ordering::Relaxed);
    }
}

/// Writes the counters every `write_interval` and ends periods on time until `stop` fires.
/// `active` says whether the relay is enrolled in a contract (for the archive). Returns at once
/// when accounting is off.
pub async fn run(
    usage: Usage,
    active: impl Fn(&str) -> bool + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let Some(every) = usage.write_interval() else {
        return;
    };
    let active = Arc::new(active);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let until = usage.until_next_reset(now_ms());
        let u = usage.clone();
        let job: Box<dyn FnOnce() -> Result<bool, Error> + Send> = tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => Box::new(move || u.write().map(|()| false)),
            () = tokio::time::sleep(until) => {
                let active = Arc::clone(&active);
                Box::new(move || u.roll_if_due(now_ms(), &*active))
            }
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(Ok(rolled)) => debug!(rolled, "network usage written"),
            Ok(Err(e)) => warn!(error = %e, "network usage not saved"),
            Err(e) => warn!(error = %e, "network usage writer failed"),
        }
    }
}

/// When the period that started at `created_at` ends, and whether it has already ended
/// (spec §2.5): `created_at + T` if in the future; if that is past but `created_at + 2T` is
/// not, `created_at + 2T` (reset now); if both are past, `now + T` (reset now).
pub fn next_reset(created_at: i64, timeframe_ms: i64, now: i64) -> (i64, bool) {
    let one = created_at.saturating_add(timeframe_ms);
    let two = one.saturating_add(timeframe_ms);
    if two < now {
        (now.saturating_add(timeframe_ms), true)
    } else if one < now {
        (two, true)
    } else {
        (one, false)
    }
}

/// `path` joined onto `home` even when it looks absolute (spec §1.3 path rule; the config
/// already strips the root, this keeps the rule if a caller does not).
fn under(home: &Path, path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    home.join(rel)
}

/// Epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads `stats.json`; a missing file is an empty one, a malformed one is moved aside.
fn read_stats(path: &Path, now: i64) -> StatsFile {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return StatsFile::default(),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "could not read the network usage file; starting a new period");
            return StatsFile::default();
        }
    };
    match serde_json::from_slice::<StatsFile>(&text) {
        Ok(f) if f.created_at > 0 => f,
        parsed => {
            let why = match parsed {
                Err(e) => e.to_string(),
                Ok(_) => "created_at is missing or not positive".to_owned(),
            };
            let aside = path.with_extension(format!("json.bad-{now}"));
            let moved = std::fs::rename(path, &aside);
            warn!(file = %path.display(), error = %why, moved_to = %aside.display(), moved = moved.is_ok(), "malformed network usage file; starting a new period");
            StatsFile::default()
        }
    }
}

/// Writes `value` as indented JSON to `path` atomically: a temp file beside it, fsync, rename,
/// fsync of the folder. Callers hold `Inner::writing`.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| err(std::io::Error::other(e)))?;
    text.push(b'\n');
    wireleap_home::durable::write_atomic(path, &text, 0o644).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_000;

    fn config(dir: Option<&str>, global: Option<u64>) -> NetworkUsage {
        NetworkUsage {
            timeframe: Duration::from_millis(u64::try_from(T * 3600).unwrap()),
            global_limit: global,
            write_interval: Duration::from_secs(60),
            archive_dir: dir.map(PathBuf::from),
        }
    }

    #[test]
    fn next_reset_follows_the_reference_rules() {
        assert_eq!(next_reset(0, T, T - 1), (T, false));
        assert_eq!(next_reset(0, T, T), (T, false));
        assert_eq!(next_reset(0, T, T + 1), (2 * T, true));
        assert_eq!(next_reset(0, T, 2 * T + 1), (3 * T + 1, true));
    }

    #[test]
    fn crossing_a_threshold_wakes_the_check_and_levels_follow_the_caps() {
        let home = tempfile::tempdir().unwrap();
        let u = Usage::load(home.path(), "relay", &config(None, None)).unwrap();
        u.set_cap("c1", Some(1000));
        let m = u.meter("c1");
        m.add(900);
        assert_eq!(u.level("c1"), Level::Under, "900 is not over 90 %");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        m.add(1);
        // The permit stored by the crossing makes `crossed` return at once.
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), u.crossed())
                .await
                .unwrap();
        });
        assert_eq!(u.level("c1"), Level::Soft);
        m.add(30);
        assert_eq!(u.level("c1"), Level::Hard);
        assert_eq!(u.level("other"), Level::Under);
        assert_eq!(u.summary().unwrap().usage, 931);
    }

    #[test]
    fn the_global_cap_is_hard_for_every_contract_at_93_percent() {
        let home = tempfile::tempdir().unwrap();
        let u = Usage::load(home.path(), "relay", &config(None, Some(100))).unwrap();
        u.meter("a").add(50);
        u.meter("b").add(42);
        assert_eq!(u.level("a"), Level::Under);
        u.meter("b").add(1);
        assert_eq!(u.level("a"), Level::Hard);
        assert_eq!(u.summary().unwrap().cap, Some(100));
    }

    #[test]
    fn disabled_counts_nothing_visible() {
        let u = Usage::disabled();
        u.meter("a").add(10);
        assert_eq!(u.bytes("a"), None);
        assert_eq!(u.summary(), None);
        assert_eq!(u.level("a"), Level::Under);
        u.write().unwrap();
    }

    #[test]
    fn counters_survive_a_reload_of_the_file_and_a_due_period_is_archived() {
        let home = tempfile::tempdir().unwrap();
        let u = Usage::load(home.path(), "relay", &config(Some("/archive/net"), None)).unwrap();
        let keep = u.meter("a");
        keep.add(123);
        u.meter("legacy").add(7);
        u.write().unwrap();
        let text = std::fs::read_to_string(home.path().join(STATS_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["contract_stats"]["a"]["network_bytes"], 123);
        let created = v["created_at"].as_i64().unwrap();
        assert!(!home.path().join("stats.json.tmp").exists());

        let again = Usage::load(home.path(), "relay", &config(Some("/archive/net"), None)).unwrap();
        assert_eq!(again.bytes("a"), Some(123));
        assert_eq!(again.summary().unwrap().usage, 130);
        assert_eq!(again.summary().unwrap().timeframe_since, created);

        // The period ends: archived under the home, zeroed, legacy dropped.
        let due = again.summary().unwrap().timeframe_until;
        let held = again.meter("a");
        assert!(again.roll_if_due(due, &|id| id == "a").unwrap());
        assert_eq!(held.bytes(), 0);
        assert_eq!(again.summary().unwrap().usage, 0);
        assert_eq!(again.summary().unwrap().timeframe_since, due);
        let archived = home.path().join(format!("archive/net/relay-{due}.json"));
        let a: ArchiveFile =
            serde_json::from_str(&std::fs::read_to_string(&archived).unwrap()).unwrap();
        assert_eq!((a.start_at, a.end_at), (created, due));
        let by: BTreeMap<_, _> = a
            .metrics
            .iter()
            .map(|m| (m.contract.as_str(), (m.active, m.network_usage_bytes)))
            .collect();
        assert_eq!(by["a"], (true, 123));
        assert_eq!(by["legacy"], (false, 7));
        let text = std::fs::read_to_string(home.path().join(STATS_FILE)).unwrap();
        assert!(!text.contains("legacy"), "{text}");
        assert!(!again.roll_if_due(due, &|_| true).unwrap());
    }

    #[test]
    fn a_malformed_file_is_moved_aside() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(STATS_FILE), "{not json").unwrap();
        let u = Usage::load(home.path(), "relay", &config(None, None)).unwrap();
        assert_eq!(u.summary().unwrap().usage, 0);
        let aside = std::fs::read_dir(home.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("stats.json.bad-")
            });
        assert!(aside);
    }
}

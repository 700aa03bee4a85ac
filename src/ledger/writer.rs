//! The ledger's writer thread: the only user of the database connection of this process.
//!
//! The actor hands it jobs over a channel and awaits the reply on a oneshot, so disk I/O never
//! runs on an async thread. Admissions are grouped: the thread takes every job that queued up
//! while it was busy (up to [`MAX_BATCH`]) and inserts all their tokens in one transaction
//! (group commit). Each admission is answered twice: once that transaction committed (stored,
//! or a replay: [`Writer::store`]), and once the WAL holding it was flushed to disk
//! ([`Stored::durable`]); the flush runs on threads of its own ([`super::durable`]), so the
//! writer commits the next group meanwhile, and a stream's target is dialled only for a token
//! that is not a replay, while its flush runs.
//!
//! If the thread is gone (it panicked, or the database failed to open), every job fails with a
//! storage error: streams are then refused rather than relayed unpaid.

use std::sync::mpsc;

use relay_migrations::ledger::{WAL_MAX_BYTES, WAL_RESTART_BYTES};
use tokio::sync::oneshot;
use tracing::{debug, error, warn};
use wireleap_protocol::unix_now;

use super::durable::Durable;
use super::store::{self, Counts, Due, Inserted, Outcome, Row, Store};

/// Largest number of admissions committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// Period of the background checkpoint. Short, so each checkpoint copies little: its fsync of
/// the database file makes a WAL flush running at the same time wait for the device, and a
/// small one keeps that wait short (measured in `benches/ledger.rs`: p99 at 10 000 tokens/s
/// 18–31 ms with 25 ms against 38–55 ms with 200 ms, same machine load).
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

/// How long the writer must have been idle before the WAL is made to start over below
/// [`WAL_MAX_BYTES`].
pub const RESTART_WHEN_IDLE: std::time::Duration = std::time::Duration::from_millis(2);

/// Whether the writer is working, and since when it is not (for [`checkpointer`]).
#[derive(Debug)]
struct Activity {
    base: std::time::Instant,
    busy: std::sync::atomic::AtomicBool,
    /// Microseconds after `base` when the writer last finished a group.
    last: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: std::time::Instant::now(),
            busy: std::sync::atomic::AtomicBool::new(false),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn set_busy(&self, busy: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if !busy {
            let now = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.last.store(now, Relaxed);
        }
        self.busy.store(busy, Relaxed);
    }

    /// How long the writer has had nothing to do (zero while it works).
    fn idle_for(&self) -> std::time::Duration {
        use std::sync::atomic::Ordering::Relaxed;
        if self.busy.load(Relaxed) {
            return std::time::Duration::ZERO;
        }
        let last = std::time::Duration::from_micros(self.last.load(Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// A reply channel.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, String>>;

/// The two answers of an admission.
#[derive(Debug)]
struct AdmitReply {
    /// At commit: stored, or a replay (or the commit failed).
    stored: Reply<Inserted>,
    /// Once a stored token's WAL is on disk (at once for a replay, or a ledger in memory).
    durable: Reply<()>,
}

/// A token the writer has committed (or found to be a replay); its flush may still run.
#[derive(Debug)]
pub struct Stored {
    /// Stored now, or a replay of a token stored before.
    pub inserted: Inserted,
    durable: oneshot::Receiver<Result<(), String>>,
}

impl Stored {
    /// Resolves once the token is on disk (at once for a replay, or a ledger in memory).
    ///
    /// # Errors
    /// The flush's error as text.
    pub async fn durable(self) -> Result<(), String> {
        self.durable.await.map_err(|_| stopped())?
    }
}

fn stopped() -> String {
    "the ledger thread has stopped".to_owned()
}

/// Work for the writer thread.
#[derive(Debug)]
enum Job {
    Admit(Row, AdmitReply),
    Claim {
        now: i64,
        lease: i64,
        limit: usize,
        reply: Reply<Vec<Due>>,
    },
    Record(Vec<(i64, Outcome)>, Reply<()>),
    Prune {
        now: i64,
        limit: usize,
        reply: Reply<usize>,
    },
    Counts(Reply<Counts>),
    Flush(Reply<()>),
}

/// A handle to the writer thread. Cheap to clone; the thread ends when the last handle drops.
#[derive(Debug, Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the thread over `store`.
    ///
    /// # Errors
    /// When the OS refuses a thread.
    pub fn spawn(store: Store) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        // The checkpointer lives as long as the writer thread: it stops when `alive` drops.
        let (alive, stopped) = mpsc::channel::<()>();
        let activity = std::sync::Arc::new(Activity::new());
        let mut durable = None;
        if let Some(path) = store.path() {
            // The flushers take over the WAL syncs; without them, commits stay fsynced.
            let flushers = Durable::spawn(&path)?;
            match store.defer_wal_sync() {
                Ok(()) => durable = Some(flushers),
                Err(e) => {
                    flushers.close();
                    warn!(error = %e, "ledger: commits flush the WAL themselves");
                }
            }
            let activity = activity.clone();
            std::thread::Builder::new()
                .name("ledger-checkpoint".into())
                .spawn(move || checkpointer(&path, &stopped, &activity))?;
        }
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                run(store, rx, durable.as_deref(), &activity);
                if let Some(d) = durable {
                    d.close();
                }
                drop(alive);
            })?;
        Ok(Self { jobs })
    }

    /// A writer whose every job fails with `why` (the database could not be opened).
    pub fn failed(why: String) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        // Answer jobs with the error; the thread ends with the last handle.
        let spawned = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                for job in rx {
                    fail(job, &why);
                }
            });
        if let Err(e) = spawned {
            error!(error = %e, "could not start the ledger thread");
        }
        Self { jobs }
    }

    /// Stores a token; resolves once it is committed and on disk (or found to be a replay).
    ///
    /// # Errors
    /// The storage error as text.
    pub async fn admit(&self, row: Row) -> Result<Inserted, String> {
        let stored = self.store(row).await?;
        let inserted = stored.inserted;
        stored.durable().await?;
        Ok(inserted)
    }

    /// Stores a token; resolves once it is committed (or found to be a replay), before the
    /// flush that makes it durable has finished: [`Stored::durable`] waits for that.
    ///
    /// # Errors
    /// The storage error as text.
    pub async fn store(&self, row: Row) -> Result<Stored, String> {
        let (stored, stored_rx) = oneshot::channel();
        let (durable, durable_rx) = oneshot::channel();
        self.jobs
            .send(Job::Admit(row, AdmitReply { stored, durable }))
            .map_err(|_| stopped())?;
        let inserted = stored_rx.await.map_err(|_| stopped())??;
        Ok(Stored {
            inserted,
            durable: durable_rx,
        })
    }

    /// See [`Store::claim_due`].
    ///
    /// # Errors
    /// The storage error as text.
    pub async fn claim(&self, now: i64, lease: i64, limit: usize) -> Result<Vec<Due>, String> {
        self.ask(|reply| Job::Claim {
            now,
            lease,
            limit,
            reply,
        })
        .await
    }

    /// See [`Store::record`].
    ///
    /// # Errors
    /// The storage error as text.
    pub async fn record(&self, outcomes: Vec<(i64, Outcome)>) -> Result<(), String> {
        self.ask(|tx| Job::Record(outcomes, tx)).await
    }

    /// See [`Store::prune_settled`].
    ///
    /// # Errors
    /// The storage error as text.
    pub async fn prune(&self, now: i64, limit: usize) -> Result<usize, String> {
        self.ask(|reply| Job::Prune { now, limit, reply }).await
    }

    /// See [`Store::counts`].
    ///
    /// # Errors
    /// The storage error as text.
    pub async fn counts(&self) -> Result<Counts, String> {
        self.ask(Job::Counts).await
    }

    /// Resolves once every job sent before it is done, and the WAL is checkpointed.
    ///
    /// # Errors
    /// The storage error as text.
    pub async fn flush(&self) -> Result<(), String> {
        self.ask(Job::Flush).await
    }

    async fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(job(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Folds the WAL into the database file every [`CHECKPOINT_EVERY`] on a connection of its own,
/// so the writer's commits never pay for a checkpoint (which would delay a whole group of
/// admissions). Passive: it never blocks the writer. But under continuous intake the writer
/// commits while each one runs, so none ever copies the last frame, the WAL never starts over
/// and grows without bound (66 MB after 100 000 tokens, measured). So a passive checkpoint is
/// followed at once by one that makes the WAL start over, once the WAL reached
/// [`WAL_RESTART_BYTES`] and the writer has been idle for [`RESTART_WHEN_IDLE`], or once it
/// reached [`WAL_MAX_BYTES`] whatever the writer does. That one holds the writer back while it
/// copies the frames committed during the passive one and syncs the database file, and
/// `journal_size_limit` then truncates the file.
fn checkpointer(path: &std::path::Path, stopped: &mpsc::Receiver<()>, activity: &Activity) {
    let conn = match relay_migrations::ledger::open(path) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "ledger: no background checkpoints; commits will checkpoint");
            return;
        }
    };
    let wal = relay_migrations::ledger::wal_path(path);
    // The WAL as the last checkpoint left it: while nothing is committed, nothing is copied (an
    // idle relay neither wakes the disk nor runs SQLite's code 40 times a second).
    let mut seen = None;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        let now = std::fs::metadata(&wal)
            .ok()
            .map(|m| (m.len(), m.modified().ok()));
        if now.is_some() && now == seen {
            continue;
        }
        // How far the WAL has grown since it last started over (not the file's length, which
        // stays at up to `journal_size_limit` once reached, so it would call for a restart,
        // which holds the writer back, after every checkpoint).
        let done = relay_migrations::ledger::checkpoint(&conn).and_then(|in_use| {
            let restart = in_use >= WAL_MAX_BYTES
                || (in_use >= WAL_RESTART_BYTES && activity.idle_for() >= RESTART_WHEN_IDLE);
            if restart {
                // The passive one just copied nearly everything: what is left for the one that
                // holds the writer back is the commits made meanwhile, and the database's fsync.
                relay_migrations::ledger::checkpoint_restart(&conn)?;
            }
            Ok(())
        });
        match done {
            // As read before it ran: a commit made meanwhile makes the next tick run again.
            Ok(()) => seen = now,
            Err(e) => debug!(error = %e, "ledger: checkpoint skipped"),
        }
    }
}

fn fail(job: Job, why: &str) {
    let why = why.to_owned();
    match job {
        Job::Admit(_, r) => drop(r.stored.send(Err(why))),
        Job::Claim { reply, .. } => drop(reply.send(Err(why))),
        Job::Record(_, r) | Job::Flush(r) => drop(r.send(Err(why))),
        Job::Counts(r) => drop(r.send(Err(why))),
        Job::Prune { reply, .. } => drop(reply.send(Err(why))),
    }
}

/// The thread's loop: block for one job, take whatever else queued, admit the group in one
/// transaction, then run the other jobs in order. Admissions are answered at commit (stored or
/// a replay), and a second time once durable: by the flushers once the WAL is on disk with
/// `durable`, at commit without (a database in memory).
fn run(mut store: Store, rx: mpsc::Receiver<Job>, durable: Option<&Durable>, activity: &Activity) {
    let mut admits: Vec<(Row, AdmitReply)> = Vec::new();
    let mut others: Vec<Job> = Vec::new();
    while let Ok(first) = rx.recv() {
        activity.set_busy(true);
        if let Some(d) = durable {
            d.wait_for_flusher();
        }
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Admit(row, reply) => admits.push((row, reply)),
                other => others.push(other),
            }
            if admits.len() + others.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !admits.is_empty() {
            commit_admits(&mut store, &mut admits, durable);
        }
        for job in others.drain(..) {
            serve(&mut store, job, durable);
        }
        activity.set_busy(false);
    }
}

fn commit_admits(
    store: &mut Store,
    admits: &mut Vec<(Row, AdmitReply)>,
    durable: Option<&Durable>,
) {
    match store.insert_batch(admits.iter().map(|(r, _)| r), unix_now()) {
        Ok(results) => {
            let mut answers = Vec::with_capacity(results.len());
            let mut acks = Vec::new();
            for ((_, reply), result) in admits.drain(..).zip(results) {
                match (result, durable) {
                    (Inserted::New, Some(_)) => acks.push(reply.durable),
                    // A replay stores nothing; in memory there is nothing to flush.
                    _ => drop(reply.durable.send(Ok(()))),
                }
                answers.push((reply.stored, result));
            }
            // The flush first (the longer wait), then the answers that let streams dial.
            if let Some(d) = durable
                && !acks.is_empty()
            {
                d.committed(acks);
            }
            for (stored, result) in answers {
                let _ = stored.send(Ok(result));
            }
        }
        Err(e) => {
            // Nothing of the batch is stored: refuse every stream of it.
            warn!(error = %e, tokens = admits.len(), "ledger: could not store sharetokens");
            let why = e.to_string();
            for (_, reply) in admits.drain(..) {
                let _ = reply.stored.send(Err(why.clone()));
            }
        }
    }
}

fn serve(store: &mut Store, job: Job, durable: Option<&Durable>) {
    let text = |e: store::Error| e.to_string();
    match job {
        Job::Admit(row, reply) => {
            let mut one = vec![(row, reply)];
            commit_admits(store, &mut one, durable);
        }
        Job::Claim {
            now,
            lease,
            limit,
            reply,
        } => {
            let _ = reply.send(store.claim_due(now, lease, limit).map_err(text));
        }
        Job::Record(outcomes, reply) => {
            let _ = reply.send(store.record(&outcomes, unix_now()).map_err(text));
        }
        Job::Counts(reply) => {
            let _ = reply.send(store.counts().map_err(text));
        }
        Job::Prune { now, limit, reply } => {
            let _ = reply.send(store.prune_settled(now, limit).map_err(text));
        }
        Job::Flush(reply) => {
            let _ = reply.send(store.checkpoint().map_err(text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_migrations::ledger::{JOURNAL_SIZE_LIMIT, WAL_MAX_BYTES};

    fn row(i: usize) -> Row {
        // Random-looking signatures spread inserts over the replay index, as real ones do.
        let sig = format!(
            "{:064x}",
            (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060)
        );
        Row {
            settlement_open: 10,
            settlement_close: 20,
            body: format!(
                "{{\"signature\":\"{sig}\",\"pad\":\"{}\"}}",
                "x".repeat(500)
            ),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ledger_wal_stays_bounded_under_continuous_intake_and_is_empty_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ledger.db");
        let wal = relay_migrations::ledger::wal_path(&db);
        let writer = Writer::spawn(Store::open(&db).unwrap()).unwrap();
        let wal_size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        // Continuous intake: 64 admissions in flight at every moment, 30 000 tokens (about
        // 50 MB written to the WAL), the WAL's size sampled after every group.
        let mut largest = 0;
        let mut next = 0;
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let total = 30_000;
        while next < total || !in_flight.is_empty() {
            while next < total && in_flight.len() < 64 {
                let (w, r) = (writer.clone(), row(next));
                in_flight.push(async move { w.admit(r).await });
                next += 1;
            }
            let done = futures::StreamExt::next(&mut in_flight).await.unwrap();
            assert_eq!(done, Ok(Inserted::New));
            largest = largest.max(wal_size());
        }
        let bound = WAL_MAX_BYTES + JOURNAL_SIZE_LIMIT as u64;
        assert!(
            largest <= bound,
            "the WAL reached {largest} bytes under load (bound {bound})"
        );
        writer.flush().await.unwrap();
        assert_eq!(wal_size(), 0, "a graceful stop's flush leaves an empty WAL");
        assert_eq!(writer.counts().await.unwrap().pending, total as u64);
    }
}

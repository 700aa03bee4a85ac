//! Pipelined durability for the ledger's writer: admissions are answered once the WAL that holds
//! them is on disk, while the writer already commits the next group.
//!
//! SQLite with `synchronous=FULL` fsyncs the WAL inside `COMMIT`, on the writer thread: the next
//! group of admissions can neither be inserted nor committed while the disk flushes, so every
//! admission waits for the flush of the group before it *and* its own, plus the CPU time of both,
//! and a slow flush (tens of ms on a shared disk) stalls intake entirely. Here the writer's
//! connection runs `synchronous=NORMAL` (commits only write to the WAL; SQLite still syncs the
//! WAL before every checkpoint and the database after it) and [`SYNC_THREADS`] threads call
//! `fdatasync` on the WAL file: a group is answered when a flush that *started after its commit*
//! has finished, so a token is on disk before its stream is admitted, exactly as with `FULL`,
//! and the CPU work of the next groups overlaps the flush. Two flushers let a group that commits
//! while a flush runs start its own at once instead of waiting for that one to end.
//!
//! The WAL file is opened by path (`<db>-wal`); it is only ever deleted when the last connection
//! to the database closes, which cannot happen while the writer's is open. Each flush still
//! checks that the path names the file it holds open and reopens it otherwise; when there is no
//! WAL file at all, the database file itself is flushed (everything was checkpointed into it).
//!
//! Who calls it: [`super::writer`] only.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tracing::{error, warn};

use super::writer::Reply;

/// Threads that flush the WAL.
pub(crate) const SYNC_THREADS: usize = 2;

/// Answers waiting for a flush, by group: one per token the group stored.
pub(crate) type Acks = Vec<Reply<()>>;

/// Shared between the writer (which queues committed groups) and the flushers.
#[derive(Debug)]
pub(crate) struct Durable {
    state: Mutex<State>,
    /// A group was committed, or the writer ended.
    wake: Condvar,
    /// A flusher became free.
    idle: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Sequence number of the last group committed.
    committed: u64,
    /// Highest sequence number a flush has been started for.
    started: u64,
    /// Flushes running now.
    flushing: usize,
    /// Committed groups waiting for a flush that started after them, oldest first.
    queue: VecDeque<(u64, Acks)>,
    /// The writer has ended: flush what is queued, then stop.
    closed: bool,
}

impl Durable {
    /// Starts the flushers for the database at `db`.
    ///
    /// # Errors
    /// When the OS refuses a thread.
    pub(crate) fn spawn(db: &Path) -> std::io::Result<Arc<Self>> {
        let durable = Arc::new(Self {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
        });
        for i in 0..SYNC_THREADS {
            let d = Arc::clone(&durable);
            let mut wal = WalFile::new(db);
            std::thread::Builder::new()
                .name(format!("ledger-sync-{i}"))
                .spawn(move || d.flusher(&mut wal))?;
        }
        Ok(durable)
    }

    /// Queues the answers of a group the writer has just committed; they go out once a flush
    /// that started after this call has finished.
    pub(crate) fn committed(&self, acks: Acks) {
        let mut st = self.lock();
        st.committed += 1;
        let seq = st.committed;
        st.queue.push_back((seq, acks));
        drop(st);
        self.wake.notify_one();
    }

    /// Blocks the writer while every flusher is busy (a committed group no flush has started
    /// for counts as busy). Admissions meanwhile queue up and go into the next group, so groups
    /// grow while the disk is slow instead of the writer committing one token at a time, each
    /// commit rewriting the same pages to the WAL.
    pub(crate) fn wait_for_flusher(&self) {
        let mut st = self.lock();
        while !st.closed && st.flushing + usize::from(st.committed > st.started) >= SYNC_THREADS {
            st = self.idle.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The writer has ended: the flushers answer what is queued and stop.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
        self.idle.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent (plain fields).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One flusher: wait for a group no flush has started for, flush, answer every group up to
    /// the one this flush started after.
    fn flusher(&self, wal: &mut WalFile) {
        loop {
            let target = {
                let mut st = self.lock();
                loop {
                    if st.committed > st.started {
                        break;
                    }
                    if st.closed {
                        return;
                    }
                    st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                st.started = st.committed;
                st.flushing += 1;
                st.committed
            };
            let flushed = wal.sync();
            let ready: Vec<(u64, Acks)> = {
                let mut st = self.lock();
                st.flushing -= 1;
                let n = st.queue.iter().take_while(|(s, _)| *s <= target).count();
                st.queue.drain(..n).collect()
            };
            self.idle.notify_one();
            match flushed {
                Ok(()) => {
                    for (_, acks) in ready {
                        for reply in acks {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
                Err(e) => {
                    // Committed but maybe not on disk: refuse the streams (the rows stay, so a
                    // replay of these tokens is still refused).
                    error!(error = %e, "ledger: could not flush the WAL; refusing its admissions");
                    let why = format!("could not flush the ledger to disk: {e}");
                    for (_, acks) in ready {
                        for reply in acks {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// The WAL file of a database, held open for `fdatasync`.
#[derive(Debug)]
struct WalFile {
    db: PathBuf,
    path: PathBuf,
    /// The open file and its inode number.
    open: Option<(File, u64)>,
}

impl WalFile {
    fn new(db: &Path) -> Self {
        Self {
            db: db.to_owned(),
            path: relay_migrations::ledger::wal_path(db),
            open: None,
        }
    }

    /// Flushes the WAL's data (and its size) to disk; the database file when there is no WAL.
    fn sync(&mut self) -> std::io::Result<()> {
        let ino = match std::fs::metadata(&self.path) {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!("ledger: no WAL file; flushing the database file instead");
                self.open = None;
                return File::open(&self.db)?.sync_all();
            }
            Err(e) => return Err(e),
        };
        if self.open.as_ref().is_none_or(|(_, held)| *held != ino) {
            // Read-only is enough for fdatasync on Linux; this handle never writes.
            let f = File::open(&self.path)?;
            let held = f.metadata()?.ino();
            self.open = Some((f, held));
        }
        match &self.open {
            Some((f, _)) => f.sync_data(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[test]
    fn ledger_durable_answers_each_group_after_a_flush_and_all_of_them_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::write(dir.path().join("x.db-wal"), b"").unwrap();
        let d = Durable::spawn(&db).unwrap();
        let mut rxs = Vec::new();
        for _ in 0..50 {
            let acks: Acks = (0..3)
                .map(|_| {
                    let (tx, rx) = oneshot::channel();
                    rxs.push(rx);
                    tx
                })
                .collect();
            d.committed(acks);
        }
        d.close();
        for rx in rxs {
            assert_eq!(rx.blocking_recv().unwrap(), Ok(()));
        }
        assert!(d.lock().queue.is_empty());
    }
}

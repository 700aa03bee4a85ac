//! The ledger's persistence: one SQLite database in the home directory, written by one
//! connection at a time.
//!
//! The schema and the connection settings live in `relay_migrations::ledger` (shared with the
//! schema and import migrations).
//!
//! # Durability
//! The database runs in WAL mode with `synchronous=FULL`: every committed transaction is fsynced
//! before `COMMIT` returns, so a token survives `kill -9` *and* power loss once its admission is
//! answered. The relay's writer thread switches its own connection to `NORMAL`
//! ([`Store::defer_wal_sync`]) and flushes the WAL itself after each commit, on other threads,
//! answering admissions only after that flush (`super::durable`): the same guarantee, without
//! the next group waiting for this one's flush.
//!
//! # Replay protection
//! A unique index on the token's signature, read from its body (spec §5.4 rule 5; why the
//! signature alone is the whole key: `relay_migrations::ledger::SCHEMA_V2`). Inserts run inside
//! `BEGIN IMMEDIATE`, so two processes sharing the file (hot upgrade) serialize on SQLite's write
//! lock and the second one sees the first one's row: a token is admitted by exactly one of them.
//! A previous generation that knows only schema version 1 is held to the same rule by the
//! triggers of migration m0005.
//!
//! # States
//! `pending` (admitted, not yet accepted by the contract) → `submitted` (accepted; no archive
//! configured) or `archived` (accepted and written to `archive_dir`), or `expired` (the
//! settlement window closed first; kept, never deleted, spec §10 #4).
//!
//! # Retention
//! A `submitted` or `archived` row is deleted ([`Store::prune_settled`]) once its settlement
//! window has closed: the contract has it, `archive_dir` keeps the file if configured, and the
//! row's replay key is no longer needed. Replay protection only needs the key while the token
//! can still be *accepted*, i.e. while its servicekey is usable (`now < settlement_open`, spec
//! §5.4 rule 2); `settlement_close` is later than that, and the delete also checks
//! `settlement_open <= now` itself, so a key never leaves while its token could be presented
//! again. `pending` and `expired` rows are never pruned.
//!
//! Who calls it: the ledger's writer thread ([`super::writer`]), the import migration, tests.
//! It never runs on an async thread.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use wireleap_protocol::Sharetoken;

pub use relay_migrations::ledger::{BUSY_TIMEOUT, DB_FILE, SCHEMA_VERSION};

/// [`Store::prune_settled`]'s statement. Its condition repeats the index `tokens_settled`'s
/// (`relay_migrations::ledger::SETTLED_WHERE`) word for word, which SQLite requires to use that
/// partial index, and it names the index: the planner would otherwise pick `tokens_due` (by
/// state) and walk every settled row, window open or not.
const PRUNE_SQL: &str = "DELETE FROM tokens WHERE id IN (
    SELECT id FROM tokens INDEXED BY tokens_settled
    WHERE state IN (1, 2) AND settlement_close <= ?1 AND settlement_open <= ?1
    LIMIT ?2)";

/// How many times [`Store::checkpoint`] tries to empty the WAL, [`TRUNCATE_PAUSE`] apart.
const TRUNCATE_TRIES: usize = 100;
const TRUNCATE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or set up.
    #[error("could not open the ledger {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The database was written by a newer relay.
    #[error("the ledger {} has schema version {found}, this relay knows up to {SCHEMA_VERSION}", path.display())]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// The database has an older schema, which only the relay converts (at its start).
    #[error("the ledger {} has schema version {found}; this relay reads version {SCHEMA_VERSION}, which it converts it to when it starts", path.display())]
    OtherSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// The WAL could not be emptied: another connection kept using it.
    #[error("could not empty the ledger's WAL: another connection kept it in use for a second")]
    WalInUse,
    /// A statement failed.
    #[error("ledger database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A token could not be encoded.
    #[error("could not encode a sharetoken: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Error {
    /// Whether another process holds the database locked for longer than [`BUSY_TIMEOUT`].
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Sql(e) | Error::Open { source: e, .. }
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy))
    }
}

/// A token's state in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Admitted, not yet accepted by the contract.
    Pending,
    /// Accepted by the contract, no archive configured.
    Submitted,
    /// Accepted and written to the archive.
    Archived,
    /// Settlement window closed before acceptance.
    Expired,
}

impl State {
    /// The number stored in the `state` column.
    pub fn code(self) -> i64 {
        use relay_migrations::ledger as l;
        match self {
            State::Pending => l::STATE_PENDING,
            State::Submitted => l::STATE_SUBMITTED,
            State::Archived => l::STATE_ARCHIVED,
            State::Expired => l::STATE_EXPIRED,
        }
    }

    /// The state of a `state` column's number (`None` for a number no state has).
    pub fn from_code(code: i64) -> Option<Self> {
        [
            State::Pending,
            State::Submitted,
            State::Archived,
            State::Expired,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }

    /// Its name, as `status` and the REST API show it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Submitted => "submitted",
            State::Archived => "archived",
            State::Expired => "expired",
        }
    }
}

/// A token ready to be written: its window and its JSON body (which holds the replay key).
#[derive(Clone)]
pub struct Row {
    /// Unix seconds.
    pub settlement_open: i64,
    /// Unix seconds.
    pub settlement_close: i64,
    /// The token JSON as it is submitted.
    pub body: String,
}

impl std::fmt::Debug for Row {
    // The body is a bearer proof of payment: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("settlement_open", &self.settlement_open)
            .field("settlement_close", &self.settlement_close)
            .field("body", &"<redacted>")
            .finish()
    }
}

impl Row {
    /// The row of a verified token (its JSON as the reference writes it).
    ///
    /// # Errors
    /// [`Error::Encode`] if the token does not serialize (never for a parsed token).
    pub fn try_from_token(token: &Sharetoken) -> Result<Self, Error> {
        Ok(Self {
            settlement_open: token.contract.settlement_open,
            settlement_close: token.contract.settlement_close,
            body: serde_json::to_string(token)?,
        })
    }
}

/// A pending token handed to submission.
#[derive(Clone)]
pub struct Due {
    /// Row id.
    pub id: i64,
    /// Contract id, base64url.
    pub contract: String,
    /// Token id (signature, base64url).
    pub signature: String,
    /// Unix seconds.
    pub settlement_close: i64,
    /// The JSON to POST.
    pub body: String,
}

impl std::fmt::Debug for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Due")
            .field("id", &self.id)
            .field("contract", &self.contract)
            .field("body", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What became of one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; `archived` when the archive file was written.
    Accepted {
        /// Whether it went to the archive.
        archived: bool,
    },
    /// Failed; try again at `next_attempt` (unix seconds).
    Retry {
        /// When.
        next_attempt: i64,
        /// Why it failed.
        error: String,
    },
    /// Final: the window closed.
    Expire {
        /// Why.
        error: String,
    },
    /// Not attempted (e.g. contract URL unknown yet): due again at `next_attempt`, no attempt
    /// counted.
    Postpone {
        /// When.
        next_attempt: i64,
    },
}

/// Token counts by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Pending.
    pub pending: u64,
    /// Submitted (not archived).
    pub submitted: u64,
    /// Expired.
    pub expired: u64,
    /// Archived.
    pub archived: u64,
}

/// The result of inserting one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// New token.
    New,
    /// Its (contract, servicekey, signature) is already in the ledger.
    Duplicate,
}

/// An open ledger database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the ledger at `path` and brings its schema to
    /// [`SCHEMA_VERSION`].
    ///
    /// # Errors
    /// [`Error::Open`], or [`Error::NewerSchema`] when a newer relay wrote it.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let open = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let conn = relay_migrations::ledger::open(path).map_err(open)?;
        let store = Self { conn };
        let found = store.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(Error::NewerSchema {
                path: path.to_owned(),
                found,
            });
        }
        relay_migrations::ledger::ensure_schema(&store.conn)?;
        Ok(store)
    }

    /// Opens `<home>/ledger.db` to read it, only if it exists and has this relay's schema:
    /// commands that read it neither create it nor convert it (a relay of an older version may
    /// be running on it, and could not start again on a converted one).
    ///
    /// # Errors
    /// [`Error::Open`] when it is missing or unreadable, [`Error::OtherSchema`] or
    /// [`Error::NewerSchema`] when its schema is not this relay's.
    pub fn open_existing(home: &Path) -> Result<Self, Error> {
        let path = home.join(DB_FILE);
        if !path.exists() {
            return Err(Error::Open {
                path,
                source: rusqlite::Error::InvalidPath(home.join(DB_FILE)),
            });
        }
        let conn = relay_migrations::ledger::open(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        let store = Self { conn };
        match store.schema_version()? {
            SCHEMA_VERSION => Ok(store),
            found if found > SCHEMA_VERSION => Err(Error::NewerSchema { path, found }),
            found => Err(Error::OtherSchema { path, found }),
        }
    }

    /// A private in-memory ledger (tests, and a relay without a home).
    ///
    /// # Errors
    /// [`Error::Sql`] if SQLite cannot allocate it.
    pub fn in_memory() -> Result<Self, Error> {
        let conn = Connection::open_in_memory()?;
        relay_migrations::ledger::ensure_schema(&conn)?;
        Ok(Self { conn })
    }

    /// `PRAGMA user_version`.
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub fn schema_version(&self) -> Result<i64, Error> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Inserts a batch of tokens in one transaction (group commit): one fsync for all of them.
    /// Each token's result is in the same order as `rows`; a token already present, or twice in
    /// the batch, is [`Inserted::Duplicate`].
    ///
    /// # Errors
    /// [`Error::Sql`] if the transaction fails; then none of the batch is stored.
    pub fn insert_batch<'a>(
        &mut self,
        rows: impl IntoIterator<Item = &'a Row>,
        now: i64,
    ) -> Result<Vec<Inserted>, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::new();
        {
            // The replay key is the body's signature (`tokens_key`); a conflict is a replay.
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tokens (body, settlement_open, settlement_close, admitted_at,
                     next_attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            )?;
            for r in rows {
                let n = stmt.execute(params![
                    r.body,
                    r.settlement_open,
                    r.settlement_close,
                    now,
                    r.settlement_open.saturating_add(1),
                ])?;
                out.push(if n == 1 {
                    Inserted::New
                } else {
                    Inserted::Duplicate
                });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Expires every pending token whose window closed by `now`, then claims up to `limit`
    /// pending tokens due by `now`: their next attempt moves to `now + lease`, so another
    /// process sharing the ledger does not submit them at the same time, and a process killed
    /// mid-submission leaves them due again once the lease runs out.
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub fn claim_due(&mut self, now: i64, lease: i64, limit: usize) -> Result<Vec<Due>, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE tokens SET state = 3, settled_at = ?1,
                 last_error = coalesce(last_error, 'settlement window closed before submission')
             WHERE state = 0 AND settlement_close <= ?1",
            params![now],
        )?;
        let due = {
            let mut stmt = tx.prepare_cached(
                "UPDATE tokens SET next_attempt = ?2
                 WHERE id IN (SELECT id FROM tokens
                              WHERE state = 0 AND next_attempt <= ?1
                              ORDER BY next_attempt LIMIT ?3)
                 RETURNING id, json_extract(body, '$.contract.public_key'),
                     json_extract(body, '$.signature'), settlement_close, body",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![now, now.saturating_add(lease), limit], |r| {
                Ok(Due {
                    id: r.get(0)?,
                    contract: r.get(1)?,
                    signature: r.get(2)?,
                    settlement_close: r.get(3)?,
                    body: r.get(4)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(due)
    }

    /// Records the outcomes of submissions, in one transaction.
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub fn record(&mut self, outcomes: &[(i64, Outcome)], now: i64) -> Result<(), Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (id, outcome) in outcomes {
            // Only a pending token changes: another process may have settled it meanwhile.
            match outcome {
                Outcome::Accepted { archived } => {
                    let state = if *archived {
                        State::Archived
                    } else {
                        State::Submitted
                    };
                    tx.execute(
                        "UPDATE tokens SET state = ?2, settled_at = ?3,
                             attempts = attempts + 1, last_error = NULL
                         WHERE id = ?1 AND state = 0",
                        params![id, state.code(), now],
                    )?;
                }
                Outcome::Retry {
                    next_attempt,
                    error,
                } => {
                    tx.execute(
                        "UPDATE tokens SET next_attempt = ?2, attempts = attempts + 1,
                             last_error = ?3
                         WHERE id = ?1 AND state = 0",
                        params![id, next_attempt, error],
                    )?;
                }
                Outcome::Expire { error } => {
                    tx.execute(
                        "UPDATE tokens SET state = 3, settled_at = ?2,
                             attempts = attempts + 1, last_error = ?3
                         WHERE id = ?1 AND state = 0",
                        params![id, now, error],
                    )?;
                }
                Outcome::Postpone { next_attempt } => {
                    tx.execute(
                        "UPDATE tokens SET next_attempt = ?2
                         WHERE id = ?1 AND state = 0",
                        params![id, next_attempt],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes up to `limit` `submitted`/`archived` rows whose settlement window has closed by
    /// `now` (see the module's "Retention"). Returns how many were deleted; fewer than `limit`
    /// means none is left. Small batches keep the writer free for admissions in between.
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub fn prune_settled(&mut self, now: i64, limit: usize) -> Result<usize, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx
            .prepare_cached(PRUNE_SQL)?
            .execute(params![now, i64::try_from(limit).unwrap_or(i64::MAX)])?;
        tx.commit()?;
        Ok(n)
    }

    /// Counts by state.
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub fn counts(&self) -> Result<Counts, Error> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count(*) FROM tokens GROUP BY state")?;
        let mut counts = Counts::default();
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            let n = u64::try_from(n).unwrap_or(0);
            match State::from_code(state) {
                Some(State::Pending) => counts.pending = n,
                Some(State::Submitted) => counts.submitted = n,
                Some(State::Expired) => counts.expired = n,
                Some(State::Archived) => counts.archived = n,
                None => {}
            }
        }
        Ok(counts)
    }

    /// The state of one token, by its replay key.
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub fn state_of(
        &self,
        contract: &str,
        servicekey: &str,
        signature: &str,
    ) -> Result<Option<String>, Error> {
        Ok(self
            .conn
            .query_row(
                "SELECT state FROM tokens
                 WHERE json_extract(body, '$.signature') = ?3
                   AND json_extract(body, '$.contract.public_key') = ?1
                   AND json_extract(body, '$.public_key') = ?2",
                params![contract, servicekey, signature],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .and_then(State::from_code)
            .map(|s| s.as_str().to_owned()))
    }

    /// Folds the WAL into the main file and truncates the WAL to nothing (used at a graceful
    /// stop: the file is self-contained for backups, and no WAL is left behind).
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub fn checkpoint(&self) -> Result<(), Error> {
        // The background checkpoint may be running on its own connection: then this one is
        // refused at once, and tried again once that one is done (milliseconds).
        for _ in 0..TRUNCATE_TRIES {
            if relay_migrations::ledger::checkpoint_truncate(&self.conn)? {
                return Ok(());
            }
            std::thread::sleep(TRUNCATE_PAUSE);
        }
        Err(Error::WalInUse)
    }

    /// Commits stop syncing the WAL (`synchronous=NORMAL`): the caller takes over, and must
    /// `fdatasync` the `-wal` file after a commit before it treats that commit as durable.
    /// Checkpoints still sync the WAL before and the database after copying.
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub fn defer_wal_sync(&self) -> Result<(), Error> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    /// The database file, `None` in memory.
    pub fn path(&self) -> Option<PathBuf> {
        self.conn
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// The connection (import and migrations run their own statements).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sig: &str, open: i64, close: i64) -> Row {
        Row {
            settlement_open: open,
            settlement_close: close,
            body: format!(
                r#"{{"public_key":"sk","signature":"{sig}","contract":{{"public_key":"c"}}}}"#
            ),
        }
    }

    #[test]
    fn ledger_store_rejects_replays_within_and_across_batches() {
        let mut s = Store::in_memory().unwrap();
        let r = s
            .insert_batch(&[row("a", 10, 20), row("b", 10, 20), row("a", 10, 20)], 1)
            .unwrap();
        assert_eq!(r, [Inserted::New, Inserted::New, Inserted::Duplicate]);
        let r = s.insert_batch(&[row("b", 10, 20)], 2).unwrap();
        assert_eq!(r, [Inserted::Duplicate]);
        assert_eq!(s.counts().unwrap().pending, 2);
    }

    #[test]
    fn ledger_store_claims_due_tokens_once_per_lease_and_expires_closed_windows() {
        let mut s = Store::in_memory().unwrap();
        s.insert_batch(&[row("a", 10, 100), row("b", 50, 100), row("c", 5, 8)], 1)
            .unwrap();
        // At 11: a is due (open + 1), c's window closed, b not yet due.
        let due = s.claim_due(11, 30, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].signature, "a");
        assert_eq!(s.counts().unwrap().expired, 1);
        // Claimed: not handed out again within the lease.
        assert!(s.claim_due(12, 30, 10).unwrap().is_empty());
        // After the lease it is due again (a process died mid-submission).
        assert_eq!(s.claim_due(41, 30, 10).unwrap().len(), 1);
    }

    #[test]
    fn ledger_store_records_outcomes() {
        let mut s = Store::in_memory().unwrap();
        s.insert_batch(
            &[
                row("a", 10, 100),
                row("b", 10, 100),
                row("c", 10, 100),
                row("d", 10, 100),
            ],
            1,
        )
        .unwrap();
        let due = s.claim_due(20, 5, 10).unwrap();
        let id = |sig: &str| due.iter().find(|d| d.signature == sig).unwrap().id;
        s.record(
            &[
                (id("a"), Outcome::Accepted { archived: false }),
                (id("b"), Outcome::Accepted { archived: true }),
                (
                    id("c"),
                    Outcome::Expire {
                        error: "closed".into(),
                    },
                ),
                (
                    id("d"),
                    Outcome::Retry {
                        next_attempt: 30,
                        error: "500".into(),
                    },
                ),
            ],
            21,
        )
        .unwrap();
        assert_eq!(
            s.counts().unwrap(),
            Counts {
                pending: 1,
                submitted: 1,
                expired: 1,
                archived: 1
            }
        );
        assert!(s.claim_due(29, 5, 10).unwrap().is_empty());
        assert_eq!(s.claim_due(30, 5, 10).unwrap()[0].signature, "d");
        // A settled token never goes back.
        s.record(&[(id("a"), Outcome::Expire { error: "x".into() })], 40)
            .unwrap();
        assert_eq!(
            s.state_of("c", "sk", "a").unwrap().as_deref(),
            Some("submitted")
        );
    }

    /// One row in `state` with its window, inserted and settled as the ledger does.
    fn settled(s: &mut Store, sig: &str, open: i64, close: i64, state: State) {
        s.insert_batch(&[row(sig, open, close)], 0).unwrap();
        s.conn
            .execute(
                "UPDATE tokens SET state = ?2 WHERE json_extract(body, '$.signature') = ?1",
                params![sig, state.code()],
            )
            .unwrap();
    }

    #[test]
    fn ledger_store_prunes_settled_rows_once_their_window_closed_and_keeps_the_rest() {
        let mut s = Store::in_memory().unwrap();
        settled(&mut s, "sub-closed", 10, 20, State::Submitted);
        settled(&mut s, "arch-closed", 10, 20, State::Archived);
        settled(&mut s, "sub-open", 10, 200, State::Submitted);
        settled(&mut s, "exp-closed", 10, 20, State::Expired);
        settled(&mut s, "pend-closed", 10, 20, State::Pending);
        // A (nonsensical) window that closes before it opens: its token is still acceptable
        // until 500, so its replay key must stay.
        settled(&mut s, "sub-weird", 500, 20, State::Submitted);
        assert_eq!(s.prune_settled(19, 100).unwrap(), 0, "windows still open");
        assert_eq!(s.prune_settled(20, 100).unwrap(), 2);
        let left: Vec<String> = {
            let mut stmt = s
                .conn
                .prepare("SELECT json_extract(body, '$.signature') FROM tokens ORDER BY 1")
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(left, ["exp-closed", "pend-closed", "sub-open", "sub-weird"]);
        // Batches: the limit holds, and the rest goes in the next call.
        for i in 0..5 {
            settled(&mut s, &format!("b{i}"), 10, 30, State::Archived);
        }
        assert_eq!(s.prune_settled(30, 3).unwrap(), 3);
        assert_eq!(s.prune_settled(30, 3).unwrap(), 2);
        assert_eq!(s.prune_settled(30, 3).unwrap(), 0);
        // Once pruned, the same token can be inserted again only because step 2 of §5.4 (not
        // the ledger) refuses it: the ledger itself no longer knows it.
        assert_eq!(
            s.insert_batch(&[row("b0", 10, 30)], 31).unwrap(),
            [Inserted::New]
        );
    }

    #[test]
    fn ledger_prune_uses_the_partial_index() {
        let s = Store::in_memory().unwrap();
        assert!(PRUNE_SQL.contains(relay_migrations::ledger::SETTLED_WHERE));
        let plan: Vec<String> = {
            let mut stmt = s
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {PRUNE_SQL}"))
                .unwrap();
            stmt.query_map(params![0, 10], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert!(
            plan.iter().any(|d| d.contains("tokens_settled")),
            "{plan:?}"
        );
    }

    proptest::proptest! {
        /// Whatever the rows and the clock: pruning never removes a pending or expired row, nor
        /// a replay key whose token could still be accepted (`now < settlement_open`), and it
        /// removes every settled row whose window closed.
        #[test]
        fn ledger_prune_never_reopens_a_replay_window(
            rows in proptest::collection::vec((0i64..100, 0i64..100, 0usize..4), 0..40),
            now in 0i64..120,
        ) {
            let mut s = Store::in_memory().unwrap();
            let states = [State::Pending, State::Submitted, State::Archived, State::Expired];
            for (i, (open, close, st)) in rows.iter().enumerate() {
                settled(&mut s, &format!("t{i}"), *open, *close, states[*st]);
            }
            while s.prune_settled(now, 7).unwrap() == 7 {}
            for (i, (open, close, st)) in rows.iter().enumerate() {
                let kept = s.state_of("c", "sk", &format!("t{i}")).unwrap().is_some();
                let settled_state = matches!(states[*st], State::Submitted | State::Archived);
                let should_go = settled_state && *close <= now && *open <= now;
                proptest::prop_assert_eq!(kept, !should_go, "row {} {:?}", i, (open, close, st));
                if now < *open {
                    proptest::prop_assert!(kept, "replay key of an acceptable token removed");
                }
            }
        }
    }

    #[test]
    fn ledger_store_persists_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let mut s = Store::open(&path).unwrap();
            s.insert_batch(&[row("a", 10, 20)], 1).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.counts().unwrap().pending, 1);
        s.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path),
            Err(Error::NewerSchema { found: 99, .. })
        ));
    }

    #[test]
    fn ledger_store_read_by_a_command_is_never_converted() {
        // A version 1 ledger, as an older relay still running on this home keeps it.
        let dir = tempfile::tempdir().unwrap();
        let conn = relay_migrations::ledger::open(&dir.path().join(DB_FILE)).unwrap();
        relay_migrations::ledger::ensure_schema_v1(&conn).unwrap();
        assert!(matches!(
            Store::open_existing(dir.path()),
            Err(Error::OtherSchema { found: 1, .. })
        ));
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1, "a reading command converted the ledger");
        // The relay itself converts it at its start; then commands read it.
        drop(Store::open(&dir.path().join(DB_FILE)).unwrap());
        assert_eq!(
            Store::open_existing(dir.path())
                .unwrap()
                .counts()
                .unwrap()
                .pending,
            0
        );
        let missing = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open_existing(missing.path()),
            Err(Error::Open { .. })
        ));
        assert!(!missing.path().join(DB_FILE).exists());
    }
}

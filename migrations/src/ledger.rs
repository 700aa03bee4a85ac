//! The sharetoken ledger's database (`<home>/ledger.db`): its schema, and the conversion from
//! and to a reference relay's `sharetokens/` store (spec §5.5).
//!
//! The relay's ledger ([`open`] + [`ensure_schema`]) and the migrations m0002 (schema) and m0003
//! (import) share this code, so the schema is written in one place. Import and export never
//! delete a token file: a rollback to the reference relay finds its store as it left it, plus
//! every token admitted since (export).
//!
//! Who calls it: the relay at startup (schema, import), the supervisor and `migrate` through the
//! registry. It must never log a token's content.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::Value;

use crate::{Error, write_atomic};

/// File name of the ledger database in the home directory.
pub const DB_FILE: &str = "ledger.db";
/// Where m0002's `down` moves the database (and its `up` takes it back from).
pub const DB_FILE_DOWN: &str = "ledger.db.down";
/// The reference relay's store directory in the home directory.
pub const STORE_DIR: &str = "sharetokens";
/// Where malformed store files are moved (v0.3.8 layout), below [`STORE_DIR`].
pub const MALFORMED_DIR: &str = "malformed";
/// The schema version of [`SCHEMA_V1`] (`PRAGMA user_version`).
pub const SCHEMA_V1_VERSION: i64 = 1;
/// The schema version of [`SCHEMA_V2`]: the current one (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;
/// How long a statement waits for another process holding the write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// A store file larger than this is not a sharetoken.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// The schema, version 1. `UNIQUE (contract, servicekey, signature)` is the replay protection
/// (spec §5.4 rule 5); `state` is `pending`, `submitted`, `archived` or `expired`.
pub const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS sharetokens (
    id               INTEGER PRIMARY KEY,
    contract         TEXT    NOT NULL,
    servicekey       TEXT    NOT NULL,
    signature        TEXT    NOT NULL,
    settlement_open  INTEGER NOT NULL,
    settlement_close INTEGER NOT NULL,
    body             TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending',
    admitted_at      INTEGER NOT NULL,
    next_attempt     INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    settled_at       INTEGER,
    UNIQUE (contract, servicekey, signature)
);
CREATE INDEX IF NOT EXISTS sharetokens_due ON sharetokens (state, next_attempt);
";

/// The schema, version 2 (migration m0005): one row per token, no larger than it needs to be.
/// The token's JSON (`body`, as submitted) is kept once: the contract, servicekey and signature
/// columns of version 1 repeated 172 bytes of it in the row and again in the replay index. The
/// replay key is the token's signature, read from the body ([`KEY_EXPR`]): two tokens that
/// differ in any signed field have different signatures (the servicekey signs them all, its own
/// key and the contract's included), so a key of the signature alone refuses exactly the
/// replays the version 1 key `(contract, servicekey, signature)` refused. `state` is a small
/// integer ([`STATE_PENDING`] …). Measured: 1272 → about 800 bytes per token in `ledger.db`.
pub const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id               INTEGER PRIMARY KEY,
    body             TEXT    NOT NULL CHECK (json_extract(body, '$.signature') IS NOT NULL),
    settlement_open  INTEGER NOT NULL,
    settlement_close INTEGER NOT NULL,
    state            INTEGER NOT NULL DEFAULT 0,
    admitted_at      INTEGER NOT NULL,
    next_attempt     INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    settled_at       INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_key ON tokens (json_extract(body, '$.signature'));
CREATE INDEX IF NOT EXISTS tokens_due ON tokens (state, next_attempt);
CREATE INDEX IF NOT EXISTS tokens_settled ON tokens (settlement_close) WHERE state IN (1, 2);
";
/// The replay key of [`SCHEMA_V2`], as its unique index `tokens_key` spells it (a query uses
/// the index only if it repeats the expression word for word).
pub const KEY_EXPR: &str = "json_extract(body, '$.signature')";
/// `tokens.state`: admitted, not yet accepted by the contract.
pub const STATE_PENDING: i64 = 0;
/// `tokens.state`: accepted, no archive configured.
pub const STATE_SUBMITTED: i64 = 1;
/// `tokens.state`: accepted and written to the archive.
pub const STATE_ARCHIVED: i64 = 2;
/// `tokens.state`: the settlement window closed before acceptance.
pub const STATE_EXPIRED: i64 = 3;
/// The condition of `tokens_settled`, verbatim.
pub const SETTLED_WHERE: &str = "state IN (1, 2)";

/// Version 1's `state` text of the version 2 `state` in `column` (SQL).
fn state_as_text(column: &str) -> String {
    format!(
        "CASE {column} WHEN {STATE_PENDING} THEN 'pending' WHEN {STATE_SUBMITTED} THEN 'submitted' \
         WHEN {STATE_ARCHIVED} THEN 'archived' ELSE 'expired' END"
    )
}

/// Version 2's `state` of the version 1 `state` text in `column` (SQL).
fn state_as_int(column: &str) -> String {
    format!(
        "CASE {column} WHEN 'pending' THEN {STATE_PENDING} WHEN 'submitted' THEN {STATE_SUBMITTED} \
         WHEN 'archived' THEN {STATE_ARCHIVED} ELSE {STATE_EXPIRED} END"
    )
}

/// While the schema is version 2, a relay that knows only version 1 may still write (the
/// previous generation during a hand-over): its insert into `sharetokens` is refused as a
/// duplicate if the token is in `tokens` (`RAISE(IGNORE)`: it sees no row inserted, which it
/// reports as "duplicate sharetoken"), and otherwise moved into `tokens` at once, so `tokens`
/// is the only place a token is, and the only one the replay check and submission read.
fn v2_forward() -> String {
    let state = state_as_int("NEW.state");
    format!(
        "
CREATE TRIGGER IF NOT EXISTS v1_insert_is_a_replay BEFORE INSERT ON sharetokens
WHEN EXISTS (SELECT 1 FROM tokens WHERE json_extract(body, '$.signature') = NEW.signature)
BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER IF NOT EXISTS v1_insert_moves_to_tokens AFTER INSERT ON sharetokens
BEGIN
    INSERT INTO tokens (body, settlement_open, settlement_close, state, admitted_at,
                        next_attempt, attempts, last_error, settled_at)
    VALUES (NEW.body, NEW.settlement_open, NEW.settlement_close, {state},
            NEW.admitted_at, NEW.next_attempt, NEW.attempts, NEW.last_error, NEW.settled_at);
    DELETE FROM sharetokens WHERE id = NEW.id;
END;
"
    )
}
const V2_FORWARD_DROP: &str = "
DROP TRIGGER IF EXISTS v1_insert_is_a_replay;
DROP TRIGGER IF EXISTS v1_insert_moves_to_tokens;
";
/// The same the other way, after a `down` to version 1 while a version 2 relay still writes
/// (the failed generation draining during a rollback): its tokens land in `sharetokens`.
fn v1_forward() -> String {
    let state = state_as_text("NEW.state");
    format!(
        "
CREATE TRIGGER IF NOT EXISTS v2_insert_is_a_replay BEFORE INSERT ON tokens
WHEN EXISTS (SELECT 1 FROM sharetokens
             WHERE contract = json_extract(NEW.body, '$.contract.public_key')
               AND servicekey = json_extract(NEW.body, '$.public_key')
               AND signature = json_extract(NEW.body, '$.signature'))
BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER IF NOT EXISTS v2_insert_moves_to_sharetokens AFTER INSERT ON tokens
BEGIN
    INSERT INTO sharetokens (contract, servicekey, signature, settlement_open, settlement_close,
                             body, state, admitted_at, next_attempt, attempts, last_error,
                             settled_at)
    VALUES (json_extract(NEW.body, '$.contract.public_key'), json_extract(NEW.body, '$.public_key'),
            json_extract(NEW.body, '$.signature'), NEW.settlement_open, NEW.settlement_close,
            NEW.body, {state},
            NEW.admitted_at, NEW.next_attempt, NEW.attempts, NEW.last_error, NEW.settled_at);
    DELETE FROM tokens WHERE id = NEW.id;
END;
"
    )
}
const V1_FORWARD_DROP: &str = "
DROP TRIGGER IF EXISTS v2_insert_is_a_replay;
DROP TRIGGER IF EXISTS v2_insert_moves_to_sharetokens;
";

/// The index that finds settled tokens whose settlement window has closed, so the ledger can
/// delete them in small batches without scanning every settled row (migration m0004). Partial:
/// a token enters it only when it is accepted, so admission (an insert as `pending`) does not
/// pay for it. [`PRUNE_WHERE`] is its condition; a query uses the index only if it repeats it.
///
/// Additive: `user_version` stays [`SCHEMA_VERSION`], because a relay that knows only
/// [`SCHEMA_V1`] works unchanged with it (it just never prunes). That matters during a hot
/// upgrade, when the old generation still writes the ledger the new one opened, and after a
/// rollback that did not run `down`.
pub const PRUNE_INDEX: &str = "
CREATE INDEX IF NOT EXISTS sharetokens_settled ON sharetokens (settlement_close)
    WHERE state IN ('submitted', 'archived');
";
/// The condition of [`PRUNE_INDEX`], verbatim.
pub const PRUNE_WHERE: &str = "state IN ('submitted', 'archived')";
/// The name of [`PRUNE_INDEX`].
pub const PRUNE_INDEX_NAME: &str = "sharetokens_settled";

/// Page cache per connection, KiB (negative `cache_size`): the replay index of about 35 000
/// tokens stays in memory; beyond that a random insert reads an index page back, from the
/// kernel's page cache in the common case. Not larger, for two measured reasons:
/// - A commit whose inserts rebalanced a B-tree page (most of them: the replay key is random)
///   makes SQLite walk the whole page cache's hash table when the transaction ends (the
///   rebalance parks a page under the number of the lock page, past the end of the file, and
///   the end of a transaction drops the pages past the end), on the commit a waiting stream's
///   token is in. With 16 MiB of 2 KiB pages that walk took 20 % of the writer thread's CPU
///   under the transport bench's load; with 4 MiB, 13 % of a writer that used 20 % less CPU
///   (perf, same run length).
/// - The cache is the relay's own memory, which the kernel cannot reclaim, unlike its page
///   cache: after 100 000 tokens the daemon's RSS levelled off at 37.2 MiB with 16 MiB and at
///   25.0 MiB with 4 MiB (transport bench, same build).
///
/// Intake at saturation and the CPU per token did not change beyond noise between 2, 4 and
/// 16 MiB over a ledger of 100 000 tokens (`benches/ledger.rs`, alternating runs), nor did the
/// daemon's rate over 600 000 tiny streams (4 alternating rounds: 4 400 streams/s on average
/// with 4 MiB, 4 364 with 16 MiB).
pub const CACHE_KIB: i64 = 4 * 1024;
/// Pages of a new database. 2 KiB halves what a random insert into the replay index writes to
/// the WAL compared with the default 4 KiB, and a sharetoken row (about 1 KiB) still fits in a
/// page. Only takes effect when the file is created.
pub const PAGE_SIZE: i64 = 2048;
/// WAL size (pages) at which a commit checkpoints by itself. High, because the relay's ledger
/// checkpoints from a thread of its own ([`checkpoint`]) and a commit that checkpoints delays
/// every admission of its group; this is the bound if that thread falls behind.
pub const WAL_AUTOCHECKPOINT: i64 = 32_000;

/// The write-ahead log of the database at `db` (`<db>-wal`, SQLite's name for it).
pub fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The largest `ledger.db-wal` kept once a checkpoint has emptied it (`journal_size_limit`,
/// bytes): the file is truncated to this when the WAL starts over, instead of keeping the size
/// of the longest stretch between two restarts.
pub const JOURNAL_SIZE_LIMIT: i64 = 4 << 20;
/// The WAL size (bytes) from which the relay's background checkpoint makes the WAL start over
/// ([`checkpoint_restart`]) after a passive one ([`checkpoint`]) when intake pauses: under
/// continuous intake a passive checkpoint never catches up with the last commit, and the WAL
/// would grow without end (66 MB after 100 000 tokens, measured).
pub const WAL_RESTART_BYTES: u64 = 2 << 20;
/// The WAL size (bytes) from which the background checkpoint makes the WAL start over even
/// while tokens keep coming (holding their admissions back for the few milliseconds it takes).
/// Kept at [`JOURNAL_SIZE_LIMIT`]: a WAL that starts over before it outgrows its file is
/// written in place, and flushing a write in place does not wait for the file system's
/// journal as flushing a file that grows does. Measured with `benches/ledger.rs`, p99
/// admission delay at 5 000 / 10 000 tokens/s: 8.9–15 / 10.6–26 ms with a 3–4 MiB bound,
/// 17 / 36 ms with 32 MiB (the disk's own p99 moved between 0.27 and 0.47 ms across those
/// runs: read them as a direction, not a measure).
pub const WAL_MAX_BYTES: u64 = JOURNAL_SIZE_LIMIT as u64;

/// Opens (creating) a ledger database with the ledger's settings: WAL, `synchronous=FULL`
/// (every commit is fsynced: a token survives power loss once admitted), a busy handler that
/// waits for a lock in short steps (`wait_while_busy`), a page cache of [`CACHE_KIB`] and a high
/// auto-checkpoint bound (measured: 2.5× the intake of the defaults, see `benches/ledger.rs`).
///
/// # Errors
/// The SQLite error.
pub fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let mut conn = Connection::open(path)?;
    conn.busy_handler(Some(wait_while_busy))?;
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    // `journal_mode` answers with a row, so it is read rather than set with `pragma_update`.
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
    // `journal_size_limit` answers with a row too.
    let _limit: i64 = conn.query_row(
        &format!("PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}"),
        [],
        |r| r.get(0),
    )?;
    Ok(conn)
}

/// Retries of [`wait_while_busy`] that wait [`BUSY_STEP_SHORT`]; later ones wait
/// [`BUSY_STEP_LONG`].
const BUSY_SHORT_TRIES: i32 = 200;
/// A short wait for the database to be free: another connection's lock (a checkpoint that holds
/// writers back, the other generation's commit during a hand-over) lasts well under a
/// millisecond, and a waiting admission should get in as soon as it ends.
const BUSY_STEP_SHORT: Duration = Duration::from_micros(50);
/// A long wait, once the lock has been held for more than a few milliseconds.
const BUSY_STEP_LONG: Duration = Duration::from_millis(1);
/// Retries of [`wait_while_busy`] that wait [`BUSY_STEP_LONG`]: together about
/// [`BUSY_TIMEOUT`].
#[allow(clippy::cast_possible_truncation)] // 5 000
const BUSY_LONG_TRIES: i32 = (BUSY_TIMEOUT.as_millis() / BUSY_STEP_LONG.as_millis()) as i32;

/// The busy handler of every ledger connection, in place of SQLite's `busy_timeout`, whose
/// waits of 1, 2, 5, 10 … ms make an admission that meets a lock held for 0.2 ms wait 1 ms or
/// more. Gives up after about [`BUSY_TIMEOUT`].
fn wait_while_busy(tries: i32) -> bool {
    if tries < BUSY_SHORT_TRIES {
        std::thread::sleep(BUSY_STEP_SHORT);
        true
    } else if tries < BUSY_SHORT_TRIES + BUSY_LONG_TRIES {
        std::thread::sleep(BUSY_STEP_LONG);
        true
    } else {
        false
    }
}

/// One passive checkpoint: copies committed WAL frames into the database file without
/// blocking writers or readers. Answers how many bytes of the WAL are in use after it: the
/// frames written since the WAL last started over, copied or not. That, not the file's length,
/// is how far the WAL has grown: the file keeps its length (up to [`JOURNAL_SIZE_LIMIT`]) when
/// the WAL starts over, and the next commits overwrite it from its beginning.
///
/// # Errors
/// The SQLite error.
pub fn checkpoint(conn: &Connection) -> Result<u64, rusqlite::Error> {
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    // -1 frames: not in WAL mode (nothing to bound).
    let frames = u64::try_from(frames).unwrap_or(0);
    Ok(frames.saturating_mul(u64::try_from(page).unwrap_or(0) + WAL_FRAME_HEADER))
}

/// Bytes each WAL frame adds to its page (SQLite's file format).
const WAL_FRAME_HEADER: u64 = 24;

/// A checkpoint that copies every committed frame and makes the next commit start the WAL over
/// from its beginning (`RESTART`), so the file stops growing. It waits for a transaction being
/// written to end and holds new ones back while it copies: run it when [`checkpoint`] has
/// already copied most frames, so that is short.
///
/// # Errors
/// The SQLite error (`SQLITE_BUSY` when a reader kept the WAL past the busy timeout).
pub fn checkpoint_restart(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
}

/// The checkpoint of a graceful stop: everything copied into the database file and the WAL
/// truncated to nothing (`TRUNCATE`). While another process (the next generation during a
/// hand-over) writes, it waits for that transaction to end and holds new ones back for the
/// copy, which the background checkpoints keep short.
///
/// Answers whether it completed: `false` when another connection's checkpoint was running or a
/// reader kept the WAL past the busy timeout (the WAL is then as it was; try again).
///
/// # Errors
/// The SQLite error.
pub fn checkpoint_truncate(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok(r.get::<_, i64>(0)? == 0)
    })
}

/// Runs `f` on `<home>/ledger.db` when there is one with a schema (what the ledger migrations
/// after m0002 work on); a home without one (m0002 not applied, or moved aside by its `down`)
/// is left alone.
///
/// # Errors
/// [`Error::Content`] with the SQLite error.
pub(crate) fn with_existing(
    home: &Path,
    f: impl FnOnce(&Connection) -> Result<(), rusqlite::Error>,
) -> Result<(), Error> {
    let db = home.join(DB_FILE);
    if !db.exists() {
        return Ok(());
    }
    let sql = |e: rusqlite::Error| Error::Content {
        path: db.clone(),
        why: e.to_string(),
    };
    let conn = open(&db).map_err(sql)?;
    if schema_version(&conn).map_err(sql)? < SCHEMA_V1_VERSION {
        return Ok(());
    }
    f(&conn).map_err(sql)
}

/// `PRAGMA user_version`.
///
/// # Errors
/// The SQLite error.
pub fn schema_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings a database to [`SCHEMA_VERSION`] with every additive index (what the relay runs at
/// start; idempotent; safe while another process uses it).
///
/// # Errors
/// The SQLite error.
pub fn ensure_schema(conn: &Connection) -> Result<(), rusqlite::Error> {
    ensure_schema_v1(conn)?;
    ensure_prune_index(conn)?;
    ensure_schema_v2(conn)
}

/// [`SCHEMA_V1`] (migration m0002): creates the table if `user_version` is below 1.
///
/// # Errors
/// The SQLite error.
pub fn ensure_schema_v1(conn: &Connection) -> Result<(), rusqlite::Error> {
    if schema_version(conn)? >= SCHEMA_V1_VERSION {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(SCHEMA_V1)?;
    tx.pragma_update(None, "user_version", SCHEMA_V1_VERSION)?;
    tx.commit()
}

/// [`SCHEMA_V2`] (migration m0005's `up`; the relay runs it at start): in one transaction,
/// every row of `sharetokens` moves to `tokens` (its state and attempts kept), the triggers
/// that forward a version 1 relay's inserts are created, and `user_version` becomes 2. Safe
/// while a version 1 relay writes the same file: it waits for the write lock, and from its
/// commit on every insert of that relay is replay-checked against `tokens` and moved there. A
/// database at version 2 already is left alone (one read).
///
/// # Errors
/// The SQLite error.
pub fn ensure_schema_v2(conn: &Connection) -> Result<(), rusqlite::Error> {
    if schema_version(conn)? >= SCHEMA_VERSION {
        return Ok(());
    }
    in_write_transaction(conn, || {
        if schema_version(conn)? >= SCHEMA_VERSION {
            return Ok(());
        }
        conn.execute_batch(SCHEMA_V2)?;
        conn.execute_batch(V1_FORWARD_DROP)?;
        conn.execute(
            &format!(
                "INSERT INTO tokens (body, settlement_open, settlement_close, state, admitted_at,
                                     next_attempt, attempts, last_error, settled_at)
                 SELECT body, settlement_open, settlement_close, {}, admitted_at,
                        next_attempt, attempts, last_error, settled_at
                 FROM sharetokens WHERE true
                 ON CONFLICT DO NOTHING",
                state_as_int("state")
            ),
            [],
        )?;
        conn.execute("DELETE FROM sharetokens", [])?;
        conn.execute_batch(&v2_forward())?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
    })
}

/// Back to [`SCHEMA_V1`] (migration m0005's `down`): in one transaction, every row of
/// `tokens` moves back to `sharetokens` (its replay key columns read from the body), the
/// forwarding triggers turn around (a version 2 relay still writing lands its tokens in
/// `sharetokens`), and `user_version` becomes 1. `tokens` stays, empty. A database below
/// version 2 is left alone.
///
/// # Errors
/// The SQLite error.
pub fn downgrade_schema_v2(conn: &Connection) -> Result<(), rusqlite::Error> {
    if schema_version(conn)? < SCHEMA_VERSION {
        return Ok(());
    }
    in_write_transaction(conn, || {
        if schema_version(conn)? < SCHEMA_VERSION {
            return Ok(());
        }
        conn.execute_batch(V2_FORWARD_DROP)?;
        conn.execute(
            &format!(
                "INSERT INTO sharetokens (contract, servicekey, signature, settlement_open,
                                          settlement_close, body, state, admitted_at,
                                          next_attempt, attempts, last_error, settled_at)
                 SELECT json_extract(body, '$.contract.public_key'),
                        json_extract(body, '$.public_key'), json_extract(body, '$.signature'),
                        settlement_open, settlement_close, body, {}, admitted_at,
                        next_attempt, attempts, last_error, settled_at
                 FROM tokens WHERE true
                 ON CONFLICT DO NOTHING",
                state_as_text("state")
            ),
            [],
        )?;
        conn.execute("DELETE FROM tokens", [])?;
        conn.execute_batch(&v1_forward())?;
        conn.pragma_update(None, "user_version", SCHEMA_V1_VERSION)
    })
}

/// Runs `f` inside `BEGIN IMMEDIATE` … `COMMIT` (rolled back if it fails): the write lock is
/// taken first, so another process's transaction is waited for, never upgraded into a deadlock.
fn in_write_transaction(
    conn: &Connection,
    f: impl FnOnce() -> Result<(), rusqlite::Error>,
) -> Result<(), rusqlite::Error> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f() {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// [`PRUNE_INDEX`] (migration m0004's `up`). Building it over a large existing ledger holds the
/// write lock once for as long as that takes.
///
/// # Errors
/// The SQLite error.
pub fn ensure_prune_index(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(PRUNE_INDEX)
}

/// Drops [`PRUNE_INDEX`] (migration m0004's `down`); rows are untouched.
///
/// # Errors
/// The SQLite error.
pub fn drop_prune_index(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(&format!("DROP INDEX IF EXISTS {PRUNE_INDEX_NAME};"))
}

/// What an import found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Tokens added to the ledger.
    pub imported: usize,
    /// Tokens the ledger already had (an earlier import, or admitted since).
    pub already_present: usize,
    /// Files that are not sharetokens, moved below `sharetokens/malformed/` (new locations).
    pub malformed: Vec<PathBuf>,
    /// The store was as the last import left it: no file was read.
    pub unchanged: bool,
}

/// The fields of a store file the ledger needs.
struct Parsed {
    settlement_open: i64,
    settlement_close: i64,
    body: String,
}

/// Imports `<home>/sharetokens/` into `<home>/ledger.db` (spec §5.5, both layouts: every
/// `*.json` below the root, so `<contract>/<id>.json` and older nestings alike, and the v0.3.8
/// `expired/` subtree; `malformed/` is skipped). Files that are not sharetokens are moved to
/// `sharetokens/malformed/<same relative path>` and reported. Token files stay where they are;
/// a second import adds nothing.
///
/// Once: the tokens and a fingerprint of the store's folders ([`STORE_IMPORTS_TABLE`]: each
/// folder's inode, change and modification times, taken before it was listed) are committed in
/// one transaction, and an import that finds every folder unchanged reads no file
/// ([`ImportReport::unchanged`]). A file added, removed or renamed anywhere below the root
/// changes its folder's change time, so a store copied in or written by a reference relay
/// after a rollback is imported again; a kill -9 during an import leaves neither the tokens
/// nor the fingerprint, and the next start imports again. A folder changed in the last
/// [`SETTLE`] is not trusted (its change time may not move again for a file added within the
/// same clock tick): the next start lists the store again.
///
/// # Errors
/// [`Error::Io`] reading the tree, [`Error::Content`] from the database.
pub fn import_store(home: &Path) -> Result<ImportReport, Error> {
    import_store_settled(home, SETTLE)
}

/// [`import_store`], trusting folders left alone for `settle`.
fn import_store_settled(home: &Path, settle: Duration) -> Result<ImportReport, Error> {
    let root = home.join(STORE_DIR);
    let mut report = ImportReport::default();
    if !root.is_dir() {
        return Ok(report);
    }
    let db = home.join(DB_FILE);
    let sql = |source: rusqlite::Error| Error::Content {
        path: db.clone(),
        why: source.to_string(),
    };
    let mut conn = open(&db).map_err(sql)?;
    ensure_schema(&conn).map_err(sql)?;
    conn.execute_batch(STORE_IMPORTS).map_err(sql)?;
    if store_unchanged(&conn, &root).map_err(sql)? {
        report.unchanged = true;
        return Ok(report);
    }
    let started = SystemTime::now();
    let mut files = Vec::new();
    let mut folders = Vec::new();
    walk(&root, &root, &mut files, &mut folders)?;
    let mut tokens = Vec::new();
    for rel in files {
        let path = root.join(&rel);
        match read_token(&path) {
            Some(t) => tokens.push(t),
            None => report.malformed.push(move_aside(&root, &rel)?),
        }
    }
    // Moving files aside changed their folders: list the store once more next time.
    let settled = report.malformed.is_empty()
        && folders
            .iter()
            .all(|(_, f)| f.changed + settle.as_nanos() as i128 <= nanos(started));
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    {
        // Schema version 2 (`ensure_schema` above): a token already there is a conflict on its
        // signature.
        let mut stmt = tx
            .prepare(
                "INSERT INTO tokens (body, settlement_open, settlement_close, admitted_at,
                     next_attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            )
            .map_err(sql)?;
        let now = unix_now();
        for t in &tokens {
            let n = stmt
                .execute(params![
                    t.body,
                    t.settlement_open,
                    t.settlement_close,
                    now,
                    t.settlement_open.saturating_add(1),
                ])
                .map_err(sql)?;
            if n == 1 {
                report.imported += 1;
            } else {
                report.already_present += 1;
            }
        }
    }
    tx.execute(&format!("DELETE FROM {STORE_IMPORTS_TABLE}"), [])
        .map_err(sql)?;
    if settled {
        let mut stmt = tx
            .prepare(&format!(
                "INSERT INTO {STORE_IMPORTS_TABLE} (folder, inode, changed_ns, modified_ns)
                 VALUES (?1, ?2, ?3, ?4)"
            ))
            .map_err(sql)?;
        for (rel, f) in &folders {
            stmt.execute(params![
                rel.to_string_lossy(),
                f.inode,
                f.changed.to_string(),
                f.modified.to_string()
            ])
            .map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)?;
    Ok(report)
}

/// The table of [`import_store`]'s fingerprint: one row per folder of the store (the root is
/// `""`). Additive, like [`PRUNE_INDEX`]: `user_version` stays, and a relay that does not know
/// it imports every time, as before.
pub const STORE_IMPORTS_TABLE: &str = "store_imports";
const STORE_IMPORTS: &str = "
CREATE TABLE IF NOT EXISTS store_imports (
    folder      TEXT    PRIMARY KEY,
    inode       INTEGER NOT NULL,
    changed_ns  TEXT    NOT NULL,
    modified_ns TEXT    NOT NULL
);
";
/// How long a folder must have been left alone before its fingerprint is trusted.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What identifies a folder's listing: it moves whenever an entry is added, removed or
/// renamed (or the times are set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Folder {
    inode: i64,
    /// ctime, nanoseconds since the epoch.
    changed: i128,
    /// mtime, nanoseconds since the epoch.
    modified: i128,
}

impl Folder {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(Self {
            inode: m.ino() as i64,
            changed: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            modified: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

fn nanos(t: SystemTime) -> i128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Whether the fingerprint recorded by the last import matches every folder as it is now (no
/// fingerprint: `false`). Costs one `stat` per folder, whatever the number of files.
fn store_unchanged(conn: &Connection, root: &Path) -> Result<bool, rusqlite::Error> {
    let mut stmt = conn.prepare(&format!(
        "SELECT folder, inode, changed_ns, modified_ns FROM {STORE_IMPORTS_TABLE}"
    ))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Ok(false);
    }
    Ok(rows.iter().all(|(rel, inode, changed, modified)| {
        Folder::of(&root.join(rel)).is_ok_and(|f| {
            f.inode == *inode
                && changed.parse() == Ok(f.changed)
                && modified.parse() == Ok(f.modified)
        })
    }))
}

/// Writes every pending token of `<home>/ledger.db` that has no file yet to
/// `<home>/sharetokens/<contract>/<signature>.json` (the reference layout), so a reference relay
/// run after a rollback submits them. Returns how many files were written. No database: 0.
///
/// # Errors
/// [`Error::Io`] or [`Error::Content`].
pub fn export_pending(home: &Path) -> Result<usize, Error> {
    let db = home.join(DB_FILE);
    if !db.exists() {
        return Ok(0);
    }
    let sql = |source: rusqlite::Error| Error::Content {
        path: db.clone(),
        why: source.to_string(),
    };
    let conn = open(&db).map_err(sql)?;
    if schema_version(&conn).map_err(sql)? < 1 {
        return Ok(0);
    }
    // Both layouts: `tokens` holds them at version 2 (`sharetokens` is then empty).
    let query = if schema_version(&conn).map_err(sql)? >= SCHEMA_VERSION {
        "SELECT json_extract(body, '$.contract.public_key'), json_extract(body, '$.signature'),
                body FROM tokens WHERE state = 0"
    } else {
        "SELECT contract, signature, body FROM sharetokens WHERE state = 'pending'"
    };
    let mut stmt = conn.prepare(query).map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    let root = home.join(STORE_DIR);
    let mut written = 0;
    for (contract, signature, body) in rows {
        if !is_b64url(&contract) || !is_b64url(&signature) {
            continue;
        }
        let dir = root.join(&contract);
        let path = dir.join(format!("{signature}.json"));
        if path.exists() {
            continue;
        }
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        write_atomic(&path, body.as_bytes(), 0o644).map_err(io)?;
        written += 1;
    }
    Ok(written)
}

/// Relative paths of every `*.json` file below `dir`, skipping `<root>/malformed`, and every
/// folder listed with its fingerprint as it was before it was listed.
fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<PathBuf>,
    folders: &mut Vec<(PathBuf, Folder)>,
) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: dir.to_owned(),
        source,
    };
    let folder = Folder::of(dir).map_err(io)?;
    folders.push((dir.strip_prefix(root).unwrap_or(dir).to_owned(), folder));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            if dir == root && entry.file_name() == MALFORMED_DIR {
                continue;
            }
            walk(root, &path, out, folders)?;
        } else if kind.is_file()
            && path.extension().is_some_and(|e| e == "json")
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_owned());
        }
    }
    Ok(())
}

/// Reads one store file; `None` if it is not a sharetoken the ledger can submit.
fn read_token(path: &Path) -> Option<Parsed> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_TOKEN_FILE {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let key = |v: &Value, name: &str, len: usize| {
        v.get(name)
            .and_then(Value::as_str)
            .filter(|s| s.len() == len && is_b64url(s))
            .map(str::to_owned)
    };
    let contract = v.get("contract")?;
    // The replay key's parts, as the relay reads them from the body: base64url without padding,
    // 32-byte keys are 43 characters, 64-byte signatures 86.
    key(contract, "public_key", 43)?;
    key(&v, "public_key", 43)?;
    key(&v, "signature", 86)?;
    Some(Parsed {
        settlement_open: contract.get("settlement_open").and_then(Value::as_i64)?,
        settlement_close: contract.get("settlement_close").and_then(Value::as_i64)?,
        body: text.trim_end().to_owned(),
    })
}

/// Moves `<root>/<rel>` to `<root>/malformed/<rel>` (a free name if taken); returns the new path.
fn move_aside(root: &Path, rel: &Path) -> Result<PathBuf, Error> {
    let from = root.join(rel);
    let mut to = root.join(MALFORMED_DIR).join(rel);
    let mut n = 1;
    while to.exists() {
        to = root
            .join(MALFORMED_DIR)
            .join(format!("{}.{n}", rel.display()));
        n += 1;
    }
    let io = |source| Error::Io {
        path: from.clone(),
        source,
    };
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::rename(&from, &to).map_err(io)?;
    Ok(to)
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(seed: u64, len: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                A[(x % 64) as usize] as char
            })
            .collect()
    }

    fn token(contract: &str, n: u64) -> (String, String) {
        let sig = b64(n + 1000, 86);
        let json = format!(
            r#"{{"version":0,"public_key":"{}","timestamp":1795312780,"relay_pubkey":"{}","share_key":"","signature":"{sig}","nonce":"00112233445566778899aabbccddeeff","contract":{{"settlement_open":1795312840,"settlement_close":1795316380,"public_key":"{contract}","signature":"{}"}}}}"#,
            b64(n + 2000, 43),
            b64(7, 43),
            b64(9, 86)
        );
        (sig, json)
    }

    fn count(home: &Path) -> i64 {
        let conn = open(&home.join(DB_FILE)).unwrap();
        conn.query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))
            .unwrap()
    }

    /// A store in both layouts: `<contract>/<sig>.json` (v0.3.8), deeper nesting (v0.3.7 loads
    /// every `*.json`), the v0.3.8 `expired/` subtree, and malformed files.
    fn reference_store(home: &Path) -> Vec<String> {
        let root = home.join(STORE_DIR);
        let (c1, c2) = (b64(1, 43), b64(2, 43));
        let mut sigs = Vec::new();
        for n in 0..20 {
            let c = if n % 2 == 0 { &c1 } else { &c2 };
            let (sig, json) = token(c, n);
            let dir = match n % 5 {
                3 => root.join("old").join(c),
                4 => root.join("expired").join(c),
                _ => root.join(c),
            };
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{sig}.json")), json).unwrap();
            sigs.push(sig);
        }
        std::fs::write(root.join(&c1).join("broken.json"), "{not json").unwrap();
        std::fs::write(root.join(&c2).join("nokey.json"), r#"{"version":0}"#).unwrap();
        std::fs::write(root.join(&c2).join("notes.txt"), "ignored").unwrap();
        sigs
    }

    #[test]
    fn ledger_import_keeps_every_token_moves_malformed_aside_and_is_idempotent() {
        let home = tempfile::tempdir().unwrap();
        let sigs = reference_store(home.path());
        let r = import_store(home.path()).unwrap();
        assert_eq!((r.imported, r.already_present), (20, 0));
        assert_eq!(r.malformed.len(), 2, "{r:?}");
        for m in &r.malformed {
            assert!(
                m.starts_with(home.path().join("sharetokens/malformed")),
                "{m:?}"
            );
            assert!(m.exists());
        }
        assert_eq!(count(home.path()), 20);
        let conn = open(&home.path().join(DB_FILE)).unwrap();
        for sig in &sigs {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM tokens
                     WHERE json_extract(body, '$.signature') = ?1 AND state = 0",
                    [sig],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{sig}");
        }
        // The body is the file, byte for byte.
        let (_, json) = token(&b64(1, 43), 0);
        let body: String = conn
            .query_row(
                "SELECT body FROM tokens WHERE json_extract(body, '$.signature') = ?1",
                [&sigs[0]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(body, json);
        drop(conn);

        let again = import_store(home.path()).unwrap();
        assert_eq!(
            again,
            ImportReport {
                imported: 0,
                already_present: 20,
                malformed: vec![],
                unchanged: false,
            }
        );
        assert_eq!(count(home.path()), 20);
    }

    #[test]
    fn ledger_import_reads_the_store_once_and_again_only_when_a_folder_changed() {
        let home = tempfile::tempdir().unwrap();
        let root = home.path().join(STORE_DIR);
        let (c1, c2) = (b64(1, 43), b64(2, 43));
        let put = |c: &str, n: u64| {
            let (sig, json) = token(c, n);
            std::fs::create_dir_all(root.join(c)).unwrap();
            let file = root.join(c).join(format!("{sig}.json"));
            std::fs::write(&file, json).unwrap();
            file
        };
        let first_file = put(&c1, 0);
        for n in 1..5 {
            put(&c1, n);
        }
        let import = || import_store_settled(home.path(), Duration::ZERO).unwrap();
        let r = import();
        assert_eq!((r.imported, r.unchanged), (5, false));
        // Rewritten in place, a file does not change its folder: the import reads no file (this
        // one would be moved aside as malformed if it were read).
        let (_, json) = token(&c1, 0);
        std::fs::write(&first_file, "{not a token").unwrap();
        let r = import();
        assert!(r.unchanged && r.malformed.is_empty(), "{r:?}");
        assert!(first_file.exists());
        std::fs::write(&first_file, json).unwrap();
        // A token added to a contract's folder, then a new contract's folder: each is imported.
        put(&c1, 5);
        let r = import();
        assert_eq!((r.imported, r.already_present, r.unchanged), (1, 5, false));
        put(&c2, 6);
        let r = import();
        assert_eq!((r.imported, r.already_present, r.unchanged), (1, 6, false));
        assert!(import().unchanged);
        // A token removed (a reference relay submitted it) makes the next import list again.
        std::fs::remove_file(&first_file).unwrap();
        assert!(!import().unchanged);
        assert!(import().unchanged);
        // A folder changed within the settle time is not trusted: listed again next time.
        put(&c1, 7);
        let r = import_store(home.path()).unwrap();
        assert_eq!((r.imported, r.unchanged), (1, false));
        assert!(!import_store(home.path()).unwrap().unchanged);
        assert_eq!(count(home.path()), 8);
    }

    #[test]
    fn ledger_export_writes_pending_tokens_in_the_reference_layout() {
        let home = tempfile::tempdir().unwrap();
        reference_store(home.path());
        import_store(home.path()).unwrap();
        std::fs::remove_dir_all(home.path().join(STORE_DIR)).unwrap();
        assert_eq!(export_pending(home.path()).unwrap(), 20);
        assert_eq!(export_pending(home.path()).unwrap(), 0);
        // Re-importing the export finds everything present.
        let r = import_store(home.path()).unwrap();
        assert_eq!((r.imported, r.already_present), (0, 20));
        let (sig, json) = token(&b64(1, 43), 0);
        let file = home
            .path()
            .join(STORE_DIR)
            .join(b64(1, 43))
            .join(format!("{sig}.json"));
        assert_eq!(std::fs::read_to_string(file).unwrap(), json);
    }

    #[test]
    fn ledger_prune_index_up_creates_it_down_drops_it_and_rows_stay() {
        use crate::{Context, Migration as _};
        let home = tempfile::tempdir().unwrap();
        let ctx = Context::new(home.path(), "config.json");
        let m = crate::m0004_ledger_prune_index::LedgerPruneIndex;
        // No ledger yet: nothing to do, nothing created.
        m.up(&ctx).unwrap();
        m.down(&ctx).unwrap();
        assert!(!home.path().join(DB_FILE).exists());
        crate::m0002_ledger_schema::LedgerSchema.up(&ctx).unwrap();
        reference_store(home.path());
        import_store(home.path()).unwrap();
        let has_index = || {
            let conn = open(&home.path().join(DB_FILE)).unwrap();
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
                    [PRUNE_INDEX_NAME],
                    |r| r.get(0),
                )
                .unwrap();
            n == 1
        };
        // The relay's own start (import) already indexes; down drops it, up restores it.
        assert!(has_index());
        m.down(&ctx).unwrap();
        m.down(&ctx).unwrap();
        assert!(!has_index());
        assert_eq!(count(home.path()), 20);
        let conn = open(&home.path().join(DB_FILE)).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
        drop(conn);
        m.up(&ctx).unwrap();
        m.up(&ctx).unwrap();
        assert!(has_index());
        assert_eq!(count(home.path()), 20);
    }

    /// The statement a version 1 relay admits a token with (what 0.7.0 before m0005 runs,
    /// word for word), so the tests play the previous generation during a hand-over.
    const V1_ADMIT: &str = "INSERT INTO sharetokens (contract, servicekey, signature,
             settlement_open, settlement_close, body, admitted_at, next_attempt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (contract, servicekey, signature) DO NOTHING";
    /// The statement a version 2 relay admits a token with.
    const V2_ADMIT: &str = "INSERT INTO tokens (body, settlement_open, settlement_close,
             admitted_at, next_attempt)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING";

    fn v1_admit(conn: &Connection, contract: &str, n: u64) -> usize {
        let (sig, json) = token(contract, n);
        let sk = b64(n + 2000, 43);
        conn.execute(
            V1_ADMIT,
            params![
                contract, sk, sig, 1795312840, 1795316380, json, 1, 1795312841
            ],
        )
        .unwrap()
    }

    fn v2_admit(conn: &Connection, contract: &str, n: u64) -> usize {
        let (_, json) = token(contract, n);
        conn.execute(
            V2_ADMIT,
            params![json, 1795312840, 1795316380, 1, 1795312841],
        )
        .unwrap()
    }

    /// Every token as version 1 spells it, whichever table holds it, sorted.
    fn v1_rows(conn: &Connection) -> Vec<(String, String, String, String, i64, Option<String>)> {
        let v2: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'tokens'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let tokens = format!(
            "UNION ALL
             SELECT json_extract(body, '$.contract.public_key'),
                    json_extract(body, '$.public_key'), json_extract(body, '$.signature'),
                    {}, attempts, last_error
             FROM tokens",
            state_as_text("state")
        );
        let mut rows: Vec<_> = conn
            .prepare(&format!(
                "SELECT contract, servicekey, signature, state, attempts, last_error
                 FROM sharetokens {}",
                if v2 == 1 { tokens.as_str() } else { "" }
            ))
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        rows
    }

    fn table_count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn ledger_compact_rows_up_and_down_keep_every_token_with_its_state() {
        use crate::{Context, Migration as _};
        let home = tempfile::tempdir().unwrap();
        let ctx = Context::new(home.path(), "config.json");
        let m = crate::m0005_ledger_compact_rows::LedgerCompactRows;
        // No ledger yet: nothing to do, nothing created.
        m.up(&ctx).unwrap();
        m.down(&ctx).unwrap();
        assert!(!home.path().join(DB_FILE).exists());
        // A version 1 ledger with a token in every state, as a 0.7.0 relay left it.
        let conn = open(&home.path().join(DB_FILE)).unwrap();
        ensure_schema_v1(&conn).unwrap();
        let c = b64(1, 43);
        for n in 0..8 {
            assert_eq!(v1_admit(&conn, &c, n), 1);
        }
        conn.execute_batch(
            "UPDATE sharetokens SET state = 'submitted', attempts = 1 WHERE id = 2;
             UPDATE sharetokens SET state = 'archived', attempts = 2 WHERE id = 3;
             UPDATE sharetokens SET state = 'expired', attempts = 3,
                 last_error = 'settlement window closed' WHERE id = 4;
             UPDATE sharetokens SET attempts = 4, last_error = 'refused' WHERE id = 5;",
        )
        .unwrap();
        let before = v1_rows(&conn);
        m.up(&ctx).unwrap();
        m.up(&ctx).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(table_count(&conn, "sharetokens"), 0);
        assert_eq!(table_count(&conn, "tokens"), 8);
        assert_eq!(v1_rows(&conn), before);
        m.down(&ctx).unwrap();
        m.down(&ctx).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_V1_VERSION);
        assert_eq!(table_count(&conn, "tokens"), 0);
        assert_eq!(table_count(&conn, "sharetokens"), 8);
        assert_eq!(v1_rows(&conn), before);
        m.up(&ctx).unwrap();
        assert_eq!(v1_rows(&conn), before);
    }

    #[test]
    fn ledger_compact_rows_a_version_1_relay_writing_meanwhile_loses_nothing_and_admits_no_replay()
    {
        let home = tempfile::tempdir().unwrap();
        let db = home.path().join(DB_FILE);
        // The previous generation's connection, opened before the upgrade.
        let old = open(&db).unwrap();
        ensure_schema_v1(&old).unwrap();
        let c = b64(1, 43);
        assert_eq!(v1_admit(&old, &c, 0), 1);
        // The next generation starts: version 2.
        let new = open(&db).unwrap();
        ensure_schema(&new).unwrap();
        assert_eq!(schema_version(&new).unwrap(), SCHEMA_VERSION);
        // The old one admits a new token: it sees one row inserted, the token is in `tokens`.
        assert_eq!(v1_admit(&old, &c, 1), 1);
        // Replays are refused on both sides, whichever generation admitted the token first.
        assert_eq!(v1_admit(&old, &c, 0), 0, "replay of a moved token");
        assert_eq!(v1_admit(&old, &c, 1), 0, "replay of a forwarded token");
        assert_eq!(v2_admit(&new, &c, 1), 0);
        assert_eq!(v2_admit(&new, &c, 2), 1);
        assert_eq!(
            v1_admit(&old, &c, 2),
            0,
            "replay of the new generation's token"
        );
        assert_eq!(table_count(&new, "sharetokens"), 0);
        assert_eq!(table_count(&new, "tokens"), 3);

        // Rollback: `down` while the failed version 2 generation still drains.
        downgrade_schema_v2(&old).unwrap();
        assert_eq!(schema_version(&old).unwrap(), SCHEMA_V1_VERSION);
        assert_eq!(v2_admit(&new, &c, 3), 1, "its token lands in sharetokens");
        assert_eq!(v2_admit(&new, &c, 0), 0);
        assert_eq!(v1_admit(&old, &c, 3), 0);
        assert_eq!(v1_admit(&old, &c, 4), 1);
        assert_eq!(v2_admit(&new, &c, 4), 0);
        assert_eq!(table_count(&old, "tokens"), 0);
        assert_eq!(table_count(&old, "sharetokens"), 5);
        // The pending tokens a reference relay would need are all in its layout.
        drop((old, new));
        assert_eq!(export_pending(home.path()).unwrap(), 5);
    }

    #[test]
    fn ledger_compact_rows_take_less_room_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let size_of = |name: &str, v2: bool| {
            let db = dir.path().join(name);
            let conn = open(&db).unwrap();
            ensure_schema_v1(&conn).unwrap();
            if v2 {
                ensure_schema_v2(&conn).unwrap();
            }
            conn.execute_batch("BEGIN").unwrap();
            let c = b64(1, 43);
            for n in 0..3000 {
                let added = if v2 {
                    v2_admit(&conn, &c, n)
                } else {
                    v1_admit(&conn, &c, n)
                };
                assert_eq!(added, 1);
            }
            conn.execute_batch("COMMIT").unwrap();
            checkpoint_truncate(&conn).unwrap();
            std::fs::metadata(&db).unwrap().len() / 3000
        };
        let (v1, v2) = (size_of("v1.db", false), size_of("v2.db", true));
        assert!(
            v2 * 10 <= v1 * 7,
            "bytes per token: version 1 {v1}, version 2 {v2}"
        );
    }

    #[test]
    fn ledger_schema_down_moves_the_database_aside_and_up_takes_it_back() {
        use crate::{Context, Migration as _};
        let home = tempfile::tempdir().unwrap();
        let ctx = Context::new(home.path(), "config.json");
        let m = crate::m0002_ledger_schema::LedgerSchema;
        m.up(&ctx).unwrap();
        reference_store(home.path());
        import_store(home.path()).unwrap();
        m.down(&ctx).unwrap();
        m.down(&ctx).unwrap();
        assert!(!home.path().join(DB_FILE).exists());
        assert!(home.path().join(DB_FILE_DOWN).exists());
        m.up(&ctx).unwrap();
        m.up(&ctx).unwrap();
        assert_eq!(count(home.path()), 20);
    }

    /// A new ledger database with its schema: the directory (kept alive), the file, a
    /// connection.
    fn new_ledger() -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        let conn = open(&db).unwrap();
        ensure_schema(&conn).unwrap();
        (dir, db, conn)
    }

    #[test]
    fn ledger_checkpoint_answers_the_wal_in_use_not_the_length_of_its_file() {
        let (_dir, db, conn) = new_ledger();
        // Accounting, not durability, is under test: no fsync per commit.
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        let wal_len = || std::fs::metadata(wal_path(&db)).unwrap().len();
        // One commit per token and no checkpoint: the WAL grows past its size limit.
        let mut n = 0;
        while wal_len() <= WAL_MAX_BYTES {
            assert_eq!(v2_admit(&conn, "c", n), 1);
            n += 1;
            assert!(n < 100_000, "the WAL did not grow");
        }
        let grown = checkpoint(&conn).unwrap();
        assert!(grown >= WAL_MAX_BYTES, "in use after growing: {grown}");
        // Started over: the file keeps its length (cut to the limit), the next commit writes
        // from its beginning, and that is what the checkpoint answers.
        checkpoint_restart(&conn).unwrap();
        assert_eq!(v2_admit(&conn, "c", n), 1);
        let in_use = checkpoint(&conn).unwrap();
        assert!(
            wal_len() >= WAL_MAX_BYTES,
            "file cut below the limit: {}",
            wal_len()
        );
        assert!(
            in_use > 0 && in_use < 64 * 1024,
            "in use after one commit: {in_use} bytes (file {} bytes)",
            wal_len()
        );
    }

    #[test]
    fn ledger_connection_waits_for_another_ones_write_lock_then_gets_in() {
        let (_dir, db, holder) = new_ledger();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert_eq!(v2_admit(&holder, "c", 1), 1);
        let db2 = db.clone();
        let waiter = std::thread::spawn(move || v2_admit(&open(&db2).unwrap(), "c", 2));
        // Held well past the short waits, so the waiter goes through both kinds.
        std::thread::sleep(Duration::from_millis(60));
        holder.execute_batch("COMMIT").unwrap();
        assert_eq!(waiter.join().unwrap(), 1, "the waiting insert went in");
        assert_eq!(
            holder
                .query_row("SELECT count(*) FROM tokens", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            2
        );
    }

    #[test]
    fn ledger_busy_handler_gives_up_after_the_busy_timeout() {
        let last = BUSY_SHORT_TRIES + BUSY_LONG_TRIES;
        let waited = BUSY_STEP_SHORT * BUSY_SHORT_TRIES.unsigned_abs()
            + BUSY_STEP_LONG * BUSY_LONG_TRIES.unsigned_abs();
        assert!(waited >= BUSY_TIMEOUT, "waits {waited:?} in all");
        assert!(wait_while_busy(last - 1));
        assert!(!wait_while_busy(last));
        assert!(!wait_while_busy(i32::MAX));
    }
}

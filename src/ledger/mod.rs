//! Ledger: the relay's sharetokens, its income.
//!
//! The [`Ledger`] actor is the one place tokens are admitted, stored and submitted: a token is
//! committed to the SQLite database in the home directory (`ledger.db`) before its stream is
//! admitted, a uniqueness constraint is the replay protection (shared safely by two relay
//! processes during a hot upgrade), and pending tokens are submitted to their contracts until
//! their settlement window closes (spec §5.4–§5.6, §10 #4).
//!
//! # Layout
//! - [`actor`](Ledger): the actor and its messages (transport: [`Admitter`]; daemon:
//!   [`Flush`], [`LedgerCounts`]).
//! - [`store`]: the database (schema, group-commit insert, claims, outcomes, counts).
//! - [`writer`]: the thread that owns the connection; async callers never block on disk.
//! - `durable`: the threads that flush the WAL, so an admission is answered only once its token
//!   is on disk while the writer goes on committing.
//! - [`submit`]: submission rounds and the archive.
//! - [`payout`]: the `balance` and `withdraw` commands.
//!
//! Who calls it: the transport (admit), the daemon (open, flush at shutdown, counts), the
//! migrations (import, schema).

mod actor;
mod durable;
pub mod payout;
pub mod store;
pub mod submit;
pub mod writer;

pub use actor::{
    AdmitError, AdmitToken, Admitter, Flush, Ledger, LedgerCounts, Pending, TokenCounts,
};
pub use store::{DB_FILE, Store};

/// Why the ledger could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The writer thread could not start.
    #[error("could not start the ledger thread: {0}")]
    Thread(std::io::Error),
}

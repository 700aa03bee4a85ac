//! The [`Ledger`] actor and its messages.
//!
//! The actor is the control plane of the ledger: it turns [`AdmitToken`] into a job for the
//! writer thread and answers once the token is committed, and it runs a submission round every
//! `auto_submit_interval`, each followed by pruning settled tokens whose window has closed
//! (every [`PRUNE_EVERY`] when submission is off). It never touches the disk itself.
//!
//! Restart: rebuilds from the database, losing nothing (every admitted token is committed before
//! its `Ok`). Shutdown: [`Flush`] after the drain waits for the writer's queue and checkpoints
//! the WAL.

use std::path::Path;

use actix::prelude::*;
use tracing::{info, warn};
use wireleap_protocol::Sharetoken;

use super::Error;
use super::store::{self, Inserted, Row, Store};
use super::submit::Submitter;
use super::writer::Writer;
use crate::config::Config;
use crate::directory::Admission;
use crate::directory::client::Client;

/// How often settled rows are pruned when submission is off (with submission on, after every
/// round).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
/// Rows deleted per transaction: short, so admissions queued behind it wait little.
const PRUNE_BATCH: usize = 1000;
/// Prune transactions per pass at most (the next pass takes the rest).
const PRUNE_BATCHES: usize = 100;

/// The sharetoken ledger.
#[derive(Debug)]
pub struct Ledger {
    /// The writer thread (owns the database connection).
    writer: Writer,
    /// Submission settings; `None` when `auto_submit_interval` is 0 (tokens accumulate).
    submitter: Option<Submitter>,
    /// A submission round is in progress (rounds never overlap).
    submitting: bool,
}

impl Ledger {
    /// A ledger in memory without submission: replay protection for the life of the process
    /// only. For tests of other actors; the daemon uses [`Ledger::try_open`].
    pub fn new() -> Self {
        let writer = match Store::in_memory()
            .map_err(|e| e.to_string())
            .and_then(|s| Writer::spawn(s).map_err(|e| e.to_string()))
        {
            Ok(w) => w,
            Err(e) => Writer::failed(e),
        };
        Self {
            writer,
            submitter: None,
            submitting: false,
        }
    }

    /// Opens the ledger database in `home` and prepares submission per `config`
    /// (`auto_submit_interval`, `archive_dir`); contract URLs come from `admission`.
    ///
    /// # Errors
    /// [`Error::Store`] if the database cannot be opened, [`Error::Thread`] if the writer
    /// thread cannot start.
    pub fn try_open(
        home: &Path,
        config: &Config,
        client: Client,
        admission: Admission,
    ) -> Result<Self, Error> {
        let store = Store::open(&home.join(store::DB_FILE))?;
        import_reference_store(home);
        let writer = Writer::spawn(store).map_err(Error::Thread)?;
        let submitter = config.auto_submit_interval.map(|interval| Submitter {
            client,
            admission,
            interval,
            archive_dir: config.archive_dir.as_ref().map(|d| home.join(d)),
            retry: crate::directory::client::Retry::PERFORM,
        });
        Ok(Self {
            writer,
            submitter,
            submitting: false,
        })
    }

    /// The handle the transport admits tokens with (take it before starting the actor).
    pub fn admitter(&self) -> Admitter {
        Admitter {
            writer: self.writer.clone(),
        }
    }

    fn start_round(&mut self, ctx: &mut Context<Self>) {
        let Some(sub) = self.submitter.clone() else {
            return;
        };
        if self.submitting {
            return;
        }
        self.submitting = true;
        let writer = self.writer.clone();
        ctx.spawn(
            async move {
                sub.round(&writer).await;
                prune(&writer).await;
            }
            .into_actor(self)
            .map(|_, act, _| act.submitting = false),
        );
    }
}

/// Deletes settled tokens whose settlement window has closed (see `store`'s "Retention"), in
/// batches of [`PRUNE_BATCH`]. Returns how many went.
async fn prune(writer: &Writer) -> usize {
    let mut pruned = 0;
    for _ in 0..PRUNE_BATCHES {
        match writer
            .prune(wireleap_protocol::unix_now(), PRUNE_BATCH)
            .await
        {
            Ok(n) => {
                pruned += n;
                if n < PRUNE_BATCH {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "ledger: could not prune settled sharetokens");
                break;
            }
        }
    }
    if pruned > 0 {
        info!(
            tokens = pruned,
            "pruned settled sharetokens whose window closed"
        );
    }
    pruned
}

/// Imports a reference relay's `sharetokens/` store (migration m0003's `up`, run at every start
/// so a store copied in later is picked up; a store unchanged since the last import is not
/// read again). A failure is logged, not fatal: the files stay.
fn import_reference_store(home: &Path) {
    match relay_migrations::ledger::import_store(home) {
        Ok(r) => {
            for path in &r.malformed {
                warn!(moved_to = %path.display(), "malformed sharetoken file moved aside");
            }
            if r.imported > 0 || !r.malformed.is_empty() {
                info!(
                    imported = r.imported,
                    already_present = r.already_present,
                    malformed = r.malformed.len(),
                    "imported the sharetokens/ store"
                );
            }
        }
        Err(e) => warn!(error = %e, "could not import the sharetokens/ store; its files are kept"),
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Actor for Ledger {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(sub) = &self.submitter {
            info!(interval = ?sub.interval, archive = ?sub.archive_dir, "sharetoken submission on");
            // Tokens left from before (a restart) go at the first tick, as in the reference.
            ctx.run_interval(sub.interval, |act, ctx| act.start_round(ctx));
            ctx.run_later(std::time::Duration::ZERO, |act, ctx| act.start_round(ctx));
        } else {
            info!("sharetoken submission off (auto_submit_interval is 0)");
            // Rows settled while submission was on still leave once their window closed.
            ctx.run_interval(PRUNE_EVERY, |act, ctx| {
                let writer = act.writer.clone();
                ctx.spawn(
                    async move {
                        prune(&writer).await;
                    }
                    .into_actor(act),
                );
            });
        }
    }
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

/// Store a verified sharetoken, refusing a replay. Replies once the token is committed to disk:
/// the transport admits the stream only after `Ok`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), AdmitError>")]
pub struct AdmitToken(pub Sharetoken);

impl Handler<AdmitToken> for Ledger {
    type Result = ResponseFuture<Result<(), AdmitError>>;

    fn handle(&mut self, AdmitToken(token): AdmitToken, _ctx: &mut Self::Context) -> Self::Result {
        let admitter = self.admitter();
        Box::pin(async move { admitter.admit(&token).await })
    }
}

/// The stream path's way into the ledger: a token goes straight to the writer thread and the
/// answer comes straight back, without passing through the actor's thread (two thread hops
/// fewer on every stream's set-up than [`AdmitToken`]). Same store, same replay check, same
/// durability: `Ok` only once the token is on disk.
#[derive(Debug, Clone)]
pub struct Admitter {
    writer: Writer,
}

impl Admitter {
    /// Stores a verified sharetoken, refusing a replay; resolves once it is durable.
    ///
    /// # Errors
    /// [`AdmitError::Duplicate`] for a replay, [`AdmitError::Store`] when it could not be
    /// stored (the stream must then be refused).
    pub async fn admit(&self, token: &Sharetoken) -> Result<(), AdmitError> {
        self.store(token).await?.durable().await
    }

    /// Stores a verified sharetoken, refusing a replay; resolves once it is committed, before
    /// it is durable ([`Pending::durable`]): the replay check is exact by then, so a stream may
    /// dial its target while the flush runs, and move bytes only after it.
    ///
    /// # Errors
    /// As [`Admitter::admit`].
    pub async fn store(&self, token: &Sharetoken) -> Result<Pending, AdmitError> {
        let row = Row::try_from_token(token).map_err(|e| AdmitError::Store(e.to_string()))?;
        match self.writer.store(row).await {
            Ok(stored) if stored.inserted == Inserted::New => Ok(Pending(stored)),
            Ok(_) => Err(AdmitError::Duplicate),
            Err(e) => Err(AdmitError::Store(e)),
        }
    }
}

/// A sharetoken stored, not yet known to be on disk.
#[derive(Debug)]
pub struct Pending(crate::ledger::writer::Stored);

impl Pending {
    /// Resolves once the token is on disk.
    ///
    /// # Errors
    /// [`AdmitError::Store`] when the flush failed (the stream must then be refused).
    pub async fn durable(self) -> Result<(), AdmitError> {
        self.0.durable().await.map_err(AdmitError::Store)
    }
}

/// Token counts by state, for `status` and the REST API.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, MessageResponse, serde::Serialize)]
pub struct TokenCounts {
    /// Admitted, not yet submitted.
    pub pending: u64,
    /// Accepted by the contract (no archive configured), window still open (pruned once it
    /// closes).
    pub submitted: u64,
    /// Settlement window closed before acceptance; kept.
    pub expired: u64,
    /// Accepted by the contract and written to the archive, window still open (the row is
    /// pruned once it closes; the archive file stays).
    pub archived: u64,
}

/// Make every admitted token durable. Replies when done.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for Ledger {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Flush, _ctx: &mut Self::Context) -> Self::Result {
        let writer = self.writer.clone();
        Box::pin(async move {
            // Every admitted token is already committed; this drains the queue and folds the WAL.
            if let Err(e) = writer.flush().await {
                warn!(error = %e, "ledger flush failed");
            }
        })
    }
}

/// Ask for the token counts.
#[derive(Debug, Message)]
#[rtype(result = "TokenCounts")]
pub struct LedgerCounts;

impl Handler<LedgerCounts> for Ledger {
    type Result = ResponseFuture<TokenCounts>;

    fn handle(&mut self, _msg: LedgerCounts, _ctx: &mut Self::Context) -> Self::Result {
        let writer = self.writer.clone();
        Box::pin(async move {
            match writer.counts().await {
                Ok(c) => TokenCounts {
                    pending: c.pending,
                    submitted: c.submitted,
                    expired: c.expired,
                    archived: c.archived,
                },
                Err(e) => {
                    warn!(error = %e, "ledger counts unavailable");
                    TokenCounts::default()
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wireleap_protocol::{Contract, Servicekey, keys};

    fn token(contract: &keys::SigningKey, relay: wireleap_protocol::PublicKey) -> Sharetoken {
        let now = wireleap_protocol::unix_now();
        let c = Contract::sign(contract, now + 60, now + 120);
        let sk = Servicekey::from_signing_key(keys::generate_signing_key(), Some(c));
        Sharetoken::new(&sk, relay, now).unwrap()
    }

    #[actix_rt::test]
    async fn ledger_actor_admits_once_and_counts() {
        let contract = keys::generate_signing_key();
        let relay = wireleap_protocol::PublicKey::from(&keys::generate_signing_key());
        let ledger = Ledger::new().start();
        let tokens: Vec<_> = (0..50).map(|_| token(&contract, relay)).collect();
        // Every token twice, all at once: each is admitted exactly once.
        let replies = futures::future::join_all(
            tokens
                .iter()
                .chain(tokens.iter())
                .map(|t| ledger.send(AdmitToken(t.clone()))),
        )
        .await;
        let ok = replies.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
        let dup = replies
            .iter()
            .filter(|r| matches!(r, Ok(Err(AdmitError::Duplicate))))
            .count();
        assert_eq!((ok, dup), (50, 50));
        let counts = ledger.send(LedgerCounts).await.unwrap();
        assert_eq!(counts.pending, 50);
        ledger.send(Flush).await.unwrap();
    }
}

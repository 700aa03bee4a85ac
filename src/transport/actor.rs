//! The [`Transport`] actor and its messages.
//!
//! Restart: not supervised; a lost listener is a fatal daemon error. Shutdown: drain (stop
//! accepting, GOAWAY on every connection, then wait for in-flight streams and connections up to a
//! deadline).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span};

use wireleap_protocol::PublicKey;

use super::Error;
use super::conn::{self, Counters, Limits, MAX_SEND_BUFFER, Shared, Slot};
use crate::config::Config;
use crate::directory::Admission;
use crate::ledger::Admitter;

/// What the transport needs from the rest of the relay, built before it starts.
#[derive(Clone)]
pub struct Deps {
    /// The relay's public key (base64url): tokens must be bound to it, and errors name it as
    /// their `origin`.
    pub relay_pubkey: String,
    /// Which contracts are admitted (kept current by the Enrollment actor).
    pub admission: Admission,
    /// Where sharetokens are admitted (the Ledger actor): replay check and durable storage.
    pub ledger: Admitter,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("relay_pubkey", &self.relay_pubkey)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

/// Owns the listener and tracks every connection and stream task.
pub struct Transport {
    /// The bound address (the real port when the config says port 0).
    local_addr: SocketAddr,
    /// Taken by `started`, which moves it into the accept task.
    listener: Option<TcpListener>,
    /// TLS acceptor built from the `init` certificate.
    acceptor: TlsAcceptor,
    /// Cancelled to stop accepting; in-flight connections are not affected.
    accepting: CancellationToken,
    /// Shared with every connection and stream task (deps, limits, drain token, counters).
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.local_addr)
            .field("accepting", &!self.accepting.is_cancelled())
            .field("counters", &self.shared.counters)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the configured address. Called before the actor starts, so a bind failure stops
    /// the daemon before it reports ready. The stream settings (`timeout`, `maxtime`,
    /// `bufsize`, `danger_zone.allow_loopback`) are read from `config` here.
    ///
    /// # Errors
    /// [`Error::Bind`], [`Error::Tls`] or [`Error::RelayKey`].
    pub async fn bind(
        config: &Config,
        tls: Arc<rustls::ServerConfig>,
        deps: Deps,
    ) -> Result<Self, Error> {
        let relay = PublicKey::try_from_b64(&deps.relay_pubkey)
            .map_err(|e| Error::RelayKey(e.to_string()))?;
        if !super::alloc::tune() {
            tracing::debug!("allocator settings for the data path not applied");
        }
        let address = config.address.to_string();
        let bind_err = |source| Error::Bind {
            address: address.clone(),
            source,
        };
        // A listener inherited from the supervisor (or systemd) stays the same socket across
        // restarts and upgrades; otherwise bind the configured address.
        let listener = match crate::lifecycle::listenfds::take_stashed() {
            Some(inherited) => TcpListener::from_std(inherited).map_err(bind_err)?,
            None => TcpListener::bind((config.address.host.as_str(), config.address.port))
                .await
                .map_err(bind_err)?,
        };
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let limits = Limits {
            dial_timeout: config.timeout,
            maxtime: config.maxtime.filter(|d| !d.is_zero()),
            allow_loopback: config.danger_zone.allow_loopback,
            chunk: config.bufsize.get().clamp(MIN_CHUNK, MAX_CHUNK),
        };
        Ok(Self {
            local_addr,
            listener: Some(listener),
            acceptor: TlsAcceptor::from(tls),
            accepting: CancellationToken::new(),
            shared: Arc::new(Shared {
                deps,
                relay,
                limits,
                draining: CancellationToken::new(),
                tasks: TaskTracker::new(),
                counters: Counters::default(),
                contracts: Default::default(),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Bytes read from a remote at a time, at least (`bufsize` below it is raised to it).
const MIN_CHUNK: usize = 64 << 10;
/// Bytes read from a remote at a time, at most (the per-stream send buffer).
const MAX_CHUNK: usize = MAX_SEND_BUFFER;

impl Actor for Transport {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let accept = AcceptLoop {
            listener,
            acceptor: self.acceptor.clone(),
            accepting: self.accepting.clone(),
            shared: Arc::clone(&self.shared),
        };
        self.shared.tasks.spawn(accept.run());
    }
}

struct AcceptLoop {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    accepting: CancellationToken,
    shared: Arc<Shared>,
}

impl AcceptLoop {
    async fn run(self) {
        loop {
            let accepted = tokio::select! {
                () = self.accepting.cancelled() => break,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let slot = Slot::connection(Arc::clone(&self.shared));
                    let acceptor = self.acceptor.clone();
                    self.shared.tasks.spawn(
                        conn::serve(slot, acceptor, tcp).instrument(info_span!("conn", %peer)),
                    );
                }
                // Per-connection errors (e.g. the peer reset before accept) are not fatal; a
                // descriptor shortage is, for a moment: back off instead of spinning.
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        info!("stopped accepting connections");
        // Dropping the listener here closes the socket.
    }
}

/// Stop accepting new connections; in-flight ones continue. Idempotent.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

impl Handler<StopAccepting> for Transport {
    type Result = ();

    fn handle(&mut self, _msg: StopAccepting, _ctx: &mut Self::Context) {
        self.accepting.cancel();
    }
}

/// Stop accepting, send GOAWAY on every connection (no new streams), and wait for in-flight
/// streams and connections to finish, up to `deadline`. Streams still running at the deadline
/// are left running; the caller decides (the daemon exits, which closes them).
#[derive(Debug, Message)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    /// How long to wait at most.
    pub deadline: Duration,
}

/// The outcome of a [`Drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct DrainReport {
    /// Connections still open when the deadline passed (0 = fully drained).
    pub remaining: usize,
    /// Streams still in flight when the deadline passed.
    pub streams: usize,
}

impl Handler<Drain> for Transport {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: Drain, _ctx: &mut Self::Context) -> Self::Result {
        self.accepting.cancel();
        self.shared.draining.cancel();
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            shared.tasks.close();
            let _ = tokio::time::timeout(msg.deadline, shared.tasks.wait()).await;
            DrainReport {
                remaining: shared.counters.open_connections.load(Ordering::Relaxed),
                streams: shared.counters.open_streams.load(Ordering::Relaxed),
            }
        })
    }
}

/// Ask for the transport's current state.
#[derive(Debug, Message)]
#[rtype(result = "TransportStatusReply")]
pub struct TransportStatus;

/// The reply to [`TransportStatus`].
#[derive(Debug, Clone, MessageResponse, serde::Serialize)]
pub struct TransportStatusReply {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Whether new connections are accepted.
    pub accepting: bool,
    /// Connections open now.
    pub open_connections: usize,
    /// Streams in flight now.
    pub open_streams: usize,
    /// Streams admitted (sharetoken stored) since start.
    pub streams_admitted: u64,
    /// Streams refused with a status (or 405) since start.
    pub streams_refused: u64,
    /// Of those, refused for the relay's own failure (a 5xx other than the target's).
    pub streams_failed: u64,
}

impl Handler<TransportStatus> for Transport {
    type Result = TransportStatusReply;

    fn handle(&mut self, _msg: TransportStatus, _ctx: &mut Self::Context) -> Self::Result {
        let c = &self.shared.counters;
        TransportStatusReply {
            local_addr: self.local_addr,
            accepting: !self.accepting.is_cancelled(),
            open_connections: c.open_connections.load(Ordering::Relaxed),
            open_streams: c.open_streams.load(Ordering::Relaxed),
            streams_admitted: c.admitted.load(Ordering::Relaxed),
            streams_refused: c.refused.load(Ordering::Relaxed),
            streams_failed: c.failed.load(Ordering::Relaxed),
        }
    }
}

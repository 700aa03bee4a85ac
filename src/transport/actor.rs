//! The [`Transport`] actor and its messages.
//!
//! Restart: not supervised; a lost listener is a fatal daemon error. Shutdown: drain (stop
//! accepting, then wait for in-flight connections up to a deadline).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span};

use super::Error;
use crate::config::Config;
use crate::directory::Admission;
use crate::ledger::AdmitToken;

/// What the transport needs from the rest of the relay, built before it starts.
#[derive(Clone)]
pub struct Deps {
    /// The relay's public key (base64url): tokens must be bound to it, and errors name it as
    /// their `origin`.
    pub relay_pubkey: String,
    /// Which contracts are admitted (kept current by the Enrollment actor).
    pub admission: Admission,
    /// Where sharetokens are admitted (the Ledger actor): replay check and durable storage.
    pub ledger: Recipient<AdmitToken>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("relay_pubkey", &self.relay_pubkey)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Owns the listener and tracks every connection task.
pub struct Transport {
    /// The bound address (the real port when the config says port 0).
    local_addr: SocketAddr,
    /// Taken by `started`, which moves it into the accept task.
    listener: Option<TcpListener>,
    /// TLS acceptor built from the `init` certificate.
    acceptor: TlsAcceptor,
    /// Cancelled to stop accepting; in-flight connections are not affected.
    accepting: CancellationToken,
    /// Connection tasks; a drain waits on it.
    connections: TaskTracker,
    /// Connections currently open.
    open: Arc<AtomicUsize>,
    /// Shared with every connection task.
    deps: Deps,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.local_addr)
            .field("accepting", &!self.accepting.is_cancelled())
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the configured address. Called before the actor starts, so a bind failure stops
    /// the daemon before it reports ready.
    ///
    /// # Errors
    /// [`Error::Bind`] or [`Error::Tls`].
    pub async fn bind(
        config: &Config,
        tls: Arc<rustls::ServerConfig>,
        deps: Deps,
    ) -> Result<Self, Error> {
        let address = config.address.to_string();
        let bind_err = |source| Error::Bind {
            address: address.clone(),
            source,
        };
        let listener = TcpListener::bind((config.address.host.as_str(), config.address.port))
            .await
            .map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            local_addr,
            listener: Some(listener),
            acceptor: TlsAcceptor::from(tls),
            accepting: CancellationToken::new(),
            connections: TaskTracker::new(),
            open: Arc::new(AtomicUsize::new(0)),
            deps,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

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
            connections: self.connections.clone(),
            open: Arc::clone(&self.open),
            deps: self.deps.clone(),
        };
        tokio::spawn(accept.run());
    }
}

struct AcceptLoop {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    accepting: CancellationToken,
    connections: TaskTracker,
    open: Arc<AtomicUsize>,
    deps: Deps,
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
                    let acceptor = self.acceptor.clone();
                    let deps = self.deps.clone();
                    let open = Arc::clone(&self.open);
                    open.fetch_add(1, Ordering::Relaxed);
                    self.connections.spawn(
                        async move {
                            serve_connection(acceptor, tcp, deps).await;
                            open.fetch_sub(1, Ordering::Relaxed);
                        }
                        .instrument(info_span!("conn", %peer)),
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

/// Completes the TLS handshake. Serving HTTP/2 streams on the connection is the stream handler's
/// job (issue #3); until it lands the connection is closed after the handshake.
async fn serve_connection(acceptor: TlsAcceptor, tcp: TcpStream, _deps: Deps) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(_tls)) => debug!("tls handshake complete"),
        Ok(Err(e)) => debug!(error = %e, "tls handshake failed"),
        Err(_) => debug!("tls handshake timed out"),
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

/// Wait for in-flight connections to finish, up to `deadline`.
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
}

impl Handler<Drain> for Transport {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: Drain, _ctx: &mut Self::Context) -> Self::Result {
        self.accepting.cancel();
        let connections = self.connections.clone();
        let open = Arc::clone(&self.open);
        Box::pin(async move {
            connections.close();
            let _ = tokio::time::timeout(msg.deadline, connections.wait()).await;
            DrainReport {
                remaining: open.load(Ordering::Relaxed),
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
}

impl Handler<TransportStatus> for Transport {
    type Result = TransportStatusReply;

    fn handle(&mut self, _msg: TransportStatus, _ctx: &mut Self::Context) -> Self::Result {
        TransportStatusReply {
            local_addr: self.local_addr,
            accepting: !self.accepting.is_cancelled(),
            open_connections: self.open.load(Ordering::Relaxed),
        }
    }
}

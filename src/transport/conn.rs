//! One accepted connection: the TLS handshake, the HTTP/2 server handshake with the relay's
//! limits, and the accept loop that spawns a task per stream.
//!
//! The connection task is the only one that polls the `h2` connection (its `accept` drives all
//! I/O of the connection), so it runs until the peer or a drain closes it. On a drain it sends
//! GOAWAY (`graceful_shutdown`): streams already open run on, new ones are refused by the peer's
//! HTTP/2 stack, and the connection ends when the last stream does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, debug_span};
use wireleap_protocol::PublicKey;

use super::actor::Deps;
use super::splice::{Budget, Chunk};
use super::stream;

/// How long a client has to finish the TLS handshake and the HTTP/2 preface together.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 stream receive window we advertise.
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 connection receive window we advertise.
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest DATA frame we accept (≥ 65 535, so a UDP datagram fits one frame).
pub(crate) const MAX_FRAME_SIZE: u32 = 128 << 10;
/// Concurrent streams per connection (Go's HTTP/2 server default is 250).
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Largest request header block (a `wl-payload` is under 1 KiB; proxies add a few headers).
pub(crate) const MAX_HEADER_LIST_SIZE: u32 = 32 << 10;
/// Unsent bytes buffered per stream at most.
pub(crate) const MAX_SEND_BUFFER: usize = 128 << 10;
/// Bytes a connection may have read from its remotes and not yet handed to TLS, across its
/// streams (so 256 streams cannot each park a full send buffer).
pub(crate) const CONNECTION_SEND_BUDGET: usize = 4 << 20;
/// Streams the peer may reset before we accept them (rapid-reset guard).
const MAX_PENDING_ACCEPT_RESETS: usize = 64;
/// How long a drain lets a connection that has not yet carried a stream bring its first one
/// before GOAWAY. A client opens a connection for a stream and sends it at once; without this, a
/// connection accepted just before a handover would be told to go away before its first stream,
/// and that stream would fail.
pub(crate) const DRAIN_FIRST_STREAM_GRACE: Duration = Duration::from_secs(2);

/// The stream settings taken from the config.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Outgoing dial timeout (`timeout`).
    pub(crate) dial_timeout: Duration,
    /// Stream lifetime cap (`maxtime`), if any.
    pub(crate) maxtime: Option<Duration>,
    /// `danger_zone.allow_loopback`.
    pub(crate) allow_loopback: bool,
    /// Bytes read from a remote at a time.
    pub(crate) chunk: usize,
}

/// Counters of the data path (shown by `status`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections open now.
    pub(crate) open_connections: AtomicUsize,
    /// Streams in flight now.
    pub(crate) open_streams: AtomicUsize,
    /// Streams admitted (token stored) since start.
    pub(crate) admitted: AtomicU64,
    /// Streams refused with a status since start.
    pub(crate) refused: AtomicU64,
    /// Of those, refused for the relay's own failure (a 5xx other than 502 and 504).
    pub(crate) failed: AtomicU64,
}

/// What every connection and stream task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Admission, ledger, relay key (as configured).
    pub(crate) deps: Deps,
    /// The relay key, parsed: sharetokens must be bound to it.
    pub(crate) relay: PublicKey,
    /// Stream settings.
    pub(crate) limits: Limits,
    /// Cancelled when the transport drains: connections send GOAWAY.
    pub(crate) draining: CancellationToken,
    /// Every connection and stream task.
    pub(crate) tasks: TaskTracker,
    /// Live counts.
    pub(crate) counters: Counters,
    /// Contract activations already verified (one signature check per stream, not two).
    pub(crate) contracts: wireleap_protocol::sharetoken::VerifiedContracts,
}

/// One live connection or stream in the counters: counted from before its task is spawned (so a
/// drain never misses one about to start) until the task ends, however it ends.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    counter: fn(&Counters) -> &AtomicUsize,
}

impl Slot {
    /// Counts one more connection.
    pub(crate) fn connection(shared: Arc<Shared>) -> Self {
        Self::enter(shared, |c| &c.open_connections)
    }

    /// Counts one more stream.
    fn stream(shared: Arc<Shared>) -> Self {
        Self::enter(shared, |c| &c.open_streams)
    }

    fn enter(shared: Arc<Shared>, counter: fn(&Counters) -> &AtomicUsize) -> Self {
        counter(&shared.counters).fetch_add(1, Ordering::Relaxed);
        Self { shared, counter }
    }

    /// The shared state.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        (self.counter)(&self.shared.counters).fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP/2 server settings of every connection.
fn h2_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS);
    b
}

/// How long a TCP connection (a client's, or one the relay dialled) may be silent before the
/// kernel probes it, and the time between probes: the reference's (Go's listener and dialer
/// default). A peer that vanished without a FIN or RST (a NAT that forgot the flow, a machine
/// that slept) is found after about 2.5 min (nine unanswered probes), so its stream, socket and
/// descriptor go, where without probes they stayed for good.
pub(crate) const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Sets what every TCP connection of the relay has: no Nagle delay, and keepalive probes after
/// [`KEEPALIVE`]. Best effort: a socket option the system refuses changes nothing else.
pub(crate) fn tune(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = tcp.set_nodelay(true);
    let secs = u32::try_from(KEEPALIVE.as_secs()).unwrap_or(u32::MAX);
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &secs);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &secs);
}

/// Serves one accepted TCP connection until it closes. Never panics on peer input.
pub(crate) async fn serve(slot: Slot, acceptor: TlsAcceptor, tcp: TcpStream) {
    let shared = slot.shared();
    tune(&tcp);
    let setup = async {
        let tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("tls handshake failed: {e}"))?;
        h2_builder()
            .handshake::<_, Chunk>(tls)
            .await
            .map_err(|e| format!("http/2 handshake failed: {e}"))
    };
    let mut conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, setup).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(why)) => {
            debug!("{why}");
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            return;
        }
    };
    debug!("connection ready");
    let budget: Budget = Arc::new(tokio::sync::Semaphore::new(CONNECTION_SEND_BUDGET));
    let mut going_away = false;
    let mut streams_seen = false;
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let drain_now = async {
            match grace.as_mut() {
                Some(sleep) => sleep.await,
                None => shared.draining.cancelled().await,
            }
        };
        let next = tokio::select! {
            biased;
            () = drain_now, if !going_away => {
                if !streams_seen && grace.is_none() {
                    grace = Some(Box::pin(tokio::time::sleep(DRAIN_FIRST_STREAM_GRACE)));
                    continue;
                }
                // GOAWAY: no new streams; the open ones finish, then `accept` ends.
                conn.graceful_shutdown();
                going_away = true;
                continue;
            }
            next = conn.accept() => next,
        };
        match next {
            Some(Ok((request, respond))) => {
                streams_seen = true;
                if grace.is_some() && !going_away {
                    // The first stream of a connection accepted just before the drain: it is
                    // served; nothing after it.
                    conn.graceful_shutdown();
                    going_away = true;
                }
                let span = debug_span!("stream", id = respond.stream_id().as_u32());
                // Counted before the spawn, so a drain never misses a stream about to start.
                let slot = Slot::stream(Arc::clone(shared));
                let budget = Arc::clone(&budget);
                shared.tasks.spawn(
                    async move {
                        stream::handle(slot.shared(), &budget, request, respond).await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            Some(Err(e)) => {
                debug!(error = %e, "connection error");
                break;
            }
            None => break,
        }
    }
    debug!("connection closed");
}

//! The outgoing dial and the full-duplex splice between a stream and its remote (spec §6.5,
//! §6.6).
//!
//! Backpressure both ways: request DATA is written to the remote before its flow-control
//! capacity is released back to the client, and the relay reads from the remote only once it
//! holds send capacity for what it reads. So a slow side stalls the other instead of filling
//! memory. The first direction to end (EOF, error, client END_STREAM) ends both: there is no
//! half-close (§10 #14).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use wireleap_protocol::{Network, Remote};

use super::conn::Limits;
use crate::usage::Meter;

/// Reads smaller than this are copied into an exact-size buffer, so a trickle of small reads does
/// not pin a whole read buffer each until it is written out.
const COPY_BELOW: usize = 4096;
/// The largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;

/// A DATA payload on its way to the client. Bytes read from a remote hold their share of the
/// connection's send budget until `h2` has handed them to TLS and dropped them, so the data a
/// connection has read but not yet written stays bounded whatever windows the peer grants.
#[derive(Debug)]
pub(crate) struct Chunk {
    bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

impl From<Bytes> for Chunk {
    fn from(bytes: Bytes) -> Self {
        Self {
            bytes,
            _budget: None,
        }
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }

    fn advance(&mut self, cnt: usize) {
        self.bytes.advance(cnt);
    }
}

/// The send budget of one connection: bytes read from remotes and not yet handed to TLS.
pub(crate) type Budget = Arc<Semaphore>;

/// Takes `n` bytes of `budget` (waits while the connection's budget is spent).
async fn take_budget(budget: &Budget, n: usize) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(n).ok()?;
    Arc::clone(budget).acquire_many_owned(n).await.ok()
}

/// A dialed remote.
#[derive(Debug)]
pub(crate) enum RemoteConn {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A connected UDP socket.
    Udp(UdpSocket),
}

/// Why a dial failed; the text follows Go's `dial <network> <addr>: <reason>`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The dial did not finish within `timeout`.
    #[error("dial {network} {addr}: i/o timeout")]
    Timeout {
        /// Network name.
        network: Network,
        /// `host:port`.
        addr: String,
    },
    /// The remote names no port (Go's `SplitHostPort` error).
    #[error("dial {network} {addr}: address {addr}: missing port in address")]
    MissingPort {
        /// Network name.
        network: Network,
        /// The host as written.
        addr: String,
    },
    /// Name resolution found no address of the wanted family.
    #[error("dial {network} {addr}: no suitable address found")]
    NoAddress {
        /// Network name.
        network: Network,
        /// `host:port`.
        addr: String,
    },
    /// The name did not resolve.
    #[error("dial {network}: lookup {host}: {}", lookup_text(source))]
    Lookup {
        /// Network name.
        network: Network,
        /// The name looked up.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The connection failed.
    #[error("dial {network} {addr}: connect: {}", errno_text(source))]
    Io {
        /// Network name.
        network: Network,
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
}

/// An OS error as Go's `syscall.Errno` spells it (for a dial and for a failed splice) (`connection refused`, `no route to host`):
/// the C library's text in lower case, without Rust's `(os error N)`.
fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// A failed lookup as Go says it: `no such host` for a name that does not exist.
fn lookup_text(e: &io::Error) -> String {
    let text = e.to_string();
    let unknown = ["not known", "No address associated", "no such host"];
    if unknown.iter().any(|u| text.contains(u)) {
        "no such host".to_owned()
    } else {
        text.trim_start_matches("failed to lookup address information: ")
            .to_lowercase()
    }
}

impl DialError {
    /// Whether it is a timeout (status 408) rather than another failure (502).
    pub(crate) fn is_timeout(&self) -> bool {
        match self {
            DialError::Timeout { .. } => true,
            DialError::Io { source, .. } => source.kind() == io::ErrorKind::TimedOut,
            DialError::Lookup { .. }
            | DialError::NoAddress { .. }
            | DialError::MissingPort { .. } => false,
        }
    }
}

/// Dials `remote` over `network` within `timeout` (every resolved address in turn); a zero
/// `timeout` sets no bound of its own, as with the reference (the system's connect timeout).
pub(crate) async fn dial(
    network: Network,
    remote: &Remote,
    timeout: Duration,
) -> Result<RemoteConn, DialError> {
    let addr = remote.host_port();
    if remote.port.is_none() {
        return Err(DialError::MissingPort { network, addr });
    }
    if timeout.is_zero() {
        return dial_inner(network, &addr).await;
    }
    match tokio::time::timeout(timeout, dial_inner(network, &addr)).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Timeout { network, addr }),
    }
}

async fn dial_inner(network: Network, addr: &str) -> Result<RemoteConn, DialError> {
    let io_err = |source| DialError::Io {
        network,
        addr: addr.to_owned(),
        source,
    };
    let wanted = |a: &SocketAddr| match network {
        Network::Tcp4 | Network::Udp4 => a.is_ipv4(),
        Network::Tcp6 | Network::Udp6 => a.is_ipv6(),
        Network::Tcp | Network::Udp => true,
    };
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| DialError::Lookup {
            network,
            host: addr
                .rsplit_once(':')
                .map_or(addr, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            source,
        })?
        .filter(wanted)
        .collect();
    let mut last = None;
    for a in candidates {
        let attempt = if network.is_udp() {
            dial_udp(a).await.map(RemoteConn::Udp)
        } else {
            TcpStream::connect(a).await.map(|t| {
                super::conn::tune(&t);
                RemoteConn::Tcp(t)
            })
        };
        match attempt {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => io_err(e),
        None => DialError::NoAddress {
            network,
            addr: addr.to_owned(),
        },
    })
}

async fn dial_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(addr).await?;
    Ok(sock)
}

/// How a splice ended.
#[derive(Debug)]
pub(crate) enum SpliceEnd {
    /// A normal end: the client ended its body, the remote reached EOF, or the contract was cut.
    Done,
    /// The client reset the stream or its connection is gone: nothing more can be sent.
    ClientGone,
    /// The remote failed, or `maxtime` passed: status 408 (timeout) or 410.
    Failed {
        /// Whether it was a timeout.
        timeout: bool,
        /// The error text.
        why: String,
    },
}

/// Where one direction ended.
enum Half {
    /// Clean end (EOF or client END_STREAM).
    Ended,
    /// The client side failed (reset, connection lost, send side closed).
    Client,
    /// The remote failed.
    Remote(io::Error),
}

/// Splices `body` (client → remote) and `send` (remote → client) until the first direction ends,
/// `maxtime` passes or `cancel` fires. Both sides are closed when it returns. Every chunk read
/// from either side is counted on `meter` (spec §2.5, §6.5).
pub(crate) async fn run(
    remote: RemoteConn,
    mut body: RecvStream,
    send: &mut SendStream<Chunk>,
    limits: &Limits,
    budget: &Budget,
    cancel: &CancellationToken,
    meter: &Meter,
) -> SpliceEnd {
    let maxtime = async {
        match limits.maxtime {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let halves = async {
        match remote {
            RemoteConn::Tcp(tcp) => {
                let (r, mut w) = tcp.into_split();
                tokio::select! {
                    h = upload_tcp(&mut body, &mut w, meter) => h,
                    h = download_tcp(&r, send, limits.chunk, budget, meter) => h,
                }
                // Dropping both halves here closes the remote.
            }
            RemoteConn::Udp(udp) => {
                tokio::select! {
                    h = upload_udp(&mut body, &udp, meter) => h,
                    h = download_udp(&udp, send, budget, meter) => h,
                }
            }
        }
    };
    tokio::select! {
        h = halves => match h {
            Half::Ended => SpliceEnd::Done,
            Half::Client => SpliceEnd::ClientGone,
            Half::Remote(e) => SpliceEnd::Failed {
                timeout: e.kind() == io::ErrorKind::TimedOut,
                why: errno_text(&e),
            },
        },
        // A cut contract ends its streams without an error (spec §6.5).
        () = cancel.cancelled() => SpliceEnd::Done,
        () = maxtime => SpliceEnd::Failed {
            timeout: true,
            why: "stream reached maxtime: i/o timeout".to_owned(),
        },
    }
}

/// Client → remote over TCP: each DATA chunk is written, then its capacity released.
async fn upload_tcp(body: &mut RecvStream, w: &mut OwnedWriteHalf, meter: &Meter) -> Half {
    loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                meter.add(n);
                if let Err(e) = w.write_all(&chunk).await {
                    return Half::Remote(e);
                }
                crate::metrics::bytes_to_remote(n);
                let _ = body.flow_control().release_capacity(n);
            }
            Some(Err(_)) => return Half::Client,
            // END_STREAM: no half-close, the remote is closed too (§10 #14).
            None => return Half::Ended,
        }
    }
}

/// Client → remote over UDP: one DATA frame is one datagram (spec §6.6). A frame larger than a
/// datagram can be (`EMSGSIZE`) is dropped, as the network drops an oversized datagram: the
/// flow goes on.
async fn upload_udp(body: &mut RecvStream, sock: &UdpSocket, meter: &Meter) -> Half {
    loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                meter.add(n);
                let sent = if n == 0 {
                    Ok(0)
                } else {
                    sock.send(&chunk).await
                };
                match sent {
                    Ok(_) => crate::metrics::bytes_to_remote(n),
                    Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                        tracing::debug!(bytes = n, "dropped a DATA frame too large for a datagram");
                    }
                    Err(e) => return Half::Remote(e),
                }
                let _ = body.flow_control().release_capacity(n);
            }
            Some(Err(_)) => return Half::Client,
            None => return Half::Ended,
        }
    }
}

/// Waits until the stream may send at least `min` bytes; returns how many (≤ `want`).
async fn capacity(send: &mut SendStream<Chunk>, min: usize, want: usize) -> Option<usize> {
    send.reserve_capacity(want);
    loop {
        let cap = send.capacity();
        if cap >= min {
            return Some(cap.min(want));
        }
        match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// The chunk to send: small reads are copied (see [`COPY_BELOW`]); the budget shrinks to what
/// was read.
fn freeze(buf: BytesMut, mut permit: OwnedSemaphorePermit) -> Chunk {
    let bytes = if buf.len() < COPY_BELOW && buf.capacity() > 2 * COPY_BELOW {
        Bytes::copy_from_slice(&buf)
    } else {
        buf.freeze()
    };
    // The rest of the permit goes back to the connection now.
    let kept = permit.split(bytes.len());
    Chunk {
        bytes,
        _budget: kept,
    }
}

/// Remote → client over TCP. A read buffer exists only while the remote is readable and the
/// client has window for it.
async fn download_tcp(
    r: &OwnedReadHalf,
    send: &mut SendStream<Chunk>,
    chunk: usize,
    budget: &Budget,
    meter: &Meter,
) -> Half {
    loop {
        if let Err(e) = r.readable().await {
            return Half::Remote(e);
        }
        let Some(cap) = capacity(send, 1, chunk).await else {
            return Half::Client;
        };
        let Some(permit) = take_budget(budget, cap).await else {
            return Half::Client;
        };
        let mut buf = BytesMut::with_capacity(cap);
        match r.try_read_buf(&mut buf) {
            Ok(0) => return Half::Ended,
            Ok(n) => {
                meter.add(buf.len());
                if send.send_data(freeze(buf, permit), false).is_err() {
                    return Half::Client;
                }
                crate::metrics::bytes_to_client(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Spurious readiness: give the unused capacity back to the connection.
                send.reserve_capacity(0);
            }
            Err(e) => return Half::Remote(e),
        }
    }
}

/// Remote → client over UDP: one datagram is one DATA frame (spec §6.6).
async fn download_udp(
    sock: &UdpSocket,
    send: &mut SendStream<Chunk>,
    budget: &Budget,
    meter: &Meter,
) -> Half {
    loop {
        if let Err(e) = sock.readable().await {
            return Half::Remote(e);
        }
        let Some(permit) = take_budget(budget, MAX_DATAGRAM).await else {
            return Half::Client;
        };
        let mut buf = BytesMut::with_capacity(MAX_DATAGRAM);
        match sock.try_recv_buf(&mut buf) {
            Ok(n) => {
                if n == 0 {
                    continue;
                }
                meter.add(n);
                // The whole datagram must fit the window, so that it goes out as one frame.
                if capacity(send, n, n).await.is_none() {
                    return Half::Client;
                }
                if send.send_data(freeze(buf, permit), false).is_err() {
                    return Half::Client;
                }
                crate::metrics::bytes_to_client(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Half::Remote(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `"timeout": "0s"` means no bound of the relay's own (the reference's `DialTimeout` with
    /// 0), not a bound that every dial misses.
    #[tokio::test]
    async fn a_zero_dial_timeout_sets_no_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // A name: its lookup runs on another thread, so the dial cannot finish on its first poll.
        let remote = Remote::target("localhost", port).unwrap();
        let dialed = dial(Network::Tcp, &remote, Duration::ZERO).await;
        assert!(dialed.is_ok(), "{:?}", dialed.err());
        drop(listener);
    }

    /// Errors read as the reference's: `dial tcp 127.0.0.1:P: connect: connection refused`,
    /// `dial tcp: lookup NAME: no such host`.
    #[tokio::test]
    async fn dial_errors_read_as_gos() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = dial(
            Network::Tcp,
            &Remote::target("127.0.0.1", port).unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
        let unknown = dial(
            Network::Tcp,
            &Remote::target("nosuch.invalid", 80).unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        // "no such host" where the resolver answers; a machine without one says so instead.
        let text = unknown.to_string();
        assert!(
            text.starts_with("dial tcp: lookup nosuch.invalid: ")
                && !text.contains("os error")
                && !text.contains("failed to lookup"),
            "{text}"
        );
        assert!(!unknown.is_timeout());
    }

    /// A dialled connection is probed when silent (the accepted ones get the same `tune`).
    #[tokio::test]
    async fn dialled_connections_have_keepalive() {
        use nix::sys::socket::{getsockopt, sockopt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let remote = Remote::target("127.0.0.1", port).unwrap();
        let Ok(RemoteConn::Tcp(t)) = dial(Network::Tcp, &remote, Duration::from_secs(5)).await
        else {
            panic!("not dialled");
        };
        assert!(getsockopt(&t, sockopt::KeepAlive).unwrap());
        let secs = super::super::conn::KEEPALIVE.as_secs();
        assert_eq!(
            u64::from(getsockopt(&t, sockopt::TcpKeepIdle).unwrap()),
            secs
        );
        assert_eq!(
            u64::from(getsockopt(&t, sockopt::TcpKeepInterval).unwrap()),
            secs
        );
        assert!(getsockopt(&t, sockopt::TcpNoDelay).unwrap());
    }
}

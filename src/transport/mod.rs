//! Transport: the TLS 1.3 + HTTP/2 listener, the per-connection tasks and the relay data path.
//!
//! The [`Transport`] actor owns the listener and its lifecycle (stop accepting, drain). Bytes never
//! pass through its mailbox: each accepted connection runs in its own tokio task ([`conn`]), which
//! spawns one task per HTTP/2 stream ([`stream`]); both are tracked so that a drain can wait for
//! them. A stream is checked in the order of spec §6.3 and then spliced to its remote
//! ([`splice`], spec §6.5, §6.6). Who calls it: the daemon (start, shutdown) and, during an
//! upgrade, the supervisor through the daemon. It must never block its actor thread on I/O, and
//! nothing a peer sends may panic it.
//!
//! # Decisions (where the spec is silent)
//! - HTTP/2 windows: 16 MiB per connection, 4 MiB per stream, frames up to 128 KiB (a UDP
//!   datagram of 65 535 bytes fits one DATA frame). At most 256 concurrent streams per connection
//!   (Go's default is 250) and at most 128 KiB of unsent data buffered per stream. Across its
//!   streams a connection holds at most 4 MiB read from remotes and not yet handed to TLS (a
//!   byte budget the DATA chunks carry until `h2` drops them), so a peer that opens every stream
//!   and grants huge windows but stops reading pins at most 4 MiB of send data; receive
//!   buffering is bounded by the 16 MiB connection window.
//! - `bufsize` is honoured as a floor: the relay reads up to 64 KiB at a time from a remote (the
//!   reference's 4096-byte default would cost throughput for nothing), and allocates a read
//!   buffer only when the remote is readable, so an idle stream holds no buffer.
//! - Allocator: on glibc the transport keeps freed buffer memory in the process instead of
//!   returning it to the OS after every TLS record and frame ([`alloc`]), which otherwise costs
//!   a page fault per page of every large buffer.
//! - A refused stream is answered with `:status 200`, `trailer: wl-status` and a trailing HEADERS
//!   frame carrying the compact JSON status (spec §6.3, §10 #1); a normal end is an empty
//!   END_STREAM with no status. A sharetoken the ledger cannot store is refused with 500.

pub mod tls;

mod actor;
mod alloc;
mod conn;
mod splice;
mod stream;

/// Applies the data path's allocator settings to this process ([`alloc`]); the transport does it
/// itself when it binds. Benchmarks call it so that their client side pays what the relay pays.
pub fn tune_allocator() -> bool {
    alloc::tune()
}

pub use actor::{
    Deps, Drain, DrainReport, StopAccepting, Transport, TransportStatus, TransportStatusReply,
};

/// Errors setting up the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound (in use, no permission, unknown host).
    #[error("could not listen on {address}: {source}")]
    Bind {
        /// The configured address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// The relay public key handed to the transport is not a base64url ed25519 key.
    #[error("invalid relay public key: {0}")]
    RelayKey(String),
}

#[cfg(test)]
mod tests;

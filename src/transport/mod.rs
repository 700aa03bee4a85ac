//! Transport: the TLS 1.3 + HTTP/2 listener and the per-connection tasks.
//!
//! The [`Transport`] actor owns the listener and its lifecycle (stop accepting, drain). Bytes never
//! pass through its mailbox: each accepted connection runs in its own tokio task, tracked so that
//! a drain can wait for it. Who calls it: the daemon (start, shutdown) and, during an upgrade, the
//! supervisor through the daemon. It must never block its actor thread on I/O.

mod actor;
pub mod tls;

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
}

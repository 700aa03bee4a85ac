//! The daemon's phases. Each transition is logged, so an operator reading the log after a stop
//! sees exactly how far the shutdown got.

use std::fmt;

/// Where the daemon is in its life. Shutdown walks the phases after [`Phase::Serving`] in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Loading config and keys, binding listeners, starting actors.
    Starting,
    /// Ready: accepting streams.
    Serving,
    /// New connections and streams are refused; in-flight streams continue.
    StopAccepting,
    /// Disenrolling from every contract's directory (best effort).
    Deregister,
    /// Waiting for in-flight streams up to the drain deadline.
    Drain,
    /// Making every admitted sharetoken durable.
    FlushLedger,
    /// Stopping the actor system.
    StopActors,
    /// Done; the process exits.
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::StopAccepting => "stop-accepting",
            Phase::Deregister => "deregister",
            Phase::Drain => "drain",
            Phase::FlushLedger => "flush-ledger",
            Phase::StopActors => "stop-actors",
            Phase::Stopped => "stopped",
        })
    }
}

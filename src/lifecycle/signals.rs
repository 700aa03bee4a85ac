//! Signals the daemon acts on (spec §1.4), as a stream of typed events.
//!
//! | signal | event |
//! | --- | --- |
//! | SIGUSR1 | [`SignalEvent::Reload`] |
//! | SIGUSR2 | [`SignalEvent::DumpStatus`] |
//! | SIGTERM, SIGINT, SIGQUIT | [`SignalEvent::Terminate`] (a second one forces exit) |
//! | SIGHUP | [`SignalEvent::HandOver`]: sent by the supervisor once a new generation is ready |
//! | SIGWINCH | [`SignalEvent::Pause`]: sent by the supervisor before it starts a new generation |
//! | SIGCONT | [`SignalEvent::Resume`]: sent by the supervisor when that generation failed |
//!
//! SIGWINCH and SIGCONT are harmless to a process that does not handle them (ignored, and
//! "continue"), so a supervisor may send them to a relay of any version.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// Re-read `config.json` and apply it.
    Reload,
    /// Print the status JSON to stdout and write `stats.json`.
    DumpStatus,
    /// Shut down gracefully; carries the signal number for the exit code (128 + n).
    Terminate(i32),
    /// A new generation serves the same listener: stop accepting, drain the streams in flight,
    /// exit 0, and stay enrolled (the new generation carries the enrollment on).
    HandOver,
    /// A new generation is about to start and enroll: pause heartbeats, and say so to the
    /// supervisor once no directory call is in flight.
    Pause,
    /// The new generation did not take over: heartbeat again.
    Resume,
}

/// The daemon's signal handlers, installed once.
#[derive(Debug)]
pub struct Signals {
    usr1: Signal,
    usr2: Signal,
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    winch: Signal,
    cont: Signal,
}

impl Signals {
    /// Installs the handlers. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// An I/O error if a handler cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            winch: signal(SignalKind::window_change())?,
            cont: signal(SignalKind::from_raw(
                nix::sys::signal::Signal::SIGCONT as i32,
            ))?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.usr1.recv() => SignalEvent::Reload,
            _ = self.usr2.recv() => SignalEvent::DumpStatus,
            _ = self.term.recv() => SignalEvent::Terminate(libc_signal::SIGTERM),
            _ = self.int.recv() => SignalEvent::Terminate(libc_signal::SIGINT),
            _ = self.quit.recv() => SignalEvent::Terminate(libc_signal::SIGQUIT),
            _ = self.hup.recv() => SignalEvent::HandOver,
            _ = self.winch.recv() => SignalEvent::Pause,
            _ = self.cont.recv() => SignalEvent::Resume,
        }
    }
}

/// Signal numbers, for exit codes.
mod libc_signal {
    pub(super) const SIGTERM: i32 = nix::sys::signal::Signal::SIGTERM as i32;
    pub(super) const SIGINT: i32 = nix::sys::signal::Signal::SIGINT as i32;
    pub(super) const SIGQUIT: i32 = nix::sys::signal::Signal::SIGQUIT as i32;
}

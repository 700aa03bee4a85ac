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
//!
//! The last three mean that only from a supervisor. A relay started without one (`start --fg`
//! in a terminal, or its own systemd unit) gets them from elsewhere: SIGHUP when its terminal
//! hangs up (the reference relay then dies of it), SIGWINCH when that terminal is resized,
//! SIGCONT after a `kill -STOP`. There SIGHUP shuts down like SIGTERM (disenrolled, exit 129)
//! rather than draining for a successor that will never come, and the other two are ignored.

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

impl SignalEvent {
    /// Whether this event, arriving during a shutdown, means "now" (its signal number). A
    /// hang-up does not: it comes more than once (the shell passes it on to its jobs, the
    /// kernel sends it to the old foreground group), and the first one already asked for the
    /// shutdown under way.
    #[must_use]
    pub fn forces_exit(self) -> Option<i32> {
        match self {
            SignalEvent::Terminate(sig) if sig != libc_signal::SIGHUP => Some(sig),
            _ => None,
        }
    }
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
    /// Whether a supervisor runs this relay (the last three signals are its, see above).
    supervised: bool,
}

impl Signals {
    /// Installs the handlers, for a relay that a supervisor runs (`supervised`) or not. Must run
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// An I/O error if a handler cannot be installed.
    pub fn install(supervised: bool) -> std::io::Result<Self> {
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
            supervised,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> SignalEvent {
        loop {
            let event = tokio::select! {
                _ = self.usr1.recv() => SignalEvent::Reload,
                _ = self.usr2.recv() => SignalEvent::DumpStatus,
                _ = self.term.recv() => SignalEvent::Terminate(libc_signal::SIGTERM),
                _ = self.int.recv() => SignalEvent::Terminate(libc_signal::SIGINT),
                _ = self.quit.recv() => SignalEvent::Terminate(libc_signal::SIGQUIT),
                _ = self.hup.recv() => SignalEvent::HandOver,
                _ = self.winch.recv() => SignalEvent::Pause,
                _ = self.cont.recv() => SignalEvent::Resume,
            };
            if let Some(event) = meant(event, self.supervised) {
                return event;
            }
        }
    }
}

/// What `event` means to a relay that a supervisor runs (`supervised`) or not: `None` to ignore.
fn meant(event: SignalEvent, supervised: bool) -> Option<SignalEvent> {
    match event {
        SignalEvent::HandOver | SignalEvent::Pause | SignalEvent::Resume if supervised => {
            Some(event)
        }
        SignalEvent::HandOver => Some(SignalEvent::Terminate(libc_signal::SIGHUP)),
        SignalEvent::Pause | SignalEvent::Resume => {
            tracing::debug!(
                signal = ?event,
                "signal ignored: it is the supervisor's, and no supervisor runs this relay"
            );
            None
        }
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_supervisors_signals_mean_nothing_else_without_one() {
        use SignalEvent::{DumpStatus, HandOver, Pause, Reload, Resume, Terminate};
        let hup = Terminate(libc_signal::SIGHUP);
        for (event, supervised, want) in [
            (HandOver, true, Some(HandOver)),
            (Pause, true, Some(Pause)),
            (Resume, true, Some(Resume)),
            (HandOver, false, Some(hup)),
            (Pause, false, None),
            (Resume, false, None),
            (Reload, false, Some(Reload)),
            (DumpStatus, true, Some(DumpStatus)),
            (Terminate(15), false, Some(Terminate(15))),
            (Terminate(15), true, Some(Terminate(15))),
        ] {
            assert_eq!(
                meant(event, supervised),
                want,
                "{event:?}, supervised {supervised}"
            );
        }
    }

    #[test]
    fn during_a_shutdown_a_second_terminating_signal_is_now_but_a_hang_up_is_not() {
        use SignalEvent::{HandOver, Pause, Terminate};
        assert_eq!(Terminate(15).forces_exit(), Some(15));
        assert_eq!(Terminate(2).forces_exit(), Some(2));
        assert_eq!(Terminate(libc_signal::SIGHUP).forces_exit(), None);
        assert_eq!(Pause.forces_exit(), None);
        assert_eq!(HandOver.forces_exit(), None);
    }
}

/// Signal numbers, for exit codes.
mod libc_signal {
    pub(super) const SIGTERM: i32 = nix::sys::signal::Signal::SIGTERM as i32;
    pub(super) const SIGINT: i32 = nix::sys::signal::Signal::SIGINT as i32;
    pub(super) const SIGQUIT: i32 = nix::sys::signal::Signal::SIGQUIT as i32;
    pub(super) const SIGHUP: i32 = nix::sys::signal::Signal::SIGHUP as i32;
}

//! Exit codes of the supervisor. The systemd unit lists [`CONFIG`] in
//! `RestartPreventExitStatus=`: restarting would not help. A relay that keeps crashing does not
//! make the supervisor exit: it backs off and keeps trying ([`crate::budget`]).

/// Stopped on request.
pub const OK: u8 = 0;
/// Any other failure.
pub const FAILURE: u8 = 1;
/// Bad command line.
pub const USAGE: u8 = 64;
/// The configuration is invalid (the relay's `check-config` failed).
pub const CONFIG: u8 = 78;

//! Exit codes of the supervisor. The systemd unit lists [`CRASH_BUDGET`] and [`CONFIG`] in
//! `RestartPreventExitStatus=`: restarting would not help.

/// Stopped on request.
pub const OK: u8 = 0;
/// Any other failure.
pub const FAILURE: u8 = 1;
/// Bad command line.
pub const USAGE: u8 = 64;
/// The relay crashed more often than the budget allows.
pub const CRASH_BUDGET: u8 = 75;
/// The configuration is invalid (the relay's `check-config` failed).
pub const CONFIG: u8 = 78;

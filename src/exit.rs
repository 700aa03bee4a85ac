//! Process exit codes. Usage errors keep the reference's 2 (so scripts written for the Go relay
//! keep working); the others follow sysexits.

/// Success.
pub const OK: u8 = 0;
/// Any other failure (the reference's `log.Fatal`).
pub const FAILURE: u8 = 1;
/// Bad command line (the reference and clap both use 2).
pub const USAGE: u8 = 2;
/// Bad release data.
pub const DATAERR: u8 = 65;
/// Temporary failure: try again later.
pub const TEMPFAIL: u8 = 75;
/// Invalid configuration or identity when the daemon starts (`start --fg`): restarting does not
/// help. The commands that only read the config (`check-config`, `reload`, `balance`,
/// `withdraw`) exit 1 for it, as the reference does.
pub const CONFIG: u8 = 78;

//! Exit codes of `wireleap-devnet client`: the one place they are defined.
//!
//! A stream that did not end cleanly is never exit 0: each way it can fail has its own code, so
//! a script can tell a relay's refusal from a lost connection or a stream that never ended.
//! `devnet/README.md` and `docs/exit-codes.md` carry the same table, and `--help` prints
//! [`HELP`].

use super::StreamEnd;

/// The stream ended cleanly (no `wl-status` trailer, or an OK one); with `--ping`, the relay
/// answered.
pub const CLEAN: u8 = 0;
/// Any other failure: reading the servicekey or the relay keys, the contract or directory,
/// connecting to the first relay, a TLS or HTTP/2 handshake while the circuit was built, or
/// stdin/stdout.
pub const FAILURE: u8 = 1;
/// A relay reported an error `wl-status` (spec §6.7): in the stream's trailer, or while the
/// circuit was built (a hop could not reach the next one). The status is printed as JSON.
pub const STATUS: u8 = 2;
/// The stream was reset (RST_STREAM) or a connection under it was lost, on any hop.
pub const RESET: u8 = 3;
/// After the client ended its side, the stream's end did not come within `--end-timeout-ms`.
pub const END_TIMEOUT: u8 = 4;
/// A relay answered with an HTTP status other than 200.
pub const HTTP: u8 = 5;
/// The command line is invalid (`sysexits.h` `EX_USAGE`; clap's own 2 would read as
/// [`STATUS`]). This holds for every subcommand of `wireleap-devnet`.
pub const USAGE: u8 = 64;

/// The exit codes for `--help`.
pub const HELP: &str = "\
Exit codes:
  0   the stream ended cleanly (no wl-status trailer, or an OK one)
  1   any other failure (servicekey, relay keys, contract, connect, TLS/HTTP/2 handshake, stdio)
  2   a relay reported an error wl-status, in the trailer or while building the circuit
  3   the stream was reset, or a connection under it was lost, on any hop
  4   no end of the stream within --end-timeout-ms after the client ended its side
  5   a relay answered with an HTTP status other than 200
  64  invalid command line";

/// The exit code for a stream that ended as `end` ([`StreamEnd::Open`], no end seen, counts as
/// [`END_TIMEOUT`]).
pub fn of_end(end: &StreamEnd) -> u8 {
    match end {
        StreamEnd::Clean => CLEAN,
        StreamEnd::Status(_) => STATUS,
        StreamEnd::Reset(_) => RESET,
        StreamEnd::Http(..) => HTTP,
        StreamEnd::Open => END_TIMEOUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code in [`HELP`] is one of the constants, and they are distinct.
    #[test]
    fn help_lists_the_distinct_codes() {
        let codes = [CLEAN, FAILURE, STATUS, RESET, END_TIMEOUT, HTTP, USAGE];
        let mut sorted = codes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len(), "exit codes must be distinct");
        let listed: Vec<u8> = HELP
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(listed, codes);
    }
}

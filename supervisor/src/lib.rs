//! wireleap-relay-supervisor: the long-running parent of the relay (DESIGN.md "Processes").
//!
//! It owns the listening socket, so the socket never closes while relays come and go: it binds
//! the configured address (or takes the socket from systemd socket activation) and starts
//! `wireleap-relay start --fg` with the socket as descriptor 3 (`LISTEN_FDS=1`). It waits for the
//! relay's `READY=1` (the `sd_notify` protocol on a private socket), restarts a relay that
//! crashes with a backoff that grows past a crash budget but never gives up, forwards SIGTERM/SIGINT (stop) and SIGUSR1
//! (reload), and tells systemd `READY=1` once the first relay is ready.
//!
//! This crate is the trusted path of the upgrade: it keeps its dependencies few and never
//! depends on the relay crate. Upgrades (verify, migrate, hand over, health window, rollback)
//! build on this loop (issue #7).
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | the command line: flags and `ctl` requests |
//! | [`exit`] | exit codes (the systemd unit uses them) |
//! | [`machine`] | the state machine: states, events, actions, one transition function, no I/O |
//! | [`run`] | the loop: performs the machine's actions, turns what happens into events |
//! | [`listener`] | the listening socket (from systemd, a predecessor's, or bound); kept in systemd's store |
//! | [`generation`] | starting generations; the bounded `version`, `check-config`, settings |
//! | [`verified`] | private copies of the binaries: what is verified is what runs |
//! | [`change`] | the slow steps of an upgrade or rollback, run as jobs beside the loop |
//! | [`upgrade`] | verify a staged release, journal, migrate, commit or roll back |
//! | [`recover`] | crash recovery from the journal; taking over a predecessor's generations |
//! | [`privsep`] | privilege separation: relay processes as the relay's user; the home checked |
//! | [`procfs`] | what it reads of other processes in `/proc` (the relay user's too) |
//! | [`swap`] | the supervisor replacing itself with the release's own, on trial |
//! | [`failpoint`] | the fault-injection hook of the crash-recovery tests |
//! | [`notify`] | `sd_notify`: receiving the relay's readiness, telling systemd ours |
//! | [`budget`] | the restart backoff: quick within the budget, then up to 10 min, never giving up (pure) |
//! | [`control`] | the control socket (`status`, `upgrade`, `rollback`) |

pub mod budget;
pub mod change;
pub mod cli;
pub mod control;
pub mod exit;
pub mod failpoint;
pub mod generation;
pub mod listener;
pub mod machine;
pub mod notify;
pub mod privsep;
pub mod procfs;
pub mod recover;
pub mod run;
pub mod swap;
pub mod upgrade;
pub mod verified;

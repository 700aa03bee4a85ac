//! wireleap-relay-supervisor: the long-running parent of the relay (DESIGN.md "Processes").
//!
//! It owns the listening socket, so the socket never closes while relays come and go: it binds
//! the configured address (or takes the socket from systemd socket activation) and starts
//! `wireleap-relay start --fg` with the socket as descriptor 3 (`LISTEN_FDS=1`). It waits for the
//! relay's `READY=1` (the `sd_notify` protocol on a private socket), restarts a relay that
//! crashes with capped backoff inside a crash budget, forwards SIGTERM/SIGINT (stop) and SIGUSR1
//! (reload), and tells systemd `READY=1` once the first relay is ready.
//!
//! This crate is the trusted path of the upgrade: it keeps its dependencies few and never
//! depends on the relay crate. Upgrades (verify, migrate, hand over, health window, rollback)
//! build on this loop (issue #7).
//!
//! | module | owns |
//! | --- | --- |
//! | [`exit`] | exit codes (the systemd unit uses them) |
//! | [`notify`] | `sd_notify`: receiving the relay's readiness, telling systemd ours |
//! | [`budget`] | the crash budget and restart backoff (pure) |
//! | [`control`] | the control socket (`status`, `upgrade`, `rollback`) |
//! | [`upgrade`] | verify a staged release, journal, migrate, commit or roll back |
//! | [`recover`] | crash recovery from the journal; taking over a predecessor's generations |
//! | [`run`] | the supervision loop |

pub mod budget;
pub mod control;
pub mod exit;
pub mod notify;
pub mod recover;
pub mod run;
pub mod upgrade;

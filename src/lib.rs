//! wireleap-relay: a relay for the Wireleap network, wire-compatible with the reference Go relay
//! 0.6.x, with durable sharetokens and supervised hot upgrades.
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | the command line (clap), Go-style flags |
//! | [`home`] | the home directory and the environment |
//! | [`config`] | `config.json`: parsing, validation, the typed [`config::Config`] |
//! | [`identity`] | `key.seed`, `key.pub` and the TLS certificate |
//! | [`memory`] | where resident memory goes; the executable's pages mapped on use |
//! | [`lifecycle`] | the daemon's pid file, readiness, signals, shutdown phases |
//! | [`operator`] | the commands that act on a relay: start, stop, status, reload, upgrade, rollback |
//! | [`daemon`] | `start --fg`: startup, the actor system, shutdown |
//! | [`transport`] | actor: TLS 1.3 + HTTP/2 listener, connection tasks, drain |
//! | [`directory`] | actor: enrollment and heartbeat per contract |
//! | [`ledger`] | actor: sharetokens, replay protection, submission |
//! | [`upgrader`] | actor: upgrade notices → verified, staged releases |
//! | [`migrate`] | the hidden `migrate` command the supervisor runs during upgrades |
//! | [`usage`] | network usage per contract, caps, `stats.json` and its archive |
//! | [`restapi`] | the REST status API (`GET /api/status`) |
//! | [`metrics`] | Prometheus counters (atomics) and `GET /metrics` |
//! | [`shared_port`] | the metrics and REST ports: shared with the next generation, no one else |
//! | [`status`] | the status object shared by SIGUSR2 and the REST API |
//! | [`telemetry`] | the tracing subscriber |
//! | [`exit`] | process exit codes |
//! | [`version`] | the software and interface versions |
//!
//! Actors are the control plane; stream bytes never pass through a mailbox.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod directory;
pub mod exit;
pub mod home;
pub mod identity;
pub mod ledger;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod migrate;
pub mod operator;
pub mod probe;
pub mod restapi;
pub mod shared_port;
pub mod status;
pub mod telemetry;
pub mod transport;
pub mod upgrader;
pub mod usage;
pub mod version;

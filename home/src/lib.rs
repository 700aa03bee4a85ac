//! What the relay, the supervisor and the demo share about a relay's home directory, owned once
//! here: no async runtime, no actors, so that the supervisor (the trusted path) can depend on it.
//!
//! | module | owns |
//! | --- | --- |
//! | [`control`] | the supervisor's control protocol: typed, versioned requests and replies; the client |
//! | [`durable`] | the one atomic, durable file write |
//! | [`files`] | the names of the shared files, sockets and environment variables |
//! | [`journal`] | the upgrade journal: typed steps and entries, append and read |
//! | [`log`] | logging: timestamps and levels, a JSON option, journald priorities under systemd |
//! | [`migrate`] | running a binary's own migrations; any child bounded in time, its process group killed on a timeout |
//! | [`skip`] | `.skip-upgrade-version`: its one parser and its one writer |
//! | [`state`] | the highest committed version (`upgrade-state.json`) |
//! | [`value`] | `config.json`'s value formats: Go-style durations and data sizes (also the supervisor's flags) |
//! | [`instance`] | the home's lock: one supervisor, or one relay without one |

pub mod control;
pub mod durable;
pub mod files;
pub mod instance;
pub mod journal;
pub mod log;
pub mod migrate;
pub mod skip;
pub mod state;
pub mod time;
pub mod value;

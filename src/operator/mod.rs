//! The operator's commands that act on a relay from outside it: `start`, `stop`, `status`,
//! `reload`, `restart` ([`control`]; [`supervised`] when a supervisor runs the relay), `upgrade`
//! and `rollback`. The daemon's own lifecycle (pid file, readiness, signals, shutdown order) is in
//! `crate::lifecycle`.

pub mod control;
pub mod output;
pub mod report;
pub mod rollback;
pub mod supervised;
pub mod upgrade;

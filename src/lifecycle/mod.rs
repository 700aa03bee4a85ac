//! The daemon's own lifecycle: the pid file, inherited listeners, readiness notification,
//! signals, and the fixed, logged order of the shutdown phases ([`phase`]). The operator's
//! commands that act on a running daemon are in `crate::operator`.

pub mod listenfds;
pub mod notify;
pub mod phase;
pub mod pidfile;
pub mod signals;

//! Process lifecycle: the pid file, readiness notification, the control commands that act on a
//! running daemon (`start`, `stop`, `status`, `reload`, `restart`; [`supervised`] when the
//! supervisor runs it), the operator's `upgrade` and `rollback`, signals, and the shutdown
//! coordinator with its fixed, logged order of phases.

pub mod control;
pub mod listenfds;
pub mod notify;
pub mod phase;
pub mod pidfile;
pub mod rollback;
pub mod shutdown;
pub mod signals;
pub mod supervised;
pub mod upgrade;

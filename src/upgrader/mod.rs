//! Upgrader: turns a directory's upgrade notice into a staged, verified release and a request to
//! the supervisor.
//!
//! Download, verification and staging come with issues #6 and #7. Here the [`Upgrader`] actor
//! receives notices and records the newest one for `status`. Who calls it: the Enrollment actor
//! (heartbeat replies) and the daemon (status).

mod actor;

pub use actor::{UpgradeNotice, Upgrader, UpgraderState, UpgraderStatus};

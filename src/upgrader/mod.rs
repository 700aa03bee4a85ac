//! Upgrader: turns a directory's upgrade notice into a staged, verified release and a request to
//! the supervisor.
//!
//! The [`Upgrader`] actor decides on each notice ([`policy`]: auto-upgrade, the skip list of
//! `wireleap_home::skip`, the version floor) and shows the outcome in `status`. Download, verification
//! (the `relay-release` crate), staging and the request to the supervisor are one [`job`] at a
//! time. Who calls it: the Enrollment actor
//! (heartbeat replies) and the daemon (status).

mod actor;
pub mod handover;
pub mod job;
pub mod policy;
pub mod rollout;

pub use actor::{UpgradeNotice, Upgrader, UpgraderState, UpgraderStatus};

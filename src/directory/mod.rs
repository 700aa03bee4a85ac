//! Enrollment: the relay's standing with each contract's directory.
//!
//! The [`Enrollment`] actor owns, per configured contract, whether the relay is enrolled, and
//! applies config reloads (contracts added, updated, removed). Enrolling, heartbeats and the
//! signed API client come with issue #4; until then every contract reports "not enrolled" and
//! disenrollment has nothing to undo. Who calls it: the daemon (reload, status, shutdown). It
//! forwards upgrade notices to the Upgrader.

mod actor;
pub mod admission;

pub use actor::{
    ApplyConfig, ContractState, ContractStatuses, DisenrollAll, Enrollment, ReloadSummary,
};
pub use admission::{Admission, AdmissionError};

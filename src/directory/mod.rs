//! Enrollment: the relay's standing with each contract's directory (spec §4).
//!
//! The [`Enrollment`] actor owns, per configured contract, the discovery of the contract's id
//! and directory, enrollment with the proof-of-work challenge, heartbeats, and disenrollment;
//! it keeps the transport's [`Admission`] gates in step and forwards upgrade notices to the
//! Upgrader. [`client`] is the signed API client, [`schedule`] the retry backoff. Who calls it:
//! the daemon (start, reload, status, shutdown).

mod actor;
pub mod admission;
pub mod client;
pub mod schedule;

pub use actor::{
    ApplyConfig, ContractState, ContractStatuses, DisenrollAll, Enrollment, PauseHeartbeats,
    ReloadSummary, ResumeHeartbeats, StopHeartbeats, WaitFirstRound,
};
pub use admission::{Admission, AdmissionError};

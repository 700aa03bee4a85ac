//! Which contracts the transport may admit streams for, shared between the Enrollment actor
//! (writer) and the per-stream tasks (readers).
//!
//! This is the one piece of actor state read on the data path: a stream checks it once, at
//! admission (spec §6.3 step 6), without a mailbox round trip. Writes are rare (enroll,
//! disenroll, reload, cap reached), so a plain `RwLock` held for a lookup is enough.
//!
//! Each gate also hands the admitted stream its contract's usage [`Meter`] (spec §2.5), so the
//! data path counts bytes with an atomic add and never looks the contract up again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio_util::sync::CancellationToken;

use crate::usage::{Meter, Usage};

/// Why a stream's contract is not admitted (spec §6.3 step 6; texts are the reference's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The relay has not finished starting.
    #[error("controller not started")]
    NotStarted,
    /// The token names a contract that is not configured (or whose id is not known yet).
    #[error("relay contract not found: {0}")]
    NotFound(String),
    /// The contract is configured but the relay is not enrolled in it (or its cap is reached).
    #[error("relay contract not available: {0}")]
    NotAvailable(String),
}

/// One contract's gate.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The contract URL from the config.
    pub url: String,
    /// Streams are admitted only while enrolled.
    pub enrolled: bool,
    /// Cancelled when the contract's hard network cap is hit or it is removed: every stream of
    /// the contract holds a child of it.
    pub cancel: CancellationToken,
    /// The contract's byte counter (spec §2.5).
    pub meter: Arc<Meter>,
}

/// What an admitted stream carries: its contract's cancellation and byte counter.
#[derive(Debug, Clone)]
pub struct Pass {
    /// Cancelled when the contract's streams are cut (hard cap, removal).
    pub cancel: CancellationToken,
    /// Counts the stream's bytes, both ways, towards the contract's usage.
    pub meter: Arc<Meter>,
}

/// The shared view. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    started: Arc<AtomicBool>,
    gates: Arc<RwLock<HashMap<String, Gate>>>,
    usage: Usage,
}

impl Default for Admission {
    fn default() -> Self {
        Self::with_usage(Usage::disabled())
    }
}

impl Admission {
    /// An empty view with accounting off: nothing is admitted until [`Admission::set_started`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty view whose gates count into `usage`.
    pub fn with_usage(usage: Usage) -> Self {
        Self {
            started: Arc::default(),
            gates: Arc::default(),
            usage,
        }
    }

    /// The usage accounting the gates count into.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Whether the gate of a contract is open (the relay is enrolled in it).
    pub fn is_open(&self, contract_id: &str) -> bool {
        let gates = self.gates.read().unwrap_or_else(PoisonError::into_inner);
        gates.get(contract_id).is_some_and(|g| g.enrolled)
    }

    /// Marks the controller started (after the first enrollment round).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Checks a stream's contract (its public key, base64url). On success returns the token the
    /// stream must watch and the meter it counts into.
    ///
    /// # Errors
    /// The [`AdmissionError`] the stream answers with (400).
    pub fn check(&self, contract_id: &str) -> Result<Pass, AdmissionError> {
        if !self.started.load(Ordering::Acquire) {
            return Err(AdmissionError::NotStarted);
        }
        let gates = self.gates.read().unwrap_or_else(PoisonError::into_inner);
        match gates.get(contract_id) {
            None => Err(AdmissionError::NotFound(contract_id.to_owned())),
            Some(g) if !g.enrolled => Err(AdmissionError::NotAvailable(contract_id.to_owned())),
            Some(g) => Ok(Pass {
                cancel: g.cancel.child_token(),
                meter: Arc::clone(&g.meter),
            }),
        }
    }

    /// The ids of every configured contract whose id is known (spec §5.4 step 3).
    pub fn trusted_ids(&self) -> Vec<String> {
        let gates = self.gates.read().unwrap_or_else(PoisonError::into_inner);
        gates.keys().cloned().collect()
    }

    /// The configured URL of a contract, by its id (the ledger submits tokens there).
    pub fn url_of(&self, contract_id: &str) -> Option<String> {
        let gates = self.gates.read().unwrap_or_else(PoisonError::into_inner);
        gates.get(contract_id).map(|g| g.url.clone())
    }

    /// Registers a contract (not enrolled) or updates its URL.
    pub fn register(&self, contract_id: &str, url: &str) {
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        gates
            .entry(contract_id.to_owned())
            .and_modify(|g| g.url = url.to_owned())
            .or_insert_with(|| Gate {
                url: url.to_owned(),
                enrolled: false,
                cancel: CancellationToken::new(),
                meter: self.usage.meter(contract_id),
            });
    }

    /// Opens or closes a contract's gate for new streams; running streams are not affected.
    pub fn set_enrolled(&self, contract_id: &str, enrolled: bool) {
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = gates.get_mut(contract_id) {
            g.enrolled = enrolled;
        }
    }

    /// Closes a contract's gate and cuts its running streams (hard cap). A new token is put in
    /// place so that streams admitted after a later re-enrollment are not born cancelled.
    pub fn cut(&self, contract_id: &str) {
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = gates.get_mut(contract_id) {
            g.enrolled = false;
            std::mem::take(&mut g.cancel).cancel();
        }
    }

    /// Forgets a contract (removed by reload) and cuts its streams.
    pub fn remove(&self, contract_id: &str) {
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = gates.remove(contract_id) {
            g.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_follow_enrollment() {
        let a = Admission::new();
        a.register("c1", "https://c1");
        assert_eq!(a.check("c1").err(), Some(AdmissionError::NotStarted));
        a.set_started();
        assert_eq!(
            a.check("c1").err(),
            Some(AdmissionError::NotAvailable("c1".into()))
        );
        assert_eq!(
            a.check("zz").err(),
            Some(AdmissionError::NotFound("zz".into()))
        );
        a.set_enrolled("c1", true);
        let stream = a.check("c1").unwrap();
        a.cut("c1");
        assert!(stream.cancel.is_cancelled());
        a.set_enrolled("c1", true);
        assert!(!a.check("c1").unwrap().cancel.is_cancelled());
        a.remove("c1");
        assert_eq!(
            a.check("c1").err(),
            Some(AdmissionError::NotFound("c1".into()))
        );
    }

    #[test]
    fn streams_of_a_contract_share_its_meter() {
        let a = Admission::new();
        a.register("c1", "https://c1");
        a.set_started();
        a.set_enrolled("c1", true);
        assert!(a.is_open("c1") && !a.is_open("c2"));
        a.check("c1").unwrap().meter.add(5);
        a.check("c1").unwrap().meter.add(7);
        assert_eq!(a.usage().meter("c1").bytes(), 12);
    }
}

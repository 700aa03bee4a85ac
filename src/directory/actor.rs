//! The [`Enrollment`] actor and its messages.
//!
//! Restart: not supervised; its state is rebuilt from the config. Shutdown: [`DisenrollAll`]
//! before the drain, so the directory stops sending clients while streams finish.

use std::collections::BTreeMap;

use actix::prelude::*;
use tracing::info;

use super::Admission;
use crate::config::{Config, Contract, ContractUrl};

/// Per-contract enrollment state.
#[derive(Debug)]
pub struct Enrollment {
    /// One entry per configured contract.
    contracts: BTreeMap<ContractUrl, ContractState>,
    /// The transport's view of which contracts it may admit; kept in step with `contracts`.
    admission: Admission,
}

/// What the relay knows about one contract.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ContractState {
    /// The contract URL from the config.
    pub url: String,
    /// The contract's public key, once learned from its `/info`.
    pub id: Option<String>,
    /// The advertised relay address.
    pub address: String,
    /// The role in this contract.
    pub role: &'static str,
    /// Whether the directory has the relay enrolled.
    pub enrolled: bool,
    /// Per-contract usage cap, bytes.
    pub network_cap: Option<u64>,
}

impl ContractState {
    fn from_config(url: &ContractUrl, c: &Contract) -> Self {
        Self {
            url: url.to_string(),
            id: None,
            address: c.address.to_string(),
            role: c.role.as_str(),
            enrolled: false,
            network_cap: c.network_usage_limit,
        }
    }
}

impl Enrollment {
    /// Builds the state from the config (nothing is enrolled yet).
    pub fn new(config: &Config, admission: Admission) -> Self {
        Self {
            admission,
            contracts: config
                .contracts
                .iter()
                .map(|(url, c)| (url.clone(), ContractState::from_config(url, c)))
                .collect(),
        }
    }
}

impl Actor for Enrollment {
    type Context = Context<Self>;
}

/// Apply a reloaded config: add new contracts, update changed ones, drop removed ones.
#[derive(Debug, Message)]
#[rtype(result = "ReloadSummary")]
pub struct ApplyConfig(pub Config);

/// What a reload changed, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq, MessageResponse)]
pub struct ReloadSummary {
    /// Contracts that were not configured before.
    pub added: Vec<String>,
    /// Contracts whose entry changed.
    pub updated: Vec<String>,
    /// Contracts no longer configured.
    pub removed: Vec<String>,
    /// Changes refused, with the reason (a role change needs a restart, as in the reference).
    pub refused: Vec<String>,
}

impl Handler<ApplyConfig> for Enrollment {
    type Result = ReloadSummary;

    fn handle(
        &mut self,
        ApplyConfig(config): ApplyConfig,
        _ctx: &mut Self::Context,
    ) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        self.contracts.retain(|url, _| {
            let keep = config.contracts.contains_key(url);
            if !keep {
                summary.removed.push(url.to_string());
            }
            keep
        });
        for (url, c) in &config.contracts {
            let fresh = ContractState::from_config(url, c);
            match self.contracts.get_mut(url) {
                None => {
                    summary.added.push(url.to_string());
                    self.contracts.insert(url.clone(), fresh);
                }
                Some(old) if old.role != fresh.role => summary.refused.push(format!(
                    "{url}: role change from {} to {} needs a restart",
                    old.role, fresh.role
                )),
                Some(old) => {
                    if old.address != fresh.address || old.network_cap != fresh.network_cap {
                        summary.updated.push(url.to_string());
                        old.address = fresh.address;
                        old.network_cap = fresh.network_cap;
                    }
                }
            }
        }
        summary
    }
}

/// Ask for every contract's state.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ContractState>")]
pub struct ContractStatuses;

impl Handler<ContractStatuses> for Enrollment {
    type Result = MessageResult<ContractStatuses>;

    fn handle(&mut self, _msg: ContractStatuses, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.contracts.values().cloned().collect())
    }
}

/// Disenroll from every contract's directory (graceful shutdown). Replies with how many
/// directories were told.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct DisenrollAll;

impl Handler<DisenrollAll> for Enrollment {
    type Result = usize;

    fn handle(&mut self, _msg: DisenrollAll, _ctx: &mut Self::Context) -> usize {
        let enrolled = self.contracts.values().filter(|c| c.enrolled).count();
        for c in self.contracts.values_mut() {
            c.enrolled = false;
            if let Some(id) = &c.id {
                self.admission.set_enrolled(id, false);
            }
        }
        info!(enrolled, "disenrolled from every contract");
        enrolled
    }
}

//! The status object (spec §2.6): what SIGUSR2 prints and the REST API serves, built from the
//! actors' answers. One source, so the two never disagree.

use std::time::Duration;

use actix::prelude::*;
use serde_json::{Value, json};

use crate::directory::{ContractStatuses, Enrollment};
use crate::ledger::{Ledger, LedgerCounts};
use crate::transport::{Transport, TransportStatus};
use crate::upgrader::{Upgrader, UpgraderStatus};
use crate::usage::Usage;

/// How long each actor has to answer a status request.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Addresses of the actors a status is built from. Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct StatusSource {
    /// The running version.
    pub version: String,
    /// Enrollment state per contract.
    pub enrollment: Addr<Enrollment>,
    /// The listener.
    pub transport: Addr<Transport>,
    /// Token counts.
    pub ledger: Addr<Ledger>,
    /// Upgrade state.
    pub upgrader: Addr<Upgrader>,
    /// Network usage accounting (spec §2.5).
    pub usage: Usage,
}

impl StatusSource {
    /// The status object: the reference's keys (`controller_started`, `network_usage`,
    /// `relay_status`) first, then ours. An actor that does not answer in time shows as `null`.
    pub async fn json(&self) -> Value {
        let contracts = self
            .enrollment
            .send(ContractStatuses)
            .timeout(ASK_TIMEOUT)
            .await
            .unwrap_or_default();
        let transport = self
            .transport
            .send(TransportStatus)
            .timeout(ASK_TIMEOUT)
            .await
            .ok();
        let tokens = self
            .ledger
            .send(LedgerCounts)
            .timeout(ASK_TIMEOUT)
            .await
            .ok();
        let upgrade = self
            .upgrader
            .send(UpgraderStatus)
            .timeout(ASK_TIMEOUT)
            .await
            .ok();
        let relay_status: Vec<Value> = contracts
            .iter()
            .map(|c| {
                json!({
                    "id": c.id, "address": c.address, "role": c.role,
                    "status": {"enrolled": c.enrolled, "network_cap_reached": c.network_cap_reached},
                    "network_cap": c.network_cap, "network_usage": c.network_usage.unwrap_or(0),
                    "contract": c.url, "last_error": c.last_error, "last_heartbeat": c.last_heartbeat,
                })
            })
            .collect();
        json!({
            "controller_started": true,
            "network_usage": self.usage.summary(),
            "relay_status": relay_status,
            "version": self.version,
            "transport": transport,
            "sharetokens": tokens,
            "upgrade": upgrade,
        })
    }
}

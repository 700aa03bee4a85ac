//! The [`Upgrader`] actor and its messages.
//!
//! Restart: stateless between notices. Shutdown: stop (an upgrade in progress is the
//! supervisor's to finish or roll back).

use actix::prelude::*;
use tracing::info;

/// Receives upgrade notices.
#[derive(Debug)]
pub struct Upgrader {
    /// Act on notices (config `auto_upgrade`).
    auto_upgrade: bool,
    /// The running version.
    running: semver::Version,
    /// The newest version announced so far.
    announced: Option<semver::Version>,
}

impl Upgrader {
    /// A fresh upgrader.
    pub fn new(auto_upgrade: bool, running: semver::Version) -> Self {
        Self {
            auto_upgrade,
            running,
            announced: None,
        }
    }
}

impl Actor for Upgrader {
    type Context = Context<Self>;
}

/// A directory said "upgrade to `version`" (heartbeat reply 202, spec §3.3).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpgradeNotice {
    /// The announced version.
    pub version: semver::Version,
    /// The contract whose directory sent it.
    pub contract: String,
}

impl Handler<UpgradeNotice> for Upgrader {
    type Result = ();

    fn handle(&mut self, msg: UpgradeNotice, _ctx: &mut Self::Context) {
        info!(version = %msg.version, contract = %msg.contract, "received upgrade notice");
        if self.announced.as_ref().is_none_or(|v| msg.version > *v) {
            self.announced = Some(msg.version);
        }
    }
}

/// Ask for the upgrader's state.
#[derive(Debug, Message)]
#[rtype(result = "UpgraderState")]
pub struct UpgraderStatus;

/// The reply to [`UpgraderStatus`].
#[derive(Debug, Clone, PartialEq, Eq, MessageResponse, serde::Serialize)]
pub struct UpgraderState {
    /// The running version.
    pub running: String,
    /// Whether notices are acted on.
    pub auto_upgrade: bool,
    /// The newest version a directory announced.
    pub announced: Option<String>,
}

impl Handler<UpgraderStatus> for Upgrader {
    type Result = UpgraderState;

    fn handle(&mut self, _msg: UpgraderStatus, _ctx: &mut Self::Context) -> UpgraderState {
        UpgraderState {
            running: self.running.to_string(),
            auto_upgrade: self.auto_upgrade,
            announced: self.announced.as_ref().map(ToString::to_string),
        }
    }
}

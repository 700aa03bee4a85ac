//! The [`Upgrader`] actor and its messages.
//!
//! Restart: stateless between notices (the skip list is re-read for each). Shutdown: stop (an
//! upgrade in progress is the supervisor's to finish or roll back).

use std::path::PathBuf;

use actix::prelude::*;
use tracing::{info, warn};

use super::policy::{Decision, decide};
use super::skip::SkipList;

/// Receives upgrade notices and decides on them.
#[derive(Debug)]
pub struct Upgrader {
    /// The home directory (for `.skip-upgrade-version`).
    home: PathBuf,
    /// Act on notices (config `auto_upgrade`).
    auto_upgrade: bool,
    /// The running version.
    running: semver::Version,
    /// The newest version announced so far.
    announced: Option<semver::Version>,
    /// What was decided on the last notice, for `status`.
    last_decision: Option<String>,
}

impl Upgrader {
    /// A fresh upgrader.
    pub fn new(home: PathBuf, auto_upgrade: bool, running: semver::Version) -> Self {
        Self {
            home,
            auto_upgrade,
            running,
            announced: None,
            last_decision: None,
        }
    }

    fn skip_list(&self) -> SkipList {
        match SkipList::load(&self.home) {
            Ok(list) => {
                for (line, text) in &list.unreadable {
                    warn!(line, text = %text, "ignoring an unreadable line of .skip-upgrade-version");
                }
                list
            }
            Err(e) => {
                warn!(error = %e, "could not read .skip-upgrade-version");
                SkipList::default()
            }
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
            self.announced = Some(msg.version.clone());
        }
        let skipped = self.skip_list().versions;
        // TODO(#7): the floor also includes the highest committed version from the supervisor's
        // journal, and an accepted notice is downloaded, verified and staged.
        let decision = decide(
            &msg.version,
            self.auto_upgrade,
            &skipped,
            &self.running,
            None,
        );
        match &decision {
            Decision::Upgrade(v) => info!(version = %v, "upgrade accepted"),
            Decision::Ignore(why) => {
                info!(version = %msg.version, reason = %why, "upgrade notice ignored")
            }
        }
        self.last_decision = Some(match decision {
            Decision::Upgrade(v) => format!("upgrade to {v}"),
            Decision::Ignore(why) => format!("ignored {}: {why}", msg.version),
        });
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
    /// What was decided on the last notice.
    pub last_decision: Option<String>,
    /// Versions in `.skip-upgrade-version`.
    pub skipped: Vec<String>,
}

impl Handler<UpgraderStatus> for Upgrader {
    type Result = UpgraderState;

    fn handle(&mut self, _msg: UpgraderStatus, _ctx: &mut Self::Context) -> UpgraderState {
        UpgraderState {
            running: self.running.to_string(),
            auto_upgrade: self.auto_upgrade,
            announced: self.announced.as_ref().map(ToString::to_string),
            last_decision: self.last_decision.clone(),
            skipped: self
                .skip_list()
                .versions
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

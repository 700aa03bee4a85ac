//! The [`Upgrader`] actor and its messages.
//!
//! Restart: stateless between notices (the skip list is re-read for each). Shutdown: stop (an
//! upgrade in progress is the supervisor's to finish or roll back).

use std::path::PathBuf;

use actix::prelude::*;
use tracing::{info, warn};

use super::job::{self, Outcome};
use super::policy::{Decision, decide};
use wireleap_home::skip::SkipList;
use wireleap_home::state::highest_committed;

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
    /// Where releases are downloaded from (config `release_url`).
    release_url: Option<url::Url>,
    /// The version an upgrade job is working on.
    in_progress: Option<semver::Version>,
    /// How the last upgrade job ended.
    last_outcome: Option<String>,
    /// Versions whose last attempt failed for the release server's fault, or that the
    /// supervisor refused without a skip, or that no supervisor took: how often in a row, and
    /// not before when each is tried again (at most [`FAILING_KEPT`], the oldest forgotten).
    failing: Vec<(semver::Version, u32, std::time::Instant)>,
}

/// How many failing versions the upgrader remembers (a directory announcing ever new versions
/// cannot grow it).
const FAILING_KEPT: usize = 8;

impl Upgrader {
    /// Remembers how a job ended: `waits` (a version to hold back) backs off once more; a
    /// committed version is forgotten.
    fn note_outcome(&mut self, outcome: &Outcome, waits: Option<semver::Version>) {
        if let Outcome::Committed(v) = outcome {
            self.failing.retain(|(f, _, _)| f != v);
        }
        let Some(version) = waits else {
            return;
        };
        let times = self
            .failing
            .iter()
            .find(|(v, _, _)| *v == version)
            .map_or(1, |(_, n, _)| n + 1);
        self.failing.retain(|(v, _, _)| *v != version);
        if self.failing.len() >= FAILING_KEPT {
            self.failing.remove(0);
        }
        self.failing
            .push((version, times, std::time::Instant::now() + backoff(times)));
    }
}

/// The wait after the `failures`-th failed download of one version in a row: a minute,
/// doubling, at most six hours (a mirror that lags, an outage, or an attacker on the path is
/// neither hammered nor allowed to freeze the version for good).
#[must_use]
pub(super) fn backoff(failures: u32) -> std::time::Duration {
    const FIRST: u64 = 60;
    const MAX: u64 = 6 * 3600;
    let doublings = failures.saturating_sub(1).min(16);
    std::time::Duration::from_secs((FIRST << doublings).min(MAX))
}

impl Upgrader {
    /// A fresh upgrader.
    pub fn new(
        home: PathBuf,
        auto_upgrade: bool,
        running: semver::Version,
        release_url: Option<url::Url>,
    ) -> Self {
        Self {
            home,
            auto_upgrade,
            running,
            announced: None,
            last_decision: None,
            release_url,
            in_progress: None,
            last_outcome: None,
            failing: Vec::new(),
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

    fn handle(&mut self, msg: UpgradeNotice, ctx: &mut Self::Context) {
        let shown = msg.version.to_string();
        if shown.len() > wireleap_home::skip::MAX_VERSION_LEN {
            warn!(
                contract = %msg.contract,
                length = shown.len(),
                start = %shown.chars().take(32).collect::<String>(),
                "upgrade notice ignored: the announced version is longer than {} bytes",
                wireleap_home::skip::MAX_VERSION_LEN
            );
            self.last_decision = Some(format!(
                "ignored a version of {} bytes (at most {})",
                shown.len(),
                wireleap_home::skip::MAX_VERSION_LEN
            ));
            return;
        }
        info!(version = %msg.version, contract = %msg.contract, "received upgrade notice");
        if self.announced.as_ref().is_none_or(|v| msg.version > *v) {
            self.announced = Some(msg.version.clone());
        }
        if let Some(v) = &self.in_progress {
            info!(version = %msg.version, busy = %v, "upgrade notice dropped: an upgrade is in progress");
            return;
        }
        let skipped = self.skip_list().versions;
        let committed = highest_committed(&self.home);
        let decision = decide(
            &msg.version,
            self.auto_upgrade,
            &skipped,
            &self.running,
            committed.as_ref(),
        );
        match &decision {
            Decision::Upgrade(v) => info!(version = %v, "upgrade accepted"),
            Decision::Ignore(why) => {
                info!(version = %msg.version, reason = %why, "upgrade notice ignored")
            }
        }
        self.last_decision = Some(match &decision {
            Decision::Upgrade(v) => format!("upgrade to {v}"),
            Decision::Ignore(why) => format!("ignored {}: {why}", msg.version),
        });
        if let Decision::Upgrade(version) = &decision
            && let Some((_, times, until)) = self.failing.iter().find(|(v, _, _)| v == version)
            && std::time::Instant::now() < *until
        {
            let wait = until.saturating_duration_since(std::time::Instant::now());
            info!(version = %version, failures = times, retry_in = ?wait, "upgrade notice dropped: the last download failed; waiting before trying again");
            self.last_decision = Some(format!(
                "retrying {version} in {}s (its download failed {times} times in a row)",
                wait.as_secs()
            ));
            return;
        }
        if let Decision::Upgrade(version) = decision {
            self.in_progress = Some(version.clone());
            let job = job::run(
                self.home.clone(),
                self.release_url.clone(),
                self.running.clone(),
                version,
            );
            ctx.spawn(job.into_actor(self).map(|outcome, act, _| {
                match &outcome {
                    Outcome::Committed(_) => info!("{outcome}"),
                    _ => warn!("{outcome}"),
                }
                act.in_progress = None;
                let waits = match &outcome {
                    Outcome::Failed {
                        version,
                        server: true,
                        ..
                    }
                    | Outcome::RolledBack(version, _)
                    | Outcome::Unsupervised(version) => Some(version.clone()),
                    _ => None,
                };
                act.note_outcome(&outcome, waits);
                act.last_outcome = Some(outcome.to_string());
            }));
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
    /// What was decided on the last notice.
    pub last_decision: Option<String>,
    /// Versions in `.skip-upgrade-version`.
    pub skipped: Vec<String>,
    /// The highest version the supervisor committed (the floor for automatic upgrades).
    pub highest_committed: Option<String>,
    /// The version an upgrade is working on.
    pub in_progress: Option<String>,
    /// How the last upgrade ended.
    pub last_outcome: Option<String>,
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
            highest_committed: highest_committed(&self.home).map(|v| v.to_string()),
            in_progress: self.in_progress.as_ref().map(ToString::to_string),
            last_outcome: self.last_outcome.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn an_announced_version_too_long_is_ignored_and_never_downloaded() {
        let home = tempfile::tempdir().unwrap();
        let up = Upgrader::new(
            home.path().to_path_buf(),
            true,
            semver::Version::new(1, 0, 0),
            None,
        )
        .start();
        let long = semver::Version::parse(&format!("2.0.0-{}", "x".repeat(200))).unwrap();
        up.send(UpgradeNotice {
            version: long,
            contract: "https://contract.example".into(),
        })
        .await
        .unwrap();
        let state = up.send(UpgraderStatus).await.unwrap();
        assert!(
            state
                .last_decision
                .as_deref()
                .is_some_and(|d| d.starts_with("ignored a version of 206 bytes")),
            "{state:?}"
        );
        assert_eq!(state.announced, None);
        assert_eq!(state.in_progress, None);
    }

    #[test]
    fn a_failing_download_waits_a_minute_doubling_to_six_hours() {
        let mins = |n| backoff(n).as_secs() / 60;
        assert_eq!(
            (1..=10).map(mins).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 360]
        );
        assert_eq!(backoff(u32::MAX).as_secs(), 6 * 3600);
        assert_eq!(backoff(0).as_secs(), 60);
    }
}

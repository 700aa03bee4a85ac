//! The [`Upgrader`] actor and its messages.
//!
//! Restart: stateless between notices (the skip list is re-read for each). Shutdown: stop (an
//! upgrade in progress is the supervisor's to finish or roll back).

use std::path::PathBuf;

use actix::prelude::*;
use tracing::{info, warn};

use super::job::{self, Outcome};
use super::policy::{Decision, Ignored, decide};
use super::rollout::{self, Check};
use crate::identity::Identity;
use relay_release::rollout::Gate;
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
    /// Phased rollouts and freeze detection.
    rollouts: Rollouts,
}

/// The Upgrader's part in phased rollouts, outcome reports and freeze detection.
#[derive(Debug)]
struct Rollouts {
    /// The relay's identity: its position in a rollout, and its signature on reports. `None`:
    /// no rollout document is fetched (every version acts at once) and nothing is reported.
    identity: Option<Identity>,
    /// How often release information is fetched (config `release_check_interval`).
    check_interval: std::time::Duration,
    /// When release information counts as stale (config `release_stale_after`).
    stale_after: std::time::Duration,
    /// When the Upgrader started (the age of release information never fetched).
    started_at: std::time::SystemTime,
    /// When channel information or a rollout document was last fetched and valid.
    fresh_at: Option<std::time::SystemTime>,
    /// When staleness was last logged.
    stale_logged: Option<std::time::Instant>,
    /// A version held back by its rollout (its step has not come, or it is halted), checked
    /// again at each poll, each notice, and when its step opens.
    pending: Option<semver::Version>,
    /// The version whose rollout document is being fetched.
    checking: Option<semver::Version>,
    /// The timer that checks `pending` again when its step opens.
    wake: Option<SpawnHandle>,
    /// When a rollout document was last asked for (notices, which come with every heartbeat,
    /// ask again for a held-back version at most once per check interval).
    last_check: Option<std::time::Instant>,
    /// What the last rollout document said, for `status`.
    last: Option<String>,
    /// A recall of the running version is being carried out.
    recalling: bool,
    /// A poll is under way (the next waits for it).
    polling: bool,
}

/// How often staleness is logged while it lasts.
const STALE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

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
            rollouts: Rollouts {
                identity: None,
                check_interval: crate::config::DEFAULT_RELEASE_CHECK_INTERVAL,
                stale_after: crate::config::DEFAULT_RELEASE_STALE_AFTER,
                started_at: std::time::SystemTime::now(),
                fresh_at: None,
                stale_logged: None,
                pending: None,
                checking: None,
                wake: None,
                last_check: None,
                last: None,
                recalling: false,
                polling: false,
            },
        }
    }

    /// Takes part in phased rollouts as `identity`, fetching release information every
    /// `check_interval` and calling it stale after `stale_after`.
    #[must_use]
    pub fn with_rollouts(
        mut self,
        identity: Identity,
        check_interval: std::time::Duration,
        stale_after: std::time::Duration,
    ) -> Self {
        self.rollouts.identity = Some(identity);
        self.rollouts.check_interval = check_interval;
        self.rollouts.stale_after = stale_after;
        // Freshness survives restarts: a relay restarted daily must still show information
        // that has not been fetched for days.
        if let Some(info) = wireleap_home::state::ReleaseInfo::load(&self.home) {
            let at = wireleap_home::time::at_ms;
            if info.fresh_ms > 0 {
                self.rollouts.fresh_at = Some(at(info.fresh_ms));
            }
            if info.since_ms > 0 {
                self.rollouts.started_at = at(info.since_ms).min(self.rollouts.started_at);
            }
        }
        self
    }

    /// Release server and identity, when both are configured.
    fn rollout_parts(&self) -> Option<(url::Url, Identity)> {
        Some((self.release_url.clone()?, self.rollouts.identity.clone()?))
    }

    /// Asks the rollout document whether `version` may start now, and starts it if so.
    fn consider(&mut self, version: semver::Version, ctx: &mut Context<Self>) {
        if self.in_progress.is_some() || self.rollouts.checking.is_some() {
            return;
        }
        let Some((base, identity)) = self.rollout_parts() else {
            self.start_job(version, ctx);
            return;
        };
        self.rollouts.checking = Some(version.clone());
        self.rollouts.last_check = Some(std::time::Instant::now());
        let home = self.home.clone();
        let asked = version.clone();
        let check = async move { rollout::check(&home, &base, &identity, &asked).await };
        ctx.spawn(check.into_actor(self).map(move |result, act, ctx| {
            act.rollouts.checking = None;
            act.on_check(version, result, ctx);
            act.save_info();
        }));
    }

    fn on_check(
        &mut self,
        version: semver::Version,
        result: Result<Check, relay_release::Error>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(handle) = self.rollouts.wake.take() {
            ctx.cancel_future(handle);
        }
        let (gate, position, serial) = match result {
            Ok(Check::NotPhased) => {
                self.rollouts.pending = None;
                self.rollouts.last = Some(format!("{version}: no rollout document, not phased"));
                self.start_job(version, ctx);
                return;
            }
            Err(e) => {
                warn!(version = %version, error = %e, "rollout document refused: not acting on the version");
                self.rollouts.last = Some(format!("{version}: rollout document refused: {e}"));
                self.rollouts.pending = Some(version);
                return;
            }
            Ok(Check::Phased {
                gate,
                position,
                serial,
                issued,
                ..
            }) => {
                self.fresh(issued);
                (gate, position, serial)
            }
        };
        match gate {
            Gate::Open { step } => {
                info!(version = %version, step = step + 1, position = format!("{position:.2}%"), serial, "rollout step open: upgrading");
                self.rollouts.last = Some(format!(
                    "{version}: step {} open at position {position:.2}% (rollout serial {serial})",
                    step + 1
                ));
                self.rollouts.pending = None;
                self.start_job(version, ctx);
            }
            Gate::Wait { step, opens } => {
                let when = opens.map_or_else(
                    || "no step reaches it yet".to_owned(),
                    |t| format!("opens at {}", relay_release::manifest::format_time(t)),
                );
                info!(version = %version, position = format!("{position:.2}%"), step = step.map(|s| s + 1), %when, "rollout: waiting for this relay's step");
                self.rollouts.last = Some(format!(
                    "{version}: waiting, position {position:.2}% is in step {} which {when} (rollout serial {serial})",
                    step.map_or_else(|| "none".to_owned(), |s| (s + 1).to_string())
                ));
                if let Some(opens) = opens {
                    let wait = opens
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                        + std::time::Duration::from_millis(200);
                    self.rollouts.wake = Some(ctx.run_later(wait, |act, ctx| {
                        act.rollouts.wake = None;
                        act.recheck(ctx);
                    }));
                }
                self.rollouts.pending = Some(version);
            }
            Gate::Halted => {
                warn!(version = %version, serial, "rollout halted: not starting the version");
                self.rollouts.last = Some(format!(
                    "{version}: rollout halted (rollout serial {serial}); not started"
                ));
                self.rollouts.pending = Some(version);
            }
        }
    }

    /// Checks a held-back version again.
    fn recheck(&mut self, ctx: &mut Context<Self>) {
        if let Some(version) = self.rollouts.pending.clone()
            && self
                .skip_list()
                .is_ok_and(|list| !list.versions.contains(&version))
        {
            self.consider(version, ctx);
        }
    }

    /// Fetches release information: the channels (freshness), undelivered reports, the
    /// running version's rollout (a recall), then a held-back version again.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        let Some((base, identity)) = self.rollout_parts() else {
            return;
        };
        if self.rollouts.polling {
            return;
        }
        self.rollouts.polling = true;
        let home = self.home.clone();
        let running = self.running.clone();
        // Only a version this home upgraded to can be recalled to `.prev`.
        let upgraded = home.join(wireleap_home::files::PREV).exists()
            && highest_committed(&home).ok().flatten().as_ref() == Some(&running);
        let work = async move {
            rollout::queue_from_journal(&home, &identity);
            let fresh = rollout::channels_fresh(&base, &identity).await;
            let (delivered, queued) = rollout::deliver(&home, &base, &identity).await;
            let recall = if upgraded {
                Some(rollout::check(&home, &base, &identity, &running).await)
            } else {
                None
            };
            (fresh, delivered, queued, recall)
        };
        ctx.spawn(work.into_actor(self).map(|(fresh, delivered, queued, recall), act, ctx| {
            act.rollouts.polling = false;
            let now = std::time::SystemTime::now();
            match fresh {
                Ok(()) => act.fresh(now),
                Err(e) => info!(error = %e, "release channel information not fetched"),
            }
            if delivered > 0 {
                info!(delivered, queued, "upgrade outcome reports delivered");
            }
            match recall {
                Some(Ok(Check::Phased {
                    recall, serial, issued, ..
                })) => {
                    act.fresh(issued);
                    if let Some(document) = recall
                        && !act.rollouts.recalling
                    {
                        act.recall(serial, document, ctx);
                    }
                }
                Some(Err(e)) => info!(version = %act.running, error = %e, "rollout document of the running version not fetched"),
                _ => {}
            }
            act.log_if_stale(now);
            act.save_info();
            act.recheck(ctx);
        }));
    }

    /// The running version is recalled: ask the supervisor to go back to `.prev`, with the
    /// signed `document` that says so (the supervisor verifies it, skips the version and rolls
    /// back: under privilege separation a rollback the relay's user asks for needs it).
    fn recall(&mut self, serial: u64, document: String, ctx: &mut Context<Self>) {
        self.rollouts.recalling = true;
        let version = self.running.clone();
        warn!(version = %version, serial, "the running version is recalled by its rollout: rolling back to the previous version");
        self.rollouts.last = Some(format!(
            "{version}: recalled (rollout serial {serial}); rolling back"
        ));
        let home = self.home.clone();
        let asked = async move {
            let asked = tokio::task::spawn_blocking(move || {
                wireleap_home::control::call(
                    &home,
                    &wireleap_home::control::Request::Rollback {
                        recall: Some(document),
                    },
                    super::handover::SUPERVISOR_WAIT,
                )
            })
            .await;
            let why = match asked {
                Ok(Ok(reply)) if reply.ok => {
                    info!(version = %version, to = ?reply.version, "recall done: the previous version serves");
                    return true;
                }
                Ok(Ok(reply)) => reply
                    .error
                    .unwrap_or_else(|| "the supervisor did not roll back".to_owned()),
                Ok(Err(e)) => format!("no supervisor answered: {e}"),
                Err(e) => e.to_string(),
            };
            warn!(version = %version, error = %why, "recall not done; trying again at the next check");
            false
        };
        ctx.spawn(asked.into_actor(self).map(|done, act, _| {
            // Done: this generation is being replaced. Not done: the next check asks again.
            act.rollouts.recalling = done;
        }));
    }

    /// Release information as fresh as `at` (a fetch that succeeded now, or the issue time of
    /// a signed rollout document), never going back.
    fn fresh(&mut self, at: std::time::SystemTime) {
        if self.rollouts.fresh_at.is_none_or(|f| at > f) {
            self.rollouts.fresh_at = Some(at);
        }
    }

    /// What the relay knows of the release server (`None`: it fetches nothing).
    fn info(&self) -> Option<wireleap_home::state::ReleaseInfo> {
        self.rollout_parts()?;
        let ms = wireleap_home::time::ms;
        Some(wireleap_home::state::ReleaseInfo {
            fresh_ms: self.rollouts.fresh_at.map_or(0, ms),
            since_ms: ms(self.rollouts.started_at),
            stale_after_secs: self.rollouts.stale_after.as_secs(),
            rollout: self.rollouts.last.clone(),
            held_back: self.rollouts.pending.as_ref().map(ToString::to_string),
        })
    }

    /// How old release information is, and whether that is stale.
    fn freshness(&self, now: std::time::SystemTime) -> Option<(u64, bool)> {
        Some(self.info()?.age(wireleap_home::time::ms(now)))
    }

    /// Writes [`wireleap_home::files::RELEASE_INFO`] for `status`.
    fn save_info(&self) {
        if let Some(info) = self.info()
            && let Err(e) = info.save(&self.home)
        {
            warn!(error = %e, "could not write {}", wireleap_home::files::RELEASE_INFO);
        }
    }

    fn log_if_stale(&mut self, now: std::time::SystemTime) {
        let Some((age, true)) = self.freshness(now) else {
            return;
        };
        if self
            .rollouts
            .stale_logged
            .is_some_and(|t| t.elapsed() < STALE_LOG_EVERY)
        {
            return;
        }
        self.rollouts.stale_logged = Some(std::time::Instant::now());
        warn!(
            age_secs = age,
            stale_after = ?self.rollouts.stale_after,
            "release information is stale: no channel information or rollout document could be fetched for {age} s; an outage or an attacker may be hiding new releases"
        );
    }

    /// Starts the upgrade job of `version`.
    fn start_job(&mut self, version: semver::Version, ctx: &mut Context<Self>) {
        self.in_progress = Some(version.clone());
        let job = job::run(
            self.home.clone(),
            self.release_url.clone(),
            self.running.clone(),
            version,
            self.rollouts
                .identity
                .as_ref()
                .map(Identity::public_key_b64),
        );
        ctx.spawn(job.into_actor(self).map(|outcome, act, ctx| {
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
            // A rollback this generation outlived is reported now, not at the next poll (up to
            // `release_check_interval` later, when a rollout's next step may already be open).
            if matches!(outcome, Outcome::RolledBack(..)) {
                act.poll(ctx);
            }
        }));
    }

    /// The skip list, its unreadable lines logged. An error is not an empty list: a caller
    /// deciding on a version must then keep it out.
    fn skip_list(&self) -> std::io::Result<SkipList> {
        let list = SkipList::load(&self.home).inspect_err(|e| {
            warn!(error = %e, "could not read .skip-upgrade-version");
        })?;
        for (line, text) in &list.unreadable {
            warn!(line, text = %text, "ignoring an unreadable line of .skip-upgrade-version");
        }
        Ok(list)
    }
}

impl Actor for Upgrader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.rollout_parts().is_some() {
            // At once: reports the last generation could not send, and the running version's
            // recall.
            self.poll(ctx);
            ctx.run_interval(self.rollouts.check_interval, Self::poll);
        }
    }
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
        // An unreadable skip list or floor is not an empty one: the version stays out.
        let decision = match (self.skip_list(), highest_committed(&self.home)) {
            (Ok(skipped), Ok(committed)) => decide(
                &msg.version,
                self.auto_upgrade,
                &skipped.versions,
                &self.running,
                committed.as_ref(),
            ),
            (Err(e), _) => Decision::Ignore(Ignored::StateUnreadable(format!(
                "could not read {}: {e}; no version installs until it can be",
                wireleap_home::files::SKIP_VERSION
            ))),
            (_, Err(why)) => Decision::Ignore(Ignored::StateUnreadable(why)),
        };
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
            let asked_lately = self.rollouts.pending.as_ref() == Some(&version)
                && self
                    .rollouts
                    .last_check
                    .is_some_and(|t| t.elapsed() < self.rollouts.check_interval);
            if !asked_lately {
                self.consider(version, ctx);
            }
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
    /// What the last rollout document said (position, step, halt, recall).
    pub rollout: Option<String>,
    /// A version held back by its rollout.
    pub held_back: Option<String>,
    /// Seconds since channel information or a rollout document was last fetched (`None`:
    /// no release server or identity, nothing is fetched).
    pub release_info_age_secs: Option<u64>,
    /// Whether that is older than `release_stale_after`.
    pub release_info_stale: bool,
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
                .unwrap_or_default()
                .versions
                .iter()
                .map(ToString::to_string)
                .collect(),
            highest_committed: highest_committed(&self.home)
                .ok()
                .flatten()
                .map(|v| v.to_string()),
            in_progress: self.in_progress.as_ref().map(ToString::to_string),
            last_outcome: self.last_outcome.clone(),
            rollout: self.rollouts.last.clone(),
            held_back: self.rollouts.pending.as_ref().map(ToString::to_string),
            release_info_age_secs: self.freshness(std::time::SystemTime::now()).map(|f| f.0),
            release_info_stale: self
                .freshness(std::time::SystemTime::now())
                .is_some_and(|f| f.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an Upgrader running 1.0.0 with automatic upgrades in `home` makes of a notice for
    /// `version`.
    async fn after_notice(home: &std::path::Path, version: semver::Version) -> UpgraderState {
        let up = Upgrader::new(
            home.to_path_buf(),
            true,
            semver::Version::new(1, 0, 0),
            None,
        )
        .start();
        up.send(UpgradeNotice {
            version,
            contract: "https://contract.example".into(),
        })
        .await
        .unwrap();
        up.send(UpgraderStatus).await.unwrap()
    }

    #[actix_rt::test]
    async fn an_announced_version_too_long_is_ignored_and_never_downloaded() {
        let home = tempfile::tempdir().unwrap();
        let long = semver::Version::parse(&format!("2.0.0-{}", "x".repeat(200))).unwrap();
        let state = after_notice(home.path(), long).await;
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

    /// A skip list or a floor that cannot be read is not an empty one: an announced version is
    /// ignored (it may be the skipped one, or below the floor), the reason names the file.
    #[actix_rt::test]
    async fn an_unreadable_skip_list_or_floor_keeps_an_announced_version_out() {
        for (file, text, says) in [
            (
                wireleap_home::files::SKIP_VERSION,
                &b"\xff\xfe not text"[..],
                "could not read .skip-upgrade-version",
            ),
            (
                wireleap_home::files::STATE,
                b"{\"highest_committed\": 1}",
                "upgrade-state.json",
            ),
        ] {
            let home = tempfile::tempdir().unwrap();
            std::fs::write(home.path().join(file), text).unwrap();
            let state = after_notice(home.path(), semver::Version::new(2, 0, 0)).await;
            let decision = state.last_decision.unwrap_or_default();
            assert!(
                decision.starts_with("ignored 2.0.0: ") && decision.contains(says),
                "{file}: {decision}"
            );
            assert_eq!(state.in_progress, None, "{file}");
        }
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

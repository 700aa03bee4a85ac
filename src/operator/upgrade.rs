//! The operator's `upgrade [--yes] [VERSION]` (spec §3.9 with the §10 differences): find the
//! newest version of the relay's update channel, show its changelog, ask, then download, verify
//! and stage the signed release and have the supervisor hand over to it.
//!
//! Where the version comes from: the directory, as the reference asks it (contract `/info` →
//! directory endpoint → directory `/info` → `upgrade_channels.relay[<channel>]`, for the contract
//! that has `upgrade_channel`, §10 #9); if the directory cannot say, the release server's
//! `channels.json` under `release_url`. The statement is verified (signature, product, version
//! floor, target, expiry) before the changelog is shown and before the prompt; after a "yes"
//! the binary is downloaded with a progress bar on stderr, checked against the signed digests,
//! and staged as `wireleap-relay.next` + `wireleap-relay.next.hash`; then the supervisor verifies
//! again, hands over, watches the health window and commits or rolls back.
//!
//! Differences from the reference, on purpose: the outcome printed is the real one (committed,
//! or rolled back and why), not "the supervisor was launched"; without a supervisor nothing is
//! installed (a hot upgrade needs one) and nothing is left staged; a version in
//! `.skip-upgrade-version` is upgraded to after a warning and a "yes", as there (under privilege
//! separation only when root or the supervisor's user asks: the relay's user stages it and the
//! supervisor's refusal names the `ctl upgrade` that installs it). Exit codes:
//! 0 upgraded or up to date, 1 otherwise. Who calls it: `main`. It never runs in the daemon.

use std::io::{BufRead, Write};
use std::path::Path;

use relay_release::fetch::{Fetcher, Limits, Progress};
use relay_release::{Layout, Product, Trust, parse_version};
use semver::Version;
use wireleap_home::control::State as Doing;
use wireleap_home::files::NEXT;

use super::supervised::{self, SUPERVISOR_BIN};
use crate::config::{self, Config};
use crate::directory::client::{Client, Retry};
use crate::home::files;
use crate::identity::Identity;
use crate::upgrader::handover::{Handover, destination, hand_over};
use wireleap_home::skip::SkipList;

/// How many times the prompt is asked before giving up (spec §3.9 step 6).
const ATTEMPTS: usize = 3;
/// Width of the progress bar, in characters.
const BAR_WIDTH: u64 = 30;

/// Why `upgrade` did not upgrade.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json could not be loaded.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// No contract names an update channel.
    #[error(
        "no contract in config.json has an 'upgrade_channel' to take the newest version from; name a VERSION"
    )]
    NoChannel,
    /// Neither the directory nor the release server named a version for the channel.
    #[error("could not find the newest version of channel '{channel}': {why}")]
    Latest {
        /// The channel.
        channel: String,
        /// What each source said.
        why: String,
    },
    /// VERSION is not a version.
    #[error("{0:?} is not a version (e.g. 1.2.3)")]
    BadVersion(String),
    /// VERSION is below the running version.
    #[error(
        "{target} is below the running version {current}; `wireleap-relay rollback` goes back to the previous version"
    )]
    Downgrade {
        /// The version asked for.
        target: Version,
        /// The running version.
        current: Version,
    },
    /// No supervisor runs the relay.
    #[error(
        "upgrades need {SUPERVISOR_BIN}, and none runs for {home}: start the relay with `wireleap-relay start` (it runs the supervisor), then upgrade"
    )]
    NoSupervisor {
        /// The home directory.
        home: String,
    },
    /// The supervisor is in the middle of something else.
    #[error("{SUPERVISOR_BIN} is {0}; try again when `wireleap-relay status` says serving")]
    Busy(String),
    /// No release server configured.
    #[error(
        "config.json has no \"release_url\" to download releases from (the base URL of the signed releases)"
    )]
    NoReleaseUrl,
    /// The key could not be loaded (it signs the directory requests).
    #[error(transparent)]
    Identity(#[from] crate::identity::Error),
    /// Downloading or verifying the release failed.
    #[error("release {version}: {source}")]
    Release {
        /// The version.
        version: Version,
        /// The failing step (boxed: it is large, and rare).
        source: Box<relay_release::Error>,
    },
    /// The release trust could not be loaded (a key file, unsafe permissions, a root).
    #[error("{0}")]
    Keys(String),
    /// The supervisor refused or rolled back the new version.
    #[error("the upgrade to {version} did not happen: {why}")]
    RolledBack {
        /// The version.
        version: String,
        /// The supervisor's reason.
        why: String,
    },
    /// The supervisor took the request but its answer did not arrive.
    #[error(
        "no answer from {SUPERVISOR_BIN}: {0}; `wireleap-relay status` and upgrade-journal.jsonl tell how the upgrade ended"
    )]
    NoAnswer(std::io::Error),
    /// The prompt was not answered.
    #[error("Failed to get an answer {ATTEMPTS} times. Aborting.")]
    Unanswered,
    /// The runtime or an HTTP client could not be built.
    #[error("could not start: {0}")]
    Setup(String),
}

/// How `upgrade` ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The supervisor committed the new version.
    Upgraded(Version),
    /// Nothing newer.
    UpToDate,
    /// The operator said no.
    Declined,
}

/// `upgrade`: runs [`upgrade`] with the terminal's stdin and returns the exit code.
pub fn run(home: &Path, own: &Version, yes: bool, version: Option<&str>) -> u8 {
    match upgrade(home, own, yes, version, &mut std::io::stdin().lock()) {
        Ok(Done::Upgraded(_) | Done::UpToDate) => crate::exit::OK,
        Ok(Done::Declined) => crate::exit::FAILURE,
        Err(e @ Error::Unanswered) => {
            crate::out!("{e}");
            crate::exit::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::exit::FAILURE
        }
    }
}

/// The whole command; the prompt reads `input`. Prints as it goes.
///
/// # Errors
/// Any [`Error`]; staged files are removed when the supervisor cannot take them.
pub fn upgrade(
    home: &Path,
    own: &Version,
    yes: bool,
    version: Option<&str>,
    input: &mut dyn BufRead,
) -> Result<Done, Error> {
    let config = config::load(&home.join(files::CONFIG))?.config;
    let supervisor = supervised::status_reply(home).ok();
    // The running relay's version: the supervisor knows it; without one, this binary's.
    let current = supervisor
        .as_ref()
        .and_then(|r| r.version.as_deref())
        .and_then(|v| Version::parse(v).ok())
        .unwrap_or_else(|| own.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Setup(e.to_string()))?;
    let target = match version {
        Some(v) => parse_version(v).map_err(|_| Error::BadVersion(v.to_owned()))?,
        None => rt.block_on(latest(home, &config, own))?,
    };
    if target <= current {
        if version.is_some() && target < current {
            return Err(Error::Downgrade { target, current });
        }
        crate::out!(
            "Your wireleap-relay is up to date (version {current}, {target} available), nothing to do."
        );
        return Ok(Done::UpToDate);
    }
    let Some(status) = supervisor else {
        return Err(Error::NoSupervisor {
            home: home.display().to_string(),
        });
    };
    match status.state {
        Some(Doing::Serving) => {}
        other => {
            return Err(Error::Busy(
                other.map_or_else(|| "not serving".to_owned(), |s| s.to_string()),
            ));
        }
    }
    let base = config.release_url.as_ref().ok_or(Error::NoReleaseUrl)?;
    let release = |source| Error::Release {
        version: target.clone(),
        source: Box::new(source),
    };
    let fetcher = Fetcher::try_new(
        Layout::try_new(base.as_str()).map_err(release)?,
        Limits::default(),
    )
    .map_err(release)?;
    // Trust problems are the operator's to fix; a bad root rotation is the server's, not the
    // release's.
    let trust_error = |e: relay_release::Error, what: &str| match e {
        relay_release::Error::Key { .. }
        | relay_release::Error::UnsafeTrustFile { .. }
        | relay_release::Error::Trust { .. } => Error::Keys(e.to_string()),
        other if what.is_empty() => release(other),
        other => Error::Keys(format!("{what}: {other}")),
    };
    // Newer roots first: a rotation may add or remove the keys this release needs.
    let mut trust = Trust::load(home).map_err(|e| trust_error(e, ""))?;
    for version in rt
        .block_on(fetcher.update_root(&mut trust))
        .map_err(|e| trust_error(e, "release root"))?
    {
        crate::out!("Followed the release root's rotation to version {version}.");
    }
    let (keys, expected) = relay_release::trust::release_check(&trust, home, &target, &current)
        .map_err(|e| trust_error(e, ""))?;

    // Verified before anything is shown or asked: a release that will not install is said now.
    let statement = rt
        .block_on(fetcher.fetch_statement(&keys, &expected))
        .map_err(release)?;
    crate::out!(
        "Release {target} for {} verified (signed by {}).",
        statement.asset,
        statement.signers.join(", ")
    );
    crate::out!("Changelog for version {target}:");
    match rt.block_on(fetcher.fetch_changelog(&statement)) {
        Ok(text) => crate::out!("{}", text.trim_end()),
        Err(e) => crate::out!("-- error getting changelog: {e} --"),
    }
    match SkipList::load(home) {
        Ok(list) => {
            for (line, text) in &list.unreadable {
                eprintln!(
                    "warning: {} line {line} is not a version: {text:?}",
                    files::SKIP_VERSION
                );
            }
            if list.contains(&target) {
                crate::out!(
                    "-- NOTE: upgrading to version {target} seems to have failed the last time --"
                );
            }
        }
        Err(e) => eprintln!("warning: could not read {}: {e}", files::SKIP_VERSION),
    }
    if !yes {
        let question = format!("Proceed with upgrade from {current} to {target}?");
        match confirm(input, &mut std::io::stdout(), &question) {
            Answer::Yes => {}
            Answer::No => {
                crate::out!("OK, aborting.");
                return Ok(Done::Declined);
            }
            Answer::Unanswered => return Err(Error::Unanswered),
        }
    }

    let dest = destination(home);
    let mut bar = Bar::new(format!("Downloading {}", statement.asset));
    let staged = rt.block_on(fetcher.stage_release(&keys, &expected, &dest, |p| bar.draw(p)));
    bar.finish();
    staged.map_err(release)?;
    crate::out!(
        "Staged {target} as {}; {SUPERVISOR_BIN} verifies it again, starts it beside the running relay, and commits it after its health window...",
        NEXT
    );
    match hand_over(home, &target) {
        Handover::Committed => {
            crate::out!(
                "wireleap-relay successfully upgraded to version {target} (was {current})."
            );
            crate::out!(
                "NOTE: The old ({current}) binary can be restored: cd {} && ./wireleap-relay rollback",
                home.display()
            );
            Ok(Done::Upgraded(target))
        }
        Handover::Refused(why) => Err(Error::RolledBack {
            version: target.to_string(),
            why,
        }),
        // It stopped while we downloaded: no `.next` is left behind (spec §10 #8).
        Handover::NoSupervisor => Err(Error::NoSupervisor {
            home: home.display().to_string(),
        }),
        Handover::NoAnswer(e) => Err(Error::NoAnswer(e)),
    }
}

/// The newest version of the relay's channel: the directory first (spec §3.9 step 2), then the
/// release server's `channels.json`.
async fn latest(home: &Path, config: &Config, software: &Version) -> Result<Version, Error> {
    let (contract, channel) = config.upgrade_channel().ok_or(Error::NoChannel)?;
    let from_directory = async {
        let identity = Identity::load(home)?;
        let client = Client::try_new(identity.signing_key().clone(), &software.to_string())
            .map_err(|e| Error::Setup(e.to_string()))?;
        let why = |e: &dyn std::fmt::Display| e.to_string();
        let info = client
            .contract_info(contract.as_str(), Retry::PERFORM)
            .await
            .map_err(|e| why(&e));
        let dir = match info {
            Ok(info) => client
                .directory_info(&info.directory_info_url(), Retry::PERFORM)
                .await
                .map_err(|e| why(&e)),
            Err(e) => Err(e),
        };
        Ok::<_, Error>(dir.and_then(|dir| {
            match dir.relay_channel_version(channel) {
                Some(v) => parse_version(v)
                    .map_err(|_| format!("the directory names {v:?} for channel '{channel}'")),
                None => Err(format!(
                    "no version for channel '{channel}' is provided by directory"
                )),
            }
        }))
    };
    let directory_error = match from_directory.await? {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let Some(base) = &config.release_url else {
        return Err(Error::Latest {
            channel: channel.to_owned(),
            why: directory_error,
        });
    };
    let from_releases = async {
        let fetcher = Fetcher::try_new(Layout::try_new(base.as_str())?, Limits::default())?;
        fetcher.channel_version(&Product::relay(), channel).await
    };
    match from_releases.await {
        Ok(v) => {
            crate::out!(
                "note: the directory did not say ({directory_error}); the release server's channel '{channel}' names {v}"
            );
            Ok(v)
        }
        Err(e) => Err(Error::Latest {
            channel: channel.to_owned(),
            why: format!("{directory_error}; and the release server: {e}"),
        }),
    }
}

/// The operator's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `y` or `yes`.
    Yes,
    /// `n`, `no`, an empty line, or the end of input.
    No,
    /// [`ATTEMPTS`] answers that were none of these.
    Unanswered,
}

/// Asks `question` with " (y/N) " up to [`ATTEMPTS`] times (spec §3.9 step 6: case-insensitive,
/// trimmed; anything else is "not understood" and asked again).
pub fn confirm(input: &mut dyn BufRead, out: &mut dyn Write, question: &str) -> Answer {
    for _ in 0..ATTEMPTS {
        let _ = write!(out, "{question} (y/N) ");
        let _ = out.flush();
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => {
                // No more input (a script without --yes): as good as no.
                let _ = writeln!(out);
                return Answer::No;
            }
            Ok(_) => {}
        }
        let said = line.trim();
        match said.to_ascii_lowercase().as_str() {
            "y" | "yes" => return Answer::Yes,
            "n" | "no" | "" => return Answer::No,
            _ => {
                let _ = write!(out, "Response '{said}' not understood. ");
            }
        }
    }
    let _ = writeln!(out);
    Answer::Unanswered
}

/// The download progress bar: on a terminal one line on stderr, redrawn with a carriage return
/// when the percentage changes; elsewhere (a log file, a pipe) one plain line per quarter, no
/// `\r` redraws.
#[derive(Debug)]
struct Bar {
    label: String,
    shown: Option<u64>,
    terminal: bool,
}

impl Bar {
    fn new(label: String) -> Self {
        use std::io::IsTerminal as _;
        Self {
            label,
            shown: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn draw(&mut self, p: Progress) {
        let percent = (p.done.saturating_mul(100))
            .checked_div(p.total)
            .unwrap_or(100)
            .min(100);
        let step = if self.terminal {
            percent
        } else {
            percent / 25 * 25
        };
        if self.shown == Some(step) {
            return;
        }
        self.shown = Some(step);
        if self.terminal {
            eprint!("\r{}", bar_line(&self.label, p, percent));
        } else {
            eprintln!("{}", bar_line(&self.label, p, percent));
        }
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.terminal && self.shown.is_some() {
            eprintln!();
        }
    }
}

fn bar_line(label: &str, p: Progress, percent: u64) -> String {
    let filled = usize::try_from(percent * BAR_WIDTH / 100).unwrap_or(0);
    let width = usize::try_from(BAR_WIDTH).unwrap_or(30);
    format!(
        "{label} [{:<width$}] {percent:>3}% {} of {}",
        "#".repeat(filled),
        size(p.done),
        size(p.total),
    )
}

/// Bytes for people: `812 B`, `1.5 KiB`, `12.3 MiB`.
fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    // Tenths, in integers: exact enough for a progress line and free of float casts.
    let tenths = |unit: u64| {
        let t = bytes.saturating_mul(10) / unit;
        format!("{}.{}", t / 10, t % 10)
    };
    match bytes {
        0..KIB => format!("{bytes} B"),
        KIB..MIB => format!("{} KiB", tenths(KIB)),
        _ => format!("{} MiB", tenths(MIB)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(input: &str) -> (Answer, String) {
        let mut out = Vec::new();
        let a = confirm(&mut input.as_bytes(), &mut out, "Proceed?");
        (a, String::from_utf8(out).unwrap())
    }

    #[test]
    fn prompt_answers_as_the_reference_reads_them() {
        for yes in ["y\n", "YES\n", "  Yes \n"] {
            assert_eq!(ask(yes).0, Answer::Yes, "{yes:?}");
        }
        for no in ["n\n", "No\n", "\n", ""] {
            assert_eq!(ask(no).0, Answer::No, "{no:?}");
        }
        let (a, out) = ask("maybe\ny\n");
        assert_eq!(a, Answer::Yes);
        assert_eq!(
            out,
            "Proceed? (y/N) Response 'maybe' not understood. Proceed? (y/N) "
        );
        let (a, out) = ask("a\nb\nc\ny\n");
        assert_eq!(a, Answer::Unanswered);
        assert_eq!(out.matches("not understood").count(), 3, "{out}");
    }

    #[test]
    fn progress_line() {
        let p = Progress {
            done: 1536,
            total: 3 * 1024 * 1024,
        };
        assert_eq!(
            bar_line("Downloading x", p, 50),
            format!(
                "Downloading x [{:<30}]  50% 1.5 KiB of 3.0 MiB",
                "#".repeat(15)
            )
        );
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(10 * 1024 * 1024 + 1), "10.0 MiB");
    }
}

//! One automatic upgrade (DESIGN.md steps 2-3 on the relay's side): download with limits, verify,
//! stage as `wireleap-relay.next` + `wireleap-relay.next.hash`, then ask the supervisor, which
//! verifies again and swaps generations.
//!
//! Outcomes and what they leave behind (spec §3.10, with our differences):
//! - a validly signed statement rules the version out (no asset for this platform): the version
//!   is skipped; anything else the download meets (no such file yet, a replayed or forged
//!   statement, a deadline) is tried again after a backoff ([`super::actor`]), never skipped,
//!   nothing is staged;
//! - the server cannot be reached (after the fetcher's retries): nothing is skipped, the next
//!   notice tries again;
//! - no supervisor runs this relay: the staged files are removed (no `.next` is left behind) and
//!   the log says how to run one;
//! - the supervisor answers: its outcome (committed, or rolled back and skipped by it).

use std::path::{Path, PathBuf};

use relay_release::fetch::{Fetcher, Limits};
use relay_release::{Layout, Trust};
use semver::Version;
use tracing::{info, warn};
use wireleap_home::files::{NEXT, runs_from_home};

use super::handover::{Handover, destination, hand_over};

/// What became of one upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The supervisor committed the new version.
    Committed(Version),
    /// The supervisor refused or rolled back the new version (and skipped it).
    RolledBack(Version, String),
    /// Download or verification failed; `skipped` says whether the version was skipped.
    Failed {
        /// The version.
        version: Version,
        /// Why.
        why: String,
        /// Whether the version went into `.skip-upgrade-version`.
        skipped: bool,
        /// Whether the release server or the path to it is at fault (the version waits for a
        /// backoff before it is tried again); a local problem is tried on the next notice.
        server: bool,
    },
    /// The release verified but no supervisor runs this relay.
    Unsupervised(Version),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Committed(v) => write!(f, "upgraded to {v}"),
            Self::RolledBack(v, why) => write!(f, "upgrade to {v} rolled back: {why}"),
            Self::Failed {
                version,
                why,
                skipped,
                ..
            } => {
                let then = if *skipped {
                    "; skipped from now on"
                } else {
                    "; will try again"
                };
                write!(f, "could not upgrade to {version}: {why}{then}")
            }
            Self::Unsupervised(v) => write!(
                f,
                "{v} verified, but no supervisor runs this relay; start it with `wireleap-relay start` to upgrade"
            ),
        }
    }
}

/// How many times over its size one version's binary may be downloaded per day (every attempt
/// counts what it received): a release server or a path that truncates or corrupts every
/// download cannot make a relay spend unbounded bandwidth on it.
pub const DOWNLOADS_PER_DAY: u64 = 4;

/// The download budget of one UTC day ([`wireleap_home::files::DOWNLOAD_BUDGET`]).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Budget {
    /// Days since the epoch.
    day: u64,
    /// Per version: bytes received today, and the binary's signed size.
    versions: std::collections::BTreeMap<String, (u64, u64)>,
}

impl Budget {
    fn today() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400)
    }

    fn load(home: &Path) -> Self {
        let path = home.join(wireleap_home::files::DOWNLOAD_BUDGET);
        let budget: Self = wireleap_home::durable::read_regular(&path, 64 * 1024, None)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if budget.day == Self::today() {
            budget
        } else {
            Self {
                day: Self::today(),
                versions: std::collections::BTreeMap::new(),
            }
        }
    }

    /// Why `version` may not be downloaded again today, if it may not.
    fn exhausted(&self, version: &Version) -> Option<String> {
        let &(spent, size) = self.versions.get(&version.to_string())?;
        (size > 0 && spent >= DOWNLOADS_PER_DAY * size).then(|| {
            format!(
                "its download budget for today is spent ({spent} bytes, {DOWNLOADS_PER_DAY} times its size): not downloading it again before 00:00 UTC"
            )
        })
    }

    fn add(home: &Path, version: &Version, bytes: u64, size: u64) {
        if bytes == 0 {
            return;
        }
        let mut budget = Self::load(home);
        let entry = budget.versions.entry(version.to_string()).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(bytes);
        entry.1 = entry.1.max(size);
        while budget.versions.len() > 16 {
            let first = budget.versions.keys().next().cloned();
            if let Some(k) = first {
                budget.versions.remove(&k);
            }
        }
        let path = home.join(wireleap_home::files::DOWNLOAD_BUDGET);
        let written = serde_json::to_vec(&budget)
            .map_err(std::io::Error::other)
            .and_then(|b| wireleap_home::durable::write_atomic(&path, &b, 0o644));
        if let Err(e) = written {
            warn!(path = %path.display(), error = %e, "could not record the download budget");
        }
    }
}

/// How long the changelog may take once the release is staged.
const CHANGELOG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs one upgrade to `version`.
pub async fn run(
    home: PathBuf,
    release_url: Option<url::Url>,
    running: Version,
    version: Version,
    relay: Option<String>,
) -> Outcome {
    let fail = |why: String, skipped: bool| Outcome::Failed {
        version: version.clone(),
        why,
        skipped,
        server: false,
    };
    let Some(base) = release_url else {
        return fail(
            "config.json has no \"release_url\" to download releases from".into(),
            false,
        );
    };
    // Not worth a download: the supervisor would refuse it.
    let exe = wireleap_home::files::installed_binary()
        .map_err(|e| format!("cannot find the relay's own path: {e}"));
    if let Err(why) = exe.and_then(|exe| runs_from_home(&home, &exe)) {
        return fail(why, false);
    }
    // Newer roots first: a rotation may add or remove the keys this release needs. A root the
    // server gets wrong says nothing about this release: it is not skipped for it.
    let trust = match follow_roots(&home, &base, relay.clone()).await {
        Ok(trust) => trust,
        Err(e) => {
            return Outcome::Failed {
                version: version.clone(),
                why: format!("release root: {e}"),
                skipped: false,
                server: e.is_peer_fault(),
            };
        }
    };
    if let Some(why) = Budget::load(&home).exhausted(&version) {
        return Outcome::Failed {
            version: version.clone(),
            why,
            skipped: false,
            server: true,
        };
    }
    match stage(&home, &base, relay, &trust, &running, &version).await {
        Ok(()) => {}
        Err(e) => {
            let skip = match &e {
                relay_release::Error::AssetNotListed { statement, .. }
                    if e.rules_out_version() && !statement.is_empty() =>
                {
                    skip_version(home.clone(), version.clone(), statement.clone()).await
                }
                _ => false,
            };
            return Outcome::Failed {
                version: version.clone(),
                why: e.to_string(),
                skipped: skip,
                server: !skip && e.is_peer_fault(),
            };
        }
    }
    ask_supervisor(home, version).await
}

/// The home's trust, after following the release server's root rotations.
async fn follow_roots(
    home: &Path,
    base: &url::Url,
    relay: Option<String>,
) -> Result<Trust, relay_release::Error> {
    let fetcher = fetcher(base, relay)?;
    let mut trust = Trust::load(home)?;
    fetcher.update_root(&mut trust).await?;
    Ok(trust)
}

/// Whether `dest` holds a release of `expected` that verifies now: the statement, the binary,
/// and the release's supervisor when the statement lists one.
fn already_staged(
    dest: &relay_release::fetch::Destination,
    keys: &relay_release::TrustedKeys,
    expected: &relay_release::Expected,
) -> bool {
    let Ok(verified) =
        relay_release::verify_release_files(&dest.statement, &dest.binary, keys, expected)
    else {
        return false;
    };
    match (verified.supervisor_entry(), &dest.supervisor) {
        (None, _) => true,
        (Some(entry), Some(path)) => {
            relay_release::verify::verify_file(path, &verified, &entry.name).is_ok()
        }
        (Some(_), None) => false,
    }
}

/// A downloader for `base` that names the asking relay (its public key) to the release server,
/// when given.
pub(super) fn fetcher(
    base: &url::Url,
    relay: Option<String>,
) -> Result<Fetcher, relay_release::Error> {
    let fetcher = Fetcher::try_new(Layout::try_new(base.as_str())?, Limits::default())?;
    Ok(match relay {
        Some(relay) => fetcher.with_relay(relay),
        None => fetcher,
    })
}

/// Downloads, verifies and stages the release.
async fn stage(
    home: &Path,
    base: &url::Url,
    relay: Option<String>,
    trust: &Trust,
    running: &Version,
    version: &Version,
) -> Result<(), relay_release::Error> {
    let fetcher = fetcher(base, relay)?;
    let (keys, expected) = relay_release::trust::release_check(trust, home, version, running)?;
    let dest = destination(home);
    // What a previous attempt staged and still verifies (the supervisor was busy, say) is not
    // downloaded again.
    if already_staged(&dest, &keys, &expected) {
        info!(version = %version, "already staged, and it verifies again: not downloading it again");
        return Ok(());
    }
    let mut last_tenth = 0;
    // Bytes received over every attempt, for the daily budget.
    let (mut received, mut last_done, mut size) = (0u64, 0u64, 0u64);
    let staged = fetcher
        .stage_release(&keys, &expected, &dest, |p| {
            // A smaller count than the last: a new attempt started from zero.
            received += if p.done >= last_done {
                p.done - last_done
            } else {
                p.done
            };
            last_done = p.done;
            size = p.total;
            let tenth = (p.done * 10).checked_div(p.total).unwrap_or(10);
            if tenth > last_tenth {
                last_tenth = tenth;
                info!(version = %version, done = p.done, total = p.total, "downloading");
            }
        })
        .await;
    Budget::add(home, version, received, size);
    let staged = staged?;
    info!(
        version = %version,
        signers = %staged.verified.signers.join(","),
        "release verified and staged as {}",
        NEXT
    );
    // The changelog is only shown: a slow one must not hold the staged release back from
    // the supervisor.
    match tokio::time::timeout(CHANGELOG_WAIT, fetcher.fetch_changelog(&staged.verified)).await {
        Ok(Ok(text)) => {
            let shown: Vec<&str> = text.lines().take(20).collect();
            info!(version = %version, "changelog:\n{}", shown.join("\n"));
        }
        Ok(Err(e)) => warn!(version = %version, error = %e, "no changelog"),
        Err(_) => warn!(version = %version, "no changelog: not fetched within {CHANGELOG_WAIT:?}"),
    }
    Ok(())
}

/// How long the supervisor has to answer a skip (it checks a signature and adds a line).
const SKIP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Adds `version` to the skip list, its signed `statement` (listing no binary for this host)
/// the reason: written here when this process may, else (privilege separation: the list is the
/// supervisor's) asked of the supervisor, which verifies the statement itself. Whether it is
/// skipped now.
async fn skip_version(home: PathBuf, version: Version, statement: String) -> bool {
    use wireleap_home::control::{Request, call};
    let v = version.clone();
    let done =
        tokio::task::spawn_blocking(
            move || match wireleap_home::skip::SkipList::add(&home, &v) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    let asked = Request::Skip {
                        version: v.to_string(),
                        statement,
                    };
                    match call(&home, &asked, SKIP_WAIT) {
                        Ok(reply) if reply.ok => Ok(()),
                        Ok(reply) => Err(format!(
                            "{e}; the supervisor did not add it either: {}",
                            reply.error.unwrap_or_default()
                        )),
                        Err(unanswered) => {
                            Err(format!("{e}; no supervisor answered: {unanswered}"))
                        }
                    }
                }
                done => done.map_err(|e| e.to_string()),
            },
        )
        .await;
    let why = match done {
        Ok(Ok(())) => return true,
        Ok(Err(why)) => why,
        Err(e) => e.to_string(),
    };
    warn!(version = %version, error = %why, "could not add the version to the skip list");
    false
}

async fn ask_supervisor(home: PathBuf, version: Version) -> Outcome {
    let asked = version.clone();
    match tokio::task::spawn_blocking(move || hand_over(&home, &asked)).await {
        Ok(Handover::Committed) => Outcome::Committed(version),
        Ok(Handover::Refused(why)) => Outcome::RolledBack(version, why),
        Ok(Handover::NoSupervisor) => Outcome::Unsupervised(version),
        Ok(Handover::NoAnswer(e)) => Outcome::Failed {
            version,
            why: format!("no answer from the supervisor: {e}"),
            skipped: false,
            server: false,
        },
        Err(e) => Outcome::Failed {
            version,
            why: e.to_string(),
            skipped: false,
            server: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_release_that_still_verifies_is_not_downloaded_again() {
        use relay_release::{
            Expected, ExpiryCheck, FileEntry, Product, SigningKey, Statement, Target, VersionFloor,
            layout::asset_name, manifest::whole_seconds, sign,
        };
        use std::time::{Duration, SystemTime};
        let home = tempfile::tempdir().unwrap();
        let dest = destination(home.path());
        let issued = whole_seconds(SystemTime::now() - Duration::from_secs(60));
        let key =
            SigningKey::generate_at("test <t@example.test>", issued - Duration::from_secs(60))
                .unwrap();
        let target = Target::host().unwrap();
        let asset = asset_name(&Product::relay(), &target);
        std::fs::write(&dest.binary, b"the relay").unwrap();
        let entry = FileEntry::digest(
            &asset,
            std::fs::File::open(&dest.binary).unwrap(),
            &dest.binary,
        )
        .unwrap();
        let version = Version::new(9, 9, 9);
        let statement = Statement {
            product: Product::relay(),
            version: version.clone(),
            target: target.clone(),
            issued,
            expires: issued + Duration::from_secs(3600),
            files: vec![entry],
        };
        let signed = sign::sign_statement(&key, &statement, &asset).unwrap();
        std::fs::write(&dest.statement, signed).unwrap();
        let expected = Expected {
            product: Product::relay(),
            version,
            target,
            floor: VersionFloor::Above {
                running: Version::new(1, 0, 0),
                highest_committed: None,
            },
            expiry: ExpiryCheck::At(SystemTime::now()),
        };
        let keys = key.trusted().unwrap();
        assert!(already_staged(&dest, &keys, &expected));
        // Changed since: downloaded again.
        std::fs::write(&dest.binary, b"the relax").unwrap();
        assert!(!already_staged(&dest, &keys, &expected));
    }

    #[test]
    fn a_version_downloaded_four_times_over_today_waits_for_tomorrow() {
        let home = tempfile::tempdir().unwrap();
        let v = Version::new(1, 2, 3);
        Budget::add(home.path(), &v, 250, 100);
        assert_eq!(Budget::load(home.path()).exhausted(&v), None);
        Budget::add(home.path(), &v, 150, 100);
        let why = Budget::load(home.path()).exhausted(&v).unwrap();
        assert!(why.contains("400 bytes"), "{why}");
        assert_eq!(
            Budget::load(home.path()).exhausted(&Version::new(1, 2, 4)),
            None
        );
        // Yesterday's spending does not count.
        let path = home.path().join(wireleap_home::files::DOWNLOAD_BUDGET);
        let mut old = Budget::load(home.path());
        old.day -= 1;
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(Budget::load(home.path()).exhausted(&v), None);
    }
}

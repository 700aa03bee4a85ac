//! The relay's side of phased rollouts: whether the rollout document of a version lets this
//! relay act now, the serials it accepted (replay protection), and the outcome reports it owes
//! the release server.
//!
//! Files (names owned by `wireleap_home::files`): [`ROLLOUT_SEEN`] (the highest serial accepted
//! per version) and [`OUTCOME_REPORTS`] (signed reports not yet delivered, one per line). Both
//! are small, bounded and written atomically; an unreadable file is started afresh (a lost
//! serial only weakens replay protection until the next document; a lost report is a count the
//! service misses).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use relay_release::fetch::Fetcher;
use relay_release::outcome::{Outcome, Report};
use relay_release::rollout::{Gate, position};
use relay_release::{Error, Trust};
use semver::Version;
use tracing::warn;
use wireleap_home::files::{OUTCOME_REPORTS, ROLLOUT_SEEN};
use wireleap_home::journal::Step as Kind;

use crate::identity::Identity;

/// The most versions whose serial is remembered (the oldest are forgotten).
const SEEN_KEPT: usize = 32;
/// The most undelivered reports kept (the oldest are dropped).
const REPORTS_KEPT: usize = 32;
/// The cap on either file.
const FILE_CAP: u64 = 256 * 1024;

/// What the rollout document of a version says for this relay now.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The server publishes no rollout document for it (or the trusted root has no rollout
    /// role): the version is not phased, act at once.
    NotPhased,
    /// The document's verdict for this relay's position (in percent), its serial and whether
    /// it recalls the version.
    Phased {
        /// The gate at this relay's position.
        gate: Gate,
        /// This relay's position in [0, 100).
        position: f64,
        /// The document's serial.
        serial: u64,
        /// The document as served when it recalls the version (what the supervisor verifies
        /// before it rolls back).
        recall: Option<String>,
        /// When the document was issued.
        issued: SystemTime,
    },
}

/// A fetcher for `base`, naming this relay.
fn fetcher(base: &url::Url, identity: &Identity) -> Result<Fetcher, Error> {
    super::job::fetcher(base, Some(identity.public_key_b64()))
}

/// Fetches and verifies the rollout document of `version` and decides for this relay. An
/// accepted document's serial is remembered.
///
/// # Errors
///
/// Download errors; a refused document ([`Error::RolloutExpired`], [`Error::RolloutReplayed`],
/// a bad signature, ...): the caller does not act on the version.
pub async fn check(
    home: &Path,
    base: &url::Url,
    identity: &Identity,
    version: &Version,
) -> Result<Check, Error> {
    let now = SystemTime::now();
    let fetcher = fetcher(base, identity)?;
    // Trust that cannot be loaded holds the version back (it is not "not phased"); a rotation
    // may change the rollout keys, so it is followed first.
    let mut trust = Trust::load(home)?;
    fetcher.update_root(&mut trust).await?;
    let keys = trust.rollout_keys(now)?;
    // Without a rollout role nothing is phased, and nothing is asked for.
    if keys.is_empty() {
        return Ok(Check::NotPhased);
    }
    let seen = load_seen(home).get(&version.to_string()).copied();
    let key = wireleap_protocol::PublicKey::from(identity.signing_key());
    match fetcher.fetch_rollout(version, &keys, now, seen).await {
        Ok(None) => match seen {
            // Once phased, a version stays phased: a 404 now is a stripped document.
            Some(seen) => Err(Error::RolloutWithdrawn {
                version: version.clone(),
                seen,
            }),
            None => Ok(Check::NotPhased),
        },
        Err(e) => Err(e),
        Ok(Some(doc)) => {
            remember_serial(home, version, doc.document.serial);
            let at = position(key.as_bytes(), version);
            Ok(Check::Phased {
                gate: doc.gate(at, now),
                position: at,
                serial: doc.document.serial,
                recall: doc.document.recall.then_some(doc.served),
                issued: doc.issued,
            })
        }
    }
}

/// Fetches `channels.json`: whether the release server's channel information is reachable.
///
/// # Errors
///
/// Download errors, [`Error::Channels`].
pub async fn channels_fresh(base: &url::Url, identity: &Identity) -> Result<(), Error> {
    let fetcher = fetcher(base, identity)?;
    match tokio::time::timeout(
        relay_release::fetch::SMALL_DEADLINE,
        fetcher.fetch_channels(),
    )
    .await
    {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(Error::DeadlineExceeded {
            deadline: relay_release::fetch::SMALL_DEADLINE,
        }),
    }
}

fn load_seen(home: &Path) -> BTreeMap<String, u64> {
    wireleap_home::durable::read_regular(&home.join(ROLLOUT_SEEN), FILE_CAP, None)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn remember_serial(home: &Path, version: &Version, serial: u64) {
    let mut seen = load_seen(home);
    let key = version.to_string();
    if seen.get(&key).is_some_and(|s| *s >= serial) {
        return;
    }
    seen.insert(key, serial);
    while seen.len() > SEEN_KEPT {
        // Forget the lowest version (newer ones matter).
        let lowest = seen
            .keys()
            .min_by(|a, b| match (Version::parse(a), Version::parse(b)) {
                (Ok(a), Ok(b)) => a.cmp(&b),
                _ => a.cmp(b),
            })
            .cloned();
        if let Some(k) = lowest {
            seen.remove(&k);
        }
    }
    let path = home.join(ROLLOUT_SEEN);
    let bytes = serde_json::to_vec_pretty(&seen).unwrap_or_default();
    if let Err(e) = wireleap_home::durable::write_atomic(&path, &bytes, 0o600) {
        warn!(path = %path.display(), error = %e, "could not remember the rollout document's serial");
    }
}

/// The undelivered reports and how far the journal has been reported.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Reports {
    /// Journal entries up to this time (ms since the epoch) have been reported.
    journal_ms: u64,
    /// Signed envelopes not yet delivered, oldest first.
    queue: Vec<String>,
}

/// Journal entries older than this when first seen are not reported (a relay that joins the
/// rollouts late does not report its history).
const REPORT_AGE_MS: u64 = 24 * 3600 * 1000;

/// Queues a signed report for each upgrade the supervisor committed or rolled back since the
/// last call (read from its journal: the relay generation that asked for an upgrade has usually
/// stopped by the time the outcome is known, so the generation that runs afterwards reports it).
pub fn queue_from_journal(home: &Path, identity: &Identity) {
    let mut reports = load_reports(home);
    let journal = wireleap_home::journal::read(home);
    let now = wireleap_home::time::now_ms();
    let relay = wireleap_protocol::PublicKey::from(identity.signing_key());
    let mut until = reports.journal_ms;
    // A version the supervisor skipped failed by its own fault.
    let skipped = wireleap_home::skip::SkipList::load(home).unwrap_or_default();
    let skipped = |v: &str| Version::parse(v).is_ok_and(|v| skipped.contains(&v));
    for (i, entry) in journal.iter().enumerate() {
        if entry.time_ms <= reports.journal_ms {
            continue;
        }
        until = until.max(entry.time_ms);
        // The earlier steps of the same version, newest first.
        let earlier = || {
            journal[..i]
                .iter()
                .rev()
                .filter(|e| e.version == entry.version)
        };
        let (outcome, criterion) = match entry.step {
            Kind::Committed => (Outcome::Committed, None),
            Kind::RolledBack => (
                Outcome::RolledBack,
                Some(wireleap_home::control::failed_criterion(&entry.detail).unwrap_or("failed")),
            ),
            // The release's own supervisor failed its preflight or its trial (after the relay's
            // commit, which this report then replaces at the service).
            Kind::SupervisorRolledBack if skipped(&entry.version) => {
                (Outcome::RolledBack, Some("supervisor"))
            }
            // An upgrade its supervisor died in, undone and skipped at its next start (not one
            // a stop interrupted, nor an operator's rollback).
            Kind::Recovered
                if skipped(&entry.version)
                    && matches!(
                        earlier().next().map(|e| e.step),
                        Some(
                            Kind::Verified
                                | Kind::Migrated
                                | Kind::Swapped
                                | Kind::Committing
                                | Kind::CommitFailed
                        )
                    ) =>
            {
                (Outcome::RolledBack, Some("recovered"))
            }
            _ => continue,
        };
        if now.saturating_sub(entry.time_ms) > REPORT_AGE_MS {
            continue;
        }
        // The change's first step names the version it started from.
        let from = earlier()
            .find(|e| e.step == Kind::Verified)
            .and_then(|e| e.detail.strip_prefix("from "))
            .and_then(|v| Version::parse(v.trim()).ok());
        let (Ok(version), Some(from)) = (Version::parse(&entry.version), from) else {
            continue;
        };
        let report = Report::new(
            relay,
            &version,
            &from,
            outcome,
            criterion,
            wireleap_home::time::at_ms(entry.time_ms),
        );
        match report.sign(identity.signing_key()) {
            Ok(envelope) => reports
                .queue
                .push(String::from_utf8_lossy(&envelope).into_owned()),
            Err(e) => warn!(error = %e, "could not sign the upgrade outcome report"),
        }
    }
    if until != reports.journal_ms || !reports.queue.is_empty() {
        reports.journal_ms = until;
        save_reports(home, &reports);
    }
}

/// Sends the queued reports, oldest first; keeps what could not be delivered for a later try
/// (a report the server refuses outright is dropped). Returns (delivered, still queued).
pub async fn deliver(home: &Path, base: &url::Url, identity: &Identity) -> (usize, usize) {
    let queued = load_reports(home).queue;
    if queued.is_empty() {
        return (0, 0);
    }
    let Ok(fetcher) = fetcher(base, identity) else {
        return (0, queued.len());
    };
    let mut kept = Vec::new();
    let mut delivered = 0;
    for (i, envelope) in queued.iter().enumerate() {
        match fetcher.post_report(envelope.clone().into_bytes()).await {
            Ok(()) => delivered += 1,
            Err(e) if e.is_retryable() || matches!(e, Error::Connect { .. }) => {
                warn!(error = %e, "upgrade outcome report not delivered; will try again");
                kept.extend(queued[i..].iter().cloned());
                break;
            }
            Err(e) => {
                warn!(error = %e, "upgrade outcome report refused by the release server; dropped")
            }
        }
    }
    // Reports queued meanwhile are kept too.
    let mut now = load_reports(home);
    kept.extend(now.queue.into_iter().filter(|r| !queued.contains(r)));
    now.queue = kept;
    save_reports(home, &now);
    (delivered, now.queue.len())
}

fn load_reports(home: &Path) -> Reports {
    wireleap_home::durable::read_regular(&home.join(OUTCOME_REPORTS), FILE_CAP, None)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_reports(home: &Path, reports: &Reports) {
    let path = home.join(OUTCOME_REPORTS);
    let start = reports.queue.len().saturating_sub(REPORTS_KEPT);
    let kept = Reports {
        journal_ms: reports.journal_ms,
        queue: reports.queue[start..].to_vec(),
    };
    let result = serde_json::to_vec_pretty(&kept)
        .map_err(std::io::Error::other)
        .and_then(|bytes| wireleap_home::durable::write_atomic(&path, &bytes, 0o600));
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "could not save the upgrade outcome reports");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_only_grow_and_each_journaled_outcome_is_reported_once() {
        let home = tempfile::tempdir().unwrap();
        let v = Version::new(1, 2, 3);
        remember_serial(home.path(), &v, 5);
        remember_serial(home.path(), &v, 3);
        assert_eq!(load_seen(home.path()).get("1.2.3"), Some(&5));
        for i in 0..40 {
            remember_serial(home.path(), &Version::new(2, i, 0), 1);
        }
        assert_eq!(load_seen(home.path()).len(), SEEN_KEPT);
        let id = Identity::generate();
        let journal = |version: &str, step: Kind, detail: &str| {
            wireleap_home::journal::append(home.path(), version, step, detail).unwrap();
        };
        journal("1.1.0", Kind::Verified, "from 1.0.0");
        journal("1.1.0", Kind::Committed, "");
        journal("1.2.0", Kind::Verified, "from 1.1.0");
        journal(
            "1.2.0",
            Kind::RolledBack,
            "health: probe: ping 1 of 3: no answer",
        );
        queue_from_journal(home.path(), &id);
        queue_from_journal(home.path(), &id);
        let queued = load_reports(home.path()).queue;
        assert_eq!(queued.len(), 2, "each outcome once: {queued:?}");
        let first = Report::verify(queued[0].as_bytes()).unwrap();
        assert_eq!(
            (first.version.as_str(), first.from.as_str()),
            ("1.1.0", "1.0.0")
        );
        assert_eq!(first.outcome, Outcome::Committed);
        let second = Report::verify(queued[1].as_bytes()).unwrap();
        assert_eq!(second.outcome, Outcome::RolledBack);
        assert_eq!(second.criterion.as_deref(), Some("probe"));
    }

    #[test]
    fn a_release_undone_at_a_restart_or_by_its_own_supervisor_is_reported_rolled_back() {
        let home = tempfile::tempdir().unwrap();
        let journal = |version: &str, step: Kind, detail: &str| {
            wireleap_home::journal::append(home.path(), version, step, detail).unwrap();
        };
        // Undone at the supervisor's next start, skipped: the release's.
        journal("1.1.0", Kind::Verified, "from 1.0.0");
        journal("1.1.0", Kind::Swapped, "");
        journal(
            "1.1.0",
            Kind::Recovered,
            "unfinished upgrade undone and skipped",
        );
        // Interrupted by a stop, not skipped: nobody's fault, not reported.
        journal("1.2.0", Kind::Verified, "from 1.0.0");
        journal("1.2.0", Kind::Recovered, "undone, not skipped: stopped");
        // Committed, then its own supervisor failed its trial: the report replaces "committed".
        journal("1.3.0", Kind::Verified, "from 1.0.0");
        journal("1.3.0", Kind::Committed, "");
        journal("1.3.0", Kind::SupervisorRolledBack, "no READY within 30s");
        for v in ["1.1.0", "1.3.0"] {
            wireleap_home::skip::SkipList::add(home.path(), &Version::parse(v).unwrap()).unwrap();
        }
        queue_from_journal(home.path(), &Identity::generate());
        let got: Vec<_> = load_reports(home.path())
            .queue
            .iter()
            .map(|r| Report::verify(r.as_bytes()).unwrap())
            .map(|r| (r.version, r.outcome, r.criterion))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "1.1.0".into(),
                    Outcome::RolledBack,
                    Some("recovered".into())
                ),
                ("1.3.0".into(), Outcome::Committed, None),
                (
                    "1.3.0".into(),
                    Outcome::RolledBack,
                    Some("supervisor".into())
                ),
            ]
        );
    }
}

//! Upgrade outcome reports: what each relay tells the rollout service after an upgrade, signed
//! with its relay key, and how the service counts them per rollout step and decides to halt.
//!
//! A report is POSTed to `<base>/reports` as a JSON envelope:
//!
//! ```json
//! {"report": "<the report's JSON text>", "signature": "<ed25519 signature of that text, base64url>"}
//! ```
//!
//! and the report's text is
//!
//! ```json
//! {"format": "wireleap-outcome/1", "relay": "<relay public key>", "version": "0.9.0",
//!  "from": "0.8.0", "outcome": "rolled-back", "criterion": "probe", "time": "2026-12-02T10:00:00Z"}
//! ```
//!
//! The signature is over exactly the bytes of `report`, by the key it names, so a report cannot
//! be forged for another relay. Each relay counts once per version (its latest report wins), and
//! only in the step its position puts it in, once that step is open: a relay that could not have
//! tried the version yet is not counted (made-up relay keys cannot halt a rollout by reporting
//! from steps that are not open).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wireleap_protocol::{PublicKey, Signature, SigningKey};

use crate::Error;
use crate::error::clip;
use crate::rollout::{Step, position, step_of};

/// The `format` of a report.
pub const REPORT_FORMAT: &str = "wireleap-outcome/1";

/// Where reports are POSTed, relative to the release server's base URL.
pub const REPORTS_PATH: &str = "reports";

/// The cap on a report envelope's size.
pub const MAX_REPORT_SIZE: usize = 4 * 1024;

/// The longest criterion name.
const MAX_CRITERION: usize = 32;

/// How an upgrade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The supervisor committed the version.
    Committed,
    /// The supervisor rolled it back (a health criterion failed, or it crashed or was refused).
    RolledBack,
}

/// One relay's report of one upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`REPORT_FORMAT`].
    pub format: String,
    /// The relay's public key (its identity in the directory).
    pub relay: PublicKey,
    /// The version tried.
    pub version: String,
    /// The version it ran before.
    pub from: String,
    /// How it ended.
    pub outcome: Outcome,
    /// For a rollback, the health criterion that failed (`liveness`, `memory`, `probe`,
    /// `enrollment`, `streams`) or what else ended it (`exited`, `refused`).
    pub criterion: Option<String>,
    /// When it ended, RFC 3339 UTC.
    pub time: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    report: String,
    signature: Signature,
}

/// How the service counted a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Counted in this step (0-based).
    Step(usize),
    /// The relay's position is in no step open at the time: not counted.
    NotOpen,
}

/// Outcomes per step of one version's rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Each reporting relay's latest outcome and step, by public key.
    relays: BTreeMap<PublicKey, (Outcome, usize, Option<String>)>,
    /// The counts per step, kept as reports come (so a halt decision does not walk every
    /// relay).
    #[serde(default)]
    counts: BTreeMap<usize, StepCount>,
}

/// Counts of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCount {
    /// Relays that committed.
    pub committed: u64,
    /// Relays that rolled back.
    pub rolled_back: u64,
}

// === impl Report ===

impl Report {
    /// A report by `relay` of an upgrade from `from` to `version` that ended with `outcome`.
    #[must_use]
    pub fn new(
        relay: PublicKey,
        version: &semver::Version,
        from: &semver::Version,
        outcome: Outcome,
        criterion: Option<&str>,
        time: std::time::SystemTime,
    ) -> Self {
        Self {
            format: REPORT_FORMAT.to_owned(),
            relay,
            version: version.to_string(),
            from: from.to_string(),
            outcome,
            criterion: criterion.map(|c| c.chars().take(MAX_CRITERION).collect()),
            time: crate::manifest::format_time(time),
        }
    }

    /// The envelope to POST, signed with the relay's key.
    ///
    /// # Errors
    ///
    /// [`Error::BadReport`] if `key` is not the key the report names.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, Error> {
        if PublicKey::from(key) != self.relay {
            return Err(bad("signed by a key other than the relay's own".to_owned()));
        }
        let report = serde_json::to_string(self).map_err(|e| bad(e.to_string()))?;
        let signature = wireleap_protocol::keys::sign(key, report.as_bytes());
        serde_json::to_vec(&Envelope { report, signature }).map_err(|e| bad(e.to_string()))
    }

    /// Parses and checks an envelope as received: size, framing, the relay's signature over the
    /// report's exact bytes, then the fields.
    ///
    /// # Errors
    ///
    /// [`Error::BadReport`] with what is wrong.
    pub fn verify(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_REPORT_SIZE {
            return Err(bad(format!("larger than {MAX_REPORT_SIZE} bytes")));
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("envelope: {e}")))?;
        // Only the key is read before the signature is checked.
        #[derive(Deserialize)]
        struct Who {
            relay: PublicKey,
        }
        let who: Who =
            serde_json::from_str(&envelope.report).map_err(|e| bad(format!("report: {e}")))?;
        if !who
            .relay
            .verify(envelope.report.as_bytes(), &envelope.signature)
        {
            return Err(bad(format!(
                "the signature is not relay {}'s over this report",
                who.relay
            )));
        }
        let report: Self =
            serde_json::from_str(&envelope.report).map_err(|e| bad(format!("report: {e}")))?;
        if report.format != REPORT_FORMAT {
            return Err(bad(format!(
                "format {:?} is not {REPORT_FORMAT:?}",
                clip(&report.format)
            )));
        }
        report.parsed_version()?;
        crate::version::parse_version(&report.from).map_err(|e| bad(format!("from: {e}")))?;
        if crate::manifest::parse_time(&report.time).is_none() {
            return Err(bad(format!(
                "time {:?} is not RFC 3339 UTC",
                clip(&report.time)
            )));
        }
        if let Some(c) = &report.criterion
            && (c.is_empty()
                || c.len() > MAX_CRITERION
                || !c.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        {
            return Err(bad(format!(
                "criterion {:?} is not 1 to {MAX_CRITERION} of a-z and -",
                clip(c)
            )));
        }
        Ok(report)
    }

    /// The version tried.
    ///
    /// # Errors
    ///
    /// [`Error::BadReport`] if it does not parse.
    pub fn parsed_version(&self) -> Result<semver::Version, Error> {
        crate::version::parse_version(&self.version).map_err(|e| bad(format!("version: {e}")))
    }
}

// === impl Tally ===

impl Tally {
    /// Counts `report` (of this tally's version) under the schedule `steps`, of which the
    /// cumulative `open_percent` is open now. The relay's latest report replaces an earlier one.
    pub fn record(&mut self, report: &Report, steps: &[Step], open_percent: f64) -> Counted {
        let Ok(version) = report.parsed_version() else {
            return Counted::NotOpen;
        };
        let at = position(report.relay.as_bytes(), &version);
        match step_of(steps, at) {
            Some(step) if at < open_percent => {
                let before = self.relays.insert(
                    report.relay,
                    (report.outcome, step, report.criterion.clone()),
                );
                if let Some((outcome, step, _)) = before {
                    self.count(step, outcome, false);
                }
                self.count(step, report.outcome, true);
                Counted::Step(step)
            }
            _ => Counted::NotOpen,
        }
    }

    fn count(&mut self, step: usize, outcome: Outcome, add: bool) {
        let count = self.counts.entry(step).or_default();
        let n = match outcome {
            Outcome::Committed => &mut count.committed,
            Outcome::RolledBack => &mut count.rolled_back,
        };
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
    }

    /// How many relays reported.
    #[must_use]
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether no relay reported.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// Whether `relay` reported.
    #[must_use]
    pub fn has(&self, relay: &PublicKey) -> bool {
        self.relays.contains_key(relay)
    }

    /// The counts of each of `steps` steps.
    #[must_use]
    pub fn per_step(&self, steps: usize) -> Vec<StepCount> {
        (0..steps)
            .map(|i| self.counts.get(&i).copied().unwrap_or_default())
            .collect()
    }

    /// Rollbacks by criterion.
    #[must_use]
    pub fn criteria(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (outcome, _, criterion) in self.relays.values() {
            if *outcome == Outcome::RolledBack {
                *out.entry(criterion.clone().unwrap_or_else(|| "unknown".to_owned()))
                    .or_insert(0) += 1;
            }
        }
        out
    }

    /// Why the rollout must halt, if it must: `halt_after` rollbacks or more in one step.
    #[must_use]
    pub fn halt_reason(&self, steps: usize, halt_after: u64) -> Option<String> {
        self.per_step(steps)
            .iter()
            .enumerate()
            .find(|(_, c)| c.rolled_back >= halt_after.max(1))
            .map(|(i, c)| {
                format!(
                    "{} relays of step {} rolled back (halt after {halt_after}); {} committed",
                    c.rolled_back,
                    i + 1,
                    c.committed
                )
            })
    }
}

fn bad(reason: String) -> Error {
    Error::BadReport { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    fn report(key: &SigningKey, outcome: Outcome) -> Report {
        Report::new(
            PublicKey::from(key),
            &v("0.9.0"),
            &v("0.8.0"),
            outcome,
            Some("probe"),
            std::time::SystemTime::now(),
        )
    }

    #[test]
    fn a_signed_report_verifies_and_a_changed_one_does_not() {
        let key = wireleap_protocol::keys::generate_signing_key();
        let r = report(&key, Outcome::RolledBack);
        let bytes = r.sign(&key).unwrap();
        assert_eq!(Report::verify(&bytes).unwrap(), r);
        let text = String::from_utf8(bytes).unwrap();
        let forged = text.replace("rolled-back", "committed");
        let err = Report::verify(forged.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        let other = wireleap_protocol::keys::generate_signing_key();
        assert!(r.sign(&other).is_err());
        assert!(Report::verify(&vec![b' '; MAX_REPORT_SIZE + 1]).is_err());
        assert!(Report::verify(b"{}").is_err());
    }

    #[test]
    fn a_tally_counts_each_relay_once_in_its_open_step_and_halts_at_the_threshold() {
        let steps = [
            Step {
                after_secs: 0,
                percent: 10.0,
            },
            Step {
                after_secs: 60,
                percent: 100.0,
            },
        ];
        let mut tally = Tally::default();
        let mut first = Vec::new();
        let mut later = Vec::new();
        while first.len() < 3 || later.is_empty() {
            let key = wireleap_protocol::keys::generate_signing_key();
            if position(PublicKey::from(&key).as_bytes(), &v("0.9.0")) < 10.0 {
                first.push(key);
            } else {
                later.push(key);
            }
        }
        // A relay of step 2 cannot have tried the version while only step 1 is open.
        assert_eq!(
            tally.record(&report(&later[0], Outcome::RolledBack), &steps, 10.0),
            Counted::NotOpen
        );
        let r = report(&first[0], Outcome::RolledBack);
        assert_eq!(tally.record(&r, &steps, 10.0), Counted::Step(0));
        assert_eq!(tally.record(&r, &steps, 10.0), Counted::Step(0));
        assert_eq!(tally.halt_reason(2, 2), None, "one relay counts once");
        tally.record(&report(&first[1], Outcome::Committed), &steps, 10.0);
        assert_eq!(tally.halt_reason(2, 2), None);
        tally.record(&report(&first[2], Outcome::RolledBack), &steps, 10.0);
        let why = tally.halt_reason(2, 2).unwrap();
        assert!(why.starts_with("2 relays of step 1 rolled back"), "{why}");
        assert_eq!(
            tally.per_step(2),
            [
                StepCount {
                    committed: 1,
                    rolled_back: 2
                },
                StepCount::default()
            ]
        );
        assert_eq!(tally.criteria().get("probe"), Some(&2));
    }
}

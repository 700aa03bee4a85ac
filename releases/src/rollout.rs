//! Phased rollouts: the signed rollout document of one version, each relay's position in it, and
//! whether the schedule has reached that position.
//!
//! A rollout document is a clear-signed JSON text (so `gpg --verify` checks it), served at
//! `<base>/v<VERSION>/rollout`:
//!
//! ```json
//! {
//!   "format": "wireleap-rollout/1",
//!   "product": "wireleap-relay",
//!   "version": "0.9.0",
//!   "serial": 12,
//!   "issued": "2026-12-02T10:00:00Z",
//!   "expires": "2026-12-02T16:00:00Z",
//!   "start": "2026-12-02T09:00:00Z",
//!   "steps": [{"after_secs": 0, "percent": 10}, {"after_secs": 86400, "percent": 50}, {"after_secs": 172800, "percent": 100}],
//!   "halted": false,
//!   "recall": false
//! }
//! ```
//!
//! - It is signed by the `rollout` role of the release root ([`crate::Role::Rollout`]): that
//!   key may schedule, halt and recall a version whose release statement is valid, nothing
//!   else (a release still needs the `release` role's statement).
//! - It is short-lived: `expires` is at most [`MAX_LIFETIME`] after `issued`, so the key can be
//!   held by an online service and a stolen document stops working within hours. An expired
//!   document is refused ([`Error::RolloutExpired`]).
//! - `serial` grows with every document the service issues for a version; a relay remembers
//!   the highest serial it accepted and refuses a lower one ([`Error::RolloutReplayed`]), so an
//!   old "not halted" document cannot be replayed over a halt.
//! - A relay's position is a number in [0, 100) from a hash of its public key and the version
//!   ([`position`]); it acts on a version once the schedule's cumulative percent is above its
//!   position ([`Document::gate`]). Positions are uniform and differ per version, so the
//!   first wave is a different sample of relays each time.
//! - `halted` stops every relay that has not started the version; `recall` makes relays that
//!   committed it go back to their previous version.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha512};

use crate::Error;
use crate::error::clip;
use crate::keys::{SigningKey, TrustedKeys};
use crate::manifest::{format_time, parse_time};
use crate::version::parse_version;

/// The `format` of a rollout document.
pub const ROLLOUT_FORMAT: &str = "wireleap-rollout/1";

/// The file name of a version's rollout document on the release server: `v<VERSION>/rollout`.
pub const ROLLOUT_NAME: &str = "rollout";

/// The longest a rollout document may be valid: it is signed by an online key.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How far in the future `issued` may be (clock skew between the service and a relay).
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// The most steps a schedule may have.
pub const MAX_STEPS: usize = 64;

/// The latest a step may open after the start: a year.
pub const MAX_OFFSET_SECS: u64 = 366 * 24 * 3600;

/// One step of a schedule: from `after_secs` after the start, `percent` of the relays (in all,
/// not in addition) may take the version.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Seconds after the rollout's start at which the step opens.
    pub after_secs: u64,
    /// The cumulative share of relays, in percent (0 < percent <= 100).
    pub percent: f64,
}

/// A rollout document's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// [`ROLLOUT_FORMAT`].
    pub format: String,
    /// The product, `wireleap-relay`.
    pub product: String,
    /// The version this document schedules.
    pub version: String,
    /// Grows with every document issued for this version.
    pub serial: u64,
    /// When it was issued, RFC 3339 UTC.
    pub issued: String,
    /// When it stops being valid, RFC 3339 UTC (at most [`MAX_LIFETIME`] after `issued`).
    pub expires: String,
    /// When the schedule's offsets count from, RFC 3339 UTC.
    pub start: String,
    /// The schedule, offsets non-decreasing and percents increasing.
    pub steps: Vec<Step>,
    /// No relay that has not started the version may start it.
    pub halted: bool,
    /// Relays that committed the version go back to their previous one.
    pub recall: bool,
}

/// What a relay at some position may do with the version now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The schedule has reached the position: go ahead.
    Open {
        /// The step (0-based) the position belongs to.
        step: usize,
    },
    /// Not yet: the position's step opens at `opens` (`None`: no step reaches the position).
    Wait {
        /// The step the position belongs to, if any.
        step: Option<usize>,
        /// When that step opens.
        opens: Option<SystemTime>,
    },
    /// The rollout is halted.
    Halted,
}

/// A document whose signature and fields checked out.
#[derive(Debug, Clone)]
pub struct VerifiedRollout {
    /// The document.
    pub document: Document,
    /// Its version, parsed.
    pub version: semver::Version,
    /// Its start.
    pub start: SystemTime,
    /// When it was issued (signed: how fresh the release server's information is).
    pub issued: SystemTime,
    /// Its expiry.
    pub expires: SystemTime,
    /// Who signed it (uppercase hex fingerprints).
    pub signers: Vec<String>,
    /// The document as served (its clear-signed text): a relay passes a recall on to its
    /// supervisor, which verifies it again.
    pub served: String,
}

/// A relay's position in the rollout of `version`: a number in [0, 100) from SHA-512 of a
/// domain tag, the relay's public key and the version.
#[must_use]
pub fn position(relay_key: &[u8], version: &semver::Version) -> f64 {
    let mut h = Sha512::new();
    h.update(b"wireleap-rollout-position/1\0");
    h.update(relay_key);
    h.update(b"\0");
    h.update(version.to_string().as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits: exactly representable, uniform in [0, 1).
    let unit = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    unit * 100.0
}

/// Where a schedule that started at `start` stands at `now`: the cumulative percent of the
/// last step open (0 before the first).
#[must_use]
pub fn percent_at(steps: &[Step], start: SystemTime, now: SystemTime) -> f64 {
    let Ok(since) = now.duration_since(start) else {
        return 0.0;
    };
    steps
        .iter()
        .take_while(|s| s.after_secs <= since.as_secs())
        .last()
        .map_or(0.0, |s| s.percent)
}

/// A schedule from `(after_secs, percent)` pairs.
#[must_use]
pub fn steps(list: &[(u64, f64)]) -> Vec<Step> {
    list.iter()
        .map(|&(after_secs, percent)| Step {
            after_secs,
            percent,
        })
        .collect()
}

/// The step (0-based) that a position belongs to: the first whose percent is above it.
#[must_use]
pub fn step_of(steps: &[Step], position: f64) -> Option<usize> {
    steps.iter().position(|s| position < s.percent)
}

// === impl Document ===

impl Document {
    /// A new document for `version`, checked as a verifier would check it.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedRollout`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        version: &semver::Version,
        serial: u64,
        issued: SystemTime,
        lifetime: Duration,
        start: SystemTime,
        steps: Vec<Step>,
        halted: bool,
        recall: bool,
    ) -> Result<Self, Error> {
        let doc = Self {
            format: ROLLOUT_FORMAT.to_owned(),
            product: crate::Product::relay().to_string(),
            version: version.to_string(),
            serial,
            issued: format_time(issued),
            expires: format_time(issued + lifetime),
            start: format_time(start),
            steps,
            halted,
            recall,
        };
        doc.checked()?;
        Ok(doc)
    }

    /// Parses a document's signed text (JSON) and checks its fields.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedRollout`] with what is wrong.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let doc: Self = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        doc.checked()?;
        Ok(doc)
    }

    /// The JSON text to sign.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedRollout`] (not expected for a checked document).
    pub fn render(&self) -> Result<String, Error> {
        let mut text = serde_json::to_string_pretty(self).map_err(|e| malformed(e.to_string()))?;
        text.push('\n');
        Ok(text)
    }

    /// Clear-signs the document with `keys` (the rollout role's), signatures made at `at`.
    ///
    /// # Errors
    ///
    /// [`Error::Sign`], [`Error::Key`].
    pub fn sign(&self, keys: &[SigningKey], at: SystemTime) -> Result<Vec<u8>, Error> {
        crate::sign::clearsign_by(keys, &self.render()?, at)
    }

    /// The times and version, checked; every field rule.
    fn checked(&self) -> Result<(semver::Version, SystemTime, SystemTime, SystemTime), Error> {
        if self.format != ROLLOUT_FORMAT {
            return Err(malformed(format!(
                "format {:?} is not {ROLLOUT_FORMAT:?}",
                clip(&self.format)
            )));
        }
        if self.product != crate::Product::relay().to_string() {
            return Err(malformed(format!(
                "product {:?} is not {}",
                clip(&self.product),
                crate::Product::relay()
            )));
        }
        let version =
            parse_version(&self.version).map_err(|e| malformed(format!("version: {e}")))?;
        let time = |field: &str, text: &str| {
            parse_time(text).ok_or_else(|| {
                malformed(format!(
                    "{field} {:?} is not an RFC 3339 UTC time like 2027-01-31T00:00:00Z",
                    clip(text)
                ))
            })
        };
        let issued = time("issued", &self.issued)?;
        let expires = time("expires", &self.expires)?;
        let start = time("start", &self.start)?;
        if expires <= issued {
            return Err(malformed("expires is not after issued".to_owned()));
        }
        if expires.duration_since(issued).unwrap_or_default() > MAX_LIFETIME {
            return Err(malformed(format!(
                "valid for longer than {} hours (issued {}, expires {}): a rollout document is short-lived",
                MAX_LIFETIME.as_secs() / 3600,
                self.issued,
                self.expires
            )));
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(malformed(format!(
                "has {} steps: 1 to {MAX_STEPS} are allowed",
                self.steps.len()
            )));
        }
        let mut before: Option<Step> = None;
        for (i, step) in self.steps.iter().enumerate() {
            let n = i + 1;
            if step.after_secs > MAX_OFFSET_SECS {
                return Err(malformed(format!(
                    "step {n}: after_secs {} is more than a year",
                    step.after_secs
                )));
            }
            if !step.percent.is_finite() || step.percent <= 0.0 || step.percent > 100.0 {
                return Err(malformed(format!(
                    "step {n}: percent {} is not above 0 and at most 100",
                    step.percent
                )));
            }
            if let Some(prev) = before {
                if step.percent <= prev.percent {
                    return Err(malformed(format!(
                        "step {n}: percent {} is not above step {i}'s {} (percents are cumulative)",
                        step.percent, prev.percent
                    )));
                }
                if step.after_secs < prev.after_secs {
                    return Err(malformed(format!(
                        "step {n}: after_secs {} is before step {i}'s {}",
                        step.after_secs, prev.after_secs
                    )));
                }
            }
            before = Some(*step);
        }
        Ok((version, issued, expires, start))
    }

    /// Where the schedule stands at `now`: the cumulative percent of the last step open.
    #[must_use]
    pub fn percent_at(&self, start: SystemTime, now: SystemTime) -> f64 {
        percent_at(&self.steps, start, now)
    }

    /// When step `step` opens.
    #[must_use]
    pub fn opens(&self, start: SystemTime, step: usize) -> Option<SystemTime> {
        self.steps
            .get(step)
            .and_then(|s| start.checked_add(Duration::from_secs(s.after_secs)))
    }
}

// === impl VerifiedRollout ===

impl VerifiedRollout {
    /// What a relay at `position` may do at `now`.
    #[must_use]
    pub fn gate(&self, position: f64, now: SystemTime) -> Gate {
        if self.document.halted {
            return Gate::Halted;
        }
        let step = step_of(&self.document.steps, position);
        if self.document.percent_at(self.start, now) > position {
            // The step is open (a position below an open percent always has a step).
            return Gate::Open {
                step: step.unwrap_or(0),
            };
        }
        Gate::Wait {
            step,
            opens: step.and_then(|s| self.document.opens(self.start, s)),
        }
    }
}

/// Verifies a rollout document of `version` (as served) with the rollout role's `keys` at
/// `now`. `seen` is the highest serial this relay accepted for the version before.
///
/// # Errors
///
/// The signature's errors (a document signed by a key without the rollout role is
/// [`Error::UnknownKey`]), [`Error::NoRolloutRole`] when the trusted root has no rollout role,
/// [`Error::MalformedRollout`], [`Error::RolloutVersionMismatch`],
/// [`Error::RolloutExpired`], [`Error::RolloutReplayed`].
pub fn verify(
    bytes: &[u8],
    keys: &TrustedKeys,
    version: &semver::Version,
    now: SystemTime,
    seen: Option<u64>,
) -> Result<VerifiedRollout, Error> {
    if keys.is_empty() {
        return Err(Error::NoRolloutRole);
    }
    let signed = crate::verify::signed_text(bytes, keys, now)?;
    let served = String::from_utf8(bytes.to_vec())
        .map_err(|_| malformed("the signed document is not UTF-8 text".to_owned()))?;
    let document = Document::parse(&signed.text)?;
    let (signed_version, issued, expires, start) = document.checked()?;
    if signed_version != *version {
        return Err(Error::RolloutVersionMismatch {
            asked: version.clone(),
            signed: signed_version,
        });
    }
    if now >= expires {
        return Err(Error::RolloutExpired {
            expires: document.expires.clone(),
            now: format_time(now),
        });
    }
    if issued > now + MAX_SKEW {
        return Err(malformed(format!(
            "issued {} is in the future (now {})",
            document.issued,
            format_time(now)
        )));
    }
    if let Some(seen) = seen
        && document.serial < seen
    {
        return Err(Error::RolloutReplayed {
            version: version.clone(),
            serial: document.serial,
            seen,
        });
    }
    Ok(VerifiedRollout {
        version: signed_version,
        start,
        issued,
        expires,
        signers: signed.signers,
        document,
        served,
    })
}

fn malformed(reason: String) -> Error {
    Error::MalformedRollout { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    fn doc(at: SystemTime) -> Document {
        Document::new(
            &v("0.9.0"),
            3,
            at,
            Duration::from_secs(3600),
            at,
            steps(&[(0, 10.0), (60, 50.0), (120, 100.0)]),
            false,
            false,
        )
        .unwrap()
    }

    struct Keys {
        rollout: SigningKey,
        release: SigningKey,
        trusted: TrustedKeys,
    }

    fn keys() -> Keys {
        let made = SystemTime::now() - Duration::from_secs(24 * 3600);
        let rollout = SigningKey::generate_at("rollout <r@example.test>", made).unwrap();
        let release = SigningKey::generate_at("release <s@example.test>", made).unwrap();
        let trusted = rollout.trusted().unwrap().with_role(crate::Role::Rollout);
        Keys {
            rollout,
            release,
            trusted,
        }
    }

    #[test]
    fn a_signed_document_verifies_and_gates_by_position() {
        let k = keys();
        let now = SystemTime::now();
        let d = doc(now);
        let bytes = d.sign(std::slice::from_ref(&k.rollout), now).unwrap();
        let ok = verify(&bytes, &k.trusted, &v("0.9.0"), now, Some(3)).unwrap();
        assert_eq!(ok.document, d);
        assert_eq!(ok.gate(5.0, now), Gate::Open { step: 0 });
        let later = now + Duration::from_secs(60);
        assert_eq!(
            ok.gate(30.0, now),
            Gate::Wait {
                step: Some(1),
                opens: Some(ok.start + Duration::from_secs(60))
            }
        );
        // The start has second precision in the document.
        assert!(matches!(
            ok.gate(30.0, later + Duration::from_secs(1)),
            Gate::Open { step: 1 }
        ));
        let mut halted = d.clone();
        halted.halted = true;
        halted.serial = 4;
        let bytes = halted.sign(&[k.rollout], now).unwrap();
        let ok = verify(&bytes, &k.trusted, &v("0.9.0"), now, Some(3)).unwrap();
        assert_eq!(ok.gate(5.0, now), Gate::Halted);
    }

    #[test]
    fn an_expired_document_is_refused() {
        let k = keys();
        let then = SystemTime::now() - Duration::from_secs(7200);
        let bytes = doc(then).sign(&[k.rollout], then).unwrap();
        let err = verify(&bytes, &k.trusted, &v("0.9.0"), SystemTime::now(), None).unwrap_err();
        assert!(matches!(err, Error::RolloutExpired { .. }), "{err}");
    }

    #[test]
    fn a_replayed_document_is_refused() {
        let k = keys();
        let now = SystemTime::now();
        let bytes = doc(now).sign(&[k.rollout], now).unwrap();
        // The relay accepted serial 5 (say, a halt) before: serial 3 is a replay.
        let err = verify(&bytes, &k.trusted, &v("0.9.0"), now, Some(5)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::RolloutReplayed {
                    serial: 3,
                    seen: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("replay"), "{err}");
    }

    #[test]
    fn a_document_signed_by_a_key_without_the_rollout_role_is_refused() {
        let k = keys();
        let now = SystemTime::now();
        // A root that trusts both keys: one for releases (and roots), one for rollouts.
        let cert = |key: &SigningKey| {
            crate::keys::parse_certs(&key.public_armored().unwrap(), "test")
                .unwrap()
                .remove(0)
        };
        let role = |key: &SigningKey| crate::root::RoleKeys {
            threshold: 1,
            keys: vec![key.fingerprint()],
        };
        let root = crate::Root::new(
            1,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
            vec![cert(&k.rollout), cert(&k.release)],
            [
                (crate::Role::Root, role(&k.release)),
                (crate::Role::Release, role(&k.release)),
                (crate::Role::Rollout, role(&k.rollout)),
            ]
            .into(),
        )
        .unwrap();
        let rollout_keys = root.keys_for(crate::Role::Rollout);
        let good = doc(now)
            .sign(std::slice::from_ref(&k.rollout), now)
            .unwrap();
        assert!(verify(&good, &rollout_keys, &v("0.9.0"), now, None).is_ok());
        // The release key is trusted by this root, but not for rollouts.
        let bytes = doc(now)
            .sign(std::slice::from_ref(&k.release), now)
            .unwrap();
        let err = verify(&bytes, &rollout_keys, &v("0.9.0"), now, None).unwrap_err();
        assert!(matches!(err, Error::UnknownKey { .. }), "{err}");
        // A root without a rollout role trusts no rollout document at all.
        let none = TrustedKeys::empty().with_role(crate::Role::Rollout);
        let err = verify(&bytes, &none, &v("0.9.0"), now, None).unwrap_err();
        assert!(matches!(err, Error::NoRolloutRole), "{err}");
    }

    #[test]
    fn a_document_of_another_version_is_refused() {
        let k = keys();
        let now = SystemTime::now();
        let bytes = doc(now).sign(&[k.rollout], now).unwrap();
        let err = verify(&bytes, &k.trusted, &v("0.9.1"), now, None).unwrap_err();
        assert!(matches!(err, Error::RolloutVersionMismatch { .. }), "{err}");
    }

    #[test]
    fn malformed_documents_say_what_is_wrong() {
        let now = SystemTime::now();
        let bad = |steps_: Vec<Step>, life: u64| {
            Document::new(
                &v("1.0.0"),
                1,
                now,
                Duration::from_secs(life),
                now,
                steps_,
                false,
                false,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(bad(steps(&[(0, 50.0), (10, 40.0)]), 60).contains("not above step 1"));
        assert!(bad(steps(&[(10, 5.0), (0, 40.0)]), 60).contains("before step 1"));
        assert!(bad(steps(&[(0, 101.0)]), 60).contains("at most 100"));
        assert!(bad(steps(&[]), 60).contains("0 steps"));
        assert!(bad(steps(&[(0, 100.0)]), 2 * 24 * 3600).contains("short-lived"));
        assert!(bad(steps(&[(0, 10.0), (u64::MAX, 100.0)]), 60).contains("more than a year"));
        let err = Document::parse(r#"{"format":"x"}"#).unwrap_err();
        assert!(matches!(err, Error::MalformedRollout { .. }), "{err}");
    }

    #[test]
    fn positions_are_uniform_and_differ_per_version() {
        let n = 10_000u32;
        let in_first = (0..n)
            .filter(|i| position(&i.to_be_bytes(), &v("1.0.0")) < 10.0)
            .count();
        assert!(
            (800..1200).contains(&in_first),
            "{in_first} of {n} below 10"
        );
        let same = (0..n)
            .filter(|i| {
                let k = i.to_be_bytes();
                (position(&k, &v("1.0.0")) < 10.0) == (position(&k, &v("1.0.1")) < 10.0)
            })
            .count();
        // Independent per version: about 82% agree (0.9² + 0.1²), not 100%.
        assert!(same < 8800, "{same}");
        assert_eq!(step_of(&steps(&[(0, 10.0), (5, 100.0)]), 9.99), Some(0));
        assert_eq!(step_of(&steps(&[(0, 10.0), (5, 100.0)]), 10.0), Some(1));
        assert_eq!(step_of(&steps(&[(0, 10.0)]), 50.0), None);
    }
}

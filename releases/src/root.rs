//! Roots: the signed document that decides which keys are trusted for what, and how many of
//! them must sign (The Update Framework's root metadata, in OpenPGP).
//!
//! A root is a clear-signed JSON text (so `gpg --verify` and `sq verify` check it):
//!
//! ```json
//! {
//!   "format": "wireleap-root/1",
//!   "version": 2,
//!   "issued": "2026-12-02T00:00:00Z",
//!   "expires": "2027-12-02T00:00:00Z",
//!   "keys": { "<FINGERPRINT>": "<ASCII-armoured public certificate>", ... },
//!   "roles": {
//!     "root":    { "threshold": 2, "keys": ["<FINGERPRINT>", ...] },
//!     "release": { "threshold": 2, "keys": ["<FINGERPRINT>", ...] },
//!     "rollout": { "threshold": 1, "keys": ["<FINGERPRINT>"] }
//!   }
//! }
//! ```
//!
//! - `root` keys sign roots; `release` keys sign release statements; `rollout` keys sign rollout
//!   documents and nothing else. `root` and `release` are required.
//! - A document for a role needs signatures by `threshold` distinct keys of that role; a key
//!   that signs twice counts once, a key of no role counts zero.
//! - The first root a relay trusts (embedded at build time or installed by the operator) must be
//!   signed by its own `root` threshold ([`Root::verify_anchor`]). Version N+1 must be signed by
//!   the `root` threshold of version N **and** by its own ([`Root::verify_next`]), and its
//!   version must be exactly N+1: an older one is a replay ([`Error::RootRollback`]).
//! - Only the newest root's expiry matters: an expired newest root refuses every release until a
//!   newer one is published ([`Root::check_expiry`]).
//!
//! The steps are in `releases/SPEC.md`, "Roots".

use std::collections::BTreeMap;
use std::time::SystemTime;

use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::serialize::SerializeInto as _;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::keys::{TrustedKeys, parse_certs};
use crate::manifest::{format_time, parse_time};
use crate::verify::{Outcome, decide, signatures, signed_block, valid_signers};

/// The `format` of a root document.
pub const ROOT_FORMAT: &str = "wireleap-root/1";

/// The cap on a root document's size, on disk and on the wire.
pub const MAX_ROOT_SIZE: u64 = 64 * 1024;

/// What a root file's name ends with: `<N>.root`.
pub const ROOT_SUFFIX: &str = ".root";

/// What a key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Root documents.
    Root,
    /// Release statements.
    Release,
    /// Rollout documents (short-lived; nothing else).
    Rollout,
}

/// The keys of one role and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    /// How many distinct keys of the role must sign.
    pub threshold: usize,
    /// The keys' fingerprints (uppercase hex), each listed in the root's `keys`.
    pub keys: Vec<String>,
}

/// The JSON of a root's signed text.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    version: u64,
    issued: String,
    expires: String,
    keys: BTreeMap<String, String>,
    roles: BTreeMap<Role, RoleKeys>,
}

/// A root: its version, validity, keys and roles. Built by [`Root::new`] (unsigned, for the
/// release tool) or by the verifying constructors.
#[derive(Clone)]
pub struct Root {
    version: u64,
    issued: SystemTime,
    expires: SystemTime,
    keys: BTreeMap<String, Cert>,
    roles: BTreeMap<Role, RoleKeys>,
    /// The signed file exactly as verified (absent for an unsigned root being made).
    signed: Option<Vec<u8>>,
}

// === impl Role ===

impl Role {
    /// Every role, in order.
    pub const ALL: [Self; 3] = [Self::Root, Self::Release, Self::Rollout];

    /// The role's name in a root document.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Release => "release",
            Self::Rollout => "rollout",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Root ===

impl Root {
    /// A new, unsigned root from its parts, checked as a verifier would check it.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedRoot`] for anything [`Root::parse`] would refuse.
    pub fn new(
        version: u64,
        issued: SystemTime,
        expires: SystemTime,
        certs: Vec<Cert>,
        roles: BTreeMap<Role, RoleKeys>,
    ) -> Result<Self, Error> {
        let keys = certs
            .into_iter()
            .map(|c| (c.fingerprint().to_hex(), c.strip_secret_key_material()))
            .collect();
        let root = Self {
            version,
            issued,
            expires,
            keys,
            roles,
            signed: None,
        };
        root.check()?;
        Ok(root)
    }

    /// Parses a root's signed text (JSON). Only the text a signature covers may be given here.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedRoot`] with what is wrong.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let doc: Document = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        if doc.format != ROOT_FORMAT {
            return Err(malformed(format!(
                "format {:?} is not {ROOT_FORMAT:?}",
                crate::error::clip(&doc.format)
            )));
        }
        let time = |field: &str, text: &str| {
            parse_time(text).ok_or_else(|| {
                malformed(format!(
                    "{field} {:?} is not an RFC 3339 UTC time like 2027-01-31T00:00:00Z",
                    crate::error::clip(text)
                ))
            })
        };
        let mut keys = BTreeMap::new();
        for (fpr, armored) in &doc.keys {
            let origin = format!("root key {}", crate::error::clip(fpr));
            let certs =
                parse_certs(armored.as_bytes(), &origin).map_err(|e| malformed(e.to_string()))?;
            let [cert] = certs.as_slice() else {
                return Err(malformed(format!(
                    "{origin} holds {} certificates, not one",
                    certs.len()
                )));
            };
            if armored.contains("PRIVATE KEY") {
                return Err(malformed(format!("{origin} holds secret key material")));
            }
            if cert.fingerprint().to_hex() != *fpr {
                return Err(malformed(format!(
                    "{origin} is listed under another fingerprint than its own ({})",
                    cert.fingerprint().to_hex()
                )));
            }
            keys.insert(fpr.clone(), cert.clone());
        }
        let root = Self {
            version: doc.version,
            issued: time("issued", &doc.issued)?,
            expires: time("expires", &doc.expires)?,
            keys,
            roles: doc.roles,
            signed: None,
        };
        root.check()?;
        Ok(root)
    }

    /// The rules a root's content must follow.
    fn check(&self) -> Result<(), Error> {
        if self.version == 0 {
            return Err(malformed("version must be 1 or more".to_owned()));
        }
        if self.expires <= self.issued {
            return Err(malformed("expires must be after issued".to_owned()));
        }
        for required in [Role::Root, Role::Release] {
            if !self.roles.contains_key(&required) {
                return Err(malformed(format!("the {required:?} role is missing")));
            }
        }
        for (role, rk) in &self.roles {
            if rk.threshold == 0 || rk.threshold > rk.keys.len() {
                return Err(malformed(format!(
                    "role {role}: threshold {} must be between 1 and its {} keys",
                    rk.threshold,
                    rk.keys.len()
                )));
            }
            for (i, fpr) in rk.keys.iter().enumerate() {
                if !self.keys.contains_key(fpr) {
                    return Err(malformed(format!(
                        "role {role}: key {} is not in \"keys\"",
                        crate::error::clip(fpr)
                    )));
                }
                if rk.keys.iter().skip(i + 1).any(|k| k == fpr) {
                    return Err(malformed(format!("role {role}: key {fpr} is listed twice")));
                }
            }
        }
        Ok(())
    }

    /// The signed text: pretty JSON with a final newline.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if a certificate cannot be armoured.
    pub fn render(&self) -> Result<String, Error> {
        let mut keys = BTreeMap::new();
        for (fpr, cert) in &self.keys {
            let armored = cert.armored().to_vec().map_err(|e| Error::Key {
                origin: fpr.clone(),
                reason: e.to_string(),
            })?;
            keys.insert(
                fpr.clone(),
                String::from_utf8(armored).map_err(|e| Error::Key {
                    origin: fpr.clone(),
                    reason: e.to_string(),
                })?,
            );
        }
        let doc = Document {
            format: ROOT_FORMAT.to_owned(),
            version: self.version,
            issued: format_time(self.issued),
            expires: format_time(self.expires),
            keys,
            roles: self.roles.clone(),
        };
        let mut text = serde_json::to_string_pretty(&doc).map_err(|e| malformed(e.to_string()))?;
        text.push('\n');
        Ok(text)
    }

    /// Verifies a root that is trusted as it is (embedded at build time, or installed by the
    /// operator): its own `root` threshold must have signed it.
    ///
    /// # Errors
    ///
    /// [`Error::RootTooLarge`], framing errors, [`Error::MalformedRoot`], then the threshold
    /// errors of [`crate::verify`].
    pub fn verify_anchor(bytes: &[u8], time: SystemTime) -> Result<Self, Error> {
        let (root, outcome) = Self::read_signed(bytes, None, time)?;
        decide(&outcome, &root.keys_for(Role::Root))?;
        Ok(root)
    }

    /// Verifies the root after this one: exactly version N+1, signed by this root's `root`
    /// threshold and by its own.
    ///
    /// # Errors
    ///
    /// [`Error::RootTooLarge`], framing errors, [`Error::MalformedRoot`],
    /// [`Error::RootRollback`], [`Error::RootVersionMismatch`], [`Error::BadSignature`],
    /// [`Error::RotationNotSignedByOld`], [`Error::RotationNotSignedByNew`].
    pub fn verify_next(&self, bytes: &[u8], time: SystemTime) -> Result<Self, Error> {
        let (next, outcome) = Self::read_signed(bytes, Some(self), time)?;
        if next.version <= self.version {
            return Err(Error::RootRollback {
                offered: next.version,
                trusted: self.version,
            });
        }
        if next.version != self.version + 1 {
            return Err(Error::RootVersionMismatch {
                expected: self.version + 1,
                found: next.version,
            });
        }
        let rotation = |e: Error, old: bool| match e {
            Error::BadSignature { .. } | Error::InvalidSignature { .. } => e,
            _ if old => Error::RotationNotSignedByOld {
                version: next.version,
                previous: self.version,
                needed: self.threshold(Role::Root),
                valid: valid_signers(&outcome, &self.keys_for(Role::Root)),
            },
            _ => Error::RotationNotSignedByNew {
                version: next.version,
                needed: next.threshold(Role::Root),
                valid: valid_signers(&outcome, &next.keys_for(Role::Root)),
            },
        };
        decide(&outcome, &self.keys_for(Role::Root)).map_err(|e| rotation(e, true))?;
        decide(&outcome, &next.keys_for(Role::Root)).map_err(|e| rotation(e, false))?;
        Ok(next)
    }

    /// Size cap, framing, the text, and every signature checked against the keys of this root
    /// and of `previous`.
    fn read_signed(
        bytes: &[u8],
        previous: Option<&Self>,
        time: SystemTime,
    ) -> Result<(Self, Outcome), Error> {
        if bytes.len() as u64 > MAX_ROOT_SIZE {
            return Err(Error::RootTooLarge {
                limit: MAX_ROOT_SIZE,
            });
        }
        let block = signed_block(bytes)?;
        // The keys are in the text: read it first (nothing is trusted yet), then check every
        // signature against the keys it names and those of the previous root.
        let (text, _) = signatures(block, &[], time)?;
        let mut root = Self::parse(&text)?;
        let certs: Vec<Cert> = root
            .keys
            .values()
            .chain(previous.into_iter().flat_map(|p| p.keys.values()))
            .cloned()
            .collect();
        let (checked, outcome) = signatures(block, &certs, time)?;
        if checked != text {
            return Err(malformed(
                "the signed text changed between reads".to_owned(),
            ));
        }
        root.signed = Some(bytes.to_vec());
        Ok((root, outcome))
    }

    /// Refuses a root that has expired at `now`.
    ///
    /// # Errors
    ///
    /// [`Error::RootExpired`].
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), Error> {
        if now >= self.expires {
            return Err(Error::RootExpired {
                version: self.version,
                expires: format_time(self.expires),
                now: format_time(now),
            });
        }
        Ok(())
    }

    /// The keys of `role`, with its threshold (none for a role the root does not have).
    #[must_use]
    pub fn keys_for(&self, role: Role) -> TrustedKeys {
        let mut keys = TrustedKeys::empty().with_role(role);
        if let Some(rk) = self.roles.get(&role) {
            for fpr in &rk.keys {
                if let Some(cert) = self.keys.get(fpr) {
                    keys.add(cert.clone());
                }
            }
            keys = keys.with_threshold(rk.threshold);
        }
        keys
    }

    /// The threshold of `role` (0 for a role the root does not have).
    #[must_use]
    pub fn threshold(&self, role: Role) -> usize {
        self.roles.get(&role).map_or(0, |rk| rk.threshold)
    }

    /// The version.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When it was issued.
    #[must_use]
    pub fn issued(&self) -> SystemTime {
        self.issued
    }

    /// When it expires.
    #[must_use]
    pub fn expires(&self) -> SystemTime {
        self.expires
    }

    /// The roles and their keys.
    #[must_use]
    pub fn roles(&self) -> &BTreeMap<Role, RoleKeys> {
        &self.roles
    }

    /// The keys, by fingerprint.
    #[must_use]
    pub fn certs(&self) -> &BTreeMap<String, Cert> {
        &self.keys
    }

    /// The roles a key has in this root.
    #[must_use]
    pub fn roles_of(&self, fpr: &str) -> Vec<Role> {
        self.roles
            .iter()
            .filter(|(_, rk)| rk.keys.iter().any(|k| k == fpr))
            .map(|(r, _)| *r)
            .collect()
    }

    /// The signed file exactly as verified (none for a root made by [`Root::new`]).
    #[must_use]
    pub fn signed_bytes(&self) -> Option<&[u8]> {
        self.signed.as_deref()
    }
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root")
            .field("version", &self.version)
            .field("expires", &format_time(self.expires))
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

fn malformed(reason: String) -> Error {
    Error::MalformedRoot { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    fn roles(root: (usize, &[String]), release: (usize, &[String])) -> BTreeMap<Role, RoleKeys> {
        BTreeMap::from([
            (
                Role::Root,
                RoleKeys {
                    threshold: root.0,
                    keys: root.1.to_vec(),
                },
            ),
            (
                Role::Release,
                RoleKeys {
                    threshold: release.0,
                    keys: release.1.to_vec(),
                },
            ),
        ])
    }

    #[test]
    fn render_and_parse_round_trip_and_rules_hold() {
        let a = SigningKey::generate("a <a@example.invalid>").unwrap();
        let b = SigningKey::generate("b <b@example.invalid>").unwrap();
        let fprs = [a.fingerprint(), b.fingerprint()];
        let certs = || {
            vec![
                a.trusted().unwrap().certs()[0].clone(),
                b.trusted().unwrap().certs()[0].clone(),
            ]
        };
        let now = SystemTime::now();
        let later = now + std::time::Duration::from_secs(3600);
        let root = Root::new(1, now, later, certs(), roles((2, &fprs), (1, &fprs[..1]))).unwrap();
        let text = root.render().unwrap();
        assert!(!text.contains("PRIVATE"));
        let back = Root::parse(&text).unwrap();
        assert_eq!(back.version(), 1);
        assert_eq!(back.keys_for(Role::Root).threshold(), 2);
        assert_eq!(
            back.keys_for(Role::Release).fingerprints(),
            vec![fprs[0].clone()]
        );
        assert_eq!(back.roles_of(&fprs[1]), vec![Role::Root]);

        // Threshold above the keys, a key outside "keys", a missing role, version 0.
        for bad in [
            Root::new(1, now, later, certs(), roles((3, &fprs), (1, &fprs))),
            Root::new(1, now, later, certs(), roles((0, &fprs), (1, &fprs))),
            Root::new(
                1,
                now,
                later,
                certs()[..1].to_vec(),
                roles((1, &fprs), (1, &fprs)),
            ),
            Root::new(0, now, later, certs(), roles((1, &fprs), (1, &fprs))),
            Root::new(1, later, now, certs(), roles((1, &fprs), (1, &fprs))),
        ] {
            assert!(matches!(bad, Err(Error::MalformedRoot { .. })), "{bad:?}");
        }
        let unknown_field = text.replacen("\"format\"", "\"extra\": 1, \"format\"", 1);
        assert!(matches!(
            Root::parse(&unknown_field),
            Err(Error::MalformedRoot { .. })
        ));
        let unknown_role = text.replacen("\"release\"", "\"admin\"", 1);
        assert!(matches!(
            Root::parse(&unknown_role),
            Err(Error::MalformedRoot { .. })
        ));
        let swapped = text.replacen(&fprs[0], &fprs[1], 1);
        assert!(Root::parse(&swapped).is_err());
    }
}

//! Verification of a release: the numbered steps of `releases/SPEC.md`, offline.
//!
//! Shared by the relay's Upgrader (through [`crate::fetch`]) and the supervisor, which calls
//! [`verify_release_files`] again on what the relay staged (it trusts nothing the relay hands
//! it). This module never writes a file and never touches the network. Each step fails closed
//! with its own [`Error`] variant.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use semver::Version;
use sequoia_openpgp as openpgp;
use sha2::{Digest as _, Sha512};

use openpgp::Cert;
use openpgp::KeyHandle;
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    MessageLayer, MessageStructure, VerificationError, VerificationHelper, VerifierBuilder,
};
use openpgp::policy::StandardPolicy;

use crate::Error;
use crate::keys::TrustedKeys;
use crate::layout::{Product, Target, asset_name, check_file_name};
use crate::manifest::{FileEntry, Statement, format_time};
use crate::version::VersionFloor;

/// The cap on a statement's size (SPEC step 1).
pub const MAX_STATEMENT_SIZE: u64 = 64 * 1024;

const BEGIN_SIGNED: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
const BEGIN_SIGNATURE: &str = "-----BEGIN PGP SIGNATURE-----";
const END_SIGNATURE: &str = "-----END PGP SIGNATURE-----";

/// What the caller asks for: every signed field is checked against it (SPEC steps 5-10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The product, e.g. [`Product::relay`].
    pub product: Product,
    /// The exact version asked for (from the upgrade notice, the channel or the operator).
    pub version: Version,
    /// The OS and architecture, normally [`Target::host`].
    pub target: Target,
    /// Which versions may be installed.
    pub floor: VersionFloor,
    /// How expiry is enforced.
    pub expiry: ExpiryCheck,
}

/// How the statement's expiry is enforced (SPEC step 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryCheck {
    /// Refuse a statement that has expired at this instant (normally `SystemTime::now()`).
    At(SystemTime),
    /// Do not check expiry. Only for re-checking a release that is already installed (e.g.
    /// the supervisor's `rollback` to `.prev`); never for installing a new one.
    UnsafeIgnore,
}

/// A statement whose signature and fields all checked out.
#[derive(Debug, Clone)]
pub struct VerifiedStatement {
    /// The parsed signed text.
    pub statement: Statement,
    /// The distinct trusted keys whose signatures verified (at least the threshold),
    /// uppercase hex fingerprints.
    pub signers: Vec<String>,
    /// The asset name for the requested product and target.
    pub asset: String,
    /// The statement file exactly as received (to store beside the staged binary).
    pub raw: Vec<u8>,
}

/// The text covered by a good signature of a trusted key (SPEC steps 1-3).
#[derive(Debug, Clone)]
pub struct SignedText {
    /// The signed text (dash-escaping undone).
    pub text: String,
    /// The distinct trusted keys whose signatures verified, uppercase hex fingerprints.
    pub signers: Vec<String>,
}

// === impl Expected ===

impl Expected {
    /// Asks for `version` of `product` for the host target, refusing anything not above
    /// `running` and `highest_committed`, with expiry checked now.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeName`] if the host target's names are unusable.
    pub fn for_host(
        product: Product,
        version: Version,
        running: Version,
        highest_committed: Option<Version>,
    ) -> Result<Self, Error> {
        Ok(Self {
            product,
            version,
            target: Target::host()?,
            floor: VersionFloor::Above {
                running,
                highest_committed,
            },
            expiry: ExpiryCheck::At(SystemTime::now()),
        })
    }

    /// The asset name asked for: `<product>_<os>-<arch>`.
    #[must_use]
    pub fn asset(&self) -> String {
        asset_name(&self.product, &self.target)
    }
}

// === impl ExpiryCheck ===

impl ExpiryCheck {
    fn now(self) -> SystemTime {
        match self {
            Self::At(t) => t,
            Self::UnsafeIgnore => SystemTime::now(),
        }
    }
}

// === impl VerifiedStatement ===

impl VerifiedStatement {
    /// The supervisor's entry, if the release carries one
    /// (`wireleap-relay-supervisor_<os>-<arch>`, [`Product::supervisor`]).
    #[must_use]
    pub fn supervisor_entry(&self) -> Option<&FileEntry> {
        self.statement
            .file(&asset_name(&Product::supervisor(), &self.statement.target))
    }

    /// The signed entry of the requested asset.
    ///
    /// # Errors
    ///
    /// [`Error::AssetNotListed`] (not expected: [`verify_statement`] checked it).
    pub fn asset_entry(&self) -> Result<&FileEntry, Error> {
        self.statement
            .file(&self.asset)
            .ok_or_else(|| Error::asset_not_listed(self.asset.clone(), &self.raw))
    }
}

/// Verifies a statement's signature and every field against `expected` (SPEC steps 1-10).
///
/// # Errors
///
/// The variant of the first step that fails.
pub fn verify_statement(
    bytes: &[u8],
    keys: &TrustedKeys,
    expected: &Expected,
) -> Result<VerifiedStatement, Error> {
    // Steps 1-3.
    let signed = signed_text(bytes, keys, expected.expiry.now())?;
    // Step 4: only the signed text is parsed.
    let statement = Statement::parse(&signed.text)?;
    check_fields(&statement, expected, bytes)?;
    Ok(VerifiedStatement {
        asset: expected.asset(),
        statement,
        signers: signed.signers,
        raw: bytes.to_vec(),
    })
}

/// Steps 1-3: bounds, framing and signature. Returns only the signed text.
///
/// `time` is the instant at which keys and the signature must be valid.
///
/// # Errors
///
/// [`Error::StatementTooLarge`], [`Error::NoSignedBlock`], [`Error::UnsignedText`],
/// [`Error::UnknownKey`], [`Error::BadSignature`], [`Error::InvalidSignature`],
/// [`Error::MalformedStatement`] (not UTF-8).
pub fn signed_text(
    bytes: &[u8],
    keys: &TrustedKeys,
    time: SystemTime,
) -> Result<SignedText, Error> {
    // Step 1: bounded.
    if bytes.len() as u64 > MAX_STATEMENT_SIZE {
        return Err(Error::StatementTooLarge {
            limit: MAX_STATEMENT_SIZE,
        });
    }
    // Step 2: exactly one clear-signed block and nothing else.
    let block = signed_block(bytes)?;
    // Step 3: a good signature by a trusted key.
    check_signature(block, keys, time)
}

/// Steps 5-10 on a parsed statement, `served` as it came (for [`Error::AssetNotListed`]).
fn check_fields(s: &Statement, expected: &Expected, served: &[u8]) -> Result<(), Error> {
    // Step 5: product.
    if s.product != expected.product {
        return Err(Error::ProductMismatch {
            asked: expected.product.to_string(),
            signed: s.product.to_string(),
        });
    }
    // Step 6: target.
    if s.target != expected.target {
        return Err(Error::TargetMismatch {
            asked: expected.target.to_string(),
            signed: s.target.to_string(),
        });
    }
    // Step 7: the exact version asked for (replay of another release).
    if s.version != expected.version {
        return Err(Error::VersionMismatch {
            asked: expected.version.clone(),
            signed: s.version.clone(),
        });
    }
    // Step 8: above the running and the highest committed version (rollback).
    expected.floor.check(&s.version)?;
    // Step 9: not expired (freeze).
    if let ExpiryCheck::At(now) = expected.expiry
        && now >= s.expires
    {
        return Err(Error::Expired {
            expires: format_time(s.expires),
            now: format_time(now),
        });
    }
    // Step 10: the asset is listed (mix-and-match).
    let asset = expected.asset();
    check_file_name(&asset)?;
    if s.file(&asset).is_none() {
        return Err(Error::asset_not_listed(asset, served));
    }
    Ok(())
}

/// Step 11 on a file on disk: size and SHA-512 of `path` against the statement's entry for
/// `name`, reading at most the signed size plus one byte.
///
/// # Errors
///
/// [`Error::AssetNotListed`], [`Error::Io`], [`Error::Oversized`], [`Error::Truncated`],
/// [`Error::DigestMismatch`].
pub fn verify_file(path: &Path, statement: &VerifiedStatement, name: &str) -> Result<(), Error> {
    let entry = statement
        .statement
        .file(name)
        .ok_or_else(|| Error::asset_not_listed(name, &statement.raw))?;
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut check = FileCheck::new(entry);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path, e)),
        };
        // `read` never returns more than the buffer's length.
        check.update(buf.get(..n).unwrap_or_default())?;
    }
    check.finish()
}

/// The whole offline check for the supervisor and operators: reads the statement (bounded),
/// verifies it against `expected` (steps 1-10), then the asset file (step 11).
///
/// # Errors
///
/// The variant of the first step that fails.
pub fn verify_release_files(
    statement_path: &Path,
    asset_path: &Path,
    keys: &TrustedKeys,
    expected: &Expected,
) -> Result<VerifiedStatement, Error> {
    let bytes = read_statement(statement_path)?;
    let verified = verify_statement(&bytes, keys, expected)?;
    let asset = verified.asset.clone();
    verify_file(asset_path, &verified, &asset)?;
    Ok(verified)
}

/// Reads a statement file, refusing more than [`MAX_STATEMENT_SIZE`] bytes (step 1).
///
/// # Errors
///
/// [`Error::Io`], [`Error::StatementTooLarge`].
pub fn read_statement(path: &Path) -> Result<Vec<u8>, Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // A statement may sit where someone else could put a link or a FIFO: neither is followed
    // nor waited on.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(wireleap_home::durable::NO_FOLLOW_NO_BLOCK)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(Error::io(
            "read",
            path,
            std::io::Error::other("not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATEMENT_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > MAX_STATEMENT_SIZE {
        return Err(Error::StatementTooLarge {
            limit: MAX_STATEMENT_SIZE,
        });
    }
    Ok(bytes)
}

/// Incremental step 11: size cap, exact size and SHA-512, fed chunk by chunk (the downloader
/// feeds it as bytes arrive, so an oversized body is cut at the cap).
#[derive(Debug)]
pub(crate) struct FileCheck {
    name: String,
    size: u64,
    sha512: [u8; 64],
    got: u64,
    hasher: Sha512,
}

impl FileCheck {
    pub(crate) fn new(entry: &FileEntry) -> Self {
        Self {
            name: entry.name.clone(),
            size: entry.size,
            sha512: entry.sha512,
            got: 0,
            hasher: Sha512::new(),
        }
    }

    /// Feeds a chunk. Fails as soon as the signed size is exceeded.
    pub(crate) fn update(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let got = self.got.saturating_add(chunk.len() as u64);
        if got > self.size {
            return Err(Error::Oversized {
                asset: self.name.clone(),
                limit: self.size,
            });
        }
        self.got = got;
        self.hasher.update(chunk);
        Ok(())
    }

    /// Bytes fed so far.
    #[cfg_attr(not(feature = "fetch"), allow(dead_code))]
    pub(crate) fn done(&self) -> u64 {
        self.got
    }

    /// The signed size.
    #[cfg_attr(not(feature = "fetch"), allow(dead_code))]
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Checks the exact size and the digest.
    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.got < self.size {
            return Err(Error::Truncated {
                asset: self.name,
                expected: self.size,
                got: self.got,
            });
        }
        let actual: [u8; 64] = self.hasher.finalize().into();
        // Not secret data: a plain comparison is fine.
        if actual != self.sha512 {
            return Err(Error::DigestMismatch {
                asset: self.name,
                expected: hex::encode(self.sha512),
                actual: hex::encode(actual),
            });
        }
        Ok(())
    }
}

/// Step 2: the statement must be exactly one clear-signed block, with nothing but blank lines
/// around it. Returns the block's bytes.
pub(crate) fn signed_block(bytes: &[u8]) -> Result<&[u8], Error> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| Error::malformed(0, "statement is not UTF-8"))?;
    let mut begin: Option<usize> = None; // byte offset of the BEGIN line
    let mut in_signature = false;
    let mut end: Option<usize> = None; // byte offset just after the END line
    let mut offset = 0usize;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_end();
        match (begin, in_signature, end) {
            (None, _, _) => {
                if trimmed == BEGIN_SIGNED {
                    begin = Some(start);
                } else if !trimmed.is_empty() {
                    return Err(unsigned_or_missing(text, idx + 1));
                }
            }
            (Some(_), false, None) => {
                // Inside the signed text, every line that starts with '-' is dash-escaped,
                // so an unescaped marker can only be the real one.
                if trimmed == BEGIN_SIGNATURE {
                    in_signature = true;
                } else if trimmed == BEGIN_SIGNED {
                    return Err(Error::UnsignedText { line: idx + 1 });
                }
            }
            (Some(_), true, None) => {
                if trimmed == END_SIGNATURE {
                    end = Some(offset);
                }
            }
            (Some(_), _, Some(_)) => {
                if !trimmed.is_empty() {
                    return Err(Error::UnsignedText { line: idx + 1 });
                }
            }
        }
    }
    match (begin, end) {
        (Some(b), Some(e)) => bytes.get(b..e).ok_or(Error::NoSignedBlock),
        _ => Err(Error::NoSignedBlock),
    }
}

/// Text before the first BEGIN line: unsigned text if a block follows, otherwise there is no
/// signed block at all.
fn unsigned_or_missing(text: &str, line: usize) -> Error {
    if text.lines().any(|l| l.trim_end() == BEGIN_SIGNED) {
        Error::UnsignedText { line }
    } else {
        Error::NoSignedBlock
    }
}

/// What the signature check saw, recorded by the helper.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The primary key fingerprint of each good signature (a key that signed twice is here
    /// twice).
    good: Vec<String>,
    /// The issuers of signatures whose key was not offered.
    unknown: Vec<String>,
    bad: Vec<String>,
    invalid: Vec<String>,
}

/// The sequoia verification helper: offers the known certificates and records results. It
/// never decides: [`decide`] does, on the whole [`Outcome`].
struct Helper<'a> {
    certs: &'a [Cert],
    outcome: &'a mut Outcome,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.certs.to_vec())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure {
            match layer {
                MessageLayer::SignatureGroup { results } => {
                    for result in results {
                        match result {
                            Ok(good) => self
                                .outcome
                                .good
                                .push(good.ka.cert().fingerprint().to_hex()),
                            Err(VerificationError::MissingKey { sig }) => {
                                // One name per signature: the issuer fingerprint if it has one.
                                let issuer = sig
                                    .issuer_fingerprints()
                                    .next()
                                    .map(|f| f.to_hex())
                                    .or_else(|| sig.get_issuers().first().map(KeyHandle::to_hex))
                                    .unwrap_or_else(|| "a signature naming no key".to_owned());
                                let issuer = crate::keys::describe_key(&issuer);
                                if !self.outcome.unknown.contains(&issuer) {
                                    self.outcome.unknown.push(issuer);
                                }
                            }
                            Err(VerificationError::BadSignature { error, .. }) => {
                                self.outcome.bad.push(error.to_string());
                            }
                            Err(other) => self.outcome.invalid.push(other.to_string()),
                        }
                    }
                }
                // A clear-signed document is never compressed or encrypted.
                _ => self
                    .outcome
                    .invalid
                    .push("unexpected compression or encryption layer".to_owned()),
            }
        }
        Ok(())
    }
}

/// Checks every signature of a clear-signed `block` against `certs`, valid at `time`, under
/// the standard policy (which refuses SHA-1 and weak keys). Returns the signed text and what
/// each signature gave; the caller must [`decide`] before it uses the text.
pub(crate) fn signatures(
    block: &[u8],
    certs: &[Cert],
    time: SystemTime,
) -> Result<(String, Outcome), Error> {
    let policy = StandardPolicy::new();
    let mut outcome = Outcome::default();
    let mut text = Vec::new();
    let result = (|| -> openpgp::Result<()> {
        let helper = Helper {
            certs,
            outcome: &mut outcome,
        };
        let mut verifier =
            VerifierBuilder::from_bytes(block)?.with_policy(&policy, time, helper)?;
        // Documents are at most 64 KiB; the verifier buffers one whole before releasing any
        // byte, so nothing unverified is read here.
        std::io::copy(&mut verifier, &mut text)?;
        if !verifier.message_processed() {
            return Err(
                openpgp::Error::InvalidOperation("message not fully processed".into()).into(),
            );
        }
        Ok(())
    })();
    if let Err(e) = result {
        return Err(Error::InvalidSignature {
            reason: e.to_string(),
        });
    }
    let text =
        String::from_utf8(text).map_err(|_| Error::malformed(0, "signed text is not UTF-8"))?;
    Ok((text, outcome))
}

/// The distinct keys of `keys` whose signatures verified, in signing order.
pub(crate) fn valid_signers(outcome: &Outcome, keys: &TrustedKeys) -> Vec<String> {
    let mut valid: Vec<String> = Vec::new();
    for fpr in &outcome.good {
        if keys.trusts(fpr).is_ok() && !valid.contains(fpr) {
            valid.push(fpr.clone());
        }
    }
    valid
}

/// The threshold rule: `keys.threshold()` distinct trusted keys must have signed; a key that
/// signed twice counts once, an unknown or removed key counts zero. Returns the distinct
/// trusted signers, or the error that says best why the document is refused.
pub(crate) fn decide(outcome: &Outcome, keys: &TrustedKeys) -> Result<Vec<String>, Error> {
    let valid = valid_signers(outcome, keys);
    if !keys.is_empty() && valid.len() >= keys.threshold() {
        return Ok(valid);
    }
    if !outcome.bad.is_empty() {
        return Err(Error::BadSignature {
            reason: outcome.bad.join("; "),
        });
    }
    if !outcome.invalid.is_empty() {
        return Err(Error::InvalidSignature {
            reason: outcome.invalid.join("; "),
        });
    }
    let role = keys.role().to_string();
    let needed = keys.threshold();
    let mut others: Vec<String> = Vec::new();
    let mut removed: Option<(String, u64)> = None;
    for fpr in &outcome.good {
        match keys.trusts(fpr) {
            Ok(()) => {}
            Err(Some(v)) => {
                removed.get_or_insert((fpr.clone(), v));
            }
            Err(None) => {
                let named = crate::keys::describe_key(fpr);
                if !others.contains(&named) {
                    others.push(named);
                }
            }
        }
    }
    others.extend(outcome.unknown.iter().cloned());
    if keys.is_empty() {
        if let Some((key, _)) = &removed {
            others.push(key.clone());
        }
        return Err(Error::NothingTrusted { signers: others });
    }
    if let Some((key, removed_in)) = removed {
        return Err(Error::RemovedKey {
            role,
            key,
            removed_in,
            needed,
        });
    }
    let trusted_signatures = outcome
        .good
        .iter()
        .filter(|f| keys.trusts(f).is_ok())
        .count();
    if trusted_signatures > valid.len()
        && let Some(key) = outcome
            .good
            .iter()
            .find(|f| outcome.good.iter().filter(|g| g == f).count() > 1)
    {
        return Err(Error::DuplicateSigner {
            role,
            needed,
            key: key.clone(),
        });
    }
    if valid.is_empty() {
        return Err(Error::UnknownKey { issuers: others });
    }
    Err(Error::ThresholdNotMet {
        role,
        needed,
        valid,
    })
}

/// Step 3: signatures by the threshold of distinct trusted keys, valid at `time`.
fn check_signature(
    block: &[u8],
    keys: &TrustedKeys,
    time: SystemTime,
) -> Result<SignedText, Error> {
    let (text, outcome) = signatures(block, &keys.known_certs(), time)?;
    let signers = decide(&outcome, keys)?;
    Ok(SignedText { text, signers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(signed: &str) -> String {
        format!(
            "{BEGIN_SIGNED}\nHash: SHA512\n\n{signed}\n{BEGIN_SIGNATURE}\n\nAAAA\n{END_SIGNATURE}\n"
        )
    }

    #[test]
    fn framing_accepts_one_block_and_blank_lines() {
        let b = block("x");
        assert!(signed_block(b.as_bytes()).is_ok());
        let padded = format!("\n  \n{b}\n\n");
        assert_eq!(
            signed_block(padded.as_bytes()).unwrap(),
            b.as_bytes(),
            "returns the block only"
        );
    }

    #[test]
    fn framing_refuses_text_outside() {
        let b = block("x");
        assert!(matches!(
            signed_block(format!("evil  line\n{b}").as_bytes()),
            Err(Error::UnsignedText { line: 1 })
        ));
        assert!(matches!(
            signed_block(format!("{b}evil\n").as_bytes()),
            Err(Error::UnsignedText { .. })
        ));
        assert!(matches!(
            signed_block(format!("{b}{b}").as_bytes()),
            Err(Error::UnsignedText { .. })
        ));
        assert!(matches!(
            signed_block(b"abc  def\n"),
            Err(Error::NoSignedBlock)
        ));
        assert!(matches!(
            signed_block(format!("{BEGIN_SIGNED}\n\nx\n").as_bytes()),
            Err(Error::NoSignedBlock)
        ));
        assert!(matches!(signed_block(b""), Err(Error::NoSignedBlock)));
    }

    #[test]
    fn file_check_caps_and_digests() {
        let entry = FileEntry::digest("a", &b"hello"[..], Path::new("a")).unwrap();
        let mut c = FileCheck::new(&entry);
        c.update(b"hel").unwrap();
        assert!(matches!(
            FileCheck::new(&entry).update(b"hello!"),
            Err(Error::Oversized { .. })
        ));
        assert!(matches!(c.finish(), Err(Error::Truncated { got: 3, .. })));
        let mut c = FileCheck::new(&entry);
        c.update(b"hellp").unwrap();
        assert!(matches!(c.finish(), Err(Error::DigestMismatch { .. })));
        let mut c = FileCheck::new(&entry);
        c.update(b"hello").unwrap();
        assert_eq!(c.done(), c.size());
        c.finish().unwrap();
    }

    proptest::proptest! {
        #[test]
        fn untrusted_statements_never_panic(
            prefix in ".{0,40}",
            body in "[ -~\n]{0,400}",
            suffix in ".{0,40}",
        ) {
            let text = format!("{prefix}\n{}", block(&body)) + &suffix;
            let keys = TrustedKeys::empty();
            let expected = Expected {
                product: Product::relay(),
                version: Version::new(1, 0, 0),
                target: Target::try_new("linux", "x86_64").unwrap(),
                floor: VersionFloor::UnsafeAllowAny,
                expiry: ExpiryCheck::UnsafeIgnore,
            };
            // Never verifies (no key, junk signature), never panics.
            proptest::prop_assert!(verify_statement(text.as_bytes(), &keys, &expected).is_err());
            let _ = Statement::parse(&body);
        }
    }
}

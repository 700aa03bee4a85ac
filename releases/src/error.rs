//! The one error type of the crate.
//!
//! Every failure of the verification steps of `releases/SPEC.md` has its own variant, so that
//! callers (and the attack tests) can tell them apart. One enum for the whole crate rather than
//! one per module: the download path and the offline path fail in the same ways (a truncated
//! file is truncated whether it came from disk or from the network), and the Upgrader and the
//! supervisor handle both. Errors never carry key material or file contents.

use std::path::PathBuf;
use std::time::Duration;

/// A failure to sign, verify, lay out or download a release.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === step 1: bounded read ===
    /// The statement is larger than the cap (SPEC step 1).
    #[error("release statement is larger than {limit} bytes")]
    StatementTooLarge {
        /// The cap in bytes.
        limit: u64,
    },

    // === step 2: framing ===
    /// The statement holds no complete OpenPGP clear-signed block (SPEC step 2).
    #[error("release statement holds no complete clear-signed block")]
    NoSignedBlock,
    /// The statement has text outside its clear-signed block (SPEC step 2); such text is
    /// where the reference relay's digest-injection bypass hides.
    #[error("release statement has unsigned text outside its signed block (line {line})")]
    UnsignedText {
        /// The 1-based line number of the first offending line.
        line: usize,
    },

    // === step 3: signature ===
    /// No signature was made by a trusted key (SPEC step 3).
    #[error(
        "signed by {}, which is not trusted here: no signature is by a trusted key",
        signers_text(issuers)
    )]
    UnknownKey {
        /// The signers: fingerprints in hex, named when they are known test keys.
        issuers: Vec<String>,
    },
    /// No release key is trusted at all: a build from source with nothing installed in the
    /// home directory (SPEC step 3). Not the server's fault: the version is not skipped.
    #[error(
        "no release key is trusted here, so the release signed by {}, which is not trusted, is refused: put the network's root in <home>/trusted-keys/roots/ or its key in <home>/trusted-keys/ (docs/releasing.md)",
        signers_text(signers)
    )]
    NothingTrusted {
        /// Who signed it: fingerprints (named when they are known test keys).
        signers: Vec<String>,
    },
    /// Fewer distinct trusted keys signed than the root's threshold for the role (SPEC step 3).
    #[error(
        "{role} needs {needed} signatures by distinct trusted keys, it has {}: {}",
        valid.len(),
        signers_text(valid)
    )]
    ThresholdNotMet {
        /// The role whose threshold applies (`release`, `root`, `rollout`).
        role: String,
        /// The threshold.
        needed: usize,
        /// The distinct trusted keys whose signatures verified.
        valid: Vec<String>,
    },
    /// The threshold is met only if one key's signatures are counted more than once; a key
    /// counts once (SPEC step 3).
    #[error(
        "{role} needs {needed} signatures by distinct trusted keys: key {key} signed more than once and counts once"
    )]
    DuplicateSigner {
        /// The role whose threshold applies.
        role: String,
        /// The threshold.
        needed: usize,
        /// The key that signed more than once.
        key: String,
    },
    /// A signature was made by a key that an older root trusted and a newer one removed
    /// (SPEC step 3, "Roots").
    #[error(
        "{role} signature by key {key}, which root version {removed_in} removed: it is no longer trusted ({needed} signatures by trusted keys needed)"
    )]
    RemovedKey {
        /// The role whose threshold applies.
        role: String,
        /// The removed key's fingerprint.
        key: String,
        /// The first root version without it.
        removed_in: u64,
        /// The threshold.
        needed: usize,
    },
    /// A signature by a trusted key does not match the signed text (SPEC step 3).
    #[error("bad signature (the signed text does not match it): {reason}")]
    BadSignature {
        /// Why the OpenPGP library rejected it.
        reason: String,
    },
    /// A signature by a trusted key cannot be used: malformed, made by an expired, revoked
    /// or unbound key, or refused by the policy (SPEC step 3).
    #[error("unusable signature: {reason}")]
    InvalidSignature {
        /// Why the OpenPGP library rejected it.
        reason: String,
    },

    // === step 4: parse the signed text ===
    /// A line of the signed text is not part of the format (SPEC step 4).
    #[error("malformed release statement, signed line {line}: {reason}")]
    MalformedStatement {
        /// The 1-based line number within the signed text (0: the text as a whole).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A required field is missing from the signed text (SPEC step 4).
    #[error("release statement lacks the `{field}` field")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// The signed text declares a format this verifier does not know (SPEC step 4).
    #[error("unsupported release statement format {found:?}")]
    UnsupportedFormat {
        /// The declared format.
        found: String,
    },
    /// A version is not a plain semantic version (SPEC step 4, and before any path or URL
    /// is built from it).
    #[error("unsafe or invalid version {text:?}")]
    UnsafeVersion {
        /// The offending text (truncated to 64 characters).
        text: String,
    },
    /// A product, target, channel or file name is not a plain file name (SPEC step 4, and
    /// before any path or URL is built from it).
    #[error("unsafe name {name:?}")]
    UnsafeName {
        /// The offending text (truncated to 64 characters).
        name: String,
    },

    // === steps 5-10: what was asked for ===
    /// The statement is for another product (SPEC step 5).
    #[error("release is for product {signed:?}, not {asked:?}")]
    ProductMismatch {
        /// The product asked for.
        asked: String,
        /// The product named by the signed text.
        signed: String,
    },
    /// The statement is for another OS/architecture (SPEC step 6).
    #[error("release is for target {signed:?}, not {asked:?}")]
    TargetMismatch {
        /// The target asked for.
        asked: String,
        /// The target named by the signed text.
        signed: String,
    },
    /// The statement is for another version than the one asked for: a replay of another
    /// release (SPEC step 7).
    #[error("release statement is for version {signed}, not the requested {asked}")]
    VersionMismatch {
        /// The version asked for.
        asked: semver::Version,
        /// The version named by the signed text.
        signed: semver::Version,
    },
    /// The offered version is not above the running one: a downgrade (SPEC step 8).
    #[error("version {offered} is not above the running version {running}")]
    NotAboveRunning {
        /// The version offered.
        offered: semver::Version,
        /// The running version.
        running: semver::Version,
    },
    /// The offered version is not above the highest version ever committed (SPEC step 8).
    #[error("version {offered} is not above the highest committed version {committed}")]
    NotAboveCommitted {
        /// The version offered.
        offered: semver::Version,
        /// The highest committed version.
        committed: semver::Version,
    },
    /// The statement has expired: a frozen or stale release (SPEC step 9).
    #[error("release statement expired at {expires} (now {now})")]
    Expired {
        /// The signed expiry, RFC 3339.
        expires: String,
        /// The time of the check, RFC 3339.
        now: String,
    },
    /// The statement does not list the asset asked for (SPEC step 10).
    #[error("release statement does not list {asset:?}")]
    AssetNotListed {
        /// The asset name.
        asset: String,
        /// The signed statement that says so, as served: a relay that may not skip the
        /// version itself hands it to its supervisor, which verifies it before it skips.
        statement: String,
    },

    // === step 11: the file ===
    /// The file is longer than its signed size: endless data (SPEC step 11).
    #[error("{asset:?} is longer than its signed size of {limit} bytes")]
    Oversized {
        /// The asset name.
        asset: String,
        /// The signed size.
        limit: u64,
    },
    /// The file is shorter than its signed size (SPEC step 11).
    #[error("{asset:?} is truncated: {got} of {expected} bytes")]
    Truncated {
        /// The asset name.
        asset: String,
        /// The signed size.
        expected: u64,
        /// The bytes received or found.
        got: u64,
    },
    /// The file's SHA-512 is not the signed one (SPEC step 11).
    #[error("{asset:?} SHA-512 mismatch: signed {expected}, got {actual}")]
    DigestMismatch {
        /// The asset name.
        asset: String,
        /// The signed digest, hex.
        expected: String,
        /// The computed digest, hex.
        actual: String,
    },

    // === roots ===
    /// A root document is larger than the cap ("Roots").
    #[error("root document is larger than {limit} bytes")]
    RootTooLarge {
        /// The cap in bytes.
        limit: u64,
    },
    /// A root document's signed text is not a valid root ("Roots").
    #[error("malformed root document: {reason}")]
    MalformedRoot {
        /// What is wrong with it.
        reason: String,
    },
    // === rollout documents and outcome reports ===
    /// The trusted root has no `rollout` role (or only key files are trusted): no rollout
    /// document can be trusted, so none gates an upgrade.
    #[error("the trusted release root has no rollout role: rollout documents cannot be verified")]
    NoRolloutRole,
    /// A rollout document's signed text is not a valid document.
    #[error("malformed rollout document: {reason}")]
    MalformedRollout {
        /// What is wrong with it.
        reason: String,
    },
    /// A rollout document of another version was served in place of the one asked for.
    #[error("rollout document asked for version {asked} is signed for version {signed}")]
    RolloutVersionMismatch {
        /// The version asked for.
        asked: semver::Version,
        /// The version it is signed for.
        signed: semver::Version,
    },
    /// A rollout document past its expiry (short-lived: an old halt or schedule replayed, or a
    /// rollout service that stopped signing).
    #[error("rollout document expired at {expires} (now {now})")]
    RolloutExpired {
        /// Its expiry, RFC 3339.
        expires: String,
        /// The time of the check, RFC 3339.
        now: String,
    },
    /// A rollout document older than one this relay already accepted: a replay (for example a
    /// schedule served again over a halt).
    #[error(
        "rollout document of {version} has serial {serial}, older than serial {seen} accepted before: a replay"
    )]
    RolloutReplayed {
        /// The version.
        version: semver::Version,
        /// Its serial.
        serial: u64,
        /// The highest serial accepted before.
        seen: u64,
    },
    /// The release server answers that a version is not phased (404) after this relay
    /// accepted a rollout document for it: a document stripped on the way (an attacker on a
    /// plain-HTTP path would otherwise bypass a schedule or a halt), or a server that lost it.
    #[error(
        "the release server has no rollout document for {version}, after this relay accepted serial {seen} of one: not acting on it"
    )]
    RolloutWithdrawn {
        /// The version.
        version: semver::Version,
        /// The highest serial accepted before.
        seen: u64,
    },
    /// An upgrade outcome report that is not well formed or not validly signed.
    #[error("outcome report refused: {reason}")]
    BadReport {
        /// What is wrong with it.
        reason: String,
    },

    /// A root older than (or as old as) the newest accepted one was offered: a replay.
    #[error("root version {offered} is not newer than the trusted root version {trusted}")]
    RootRollback {
        /// The version offered.
        offered: u64,
        /// The newest accepted version.
        trusted: u64,
    },
    /// A root's version is not the one its place says (`root/<N>.root` holds version N, and a
    /// rotation goes up by exactly one).
    #[error("root document at version {expected} says it is version {found}")]
    RootVersionMismatch {
        /// The version expected.
        expected: u64,
        /// The version the signed text names.
        found: u64,
    },
    /// A new root lacks the threshold of the current root's `root` keys: a root made by
    /// someone who does not hold the current keys.
    #[error(
        "root version {version} is not signed by {needed} keys of root version {previous}: {} of them signed ({})",
        valid.len(),
        signers_text(valid)
    )]
    RotationNotSignedByOld {
        /// The new root's version.
        version: u64,
        /// The current root's version.
        previous: u64,
        /// The current root's `root` threshold.
        needed: usize,
        /// The current root's keys whose signatures verified.
        valid: Vec<String>,
    },
    /// A new root lacks the threshold of its own `root` keys: its new keys never agreed.
    #[error(
        "root version {version} is not signed by {needed} of its own keys: {} of them signed ({})",
        valid.len(),
        signers_text(valid)
    )]
    RotationNotSignedByNew {
        /// The new root's version.
        version: u64,
        /// The new root's `root` threshold.
        needed: usize,
        /// Its own keys whose signatures verified.
        valid: Vec<String>,
    },
    /// The newest root has expired: no release is trusted until a newer root is published.
    #[error(
        "the trusted root version {version} expired at {expires} (now {now}): releases are refused until the release server publishes root version {}",
        version + 1
    )]
    RootExpired {
        /// The root's version.
        version: u64,
        /// Its expiry, RFC 3339.
        expires: String,
        /// The time of the check, RFC 3339.
        now: String,
    },
    /// A trust file or folder may be changed by someone other than the relay's user or root,
    /// so it is not used (OpenSSH's StrictModes).
    #[error("refusing {path}: {reason}")]
    UnsafeTrustFile {
        /// The file or folder.
        path: PathBuf,
        /// Why (its mode or owner).
        reason: String,
    },
    /// The trust set-up cannot be used as it is (e.g. key files beside a root).
    #[error("{reason}")]
    Trust {
        /// What is wrong and how to fix it.
        reason: String,
    },

    // === keys and signing ===
    /// A key file or key text could not be used.
    #[error("key {origin}: {reason}")]
    Key {
        /// Where the key came from (a path or "embedded").
        origin: String,
        /// What is wrong with it (never the key material).
        reason: String,
    },
    /// A binary's version slot could not be stamped.
    #[error("version slot: {reason}")]
    Stamp {
        /// Why.
        reason: String,
    },
    /// Signing failed.
    #[error("signing failed: {reason}")]
    Sign {
        /// Why.
        reason: String,
    },

    // === local I/O ===
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `channels.json` is not `{"<product>": {"<channel>": "<version>"}}`.
    #[error("bad channels file: {reason}")]
    Channels {
        /// What is wrong.
        reason: String,
    },

    // === download ===
    /// A URL could not be built from the base URL.
    #[error("bad release URL: {reason}")]
    Url {
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {reason}")]
    Client {
        /// Why.
        reason: String,
    },
    /// Connecting to the release server failed or timed out.
    #[error("cannot reach {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with a status other than 200.
    #[error("{url} answered HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The server sent nothing for longer than the read-gap timeout: slow retrieval.
    #[error("{url} sent nothing for {gap:?}")]
    Stalled {
        /// The URL.
        url: String,
        /// The read-gap timeout.
        gap: Duration,
    },
    /// The whole download took longer than its deadline.
    #[error("release download exceeded its deadline of {deadline:?}")]
    DeadlineExceeded {
        /// The deadline.
        deadline: Duration,
    },
    /// The transfer broke off with a protocol or network error.
    #[error("transfer of {url} failed: {reason}")]
    Transfer {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

// === impl Error ===

impl Error {
    /// [`Error::AssetNotListed`] for `asset`, with the statement that says so as `served`.
    #[must_use]
    pub fn asset_not_listed(asset: impl Into<String>, served: &[u8]) -> Self {
        Self::AssetNotListed {
            asset: asset.into(),
            statement: String::from_utf8_lossy(served).into_owned(),
        }
    }

    /// Whether trying the same download again later may succeed (network trouble, a server
    /// error). Verification failures are never retryable: the same bytes fail the same way.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Stalled { .. }
            | Self::Transfer { .. }
            | Self::Truncated { .. } => true,
            Self::HttpStatus { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    /// Whether the failure rules the version out for good, whoever serves the files: only what
    /// a valid signature itself says (a statement of this exact product, target and version
    /// that lists no asset for this platform). Everything else a download meets (a 404 from a
    /// mirror that lags, a statement of another version replayed in its place, a forged or
    /// truncated file, a deadline) may be an outage or an attacker on the path, and is tried
    /// again later: skipping for it would let one bad response freeze a fleet.
    #[must_use]
    pub fn rules_out_version(&self) -> bool {
        matches!(self, Self::AssetNotListed { .. })
    }

    /// Whether the failure is the fault of what the release server or the directory sent
    /// (bad, forged, stale or unsafe data), as opposed to a local problem (disk, config,
    /// keys). The Upgrader skips a version for a peer fault; a local fault is reported to the
    /// operator.
    #[must_use]
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            Self::Key { .. }
                | Self::NothingTrusted { .. }
                | Self::UnsafeTrustFile { .. }
                | Self::Trust { .. }
                | Self::RootExpired { .. }
                | Self::Sign { .. }
                | Self::Stamp { .. }
                | Self::Io { .. }
                | Self::Url { .. }
                | Self::Client { .. }
                | Self::Channels { .. }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(line: usize, reason: impl Into<String>) -> Self {
        Self::MalformedStatement {
            line,
            reason: reason.into(),
        }
    }
}

/// Signers for a message: comma-separated, or "no key".
pub(crate) fn signers_text(signers: &[String]) -> String {
    if signers.is_empty() {
        "no key".to_owned()
    } else {
        signers.join(", ")
    }
}

/// Shortens untrusted text before it goes into an error message.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 64;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod rules_out_tests {
    use super::*;

    #[test]
    fn only_a_signed_statement_without_this_platform_rules_a_version_out() {
        assert!(
            Error::AssetNotListed {
                asset: "wireleap-relay_linux-x86_64".into(),
                statement: String::new(),
            }
            .rules_out_version()
        );
        for e in [
            Error::HttpStatus {
                url: "https://r/v9.0.0/x.hash".into(),
                status: 404,
            },
            Error::NoSignedBlock,
            Error::DeadlineExceeded {
                deadline: Duration::from_secs(900),
            },
        ] {
            assert!(!e.rules_out_version(), "{e}");
        }
    }
}

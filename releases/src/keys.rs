//! Keys: the set of keys trusted for one role, and the release signing key.
//!
//! [`TrustedKeys`] holds OpenPGP certificates (public keys only) trusted for one role of a root
//! (`release` for statements), the number of distinct keys that must sign (the role's
//! threshold), and the keys older roots trusted and a newer one removed (so that a signature by
//! one is refused by name). It is built by [`crate::trust::Trust`] from the root in effect, or
//! from key files when there is no root. Nothing is trusted by default: no key is embedded in
//! any build (see `docs/releasing.md`). [`SigningKey`] holds secret key material for
//! `release-tool` and tests; its `Debug` never prints it.
//!
//! [`TEST_ONLY_KEYS`] lists the fingerprints of the public test keys of
//! `releases/testdata/keys/`, whose secrets are in the repository. They are never trusted by this
//! list: it only lets an error say "this is the public test key" instead of a bare fingerprint.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::cert::{CertBuilder, CertParser};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::SerializeInto;

use crate::Error;
use crate::root::Role;

/// The public TEST-ONLY keys of `releases/testdata/keys/`: name, primary key fingerprint,
/// signing subkey fingerprint. Anyone can sign with them. Nothing trusts them because of this
/// list; it names them in errors and in `version -v`.
pub const TEST_ONLY_KEYS: &[(&str, &str, &str)] = &[
    (
        "test-only-project",
        "21244F0243F6E3AFA0D8424DF885560E8FE40EA4",
        "8639A5D8BD80AFCA6800EF10BB1BCE8F1EAB30D0",
    ),
    (
        "test-only-rotated",
        "0F14EBFBE11EAF80D57F757024D5C7408DE52D4F",
        "E4C668A38FEFF5FA01DEB200D64D1DABE6887C50",
    ),
    (
        "test-only-unknown",
        "85FECEEE8F5CAFE90DDD8F7A4A13EC8CD474706C",
        "7086544CEA4F484027BE061F2194FDF6C62376BC",
    ),
    (
        "test-only-root-a",
        "9DAE59A5C15674454DF1C9CD7BE95782E9221BDC",
        "7EE8FF2212DFE0270EB4021B8909DACEAF6A1530",
    ),
    (
        "test-only-root-b",
        "1A78AC359826590121415972BC2CA9DF8D546016",
        "C705EC01E2DF1A187C1F4D24BAFB72683B048FF0",
    ),
    (
        "test-only-root-c",
        "80973EB6D2C2979F26839355BAF2B548D3EDF099",
        "4C25CA9D41B12751AF5B7253D5E6A25A459DF6A6",
    ),
    (
        "test-only-root-d",
        "3A31B63510C7E14CEA7A36BC465F78DEC7B81D98",
        "46DB631E0F6053A4D9B2142CBCE00BF2CECA177B",
    ),
    (
        "test-only-root-e",
        "6C3A37149CA08F38F8927F1ECB98666078C05458",
        "F992BD25E557A8ADFAE4B495B5B6BEBC35CB35E2",
    ),
];

/// The name of a public test key, given its primary or subkey fingerprint (or a key id, the
/// last 16 hex digits), if it is one of [`TEST_ONLY_KEYS`].
#[must_use]
pub fn test_only_key(handle: &str) -> Option<(&'static str, &'static str)> {
    let handle = handle.to_ascii_uppercase();
    if handle.len() < 16 {
        return None;
    }
    TEST_ONLY_KEYS
        .iter()
        .find(|(_, primary, sub)| primary.ends_with(&handle) || sub.ends_with(&handle))
        .map(|(name, primary, _)| (*name, *primary))
}

/// A key for messages: its fingerprint, and for a public test key its name and what it is.
#[must_use]
pub fn describe_key(handle: &str) -> String {
    match test_only_key(handle) {
        Some((name, primary)) => format!(
            "{primary} (the public TEST-ONLY key {name} of releases/testdata/keys: anyone can sign with it)"
        ),
        None => handle.to_owned(),
    }
}

/// The keys trusted for one role (public keys only), with the role's threshold.
#[derive(Clone)]
pub struct TrustedKeys {
    role: Role,
    certs: Vec<Cert>,
    threshold: usize,
    /// Keys an older root trusted and a newer one removed, with the first version without them.
    retired: Vec<(Cert, u64)>,
}

impl Default for TrustedKeys {
    fn default() -> Self {
        Self {
            role: Role::Release,
            certs: Vec::new(),
            threshold: 1,
            retired: Vec::new(),
        }
    }
}

/// A release signing key: an OpenPGP certificate with its secret keys.
///
/// `Debug` prints the fingerprint only.
#[derive(Clone)]
pub struct SigningKey {
    cert: Cert,
}

// === impl TrustedKeys ===

impl TrustedKeys {
    /// No trusted key: nothing verifies until keys are added. The role is `release`, the
    /// threshold 1.
    #[must_use]
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds every certificate of an OpenPGP keyring (armoured or binary). Secret key material,
    /// if any, is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if the data holds no certificate or a malformed one; `origin` names the
    /// source in that error.
    pub fn with_armored(mut self, data: &[u8], origin: &str) -> Result<Self, Error> {
        for cert in parse_certs(data, origin)? {
            self.add(cert);
        }
        Ok(self)
    }

    /// Adds the keys of a keyring file (e.g. a private network's release key).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be read, [`Error::Key`] as [`Self::with_armored`].
    pub fn with_file(self, path: &Path) -> Result<Self, Error> {
        let data = fs::read(path).map_err(|e| Error::io("read key file", path, e))?;
        self.with_armored(&data, &path.display().to_string())
    }

    /// The same keys with another threshold: how many distinct keys must sign (at least 1).
    #[must_use]
    pub fn with_threshold(mut self, threshold: usize) -> Self {
        self.threshold = threshold.max(1);
        self
    }

    /// The same keys for another role (named in errors).
    #[must_use]
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    pub(crate) fn add(&mut self, cert: Cert) {
        if !self
            .certs
            .iter()
            .any(|c| c.fingerprint() == cert.fingerprint())
        {
            self.certs.push(cert);
        }
    }

    pub(crate) fn add_retired(&mut self, cert: Cert, removed_in: u64) {
        let fpr = cert.fingerprint();
        if !self.certs.iter().any(|c| c.fingerprint() == fpr)
            && !self.retired.iter().any(|(c, _)| c.fingerprint() == fpr)
        {
            self.retired.push((cert, removed_in));
        }
    }

    /// The fingerprints of the trusted keys, uppercase hex.
    #[must_use]
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect()
    }

    /// How many distinct trusted keys must sign.
    #[must_use]
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The role these keys are trusted for.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether no key is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// The trusted certificates (public keys only).
    #[must_use]
    pub fn certs(&self) -> &[Cert] {
        &self.certs
    }

    /// The trusted and the retired keys: what the verifier may look signatures up with.
    pub(crate) fn known_certs(&self) -> Vec<Cert> {
        self.certs
            .iter()
            .cloned()
            .chain(self.retired.iter().map(|(c, _)| c.clone()))
            .collect()
    }

    /// Whether `fpr` is trusted; else the root version that removed it, if any.
    pub(crate) fn trusts(&self, fpr: &str) -> Result<(), Option<u64>> {
        if self.certs.iter().any(|c| c.fingerprint().to_hex() == fpr) {
            return Ok(());
        }
        Err(self
            .retired
            .iter()
            .find(|(c, _)| c.fingerprint().to_hex() == fpr)
            .map(|(_, v)| *v))
    }
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKeys")
            .field("role", &self.role)
            .field("fingerprints", &self.fingerprints())
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

/// Every certificate of a keyring, secret key material dropped.
pub(crate) fn parse_certs(data: &[u8], origin: &str) -> Result<Vec<Cert>, Error> {
    let key_err = |reason: String| Error::Key {
        origin: origin.to_owned(),
        reason,
    };
    let parser = CertParser::from_bytes(data).map_err(|e| key_err(e.to_string()))?;
    let mut certs = Vec::new();
    for cert in parser {
        let cert = cert.map_err(|e| key_err(e.to_string()))?;
        certs.push(cert.strip_secret_key_material());
    }
    if certs.is_empty() {
        return Err(key_err("no OpenPGP certificate found".to_owned()));
    }
    Ok(certs)
}

// === impl SigningKey ===

impl SigningKey {
    /// Generates a new signing key: an Ed25519 certification key with an Ed25519 signing
    /// subkey, OpenPGP v4 (so GnuPG 2.2 and `sq` read it), no expiry, no passphrase.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if generation fails.
    pub fn generate(user_id: &str) -> Result<Self, Error> {
        Self::generate_at(user_id, std::time::SystemTime::now())
    }

    /// [`Self::generate`] with the key's creation time set to `created` (keys for fixtures whose
    /// signatures are dated in the past must be older than them).
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if generation fails.
    pub fn generate_at(user_id: &str, created: std::time::SystemTime) -> Result<Self, Error> {
        let (cert, _revocation) = CertBuilder::new()
            .set_creation_time(created)
            .add_userid(user_id)
            .add_signing_subkey()
            .generate()
            .map_err(|e| Error::Key {
                origin: "generated".to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self { cert })
    }

    /// Parses a secret key (an unencrypted transferable secret key, armoured or binary, e.g.
    /// from `release-tool keygen`, `sq key generate` or `gpg --export-secret-keys` of a key
    /// without passphrase).
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if it does not parse or holds no usable unencrypted signing key.
    pub fn from_bytes(data: &[u8], origin: &str) -> Result<Self, Error> {
        let key_err = |reason: String| Error::Key {
            origin: origin.to_owned(),
            reason,
        };
        let cert = Cert::from_bytes(data).map_err(|e| key_err(e.to_string()))?;
        let key = Self { cert };
        // Fail now, not at the first release.
        key.keypair().map_err(|e| match e {
            Error::Key { reason, .. } => key_err(reason),
            other => other,
        })?;
        Ok(key)
    }

    /// Reads a secret key file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if it cannot be read, else as [`Self::from_bytes`].
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let data = fs::read(path).map_err(|e| Error::io("read key file", path, e))?;
        Self::from_bytes(&data, &path.display().to_string())
    }

    /// The primary key's fingerprint, uppercase hex.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// The public certificate, ASCII-armoured (what verifiers trust).
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if serialisation fails.
    pub fn public_armored(&self) -> Result<Vec<u8>, Error> {
        self.cert.armored().to_vec().map_err(|e| Error::Key {
            origin: self.fingerprint(),
            reason: e.to_string(),
        })
    }

    /// The public key as a one-key [`TrustedKeys`].
    ///
    /// # Errors
    ///
    /// As [`Self::public_armored`].
    pub fn trusted(&self) -> Result<TrustedKeys, Error> {
        TrustedKeys::empty().with_armored(&self.public_armored()?, "signing key")
    }

    /// Writes the secret key, ASCII-armoured, to a new file with mode 0600. Refuses to
    /// overwrite an existing file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file exists or cannot be written, [`Error::Key`] if serialisation
    /// fails.
    pub fn write_secret(&self, path: &Path) -> Result<(), Error> {
        let data = self
            .cert
            .as_tsk()
            .armored()
            .to_vec()
            .map_err(|e| Error::Key {
                origin: self.fingerprint(),
                reason: e.to_string(),
            })?;
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut file = opts
            .open(path)
            .map_err(|e| Error::io("create secret key file", path, e))?;
        file.write_all(&data)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("write secret key file", path, e))
    }

    /// A signing keypair: the first alive, unrevoked, signing-capable key with unencrypted
    /// secret material, under the standard policy, now.
    pub(crate) fn keypair(&self) -> Result<openpgp::crypto::KeyPair, Error> {
        let policy = StandardPolicy::new();
        let key_err = |reason: String| Error::Key {
            origin: self.fingerprint(),
            reason,
        };
        let key = self
            .cert
            .keys()
            .with_policy(&policy, None)
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .secret()
            .next()
            .ok_or_else(|| key_err("no usable secret signing key".to_owned()))?;
        key.key()
            .clone()
            .into_keypair()
            .map_err(|e| key_err(format!("secret signing key unusable (encrypted?): {e}")))
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("fingerprint", &self.fingerprint())
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_only_table_matches_the_key_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/keys");
        for (name, primary, sub) in TEST_ONLY_KEYS {
            let data = fs::read(dir.join(format!("{name}.pub"))).unwrap();
            let cert = Cert::from_bytes(&data).unwrap();
            assert_eq!(cert.fingerprint().to_hex(), *primary, "{name}");
            assert!(
                cert.keys()
                    .subkeys()
                    .any(|k| k.key().fingerprint().to_hex() == *sub),
                "{name}: signing subkey {sub}"
            );
            assert_eq!(test_only_key(&sub[24..]), Some((*name, *primary)));
        }
        assert_eq!(test_only_key("0123"), None);
    }

    #[test]
    fn debug_is_redacted() {
        let key = SigningKey::generate("t <t@example.invalid>").unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains("PRIVATE"));
        let trusted = key.trusted().unwrap();
        assert_eq!(trusted.fingerprints(), vec![key.fingerprint()]);
    }

    #[test]
    fn secret_file_is_0600_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SigningKey::generate("t <t@example.invalid>").unwrap();
        key.write_secret(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = SigningKey::from_file(&path).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert!(key.write_secret(&path).is_err(), "must not overwrite");
        // A public key alone cannot sign.
        let public = key.public_armored().unwrap();
        assert!(matches!(
            SigningKey::from_bytes(&public, "pub"),
            Err(Error::Key { .. })
        ));
    }
}

//! Keys: the set of keys trusted to sign releases, and the release signing key.
//!
//! [`TrustedKeys`] holds OpenPGP certificates (public keys only). It starts from the project's
//! embedded key ([`TrustedKeys::project`]) and takes extra keys from files or config for a
//! private network; several keys may be trusted at once, which is how a key is rotated (SPEC.md,
//! "Key rotation"). [`SigningKey`] holds secret key material for `release-tool` and tests; its
//! `Debug` never prints it.
//!
//! The embedded project key is a TEST-ONLY key whose secret is checked in under
//! `releases/testdata/keys/`. A production build must replace `testdata/keys/test-only-project.pub`
//! (see the README there).

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

/// The project's release-signing public key, ASCII-armoured, embedded in every build.
///
/// TEST-ONLY: its secret key is public in `releases/testdata/keys/`. Production must replace it.
pub const PROJECT_KEY: &str = include_str!("../testdata/keys/test-only-project.pub");

/// The keys trusted to sign release statements (public keys only).
#[derive(Clone, Default)]
pub struct TrustedKeys {
    certs: Vec<Cert>,
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
    /// No trusted key: nothing verifies until keys are added.
    #[must_use]
    pub fn empty() -> Self {
        Self::default()
    }

    /// The project's embedded key ([`PROJECT_KEY`]).
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if the embedded key does not parse (a build defect).
    pub fn project() -> Result<Self, Error> {
        Self::empty().with_armored(PROJECT_KEY.as_bytes(), "embedded project key")
    }

    /// Adds every certificate of an OpenPGP keyring (armoured or binary). Secret key material,
    /// if any, is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if the data holds no certificate or a malformed one; `origin` names the
    /// source in that error.
    pub fn with_armored(mut self, data: &[u8], origin: &str) -> Result<Self, Error> {
        let key_err = |reason: String| Error::Key {
            origin: origin.to_owned(),
            reason,
        };
        let parser = CertParser::from_bytes(data).map_err(|e| key_err(e.to_string()))?;
        let mut added = 0usize;
        for cert in parser {
            let cert = cert.map_err(|e| key_err(e.to_string()))?;
            let cert = cert.strip_secret_key_material();
            if !self
                .certs
                .iter()
                .any(|c| c.fingerprint() == cert.fingerprint())
            {
                self.certs.push(cert);
            }
            added += 1;
        }
        if added == 0 {
            return Err(key_err("no OpenPGP certificate found".to_owned()));
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

    /// The fingerprints of the trusted keys, uppercase hex.
    #[must_use]
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect()
    }

    /// Whether no key is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub(crate) fn certs(&self) -> &[Cert] {
        &self.certs
    }
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKeys")
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
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
        let (cert, _revocation) = CertBuilder::new()
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
    fn project_key_parses() {
        let keys = TrustedKeys::project().unwrap();
        assert_eq!(keys.fingerprints().len(), 1);
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

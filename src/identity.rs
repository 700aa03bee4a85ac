//! The relay's identity: its ed25519 key and the self-signed TLS certificate made from it.
//!
//! Files and formats are the reference relay's (spec §1.3, §6.1): `key.seed` holds a JSON string
//! with the base64url (no padding) 32-byte seed, mode 0600; `key.pub` the public key the same way;
//! `relay-cert.pem` a self-signed ed25519 certificate and `relay-key.pem` the same key as PKCS#8,
//! mode 0600. Unlike the reference, an existing key is never overwritten unless the caller says
//! so (spec §10 #7): the key is the relay's identity and what its earnings are bound to.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;

/// File names in the home directory.
pub mod files {
    /// The seed of the identity key.
    pub const SEED: &str = "key.seed";
    /// The public key.
    pub const PUB: &str = "key.pub";
    /// The TLS certificate.
    pub const CERT: &str = "relay-cert.pem";
    /// The TLS private key.
    pub const TLS_KEY: &str = "relay-key.pem";
    /// The license, unpacked by `init`.
    pub const LICENSE: &str = "LICENSE";
}

/// Errors reading or writing identity files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key file exists and overwriting it was not asked for.
    #[error("{} already exists; refusing to replace the relay's identity (use `init --force` to replace it)", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `key.seed` does not exist.
    #[error("{} does not exist: run `wireleap-relay init` to create the relay's identity", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// `key.seed` does not hold a valid seed.
    #[error("{} is not a valid key seed: {why}", path.display())]
    BadSeed {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the seed itself).
        why: String,
    },
    /// The certificate could not be made.
    #[error("could not create the TLS certificate: {0}")]
    Certificate(String),
}

/// What [`Identity::init`] did.
#[derive(Debug)]
pub struct Initialized {
    /// `key.seed`, when it existed and was kept.
    pub kept: Option<PathBuf>,
    /// The files written, in order.
    pub written: Vec<PathBuf>,
}

/// The relay's ed25519 identity. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key_b64())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The signing key, for the transport (TLS) and the signed API client.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public key as base64url without padding (the relay's id on the wire).
    pub fn public_key_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }

    /// Loads `key.seed` from `home`. A legacy bare (unquoted) seed is accepted and rewritten in
    /// the quoted form, as the reference does.
    ///
    /// # Errors
    /// [`Error::Io`] if unreadable, [`Error::BadSeed`] if malformed.
    pub fn load(home: &Path) -> Result<Self, Error> {
        let path = home.join(files::SEED);
        let text = fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::Missing { path: path.clone() }
            } else {
                Error::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let trimmed = text.trim();
        let (b64, legacy) = match serde_json::from_str::<String>(trimmed) {
            Ok(s) => (s, false),
            Err(_) if !trimmed.starts_with('"') => (trimmed.to_owned(), true),
            Err(e) => {
                return Err(Error::BadSeed {
                    path,
                    why: format!("not a JSON string ({e})"),
                });
            }
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| Error::BadSeed {
                path: path.clone(),
                why: "not base64url".into(),
            })?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::BadSeed {
            path: path.clone(),
            why: format!("expected 32 bytes, found {}", bytes.len()),
        })?;
        let id = Self {
            key: SigningKey::from_bytes(&seed),
        };
        if legacy {
            write_secret(&path, &id.seed_json())?;
        }
        Ok(id)
    }

    fn seed_json(&self) -> String {
        format!("\"{}\"", URL_SAFE_NO_PAD.encode(self.key.to_bytes()))
    }

    /// `init` in `home`: a new identity's four files (see [`Self::write_all`]). Without `force`,
    /// when `key.seed` exists but `relay-cert.pem` or `relay-key.pem` does not (a home restored
    /// from a backup of the key alone, a file removed), the existing key is kept and the rest is
    /// made from it: the relay keeps its identity, which `--force` would replace.
    ///
    /// # Errors
    /// As [`Self::write_all`]; those of [`Self::load`] for an existing `key.seed`.
    pub fn init(home: &Path, force: bool) -> Result<Initialized, Error> {
        let seed = home.join(files::SEED);
        let pair_incomplete = [files::CERT, files::TLS_KEY]
            .iter()
            .any(|name| fs::symlink_metadata(home.join(name)).is_err());
        if !force && fs::symlink_metadata(&seed).is_ok() && pair_incomplete {
            let written = Self::load(home)?.write_derived(home)?;
            return Ok(Initialized {
                kept: Some(seed),
                written,
            });
        }
        Ok(Initialized {
            kept: None,
            written: Self::generate().write_all(home, force)?,
        })
    }

    /// Writes `key.seed`, `key.pub`, `relay-cert.pem` and `relay-key.pem` into `home`.
    ///
    /// With `force` false, nothing is written when `key.seed` or `relay-key.pem` exists.
    /// Returns the paths written, in order.
    ///
    /// # Errors
    /// [`Error::Exists`] when refusing, [`Error::Io`] or [`Error::Certificate`] otherwise.
    pub fn write_all(&self, home: &Path, force: bool) -> Result<Vec<PathBuf>, Error> {
        if !force {
            for name in [files::SEED, files::TLS_KEY] {
                let path = home.join(name);
                if path.exists() {
                    return Err(Error::Exists { path });
                }
            }
        }
        let seed = home.join(files::SEED);
        write_secret(&seed, &self.seed_json())?;
        let mut written = vec![seed];
        written.extend(self.write_derived(home)?);
        Ok(written)
    }

    /// Makes `key.pub` say this key when it says another (a `key.seed` restored from a backup
    /// over a fresh install's) or is missing: operators and their tools read the relay's id from
    /// it. Returns what was done, for the log, or why it could not be (`None`: it was right).
    pub fn repair_public(&self, home: &Path) -> Option<String> {
        let path = home.join(files::PUB);
        let want = self.public_key_b64();
        let text = fs::read_to_string(&path).unwrap_or_default();
        let says =
            serde_json::from_str::<String>(text.trim()).unwrap_or_else(|_| text.trim().to_owned());
        if says == want {
            return None;
        }
        Some(match write_file(&path, &format!("\"{want}\""), 0o644) {
            Ok(()) => format!(
                "{} said {:?}, not this relay's key {want} (from {}): rewritten",
                path.display(),
                says,
                files::SEED
            ),
            Err(e) => format!(
                "{} does not say this relay's key {want} (from {}), and could not be rewritten: {e}",
                path.display(),
                files::SEED
            ),
        })
    }

    /// Writes what is made from the key: `key.pub`, `relay-cert.pem` and `relay-key.pem`.
    fn write_derived(&self, home: &Path) -> Result<Vec<PathBuf>, Error> {
        let (cert_pem, key_pem) = self.certificate()?;
        let public = home.join(files::PUB);
        let cert = home.join(files::CERT);
        let tls_key = home.join(files::TLS_KEY);
        write_file(&public, &format!("\"{}\"", self.public_key_b64()), 0o644)?;
        write_secret(&tls_key, &key_pem)?;
        write_file(&cert, &cert_pem, 0o644)?;
        Ok(vec![public, cert, tls_key])
    }

    /// A self-signed certificate as the reference makes it (spec §6.1): subject `O=Wireleap`,
    /// DNS name `wireleap.com`, random 128-bit serial, valid 100 years, digital signature and key
    /// encipherment, server auth, not a CA. Returns (certificate PEM, PKCS#8 key PEM).
    fn certificate(&self) -> Result<(String, String), Error> {
        use rcgen::{
            CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose, SerialNumber,
        };
        let cert_err = |e: rcgen::Error| Error::Certificate(e.to_string());
        let der = self
            .key
            .to_pkcs8_der()
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let key_pair = KeyPair::try_from(der.as_bytes()).map_err(cert_err)?;
        let mut params =
            CertificateParams::new(vec!["wireleap.com".to_owned()]).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Wireleap");
        params.distinguished_name = dn;
        let mut serial = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
        serial[0] &= 0x7f; // a positive INTEGER
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + time::Duration::days(365 * 100);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        let cert = params.self_signed(&key_pair).map_err(cert_err)?;
        Ok((cert.pem(), self.pkcs8_v1_pem()))
    }

    /// The key as PKCS#8 v1 (`PrivateKeyInfo`: algorithm id-Ed25519 and the 32-byte seed, no
    /// public key), exactly as Go's `x509.MarshalPKCS8PrivateKey` writes it, so OpenSSL, nginx
    /// and the reference relay all read it.
    fn pkcs8_v1_pem(&self) -> String {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.key.to_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
    }
}

/// The license the relay is distributed under, as `init` puts it in the home (spec §1.2).
const LICENSE: &str = include_str!("../LICENSE");

/// Writes `LICENSE` into `home` as `init` does (spec §1.2: the one file it unpacks), unless a
/// file of that name is there already (it is never overwritten). Returns its path when written.
///
/// # Errors
/// [`Error::Io`].
pub fn unpack_license(home: &Path) -> Result<Option<PathBuf>, Error> {
    let path = home.join(files::LICENSE);
    if fs::symlink_metadata(&path).is_ok() {
        return Ok(None);
    }
    write_file(&path, LICENSE, 0o644)?;
    Ok(Some(path))
}

/// Writes a file readable only by its owner (0600), replacing it atomically.
fn write_secret(path: &Path, text: &str) -> Result<(), Error> {
    write_file(path, text, 0o600)
}

/// Writes `text` with `mode`, replacing `path` atomically and durably.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    wireleap_home::durable::write_atomic(path, text.as_bytes(), mode).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_or_missing_key_pub_is_rewritten_from_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate();
        id.write_all(dir.path(), false).unwrap();
        assert_eq!(id.repair_public(dir.path()), None);
        let other = Identity::generate();
        let public = dir.path().join(files::PUB);
        std::fs::write(&public, format!("\"{}\"", other.public_key_b64())).unwrap();
        let said = id.repair_public(dir.path()).unwrap();
        assert!(said.contains("rewritten"), "{said}");
        assert_eq!(
            std::fs::read_to_string(&public).unwrap(),
            format!("\"{}\"", id.public_key_b64())
        );
        std::fs::remove_file(&public).unwrap();
        assert!(id.repair_public(dir.path()).is_some());
        assert_eq!(id.repair_public(dir.path()), None);
    }

    #[test]
    fn seed_round_trips_and_legacy_form_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate();
        id.write_all(dir.path(), false).unwrap();
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(loaded.public_key_b64(), id.public_key_b64());

        let seed_path = dir.path().join(files::SEED);
        let quoted = fs::read_to_string(&seed_path).unwrap();
        fs::write(&seed_path, quoted.trim_matches('"')).unwrap();
        let again = Identity::load(dir.path()).unwrap();
        assert_eq!(again.public_key_b64(), id.public_key_b64());
        assert_eq!(fs::read_to_string(&seed_path).unwrap(), quoted);
    }

    #[test]
    fn bad_seeds_are_named_errors_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(files::SEED), "\"c2hvcnQ\"").unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected 32 bytes, found 5"), "{err}");
    }

    #[test]
    fn debug_hides_the_secret() {
        let id = Identity::generate();
        let seed = URL_SAFE_NO_PAD.encode(id.key.to_bytes());
        let shown = format!("{id:?}");
        assert!(!shown.contains(&seed) && shown.contains("redacted"));
    }
}

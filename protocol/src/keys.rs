//! Keys and signatures as they travel on the wire: ed25519, base64url without padding.
//!
//! Owns the newtypes every other module signs and verifies with. It never reads or writes
//! files (key files are the relay's business) and never logs secret material: [`Seed`] and
//! [`SigningKey`] wrappers print `<redacted>`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use ed25519_dalek::SigningKey;

/// Length of an ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an ed25519 seed (the `key.seed` content) in bytes.
pub const SEED_LEN: usize = 32;

/// Why a base64url key, seed or signature could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The text is not base64url without padding.
    #[error("invalid base64url data: {0}")]
    Base64(String),
    /// The decoded bytes have the wrong length.
    #[error("invalid length: expected {expected} bytes, got {got}")]
    Length {
        /// Bytes expected.
        expected: usize,
        /// Bytes decoded.
        got: usize,
    },
}

/// Encodes bytes as base64url without padding (the encoding of every binary value on the wire).
pub fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
///
/// # Errors
/// [`DecodeError::Base64`] when the text is not valid base64url (padding is refused).
pub fn b64_decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| DecodeError::Base64(e.to_string()))
}

fn decode_fixed<const N: usize>(text: &str) -> Result<[u8; N], DecodeError> {
    let v = b64_decode(text)?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| DecodeError::Length {
        expected: N,
        got: v.len(),
    })
}

// === impl PublicKey ===

/// An ed25519 public key (relay id, contract id, servicekey, directory key).
///
/// Serialized as a base64url (no padding) JSON string. Equality is byte equality; the key is
/// not checked to be a valid curve point until it is used to verify.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Parses base64url without padding.
    ///
    /// # Errors
    /// [`DecodeError`] on bad base64 or a length other than 32.
    pub fn try_from_b64(text: &str) -> Result<Self, DecodeError> {
        decode_fixed(text).map(Self)
    }

    /// The base64url (no padding) text form.
    pub fn to_b64(&self) -> String {
        b64_encode(&self.0)
    }

    /// Verifies an ed25519 signature by this key over `msg`.
    ///
    /// Returns `false` for a bad signature and for bytes that are not a valid public key; it
    /// never panics.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> bool {
        match ed25519_dalek::VerifyingKey::from_bytes(&self.0) {
            Ok(vk) => vk
                .verify(msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
                .is_ok(),
            Err(_) => false,
        }
    }
}

impl From<&SigningKey> for PublicKey {
    fn from(sk: &SigningKey) -> Self {
        Self(sk.verifying_key().to_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_b64())
    }
}

impl FromStr for PublicKey {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from_b64(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_b64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::try_from_b64(&text).map_err(serde::de::Error::custom)
    }
}

// === impl Signature ===

/// An ed25519 signature, serialized as a base64url (no padding) JSON string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Wraps raw signature bytes.
    pub const fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw signature bytes.
    pub const fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }

    /// Parses base64url without padding.
    ///
    /// # Errors
    /// [`DecodeError`] on bad base64 or a length other than 64.
    pub fn try_from_b64(text: &str) -> Result<Self, DecodeError> {
        decode_fixed(text).map(Self)
    }

    /// The base64url (no padding) text form.
    pub fn to_b64(&self) -> String {
        b64_encode(&self.0)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b64())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_b64())
    }
}

impl FromStr for Signature {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from_b64(s)
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_b64())
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::try_from_b64(&text).map_err(serde::de::Error::custom)
    }
}

/// Signs `msg` with `key` and returns the wire signature.
pub fn sign(key: &SigningKey, msg: &[u8]) -> Signature {
    Signature(key.sign(msg).to_bytes())
}

/// Generates a fresh ed25519 signing key from the OS random source.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

// === impl Seed ===

/// The 32-byte ed25519 seed (`key.seed`): the relay's identity. `Debug` prints `<redacted>`.
///
/// Serialized as a base64url (no padding) JSON string, the form of `key.seed`.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed([u8; SEED_LEN]);

impl Seed {
    /// A fresh random seed.
    pub fn generate() -> Self {
        Self(generate_signing_key().to_bytes())
    }

    /// Wraps raw seed bytes.
    pub const fn from_bytes(bytes: [u8; SEED_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses base64url without padding (the inside of the `key.seed` JSON string).
    ///
    /// # Errors
    /// [`DecodeError`] on bad base64 or a length other than 32.
    pub fn try_from_b64(text: &str) -> Result<Self, DecodeError> {
        decode_fixed(text).map(Self)
    }

    /// The base64url text. Named so that writing a secret out is visible at the call site.
    pub fn expose_b64(&self) -> String {
        b64_encode(&self.0)
    }

    /// The raw seed bytes.
    pub const fn expose_bytes(&self) -> &[u8; SEED_LEN] {
        &self.0
    }

    /// The signing key made from this seed.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.0)
    }

    /// The public key of this seed.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.signing_key())
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

impl Serialize for Seed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expose_b64())
    }
}

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::try_from_b64(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_and_rejects_bad_lengths() {
        let sk = generate_signing_key();
        let pk = PublicKey::from(&sk);
        let json = serde_json::to_string(&pk).unwrap();
        assert_eq!(json.len(), 43 + 2);
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), pk);
        assert_eq!(
            PublicKey::try_from_b64("AAAA"),
            Err(DecodeError::Length {
                expected: 32,
                got: 3
            })
        );
        assert!(matches!(
            PublicKey::try_from_b64("a+b/"),
            Err(DecodeError::Base64(_))
        ));
        // Padding is not accepted.
        assert!(PublicKey::try_from_b64(&format!("{}=", pk.to_b64())).is_err());
    }

    #[test]
    fn sign_and_verify() {
        let sk = generate_signing_key();
        let pk = PublicKey::from(&sk);
        let sig = sign(&sk, b"hello");
        assert!(pk.verify(b"hello", &sig));
        assert!(!pk.verify(b"hellp", &sig));
        // Not a valid point: verification fails instead of panicking.
        let bogus = PublicKey::from_bytes([0xff; 32]);
        assert!(!bogus.verify(b"hello", &sig));
    }

    #[test]
    fn seed_debug_is_redacted() {
        let seed = Seed::generate();
        let dbg = format!("{seed:?}");
        assert!(!dbg.contains(&seed.expose_b64()));
        assert!(dbg.contains("redacted"));
        let back = Seed::try_from_b64(&seed.expose_b64()).unwrap();
        assert_eq!(back.public_key(), seed.public_key());
    }
}

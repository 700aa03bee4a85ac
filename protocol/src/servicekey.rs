//! Servicekeys and the contract's signature over a settlement window (spec §5.2).
//!
//! A client owns a servicekey (a fresh ed25519 key) that a service contract activated; the
//! contract's answer is a [`Contract`] object, signed over the string
//! `<contract_pubkey_b64>:<settlement_open>:<settlement_close>`. Every sharetoken carries it.
//! This module is pure: no I/O, no clock (callers pass `now`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::{self, PublicKey, Signature, SigningKey};

/// Why a contract signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The contract object carries no `public_key`.
    #[error("contract public key is null")]
    MissingPublicKey,
    /// The contract object carries no `signature`.
    #[error("contract data `{digest}` are not signed: signature is missing")]
    MissingSignature {
        /// The signing string that should have been signed.
        digest: String,
    },
    /// The signature does not verify under the contract key (the reference's text).
    #[error("contract data `{digest}` are not signed by signature `{signature}`")]
    BadSignature {
        /// The signing string.
        digest: String,
        /// The offending signature, base64url.
        signature: String,
    },
}

/// The contract's signed statement about a servicekey (the `contract` JSON object).
///
/// Key order on the wire: `settlement_open`, `settlement_close`, `public_key`, `signature`,
/// each omitted when empty/zero, as the reference writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Contract {
    /// Unix seconds: servicekey usable before, sharetokens submittable from.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub settlement_open: i64,
    /// Unix seconds: sharetokens no longer submittable from.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub settlement_close: i64,
    /// The contract's public key (the contract id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKey>,
    /// Contract signature over [`Contract::signing_string`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Contract {
    /// Signs a settlement window with the contract key (contract side, or tests).
    pub fn sign(contract_key: &SigningKey, settlement_open: i64, settlement_close: i64) -> Self {
        let public_key = PublicKey::from(contract_key);
        let digest = signing_string(&public_key, settlement_open, settlement_close);
        Self {
            settlement_open,
            settlement_close,
            public_key: Some(public_key),
            signature: Some(keys::sign(contract_key, digest.as_bytes())),
        }
    }

    /// The string the contract signs: `<contract_pubkey_b64>:<open>:<close>`.
    ///
    /// A missing public key contributes an empty string, as in the reference.
    pub fn signing_string(&self) -> String {
        let pk = self.public_key.map(|k| k.to_b64()).unwrap_or_default();
        format!("{pk}:{}:{}", self.settlement_open, self.settlement_close)
    }

    /// Verifies the contract signature.
    ///
    /// # Errors
    /// [`ContractError`] naming what is missing or wrong.
    pub fn verify(&self) -> Result<(), ContractError> {
        let pk = self.public_key.ok_or(ContractError::MissingPublicKey)?;
        let digest = self.signing_string();
        let sig = self
            .signature
            .ok_or_else(|| ContractError::MissingSignature {
                digest: digest.clone(),
            })?;
        if pk.verify(digest.as_bytes(), &sig) {
            Ok(())
        } else {
            Err(ContractError::BadSignature {
                digest,
                signature: sig.to_b64(),
            })
        }
    }

    /// Whether a servicekey (or sharetoken) under this contract is expired at `now`
    /// (unix seconds): `settlement_open <= now`.
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.settlement_open <= now
    }

    /// Whether sharetokens may be submitted at `now`: `open <= now < close`.
    pub fn is_settling_at(&self, now: i64) -> bool {
        self.settlement_open <= now && now < self.settlement_close
    }
}

/// `<contract_pubkey_b64>:<open>:<close>` for a given key and window.
pub fn signing_string(contract: &PublicKey, open: i64, close: i64) -> String {
    format!("{}:{open}:{close}", contract.to_b64())
}

// === impl Servicekey ===

/// A client's servicekey: private key, public key, and the contract's activation.
///
/// JSON form (client side): `{"private_key","public_key","contract"}` where `private_key` is
/// the 64-byte ed25519 private key (seed ‖ public key), base64url. `Debug` redacts it.
#[derive(Clone)]
pub struct Servicekey {
    key: SigningKey,
    /// The contract's signed activation; `None` until activated.
    pub contract: Option<Contract>,
}

impl Servicekey {
    /// A fresh, not yet activated servicekey.
    pub fn generate() -> Self {
        Self {
            key: keys::generate_signing_key(),
            contract: None,
        }
    }

    /// A servicekey from an existing signing key.
    pub fn from_signing_key(key: SigningKey, contract: Option<Contract>) -> Self {
        Self { key, contract }
    }

    /// The servicekey's public key (what `/servicekey/activate` is sent).
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.key)
    }

    /// The signing key (used to sign sharetokens).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

impl fmt::Debug for Servicekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Servicekey")
            .field("public_key", &self.public_key())
            .field("private_key", &"<redacted>")
            .field("contract", &self.contract)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct ServicekeyWire {
    private_key: String,
    public_key: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contract: Option<Contract>,
}

impl Serialize for Servicekey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ServicekeyWire {
            private_key: keys::b64_encode(&self.key.to_keypair_bytes()),
            public_key: self.public_key(),
            contract: self.contract.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Servicekey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = ServicekeyWire::deserialize(d)?;
        let bytes = keys::b64_decode(&w.private_key).map_err(D::Error::custom)?;
        let arr = <[u8; 64]>::try_from(bytes.as_slice())
            .map_err(|_| D::Error::custom("servicekey private_key must be 64 bytes"))?;
        let key = SigningKey::from_keypair_bytes(&arr).map_err(D::Error::custom)?;
        if PublicKey::from(&key) != w.public_key {
            return Err(D::Error::custom(
                "servicekey public_key does not match private_key",
            ));
        }
        Ok(Self {
            key,
            contract: w.contract,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_sign_verify_and_tamper() {
        let ck = keys::generate_signing_key();
        let c = Contract::sign(&ck, 1_795_312_840, 1_795_316_380);
        assert_eq!(
            c.signing_string(),
            format!("{}:1795312840:1795316380", PublicKey::from(&ck))
        );
        c.verify().unwrap();
        let mut bad = c.clone();
        bad.settlement_close += 1;
        assert!(matches!(
            bad.verify(),
            Err(ContractError::BadSignature { .. })
        ));
        let mut nokey = c.clone();
        nokey.public_key = None;
        assert_eq!(nokey.verify(), Err(ContractError::MissingPublicKey));
    }

    #[test]
    fn contract_json_key_order() {
        let ck = keys::generate_signing_key();
        let c = Contract::sign(&ck, 10, 20);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.starts_with(r#"{"settlement_open":10,"settlement_close":20,"public_key":""#));
        assert!(json.contains(r#","signature":""#));
    }

    #[test]
    fn servicekey_json_round_trip_and_redacted() {
        let ck = keys::generate_signing_key();
        let mut sk = Servicekey::generate();
        sk.contract = Some(Contract::sign(&ck, 10, 20));
        let json = serde_json::to_string(&sk).unwrap();
        let back: Servicekey = serde_json::from_str(&json).unwrap();
        assert_eq!(back.public_key(), sk.public_key());
        assert_eq!(back.contract, sk.contract);
        assert!(format!("{sk:?}").contains("<redacted>"));
    }
}

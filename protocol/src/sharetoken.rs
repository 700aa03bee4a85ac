//! Sharetokens: the client's per-hop proof of use that a relay later submits (spec §5.3, §5.4).
//!
//! Owns the exact JSON shape, the ten-field signing string, client-side signing, signature
//! verification and the relay-side acceptance rules (in the reference's order, with its
//! error texts). Replay protection (rule 5) needs the ledger's store and is not done here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::keys::{self, PublicKey, Signature};
use crate::servicekey::{Contract, ContractError, Servicekey};

/// The contract activations whose signature a relay has verified, so each is checked once.
///
/// A token carries its servicekey's activation: the contract's signature over its own key and
/// the settlement window (spec §5.2), the same for every token of every client of that window.
/// Verifying the same bytes again gives the same answer, so an activation equal in every field
/// (key, window and signature) to one that verified is not verified again: one signature check
/// per stream instead of two. A small number of the latest are kept (a contract has one
/// window at a time, a relay a few contracts); anything else is verified as before.
#[derive(Debug, Default)]
pub struct VerifiedContracts {
    recent: std::sync::Mutex<std::collections::VecDeque<Contract>>,
}

impl VerifiedContracts {
    /// How many activations are remembered (the oldest goes first).
    pub const CAPACITY: usize = 16;

    fn contains(&self, contract: &Contract) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(contract)
    }

    fn insert(&self, contract: &Contract) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.contains(contract) {
            return;
        }
        if recent.len() == Self::CAPACITY {
            recent.pop_front();
        }
        recent.push_back(contract.clone());
    }
}

/// The only sharetoken format version.
pub const SHARETOKEN_VERSION: i64 = 0;

/// A sharetoken, field order as the reference writes it (`version`, `public_key`,
/// `timestamp`, `relay_pubkey`, `share_key`, `signature`, `nonce`, `contract`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sharetoken {
    /// Always 0.
    pub version: i64,
    /// The servicekey's public key.
    pub public_key: PublicKey,
    /// Unix seconds at creation.
    pub timestamp: i64,
    /// The relay this token pays.
    pub relay_pubkey: PublicKey,
    /// Always `""` (placeholder in the reference).
    pub share_key: String,
    /// Servicekey signature over [`Sharetoken::signing_string`].
    pub signature: Signature,
    /// 32 lowercase hex characters, random.
    pub nonce: String,
    /// The contract's activation of the servicekey.
    pub contract: Contract,
}

/// Why a sharetoken's signatures do not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The servicekey signature is wrong.
    #[error("sharetoken client signature is invalid")]
    ClientSignatureInvalid,
    /// The contract object has no public key.
    #[error("contract public key is null")]
    ContractKeyMissing,
    /// The contract signature is wrong.
    #[error("error while verifying sharetoken contract data: {0}")]
    ContractSignatureInvalid(ContractError),
}

/// Why a relay refuses a sharetoken (spec §5.4 rules 1–4, in that order).
///
/// The `Display` texts are the reference relay's and go into the 400 `wl-status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// Rule 1: the token is bound to another relay.
    #[error("sharetoken relay public key mismatch: expecting {expected}, got {got}")]
    RelayMismatch {
        /// This relay's key.
        expected: PublicKey,
        /// The key in the token.
        got: PublicKey,
    },
    /// Rule 2: `settlement_open` is not in the future.
    #[error("sharetoken is expired")]
    Expired,
    /// Rule 3: the contract key is not one of the configured contracts.
    #[error("this sharetoken was not signed by a trusted service contract")]
    UntrustedContract,
    /// Rule 4: a signature is wrong.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl Sharetoken {
    /// Creates and signs a token for `relay` at `timestamp` with a fresh random nonce.
    ///
    /// # Errors
    /// [`SignError::NotActivated`] when the servicekey has no contract activation.
    pub fn new(
        servicekey: &Servicekey,
        relay: PublicKey,
        timestamp: i64,
    ) -> Result<Self, SignError> {
        Self::sign(servicekey, relay, timestamp, new_nonce())
    }

    /// Creates and signs a token with a given nonce (deterministic, for tests).
    ///
    /// # Errors
    /// [`SignError::NotActivated`] when the servicekey has no contract activation.
    pub fn sign(
        servicekey: &Servicekey,
        relay: PublicKey,
        timestamp: i64,
        nonce: String,
    ) -> Result<Self, SignError> {
        let contract = servicekey.contract.clone().ok_or(SignError::NotActivated)?;
        let mut st = Self {
            version: SHARETOKEN_VERSION,
            public_key: servicekey.public_key(),
            timestamp,
            relay_pubkey: relay,
            share_key: String::new(),
            signature: Signature::from_bytes([0; 64]),
            nonce,
            contract,
        };
        st.signature = keys::sign(servicekey.signing_key(), st.signing_string().as_bytes());
        Ok(st)
    }

    /// The string the servicekey signs: ten fields joined with `:` — version, servicekey
    /// pub, timestamp, relay pub, share_key, nonce, contract pub, contract signature,
    /// settlement_open, settlement_close (binary values base64url without padding).
    pub fn signing_string(&self) -> String {
        let cpk = self
            .contract
            .public_key
            .map(|k| k.to_b64())
            .unwrap_or_default();
        let csig = self
            .contract
            .signature
            .map(|s| s.to_b64())
            .unwrap_or_default();
        format!(
            "{}:{}:{}:{}:{}:{}:{}:{}:{}:{}",
            self.version,
            self.public_key,
            self.timestamp,
            self.relay_pubkey,
            self.share_key,
            self.nonce,
            cpk,
            csig,
            self.contract.settlement_open,
            self.contract.settlement_close
        )
    }

    /// Verifies both signatures: the client's first, then the contract's.
    ///
    /// # Errors
    /// A distinct [`VerifyError`] variant per failure.
    pub fn verify(&self) -> Result<(), VerifyError> {
        self.verify_with(&VerifiedContracts::default())
    }

    /// [`Sharetoken::verify`], checking the contract's signature only if `verified` has not
    /// seen this exact activation verify before (and remembering it when it does).
    ///
    /// # Errors
    /// As [`Sharetoken::verify`].
    pub fn verify_with(&self, verified: &VerifiedContracts) -> Result<(), VerifyError> {
        if !self
            .public_key
            .verify(self.signing_string().as_bytes(), &self.signature)
        {
            return Err(VerifyError::ClientSignatureInvalid);
        }
        if verified.contains(&self.contract) {
            return Ok(());
        }
        match self.contract.verify() {
            Ok(()) => {
                verified.insert(&self.contract);
                Ok(())
            }
            Err(ContractError::MissingPublicKey) => Err(VerifyError::ContractKeyMissing),
            Err(e) => Err(VerifyError::ContractSignatureInvalid(e)),
        }
    }

    /// The relay-side acceptance checks of spec §5.4 rules 1–4, in the reference's order.
    ///
    /// `now` is unix seconds; `trusted` holds the configured contracts' ids.
    ///
    /// # Errors
    /// The first failing rule as an [`AcceptError`].
    pub fn accept(
        &self,
        relay: &PublicKey,
        now: i64,
        trusted: &[PublicKey],
    ) -> Result<(), AcceptError> {
        self.accept_with(relay, now, trusted, &VerifiedContracts::default())
    }

    /// [`Sharetoken::accept`] with the contract activations a relay already verified (see
    /// [`VerifiedContracts`]): the same rules, the same order, the same errors.
    ///
    /// # Errors
    /// As [`Sharetoken::accept`].
    pub fn accept_with(
        &self,
        relay: &PublicKey,
        now: i64,
        trusted: &[PublicKey],
        verified: &VerifiedContracts,
    ) -> Result<(), AcceptError> {
        if self.relay_pubkey != *relay {
            return Err(AcceptError::RelayMismatch {
                expected: *relay,
                got: self.relay_pubkey,
            });
        }
        if self.is_expired_at(now) {
            return Err(AcceptError::Expired);
        }
        match self.contract.public_key {
            Some(k) if trusted.contains(&k) => {}
            _ => return Err(AcceptError::UntrustedContract),
        }
        self.verify_with(verified)?;
        Ok(())
    }

    /// The contract id (contract public key), if present.
    pub fn contract_id(&self) -> Option<PublicKey> {
        self.contract.public_key
    }

    /// `settlement_open <= now`: the token can no longer be admitted.
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.contract.is_expired_at(now)
    }

    /// `settlement_open <= now < settlement_close`: the token can be submitted.
    pub fn is_settling_at(&self, now: i64) -> bool {
        self.contract.is_settling_at(now)
    }

    /// The identity used for replay protection and store file names: the signature in
    /// base64url (the store layout is `<contract>/<signature>.json`).
    pub fn id(&self) -> String {
        self.signature.to_b64()
    }
}

impl fmt::Debug for Sharetoken {
    // Tokens are bearer-like proofs of payment: keep them out of logs except for their id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sharetoken")
            .field("id", &self.id())
            .field("relay_pubkey", &self.relay_pubkey)
            .field("contract", &self.contract.public_key)
            .field("settlement_open", &self.contract.settlement_open)
            .field("settlement_close", &self.contract.settlement_close)
            .finish_non_exhaustive()
    }
}

/// Why a sharetoken cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The servicekey has no contract activation yet.
    #[error("servicekey is not activated by a contract")]
    NotActivated,
}

/// A fresh random nonce: 16 random bytes as 32 lowercase hex characters.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn fixed_token() -> Sharetoken {
        let contract = Contract::sign(&key(1), 1_795_312_840, 1_795_316_380);
        let sk = Servicekey::from_signing_key(key(2), Some(contract));
        let relay = PublicKey::from(&key(3));
        Sharetoken::sign(
            &sk,
            relay,
            1_795_312_780,
            "023220f555d688a4ea0e552dab2d478d".into(),
        )
        .unwrap()
    }

    #[test]
    fn a_verified_activation_is_trusted_only_for_exactly_its_bytes() {
        let verified = VerifiedContracts::default();
        let good = fixed_token();
        good.verify_with(&verified).unwrap();
        assert!(verified.contains(&good.contract));
        // Same activation, a wrong client signature: still refused.
        let mut bad_client = good.clone();
        bad_client.timestamp += 1;
        assert_eq!(
            bad_client.verify_with(&verified),
            Err(VerifyError::ClientSignatureInvalid)
        );
        // The activation changed in any field (here its window; the token re-signed by the
        // client, so only the contract's signature is wrong): checked, and refused.
        let contract = Contract {
            settlement_close: good.contract.settlement_close + 1,
            ..good.contract.clone()
        };
        let sk = Servicekey::from_signing_key(key(2), Some(contract));
        let forged =
            Sharetoken::sign(&sk, good.relay_pubkey, good.timestamp, good.nonce.clone()).unwrap();
        assert!(matches!(
            forged.verify_with(&verified),
            Err(VerifyError::ContractSignatureInvalid(_))
        ));
        assert!(!verified.contains(&forged.contract));
        // Bounded: the oldest goes.
        for i in 0..(VerifiedContracts::CAPACITY as i64 + 4) {
            verified.insert(&Contract::sign(&key(1), 1_795_312_840 + i, 1_795_316_380));
        }
        assert_eq!(
            verified.recent.lock().unwrap().len(),
            VerifiedContracts::CAPACITY
        );
        assert!(!verified.contains(&good.contract));
    }

    /// Known answer: keys from seeds [1;32] (contract), [2;32] (servicekey), [3;32] (relay).
    #[test]
    fn signing_string_known_answer() {
        let st = fixed_token();
        let expected = concat!(
            "0:gTl3Dqh9F19Wo1Rmw0x-zMuNipG07jeiXfYPW4_Js5Q:1795312780:",
            "7UkoxijRwsbq6QM4kFmVYSlZJzpcY_k2NsFGFKyHN9E::023220f555d688a4ea0e552dab2d478d:",
            "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w:",
            "w34ChmH6pqNyTRqeUVVIq7TBsv8199_MsBRoEBmAJzs_jJPm4XLWki5LVWm2mGLhL9-Aq10qIL3qnKX2C3cOAA:",
            "1795312840:1795316380"
        );
        assert_eq!(st.signing_string(), expected);
        // ed25519 is deterministic, so the client signature is a known answer too.
        assert_eq!(
            st.signature.to_b64(),
            "1bq5NSnj4iGcugNqanrPeFqa-R-vHDvUPYDqJYjFvIZMDf0hIwWGrcsU7-DKE94jgkmVxWHJeFUVVp7FluYUBg"
        );
        assert_eq!(
            st.signature,
            crate::keys::sign(&key(2), expected.as_bytes())
        );
        st.verify().unwrap();
    }

    #[test]
    fn json_field_order() {
        let st = fixed_token();
        let json = serde_json::to_string(&st).unwrap();
        let keys: Vec<&str> = [
            "\"version\":0,\"public_key\":",
            ",\"timestamp\":1795312780,\"relay_pubkey\":",
            ",\"share_key\":\"\",\"signature\":",
            ",\"nonce\":\"023220f555d688a4ea0e552dab2d478d\",\"contract\":{\"settlement_open\":",
        ]
        .to_vec();
        let mut at = 0;
        for k in keys {
            let pos = json[at..]
                .find(k)
                .unwrap_or_else(|| panic!("{k} in {json}"));
            at += pos + k.len();
        }
        let back: Sharetoken = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn verify_distinguishes_failures() {
        let st = fixed_token();
        let mut t = st.clone();
        t.timestamp += 1;
        assert_eq!(t.verify(), Err(VerifyError::ClientSignatureInvalid));

        // Re-sign the client part over a tampered contract: only the contract check fails.
        let mut c = st.contract.clone();
        c.settlement_close += 1;
        let sk = Servicekey::from_signing_key(key(2), Some(c));
        let t = Sharetoken::sign(&sk, st.relay_pubkey, st.timestamp, st.nonce.clone()).unwrap();
        assert!(matches!(
            t.verify(),
            Err(VerifyError::ContractSignatureInvalid(
                ContractError::BadSignature { .. }
            ))
        ));
        assert!(
            t.verify()
                .unwrap_err()
                .to_string()
                .starts_with("error while verifying sharetoken contract data: contract data `")
        );
    }

    #[test]
    fn accept_rules_in_order() {
        let st = fixed_token();
        let relay = PublicKey::from(&key(3));
        let cid = PublicKey::from(&key(1));
        let now = 1_795_312_800;
        st.accept(&relay, now, &[cid]).unwrap();

        let other = PublicKey::from(&key(4));
        let e = st.accept(&other, now, &[cid]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("sharetoken relay public key mismatch: expecting {other}, got {relay}")
        );
        assert_eq!(
            st.accept(&relay, 1_795_312_840, &[cid]),
            Err(AcceptError::Expired)
        );
        assert_eq!(
            st.accept(&relay, now, &[other]),
            Err(AcceptError::UntrustedContract)
        );
        let mut bad = st.clone();
        bad.nonce = "00000000000000000000000000000000".into();
        let e = bad.accept(&relay, now, &[cid]).unwrap_err();
        assert_eq!(e.to_string(), "sharetoken client signature is invalid");
    }

    #[test]
    fn nonce_shape() {
        let n = new_nonce();
        assert_eq!(n.len(), 32);
        assert!(
            n.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn json_round_trip(
                cseed in any::<[u8; 32]>(), sseed in any::<[u8; 32]>(), rseed in any::<[u8; 32]>(),
                open in 0i64..4_000_000_000, len in 0i64..100_000, ts in 0i64..4_000_000_000,
                nonce in any::<[u8; 16]>(),
            ) {
                let contract = Contract::sign(&SigningKey::from_bytes(&cseed), open, open + len);
                let sk = Servicekey::from_signing_key(SigningKey::from_bytes(&sseed), Some(contract));
                let relay = PublicKey::from(&SigningKey::from_bytes(&rseed));
                let st = Sharetoken::sign(&sk, relay, ts, hex::encode(nonce)).unwrap();
                let json = serde_json::to_string(&st).unwrap();
                let back: Sharetoken = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(&back, &st);
                prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
                prop_assert!(back.verify().is_ok());
            }
        }
    }
}

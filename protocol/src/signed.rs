//! The signed API conventions of relay→directory and relay→contract calls (spec §4.2, §4.4,
//! §4.8): signature headers over the exact body bytes, version headers, `Idempotency-Key`,
//! the reply version check, and the bcrypt proof-of-work challenge.
//!
//! Transport-free: builds and checks header *values*; the HTTP client (reqwest in the relay,
//! axum in the devnet) applies them. bcrypt is CPU-bound: async callers run
//! [`answer_challenge`] / [`verify_challenge_response`] on a blocking thread.

use crate::keys::{self, PublicKey, Signature, SigningKey};
use crate::version;

/// `Wireleap-Relay-Pubkey`: the signing relay's key.
pub const HEADER_RELAY_PUBKEY: &str = "Wireleap-Relay-Pubkey";
/// `Wireleap-Relay-Signature`: ed25519 over the request body.
pub const HEADER_RELAY_SIGNATURE: &str = "Wireleap-Relay-Signature";
/// `Wireleap-Directory-Pubkey`: the directory's key on a signed reply.
pub const HEADER_DIRECTORY_PUBKEY: &str = "Wireleap-Directory-Pubkey";
/// `Wireleap-Directory-Signature`: ed25519 over the reply body.
pub const HEADER_DIRECTORY_SIGNATURE: &str = "Wireleap-Directory-Signature";
/// `Wireleap-Directory-Challenge`: the PoW challenge (`<cost>~<random>`).
pub const HEADER_DIRECTORY_CHALLENGE: &str = "Wireleap-Directory-Challenge";
/// `Wireleap-Directory-Response`: the bcrypt answer to the challenge.
pub const HEADER_DIRECTORY_RESPONSE: &str = "Wireleap-Directory-Response";
/// `Idempotency-Key`: 32 lowercase hex characters, on every POST.
pub const HEADER_IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The body content type of every signed call.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The body of a signed GET (spec §4.2: GETs carry `null`).
pub const GET_BODY: &[u8] = b"null";

/// Highest bcrypt cost this crate will compute or demand (cost 20 takes about a minute; a
/// hostile directory must not be able to pin a core for hours).
pub const MAX_CHALLENGE_COST: u32 = 20;
/// Lowest bcrypt cost.
pub const MIN_CHALLENGE_COST: u32 = 4;
/// The cost Go's bcrypt uses for one below [`MIN_CHALLENGE_COST`] (its `DefaultCost`).
const GO_DEFAULT_COST: u32 = 10;

/// Which interface version headers a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interface {
    /// `Wireleap-Relay-Dir-Version: 0.2.0`.
    RelayDir,
    /// `Wireleap-Relay-Contract-Version: 0.1.0`.
    RelayContract,
}

impl Interface {
    /// The header name.
    pub const fn header(self) -> &'static str {
        match self {
            Self::RelayDir => version::HEADER_RELAY_DIR_VERSION,
            Self::RelayContract => version::HEADER_RELAY_CONTRACT_VERSION,
        }
    }

    /// Our version of this interface.
    pub const fn version(self) -> semver::Version {
        match self {
            Self::RelayDir => version::RELAY_DIR,
            Self::RelayContract => version::RELAY_CONTRACT,
        }
    }
}

/// Errors of the signed API checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The pubkey header is absent.
    #[error("missing {0} header")]
    MissingPubkey(&'static str),
    /// The signature header is absent.
    #[error("missing {0} header")]
    MissingSignature(&'static str),
    /// The pubkey header does not decode.
    #[error("invalid {header} header: {reason}")]
    BadPubkey {
        /// Which header.
        header: &'static str,
        /// Decode error.
        reason: String,
    },
    /// The signature header does not decode.
    #[error("invalid {header} header: {reason}")]
    BadSignatureEncoding {
        /// Which header.
        header: &'static str,
        /// Decode error.
        reason: String,
    },
    /// The signature does not verify over the body (the reference's cause text).
    #[error("invalid signature")]
    InvalidSignature,
    /// A signed reply came from another key than expected.
    #[error("unexpected signer: expecting {expected}, got {got}")]
    UnexpectedSigner {
        /// The trusted key.
        expected: PublicKey,
        /// The key in the header.
        got: PublicKey,
    },
}

/// Errors of the proof-of-work helpers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    /// The challenge has no `<cost>~` prefix or the cost is not a number.
    #[error("malformed challenge: {0:?}")]
    Malformed(String),
    /// The cost is outside [`MIN_CHALLENGE_COST`]..=[`MAX_CHALLENGE_COST`].
    #[error("challenge cost {0} out of range 4..=20")]
    Cost(u32),
    /// bcrypt failed.
    #[error("bcrypt: {0}")]
    Bcrypt(String),
}

/// A fresh `Idempotency-Key` value: 16 random bytes as 32 lowercase hex characters.
pub fn idempotency_key() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The two relay signature headers for `body`: `Wireleap-Relay-Pubkey` and
/// `Wireleap-Relay-Signature`.
pub fn relay_signature_headers(key: &SigningKey, body: &[u8]) -> [(&'static str, String); 2] {
    [
        (HEADER_RELAY_PUBKEY, PublicKey::from(key).to_b64()),
        (HEADER_RELAY_SIGNATURE, keys::sign(key, body).to_b64()),
    ]
}

/// The two directory signature headers for a reply `body` (spec §4.8, directory side).
pub fn directory_signature_headers(key: &SigningKey, body: &[u8]) -> [(&'static str, String); 2] {
    [
        (HEADER_DIRECTORY_PUBKEY, PublicKey::from(key).to_b64()),
        (HEADER_DIRECTORY_SIGNATURE, keys::sign(key, body).to_b64()),
    ]
}

/// The `type` the reference relay puts in every withdrawal request (`POST /payout/withdrawals`,
/// spec §5.7): a placeholder in the reference code, sent verbatim on the wire, so we send it too.
pub const WITHDRAWAL_TYPE: &str = "TODO";

/// What a signed relay request carries besides the signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `Wireleap-Relay-Version` (software version), if set.
    pub software_version: Option<String>,
    /// Interface version headers to send (a heartbeat omits [`Interface::RelayDir`]).
    pub interfaces: Vec<Interface>,
    /// `Idempotency-Key` (POST only; reuse the same key on retries).
    pub idempotency_key: Option<String>,
}

/// The full header set of a signed relay request for `body`, in the reference's order:
/// `Content-Type`, `Idempotency-Key`, `Wireleap-Relay-Version`, interface versions,
/// `Wireleap-Relay-Pubkey`, `Wireleap-Relay-Signature`.
pub fn request_headers(
    key: &SigningKey,
    body: &[u8],
    opts: &RequestOptions,
) -> Vec<(&'static str, String)> {
    let mut h = vec![("Content-Type", CONTENT_TYPE_JSON.to_owned())];
    if let Some(k) = &opts.idempotency_key {
        h.push((HEADER_IDEMPOTENCY_KEY, k.clone()));
    }
    if let Some(v) = &opts.software_version {
        h.push((version::HEADER_RELAY_VERSION, v.clone()));
    }
    for i in &opts.interfaces {
        h.push((i.header(), i.version().to_string()));
    }
    h.extend(relay_signature_headers(key, body));
    h
}

/// Verifies a signature carried in a pubkey/signature header pair over `body`.
///
/// Returns the signer's key. Header names are only used in error texts.
///
/// # Errors
/// [`AuthError`] for a missing or undecodable header or a signature that does not verify.
pub fn verify_signature(
    pubkey_header: (&'static str, Option<&str>),
    signature_header: (&'static str, Option<&str>),
    body: &[u8],
) -> Result<PublicKey, AuthError> {
    let (pk_name, pk) = pubkey_header;
    let (sig_name, sig) = signature_header;
    let pk = pk.ok_or(AuthError::MissingPubkey(pk_name))?;
    let sig = sig.ok_or(AuthError::MissingSignature(sig_name))?;
    let pk = PublicKey::try_from_b64(pk.trim()).map_err(|e| AuthError::BadPubkey {
        header: pk_name,
        reason: e.to_string(),
    })?;
    let sig = Signature::try_from_b64(sig.trim()).map_err(|e| AuthError::BadSignatureEncoding {
        header: sig_name,
        reason: e.to_string(),
    })?;
    if pk.verify(body, &sig) {
        Ok(pk)
    } else {
        Err(AuthError::InvalidSignature)
    }
}

/// Server side: verifies a relay's signed request and returns the relay's key.
///
/// # Errors
/// As [`verify_signature`].
pub fn verify_relay_request(
    pubkey: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<PublicKey, AuthError> {
    verify_signature(
        (HEADER_RELAY_PUBKEY, pubkey),
        (HEADER_RELAY_SIGNATURE, signature),
        body,
    )
}

/// Client side: verifies a directory's signed reply (spec §4.8), optionally pinning the key.
///
/// # Errors
/// As [`verify_signature`], plus [`AuthError::UnexpectedSigner`].
pub fn verify_directory_reply(
    pubkey: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    expected: Option<&PublicKey>,
) -> Result<PublicKey, AuthError> {
    let got = verify_signature(
        (HEADER_DIRECTORY_PUBKEY, pubkey),
        (HEADER_DIRECTORY_SIGNATURE, signature),
        body,
    )?;
    match expected {
        Some(e) if *e != got => Err(AuthError::UnexpectedSigner { expected: *e, got }),
        _ => Ok(got),
    }
}

/// Caller side: checks a reply's version header for `interface` (absent passes).
///
/// # Errors
/// [`version::VersionError::Server`]: "invalid server API version: expecting version
/// 0.N.x, got V".
pub fn check_reply_version(
    interface: Interface,
    header: Option<&str>,
) -> Result<(), version::VersionError> {
    version::check_reply(&interface.version(), header)
}

/// The cost of a challenge: the decimal number before the first `~`.
///
/// # Errors
/// [`PowError::Malformed`] or [`PowError::Cost`].
pub fn challenge_cost(challenge: &str) -> Result<u32, PowError> {
    let (cost, _) = challenge
        .split_once('~')
        .ok_or_else(|| PowError::Malformed(challenge.to_owned()))?;
    let cost: u32 = cost
        .parse()
        .map_err(|_| PowError::Malformed(challenge.to_owned()))?;
    if !(MIN_CHALLENGE_COST..=MAX_CHALLENGE_COST).contains(&cost) {
        return Err(PowError::Cost(cost));
    }
    Ok(cost)
}

/// Answers a directory challenge: bcrypt of the whole challenge string at the cost named in
/// it, in the `$2a$` form Go produces (spec §4.4).
///
/// # Errors
/// [`PowError`] for a malformed challenge, a cost out of range, or a bcrypt failure.
pub fn answer_challenge(challenge: &str) -> Result<String, PowError> {
    let cost = match challenge_cost(challenge) {
        // Below bcrypt's least cost the reference's bcrypt computes at its default cost, which
        // a directory's check (the cost read from the answer) accepts.
        Err(PowError::Cost(low)) if low < MIN_CHALLENGE_COST => GO_DEFAULT_COST,
        other => other?,
    };
    bcrypt::hash_with_result(challenge.as_bytes(), cost)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| PowError::Bcrypt(e.to_string()))
}

/// Directory side: a fresh challenge `<cost>~<32 hex>`.
///
/// # Errors
/// [`PowError::Cost`] when `cost` is out of range.
pub fn new_challenge(cost: u32) -> Result<String, PowError> {
    if !(MIN_CHALLENGE_COST..=MAX_CHALLENGE_COST).contains(&cost) {
        return Err(PowError::Cost(cost));
    }
    Ok(format!(
        "{cost}~{}",
        hex::encode(rand::random::<[u8; 16]>())
    ))
}

/// Directory side: whether `response` is a bcrypt hash of `challenge` with at least the
/// challenge's cost. Never panics on hostile input.
pub fn verify_challenge_response(challenge: &str, response: &str) -> bool {
    let Ok(cost) = challenge_cost(challenge) else {
        return false;
    };
    let Ok(parts) = response.parse::<bcrypt::HashParts>() else {
        return false;
    };
    if parts.get_cost() < cost {
        return false;
    }
    bcrypt::verify(challenge.as_bytes(), response).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_sign_exact_body() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let body = br#"{"role":"fronting"}"#;
        let opts = RequestOptions {
            software_version: Some("0.7.0".into()),
            interfaces: vec![Interface::RelayDir, Interface::RelayContract],
            idempotency_key: Some(idempotency_key()),
        };
        let h = request_headers(&key, body, &opts);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("Wireleap-Relay-Dir-Version"), Some("0.2.0"));
        assert_eq!(get("Wireleap-Relay-Contract-Version"), Some("0.1.0"));
        assert_eq!(get("Wireleap-Relay-Version"), Some("0.7.0"));
        let idem = get("Idempotency-Key").unwrap();
        assert_eq!(idem.len(), 32);
        assert!(
            idem.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let pk = verify_relay_request(get(HEADER_RELAY_PUBKEY), get(HEADER_RELAY_SIGNATURE), body)
            .unwrap();
        assert_eq!(pk, PublicKey::from(&key));
        assert_eq!(
            verify_relay_request(get(HEADER_RELAY_PUBKEY), get(HEADER_RELAY_SIGNATURE), b"x"),
            Err(AuthError::InvalidSignature)
        );
        assert!(matches!(
            verify_relay_request(None, get(HEADER_RELAY_SIGNATURE), body),
            Err(AuthError::MissingPubkey(_))
        ));
        assert!(matches!(
            verify_relay_request(Some("!!"), get(HEADER_RELAY_SIGNATURE), body),
            Err(AuthError::BadPubkey { .. })
        ));
    }

    #[test]
    fn directory_reply_pinning() {
        let key = SigningKey::from_bytes(&[6; 32]);
        let other = PublicKey::from(&SigningKey::from_bytes(&[7; 32]));
        let [(_, pk), (_, sig)] = directory_signature_headers(&key, b"{}");
        assert!(verify_directory_reply(Some(&pk), Some(&sig), b"{}", None).is_ok());
        assert!(matches!(
            verify_directory_reply(Some(&pk), Some(&sig), b"{}", Some(&other)),
            Err(AuthError::UnexpectedSigner { .. })
        ));
    }

    #[test]
    fn reply_version_check_text() {
        assert!(check_reply_version(Interface::RelayDir, None).is_ok());
        assert_eq!(
            check_reply_version(Interface::RelayContract, Some("0.2.0"))
                .unwrap_err()
                .to_string(),
            "invalid server API version: expecting version 0.1.x, got 0.2.0"
        );
    }

    #[test]
    fn pow_round_trip() {
        let c = new_challenge(4).unwrap();
        let (cost, rand) = c.split_once('~').unwrap();
        assert_eq!(cost, "4");
        assert_eq!(rand.len(), 32);
        let r = answer_challenge(&c).unwrap();
        assert!(r.starts_with("$2a$04$"), "{r}");
        assert!(verify_challenge_response(&c, &r));
        assert!(!verify_challenge_response(&c, "garbage"));
        assert!(!verify_challenge_response("4~other", &r));
        // A lower cost than demanded is refused.
        let cheap = answer_challenge("4~x").unwrap();
        let dear = new_challenge(5).unwrap();
        assert!(!verify_challenge_response(&dear, &cheap));
    }

    #[test]
    fn pow_known_answer_from_spec_transcript() {
        // §4.9: the reference mock accepted this response for this challenge.
        assert!(verify_challenge_response(
            "4~c0ffee1234567890",
            "$2a$04$10HY/1EyVarPVQcAqFQQE.rG94tEi8G4HZcNdlrPAUQt1/kJYOgAO"
        ));
    }

    #[test]
    fn pow_long_challenge_uses_first_72_bytes_like_go() {
        let c = format!("4~{}", "ab".repeat(60));
        let r = answer_challenge(&c).unwrap();
        assert!(verify_challenge_response(&c, &r));
    }

    #[test]
    fn pow_malformed() {
        assert!(matches!(
            answer_challenge("nocost"),
            Err(PowError::Malformed(_))
        ));
        assert!(matches!(
            answer_challenge("x~y"),
            Err(PowError::Malformed(_))
        ));
        assert_eq!(answer_challenge("31~y"), Err(PowError::Cost(31)));
        // As Go's bcrypt: a cost below 4 is answered at its default, 10.
        let low = answer_challenge("3~y").unwrap();
        assert!(low.starts_with("$2a$10$"), "{low}");
        assert!(bcrypt::verify("3~y", &low).unwrap());
        assert!(answer_challenge("0~y").unwrap().starts_with("$2a$10$"));
        assert!(new_challenge(40).is_err());
    }
}

//! Signing: turns a [`Statement`] or a root into an OpenPGP clear-signed text, with one or
//! several keys, and adds a key holder's signature to a document that others signed first.
//!
//! Used by `release-tool publish` and by tests; never by the relay or the supervisor, which
//! only verify. The output is what `gpg --clearsign` would write (`Hash: SHA512`), so
//! `gpg --verify` checks it and `sha512sum -c` reads its checksum lines.

use std::io::Write as _;
use std::time::SystemTime;

use sequoia_openpgp as openpgp;

use openpgp::parse::Parse as _;
use openpgp::serialize::Serialize as _;
use openpgp::serialize::stream::{Message, Signer};
use openpgp::types::HashAlgorithm;

use crate::Error;
use crate::keys::SigningKey;
use crate::manifest::Statement;

/// Clear-signs `text` with `key`, with the signature made at `at` (SHA-512).
///
/// # Errors
///
/// [`Error::Key`] if the key cannot sign, [`Error::Sign`] if signing fails.
pub fn clearsign(key: &SigningKey, text: &str, at: SystemTime) -> Result<Vec<u8>, Error> {
    clearsign_by(std::slice::from_ref(key), text, at)
}

/// Clear-signs `text` with every key of `keys` (one signature each, in one signature block, as
/// `gpg --clearsign -u A -u B` does), the signatures made at `at` (SHA-512).
///
/// # Errors
///
/// [`Error::Sign`] for no key, [`Error::Key`] if a key cannot sign, [`Error::Sign`] if signing
/// fails.
pub fn clearsign_by(keys: &[SigningKey], text: &str, at: SystemTime) -> Result<Vec<u8>, Error> {
    let sign_err = |e: openpgp::anyhow::Error| Error::Sign {
        reason: e.to_string(),
    };
    let mut pairs = keys.iter().map(SigningKey::keypair);
    let first = pairs.next().ok_or_else(|| Error::Sign {
        reason: "no signing key given".to_owned(),
    })??;
    let mut sink = Vec::new();
    {
        let message = Message::new(&mut sink);
        let mut signer = Signer::new(message, first).map_err(sign_err)?;
        for pair in pairs {
            signer = signer.add_signer(pair?).map_err(sign_err)?;
        }
        let mut signer = signer
            .cleartext()
            .hash_algo(HashAlgorithm::SHA512)
            .map_err(sign_err)?
            .creation_time(at)
            .build()
            .map_err(sign_err)?;
        signer.write_all(text.as_bytes()).map_err(|e| Error::Sign {
            reason: e.to_string(),
        })?;
        signer.finalize().map_err(sign_err)?;
    }
    Ok(sink)
}

/// Adds `key`'s signature to a clear-signed document (a root or a statement that another key
/// holder signed first), keeping every signature it has. The signed text is not changed.
/// Refuses a key that already signed it.
///
/// # Errors
///
/// Framing errors of the document, [`Error::Sign`] if the key signed it already or the
/// signatures cannot be merged, [`Error::Key`] if the key cannot sign.
pub fn add_signature(document: &[u8], key: &SigningKey, at: SystemTime) -> Result<Vec<u8>, Error> {
    let block = crate::verify::signed_block(document)?;
    let (text, _) = crate::verify::signatures(block, &[], at)?;
    let sign_err = |reason: String| Error::Sign { reason };
    let mut packets = signature_packets(block)?;
    let fresh = clearsign(key, &text, at)?;
    let mut added = signature_packets(&fresh)?;
    let mine = key.trusted()?.known_certs();
    let by_key = |sig: &openpgp::packet::Signature| {
        sig.get_issuers().iter().any(|h| {
            mine.iter()
                .any(|c| c.keys().key_handle(h.clone()).next().is_some())
        })
    };
    if packets.iter().any(by_key) {
        return Err(sign_err(format!(
            "key {} signed it already",
            key.fingerprint()
        )));
    }
    packets.append(&mut added);
    // The new document: the text part of the fresh one (the same text), then every signature.
    let fresh_text = std::str::from_utf8(&fresh).map_err(|e| sign_err(e.to_string()))?;
    let cut = fresh_text
        .find(BEGIN_SIGNATURE)
        .ok_or_else(|| sign_err("signed output without a signature block".to_owned()))?;
    let mut out = fresh_text
        .as_bytes()
        .get(..cut)
        .unwrap_or_default()
        .to_vec();
    {
        let mut writer = openpgp::armor::Writer::new(&mut out, openpgp::armor::Kind::Signature)
            .map_err(|e| sign_err(e.to_string()))?;
        for sig in &packets {
            openpgp::Packet::from(sig.clone())
                .serialize(&mut writer)
                .map_err(|e| sign_err(e.to_string()))?;
        }
        writer.finalize().map_err(|e| sign_err(e.to_string()))?;
    }
    Ok(out)
}

const BEGIN_SIGNATURE: &str = "-----BEGIN PGP SIGNATURE-----";

/// The signature packets of a clear-signed block's armoured signature part.
fn signature_packets(block: &[u8]) -> Result<Vec<openpgp::packet::Signature>, Error> {
    let sign_err = |reason: String| Error::Sign { reason };
    let text = std::str::from_utf8(block).map_err(|e| sign_err(e.to_string()))?;
    let at = text
        .find(BEGIN_SIGNATURE)
        .ok_or_else(|| sign_err("no signature block".to_owned()))?;
    let armored = text.get(at..).unwrap_or_default();
    let pile = openpgp::PacketPile::from_bytes(armored.as_bytes())
        .map_err(|e| sign_err(format!("signature block: {e}")))?;
    let mut sigs = Vec::new();
    for packet in pile.into_children() {
        match packet {
            openpgp::Packet::Signature(sig) => sigs.push(sig),
            other => return Err(sign_err(format!("unexpected {} packet", other.tag()))),
        }
    }
    Ok(sigs)
}

/// Renders `statement` and clear-signs it, the signature dated at its `issued` time.
/// `hint` is the statement's file name, used in its instruction comments.
///
/// # Errors
///
/// As [`clearsign`].
pub fn sign_statement(
    key: &SigningKey,
    statement: &Statement,
    hint: &str,
) -> Result<Vec<u8>, Error> {
    clearsign(key, &statement.render(hint), statement.issued)
}

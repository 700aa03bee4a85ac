//! Signing: turns a [`Statement`] into an OpenPGP clear-signed text.
//!
//! Used by `release-tool publish` and by tests; never by the relay or the supervisor, which
//! only verify. The output is what `gpg --clearsign` would write (`Hash: SHA512`), so
//! `gpg --verify` checks it and `sha512sum -c` reads its checksum lines.

use std::io::Write as _;
use std::time::SystemTime;

use sequoia_openpgp as openpgp;

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
    let keypair = key.keypair()?;
    let sign_err = |e: openpgp::anyhow::Error| Error::Sign {
        reason: e.to_string(),
    };
    let mut sink = Vec::new();
    {
        let message = Message::new(&mut sink);
        let mut signer = Signer::new(message, keypair)
            .map_err(sign_err)?
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

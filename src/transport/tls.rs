//! The server's TLS configuration: TLS 1.3 only, ALPN `h2`, the certificate made by `init`
//! (spec §6.1). No client certificates are requested; clients do not verify ours either — the
//! relay's identity travels in the sharetoken binding, not in TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::files;

/// Errors loading the TLS material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("could not read {}: {source} (run `wireleap-relay init` to create it)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{}: {why}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the pair.
    #[error("the TLS certificate and key do not form a usable pair: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the server configuration from `relay-cert.pem` and `relay-key.pem` in `home`.
///
/// # Errors
/// [`Error::Read`], [`Error::Malformed`] or [`Error::Rustls`].
pub fn server_config(home: &Path) -> Result<Arc<ServerConfig>, Error> {
    let cert_path = home.join(files::CERT);
    let key_path = home.join(files::TLS_KEY);
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Malformed {
            path: cert_path.clone(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Malformed {
            path: cert_path,
            why: "no CERTIFICATE block".into(),
        });
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| Error::Malformed {
            path: key_path.clone(),
            why: e.to_string(),
        })?
        .ok_or_else(|| Error::Malformed {
            path: key_path.clone(),
            why: "no PRIVATE KEY block".into(),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

//! TLS for a client of a relay (the circuit client, the relay's own probe): TLS 1.3 only, ALPN
//! `h2`, and **no certificate verification**.
//!
//! Wireleap clients do not verify relay certificates (spec §6.1): a relay's identity is bound
//! by the sharetoken, not by TLS. [`AcceptAnyServerCertificate`] therefore accepts every
//! certificate; it still checks the handshake signature against the presented certificate's
//! key, so the TLS session itself is intact. Never use this verifier for anything else.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// A certificate verifier that accepts any server certificate (Wireleap semantics).
#[derive(Debug)]
pub struct AcceptAnyServerCertificate {
    algs: WebPkiSupportedAlgorithms,
}

impl AcceptAnyServerCertificate {
    /// A verifier using the ring provider's signature algorithms.
    pub fn new() -> Self {
        Self {
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl Default for AcceptAnyServerCertificate {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The TLS 1.3 cipher suites the client offers, in the order of Go's `crypto/tls` (the
/// reference client's) on a machine with AES instructions: AES-128-GCM, AES-256-GCM,
/// ChaCha20-Poly1305. This relay picks by the client's order, so the devnet client negotiates
/// what a real client does; rustls' own default would put AES-256-GCM first.
pub fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ]
}

/// The client TLS configuration: ring, TLS 1.3 only with [`cipher_suites`], ALPN `h2`, any
/// certificate accepted.
///
/// # Errors
/// A rustls error if the provider rejects TLS 1.3 (never with ring).
pub fn client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    client_config_offering(cipher_suites())
}

/// [`client_config`], offering `suites` in their order instead (a client of another platform).
///
/// # Errors
/// A rustls error if no suite in `suites` is a TLS 1.3 suite.
pub fn client_config_offering(
    suites: Vec<rustls::SupportedCipherSuite>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::ring::default_provider()
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate::new()))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The ring provider, for servers built in tests.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SNI name for a host: DNS names as given; IP literals yield an IP server name, for
/// which rustls sends no SNI (as the Go client).
///
/// # Errors
/// When `host` is neither a valid DNS name nor an IP address.
pub fn server_name(
    host: &str,
) -> Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}

//! A blocking TLS client that accepts any certificate, as Wireleap clients do (spec §6.1), with
//! the protocol versions chosen by the test (the devnet's verifier; it checks handshake
//! signatures but no certificate chain). For tests only.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::SupportedProtocolVersion;
use rustls::pki_types::ServerName;
use wireleap_devnet::client::tls::AcceptAnyServerCertificate;

/// What a handshake negotiated.
pub struct Handshake {
    pub version: rustls::ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
    pub peer_cert: Vec<u8>,
}

/// Connects to `addr` offering TLS 1.2 and 1.3 and ALPN `h2`, and completes a handshake.
pub fn handshake(addr: SocketAddr) -> Result<Handshake, String> {
    handshake_with(addr, rustls::DEFAULT_VERSIONS)
}

/// As [`handshake`], offering only `versions`.
pub fn handshake_with(
    addr: SocketAddr,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Handshake, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate::new()))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("wireleap.com").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    // Flush anything pending so the server sees a complete handshake.
    let _ = conn.writer().flush();
    let _ = conn.complete_io(&mut tcp);
    let mut sink = [0u8; 1];
    let _ = conn.reader().read(&mut sink);
    Ok(Handshake {
        version: conn.protocol_version().unwrap(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        peer_cert: conn.peer_certificates().unwrap()[0].to_vec(),
    })
}

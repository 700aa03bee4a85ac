//! Test support: signed HTTP calls, echo targets, and a small relay-protocol peer.
//!
//! The peer is a test double of a relay (TLS 1.3 + HTTP/2, `wl-payload` parsed and the
//! sharetoken accepted with the protocol crate, bytes spliced to `remote`); the real relay
//! lives in `src/transport`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use wireleap_protocol::signed::{self, Interface, RequestOptions};
use wireleap_protocol::status::{self, WL_STATUS};
use wireleap_protocol::{PublicKey, Request, SigningKey, Status, unix_now};

/// Every test body runs under this bound.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A signed relay call's answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn status(&self) -> Status {
        Status::from_json(self.body.trim().as_bytes())
            .unwrap_or_else(|e| panic!("not a status: {e}: {}", self.body))
    }
    pub(crate) fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(n).and_then(|v| v.to_str().ok())
    }
}

/// Performs a signed call as a relay would (spec §4.2).
pub(crate) async fn signed_call(
    key: &SigningKey,
    method: reqwest::Method,
    url: &str,
    body: &[u8],
    interfaces: &[Interface],
    extra: &[(&str, &str)],
) -> Reply {
    let opts = RequestOptions {
        software_version: Some("0.7.0".into()),
        interfaces: interfaces.to_vec(),
        idempotency_key: (method == reqwest::Method::POST).then(signed::idempotency_key),
    };
    let mut req = reqwest::Client::new()
        .request(method, url)
        .timeout(Duration::from_secs(30))
        .body(body.to_vec());
    for (k, v) in signed::request_headers(key, body, &opts) {
        req = req.header(k, v);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("body");
    Reply {
        code,
        headers,
        body,
    }
}

/// A TCP echo server; returns its address.
pub(crate) async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A UDP echo socket; returns its address.
pub(crate) async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A closed port (bound then dropped).
pub(crate) async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// What a test peer saw.
#[derive(Debug, Default)]
pub(crate) struct PeerStats {
    pub(crate) connections: AtomicUsize,
    pub(crate) admitted: AtomicUsize,
    pub(crate) refused: AtomicUsize,
}

/// A relay-protocol test peer.
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) pubkey: PublicKey,
    pub(crate) key: SigningKey,
    pub(crate) stats: Arc<PeerStats>,
}

impl Peer {
    pub(crate) fn address(&self) -> String {
        format!("wireleap://{}", self.addr)
    }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec!["wireleap.com".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(wireleap_devnet::client::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Starts a peer that trusts `contract` and identifies as a fresh key.
pub(crate) async fn start_peer(contract: PublicKey) -> Peer {
    let key = wireleap_protocol::keys::generate_signing_key();
    let pubkey = PublicKey::from(&key);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stats = Arc::new(PeerStats::default());
    let acceptor = tls_acceptor();
    let st = stats.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let _ = tcp.set_nodelay(true);
            st.connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let st = st.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Default (64 KiB) windows on purpose: the client's flow control is exercised.
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let st = st.clone();
                    tokio::spawn(handle(req, respond, pubkey, contract, st));
                }
            });
        }
    });
    Peer {
        addr,
        pubkey,
        key,
        stats,
    }
}

async fn handle(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    me: PublicKey,
    contract: PublicKey,
    stats: Arc<PeerStats>,
) {
    let mut head = http::Response::builder().status(200);
    if req.method() != http::Method::PUT {
        let r = head.status(405).body(()).unwrap();
        if let Ok(mut s) = respond.send_response(r, false) {
            let _ = s.send_data(
                Bytes::from(status::METHOD_NOT_ALLOWED.status().to_json()),
                true,
            );
        }
        return;
    }
    head = head.header("trailer", WL_STATUS);
    let mut send = match respond.send_response(head.body(()).unwrap(), false) {
        Ok(s) => s,
        Err(_) => return,
    };
    let finish = |send: &mut h2::SendStream<Bytes>, s: Status| {
        let mut t = HeaderMap::new();
        t.insert(WL_STATUS, HeaderValue::from_str(&s.to_json()).unwrap());
        let _ = send.send_trailers(t);
    };
    let payload = req
        .headers()
        .get(wireleap_protocol::payload::WL_PAYLOAD)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let connect = match Request::parse(&payload) {
        Ok(Request::Ping) => {
            let body = format!("{}\n", Status::pong(me.to_b64()).to_json());
            let _ = send.send_data(Bytes::from(body), true);
            return;
        }
        Ok(Request::Connect(c)) => c,
        Err(e) => {
            stats.refused.fetch_add(1, Ordering::SeqCst);
            return finish(
                &mut send,
                Status::new(400, e.to_string()).with_origin(me.to_b64()),
            );
        }
    };
    if let Err(e) = connect.token.accept(&me, unix_now(), &[contract]) {
        stats.refused.fetch_add(1, Ordering::SeqCst);
        return finish(
            &mut send,
            Status::new(400, e.to_string()).with_origin(me.to_b64()),
        );
    }
    stats.admitted.fetch_add(1, Ordering::SeqCst);
    let origin = if connect.remote.is_target() {
        "target".to_owned()
    } else {
        me.to_b64()
    };
    let mut body = req.into_body();
    if connect.network.is_udp() {
        let sock = match UdpSocket::bind("127.0.0.1:0").await {
            Ok(s) => s,
            Err(e) => {
                return finish(
                    &mut send,
                    Status::new(502, e.to_string()).with_origin(origin),
                );
            }
        };
        if let Err(e) = sock.connect(connect.remote.host_port()).await {
            return finish(
                &mut send,
                Status::new(502, e.to_string()).with_origin(origin),
            );
        }
        let mut buf = vec![0u8; 65_536];
        loop {
            tokio::select! {
                d = body.data() => match d {
                    Some(Ok(d)) => {
                        let _ = body.flow_control().release_capacity(d.len());
                        let _ = sock.send(&d).await;
                    }
                    _ => break,
                },
                r = sock.recv(&mut buf) => match r {
                    Ok(n) => { let _ = send.send_data(Bytes::copy_from_slice(&buf[..n]), false); }
                    Err(_) => break,
                },
            }
        }
        let _ = send.send_data(Bytes::new(), true);
        return;
    }
    let tcp = match tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(connect.remote.host_port()),
    )
    .await
    {
        Ok(Ok(t)) => {
            let _ = t.set_nodelay(true);
            t
        }
        Ok(Err(e)) => {
            return finish(
                &mut send,
                Status::new(502, e.to_string()).with_origin(origin),
            );
        }
        Err(_) => {
            return finish(
                &mut send,
                Status::new(408, "dial timeout").with_origin(origin),
            );
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            d = body.data() => match d {
                Some(Ok(d)) => {
                    let _ = body.flow_control().release_capacity(d.len());
                    if wr.write_all(&d).await.is_err() { break; }
                }
                // Client END_STREAM closes the remote (no half-close, spec §6.5).
                _ => break,
            },
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => { let _ = send.send_data(Bytes::copy_from_slice(&buf[..n]), false); }
            },
        }
    }
    let _ = send.send_data(Bytes::new(), true);
}

//! In-process tests of the data path: real [`Transport`]s on 127.0.0.1:0 inside an actix
//! system, with a pre-enrolled [`Admission`], a real [`Ledger`], the devnet circuit client and
//! local echo targets. The e2e tests (`tests/e2e/transport.rs`) run the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use wireleap_devnet::client::{self, CircuitClient, ClientConfig, Hop, StreamEnd};
use wireleap_protocol::keys::generate_signing_key;
use wireleap_protocol::{
    InitPayload, Network, PublicKey, Servicekey, Sharetoken, SigningKey, Status, unix_now,
};

use super::{Deps, Drain, Transport, TransportStatus};
use crate::config::{self, Config, ListenAddress};
use crate::directory::Admission;
use crate::identity::Identity;
use crate::ledger::Ledger;

const CONFIG: &str = r#"{"address":"127.0.0.1:0","contracts":{"https://contract.example":
    {"address":"wireleap://127.0.0.1:1","role":"backing"}}}"#;
/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

/// A stand-in contract: its key, registered and enrolled in an [`Admission`].
struct Net {
    contract: SigningKey,
    admission: Admission,
}

impl Net {
    fn new() -> Self {
        let contract = generate_signing_key();
        let admission = Admission::new();
        let id = PublicKey::from(&contract).to_b64();
        admission.register(&id, "https://contract.example");
        admission.set_enrolled(&id, true);
        admission.set_started();
        Self {
            contract,
            admission,
        }
    }

    fn contract_id(&self) -> String {
        PublicKey::from(&self.contract).to_b64()
    }

    fn servicekey(&self) -> Servicekey {
        let now = unix_now();
        client::servicekey_signed_by(&self.contract, now + 600, now + 3600)
    }

    async fn relay(&self) -> Relay {
        self.relay_with(|_| {}).await
    }

    async fn relay_with(&self, edit: impl FnOnce(&mut Config)) -> Relay {
        let home = tempfile::tempdir().unwrap();
        let identity = Identity::generate();
        identity.write_all(home.path(), false).unwrap();
        let tls = super::tls::server_config(home.path()).unwrap();
        let mut config = config::parse(CONFIG.as_bytes()).unwrap().config;
        config.address = ListenAddress {
            host: "127.0.0.1".into(),
            port: 0,
        };
        config.danger_zone.allow_loopback = true;
        edit(&mut config);
        let deps = Deps {
            relay_pubkey: identity.public_key_b64(),
            admission: self.admission.clone(),
            ledger: Ledger::new().admitter(),
        };
        let transport = Transport::bind(&config, tls, deps).await.unwrap();
        let addr = transport.local_addr();
        Relay {
            addr,
            pubkey: PublicKey::try_from_b64(&identity.public_key_b64()).unwrap(),
            transport: transport.start(),
            _home: home,
        }
    }

    fn client(&self, relays: &[&Relay]) -> CircuitClient {
        CircuitClient::new(
            self.servicekey(),
            relays.iter().map(|r| r.hop()).collect(),
            ClientConfig::default(),
        )
        .unwrap()
    }
}

struct Relay {
    addr: SocketAddr,
    pubkey: PublicKey,
    transport: Addr<Transport>,
    _home: tempfile::TempDir,
}

impl Relay {
    fn hop(&self) -> Hop {
        Hop::new(format!("wireleap://{}", self.addr), self.pubkey)
    }

    fn origin(&self) -> String {
        self.pubkey.to_b64()
    }
}

/// A TCP echo target.
async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A UDP echo target.
async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A target that sends bytes forever and never reads.
async fn tcp_firehose() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 64 << 10];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` and reads the same number of bytes back, concurrently; then ends the stream.
async fn round_trip(client: &CircuitClient, target: SocketAddr, data: &[u8]) {
    let s = tokio::time::timeout(WAIT, client.open(&target.to_string(), Network::Tcp))
        .await
        .unwrap()
        .unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let back = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.unwrap();
        back
    };
    let (back, ()) = tokio::time::timeout(WAIT, async {
        tokio::join!(back, async { w.write_all(data).await.unwrap() })
    })
    .await
    .unwrap();
    assert!(back == data, "bytes differ after the round trip");
    let mut s = r.unsplit(w);
    s.finish();
    let end = tokio::time::timeout(WAIT, s.wait_end()).await.unwrap();
    assert_eq!(end, StreamEnd::Clean);
}

/// Sends `d` as one datagram and waits for it back, whole, as one frame.
async fn udp_echo_one(s: &mut client::H2Stream, d: &[u8]) {
    s.send_chunk(Bytes::copy_from_slice(d)).await.unwrap();
    let back = tokio::time::timeout(WAIT, s.recv_chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), d.len(), "one datagram is one frame");
    assert!(back == d, "a datagram did not come back");
}

async fn udp_round_trip(client: &CircuitClient, target: SocketAddr) {
    let mut s = tokio::time::timeout(WAIT, client.open(&target.to_string(), Network::Udp))
        .await
        .unwrap()
        .unwrap();
    for len in [1usize, 1200, 9000, 65_507] {
        udp_echo_one(&mut s, &pattern(len, len as u8)).await;
    }
    s.finish();
    assert_eq!(
        tokio::time::timeout(WAIT, s.wait_end()).await.unwrap(),
        StreamEnd::Clean
    );
}

// === raw HTTP/2 client for hostile requests ===

async fn h2_conn(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client::tls::client_config().unwrap())
        .connect(client::tls::server_name("wireleap.com").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

#[derive(Debug)]
struct Answer {
    http: u16,
    trailer_header: bool,
    body: Vec<u8>,
    status: Option<Status>,
}

async fn ask(
    conn: &h2::client::SendRequest<Bytes>,
    method: Method,
    payload: Option<&str>,
) -> Answer {
    tokio::time::timeout(WAIT, async {
        let mut req = http::Request::builder()
            .method(method)
            .uri("https://wireleap.com/");
        if let Some(p) = payload {
            req = req.header("wl-payload", p);
        }
        let mut ready = conn.clone().ready().await.unwrap();
        let (resp, _send) = ready.send_request(req.body(()).unwrap(), false).unwrap();
        let resp = resp.await.unwrap();
        let http = resp.status().as_u16();
        let trailer_header = resp
            .headers()
            .get("trailer")
            .is_some_and(|v| v == "wl-status");
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(c) = body.data().await {
            let c = c.unwrap();
            let _ = body.flow_control().release_capacity(c.len());
            bytes.extend_from_slice(&c);
        }
        let status = body.trailers().await.unwrap().and_then(|t| {
            t.get("wl-status")
                .map(|v| Status::from_json(v.as_bytes()).unwrap())
        });
        Answer {
            http,
            trailer_header,
            body: bytes,
            status,
        }
    })
    .await
    .unwrap()
}

fn connect_payload(token: Option<Sharetoken>, remote: &str) -> InitPayload {
    let mut p = InitPayload::ping();
    p.command = "CONNECT".into();
    p.protocol = "tcp".into();
    p.remote = remote.into();
    p.token = token;
    p
}

fn assert_refused(a: &Answer, code: u16, description: &str, origin: &str) {
    assert_eq!(a.http, 200, "{a:?}");
    assert!(a.trailer_header, "{a:?}");
    let s = a
        .status
        .as_ref()
        .unwrap_or_else(|| panic!("no wl-status: {a:?}"));
    assert_eq!(s.code, code, "{a:?}");
    assert!(
        s.description.starts_with(description),
        "{:?} does not start with {description:?}",
        s.description
    );
    assert_eq!(s.origin, origin, "{a:?}");
}

// === tests ===

#[actix_rt::test]
async fn transport_tcp_round_trip_through_1_2_3_relays() {
    let net = Net::new();
    let target = tcp_echo().await;
    let (a, b, c) = (net.relay().await, net.relay().await, net.relay().await);
    let data = pattern(3 << 20, 5);
    for hops in [vec![&a], vec![&a, &b], vec![&a, &b, &c]] {
        let client = net.client(&hops);
        round_trip(&client, target, &data).await;
        round_trip(&client, target, b"hello\n").await;
    }
}

/// A DATA frame larger than any datagram is dropped; the UDP flow goes on.
#[actix_rt::test]
async fn transport_udp_an_oversized_frame_is_dropped_and_the_flow_goes_on() {
    let net = Net::new();
    let target = udp_echo().await;
    let relay = net.relay().await;
    let client = net.client(&[&relay]);
    let mut s = tokio::time::timeout(WAIT, client.open(&target.to_string(), Network::Udp))
        .await
        .unwrap()
        .unwrap();
    udp_echo_one(&mut s, &pattern(100, 1)).await;
    // One byte more than an IPv4 datagram can carry (65 507).
    s.send_chunk(Bytes::from(pattern(65_508, 2))).await.unwrap();
    udp_echo_one(&mut s, &pattern(100, 3)).await;
    s.finish();
    assert_eq!(
        tokio::time::timeout(WAIT, s.wait_end()).await.unwrap(),
        StreamEnd::Clean
    );
}

#[actix_rt::test]
async fn transport_udp_round_trip_through_1_2_3_relays() {
    let net = Net::new();
    let target = udp_echo().await;
    let (a, b, c) = (net.relay().await, net.relay().await, net.relay().await);
    for hops in [vec![&a], vec![&a, &b], vec![&a, &b, &c]] {
        udp_round_trip(&net.client(&hops), target).await;
    }
}

#[actix_rt::test]
async fn transport_ping_answers_pong_in_the_body() {
    let net = Net::new();
    let relay = net.relay().await;
    let conn = h2_conn(relay.addr).await;
    let a = ask(
        &conn,
        Method::PUT,
        Some(&InitPayload::ping().to_header_value()),
    )
    .await;
    assert_eq!(a.http, 200);
    assert!(a.trailer_header);
    assert_eq!(a.status, None);
    let want = format!(
        r#"{{"code":200,"description":"PONG","origin":"{}"}}"#,
        relay.origin()
    );
    assert_eq!(String::from_utf8(a.body).unwrap(), want.clone() + "\n");
    // Whatever else a PING's payload holds, it is answered (no token check, spec §6.3 step 4).
    let a = ask(
        &conn,
        Method::PUT,
        Some(r#"{"command":"PING","token":{},"protocol":null}"#),
    )
    .await;
    assert_eq!(String::from_utf8(a.body).unwrap(), want + "\n");
    let pong = net.client(&[&relay]).ping().await.unwrap();
    assert_eq!(pong, Status::pong(relay.origin()));
}

#[actix_rt::test]
async fn transport_hostile_inputs_get_their_documented_answers() {
    let net = Net::new();
    let relay = net.relay().await;
    let guarded = net
        .relay_with(|c| c.danger_zone.allow_loopback = false)
        .await;
    let target = tcp_echo().await;
    let remote = format!("target://{target}");
    let me = relay.origin();
    let sk = net.servicekey();
    let token = |sk: &Servicekey| Sharetoken::new(sk, relay.pubkey, unix_now()).unwrap();
    let conn = h2_conn(relay.addr).await;
    let put = |p: String| {
        let conn = conn.clone();
        async move { ask(&conn, Method::PUT, Some(&p)).await }
    };

    // Wrong method: HTTP 405 with the JSON body.
    let a = ask(&conn, Method::GET, None).await;
    assert_eq!(a.http, 405);
    assert_eq!(
        String::from_utf8(a.body).unwrap().trim_end(),
        r#"{"code":405,"description":"HTTP method not allowed"}"#
    );
    // No payload, bad JSON.
    let a = ask(&conn, Method::PUT, None).await;
    assert_refused(&a, 400, "could not parse payload header", &me);
    assert_refused(
        &put("{not json".into()).await,
        400,
        "could not parse payload header: ",
        &me,
    );
    // Missing token (§10 #3).
    let p = connect_payload(None, &remote);
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "no sharetoken in payload",
        &me,
    );
    // Unknown protocol, wrong client-relay minor, unknown scheme (§10 #13).
    let mut p = connect_payload(Some(token(&sk)), &remote);
    p.protocol = "sctp".into();
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "unknown protocol in payload: sctp",
        &me,
    );
    let mut p = connect_payload(Some(token(&sk)), &remote);
    p.version = "0.3.0".into();
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "invalid client-relay version",
        &me,
    );
    let p = connect_payload(Some(token(&sk)), "ftp://example.org:21");
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "unknown URL scheme",
        &me,
    );
    // Token for another relay.
    let other = PublicKey::from(&generate_signing_key());
    let t = Sharetoken::new(&sk, other, unix_now()).unwrap();
    let p = connect_payload(Some(t), &remote);
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "sharetoken relay public key mismatch: expecting ",
        &me,
    );
    // Expired servicekey.
    let now = unix_now();
    let expired = client::servicekey_signed_by(&net.contract, now - 1, now + 3600);
    let p = connect_payload(Some(token(&expired)), &remote);
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "sharetoken is expired",
        &me,
    );
    // Bad client signature.
    let mut t = token(&sk);
    t.nonce = "00000000000000000000000000000000".into();
    let p = connect_payload(Some(t), &remote);
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "sharetoken client signature is invalid",
        &me,
    );
    // Bad contract signature (the client signs over the altered contract data).
    let mut forged = sk.clone();
    if let Some(c) = forged.contract.as_mut() {
        c.settlement_close += 1;
    }
    let p = connect_payload(Some(token(&forged)), &remote);
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "error while verifying sharetoken contract data: ",
        &me,
    );
    // Untrusted contract (not configured), and configured but not enrolled.
    let stranger = generate_signing_key();
    let sk2 = client::servicekey_signed_by(&stranger, now + 600, now + 3600);
    let p = connect_payload(Some(token(&sk2)), &remote);
    let id2 = PublicKey::from(&stranger).to_b64();
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        &format!("relay contract not found: {id2}"),
        &me,
    );
    net.admission.register(&id2, "https://other.example");
    let p = connect_payload(Some(token(&sk2)), &remote);
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        &format!("relay contract not available: {id2}"),
        &me,
    );
    // Replayed token: the first use relays, the second is refused.
    let t = token(&sk);
    let p = connect_payload(Some(t), &remote).to_header_value();
    let first = h2_conn(relay.addr).await;
    let mut ready = first.clone().ready().await.unwrap();
    let req = http::Request::builder()
        .method(Method::PUT)
        .uri("https://x/")
        .header("wl-payload", &p)
        .body(())
        .unwrap();
    let (resp, mut body) = ready.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"x"), true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_refused(&put(p).await, 400, "duplicate sharetoken", &me);
    // Loopback target on a guarded relay: origin "target" (§6.3 step 8-9); a loopback next
    // relay keeps the relay as origin.
    let gconn = h2_conn(guarded.addr).await;
    let gtoken = Sharetoken::new(&sk, guarded.pubkey, unix_now()).unwrap();
    let p = connect_payload(Some(gtoken), &remote);
    let a = ask(&gconn, Method::PUT, Some(&p.to_header_value())).await;
    assert_refused(
        &a,
        400,
        "loopback address '127.0.0.1' requested, refusing to dial",
        "target",
    );
    // A shorthand the system resolver reads as 127.0.0.1 is loopback too.
    for host in ["127.1", "2130706433", "0x7f000001", "0"] {
        let gtoken = Sharetoken::new(&sk, guarded.pubkey, unix_now()).unwrap();
        let p = connect_payload(Some(gtoken), &format!("target://{host}:{}", target.port()));
        let a = ask(&gconn, Method::PUT, Some(&p.to_header_value())).await;
        assert_refused(
            &a,
            400,
            &format!("loopback address '{host}' requested, refusing to dial"),
            "target",
        );
    }
    let gtoken = Sharetoken::new(&sk, guarded.pubkey, unix_now()).unwrap();
    let p = connect_payload(Some(gtoken), "wireleap://localhost:13499");
    let a = ask(&gconn, Method::PUT, Some(&p.to_header_value())).await;
    assert_refused(
        &a,
        400,
        "loopback address 'localhost' requested",
        &guarded.origin(),
    );
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    // No port: the dial's 502, the token stored first (its replay is a duplicate).
    let portless = token(&sk);
    let p = connect_payload(Some(portless.clone()), "target://example.invalid");
    assert_refused(
        &put(p.to_header_value()).await,
        502,
        "dial tcp example.invalid: address example.invalid: missing port in address",
        "target",
    );
    let p = connect_payload(Some(portless), "target://example.invalid");
    assert_refused(
        &put(p.to_header_value()).await,
        400,
        "duplicate sharetoken",
        &me,
    );
    // A command other than PING is a CONNECT (the reference checks no other value).
    let mut p = connect_payload(Some(token(&sk)), &format!("target://{closed}"));
    p.command = String::new();
    assert_refused(&put(p.to_header_value()).await, 502, "dial tcp ", "target");
    // A closed port: 502 from the target.
    let p = connect_payload(Some(token(&sk)), &format!("target://{closed}"));
    assert_refused(&put(p.to_header_value()).await, 502, "dial tcp ", "target");
    // A next relay that is not there: 502 from this relay.
    let p = connect_payload(Some(token(&sk)), &format!("wireleap://{closed}"));
    assert_refused(&put(p.to_header_value()).await, 502, "dial tcp ", &me);

    // Still serving, on the same connection and on new ones.
    round_trip(&net.client(&[&relay]), target, b"still here").await;
    let s = relay.transport.send(TransportStatus).await.unwrap();
    assert_eq!(s.streams_refused, 19, "{s:?}");
}

#[actix_rt::test]
async fn transport_garbage_before_tls_and_a_peer_that_stops_reading() {
    let net = Net::new();
    let relay = net.relay().await;
    let echo = tcp_echo().await;
    // Garbage instead of a ClientHello: the connection is closed, nothing else happens.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 3, 1, 0xff, 0xff, 0, 0],
        &[0u8; 4096],
    ] {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let _ = s.write_all(junk).await;
        let mut buf = [0u8; 1024];
        tokio::time::timeout(WAIT, async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await
        .unwrap();
    }
    // A peer that stops reading a firehose: the relay stops reading the target (flow control)
    // and keeps serving others.
    let hose = tcp_firehose().await;
    let client = net.client(&[&relay]);
    let stuck = client.open(&hose.to_string(), Network::Tcp).await.unwrap();
    // Each client owns its first-hop connection: keep it alive with its stream.
    let client2 = net.client(&[&relay]);
    let stuck2 = client2.open(&hose.to_string(), Network::Tcp).await.unwrap();
    // Let both fill their windows (4 MiB each), then check the relay still serves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    round_trip(&client, echo, &pattern(1 << 20, 9)).await;
    round_trip(&net.client(&[&relay]), echo, b"ok").await;
    let s = relay.transport.send(TransportStatus).await.unwrap();
    assert_eq!(s.open_streams, 2, "{s:?}");
    drop((stuck, stuck2));
}

#[actix_rt::test]
async fn transport_maxtime_ends_with_408_and_a_cut_contract_ends_cleanly() {
    let net = Net::new();
    let echo = tcp_echo().await;
    let relay = net
        .relay_with(|c| c.maxtime = Some(Duration::from_millis(300)))
        .await;
    let client = net.client(&[&relay]);
    let mut s = client.open(&echo.to_string(), Network::Tcp).await.unwrap();
    s.write_all(b"x").await.unwrap();
    match tokio::time::timeout(WAIT, s.wait_end()).await.unwrap() {
        StreamEnd::Status(st) => {
            assert_eq!(st.code, 408);
            assert_eq!(st.origin, "target");
        }
        other => panic!("expected 408, got {other:?}"),
    }

    let relay = net.relay().await;
    let client = net.client(&[&relay]);
    let mut s = client.open(&echo.to_string(), Network::Tcp).await.unwrap();
    s.write_all(b"abc").await.unwrap();
    let mut back = [0u8; 3];
    s.read_exact(&mut back).await.unwrap();
    net.admission.cut(&net.contract_id());
    assert_eq!(
        tokio::time::timeout(WAIT, s.wait_end()).await.unwrap(),
        StreamEnd::Clean
    );
}

#[actix_rt::test]
async fn transport_drain_waits_for_streams_and_refuses_new_ones() {
    let net = Net::new();
    let echo = tcp_echo().await;
    let relay = net.relay().await;
    let client = net.client(&[&relay]);
    let mut s = client.open(&echo.to_string(), Network::Tcp).await.unwrap();
    s.write_all(b"before").await.unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).await.unwrap();

    // A drain with a short deadline reports the stream still in flight.
    let report = relay
        .transport
        .send(Drain {
            deadline: Duration::from_millis(200),
        })
        .await
        .unwrap();
    assert_eq!(report.streams, 1, "{report:?}");
    assert_eq!(report.remaining, 1, "{report:?}");
    // The in-flight stream keeps working; new connections are refused; the existing connection
    // takes no new stream (GOAWAY).
    s.write_all(b"during").await.unwrap();
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"during");
    assert!(TcpStream::connect(relay.addr).await.is_err());
    // (A second client: the devnet client drops the driver of a connection that refuses new
    // streams, which would also cut `s`.)
    let other = net.client(&[&relay]);
    assert!(other.open(&echo.to_string(), Network::Tcp).await.is_err());
    // Once it ends, a second drain finds nothing left.
    s.finish();
    assert_eq!(
        tokio::time::timeout(WAIT, s.wait_end()).await.unwrap(),
        StreamEnd::Clean
    );
    let report = relay
        .transport
        .send(Drain { deadline: WAIT })
        .await
        .unwrap();
    assert_eq!((report.remaining, report.streams), (0, 0), "{report:?}");
}

#[actix_rt::test]
async fn transport_concurrent_streams_share_one_connection() {
    let net = Net::new();
    let echo = tcp_echo().await;
    let relay = net.relay().await;
    let client = std::sync::Arc::new(net.client(&[&relay]));
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            round_trip(&client, echo, &pattern(64 << 10, i as u8)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = relay.transport.send(TransportStatus).await.unwrap();
    assert_eq!(s.streams_admitted, 200);
}

#[actix_rt::test]
async fn transport_tls_follows_the_clients_cipher_suite_order() {
    use rustls::crypto::ring::cipher_suite as cs;
    let net = Net::new();
    let relay = net.relay().await;
    // The devnet client offers Go's order on AES hardware (AES-128-GCM first); Go's client
    // without AES instructions puts ChaCha20-Poly1305 first, and must get it.
    let chacha_first = {
        let mut suites = client::tls::cipher_suites();
        suites.sort_by_key(|s| s.suite() != cs::TLS13_CHACHA20_POLY1305_SHA256.suite());
        suites
    };
    for (suites, want) in [
        (client::tls::cipher_suites(), cs::TLS13_AES_128_GCM_SHA256),
        (chacha_first, cs::TLS13_CHACHA20_POLY1305_SHA256),
    ] {
        let cfg = client::tls::client_config_offering(suites).unwrap();
        let tcp = TcpStream::connect(relay.addr).await.unwrap();
        let tls = tokio::time::timeout(
            WAIT,
            tokio_rustls::TlsConnector::from(cfg)
                .connect(client::tls::server_name("wireleap.com").unwrap(), tcp),
        )
        .await
        .unwrap()
        .unwrap();
        let got = tls.get_ref().1.negotiated_cipher_suite().unwrap();
        assert_eq!(got.suite(), want.suite());
    }
}

/// The token is stored while the target is dialled, but no byte of a stream reaches its target
/// unless its token was admitted: a replay, sent with its data at once, leaves the target with
/// the first use's bytes only, and is refused before its target is even dialled (a replayed token
/// must not buy connections to wherever its payload names).
#[actix_rt::test]
async fn transport_a_replayed_token_sends_no_byte_to_the_target() {
    let net = Net::new();
    let relay = net.relay().await;
    // A target that keeps every byte it receives, on any connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (sink, count) = (received.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let token = Sharetoken::new(&net.servicekey(), relay.pubkey, unix_now()).unwrap();
    let payload = connect_payload(Some(token), &format!("target://{target}")).to_header_value();
    let conn = h2_conn(relay.addr).await;
    let send = |data: &'static [u8]| {
        let (conn, payload) = (conn.clone(), payload.clone());
        async move {
            let req = http::Request::builder()
                .method(Method::PUT)
                .uri("https://wireleap.com/")
                .header("wl-payload", payload)
                .body(())
                .unwrap();
            let mut ready = conn.ready().await.unwrap();
            let (resp, mut body) = ready.send_request(req, false).unwrap();
            body.send_data(Bytes::from_static(data), true).unwrap();
            let mut body = tokio::time::timeout(WAIT, resp)
                .await
                .unwrap()
                .unwrap()
                .into_body();
            while let Some(c) = body.data().await {
                let _ = body.flow_control().release_capacity(c.unwrap().len());
            }
            body.trailers().await.unwrap().and_then(|t| {
                t.get("wl-status")
                    .map(|v| Status::from_json(v.as_bytes()).unwrap())
            })
        }
    };
    let first = send(b"paid").await;
    assert!(first.as_ref().is_none_or(|s| s.code == 200), "{first:?}");
    let replay = send(b"REPLAY").await.expect("the replay is refused");
    assert_eq!(
        (replay.code, replay.description.as_str()),
        (400, "duplicate sharetoken")
    );
    // Whatever the target could still receive has arrived once the first stream's bytes did.
    let deadline = std::time::Instant::now() + WAIT;
    while received.lock().unwrap().len() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(received.lock().unwrap().as_slice(), b"paid");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the replay's target was dialled"
    );
}

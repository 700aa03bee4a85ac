//! The data path of the real relay binary (spec §6): relays enrolled in the stand-in network,
//! streams through 1, 2 and 3 of them (fronting, entropic, backing) over TCP and UDP, PING,
//! 10 000 hostile streams with flat memory, and fronting behind a real nginx (§6.1).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use wireleap_devnet::client::{self, CircuitClient, ClientConfig, ClientError, Hop, StreamEnd};
use wireleap_protocol::keys::generate_signing_key;
use wireleap_protocol::{
    InitPayload, Network, PublicKey, Servicekey, Sharetoken, Status, unix_now,
};

use crate::support::runtime;
use crate::support::standin::Standin;
use crate::support::target::{tcp_echo, udp_echo};
use crate::support::webserver::WebServer;
use crate::support::{Home, eventually};

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

fn config(contract: &str, role: &str, allow_loopback: bool) -> String {
    format!(
        r#"{{"address": "127.0.0.1:0", "danger_zone": {{"allow_loopback": {allow_loopback}}},
            "contracts": {{"{contract}": {{"address": "wireleap://127.0.0.1:13499", "role": "{role}"}}}}}}"#
    )
}

/// A started relay: its home (which kills it on drop), address and key.
struct Relay {
    home: Home,
    addr: SocketAddr,
    pubkey: PublicKey,
}

impl Relay {
    fn start(s: &Standin, role: &str, allow_loopback: bool) -> Self {
        let home = Home::with_config(&config(s.net.contract_url(), role, allow_loopback));
        let key: String = serde_json::from_str(&home.read("key.pub")).unwrap();
        home.ok(&["start"]);
        eventually(WAIT, "the listen address in the log", || {
            home.read("wireleap-relay.log")
                .contains("Listening for H/2 requests on https://")
        });
        let addr = home.listen_addr();
        s.wait_enrolled(&key, WAIT);
        Self {
            home,
            addr,
            pubkey: PublicKey::try_from_b64(&key).unwrap(),
        }
    }

    fn hop(&self) -> Hop {
        Hop::new(format!("wireleap://{}", self.addr), self.pubkey)
    }

    fn pid(&self) -> i32 {
        self.home.pid().unwrap()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Streams `data` to an echo target and checks it comes back intact, then a clean end.
async fn tcp_round_trip(c: &CircuitClient, target: SocketAddr, data: &[u8]) {
    let s = tokio::time::timeout(WAIT, c.open(&target.to_string(), Network::Tcp))
        .await
        .unwrap()
        .unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let (back, ()) = tokio::time::timeout(WAIT, async {
        tokio::join!(
            async {
                let mut back = vec![0u8; data.len()];
                r.read_exact(&mut back).await.unwrap();
                back
            },
            async { w.write_all(data).await.unwrap() }
        )
    })
    .await
    .unwrap();
    assert!(back == data, "bytes differ after the round trip");
    let mut s = r.unsplit(w);
    s.finish();
    assert_eq!(
        tokio::time::timeout(WAIT, s.wait_end()).await.unwrap(),
        StreamEnd::Clean
    );
}

async fn udp_round_trip(c: &CircuitClient, target: SocketAddr) {
    let mut s = tokio::time::timeout(WAIT, c.open(&target.to_string(), Network::Udp))
        .await
        .unwrap()
        .unwrap();
    for len in [1usize, 1400, 65_507] {
        let d = pattern(len, 3);
        s.send_chunk(Bytes::from(d.clone())).await.unwrap();
        let back = tokio::time::timeout(WAIT, s.recv_chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(back == d, "datagram of {len} bytes differs");
    }
    s.finish();
    assert_eq!(
        tokio::time::timeout(WAIT, s.wait_end()).await.unwrap(),
        StreamEnd::Clean
    );
}

/// Waits until a stream through `hops` is admitted by every relay (enrollment reaches the
/// relay's admission shortly after the directory records it).
async fn wait_admitted(sk: &Servicekey, hops: Vec<Hop>, target: SocketAddr) -> CircuitClient {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = CircuitClient::new(sk.clone(), hops.clone(), ClientConfig::default()).unwrap();
        let ok = async {
            let mut s = c.open(&target.to_string(), Network::Tcp).await?;
            s.write_all(b"?")
                .await
                .map_err(|e| ClientError::Ping(e.to_string()))?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
                .await
                .map_err(|e| ClientError::Ping(e.to_string()))?;
            s.finish();
            Ok::<_, ClientError>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), ok).await {
            Ok(Ok(())) => return c,
            other => assert!(
                Instant::now() < deadline,
                "streams never admitted: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn transport_bytes_round_trip_through_1_2_3_enrolled_relays_tcp_and_udp() {
    let s = Standin::start();
    let fronting = Relay::start(&s, "fronting", true);
    let entropic = Relay::start(&s, "entropic", true);
    let backing = Relay::start(&s, "backing", true);
    let rt = runtime();
    rt.block_on(async {
        let tcp = tcp_echo().await;
        let udp = udp_echo().await;
        let sk = client::activate_servicekey(s.net.contract_url())
            .await
            .unwrap();
        let data = pattern(2 << 20, 1);
        for hops in [
            vec![backing.hop()],
            vec![fronting.hop(), backing.hop()],
            vec![fronting.hop(), entropic.hop(), backing.hop()],
        ] {
            let c = wait_admitted(&sk, hops, tcp).await;
            tcp_round_trip(&c, tcp, &data).await;
            tcp_round_trip(&c, tcp, b"hello\n").await;
            udp_round_trip(&c, udp).await;
        }
        // PING (spec §6.3 step 4).
        let c =
            CircuitClient::new(sk.clone(), vec![entropic.hop()], ClientConfig::default()).unwrap();
        assert_eq!(
            c.ping().await.unwrap(),
            Status::pong(entropic.pubkey.to_b64())
        );
    });
}

// === raw HTTP/2 requests ===

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

/// Sends one request and returns (HTTP status, the wl-status trailer).
async fn ask(
    conn: &h2::client::SendRequest<Bytes>,
    method: Method,
    payload: Option<String>,
) -> (u16, Option<Status>) {
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
        let code = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(c) = body.data().await {
            let c = c.unwrap();
            let _ = body.flow_control().release_capacity(c.len());
        }
        let status = body.trailers().await.unwrap().and_then(|t| {
            t.get("wl-status")
                .map(|v| Status::from_json(v.as_bytes()).unwrap())
        });
        (code, status)
    })
    .await
    .unwrap()
}

fn payload(token: Option<Sharetoken>, remote: &str) -> InitPayload {
    let mut p = InitPayload::ping();
    p.command = "CONNECT".into();
    p.protocol = "tcp".into();
    p.remote = remote.into();
    p.token = token;
    p
}

#[test]
fn transport_10000_hostile_streams_leave_the_relay_serving_with_flat_memory() {
    let s = Standin::start();
    let relay = Relay::start(&s, "backing", true);
    let rt = runtime();
    rt.block_on(async {
        let echo = tcp_echo().await;
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let sk = client::activate_servicekey(s.net.contract_url())
            .await
            .unwrap();
        let good = wait_admitted(&sk, vec![relay.hop()], echo).await;
        let me = relay.pubkey;
        let remote = format!("target://{echo}");
        let now = unix_now();
        let expired = client::servicekey_signed_by(&generate_signing_key(), now - 1, now + 60);
        let contract = sk.contract.clone().unwrap();
        let mut forged = sk.clone();
        if let Some(c) = forged.contract.as_mut() {
            c.settlement_close += 1;
        }
        let replayed = Sharetoken::new(&sk, me, now).unwrap();
        // One round of every class, with the answer each must get.
        let class = |i: usize| -> (Method, Option<String>, u16, &'static str) {
            let tok = || Sharetoken::new(&sk, me, unix_now()).unwrap();
            match i % 13 {
                0 => (Method::GET, None, 405, ""),
                1 => (Method::PUT, None, 400, "could not parse payload header"),
                2 => (
                    Method::PUT,
                    Some("{not json".into()),
                    400,
                    "could not parse payload header",
                ),
                3 => (
                    Method::PUT,
                    Some(payload(None, &remote).to_header_value()),
                    400,
                    "no sharetoken",
                ),
                4 => {
                    let t = Sharetoken::new(&sk, PublicKey::from(&generate_signing_key()), now)
                        .unwrap();
                    (
                        Method::PUT,
                        Some(payload(Some(t), &remote).to_header_value()),
                        400,
                        "sharetoken relay public key mismatch",
                    )
                }
                5 => {
                    // A contract the relay is not configured for (untrusted).
                    let t = Sharetoken::new(&expired, me, now).unwrap();
                    (
                        Method::PUT,
                        Some(payload(Some(t), &remote).to_header_value()),
                        400,
                        "relay contract not found",
                    )
                }
                6 => {
                    let mut t = tok();
                    t.nonce = "0".repeat(32);
                    (
                        Method::PUT,
                        Some(payload(Some(t), &remote).to_header_value()),
                        400,
                        "sharetoken client signature is invalid",
                    )
                }
                7 => {
                    let t = Sharetoken::new(&forged, me, now).unwrap();
                    (
                        Method::PUT,
                        Some(payload(Some(t), &remote).to_header_value()),
                        400,
                        "error while verifying sharetoken contract data",
                    )
                }
                8 => (
                    Method::PUT,
                    Some(payload(Some(replayed.clone()), &remote).to_header_value()),
                    400,
                    "duplicate sharetoken",
                ),
                9 => {
                    let mut p = payload(Some(tok()), &remote);
                    p.protocol = "sctp".into();
                    (
                        Method::PUT,
                        Some(p.to_header_value()),
                        400,
                        "unknown protocol in payload",
                    )
                }
                10 => {
                    let mut p = payload(Some(tok()), &remote);
                    p.version = "0.3.0".into();
                    (
                        Method::PUT,
                        Some(p.to_header_value()),
                        400,
                        "invalid client-relay version",
                    )
                }
                11 => (
                    Method::PUT,
                    Some(payload(Some(tok()), &format!("target://{closed}")).to_header_value()),
                    502,
                    "dial tcp",
                ),
                _ => {
                    // Expired servicekey of the real contract.
                    let mut old = sk.clone();
                    let mut c = contract.clone();
                    c.settlement_open = now - 1;
                    old.contract = Some(c);
                    let t = Sharetoken::new(&old, me, now).unwrap();
                    (
                        Method::PUT,
                        Some(payload(Some(t), &remote).to_header_value()),
                        400,
                        "sharetoken is expired",
                    )
                }
            }
        };
        let conn = h2_conn(relay.addr).await;
        // The replayed token is used once for real first.
        let (code, st) = ask(
            &conn,
            Method::PUT,
            Some(payload(Some(replayed.clone()), &format!("target://{closed}")).to_header_value()),
        )
        .await;
        assert_eq!((code, st.map(|s| s.code)), (200, Some(502)));
        // Warm-up round, then the measured 10 000.
        let run = |from: usize, to: usize| {
            let conn = conn.clone();
            let class = &class;
            async move {
                let mut i = from;
                while i < to {
                    let batch: Vec<_> = (i..(i + 32).min(to)).map(class).collect();
                    let answers = futures::future::join_all(
                        batch
                            .iter()
                            .map(|(m, p, _, _)| ask(&conn, m.clone(), p.clone())),
                    )
                    .await;
                    for ((_, _, want, text), (code, st)) in batch.iter().zip(answers) {
                        if *want == 405 {
                            assert_eq!(code, 405);
                            continue;
                        }
                        let st = st.unwrap_or_else(|| panic!("no wl-status for class {i}"));
                        assert_eq!(st.code, *want, "{st:?}");
                        assert!(st.description.starts_with(text), "{st:?} vs {text}");
                    }
                    i += 32;
                }
            }
        };
        run(0, 1300).await;
        // Garbage before the TLS handshake, too.
        for _ in 0..50 {
            let mut t = TcpStream::connect(relay.addr).await.unwrap();
            let _ = t.write_all(b"\x16\x03\x01\x00\x05hello garbage").await;
            let mut b = [0u8; 64];
            let _ = tokio::time::timeout(WAIT, t.read(&mut b)).await.unwrap();
        }
        // A peer that stops reading: a target that sends forever, a client that never reads.
        // Flow control stalls it at the client's window; it must not grow the relay meanwhile.
        let hose = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut t, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let chunk = vec![9u8; 64 << 10];
                        while t.write_all(&chunk).await.is_ok() {}
                    });
                }
            });
            addr
        };
        let stuck_client =
            CircuitClient::new(sk.clone(), vec![relay.hop()], ClientConfig::default()).unwrap();
        let stuck = stuck_client
            .open(&hose.to_string(), Network::Tcp)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = vm_rss_kib(relay.pid());
        let started = Instant::now();
        run(0, 10_000).await;
        let after = vm_rss_kib(relay.pid());
        eprintln!(
            "10 000 hostile streams in {:?}: relay VmRSS {before} KiB → {after} KiB",
            started.elapsed()
        );
        assert!(
            after < before + 8 * 1024,
            "relay memory grew from {before} KiB to {after} KiB"
        );
        // Still serving, with the stuck stream held open by its client.
        tcp_round_trip(&good, echo, &pattern(1 << 20, 2)).await;
        drop(stuck);
        let c = CircuitClient::new(sk.clone(), vec![relay.hop()], ClientConfig::default()).unwrap();
        assert_eq!(c.ping().await.unwrap().code, 200);
    });
}

// === nginx fronting (spec §6.1) ===

/// Starts nginx with TLS + HTTP/2 on a free loopback port, proxying `/wireleap` to the relay
/// with `grpc_pass grpcs://` as the reference's README shows; `None` if it is not installed.
fn start_nginx(relay: SocketAddr) -> Option<WebServer> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    Some(WebServer::start("nginx", "error.log", |dir, port| {
        let d = dir.display();
        let conf = format!(
            r#"worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.3;
        location /wireleap {{
            grpc_pass grpcs://{relay};
            # nginx < 1.23.4 offers only TLS ≤ 1.2 upstream by default; the relay is TLS 1.3 only.
            grpc_ssl_protocols TLSv1.3;
            grpc_read_timeout 3600s;
            grpc_send_timeout 3600s;
            client_max_body_size 0;
            client_body_timeout 3600s;
        }}
    }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut c = Command::new(bin);
        c.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"]);
        c
    }))
}

#[test]
fn transport_fronting_behind_nginx_grpc_pass() {
    let s = Standin::start();
    let relay = Relay::start(&s, "fronting", true);
    let Some(nginx) = start_nginx(relay.addr) else {
        panic!("nginx is not installed (apt-get install nginx; .ci/run installs it)");
    };
    let rt = runtime();
    rt.block_on(async {
        let echo = tcp_echo().await;
        let sk = client::activate_servicekey(s.net.contract_url())
            .await
            .unwrap();
        wait_admitted(&sk, vec![relay.hop()], echo).await;
        let front = Hop::new(
            format!("wireleap://127.0.0.1:{}/wireleap", nginx.port),
            relay.pubkey,
        );
        let c =
            CircuitClient::new(sk.clone(), vec![front.clone()], ClientConfig::default()).unwrap();
        let first = async {
            let mut st = c.open(&echo.to_string(), Network::Tcp).await?;
            st.write_all(b"?")
                .await
                .map_err(|e| ClientError::Ping(e.to_string()))?;
            let mut b = [0u8; 1];
            st.read_exact(&mut b)
                .await
                .map_err(|e| ClientError::Ping(e.to_string()))?;
            st.finish();
            Ok::<_, ClientError>(())
        };
        if let Err(e) = tokio::time::timeout(WAIT, first).await.unwrap() {
            panic!(
                "no stream through nginx: {e}\nnginx error.log:\n{}",
                nginx.log()
            );
        }
        tcp_round_trip(&c, echo, &pattern(4 << 20, 7)).await;
        tcp_round_trip(&c, echo, b"through nginx").await;
        // A refusal's wl-status trailer survives the proxy.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let mut st = c.open(&closed.to_string(), Network::Tcp).await.unwrap();
        match tokio::time::timeout(WAIT, st.wait_end()).await.unwrap() {
            StreamEnd::Status(status) => {
                assert_eq!((status.code, status.origin.as_str()), (502, "target"));
            }
            other => panic!("expected a 502 wl-status through nginx, got {other:?}"),
        }
        // Small UDP datagrams pass intact (nginx re-frames request DATA in pieces of about 4 KiB,
        // so larger ones reach the target split; docs/fronting.md).
        let udp = udp_echo().await;
        let mut st = c.open(&udp.to_string(), Network::Udp).await.unwrap();
        for len in [1usize, 1400] {
            let d = Bytes::from(pattern(len, 5));
            st.send_chunk(d.clone()).await.unwrap();
            let back = tokio::time::timeout(WAIT, st.recv_chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(
                back == d,
                "a {len}-byte datagram came back as {} bytes",
                back.len()
            );
        }
        drop(st);
        // PING through nginx.
        let p = CircuitClient::new(sk.clone(), vec![front], ClientConfig::default()).unwrap();
        assert_eq!(p.ping().await.unwrap(), Status::pong(relay.pubkey.to_b64()));
    });
}

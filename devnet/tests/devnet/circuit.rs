//! The circuit client against the in-test peer: 1 hop, 2 hops (nested TLS + HTTP/2), many
//! streams on one connection, UDP, PING and `wl-status` errors.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wireleap_devnet::client::{
    self, CircuitClient, ClientConfig, ClientError, Hop, StreamEnd, servicekey_signed_by,
};
use wireleap_devnet::{Config, Devnet};
use wireleap_protocol::{Network, PublicKey, unix_now};

use crate::support::{TEST_TIMEOUT, closed_port, start_peer, tcp_echo, udp_echo};

fn contract_key() -> wireleap_protocol::SigningKey {
    wireleap_protocol::keys::generate_signing_key()
}

async fn round_trip(s: &mut wireleap_devnet::client::H2Stream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).await.unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hop_tcp_round_trip() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ck = contract_key();
        let peer = start_peer(PublicKey::from(&ck)).await;
        let echo = tcp_echo().await;
        let sk = servicekey_signed_by(&ck, unix_now() + 600, unix_now() + 4200);
        let c = CircuitClient::new(
            sk,
            vec![Hop::new(peer.address(), peer.pubkey)],
            ClientConfig::default(),
        )
        .unwrap();
        let mut s = c.open(&echo.to_string(), Network::Tcp).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&mut s, &data).await, data);
        s.finish();
        assert_eq!(s.wait_end().await, StreamEnd::Clean);
        assert_eq!(peer.stats.admitted.load(Ordering::SeqCst), 1);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_full_duplex_through_two_hops() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ck = contract_key();
        let a = start_peer(PublicKey::from(&ck)).await;
        let b = start_peer(PublicKey::from(&ck)).await;
        let echo = tcp_echo().await;
        let sk = servicekey_signed_by(&ck, unix_now() + 600, unix_now() + 4200);
        let c = CircuitClient::new(
            sk,
            vec![
                Hop::new(a.address(), a.pubkey),
                Hop::new(b.address(), b.pubkey),
            ],
            ClientConfig::default(),
        )
        .unwrap();
        let s = c.open(&echo.to_string(), Network::Tcp).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(s);
        const TOTAL: usize = 16 << 20;
        let started = std::time::Instant::now();
        let writer = tokio::spawn(async move {
            let chunk = vec![0x5au8; 64 * 1024];
            for _ in 0..TOTAL / chunk.len() {
                wr.write_all(&chunk).await.unwrap();
            }
            wr
        });
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        while got < TOTAL {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "early end after {got} bytes");
            assert!(buf[..n].iter().all(|&x| x == 0x5a));
            got += n;
        }
        let wr = writer.await.unwrap();
        let mut s = rd.unsplit(wr);
        s.finish();
        eprintln!("16 MiB echoed through 2 hops in {:?}", started.elapsed());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_share_one_connection() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ck = contract_key();
        let peer = start_peer(PublicKey::from(&ck)).await;
        let echo = tcp_echo().await;
        let sk = servicekey_signed_by(&ck, unix_now() + 600, unix_now() + 4200);
        let c = std::sync::Arc::new(
            CircuitClient::new(
                sk,
                vec![Hop::new(peer.address(), peer.pubkey)],
                ClientConfig::default(),
            )
            .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let c = c.clone();
            let target = echo.to_string();
            tasks.push(tokio::spawn(async move {
                let mut s = c.open(&target, Network::Tcp).await.unwrap();
                let msg = vec![i; 1000];
                assert_eq!(round_trip(&mut s, &msg).await, msg);
                s.finish();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peer.stats.connections.load(Ordering::SeqCst), 1);
        assert_eq!(peer.stats.admitted.load(Ordering::SeqCst), 20);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_nested() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ck = contract_key();
        let a = start_peer(PublicKey::from(&ck)).await;
        let b = start_peer(PublicKey::from(&ck)).await;
        let echo = tcp_echo().await;
        let sk = servicekey_signed_by(&ck, unix_now() + 600, unix_now() + 4200);
        let c = CircuitClient::new(
            sk,
            vec![
                Hop::new(a.address(), a.pubkey),
                Hop::new(b.address(), b.pubkey),
            ],
            ClientConfig::default(),
        )
        .unwrap();
        for round in 0..3u8 {
            let mut s = c.open(&echo.to_string(), Network::Tcp).await.unwrap();
            let data = vec![round; 50_000];
            assert_eq!(round_trip(&mut s, &data).await, data);
            s.finish();
        }
        // One shared connection to A; B sees one TCP connection (from A) per stream.
        assert_eq!(a.stats.connections.load(Ordering::SeqCst), 1);
        assert_eq!(b.stats.connections.load(Ordering::SeqCst), 3);
        assert_eq!(a.stats.admitted.load(Ordering::SeqCst), 3);
        assert_eq!(b.stats.admitted.load(Ordering::SeqCst), 3);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_tcp_and_udp() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ck = contract_key();
        let (a, b, c) = (
            start_peer(PublicKey::from(&ck)).await,
            start_peer(PublicKey::from(&ck)).await,
            start_peer(PublicKey::from(&ck)).await,
        );
        let echo = tcp_echo().await;
        let uecho = udp_echo().await;
        let sk = servicekey_signed_by(&ck, unix_now() + 600, unix_now() + 4200);
        let client = CircuitClient::new(
            sk,
            vec![
                Hop::new(a.address(), a.pubkey),
                Hop::new(b.address(), b.pubkey),
                Hop::new(c.address(), c.pubkey),
            ],
            ClientConfig::default(),
        )
        .unwrap();
        let mut s = client.open(&echo.to_string(), Network::Tcp).await.unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        assert_eq!(round_trip(&mut s, &data).await, data);
        s.finish();
        let mut u = client.open(&uecho.to_string(), Network::Udp).await.unwrap();
        u.send_chunk(Bytes::from_static(b"datagram")).await.unwrap();
        assert_eq!(u.recv_chunk().await.unwrap().unwrap(), &b"datagram"[..]);
        u.finish();
        for p in [&a, &b, &c] {
            assert_eq!(p.stats.admitted.load(Ordering::SeqCst), 2);
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_discovered_from_the_directory() {
    use wireleap_protocol::signed::{Interface, idempotency_key};
    use wireleap_protocol::{RelayEntry, Role, Versions};
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = Devnet::start(Config::default()).await.unwrap();
        let contract = net.ready().contract_pubkey;
        let front = start_peer(contract).await;
        let back = start_peer(contract).await;
        for (p, role) in [(&back, Role::Backing), (&front, Role::Fronting)] {
            let e = RelayEntry {
                role,
                address: p.address(),
                pubkey: p.pubkey,
                versions: Versions::relay("0.7.0"),
                key: String::new(),
                update_channel: String::new(),
                upgrade_channel: String::new(),
                network_usage_limit: String::new(),
            };
            let body = e.to_json();
            let opts = wireleap_protocol::signed::RequestOptions {
                software_version: Some("0.7.0".into()),
                interfaces: vec![Interface::RelayDir],
                idempotency_key: Some(idempotency_key()),
            };
            let mut req = reqwest::Client::new()
                .post(format!("{}/relays", net.directory_url()))
                .body(body.clone());
            for (k, v) in wireleap_protocol::signed::request_headers(&p.key, body.as_bytes(), &opts)
            {
                req = req.header(k, v);
            }
            assert_eq!(req.send().await.unwrap().status().as_u16(), 200);
        }
        let hops = client::discover_circuit(net.contract_url(), 2)
            .await
            .unwrap();
        assert_eq!(
            hops,
            vec![
                Hop::new(front.address(), front.pubkey),
                Hop::new(back.address(), back.pubkey)
            ]
        );
        let one = client::discover_circuit(net.contract_url(), 1)
            .await
            .unwrap();
        assert_eq!(one, vec![Hop::new(back.address(), back.pubkey)]);
        assert!(
            client::discover_circuit(net.contract_url(), 3)
                .await
                .is_err()
        );
        let echo = tcp_echo().await;
        let sk = client::activate_servicekey(net.contract_url())
            .await
            .unwrap();
        let c = CircuitClient::new(sk, hops, ClientConfig::default()).unwrap();
        let mut s = c.open(&echo.to_string(), Network::Tcp).await.unwrap();
        assert_eq!(
            round_trip(&mut s, b"via the directory").await,
            b"via the directory"
        );
        s.finish();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ck = contract_key();
        let peer = start_peer(PublicKey::from(&ck)).await;
        let echo = udp_echo().await;
        let sk = servicekey_signed_by(&ck, unix_now() + 600, unix_now() + 4200);
        let c = CircuitClient::new(
            sk,
            vec![Hop::new(peer.address(), peer.pubkey)],
            ClientConfig::default(),
        )
        .unwrap();
        let mut s = c.open(&echo.to_string(), Network::Udp).await.unwrap();
        for size in [1usize, 100, 1200, 8000] {
            let d = Bytes::from(vec![7u8; size]);
            s.send_chunk(d.clone()).await.unwrap();
            let got = s.recv_chunk().await.unwrap().unwrap();
            assert_eq!(got, d, "datagram of {size} bytes");
        }
        s.finish();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_first_hop() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ck = contract_key();
        let peer = start_peer(PublicKey::from(&ck)).await;
        let sk = servicekey_signed_by(&ck, unix_now() + 600, unix_now() + 4200);
        let c = CircuitClient::new(
            sk,
            vec![Hop::new(peer.address(), peer.pubkey)],
            ClientConfig::default(),
        )
        .unwrap();
        let s = c.ping().await.unwrap();
        assert_eq!(s.code, 200);
        assert_eq!(s.description, "PONG");
        assert_eq!(s.origin, peer.pubkey.to_b64());
        assert_eq!(peer.stats.admitted.load(Ordering::SeqCst), 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_trailer_is_a_typed_error() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let ck = contract_key();
        let a = start_peer(PublicKey::from(&ck)).await;
        let closed = closed_port().await;
        let sk = servicekey_signed_by(&ck, unix_now() + 600, unix_now() + 4200);
        // Last hop cannot dial the target: 502 with origin "target" in the trailer.
        let c = CircuitClient::new(
            sk.clone(),
            vec![Hop::new(a.address(), a.pubkey)],
            ClientConfig::default(),
        )
        .unwrap();
        let mut s = c.open(&closed.to_string(), Network::Tcp).await.unwrap();
        match s.wait_end().await {
            StreamEnd::Status(st) => {
                assert_eq!(st.code, 502);
                assert_eq!(st.origin, "target");
            }
            other => panic!("expected a status, got {other:?}"),
        }
        // The read side surfaces it as an error carrying the status.
        let mut s = c.open(&closed.to_string(), Network::Tcp).await.unwrap();
        let mut buf = [0u8; 8];
        let e = s.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("\"code\":502"), "{e}");

        // First hop cannot reach the second: the circuit build fails naming hop 0.
        let c2 = CircuitClient::new(
            sk,
            vec![
                Hop::new(a.address(), a.pubkey),
                Hop::new(format!("wireleap://{closed}"), a.pubkey),
            ],
            ClientConfig::default(),
        )
        .unwrap();
        match c2.open("127.0.0.1:9", Network::Tcp).await {
            Err(e @ ClientError::Status { .. }) => {
                assert!(e.is_circuit_error());
                let ClientError::Status { hop, status } = e else {
                    unreachable!()
                };
                assert_eq!(hop, 0);
                assert_eq!(status.code, 502);
                assert_eq!(status.origin, a.pubkey.to_b64());
            }
            other => panic!("expected a hop status, got {other:?}"),
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_and_http_activation() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = Devnet::start(Config::default()).await.unwrap();
        let contract = net.ready().contract_pubkey;
        let peer = start_peer(contract).await;
        let echo = tcp_echo().await;
        // Activated over HTTP at the devnet contract: accepted.
        let sk = client::activate_servicekey(net.contract_url())
            .await
            .unwrap();
        let c = CircuitClient::new(
            sk,
            vec![Hop::new(peer.address(), peer.pubkey)],
            ClientConfig::default(),
        )
        .unwrap();
        let mut s = c.open(&echo.to_string(), Network::Tcp).await.unwrap();
        assert_eq!(round_trip(&mut s, b"hello\n").await, b"hello\n");
        s.finish();
        // Signed by another contract: 400 "this sharetoken was not signed by a trusted ...".
        let stranger = servicekey_signed_by(&contract_key(), unix_now() + 600, unix_now() + 4200);
        let c = CircuitClient::new(
            stranger,
            vec![Hop::new(peer.address(), peer.pubkey)],
            ClientConfig::default(),
        )
        .unwrap();
        let mut s = c.open(&echo.to_string(), Network::Tcp).await.unwrap();
        match s.wait_end().await {
            StreamEnd::Status(st) => {
                assert_eq!(st.code, 400);
                assert_eq!(
                    st.description,
                    "this sharetoken was not signed by a trusted service contract"
                );
            }
            other => panic!("expected 400, got {other:?}"),
        }
        assert_eq!(peer.stats.refused.load(Ordering::SeqCst), 1);
    })
    .await
    .unwrap();
}

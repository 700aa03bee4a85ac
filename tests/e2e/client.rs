//! The circuit client binary, `wireleap-devnet client` (issue #18), through the real relay: it
//! reads replies while it waits to send (24 MiB fed unpaced from a file to a slow echo come back
//! intact), and it reports how a stream really ended by its exit code and a line on stderr: an
//! error trailer, a reset (a test double relay's RST_STREAM, or the relay killed mid-stream), a
//! non-200 answer, and a stream whose end never comes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use wireleap_devnet::client::{Hop, exit, servicekey_signed_by};
use wireleap_protocol::keys::generate_signing_key;
use wireleap_protocol::{PublicKey, Servicekey, unix_now};

use crate::support::process::sibling_bin;
use crate::support::relay::{self, StartedRelay};
use crate::support::runtime;
use crate::support::standin::Standin;
use crate::support::{Home, eventually};

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

/// What the slow echo reads at a time, and how long it waits before it echoes each read.
const SLOW_READ: usize = 16 * 1024;
const SLOW_DELAY: Duration = Duration::from_millis(1);
/// The slow echo's socket buffers (each way).
const SLOW_BUFFER: u32 = 16 * 1024;

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 13) as u8)
        .collect()
}

/// A TCP echo that reads at most [`SLOW_READ`] bytes at a time and waits [`SLOW_DELAY`]
/// before writing each read back: slower than the client sends, so every window on the way
/// fills up.
async fn slow_echo() -> SocketAddr {
    // Small socket buffers (inherited by accepted sockets): the target holds little itself.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(SLOW_BUFFER).unwrap();
    sock.set_send_buffer_size(SLOW_BUFFER).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(16).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; SLOW_READ];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tokio::time::sleep(SLOW_DELAY).await;
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A target that accepts connections, holds them open without answering, and sends one
/// message per accepted connection.
async fn silent_target() -> (SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
            let _ = tx.send(()).await;
        }
    });
    (addr, rx)
}

/// A UDP target that answers each datagram with its length in decimal and a newline.
async fn udp_sizer() -> SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(format!("{n}\n").as_bytes(), from).await;
        }
    });
    addr
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Writes `sk` as the JSON file `--servicekey` reads (what `wireleap-devnet mint` prints).
fn servicekey_file(dir: &Path, sk: &Servicekey) -> std::path::PathBuf {
    let path = dir.join("servicekey.json");
    std::fs::write(&path, serde_json::to_vec(sk).unwrap()).unwrap();
    path
}

/// `wireleap-devnet client` through `hop` to `target`, with `extra` arguments.
fn client(sk: &Path, hop: &Hop, target: SocketAddr, extra: &[&str]) -> tokio::process::Command {
    client_through(sk, std::slice::from_ref(hop), target, extra)
}

/// `wireleap-devnet client` through `hops` (first hop first) to `target`.
fn client_through(
    sk: &Path,
    hops: &[Hop],
    target: SocketAddr,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(sibling_bin("wireleap-devnet"));
    c.arg("client").arg("--servicekey").arg(sk);
    for hop in hops {
        c.arg("--relay")
            .arg(&hop.address)
            .arg("--relay-pubkey")
            .arg(hop.pubkey.to_b64());
    }
    c.arg("--target")
        .arg(target.to_string())
        .args(extra)
        .env_remove("DEVNET_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// How a client run ended.
struct Ended {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Waits (bounded) for the client to exit; a client still running after [`WAIT`] is killed and
/// fails the test.
async fn ended(child: tokio::process::Child, started: Instant) -> Ended {
    try_ended(child, started)
        .await
        .unwrap_or_else(|| panic!("the client did not exit within {WAIT:?}"))
}

/// As [`ended`], `None` (the client killed) when it did not exit within [`WAIT`].
async fn try_ended(child: tokio::process::Child, started: Instant) -> Option<Ended> {
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .ok()?
        .unwrap();
    Some(Ended {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    })
}

/// A relay like [`relay::start`], with the test fault `fault` (`WIRELEAP_RELAY_FAULT`) on.
fn start_faulty_relay(s: &Standin, fault: &str) -> StartedRelay {
    let home = Home::with_config(&format!(
        r#"{{"address": "127.0.0.1:0", "danger_zone": {{"allow_loopback": true}},
            "contracts": {{"{}": {{"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}}}}"#,
        s.net.contract_url()
    ));
    let key: String = serde_json::from_str(&home.read("key.pub")).unwrap();
    let out = home
        .command(&["start"])
        .env("WIRELEAP_RELAY_FAULT", fault)
        .output()
        .unwrap();
    assert!(out.status.success(), "start failed: {out:?}");
    eventually(WAIT, "the fault warning in the log", || {
        home.read("wireleap-relay.log")
            .contains(&format!("WIRELEAP_RELAY_FAULT={fault}"))
    });
    s.wait_enrolled(&key, WAIT);
    let hop = Hop::new(
        format!("wireleap://{}", home.listen_addr()),
        PublicKey::try_from_b64(&key).unwrap(),
    );
    StartedRelay { home, hop }
}

/// 24 MiB from a file on stdin, unpaced, through a relay to an echo slower than the client:
/// the client must keep reading replies while its send window is full, or nothing moves.
///
/// Why 24 MiB: the windows and socket buffers on the way (4 MiB the relay's stream window,
/// 4 MiB the client's, the relay's sockets) hold about 10 to 12 MiB, so a client that stops
/// reading while it waits to send got 10 MiB through here, and stalled at 16 MiB with 1.5 MB back.
#[test]
fn unpaced_stdin_through_a_slow_echo_comes_back_intact() {
    const LEN: usize = 24 << 20;
    let s = Standin::start();
    let relay = relay::start(&s, "backing", "");
    let rt = runtime();
    let target = rt.block_on(slow_echo());
    let dir = tempfile::tempdir().unwrap();
    let sk = servicekey_file(dir.path(), &s.net.mint_servicekey());
    let data = pattern(LEN);
    std::fs::write(dir.path().join("in"), &data).unwrap();
    let stdin = std::fs::File::open(dir.path().join("in")).unwrap();
    let stdout = std::fs::File::create(dir.path().join("out")).unwrap();
    let run = rt.block_on(async {
        let started = Instant::now();
        let child = client(&sk, &relay.hop, target, &[])
            .stdin(stdin)
            .stdout(stdout)
            .spawn()
            .unwrap();
        try_ended(child, started).await
    });
    let back = std::fs::read(dir.path().join("out")).unwrap();
    let run = run.unwrap_or_else(|| {
        panic!(
            "the client stalled: it did not exit within {WAIT:?}, {} of {LEN} bytes came back",
            back.len()
        )
    });
    assert_eq!(
        run.code,
        Some(exit::CLEAN.into()),
        "stderr: {}\n{} of {LEN} bytes came back",
        run.stderr,
        back.len()
    );
    assert_eq!(back.len(), LEN, "stderr: {}", run.stderr);
    if let Some(at) = back.iter().zip(&data).position(|(a, b)| a != b) {
        panic!("the echo differs from byte {at} on");
    }
    eprintln!("{LEN} bytes through the slow echo in {:?}", run.took);
}

/// With `--udp` one read of stdin goes out whole as one datagram (here 60 000 bytes, more than a
/// default HTTP/2 frame), and the stream still ends cleanly.
#[test]
fn a_stdin_read_is_one_datagram() {
    let s = Standin::start();
    let relay = relay::start(&s, "backing", "");
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sk = servicekey_file(dir.path(), &s.net.mint_servicekey());
    std::fs::write(dir.path().join("in"), pattern(60_000)).unwrap();
    let stdin = std::fs::File::open(dir.path().join("in")).unwrap();
    let stdout = std::fs::File::create(dir.path().join("out")).unwrap();
    let run = rt.block_on(async {
        let target = udp_sizer().await;
        let started = Instant::now();
        let child = client(&sk, &relay.hop, target, &["--udp", "--idle-ms", "300"])
            .stdin(stdin)
            .stdout(stdout)
            .spawn()
            .unwrap();
        ended(child, started).await
    });
    assert_eq!(run.code, Some(exit::CLEAN.into()), "stderr: {}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "60000\n"
    );
}

/// A relay that cannot reach the target ends the stream with a 502 `wl-status` trailer; one that
/// cannot reach the next hop refuses the circuit with it.
#[test]
fn an_error_trailer_is_reported() {
    let s = Standin::start();
    let relay = relay::start(&s, "backing", "");
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sk = servicekey_file(dir.path(), &s.net.mint_servicekey());
    let run = rt.block_on(async {
        let started = Instant::now();
        // stdin stays open: only the stream's end can end the client.
        let mut child = client(&sk, &relay.hop, closed_port(), &[])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let run = ended(child, started).await;
        drop(stdin);
        run
    });
    assert_eq!(
        run.code,
        Some(exit::STATUS.into()),
        "stderr: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("\"code\":502"),
        "the status is on stderr: {}",
        run.stderr
    );

    // The same refusal while the circuit is built: the relay cannot reach the second hop.
    let nowhere = Hop::new(
        format!("wireleap://{}", closed_port()),
        PublicKey::from(&generate_signing_key()),
    );
    let run = rt.block_on(async {
        let started = Instant::now();
        let child = client_through(&sk, &[relay.hop.clone(), nowhere], closed_port(), &[])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        ended(child, started).await
    });
    assert_eq!(
        run.code,
        Some(exit::STATUS.into()),
        "stderr: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hop 0 refused the circuit") && run.stderr.contains("\"code\":502"),
        "stderr: {}",
        run.stderr
    );
}

/// A relay that never answers: after stdin ends and the idle time, the client ends its side and
/// waits for the stream's end at most `--end-timeout-ms`, then fails.
#[test]
fn an_end_that_never_comes_is_a_timeout() {
    let s = Standin::start();
    let relay = start_faulty_relay(&s, "blackhole");
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sk = servicekey_file(dir.path(), &s.net.mint_servicekey());
    let (target, _accepted) = rt.block_on(silent_target());
    let run = rt.block_on(async {
        let started = Instant::now();
        let child = client(
            &sk,
            &relay.hop,
            target,
            &["--idle-ms", "100", "--end-timeout-ms", "500"],
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
        ended(child, started).await
    });
    assert_eq!(
        run.code,
        Some(exit::END_TIMEOUT.into()),
        "stderr: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("no end of the stream within 500ms"),
        "stderr: {}",
        run.stderr
    );
    assert!(run.took >= Duration::from_millis(600), "{:?}", run.took);
}

/// The relay dies mid-stream (SIGKILL): the connection is lost, which is a reset.
#[test]
fn a_relay_killed_mid_stream_is_a_reset() {
    let s = Standin::start();
    let relay = relay::start(&s, "backing", "");
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sk = servicekey_file(dir.path(), &s.net.mint_servicekey());
    let run = rt.block_on(async {
        let (target, mut accepted) = silent_target().await;
        let started = Instant::now();
        let mut child = client(&sk, &relay.hop, target, &[])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        // The relay dialed the target: the stream is open.
        tokio::time::timeout(WAIT, accepted.recv())
            .await
            .expect("the relay to dial the target")
            .unwrap();
        kill(Pid::from_raw(relay.home.pid().unwrap()), Signal::SIGKILL).unwrap();
        let run = ended(child, started).await;
        drop(stdin);
        run
    });
    assert_eq!(run.code, Some(exit::RESET.into()), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("stream reset"),
        "stderr: {}",
        run.stderr
    );
}

/// How the test double relay answers every stream.
#[derive(Clone, Copy)]
enum Answer {
    /// `:status` other than 200.
    Http(u16),
    /// 200, one DATA frame, then RST_STREAM(INTERNAL_ERROR).
    ResetAfter(&'static [u8]),
}

/// A test double of a relay on loopback: TLS 1.3 + HTTP/2 with a fresh self-signed
/// certificate, answering every stream with `answer` (it checks no token).
async fn double_relay(answer: Answer) -> Hop {
    let cert = rcgen::generate_simple_self_signed(vec!["wireleap.com".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    match answer {
                        Answer::Http(code) => {
                            let r = http::Response::builder().status(code).body(()).unwrap();
                            let _ = respond.send_response(r, true);
                        }
                        Answer::ResetAfter(data) => {
                            let r = http::Response::builder().status(200).body(()).unwrap();
                            if let Ok(mut send) = respond.send_response(r, false) {
                                let _ = send.send_data(Bytes::from_static(data), false);
                                send.send_reset(h2::Reason::INTERNAL_ERROR);
                            }
                        }
                    }
                }
            });
        }
    });
    let key = generate_signing_key();
    Hop::new(format!("wireleap://{addr}"), PublicKey::from(&key))
}

/// Runs the client through a test double answering `answer`, stdin held open.
fn through_double(answer: Answer) -> Ended {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sk = servicekey_file(
        dir.path(),
        &servicekey_signed_by(&generate_signing_key(), unix_now() + 600, unix_now() + 4200),
    );
    rt.block_on(async {
        let hop = double_relay(answer).await;
        let started = Instant::now();
        let mut child = client(&sk, &hop, closed_port(), &[])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let run = ended(child, started).await;
        drop(stdin);
        run
    })
}

#[test]
fn a_non_200_answer_is_reported() {
    let run = through_double(Answer::Http(503));
    assert_eq!(run.code, Some(exit::HTTP.into()), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("HTTP 503"), "stderr: {}", run.stderr);
}

#[test]
fn a_stream_reset_is_reported() {
    let run = through_double(Answer::ResetAfter(b"partial"));
    assert_eq!(run.code, Some(exit::RESET.into()), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("stream reset") && run.stderr.contains("internal error"),
        "stderr: {}",
        run.stderr
    );
}

//! The `wireleap-devnet` binary: `serve` prints the ready line and answers on those URLs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use wireleap_devnet::Ready;

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_reports_ready_line_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let ready_file = dir.path().join("ready.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wireleap-devnet"))
        .args(["serve", "--challenge", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--ready-file")
        .arg(&ready_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    // Blocks until the line arrives (the child is killed by the guard on failure).
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(crate::support::TEST_TIMEOUT, line)
        .await
        .unwrap()
        .unwrap();
    let ready: Ready = serde_json::from_str(&line).unwrap();
    let from_file: Ready =
        serde_json::from_str(&std::fs::read_to_string(&ready_file).unwrap()).unwrap();
    assert_eq!(ready, from_file);
    let snap: wireleap_devnet::Snapshot =
        reqwest::get(format!("{}/_devnet/state", ready.directory))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(snap.switches.require_challenge);
    assert_eq!(snap.contract_pubkey, ready.contract_pubkey);
    assert!(dir.path().join("state/contract.seed").exists());
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pipes_stdin_through_a_relay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let net = wireleap_devnet::Devnet::start(wireleap_devnet::Config::default())
        .await
        .unwrap();
    let peer = crate::support::start_peer(net.ready().contract_pubkey).await;
    let echo = crate::support::tcp_echo().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wireleap-devnet"))
        .args(["client", "--contract", net.contract_url(), "--relay"])
        .arg(peer.address())
        .arg("--relay-pubkey")
        // Quoted, as in a relay's key.pub.
        .arg(format!("\"{}\"", peer.pubkey.to_b64()))
        .arg("--target")
        .arg(echo.to_string())
        .args(["--idle-ms", "300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello through the relay\n").await.unwrap();
    drop(stdin);
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    tokio::time::timeout(
        crate::support::TEST_TIMEOUT,
        stdout.read_to_string(&mut out),
    )
    .await
    .unwrap()
    .unwrap();
    let status = tokio::time::timeout(crate::support::TEST_TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, "hello through the relay\n");
    assert!(status.success());
    assert_eq!(
        peer.stats
            .admitted
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn echo_target_for_demos() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wireleap-devnet"))
        .arg("echo")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(crate::support::TEST_TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let mut s = tokio::net::TcpStream::connect(v["tcp"].as_str().unwrap())
        .await
        .unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    let u = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    u.connect(v["udp"].as_str().unwrap()).await.unwrap();
    u.send(b"dgram").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(crate::support::TEST_TIMEOUT, u.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"dgram");
}

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

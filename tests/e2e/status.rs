//! `status` as an operator reads it: whether the relay is enrolled, and why not (the cause, not
//! only "error sending request"), its sharetokens and upgrades; `status --json`; and a mistyped
//! home that `status` does not create.

use std::time::Duration;

use wireleap_devnet::{Down, Server};

use crate::support::standin::Standin;
use crate::support::{Home, eventually};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn status_says_when_the_relay_is_not_enrolled_and_why_and_json_carries_the_same() {
    let s = Standin::start();
    s.net.set_down(Server::Directory, Down::Refuse);
    let home = Home::with_config(&format!(
        r#"{{"address": "127.0.0.1:0", "heartbeat_interval": "500ms",
            "contracts": {{"{}": {{"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}}}}"#,
        s.net.contract_url()
    ));
    home.ok(&["start"]);
    let mut last = String::new();
    eventually(WAIT, "status to say why the relay is not enrolled", || {
        last = home.run(&["status"]).stdout;
        last.contains("NOT enrolled (backing)")
    });
    println!("{last}");
    assert!(
        last.starts_with("wireleap-relay is running, pid "),
        "{last}"
    );
    assert!(
        last.contains("enrolled:          NOT in 1 of its 1 contracts"),
        "{last}"
    );
    assert!(
        last.to_lowercase().contains("connection refused"),
        "the cause is missing: {last}"
    );
    let run = home.run(&["status", "--json"]);
    assert_eq!(run.code, 0, "{run}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["running"], true, "{v}");
    assert_eq!(v["enrolled"], false, "{v}");
    assert!(
        v["relay"]["relay_status"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("connection refused"),
        "{v}"
    );
    assert!(v["relay"]["sharetokens"]["pending"].is_u64(), "{v}");

    s.net.set_down(Server::Directory, Down::Up);
    eventually(WAIT, "status to say it is enrolled", || {
        last = home.run(&["status"]).stdout;
        last.contains("enrolled:          in all 1 of its contracts")
    });
    assert!(last.contains("enrolled as backing"), "{last}");
    assert!(last.contains("sharetokens:       0 pending"), "{last}");
    home.ok(&["stop"]);
    let run = home.run(&["status", "--json"]);
    assert_eq!(run.code, 1, "{run}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["running"], false, "{v}");
}

#[test]
fn status_of_a_home_that_does_not_exist_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-home");
    let out = std::process::Command::new(crate::support::process::relay_bin())
        .arg("status")
        .env("WIRELEAP_RELAY_HOME", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no home directory"), "{text}");
    assert!(!missing.exists(), "status created {}", missing.display());
}

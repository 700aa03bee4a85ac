//! What the supervisor lets run (issue: a supervisor you can trust): a release whose binary
//! reports another version than the one its statement signs is refused before anything
//! migrates; a binary whose `version` hangs is bounded; a control request that names no plain
//! version changes nothing.

use crate::cli_upgrade::{assert_nothing_staged, cli, status_field, supervised_with_releases};
use crate::support::process::relay_bin;
use crate::support::releases::{publish_unchecked, stamped};
use crate::support::supervised::supervisor_command;

#[test]
fn a_binary_that_reports_another_version_than_signed_is_refused_before_migrating() {
    let (s, root) = supervised_with_releases();
    let home = &s.home;
    // Signed as 9.0.0, but the binary says it is 9.0.1.
    let liar = stamped(root.path(), &relay_bin(), "9.0.1");
    publish_unchecked(root.path(), "9.0.0", Some(&std::fs::read(&liar).unwrap()));
    let up = cli(home, &["upgrade", "--yes", "9.0.0"], "");
    assert_ne!(up.code, 0, "{up}");
    assert!(
        up.stderr
            .contains("reports version 9.0.1, but its signed statement is for 9.0.0"),
        "{up}"
    );
    let steps = home.journal_steps("9.0.0");
    assert!(steps.contains(&"verify-failed".to_owned()), "{steps:?}");
    assert!(
        !steps.iter().any(|s| s == "migrated" || s == "verified"),
        "{steps:?}"
    );
    assert_nothing_staged(home);
    assert!(home.read(".skip-upgrade-version").contains("9.0.0"));
    let status = cli(home, &["status"], "");
    assert_eq!(
        status_field(&status, "version"),
        env!("CARGO_PKG_VERSION"),
        "{status}"
    );
}

#[test]
fn a_binary_whose_version_hangs_is_bounded_and_supervision_goes_on() {
    let (s, root) = supervised_with_releases();
    let home = &s.home;
    publish_unchecked(root.path(), "9.0.0", Some(b"#!/bin/sh\nexec sleep 617\n"));
    let started = std::time::Instant::now();
    let up = cli(home, &["upgrade", "--yes", "9.0.0"], "");
    assert_ne!(up.code, 0, "{up}");
    assert!(up.stderr.contains("did not answer"), "{up}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{up}"
    );
    // The supervisor answers and no `sleep` of the hung binary is left.
    let status = cli(home, &["status"], "");
    assert_eq!(status.code, 0, "{status}");
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 617"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    assert_nothing_staged(home);
}

#[test]
fn an_upgrade_request_with_a_newline_in_its_version_changes_nothing() {
    let (s, _root) = supervised_with_releases();
    let home = &s.home;
    home.write(".skip-upgrade-version", "0.1.0\n");
    // Files a relay staged are left alone by a request that names no plain version.
    home.write("wireleap-relay.next", "staged");
    home.write("wireleap-relay.next.hash", "staged");
    let out = supervisor_command(home)
        .args(["ctl", "upgrade", "9.0.0\n0.8.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("names no plain version"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(home.read(".skip-upgrade-version"), "0.1.0\n");
    assert_eq!(home.read("wireleap-relay.next"), "staged");
    assert_eq!(home.read("wireleap-relay.next.hash"), "staged");
}

/// A supervisor stopped (SIGTERM: `systemctl stop`, a host shutdown) in the middle of an
/// upgrade's health window undoes the change without blaming the version: it is not skipped,
/// and the next start finds nothing to recover.
#[test]
fn a_stop_during_the_health_window_undoes_the_upgrade_without_skipping_it() {
    use crate::support::eventually;
    use crate::support::releases::publish;
    let (mut s, root) = crate::cli_upgrade::supervised_with_releases_window("60");
    let original = std::fs::read(s.home.file("wireleap-relay")).unwrap();
    publish(root.path(), "9.0.0", &relay_bin());
    let binary = s.home.file("wireleap-relay");
    let upgrade = std::thread::spawn(move || {
        std::process::Command::new(binary)
            .args(["upgrade", "--yes", "9.0.0"])
            .env_remove("WIRELEAP_RELAY_HOME")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    });
    eventually(
        std::time::Duration::from_secs(60),
        "the new generation to take over",
        || {
            s.home
                .journal_steps("9.0.0")
                .contains(&"swapped".to_owned())
        },
    );
    s.signal(nix::sys::signal::Signal::SIGTERM);
    let status = s.wait_exit(std::time::Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", s.log());
    let _ = upgrade.join();
    let steps = s.home.journal_steps("9.0.0");
    assert_eq!(
        steps.last().map(String::as_str),
        Some("recovered"),
        "{steps:?}"
    );
    assert!(
        !s.home.read(".skip-upgrade-version").contains("9.0.0"),
        "a stop is not the version's fault"
    );
    assert_eq!(
        std::fs::read(s.home.file("wireleap-relay")).unwrap(),
        original
    );
    assert_nothing_staged(&s.home);
}

//! Crash recovery (DESIGN.md invariant 5), as a matrix: for every journal step of an upgrade, the
//! supervisor, the old generation or the new one is killed with SIGKILL right after that step
//! (the supervisor's fault-injection hook `WIRELEAP_SUPERVISOR_FAILPOINT=<step>:<victim>`), under
//! load. Every run must converge to one committed version serving, with the journal saying which,
//! nothing staged left behind, no admitted token lost, no downgrade, and, when the supervisor was
//! the one killed, not one failed open or cut stream: its generations serve on, and the new
//! supervisor takes over their socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::eventually;
use crate::support::load::Load;
use crate::support::process::relay_bin;
use crate::support::releases::{publish, stamped};
use crate::support::standin::Standin;
use crate::support::supervised::{Supervised, relay_pids_in};

const WAIT: Duration = Duration::from_secs(60);
const ARGS: &[&str] = &["--health-window", "1"];

/// A release of the relay stamped 9.0.0, published once: (binary, statement).
fn release(dir: &Path) -> (PathBuf, PathBuf) {
    let binary = stamped(dir, &relay_bin(), "9.0.0");
    publish(&dir.join("releases"), "9.0.0", &binary)
}

/// The supervisor's status reply as the JSON it sends (Null without an answer).
fn status(home: &Path) -> serde_json::Value {
    wireleap_home::control::call(
        home,
        &wireleap_home::control::Request::Status,
        Duration::from_secs(5),
    )
    .ok()
    .and_then(|reply| serde_json::to_value(reply).ok())
    .unwrap_or(serde_json::Value::Null)
}

fn token_rows(home: &Path) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        home.join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))
        .unwrap();
    u64::try_from(n).unwrap_or(0)
}

struct Outcome {
    version: String,
    last_step: String,
    opened: u64,
    failed: usize,
    cut: usize,
    converged_in: Duration,
}

/// One run: an upgrade to the staged 9.0.0 with the failpoint `at:victim`; with `tamper`, the
/// staged statement `wireleap-relay.next.hash` (the relay's to write) is removed while the
/// supervisor is down.
fn run_one(release: &(PathBuf, PathBuf), at: &str, victim: &str, tamper: bool) -> Outcome {
    let failpoint = format!("{at}:{victim}");
    let spec = format!("{failpoint}{}", if tamper { " (tampered)" } else { "" });
    let mut s = Supervised::start_full(
        Standin::start(),
        "",
        ARGS,
        &[("WIRELEAP_SUPERVISOR_FAILPOINT", failpoint.as_str())],
    );
    let home = s.home.path().to_path_buf();
    let original = std::fs::read(home.join("wireleap-relay")).unwrap();
    let load = Load::start(&s.rt, &s.sk, &s.hop, s.target, 10);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::copy(&release.0, home.join("wireleap-relay.next")).unwrap();
    std::fs::copy(&release.1, home.join("wireleap-relay.next.hash")).unwrap();
    let asker = {
        let home = home.clone();
        std::thread::spawn(move || {
            wireleap_home::control::call(
                &home,
                &wireleap_home::control::Request::Upgrade {
                    version: "9.0.0".to_owned(),
                },
                Duration::from_secs(60),
            )
        })
    };
    let started = Instant::now();
    if victim == "supervisor" {
        let status = s.wait_exit(WAIT);
        assert!(
            !status.success(),
            "{spec}: the supervisor exited cleanly?\n{}",
            s.log()
        );
        if tamper {
            let _ = std::fs::remove_file(home.join("wireleap-relay.next.hash"));
        }
        s.restart_supervisor(ARGS);
    }
    let _ = asker.join();
    // Converged: serving, no change in progress, and the journal's last word is final.
    let finals = [
        "committed",
        "rolled-back",
        "recovered",
        "rollback-committed",
    ];
    eventually(WAIT, &format!("{spec}: convergence"), || {
        let st = status(&home);
        st["state"] == "serving"
            && st["last"]["step"]
                .as_str()
                .is_some_and(|step| finals.contains(&step))
    });
    let converged_in = started.elapsed();
    if victim == "supervisor" {
        // The generations it left behind confirmed their heartbeat pause to its successor.
        assert!(
            !s.log().contains("did not confirm its heartbeats paused"),
            "{spec}: a left-behind generation's pause went unconfirmed\n{}",
            s.log()
        );
    }
    let counts = load.finish(&s.rt);
    // Drained generations exit once their streams are done: one relay process stays.
    let deadline = Instant::now() + WAIT;
    while relay_pids_in(&home).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "{spec}: relay processes {:?} after {WAIT:?}\n{}",
            relay_pids_in(&home),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A loaded machine may delay one answer: ask until the supervisor answers.
    let mut st = serde_json::Value::Null;
    eventually(WAIT, &format!("{spec}: a status answer"), || {
        st = status(&home);
        !st.is_null()
    });
    let version = st["version"].as_str().unwrap_or("?").to_owned();
    let last_step = st["last"]["step"].as_str().unwrap_or("?").to_owned();
    // A version during whose change the supervisor died is not tried again by itself.
    if last_step == "recovered" {
        assert!(
            std::fs::read_to_string(home.join(".skip-upgrade-version"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == "9.0.0"),
            "{spec}: 9.0.0 was undone but not skipped\n{}",
            s.log()
        );
    }

    // Invariant 5: one committed version runs, and the files agree with it.
    for leftover in [
        "wireleap-relay.next",
        "wireleap-relay.next.hash",
        "config.json.next",
    ] {
        assert!(
            !home.join(leftover).exists(),
            "{spec}: {leftover} left behind\n{}",
            s.log()
        );
    }
    let installed = std::fs::read(home.join("wireleap-relay")).unwrap();
    let committed = std::fs::read(&release.0).unwrap();
    // Invariant 4: only the original or the verified release runs.
    match version.as_str() {
        "9.0.0" => {
            assert!(
                installed == committed,
                "{spec}: 9.0.0 runs from other bytes"
            );
            assert!(
                std::fs::read(home.join("wireleap-relay.hash")).ok()
                    == std::fs::read(&release.1).ok(),
                "{spec}: 9.0.0 is installed beside another statement\n{}",
                s.log()
            );
            assert!(
                std::fs::read_to_string(home.join("upgrade-state.json"))
                    .unwrap_or_default()
                    .contains("\"9.0.0\""),
                "{spec}: 9.0.0 runs but is not recorded as committed"
            );
        }
        _ => {
            assert!(
                installed == original,
                "{spec}: the old version runs from other bytes (status {st})"
            );
            // Invariant 7: no downgrade; the highest committed is not above what runs.
            assert!(
                !std::fs::read_to_string(home.join("upgrade-state.json"))
                    .unwrap_or_default()
                    .contains("\"9.0.0\""),
                "{spec}: 9.0.0 recorded as committed but the old version runs\n{}",
                s.log()
            );
        }
    }
    // Invariant 3: every stream the client saw admitted has its token in the ledger.
    let tokens = token_rows(&home);
    assert!(
        tokens >= counts.opened,
        "{spec}: {} streams admitted but {tokens} tokens in the ledger",
        counts.opened
    );
    if victim == "supervisor" {
        // Invariants 1 and 2: the generations outlived their supervisor and served on.
        assert!(
            counts.failed.is_empty() && counts.cut.is_empty(),
            "{spec}: failed {:?}, cut {:?}\n{}",
            counts.failed,
            counts.cut,
            s.log()
        );
    } else {
        // A killed generation takes its own streams along; nothing may be refused.
        assert!(
            counts
                .failed
                .iter()
                .all(|f| !f.contains("refused") && !f.contains("\\\"code\\\"")),
            "{spec}: refusals or relay errors: {:?}",
            counts.failed
        );
    }
    assert!(
        counts.opened > 20,
        "{spec}: too little load: {}",
        counts.opened
    );
    Outcome {
        version,
        last_step,
        opened: counts.opened,
        failed: counts.failed.len(),
        cut: counts.cut.len(),
        converged_in,
    }
}

#[test]
fn kill_nine_after_every_journal_step_converges() {
    let work = tempfile::tempdir().unwrap();
    let release = release(work.path());
    let cases: &[(&str, &str, &str, bool)] = &[
        // step, victim, the version it must converge to
        ("verified", "supervisor", "0.7.0", false),
        ("verified", "old", "9.0.0", false),
        ("migrated", "supervisor", "0.7.0", false),
        ("migrated", "old", "9.0.0", false),
        ("migrated", "new", "0.7.0", false),
        ("swapped", "supervisor", "0.7.0", false),
        ("swapped", "old", "9.0.0", false),
        ("swapped", "new", "0.7.0", false),
        ("committing", "supervisor", "9.0.0", false),
        ("committing", "old", "9.0.0", false),
        ("committing", "new", "9.0.0", false),
        // Inside the commit: the new binary renamed into place, its statement not yet.
        ("binary-installed", "supervisor", "9.0.0", false),
        // The relay's user removes the staged statement while the supervisor is down: the
        // supervisor's own copy of it finishes the commit.
        ("committing", "supervisor", "9.0.0", true),
        ("binary-installed", "supervisor", "9.0.0", true),
        ("committed", "supervisor", "9.0.0", false),
        ("committed", "old", "9.0.0", false),
        ("committed", "new", "9.0.0", false),
    ];
    let mut table = Vec::new();
    // WIRELEAP_RECOVERY_CASE=<step>:<victim> runs one case (for debugging).
    let only = std::env::var("WIRELEAP_RECOVERY_CASE").ok();
    for &(at, victim, want, tamper) in cases {
        if only
            .as_ref()
            .is_some_and(|o| *o != format!("{at}:{victim}"))
        {
            continue;
        }
        let o = run_one(&release, at, victim, tamper);
        table.push((
            at,
            victim,
            o.version.clone(),
            o.last_step.clone(),
            o.opened,
            o.failed,
            o.cut,
            o.converged_in,
        ));
        assert_eq!(
            o.version, want,
            "{at}:{victim} (tamper {tamper}) converged to {}",
            o.version
        );
    }
    println!(
        "{:<16} {:<10} {:<8} {:<20} {:>6} {:>6} {:>4} {:>10}",
        "killed at", "victim", "runs", "journal", "opens", "failed", "cut", "converged"
    );
    for (at, victim, version, step, opened, failed, cut, took) in &table {
        println!(
            "{at:<16} {victim:<10} {version:<8} {step:<20} {opened:>6} {failed:>6} {cut:>4} {:>9.1}s",
            took.as_secs_f64()
        );
    }
}

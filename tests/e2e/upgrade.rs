//! Supervised upgrades from releases built and signed by the real `release-tool`, under load:
//! a good release commits; a tampered one, one that crashes at start, one that never gets ready,
//! one whose migration fails and one that crashes inside the health window are each rolled back
//! while the old version keeps serving, and skipped from then on.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::load::{Load, short_stream};
use crate::support::process::relay_bin;
use crate::support::releases::{publish, set_channel, stamped};
use crate::support::supervised::Supervised;
use crate::support::{Home, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// Publishes `binary` as `version` with the real release tool and stages it in `home`, as the
/// Upgrader does: `wireleap-relay.next` and its statement `wireleap-relay.next.hash`.
fn publish_and_stage(root: &Path, home: &Home, version: &str, binary: &Path) {
    let (asset, statement) = publish(root, version, binary);
    std::fs::copy(&asset, home.file("wireleap-relay.next")).unwrap();
    std::fs::copy(&statement, home.file("wireleap-relay.next.hash")).unwrap();
    std::fs::set_permissions(
        home.file("wireleap-relay.next"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

/// A release that migrates and starts as `relay` does, serves for a second, and is then killed
/// with SIGKILL (inside any health window the tests use).
fn crash_later(dir: &Path, relay: &Path) -> PathBuf {
    let relay = relay.display();
    script(
        dir,
        "crash-later",
        &format!(
            "[ \"$1\" = migrate ] && exec \"{relay}\" \"$@\"\n\"{relay}\" \"$@\" &\nchild=$!\nsleep 1\nkill -9 $child\nexit 4"
        ),
    )
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// One request to the supervisor's control socket (what `wireleap-relay-supervisor ctl` sends);
/// returns (exit code `ctl` would give, reply).
fn ctl(home: &Home, args: &[&str]) -> (i32, serde_json::Value) {
    use std::io::{BufRead as _, Write as _};
    let request = match args {
        ["status"] => serde_json::json!({"cmd": "status"}),
        ["upgrade", v] => serde_json::json!({"cmd": "upgrade", "version": v}),
        ["rollback"] => serde_json::json!({"cmd": "rollback"}),
        _ => panic!("unknown ctl {args:?}"),
    };
    let mut conn =
        std::os::unix::net::UnixStream::connect(home.file("wireleap-relay-supervisor.sock"))
            .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    writeln!(conn, "{request}").unwrap();
    let mut line = String::new();
    let _ = std::io::BufReader::new(conn).read_line(&mut line);
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
    let code = if reply["ok"] == true { 0 } else { 1 };
    (code, reply)
}

fn wait_serving(home: &Home) {
    eventually(WAIT, "the supervisor to serve", || {
        ctl(home, &["status"]).1["state"] == "serving"
    });
}

/// A supervisor that runs the relay from outside its home directory (`--relay`) refuses upgrades
/// and rollbacks, which would replace `<home>/wireleap-relay`, a file that never runs: it says
/// why, removes the staged release, skips nothing, and the relay serves on.
#[test]
fn upgrades_are_refused_when_the_relay_runs_from_outside_its_home() {
    let outside = relay_bin();
    let s = Supervised::start(&["--relay", outside.to_str().unwrap()]);
    let home = &s.home;
    let releases = tempfile::tempdir().unwrap();
    publish_and_stage(releases.path(), home, "9.0.0", &relay_bin());
    let first = home.pid().unwrap();
    let (code, reply) = ctl(home, &["upgrade", "9.0.0"]);
    assert_eq!(code, 1, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("but the relay runs from") && error.contains(&outside.display().to_string()),
        "{reply}"
    );
    assert!(!home.file("wireleap-relay.next").exists());
    assert!(!home.file("wireleap-relay.next.hash").exists());
    let skipped = std::fs::read_to_string(home.file(".skip-upgrade-version")).unwrap_or_default();
    assert!(!skipped.contains("9.0.0"), "{skipped}");
    let (code, reply) = ctl(home, &["rollback"]);
    assert_eq!(code, 1, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("but the relay runs from"),
        "{reply}"
    );
    assert_eq!(home.pid().unwrap(), first, "the relay did not serve on");
    assert!(
        s.rt.block_on(short_stream(&s.sk, &s.hop, s.target)).is_ok(),
        "no stream after the refusals"
    );
}

#[test]
fn upgrades_commit_and_bad_releases_roll_back_under_load() {
    let s = Supervised::start(&["--health-window", "2", "--ready-timeout", "3"]);
    let (standin, home, rt) = (&s.standin, &s.home, &s.rt);
    let (sk, hop, target) = (&s.sk, &s.hop, s.target);
    let read_log = || s.log();
    let releases = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let load = Load::start(rt, sk, hop, target, 50);
    std::thread::sleep(Duration::from_millis(500));
    let deletes_before = standin.relays_requests("DELETE").len();
    let mut table = Vec::new();

    // A good release: verified, handed over, healthy, committed.
    let before = std::fs::read(home.file("wireleap-relay")).unwrap();
    publish_and_stage(releases.path(), home, "9.0.0", &relay_bin());
    let first = home.pid().unwrap();
    let (code, reply) = ctl(home, &["upgrade", "9.0.0"]);
    assert_eq!(
        (code, &reply["ok"]),
        (0, &serde_json::json!(true)),
        "{reply}\n{}",
        read_log()
    );
    assert_ne!(home.pid().unwrap(), first, "no new generation serves");
    assert_eq!(
        std::fs::read(home.file("wireleap-relay.prev")).unwrap(),
        before
    );
    assert!(!home.file("wireleap-relay.next").exists());
    assert!(!home.file("config.json.next").exists());
    assert!(
        home.file("config.json.prev").exists(),
        "the migrated config was not committed"
    );
    assert!(home.read("upgrade-state.json").contains("\"9.0.0\""));
    let text = home.read("upgrade-journal.jsonl");
    for step in ["verified", "migrated", "swapped", "committing", "committed"] {
        assert!(text.contains(&format!("\"step\":\"{step}\"")), "{text}");
    }
    table.push(("9.0.0 good release", "committed".to_owned()));

    // Bad releases: each refused or rolled back, old version serving, version skipped.
    let tampered = |home: &Home| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(home.file("wireleap-relay.next"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
    };
    // Each bad release migrates as the real binary does, and fails where its name says.
    let relay = relay_bin();
    let relay = relay.display();
    let crash_at_start = script(
        scripts.path(),
        "crash",
        &format!("[ \"$1\" = migrate ] && exec \"{relay}\" \"$@\"\nexit 3"),
    );
    let never_ready = script(
        scripts.path(),
        "hang",
        &format!("[ \"$1\" = migrate ] && exec \"{relay}\" \"$@\"\nexec sleep 60"),
    );
    let bad_migration = script(
        scripts.path(),
        "bad-migration",
        &format!(
            "[ \"$1\" = migrate ] && {{ echo 'migration 9999 (demo): refused on purpose' >&2; exit 1; }}\nexec \"{relay}\" \"$@\""
        ),
    );
    let crash_later = crash_later(scripts.path(), &relay_bin());
    let cases: [(&str, &Path, &str); 5] = [
        ("9.1.0", &relay_bin(), "did not verify"),
        ("9.2.0", &crash_at_start, "at start"),
        ("9.3.0", &never_ready, "was not ready"),
        ("9.3.5", &bad_migration, "migration failed"),
        ("9.4.0", &crash_later, "inside the health window"),
    ];
    let mut load = Some(load);
    let mut counts = None;
    for (version, binary, why) in cases {
        wait_serving(home);
        if version == "9.4.0" {
            // The releases so far never carried a stream: nothing may have failed. The next one
            // serves for a second and is then killed, so it gets a load of its own.
            counts = load.take().map(|l| l.finish(rt));
            load = Some(Load::start(rt, sk, hop, target, 20));
            std::thread::sleep(Duration::from_millis(300));
        }
        publish_and_stage(releases.path(), home, version, binary);
        if version == "9.1.0" {
            tampered(home);
        }
        let (code, reply) = ctl(home, &["upgrade", version]);
        assert_eq!(code, 1, "{version}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains(why),
            "{version}: expected {why:?} in {error:?}; reply {reply}\n{}",
            read_log()
        );
        assert!(
            home.read(".skip-upgrade-version")
                .lines()
                .any(|l| l == version),
            "{version} not skipped"
        );
        for leftover in ["wireleap-relay.next", "config.json.next"] {
            assert!(
                !home.file(leftover).exists(),
                "{version}: {leftover} left behind"
            );
        }
        if version == "9.3.0" {
            // While the new version was (not) getting ready, the directory heard nothing from the
            // serving generation: it paused its heartbeats (every 500 ms otherwise) first. The
            // first second after "migrated" is left out: a heartbeat already in flight then
            // still lands, before the pause is confirmed.
            let (migrated, failed) = (
                journal_time(home, version, "migrated"),
                journal_time(home, version, "rolled-back"),
            );
            assert!(failed - migrated >= 2500, "{migrated}..{failed}");
            let heard: Vec<u64> = standin
                .relays_requests("POST")
                .iter()
                .filter(|r| r.time_ms > migrated + 1000 && r.time_ms < failed)
                .map(|r| r.time_ms - migrated)
                .collect();
            assert!(
                heard.is_empty(),
                "the directory heard the serving generation while its successor started (ms after migrated): {heard:?}"
            );
        }
        if matches!(version, "9.2.0" | "9.3.0") {
            // The serving generation paused its heartbeats while the new version started; that
            // one never took over (nor enrolled), so the serving one heartbeats again, and not
            // only when its pause lease ends.
            let seen = standin.relays_requests("POST").len();
            eventually(
                Duration::from_secs(5),
                "the relay to heartbeat again",
                || standin.relays_requests("POST").len() > seen,
            );
        }
        table.push((version, format!("rolled back: {error}")));
    }
    wait_serving(home);
    std::thread::sleep(Duration::from_millis(300));
    let crash = load.take().unwrap().finish(rt);
    let counts = counts.unwrap();

    println!("{:<22} outcome", "release");
    for (release, outcome) in &table {
        println!("{release:<22} {outcome}");
    }
    println!(
        "load through 9.0.0-9.3.0: {} stream opens ok, {} failed; {} of {} long-lived streams cut",
        counts.opened,
        counts.failed.len(),
        counts.cut.len(),
        counts.long
    );
    println!(
        "load through 9.4.0 (killed while serving): {} opens ok, {} in flight on the killed process lost; {} of {} long-lived streams cut",
        crash.opened,
        crash.failed.len(),
        crash.cut.len(),
        crash.long
    );
    assert!(
        counts.failed.is_empty(),
        "failed opens: {:?}",
        counts.failed
    );
    assert!(counts.cut.is_empty(), "cut streams: {:?}", counts.cut);
    assert!(counts.opened > 100, "too little load: {}", counts.opened);
    // A process killed with SIGKILL takes the streams it was carrying with it; nothing else may
    // fail: no refusal, and the long-lived streams on the draining old generation live on.
    assert!(
        crash
            .failed
            .iter()
            .all(|f| !f.contains("refused") && !f.contains("\\\"code\\\"")),
        "a refusal or a relay error status, not a stream lost with the killed process: {:?}",
        crash.failed
    );
    assert!(
        crash.cut.is_empty(),
        "long-lived streams on the old generation were cut: {:?}",
        crash.cut
    );
    assert!(
        crash.opened > 20,
        "the old version did not serve again: {}",
        crash.opened
    );
    assert_eq!(
        standin.relays_requests("DELETE").len(),
        deletes_before,
        "an upgrade disenrolled"
    );
    assert!(
        home.read("upgrade-state.json").contains("\"9.0.0\""),
        "a failed version raised the floor"
    );
}

/// Publishes `binary` as `version` in the release tree `root` and points the default channel at
/// it: from the next heartbeat on, the stand-in directory announces it.
/// The `Wireleap-Relay-Version` of every `POST /relays`, in the order the directory saw them.
fn versions_posted(standin: &crate::support::standin::Standin) -> Vec<String> {
    standin
        .relays_requests("POST")
        .iter()
        .filter_map(|r| r.header("wireleap-relay-version").map(str::to_owned))
        .collect()
}

fn publish_on_channel(root: &Path, version: &str, binary: &Path) {
    publish(root, version, binary);
    set_channel(root, version);
}

/// The upgrade journal's entries.
fn journal(home: &Home) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(home.file("upgrade-journal.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// When the journal recorded `step` for `version`, unix milliseconds.
fn journal_time(home: &Home, version: &str, step: &str) -> u64 {
    journal(home)
        .into_iter()
        .find(|e| e["version"] == version && e["step"] == step)
        .and_then(|e| e["time_ms"].as_u64())
        .unwrap_or_else(|| panic!("no {step} step for {version} in the journal"))
}

/// DESIGN.md upgrade steps 1-4 from a heartbeat notice: the relay downloads the release the
/// stand-in directory announces, verifies and stages it, and asks its supervisor, which commits
/// it under load with nothing failed or cut and no disenroll. Then a release that crashes inside
/// its health window is announced: rolled back, skipped, and not tried again on later notices.
#[test]
fn heartbeat_notice_upgrades_under_load() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let standin = crate::support::standin::Standin::start_with(wireleap_devnet::Config {
        releases_root: Some(root.path().to_path_buf()),
        ..wireleap_devnet::Config::default()
    });
    // The health window comes from config.json, as with `wireleap-relay start` (no flags).
    let extra = format!(
        r#""release_url": "{}", "supervisor": {{"health_window": "2s"}},"#,
        standin.net.releases_url()
    );
    let s = Supervised::start_with(standin, &extra, &[]);
    let (standin, home, rt) = (&s.standin, &s.home, &s.rt);
    let load = Load::start(rt, &s.sk, &s.hop, s.target, 50);
    std::thread::sleep(Duration::from_millis(500));
    let deletes_before = standin.relays_requests("DELETE").len();
    let first = home.pid().unwrap();

    let next = stamped(work.path(), &relay_bin(), "9.0.0");
    let announced = std::time::Instant::now();
    publish_on_channel(root.path(), "9.0.0", &next);
    eventually(
        Duration::from_secs(60),
        "the upgrade to be handed over",
        || home.journal_steps("9.0.0").iter().any(|s| s == "swapped"),
    );
    let to_ready = announced.elapsed();
    eventually(Duration::from_secs(30), "the upgrade to commit", || {
        home.journal_steps("9.0.0").iter().any(|s| s == "committed")
    });
    assert_eq!(
        std::fs::read(home.file("wireleap-relay")).unwrap(),
        std::fs::read(&next).unwrap(),
        "the committed binary is not the release"
    );
    assert_ne!(home.pid().unwrap(), first);
    let window = journal_time(home, "9.0.0", "committing") - journal_time(home, "9.0.0", "swapped");
    assert!(
        (2000..10_000).contains(&window),
        "config.json's supervisor.health_window (2s) not applied: committed {window} ms after the swap\n{}",
        s.log()
    );
    assert!(s.log().contains("config.json: supervisor.health_window 2s"));
    // The new generation says so to the directory; notices for 9.0.0 stop.
    eventually(WAIT, "a heartbeat from 9.0.0", || {
        versions_posted(standin).iter().any(|v| v == "9.0.0")
    });
    // The old generation drains (the load's long-lived streams keep it alive) but no longer
    // heartbeats: the directory never sees the relay go back to 0.7.0.
    std::thread::sleep(Duration::from_millis(1500));
    let versions = versions_posted(standin);
    let first_new = versions.iter().position(|v| v == "9.0.0").unwrap();
    assert!(
        versions[first_new..].iter().all(|v| v == "9.0.0"),
        "the draining 0.7.0 generation kept heartbeating: {versions:?}"
    );
    let counts = load.finish(rt);
    println!(
        "notice-driven upgrade 0.7.0 -> 9.0.0: channel set to handover {to_ready:?}; {} opens ok, {} failed; {} of {} long-lived streams cut; slowest open {:?}",
        counts.opened,
        counts.failed.len(),
        counts.cut.len(),
        counts.long,
        counts.slowest
    );
    let log = s.log();
    for line in log.lines().filter(|l| l.contains("handover: pid")) {
        println!("{line}");
    }
    assert!(
        counts.failed.is_empty(),
        "failed opens: {:?}",
        counts.failed
    );
    assert!(counts.cut.is_empty(), "cut streams: {:?}", counts.cut);
    assert!(counts.opened > 50, "too little load: {}", counts.opened);
    assert_eq!(
        standin.relays_requests("DELETE").len(),
        deletes_before,
        "the upgrade disenrolled"
    );

    // A release that dies inside its health window: rolled back, skipped, never retried.
    let crash_later = crash_later(work.path(), &next);
    publish_on_channel(root.path(), "9.1.0", &crash_later);
    eventually(Duration::from_secs(60), "9.1.0 to be rolled back", || {
        home.journal_steps("9.1.0")
            .iter()
            .any(|s| s == "rolled-back")
    });
    assert!(
        home.read(".skip-upgrade-version")
            .lines()
            .any(|l| l == "9.1.0"),
        "9.1.0 not skipped"
    );
    wait_serving(home);
    // Several more heartbeats announce 9.1.0; the relay ignores them.
    let posts = standin.relays_requests("POST").len();
    eventually(WAIT, "more heartbeats", || {
        standin.relays_requests("POST").len() >= posts + 4
    });
    assert_eq!(
        home.journal_steps("9.1.0")
            .iter()
            .filter(|s| *s == "verified")
            .count(),
        1,
        "a skipped version was tried again: {:?}",
        home.journal_steps("9.1.0")
    );
    assert!(home.read("upgrade-state.json").contains("\"9.0.0\""));
    assert!(
        rt.block_on(short_stream(&s.sk, &s.hop, s.target)).is_ok(),
        "9.0.0 does not serve after the rollback"
    );

    // The operator's rollback to the previous version, under load: nothing fails, and the
    // floor keeps automatic upgrades from reinstalling 9.0.0 (DESIGN.md invariant 7).
    let load = Load::start(rt, &s.sk, &s.hop, s.target, 20);
    std::thread::sleep(Duration::from_millis(300));
    let reply = wireleap_home::control::call(
        home.path(),
        &wireleap_home::control::Request::Rollback { recall: None },
        WAIT,
    )
    .unwrap();
    assert!(reply.ok, "{reply:?}\n{}", s.log());
    assert_eq!(reply.version.as_deref(), Some("0.7.0"), "{reply:?}");
    std::thread::sleep(Duration::from_millis(500));
    let counts = load.finish(rt);
    println!(
        "operator rollback 9.0.0 -> 0.7.0: {} opens ok, {} failed; {} of {} long-lived streams cut",
        counts.opened,
        counts.failed.len(),
        counts.cut.len(),
        counts.long
    );
    assert!(
        counts.failed.is_empty(),
        "failed opens: {:?}",
        counts.failed
    );
    assert!(counts.cut.is_empty(), "cut streams: {:?}", counts.cut);
    let status = ctl(home, &["status"]).1;
    assert_eq!(status["version"], "0.7.0", "{status}");
    assert_eq!(status["prev_version"], serde_json::Value::Null, "{status}");
    assert!(!home.file("wireleap-relay.prev").exists());
    assert!(!home.file("config.json.next").exists());
    // Heartbeats go on; whatever the channel says, nothing is installed (9.1.0 is skipped,
    // 9.0.0 is not above the highest committed).
    publish_on_channel(root.path(), "9.0.0", &next);
    let posts = standin.relays_requests("POST").len();
    eventually(WAIT, "more heartbeats", || {
        standin.relays_requests("POST").len() >= posts + 4
    });
    assert_eq!(
        home.journal_steps("9.0.0")
            .iter()
            .filter(|s| *s == "verified")
            .count(),
        1,
        "9.0.0 was installed again after the operator's rollback"
    );
    assert_eq!(ctl(home, &["status"]).1["version"], "0.7.0");
}

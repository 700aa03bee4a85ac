//! Health that means serving (issue: fleet-safe upgrades): a new version is committed only if,
//! through its health window, it answers PINGs through the public socket, keeps its liveness
//! pings, stays under the memory bound, and ends it enrolled in every contract. One that hangs
//! right after READY (SIGSTOP), answers nothing, leaks memory or cannot enroll is rolled back,
//! named in the journal and `status`, skipped, and no connection is refused meanwhile.
//! What a download meets (a release not published yet) is no health verdict: it is retried
//! after a backoff, never skipped.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wireleap_home::control::{Request, State, call};

use crate::cli_upgrade::{cli, supervised_with_releases_full};
use crate::support::eventually;
use crate::support::load::Load;
use crate::support::process::relay_bin;
use crate::support::releases::publish;
use crate::support::supervised::Supervised;

const WAIT: Duration = Duration::from_secs(60);

/// Upgrades to `version` (published from `binary`) in the background; returns its outcome.
fn upgrade_in_background(
    s: &Supervised,
    version: &str,
) -> std::thread::JoinHandle<crate::support::process::Run> {
    let home = s.home.file("wireleap-relay");
    let version = version.to_owned();
    std::thread::spawn(move || {
        crate::cli_upgrade::run_binary(&home, &["upgrade", "--yes", &version], "")
    })
}

/// The journal's last entry for `version` with `step`, as `detail`.
fn detail_of(s: &Supervised, version: &str, step: &str) -> Option<String> {
    wireleap_home::journal::read(s.home.path())
        .into_iter()
        .rev()
        .find(|e| e.version == version && e.step.as_str() == step)
        .map(|e| e.detail)
}

/// After a failed window: the old version serves, the version is skipped, `status` names the
/// criterion, and no open was refused.
fn assert_rolled_back(s: &Supervised, version: &str, criterion: &str, load: Load) {
    let detail = detail_of(s, version, "rolled-back")
        .unwrap_or_else(|| panic!("{version} not rolled back\n{}", s.log()));
    assert!(
        detail.contains(&format!("health: {criterion}")),
        "{detail}\n{}",
        s.log()
    );
    eventually(WAIT, "the old version serving again", || {
        call(s.home.path(), &Request::Status, Duration::from_secs(2)).is_ok_and(|st| {
            st.state == Some(State::Serving) && st.version.as_deref() != Some(version)
        })
    });
    let st = call(s.home.path(), &Request::Status, Duration::from_secs(5)).unwrap();
    let last = serde_json::to_string(&st.last).unwrap();
    assert!(
        last.contains(&format!("health: {criterion}")),
        "status does not name the criterion: {last}"
    );
    assert!(
        s.home
            .read(".skip-upgrade-version")
            .lines()
            .any(|l| l == version)
    );
    let counts = load.finish(&s.rt);
    let refused = counts.refused();
    println!(
        "{version} ({criterion}) rolled back: {} opens ok, {} failed (in flight on it), {} refused",
        counts.opened,
        counts.failed.len(),
        refused.len()
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
}

#[test]
fn a_release_that_hangs_after_ready_is_rolled_back_inside_its_window() {
    // A long window: the hang must be caught by its liveness, not outlived by the window.
    let (s, root) =
        supervised_with_releases_full(&["--health-window", "30", "--liveness", "3s"], &[], &|_| {});
    let load = Load::start(&s.rt, &s.sk, &s.hop, s.target, 0);
    publish(root.path(), "9.1.0", &relay_bin());
    let before = call(s.home.path(), &Request::Status, Duration::from_secs(5))
        .unwrap()
        .pid
        .unwrap();
    let asked = upgrade_in_background(&s, "9.1.0");
    eventually(WAIT, "the new version to take over", || {
        s.home
            .journal_steps("9.1.0")
            .contains(&"swapped".to_owned())
    });
    let new = call(s.home.path(), &Request::Status, Duration::from_secs(5))
        .unwrap()
        .pid
        .unwrap();
    assert_ne!(new, before);
    kill(Pid::from_raw(new as i32), Signal::SIGSTOP).unwrap();
    let stopped = std::time::Instant::now();
    let out = asked.join().unwrap();
    assert_ne!(out.code, 0, "{out}");
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "not inside the window: {took:?}"
    );
    println!("hung after READY: rolled back {took:?} after SIGSTOP (liveness bound 3 s)");
    assert_rolled_back(&s, "9.1.0", "liveness", load);
}

/// Under load, an upgrade to `version`, the relay with its test fault `fault` on: refused,
/// rolled back for `criterion` ([`assert_rolled_back`]).
fn a_faulty_release_is_rolled_back(args: &[&str], version: &str, fault: &str, criterion: &str) {
    let (s, root) = supervised_with_releases_full(args, &[], &|_| {});
    let load = Load::start(&s.rt, &s.sk, &s.hop, s.target, 0);
    // The old version has served real streams (what the new one is compared with).
    eventually(
        Duration::from_secs(30),
        "40 streams before the upgrade",
        || load.opened() >= 40,
    );
    // The relay tells the supervisor its counts once a second: they reach it before the upgrade.
    std::thread::sleep(Duration::from_millis(1500));
    let work = tempfile::tempdir().unwrap();
    publish(root.path(), version, &faulty(work.path(), fault));
    let out = cli(&s.home, &["upgrade", "--yes", version], "");
    assert_ne!(out.code, 0, "{out}\n{}", s.log());
    assert_rolled_back(&s, version, criterion, load);
}

#[test]
fn a_release_that_leaks_memory_is_rolled_back_inside_its_window() {
    a_faulty_release_is_rolled_back(
        &["--health-window", "30", "--max-memory", "200MB"],
        "9.2.0",
        "leak",
        "memory",
    );
}

#[test]
fn a_release_that_stops_relaying_and_answers_nothing_is_rolled_back_inside_its_window() {
    // It keeps pinging (its actors run) and its memory is fine: only the probe through the
    // public socket sees it.
    a_faulty_release_is_rolled_back(&["--health-window", "30"], "9.3.0", "blackhole", "probe");
}

#[test]
fn a_release_that_cannot_enroll_is_rolled_back_at_the_end_of_its_window() {
    a_faulty_release_is_rolled_back(
        &["--health-window", "3"],
        "9.5.0",
        "no-enroll",
        "enrollment",
    );
}

#[test]
fn a_release_that_refuses_streams_is_rolled_back_at_the_end_of_its_window() {
    a_faulty_release_is_rolled_back(&["--health-window", "3"], "9.6.0", "refuse", "streams");
}

/// A release that finds every token bad (400, a client's code: no failure of its own) but
/// otherwise serves: only its admitting none of its streams, where the old one admitted most,
/// shows it.
#[test]
fn a_release_that_refuses_every_stream_with_a_client_code_is_rolled_back() {
    a_faulty_release_is_rolled_back(&["--health-window", "3"], "9.7.0", "refuse-400", "streams");
}

#[test]
fn a_good_release_passes_its_probe_and_commits() {
    let (s, root) = supervised_with_releases_full(&["--health-window", "1"], &[], &|_| {});
    publish(root.path(), "9.4.0", &relay_bin());
    let out = cli(&s.home, &["upgrade", "--yes", "9.4.0"], "");
    assert_eq!(out.code, 0, "{out}\n{}", s.log());
    assert!(
        s.log().contains("passed its probe: 3 PONG from"),
        "{}",
        s.log()
    );
}

/// A release: the relay with its test fault `fault` on (`WIRELEAP_RELAY_FAULT`).
fn faulty(dir: &std::path::Path, fault: &str) -> std::path::PathBuf {
    let path = dir.join("wireleap-relay");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nWIRELEAP_RELAY_FAULT={fault} exec \"{}\" \"$@\"\n",
            relay_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A version announced before its files are published (the release server answers 404, as a
/// lagging mirror does) is not skipped: the relay tries again after a backoff, and the release
/// installs once it is there.
#[test]
fn a_version_announced_before_its_files_exist_is_not_skipped_and_installs_later() {
    let root = tempfile::tempdir().unwrap();
    let standin = crate::support::standin::Standin::start_with(wireleap_devnet::Config {
        releases_root: Some(root.path().to_path_buf()),
        ..wireleap_devnet::Config::default()
    });
    let extra = format!(
        r#""release_url": "{}", "auto_upgrade": true,"#,
        standin.net.releases_url()
    );
    let s = Supervised::start_prepared(standin, &extra, &["--health-window", "1"], &[], &|_| {});
    crate::support::releases::set_channel(root.path(), "9.7.0");
    eventually(WAIT, "the announced version's download to fail", || {
        s.log()
            .lines()
            .any(|l| l.contains("9.7.0") && l.contains("will try again"))
    });
    assert!(
        !s.home.read(".skip-upgrade-version").contains("9.7.0"),
        "a 404 skipped the version\n{}",
        s.log()
    );
    // Later notices wait for the backoff instead of downloading again at once.
    eventually(WAIT, "a notice held back by the backoff", || {
        s.log().contains("waiting before trying again")
    });
    publish(root.path(), "9.7.0", &relay_bin());
    let out = cli(&s.home, &["upgrade", "--yes", "9.7.0"], "");
    assert_eq!(out.code, 0, "{out}\n{}", s.log());
}

/// As the systemd unit runs it: no `WIRELEAP_RELAY_HOME`, the supervisor installed in the home.
/// Every relay command it runs from a nameless verified copy (`version`, `probe`, ...) is told
/// the home, so an upgrade passes its probe and commits.
#[test]
fn without_the_home_variable_as_the_unit_runs_it_an_upgrade_is_probed_and_commits() {
    let (s, root) = supervised_with_releases_full(
        &["--health-window", "1"],
        &[("WIRELEAP_RELAY_HOME", "")],
        &|home: &crate::support::Home| {
            let installed = home.file("wireleap-relay-supervisor");
            std::fs::copy(
                crate::support::process::sibling_bin("wireleap-relay-supervisor"),
                &installed,
            )
            .unwrap();
            std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o755)).unwrap();
        },
    );
    publish(root.path(), "9.8.0", &relay_bin());
    let out = cli(&s.home, &["upgrade", "--yes", "9.8.0"], "");
    assert_eq!(out.code, 0, "{out}\n{}", s.log());
    assert!(s.log().contains("passed its probe"), "{}", s.log());
}

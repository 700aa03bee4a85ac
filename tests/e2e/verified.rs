//! Only verified bytes run, and nothing the supervisor runs holds up its loop (issue: a
//! supervisor you can trust): a staged binary replaced after its verification never runs; a
//! migration that hangs is bounded, killed with its children, and not run again after a
//! supervisor dies during it, while the relay killed meanwhile comes back at once and the
//! watchdog keeps pinging; a committed relay whose `version` hangs does not wedge the supervisor.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wireleap_home::control::{Reply, Request, call};

use crate::support::load::short_stream;
use crate::support::process::{is_alive, relay_bin};
use crate::support::releases::publish;
use crate::support::supervised::{Supervised, supervisor_command};
use crate::support::{Home, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Stages the release `(asset, statement)` as the relay's Upgrader does, and asks the
/// supervisor for it on a thread of its own.
fn stage_and_ask(
    home: &Home,
    (asset, statement): &(PathBuf, PathBuf),
    version: &str,
) -> std::thread::JoinHandle<std::io::Result<Reply>> {
    std::fs::copy(asset, home.file("wireleap-relay.next")).unwrap();
    std::fs::copy(statement, home.file("wireleap-relay.next.hash")).unwrap();
    let (home, version) = (home.path().to_path_buf(), version.to_owned());
    std::thread::spawn(move || call(&home, &Request::Upgrade { version }, WAIT))
}

fn status(home: &Home) -> Reply {
    call(home.path(), &Request::Status, Duration::from_secs(5)).unwrap()
}

/// A supervised relay whose releases come from a tree the test writes, upgraded only on request.
fn supervised(args: &[&str], env: &[(&str, &str)]) -> (Supervised, tempfile::TempDir) {
    crate::cli_upgrade::supervised_with_releases_full(args, env, &|_| {})
}

/// An attacker with the relay's rights swaps `wireleap-relay.next` for their own binary, right
/// after the supervisor verified it (while its migrations run) and during the new version's
/// health window. The signed bytes are what runs and what is committed; the swapped-in binary
/// never runs, not even when the relay is restarted after a crash.
#[test]
fn a_staged_binary_replaced_after_verification_never_runs() {
    let (s, root) = supervised(&["--health-window", "2"], &[]);
    let home = &s.home;
    let work = tempfile::tempdir().unwrap();
    let ran = work.path().join("the-swapped-binary-ran");
    let relay = relay_bin();
    let relay = relay.display();
    // Its migrations take a second: the moment to swap the file.
    let slow = script(
        work.path(),
        "slow",
        &format!("[ \"$1\" = migrate ] && sleep 1\nexec \"{relay}\" \"$@\""),
    );
    for (version, moment) in [("9.0.0", "verified"), ("9.1.0", "swapped")] {
        let release = publish(root.path(), version, &slow);
        let asker = stage_and_ask(home, &release, version);
        eventually(WAIT, &format!("{version}: {moment}"), || {
            home.journal_steps(version).iter().any(|s| s == moment)
        });
        let evil = script(
            work.path(),
            &format!("evil-{version}"),
            &format!(
                "touch '{}'\n[ \"$1\" = version ] && {{ echo {version}; exit 0; }}\nexec \"{relay}\" \"$@\"",
                ran.display()
            ),
        );
        let tmp = home.file("swap.tmp");
        std::fs::copy(&evil, &tmp).unwrap();
        std::fs::rename(&tmp, home.file("wireleap-relay.next")).unwrap();
        let reply = asker.join().unwrap().unwrap();
        assert!(reply.ok, "{version}: {}\n{}", reply.to_line(), s.log());
        assert_eq!(
            std::fs::read(home.file("wireleap-relay")).unwrap(),
            std::fs::read(&release.0).unwrap(),
            "swapped after {moment}: the committed binary is not the signed release"
        );
        assert_eq!(
            std::fs::read(home.file("wireleap-relay.hash")).unwrap(),
            std::fs::read(&release.1).unwrap(),
            "swapped after {moment}: the committed statement is not the release's"
        );
        assert!(
            !ran.exists(),
            "swapped after {moment}: the swapped-in binary ran"
        );
    }
    // A crash restart runs the committed, verified bytes.
    let pid = status(home).pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(WAIT, "a new generation serving", || {
        let st = status(home);
        st.pid.is_some_and(|p| p != pid) && st.state == Some(wireleap_home::control::State::Serving)
    });
    assert!(!ran.exists(), "the swapped-in binary ran after a restart");
    assert_eq!(status(home).version.as_deref(), Some("9.1.0"));
}

/// Watchdog pings as systemd would receive them.
struct Watchdog {
    pings: Arc<Mutex<Vec<Instant>>>,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Watchdog {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        let pings = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&pings);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "WATCHDOG=1")
                {
                    seen.lock().unwrap().push(Instant::now());
                }
            }
        });
        Self {
            pings,
            _dir: dir,
            path,
        }
    }

    /// The longest time without a ping between `from` and `to`.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let pings = self.pings.lock().unwrap();
        let mut at = from;
        let mut gap = Duration::ZERO;
        for &p in pings.iter().filter(|&&p| p > from && p < to) {
            gap = gap.max(p - at);
            at = p;
        }
        gap.max(to.saturating_duration_since(at))
    }
}

/// A release whose migration hangs (with a child of its own) is bounded by
/// `--migrate-timeout`: meanwhile the supervisor answers, pings its watchdog, and restarts a
/// relay killed at that moment at once; then the migration's process group is gone and the
/// version skipped. A supervisor killed during such a migration leaves nothing running and its
/// successor does not run the migration again.
#[test]
fn a_hanging_migration_is_bounded_and_supervision_goes_on() {
    let watchdog = Watchdog::start();
    let notify = watchdog.path.display().to_string();
    let args = ["--health-window", "2", "--migrate-timeout", "4s"];
    let (mut s, root) = supervised(
        &args,
        &[
            ("NOTIFY_SOCKET", notify.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let home = s.home.path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let relay = relay_bin();
    let hanging = |version: &str| {
        let runs = work.path().join(format!("runs-{version}"));
        let child = work.path().join(format!("child-{version}"));
        let binary = script(
            work.path(),
            &format!("hang-{version}"),
            &format!(
                "[ \"$1\" = migrate ] && [ \"$2\" != --down ] && {{ echo run >> '{}'; sleep 619 & echo $! > '{}'; wait; }}\nexec \"{}\" \"$@\"",
                runs.display(),
                child.display(),
                relay.display()
            ),
        );
        (publish(root.path(), version, &binary), runs, child)
    };
    let child_pid = |path: &Path| -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };

    // 1. The bound.
    let (release, runs, child) = hanging("9.0.0");
    let asker = stage_and_ask(&s.home, &release, "9.0.0");
    eventually(WAIT, "the migration to start", || child.exists());
    let hung_at = Instant::now();
    let asked = Instant::now();
    let st = status(&s.home);
    let answered_in = asked.elapsed();
    assert_eq!(st.state, Some(wireleap_home::control::State::Upgrading));
    let old = st.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(10),
        "a stream through the restarted relay",
        || s.rt.block_on(short_stream(&s.sk, &s.hop, s.target)).is_ok(),
    );
    let back_in = killed.elapsed();
    let reply = asker.join().unwrap().unwrap();
    let done_at = Instant::now();
    assert!(!reply.ok);
    let why = reply.error.clone().unwrap_or_default();
    assert!(
        why.contains("migration failed") && why.contains("did not finish"),
        "{why}"
    );
    let gap = watchdog.longest_gap(hung_at, done_at);
    println!(
        "migration bound: {:?} after it started: {why}",
        done_at - hung_at
    );
    println!(
        "hanging migration: status answered in {answered_in:?}; relay killed meanwhile served again after {back_in:?}; longest watchdog gap {gap:?} (every 500 ms expected)"
    );
    assert!(answered_in < Duration::from_secs(1), "{answered_in:?}");
    assert!(
        back_in < Duration::from_secs(2),
        "the relay killed during the migration came back after {back_in:?}\n{}",
        s.log()
    );
    assert!(
        gap < Duration::from_millis(1500),
        "watchdog silent for {gap:?}"
    );
    eventually(
        Duration::from_secs(5),
        "the migration's child to be gone",
        || !is_alive(child_pid(&child)),
    );
    assert!(
        s.home
            .read(".skip-upgrade-version")
            .lines()
            .any(|l| l == "9.0.0")
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);

    // 2. The supervisor dies during the migration.
    let (release, runs, child) = hanging("9.1.0");
    let asker = stage_and_ask(&s.home, &release, "9.1.0");
    eventually(WAIT, "the migration to start", || child.exists());
    s.restart_supervisor(&args);
    let _ = asker.join();
    eventually(WAIT, "the restarted supervisor to serve", || {
        call(&home, &Request::Status, Duration::from_secs(2))
            .is_ok_and(|st| st.state == Some(wireleap_home::control::State::Serving))
    });
    assert_eq!(
        s.home.journal_steps("9.1.0").last().map(String::as_str),
        Some("recovered"),
        "{}",
        s.log()
    );
    assert!(
        s.home
            .read(".skip-upgrade-version")
            .lines()
            .any(|l| l == "9.1.0")
    );
    assert!(
        !is_alive(child_pid(&child)),
        "the dead supervisor's migration left its child running"
    );
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        1,
        "the migration ran again"
    );
    assert!(
        s.rt.block_on(short_stream(&s.sk, &s.hop, s.target)).is_ok(),
        "{}",
        s.log()
    );
}

/// A committed relay whose `version` never answers: the supervisor still starts it, answers
/// `status` at once throughout, and refuses an upgrade (it cannot tell the running version)
/// without wedging; nothing the hung command started is left.
#[test]
fn a_committed_relay_whose_version_hangs_does_not_wedge_the_supervisor() {
    let home = Home::with_config(
        r#"{"address": "127.0.0.1:0",
            "contracts": {"http://127.0.0.1:9": {"address": "wireleap://127.0.0.1:13499", "role": "fronting"}}}"#,
    );
    script(
        home.path(),
        "wireleap-relay",
        &format!(
            "[ \"$1\" = version ] && exec sleep 623\nexec \"{}\" \"$@\"",
            relay_bin().display()
        ),
    );
    let log = std::fs::File::create(home.file("supervisor.log")).unwrap();
    let mut supervisor = supervisor_command(&home)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    eventually(WAIT, "the relay to be ready", || {
        home.read("supervisor.log").contains("relay ready")
    });
    let path = home.path().to_path_buf();
    let asker = std::thread::spawn(move || {
        call(
            &path,
            &Request::Upgrade {
                version: "9.0.0".to_owned(),
            },
            WAIT,
        )
    });
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let asked = Instant::now();
        let st = status(&home);
        slowest = slowest.max(asked.elapsed());
        assert!(st.ok, "{}", st.to_line());
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply = asker.join().unwrap().unwrap();
    assert!(!reply.ok, "{}", reply.to_line());
    assert!(
        reply
            .error
            .as_deref()
            .unwrap_or("")
            .contains("did not answer"),
        "{}",
        reply.to_line()
    );
    assert!(slowest < Duration::from_secs(1), "status took {slowest:?}");
    assert!(
        supervisor.try_wait().unwrap().is_none(),
        "the supervisor exited"
    );
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 623"])
        .output()
        .unwrap();
    let _ = supervisor.kill();
    let _ = supervisor.wait();
    for pid in crate::support::supervised::relay_pids_in(home.path()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// A release carries the supervisor as a second file of its one signed statement: the relay
/// stages both, the supervisor verifies both together, and a supervisor file swapped after
/// staging refuses (and skips) the whole release: never a mix of two releases.
#[test]
fn a_release_carries_its_supervisor_verified_with_it_and_a_swapped_one_refuses_the_release() {
    use crate::support::releases::{release_key, release_tool};
    let (s, root) = supervised(&["--health-window", "1"], &[]);
    let home = &s.home;
    let work = tempfile::tempdir().unwrap();
    let supervisor = crate::support::process::sibling_bin("wireleap-relay-supervisor");
    let publish = |version: &str| {
        let binary = crate::support::releases::reporting(work.path(), &relay_bin(), version);
        let notes = work.path().join("notes.md");
        std::fs::write(&notes, format!("# {version}\n")).unwrap();
        release_tool(&[
            "publish",
            "--root",
            &root.path().display().to_string(),
            "--key",
            &release_key().display().to_string(),
            "--version",
            version,
            "--binary",
            &binary.display().to_string(),
            "--supervisor",
            &supervisor.display().to_string(),
            "--changelog",
            &notes.display().to_string(),
        ]);
    };
    let upgrade = |version: &str| crate::cli_upgrade::cli(home, &["upgrade", "--yes", version], "");

    publish("9.0.0");
    let up = upgrade("9.0.0");
    assert_eq!(up.code, 0, "{up}\n{}", s.log());
    assert!(
        s.log()
            .contains("the release's supervisor (wireleap-relay-supervisor_"),
        "{}",
        s.log()
    );
    assert!(!home.file("wireleap-relay-supervisor.next").exists());

    // The staged supervisor swapped before the supervisor verifies: the release is refused.
    publish("9.1.0");
    let asset = std::fs::read_dir(root.path().join("v9.1.0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none() && p.to_string_lossy().contains("wireleap-relay_"))
        .unwrap();
    let statement = PathBuf::from(format!("{}.hash", asset.display()));
    std::fs::write(
        home.file("wireleap-relay-supervisor.next"),
        b"#!/bin/sh\nexit 0\n",
    )
    .unwrap();
    let asker = stage_and_ask(home, &(asset, statement), "9.1.0");
    let reply = asker.join().unwrap().unwrap();
    assert!(!reply.ok, "{}", reply.to_line());
    let why = reply.error.unwrap_or_default();
    assert!(why.contains("wireleap-relay-supervisor_"), "{why}");
    assert!(
        home.read(".skip-upgrade-version")
            .lines()
            .any(|l| l == "9.1.0")
    );
    for name in [
        "wireleap-relay.next",
        "wireleap-relay.next.hash",
        "wireleap-relay-supervisor.next",
    ] {
        assert!(!home.file(name).exists(), "{name} left behind");
    }
    assert_eq!(status(home).version.as_deref(), Some("9.0.0"));
}

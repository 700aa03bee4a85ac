//! The operator's commands around the supervisor, with the real binaries: `start`, `status` and
//! `stop` with `wireleap-relay-supervisor` beside the relay in its home; `upgrade` (spec §3.9:
//! the channel's newest version from the stand-in directory, the changelog, the y/N prompt,
//! `--yes`, the progress bar, the supervisor's outcome) with releases built and signed by the
//! real `release-tool`; `rollback` through the supervisor under load and offline without one.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::load::Load;
use crate::support::process::{Run, is_alive, relay_bin, sibling_bin};
use crate::support::releases::{publish, set_channel, stamped};
use crate::support::standin::Standin;
use crate::support::supervised::Supervised;
use crate::support::{Home, eventually};

/// Bound on one command: an upgrade includes the new version's start and a 2 s health window.
const COMMAND_WAIT: Duration = Duration::from_secs(120);
const RUNNING: &str = env!("CARGO_PKG_VERSION");

/// Publishes a relay reporting `version` in the release tree `root` and points the `default`
/// channel at it, so the stand-in directory's `/info` names it.
pub(crate) fn publish_on_channel(root: &Path, version: &str) {
    let binary = stamped(root, &relay_bin(), version);
    publish(root, version, &binary);
    set_channel(root, version);
}

/// Runs the relay binary `binary` (the home's own copy: its home is its folder, as in
/// production) with `stdin` as its input, bounded by [`COMMAND_WAIT`].
pub(crate) fn run_binary(binary: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("WIRELEAP_RELAY_HOME")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .env("RELAY_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut status = None;
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(
            COMMAND_WAIT,
            &format!("`{}` to finish", args.join(" ")),
            || {
                status = child.try_wait().unwrap();
                status.is_some()
            },
        )
    }));
    if let Err(panic) = waited {
        let _ = child.kill();
        let _ = child.wait();
        std::panic::resume_unwind(panic);
    }
    Run {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `wireleap-relay ARGS` with the home's own binary.
pub(crate) fn cli(home: &Home, args: &[&str], stdin: &str) -> Run {
    run_binary(&home.file("wireleap-relay"), args, stdin)
}

/// The line of `status` that starts with `key:`, trimmed after the colon.
pub(crate) fn status_field(status: &Run, key: &str) -> String {
    let prefix = format!("  {key}:");
    status
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key:?} in status:\n{status}"))
        .trim()
        .to_owned()
}

/// A supervised relay at a stand-in network whose directory announces the channel versions of
/// the release tree it returns. Automatic upgrades are off, so only the commands upgrade.
pub(crate) fn supervised_with_releases() -> (Supervised, tempfile::TempDir) {
    supervised_with_releases_window("2")
}

/// As [`supervised_with_releases`], with the supervisor's `--health-window`.
pub(crate) fn supervised_with_releases_window(
    health_window: &str,
) -> (Supervised, tempfile::TempDir) {
    supervised_with_releases_full(&["--health-window", health_window], &[], &|_| {})
}

/// As [`supervised_with_releases`], with the supervisor's `args` and `env`, and `prepare`
/// arranging the home before the supervisor starts.
pub(crate) fn supervised_with_releases_full(
    args: &[&str],
    env: &[(&str, &str)],
    prepare: &dyn Fn(&Home),
) -> (Supervised, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let standin = Standin::start_with(wireleap_devnet::Config {
        releases_root: Some(root.path().to_path_buf()),
        ..wireleap_devnet::Config::default()
    });
    let extra = format!(
        r#""release_url": "{}", "auto_upgrade": false,"#,
        standin.net.releases_url()
    );
    let s = Supervised::start_prepared(standin, &extra, args, env, prepare);
    (s, root)
}

pub(crate) fn assert_nothing_staged(home: &Home) {
    for name in ["wireleap-relay.next", "wireleap-relay.next.hash"] {
        assert!(!home.file(name).exists(), "{name} left behind");
    }
}

#[test]
fn upgrade_asks_aborts_on_no_and_commits_with_yes() {
    let (s, root) = supervised_with_releases();
    let home = &s.home;
    publish_on_channel(root.path(), "9.0.0");

    let no = cli(home, &["upgrade"], "n\n");
    assert_eq!(no.code, 1, "{no}");
    for want in [
        "Changelog for version 9.0.0:",
        "- what changed in 9.0.0",
        &format!("Proceed with upgrade from {RUNNING} to 9.0.0? (y/N) OK, aborting."),
    ] {
        assert!(no.stdout.contains(want), "{want:?} missing:\n{no}");
    }
    assert_nothing_staged(home);
    let status = cli(home, &["status"], "");
    assert_eq!(status_field(&status, "version"), RUNNING, "{status}");

    let yes = cli(home, &["upgrade", "--yes"], "");
    assert_eq!(yes.code, 0, "{yes}\n{}", s.log());
    assert!(
        yes.stdout.contains(&format!(
            "wireleap-relay successfully upgraded to version 9.0.0 (was {RUNNING})."
        )),
        "{yes}"
    );
    assert!(!yes.stdout.contains("(y/N)"), "--yes asked:\n{yes}");
    // The progress: stderr is not a terminal here (a log file, a pipe), so plain lines by the
    // quarter, no carriage-return redraws.
    assert!(
        !yes.stderr.contains('\r')
            && yes.stderr.contains("100%")
            && yes
                .stderr
                .lines()
                .filter(|l| l.starts_with("Downloading "))
                .count()
                >= 3,
        "no progress lines, or redraws in a log:\n{yes}"
    );
    assert_nothing_staged(home);

    let status = cli(home, &["status"], "");
    assert_eq!(status.code, 0, "{status}");
    assert_eq!(status_field(&status, "version"), "9.0.0", "{status}");
    assert_eq!(status_field(&status, "state"), "serving", "{status}");
    assert_eq!(status_field(&status, "highest committed"), "9.0.0");
    assert!(
        status_field(&status, "previous version").starts_with(RUNNING),
        "{status}"
    );
    assert!(
        status_field(&status, "last upgrade step").starts_with("9.0.0 committed"),
        "{status}"
    );
    assert_eq!(cli(home, &["version"], "").stdout.trim(), "9.0.0");

    let again = cli(home, &["upgrade", "--yes"], "");
    assert_eq!(again.code, 0, "{again}");
    assert!(
        again.stdout.contains(
            "Your wireleap-relay is up to date (version 9.0.0, 9.0.0 available), nothing to do."
        ),
        "{again}"
    );
}

/// An `upgrade-state.json` that cannot be read leaves the floor unknown: nothing installs, not
/// even by hand, and the refusal names the file and how to repair it; once it is removed the
/// upgrade goes through.
#[test]
fn an_unreadable_floor_refuses_upgrades_until_repaired() {
    let (s, root) = supervised_with_releases();
    let home = &s.home;
    publish_on_channel(root.path(), "9.0.0");
    home.write("upgrade-state.json", "{\"highest_committed\": ");
    let run = cli(home, &["upgrade", "--yes"], "");
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.all().contains("upgrade-state.json") && run.all().contains("repaired"),
        "{run}"
    );
    assert_nothing_staged(home);
    assert_eq!(cli(home, &["version"], "").stdout.trim(), RUNNING);
    std::fs::remove_file(home.file("upgrade-state.json")).unwrap();
    let run = cli(home, &["upgrade", "--yes"], "");
    assert_eq!(run.code, 0, "{run}\n{}", s.log());
    assert_eq!(cli(home, &["version"], "").stdout.trim(), "9.0.0");
}

/// A home its group may change lets its members replace `trusted-keys/`: new releases are
/// refused, naming the home and the fix, and `check-config` warns; the relay that runs goes on.
#[test]
fn a_group_writable_home_refuses_new_releases_but_keeps_serving() {
    use std::os::unix::fs::PermissionsExt as _;
    let (s, root) = supervised_with_releases();
    let home = &s.home;
    publish_on_channel(root.path(), "9.0.0");
    let mode = |m| std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(m));
    mode(0o775).unwrap();
    let run = cli(home, &["upgrade", "--yes"], "");
    assert_eq!(run.code, 1, "{run}");
    assert!(run.all().contains("replace the trust folder"), "{run}");
    let check = cli(home, &["check-config"], "");
    assert_eq!(check.code, 0, "{check}");
    assert!(check.stderr.contains("upgrades will be refused"), "{check}");
    assert_nothing_staged(home);
    let status = cli(home, &["status"], "");
    assert_eq!(status.code, 0, "{status}");
    assert_eq!(status_field(&status, "version"), RUNNING, "{status}");
    mode(0o700).unwrap();
    let run = cli(home, &["upgrade", "--yes"], "");
    assert_eq!(run.code, 0, "{run}\n{}", s.log());
}

#[test]
fn upgrade_to_a_skipped_version_warns_and_works_with_y() {
    let (s, root) = supervised_with_releases();
    let home = &s.home;
    publish_on_channel(root.path(), "9.0.0");
    home.write(".skip-upgrade-version", "9.0.0\n");

    let run = cli(home, &["upgrade"], "maybe\ny\n");
    assert_eq!(run.code, 0, "{run}\n{}", s.log());
    for want in [
        "-- NOTE: upgrading to version 9.0.0 seems to have failed the last time --",
        "Response 'maybe' not understood. Proceed with upgrade",
        "wireleap-relay successfully upgraded to version 9.0.0",
    ] {
        assert!(run.stdout.contains(want), "{want:?} missing:\n{run}");
    }
    let status = cli(home, &["status"], "");
    assert_eq!(status_field(&status, "version"), "9.0.0", "{status}");
}

#[test]
fn rollback_after_an_upgrade_returns_to_the_previous_version_under_load() {
    let (s, root) = supervised_with_releases();
    let (home, rt) = (&s.home, &s.rt);
    publish_on_channel(root.path(), "9.0.0");
    let up = cli(home, &["upgrade", "--yes"], "");
    assert_eq!(up.code, 0, "{up}\n{}", s.log());

    let load = Load::start(rt, &s.sk, &s.hop, s.target, 50);
    std::thread::sleep(Duration::from_millis(500));
    let deletes_before = s.standin.relays_requests("DELETE").len();
    let back = cli(home, &["rollback"], "");
    assert_eq!(back.code, 0, "{back}\n{}", s.log());
    assert!(
        back.stdout.contains(&format!(
            "rolled back to wireleap-relay {RUNNING} (was 9.0.0)"
        )),
        "{back}"
    );
    std::thread::sleep(Duration::from_millis(500));
    load.finish(rt)
        .assert_clean(&format!("rollback 9.0.0 -> {RUNNING} under load"), 50);
    assert_eq!(
        s.standin.relays_requests("DELETE").len(),
        deletes_before,
        "the rollback disenrolled"
    );

    let status = cli(home, &["status"], "");
    assert_eq!(status.code, 0, "{status}");
    assert_eq!(status_field(&status, "version"), RUNNING, "{status}");
    assert_eq!(cli(home, &["version"], "").stdout.trim(), RUNNING);
    assert_nothing_staged(home);
    assert!(!home.file("config.json.next").exists());
}

/// `start` with the supervisor beside the relay (both in the home, as installed): it runs in
/// its own session, `status` reports through it, `stop` ends both.
#[test]
fn start_status_stop_under_the_supervisor() {
    let home = Home::with_config(
        r#"{"address": "127.0.0.1:0",
            "contracts": {"http://127.0.0.1:9": {"address": "wireleap://127.0.0.1:13499", "role": "fronting", "upgrade_channel": "beta"}}}"#,
    );
    std::fs::copy(relay_bin(), home.file("wireleap-relay")).unwrap();
    std::fs::copy(
        sibling_bin("wireleap-relay-supervisor"),
        home.file("wireleap-relay-supervisor"),
    )
    .unwrap();

    let start = cli(&home, &["start"], "");
    assert_eq!(start.code, 0, "{start}");
    assert!(
        start.stdout.contains("successfully spawned"),
        "{start}\n{}",
        home.read("wireleap-relay.log")
    );
    let supervisor: i32 = home
        .read("wireleap-relay-supervisor.pid")
        .trim()
        .parse()
        .unwrap();
    let relay = home.pid().unwrap();
    assert!(is_alive(supervisor) && is_alive(relay));
    // Detached: the supervisor leads a session of its own (field 6 of /proc/PID/stat).
    let stat = std::fs::read_to_string(format!("/proc/{supervisor}/stat")).unwrap();
    let session: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        session, supervisor,
        "the supervisor did not start a session"
    );
    // The relay is the supervisor's child, and it logs to the home's log.
    let relay_stat = std::fs::read_to_string(format!("/proc/{relay}/stat")).unwrap();
    let parent = relay_stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1);
    assert_eq!(parent, Some(supervisor.to_string().as_str()));
    assert!(
        home.read("wireleap-relay.log")
            .contains("using the listening socket inherited")
    );

    let again = cli(&home, &["start"], "");
    assert_eq!(again.code, 1, "{again}");
    assert!(
        again
            .stderr
            .contains(&format!("already running! (pid {relay})")),
        "{again}"
    );

    let status = cli(&home, &["status"], "");
    assert_eq!(status.code, 0, "{status}");
    assert_eq!(
        status.stdout.lines().next(),
        Some(format!("wireleap-relay is running, pid {relay}").as_str())
    );
    assert_eq!(status_field(&status, "version"), RUNNING);
    assert_eq!(status_field(&status, "state"), "serving");
    assert_eq!(
        status_field(&status, "channel"),
        "beta (from contract http://127.0.0.1:9)"
    );
    assert_eq!(status_field(&status, "skipped versions"), "none");

    let stop = cli(&home, &["stop"], "");
    assert_eq!(stop.code, 0, "{stop}");
    assert!(
        stop.stdout
            .contains(&format!("stopped wireleap-relay daemon (was pid {relay})"))
            && stop.stdout.contains(&format!(
                "stopped wireleap-relay-supervisor (was pid {supervisor})"
            )),
        "{stop}"
    );
    assert!(!is_alive(supervisor) && !is_alive(relay));
    assert!(!home.file("wireleap-relay-supervisor.pid").exists());
    assert!(!home.file("wireleap-relay-supervisor.sock").exists());
    let status = cli(&home, &["status"], "");
    assert_eq!(
        (status.code, status.stdout.trim()),
        (1, "wireleap-relay is not running")
    );
}

/// Without a supervisor: `upgrade` says it needs one and stages nothing; `rollback` restores
/// `.prev` binary and config offline, removes every `.next` file, and says what it did.
#[test]
fn without_a_supervisor_upgrade_refuses_and_rollback_works_offline() {
    let config = r#"{"address": "127.0.0.1:0", "release_url": "http://127.0.0.1:9/releases",
            "contracts": {"http://127.0.0.1:9": {"address": "wireleap://127.0.0.1:13499", "role": "fronting"}}}"#;
    let home = Home::with_config(config);
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(
        stamped(work.path(), &relay_bin(), "9.0.0"),
        home.file("wireleap-relay"),
    )
    .unwrap();

    let up = cli(&home, &["upgrade", "--yes", "9.1.0"], "");
    assert_eq!(up.code, 1, "{up}");
    assert!(
        up.stderr
            .contains("upgrades need wireleap-relay-supervisor, and none runs")
            && up.stderr.contains("wireleap-relay start"),
        "{up}"
    );
    assert_nothing_staged(&home);
    let down = cli(&home, &["upgrade", "--yes", "1.0.0"], "");
    assert_eq!(down.code, 1, "{down}");
    assert!(down.stderr.contains("wireleap-relay rollback"), "{down}");

    let nothing = cli(&home, &["rollback"], "");
    assert_eq!(nothing.code, 1, "{nothing}");
    assert!(
        nothing.stderr.contains("nothing to roll back to"),
        "{nothing}"
    );

    // What a committed upgrade from RUNNING left, plus a half-done later one.
    std::fs::copy(relay_bin(), home.file("wireleap-relay.prev")).unwrap();
    home.write(
        "config.json.prev",
        &config.replace("127.0.0.1:0", "127.0.0.1:1"),
    );
    for leftover in [
        "wireleap-relay.next",
        "wireleap-relay.next.hash",
        "config.json.next",
    ] {
        home.write(leftover, "left by an upgrade that did not finish");
    }
    let back = cli(&home, &["rollback"], "");
    assert_eq!(back.code, 0, "{back}");
    for want in [
        format!("restored wireleap-relay (version {RUNNING}) from wireleap-relay.prev (was 9.0.0)"),
        "restored config.json from config.json.prev".to_owned(),
        "removed wireleap-relay.next".to_owned(),
        "removed config.json.next".to_owned(),
    ] {
        assert!(back.stdout.contains(&want), "{want:?} missing:\n{back}");
    }
    assert_eq!(cli(&home, &["version"], "").stdout.trim(), RUNNING);
    assert!(home.read("config.json").contains("127.0.0.1:1"));
    for gone in [
        "wireleap-relay.prev",
        "config.json.prev",
        "wireleap-relay.next",
        "wireleap-relay.next.hash",
        "config.json.next",
    ] {
        assert!(!home.file(gone).exists(), "{gone} left behind");
    }
}

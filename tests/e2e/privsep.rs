//! Privilege separation (issue: a supervisor you can trust): with `--relay-user`, the supervisor
//! runs every relay process as the relay's user, in a home laid out as `docs/install.md` says;
//! that user cannot change the binary that runs next nor the keys it trusts, and its upgrades
//! still commit. The supervisor runs as the systemd unit runs it: its own user (not root) in the
//! relay's group, with three ambient capabilities, which no relay process keeps; or as root.
//! A home where the relay's user could change what runs next is refused, naming the paths.
//! These tests need root (as CI runs them); run as another user they say so and pass.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Duration;

use crate::cli_upgrade::status_field;
use crate::cli_upgrade::supervised_with_releases_full;
use crate::support::process::relay_bin;
use crate::support::process::sibling_bin;
use crate::support::releases::{publish_release, release_key};
use crate::support::supervised::{relay_pids_in, supervisor_command};
use crate::support::{Home, eventually};

/// The unprivileged user relay processes run as here.
const NOBODY: u32 = 65534;
/// The supervisor's user here (no name needed).
const SUPERVISOR: u32 = 64_999;

/// `setpriv` running what follows as systemd runs the unit's supervisor: its user, the relay's
/// group, no supplementary group, the unit's ambient capabilities and bounding set, no new
/// privileges.
fn as_the_unit(caps: &str, gid: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={SUPERVISOR}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set=-all,{caps}"),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// The unit's capabilities.
const UNIT_CAPS: &str = "+setuid,+setgid,+kill";

/// This thread's supervisors start as the unit starts them.
fn launch_as_the_unit() {
    let argv = as_the_unit(UNIT_CAPS, NOBODY);
    crate::support::supervised::launch_through(
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: starting the relay as another user needs root");
    }
    root
}

/// The layout of docs/install.md: the home is the supervisor's (`owner`), the relay's group may
/// create files in it (sticky: nobody replaces another's files); the relay's own files are its;
/// the binaries and the trusted keys are the supervisor's.
fn lay_out(home: &Home, owner: u32) {
    let keep = [
        "wireleap-relay",
        "wireleap-relay-supervisor",
        "trusted-keys",
    ];
    for entry in std::fs::read_dir(home.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if keep.contains(&name.as_str()) {
            give(&path, owner);
        } else {
            std::os::unix::fs::lchown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    std::os::unix::fs::chown(home.path(), Some(owner), Some(NOBODY)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o1770)).unwrap();
    // The supervisor, started next, inherits the unit's `UMask=0077` and `Group=` (the relay's
    // group; each test is its own process): what it creates for the relay's user must still be
    // usable by it, and no more.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    nix::unistd::setgid(nix::unistd::Gid::from_raw(NOBODY)).unwrap();
}

/// Gives `path` and all below it to `owner` (group: the relay's), links not followed.
fn give(path: &std::path::Path, owner: u32) {
    std::os::unix::fs::lchown(path, Some(owner), Some(NOBODY)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            give(&entry.unwrap().path(), owner);
        }
    }
}

/// A home with the relay binary, laid out for the supervisor's user `owner`, whose supervisor
/// is not started (its contract is unreachable).
fn unstarted_home(owner: u32) -> Home {
    let home = Home::with_config(
        r#"{"address": "127.0.0.1:0",
            "contracts": {"http://127.0.0.1:9": {"address": "wireleap://127.0.0.1:13499", "role": "fronting"}}}"#,
    );
    std::fs::copy(relay_bin(), home.file("wireleap-relay")).unwrap();
    lay_out(&home, owner);
    home
}

/// `sh -c script` in `home` as the relay's user; whether it succeeded.
fn as_relay_user(home: &Home, script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .current_dir(home.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `wireleap-relay upgrade --yes VERSION` as the relay's user: it stages, the supervisor installs.
fn upgrade_as_relay_user(home: &Home, version: &str) -> std::process::Output {
    relay_command_as_relay_user(home, &["upgrade", "--yes", version])
}

/// `wireleap-relay ARGS` as the relay's user.
fn relay_command_as_relay_user(home: &Home, args: &[&str]) -> std::process::Output {
    Command::new(home.file("wireleap-relay"))
        .args(args)
        .env("WIRELEAP_RELAY_HOME", home.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap()
}

/// Asserts that `out` succeeded, showing its output and the supervisor's log if not.
fn assert_ok(out: &std::process::Output, log: &str) {
    assert!(
        out.status.success(),
        "{}\n{}\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

fn uid_of(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}")).unwrap().uid()
}

#[test]
fn the_relay_runs_as_its_own_user_cannot_change_what_runs_next_and_still_upgrades() {
    if !root() {
        return;
    }
    launch_as_the_unit();
    // With metrics on a fixed port: the new generation (the relay's user, like the old one)
    // must recognise the old one as its own to share the port (issue #18).
    let port = crate::support::webserver::free_port();
    let (s, releases) = supervised_with_releases_full(
        &["--health-window", "2", "--relay-user", &NOBODY.to_string()],
        &[],
        &|home: &Home| {
            let config = home.read("config.json");
            let with_metrics = config.replacen(
                r#""heartbeat_interval""#,
                &format!(r#""metrics": {{"address": "127.0.0.1:{port}"}}, "heartbeat_interval""#),
                1,
            );
            assert_ne!(config, with_metrics);
            home.write("config.json", &with_metrics);
            // Installed in the home, as the package installs it: a release replaces it.
            std::fs::copy(
                sibling_bin("wireleap-relay-supervisor"),
                home.file("wireleap-relay-supervisor"),
            )
            .unwrap();
            lay_out(home, SUPERVISOR);
        },
    );
    let home = &s.home;
    let metrics_line = format!("metrics on http://127.0.0.1:{port}/metrics");
    assert_eq!(s.log().matches(&metrics_line).count(), 1, "{}", s.log());
    assert!(
        s.log()
            .contains("privilege separation: relay processes run as"),
        "{}",
        s.log()
    );
    let relays = relay_pids_in(home.path());
    assert!(!relays.is_empty());
    for &pid in &relays {
        assert_eq!(uid_of(pid), NOBODY, "relay pid {pid}");
    }
    assert_eq!(uid_of(s.supervisor.id()), SUPERVISOR);
    // The relay keeps none of the supervisor's capabilities, nor any supplementary group.
    for &pid in &relays {
        crate::support::process::assert_unprivileged(pid, NOBODY, NOBODY);
    }

    // What the relay's user can and cannot do in its home.
    assert!(
        as_relay_user(home, "echo x > its-own-file"),
        "the home is not the relay's to write in"
    );
    for attempt in [
        "echo x >> wireleap-relay",
        "mv wireleap-relay elsewhere",
        "cp key.pub wireleap-relay",
        "echo key > trusted-keys/mine.pub",
        "rm -r trusted-keys",
        "echo 0.0.1 > upgrade-state.json",
        "mv upgrade-journal.jsonl elsewhere",
    ] {
        assert!(
            !as_relay_user(home, attempt),
            "the relay's user could: {attempt}"
        );
    }

    // An upgrade the relay's user stages (`wireleap-relay upgrade`) commits, the release's own
    // supervisor included (exec'd in place: the same process, its user and capabilities
    // kept); the committed binaries are the supervisor's, and the new generation runs as the
    // relay's user.
    let supervisor = sibling_bin("wireleap-relay-supervisor");
    let (asset, _) = publish_release(
        releases.path(),
        "9.0.0",
        &relay_bin(),
        &[release_key()],
        Some(&supervisor),
    );
    let out = upgrade_as_relay_user(home, "9.0.0");
    assert_ok(&out, &s.log());
    eventually(
        Duration::from_secs(30),
        "the release's supervisor to take over and commit",
        || {
            home.journal_steps("9.0.0")
                .contains(&"supervisor-committed".to_owned())
        },
    );
    let installed = std::fs::metadata(home.file("wireleap-relay-supervisor")).unwrap();
    assert_eq!(
        (installed.uid(), installed.mode() & 0o7777),
        (SUPERVISOR, 0o755)
    );
    let creds = crate::support::process::credentials(s.supervisor.id());
    for (key, want) in [
        (
            "Uid",
            format!("{SUPERVISOR} {SUPERVISOR} {SUPERVISOR} {SUPERVISOR}"),
        ),
        // CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7): the unit's three, nothing more.
        ("CapEff", "00000000000000e0".to_owned()),
        ("CapAmb", "00000000000000e0".to_owned()),
    ] {
        assert!(
            creds.contains(&(key.to_owned(), want.clone())),
            "the supervisor after its own upgrade: {key} is not {want}: {creds:?}"
        );
    }
    let installed = std::fs::metadata(home.file("wireleap-relay")).unwrap();
    assert_eq!(
        (installed.uid(), installed.mode() & 0o7777),
        (SUPERVISOR, 0o755)
    );
    assert_eq!(
        std::fs::read(home.file("wireleap-relay")).unwrap(),
        std::fs::read(&asset).unwrap()
    );
    let status = crate::cli_upgrade::cli(home, &["status"], "");
    assert_eq!(status_field(&status, "version"), "9.0.0", "{status}");
    eventually(
        Duration::from_secs(30),
        "one relay process, the new one",
        || relay_pids_in(home.path()).len() == 1,
    );
    for pid in relay_pids_in(home.path()) {
        assert_eq!(uid_of(pid), NOBODY);
    }
    assert!(!as_relay_user(home, "echo x >> wireleap-relay"));
    // Three generations shared the metrics port in turn: the first, the release's relay, and
    // the one the release's supervisor started once it took over.
    let log = s.log();
    assert_eq!(log.matches(&metrics_line).count(), 3, "{log}");
    assert!(!log.contains("could not start the metrics server"), "{log}");
    assert_eq!(log.matches(crate::metrics::SHARING).count(), 2, "{log}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    // A rollback is the operator's: the relay's user (a compromised relay, say) is refused
    // one without a signed recall, and nothing changes.
    let refused = relay_command_as_relay_user(home, &["rollback"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("a rollback is the operator's") && said.contains("signed recall"),
        "{said}"
    );
    let status = crate::cli_upgrade::cli(home, &["status"], "");
    assert_eq!(status_field(&status, "version"), "9.0.0", "{status}");
    assert!(
        !home
            .journal_steps(env!("CARGO_PKG_VERSION"))
            .contains(&"rollback-started".to_owned())
    );

    // The operator's rollback (here root's): the config is migrated down on a copy the relay's
    // user makes (the supervisor gives no file away), and the old version serves again.
    let running = env!("CARGO_PKG_VERSION");
    let back = Command::new(home.file("wireleap-relay"))
        .arg("rollback")
        .env("WIRELEAP_RELAY_HOME", home.path())
        .output()
        .unwrap();
    assert_ok(&back, &s.log());
    let status = crate::cli_upgrade::cli(home, &["status"], "");
    assert_eq!(status_field(&status, "version"), running, "{status}");
    assert!(!home.file("config.json.next").exists());
    let config = std::fs::metadata(home.file("config.json")).unwrap();
    assert_eq!(config.uid(), NOBODY, "config.json stays the relay's");
    eventually(
        Duration::from_secs(30),
        "one relay process, the old version",
        || relay_pids_in(home.path()).len() == 1,
    );
    for pid in relay_pids_in(home.path()) {
        crate::support::process::assert_unprivileged(pid, NOBODY, NOBODY);
    }

    // Retrying a skipped version is the operator's too: the relay's user stages it, is refused
    // with what to do, and the release stays staged for root's `ctl upgrade`, which installs it.
    std::fs::write(home.file(".skip-upgrade-version"), "9.1.0\n").unwrap();
    publish_release(
        releases.path(),
        "9.1.0",
        &relay_bin(),
        &[release_key()],
        None,
    );
    let refused = upgrade_as_relay_user(home, "9.1.0");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("9.1.0 is on the skip list")
            && said.contains("wireleap-relay-supervisor ctl upgrade 9.1.0"),
        "{said}"
    );
    assert!(
        home.file("wireleap-relay.next").exists(),
        "the staged release was removed"
    );
    assert!(home.journal_steps("9.1.0").is_empty());
    let ctl = Command::new(home.file("wireleap-relay-supervisor"))
        .args(["ctl", "upgrade", "9.1.0"])
        .env("WIRELEAP_RELAY_HOME", home.path())
        .output()
        .unwrap();
    assert_ok(&ctl, &s.log());
    let status = crate::cli_upgrade::cli(home, &["status"], "");
    assert_eq!(status_field(&status, "version"), "9.1.0", "{status}");
}

/// A release that can never install here (its signed statement lists no binary for this host)
/// is skipped although the relay's user may not write the skip list: the relay asks its
/// supervisor, which adds it (and nothing is staged or journaled).
#[test]
fn a_release_ruled_out_for_this_host_is_skipped_through_the_supervisor() {
    if !root() {
        return;
    }
    launch_as_the_unit();
    let (s, releases) = supervised_with_releases_full(
        &["--relay-user", &NOBODY.to_string()],
        &[],
        &|home: &Home| {
            let config = home.read("config.json");
            let automatic =
                config.replacen(r#""auto_upgrade": false"#, r#""auto_upgrade": true"#, 1);
            assert_ne!(config, automatic);
            home.write("config.json", &automatic);
            lay_out(home, SUPERVISOR);
        },
    );
    let home = &s.home;
    assert!(!as_relay_user(home, "echo 9.9.9 >> .skip-upgrade-version"));
    crate::support::releases::publish_unchecked(releases.path(), "9.5.0", None);
    crate::support::releases::set_channel(releases.path(), "9.5.0");
    eventually(
        Duration::from_secs(60),
        "the supervisor to skip 9.5.0 at the relay's request",
        || home.read(".skip-upgrade-version").contains("9.5.0"),
    );
    let skip = std::fs::metadata(home.file(".skip-upgrade-version")).unwrap();
    assert_eq!(
        skip.uid(),
        SUPERVISOR,
        "the skip list stays the supervisor's"
    );
    // Its writers' lock too (the relay's first try, which the supervisor then answers, must
    // not have made it the relay user's, out of the supervisor's reach).
    let lock = std::fs::metadata(home.file(".skip-upgrade-version.lock")).unwrap();
    assert_eq!(
        lock.uid(),
        SUPERVISOR,
        "the skip list's lock is not the supervisor's"
    );
    let log = s.log();
    assert!(
        log.contains("9.5.0 added to .skip-upgrade-version at the relay's request"),
        "{log}"
    );
    assert!(
        !log.contains("could not add the version to the skip list"),
        "{log}"
    );
    assert!(home.journal_steps("9.5.0").is_empty());
}

/// Started by hand as root (no unit), the supervisor separates privileges the same way: the
/// relay runs as its user without capabilities or groups, and cannot change the binary.
#[test]
fn a_supervisor_run_as_root_separates_privileges_too() {
    if !root() {
        return;
    }
    let (s, _releases) = supervised_with_releases_full(
        &["--relay-user", &NOBODY.to_string()],
        &[],
        &|home: &Home| lay_out(home, 0),
    );
    let home = &s.home;
    assert_eq!(uid_of(s.supervisor.id()), 0);
    let relays = relay_pids_in(home.path());
    assert!(!relays.is_empty());
    for pid in relays {
        crate::support::process::assert_unprivileged(pid, NOBODY, NOBODY);
    }
    assert!(!as_relay_user(home, "echo x >> wireleap-relay"));
    assert!(as_relay_user(home, "echo x > its-own-file"));
}

#[test]
fn a_home_the_relay_user_could_change_is_refused_with_each_path() {
    if !root() {
        return;
    }
    let home = unstarted_home(0);
    // Mistakes: the binary given to the relay's user, the trust folder writable by its group.
    std::os::unix::fs::chown(home.file("wireleap-relay"), Some(NOBODY), None).unwrap();
    std::os::unix::fs::chown(home.file("trusted-keys"), None, Some(NOBODY)).unwrap();
    std::fs::set_permissions(
        home.file("trusted-keys"),
        std::fs::Permissions::from_mode(0o775),
    )
    .unwrap();
    // Not a mistake but the relay user's doing: a file at a name only the supervisor makes. It
    // is removed, not a reason to stay down for good.
    std::fs::write(home.file("wireleap-relay.prev"), b"planted").unwrap();
    std::os::unix::fs::chown(home.file("wireleap-relay.prev"), Some(NOBODY), Some(NOBODY)).unwrap();
    let out = supervisor_command(&home)
        .args(["--relay-user", "nobody"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("wireleap-relay.prev was made by the relay's user nobody: removed")
            && !home.file("wireleap-relay.prev").exists(),
        "{err}"
    );
    for want in [
        format!(
            "{} is owned by nobody",
            home.file("wireleap-relay").display()
        ),
        format!(
            "{} is writable by nobody",
            home.file("trusted-keys").display()
        ),
    ] {
        assert!(err.contains(&want), "{want:?} missing from: {err}");
    }
    assert!(
        relay_pids_in(home.path()).is_empty(),
        "a relay started anyway"
    );
    // And a relay user that is root, or unknown, is a usage error.
    for bad in ["root", "no-such-user-here"] {
        let out = supervisor_command(&home)
            .args(["--relay-user", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}");
    }
}

/// A supervisor that is not root refuses to start (exit 78, so systemd does not restart it)
/// when it lacks a capability of the unit, is not in the relay's group, or cannot read
/// config.json through that group, and says which and how to fix it.
#[test]
fn a_supervisor_that_cannot_separate_privileges_says_what_it_lacks() {
    if !root() {
        return;
    }
    let home = unstarted_home(SUPERVISOR);
    let chmod = |name: &str, mode: u32| {
        std::fs::set_permissions(home.file(name), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chmod("config.json", 0o640);
    let refusal = |launcher: Vec<String>| {
        let direct = supervisor_command(&home);
        let out = Command::new(&launcher[0])
            .args(&launcher[1..])
            .arg(direct.get_program())
            .args(["--relay-user", "nobody"])
            .env("WIRELEAP_RELAY_HOME", home.path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(
            relay_pids_in(home.path()).is_empty(),
            "a relay started anyway: {err}"
        );
        err
    };
    let err = refusal(as_the_unit("+setuid,+setgid", NOBODY));
    assert!(err.contains("(it lacks CAP_KILL;"), "{err}");
    let err = refusal(as_the_unit(UNIT_CAPS, SUPERVISOR));
    assert!(
        err.contains("must be in the relay's group (gid 65534)"),
        "{err}"
    );
    chmod("config.json", 0o600);
    let err = refusal(as_the_unit(UNIT_CAPS, NOBODY));
    assert!(
        err.contains("reads it through the relay's group (chmod 0640"),
        "{err}"
    );
    // A journal root made (a home laid out for a supervisor that ran as root).
    chmod("config.json", 0o640);
    std::fs::write(home.file("upgrade-journal.jsonl"), "").unwrap();
    chmod("upgrade-journal.jsonl", 0o644);
    let err = refusal(as_the_unit(UNIT_CAPS, NOBODY));
    assert!(
        err.contains(&format!(
            "cannot write {}, which it keeps up to date (chown {SUPERVISOR} each",
            home.file("upgrade-journal.jsonl").display()
        )),
        "{err}"
    );
}

/// The relay's user may not write the trusted roots, so a rotation it fetches is staged for the
/// supervisor, which moves it in only as a valid rotation of the root it trusts: a release
/// signed by the rotated-in key then commits, and a forged root staged beside it is refused.
#[test]
fn a_root_rotation_fetched_by_the_relay_user_reaches_the_supervisor_and_a_forged_one_does_not() {
    use crate::support::releases::{publish_signed, release_tool};
    use crate::trust::{key, s, sign_and_publish, untrust};
    if !root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let root1 = work.path().join("1.root");
    crate::trust::operator_root(&root1);
    // Signed now (the home trusts it from the start); published once the tree exists.
    sign_and_publish(&root1, &["a", "b"], &work.path().join("scratch"));
    let prepare = |home: &Home| {
        untrust(home);
        std::fs::create_dir_all(home.file("trusted-keys/roots")).unwrap();
        std::fs::copy(&root1, home.file("trusted-keys/roots/1.root")).unwrap();
        lay_out(home, SUPERVISOR);
    };
    launch_as_the_unit();
    let (sv, tree) = supervised_with_releases_full(
        &["--health-window", "1", "--relay-user", &NOBODY.to_string()],
        &[],
        &prepare,
    );
    release_tool(&["root", "publish", "--root", &s(tree.path()), &s(&root1)]);
    let home = &sv.home;
    // Root 2: C out, D in; the release is signed by A and D, valid only under root 2.
    let root2 = work.path().join("2.root");
    crate::trust::rotate_c_out_d_in(&root1, &root2, tree.path());
    publish_signed(
        tree.path(),
        "9.0.0",
        &relay_bin(),
        &[key("a", "key"), key("d", "key")],
    );
    // A forged next root waits in the staging folder (the relay's user can write there).
    let staged = home.file("trusted-keys.staged");
    assert!(as_relay_user(
        home,
        &format!("mkdir -p {0} && echo forged > {0}/3.root", s(&staged))
    ));
    let out = upgrade_as_relay_user(home, "9.0.0");
    assert_ok(&out, &sv.log());
    let accepted = home.file("trusted-keys/roots/2.root");
    assert_eq!(
        std::fs::read(&accepted).unwrap(),
        std::fs::read(&root2).unwrap()
    );
    assert_eq!(std::fs::metadata(&accepted).unwrap().uid(), SUPERVISOR);
    assert!(
        !home.file("trusted-keys/roots/3.root").exists(),
        "a forged root was trusted"
    );
    assert!(
        sv.log()
            .contains("release root 2: a valid rotation, now trusted"),
        "{}",
        sv.log()
    );
    assert!(
        sv.log()
            .contains("a release root the relay fetched was refused"),
        "{}",
        sv.log()
    );
    assert!(
        std::fs::read_dir(&staged).map(|d| d.count()).unwrap_or(0) == 0,
        "staged roots left behind"
    );
    // The staging folder swapped for a link to the trusted roots: nothing there is touched.
    assert!(as_relay_user(
        home,
        &format!("rm -r {0} && ln -s trusted-keys/roots {0}", s(&staged))
    ));
    let reply = wireleap_home::control::call(
        home.path(),
        &wireleap_home::control::Request::Upgrade {
            version: "9.9.9".to_owned(),
        },
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!reply.ok);
    for n in ["1.root", "2.root"] {
        assert!(
            home.file("trusted-keys/roots").join(n).exists(),
            "{n} was removed through the link\n{}",
            sv.log()
        );
    }
}

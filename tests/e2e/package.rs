//! The Debian package (`scripts/deb`), built from this run's binaries and installed for real
//! with `dpkg -i` on this machine: the system user, the home with its identity, the units
//! (`systemd-analyze verify`, with the man pages they name), man pages and completions, the relay
//! started from it as the unit starts it, a reinstall that keeps the operator's files, removal
//! and purge. Needs root and dpkg, and a machine without the package, its home or its user;
//! otherwise it says SKIPPED.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wireleap_devnet::client::{Hop, activate_servicekey};
use wireleap_protocol::PublicKey;

use crate::support::load::short_stream;
use crate::support::process::relay_bin;
use crate::support::releases::stamped;
use crate::support::standin::Standin;
use crate::support::supervised::relay_pids_in;
use crate::support::target::tcp_echo;
use crate::support::webserver::free_port;
use crate::support::{eventually, runtime};

const HOME: &str = "/opt/wireleap-relay";
const USER: &str = "wireleap";
const SUPERVISOR_USER: &str = "wireleap-supervisor";
const UNIT: &str = "/lib/systemd/system/wireleap-relay.service";
const WAIT: Duration = Duration::from_secs(30);

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why this machine cannot take the package, if it cannot.
fn unsuitable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("installing a package needs root".into());
    }
    for tool in ["dpkg", "dpkg-deb", "useradd", "runuser", "setpriv"] {
        if run("sh", &["-c", &format!("command -v {tool}")])
            .status
            .success()
        {
            continue;
        }
        return Some(format!("{tool} is missing"));
    }
    if run("dpkg", &["-s", "wireleap-relay"]).status.success() {
        return Some("the package is installed on this machine already".into());
    }
    if Path::new(HOME).exists() {
        return Some(format!("{HOME} exists already"));
    }
    for user in [USER, SUPERVISOR_USER] {
        if run("getent", &["passwd", user]).status.success() {
            return Some(format!("the user {user} exists already"));
        }
    }
    None
}

/// Leaves the machine as the test found it, whatever happened: no process of the package's
/// users left (the package's prerm stops only the systemd unit), no package, home or users.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        for user in [SUPERVISOR_USER, USER] {
            let Ok(out) = Command::new("id").args(["-u", user]).output() else {
                continue;
            };
            let Ok(uid) = String::from_utf8_lossy(&out.stdout).trim().parse::<u32>() else {
                continue;
            };
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let pid = entry.file_name().to_string_lossy().parse::<i32>();
                if let Ok(pid) = pid
                    && entry.metadata().is_ok_and(|m| m.uid() == uid)
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = run("dpkg", &["--purge", "wireleap-relay"]);
        let _ = std::fs::remove_dir_all(HOME);
        let _ = run("userdel", &[SUPERVISOR_USER]);
        let _ = run("userdel", &[USER]);
        let _ = run("groupdel", &[USER]);
        let _ = std::fs::remove_file(
            "/etc/systemd/system/multi-user.target.wants/wireleap-relay.service",
        );
    }
}

/// The package, built from the binaries this run built, uncompressed (fast).
fn build_package(out: &Path) -> PathBuf {
    let bin_dir = relay_bin().parent().unwrap().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deb");
    let built = Command::new(&script)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out)
        .args(["--compress", "none"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "scripts/deb: {stdout}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // The sizes are printed (the bounds are enforced for release builds).
    assert!(stdout.contains("wireleap-relay-supervisor "), "{stdout}");
    eprintln!("{stdout}");
    let debs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs.into_iter().next().unwrap()
}

/// The supervisor started as the unit starts it; killed (with it its relays, which it stops,
/// or the cleanup kills) if the test fails first.
struct Supervisor(std::process::Child);

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn uid_gid(name: &str) -> (u32, u32) {
    let line = ok("getent", &["passwd", name]);
    let fields: Vec<&str> = line.trim().split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn sha(path: &str) -> String {
    ok("sha256sum", &[path])
}

#[test]
fn the_package_installs_starts_the_relay_keeps_the_operators_files_and_purges() {
    if let Some(why) = unsuitable() {
        eprintln!("SKIPPED: the Debian package test: {why}");
        return;
    }
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();
    let deb = build_package(dir.path());
    let deb = deb.to_str().unwrap();

    // What the package says it is.
    let info = ok("dpkg-deb", &["-f", deb, "Package", "Version", "Depends"]);
    assert!(info.contains("Package: wireleap-relay"), "{info}");
    assert!(
        // A semver pre-release (0.8.0-rc.1) is 0.8.0~rc.1 for dpkg.
        info.contains(&format!(
            "Version: {}-1",
            env!("CARGO_PKG_VERSION").replacen('-', "~", 1)
        )),
        "{info}"
    );
    assert!(info.contains("libc6 (>= 2."), "{info}");

    // Installed: the users, the home, the identity, the binaries, the unit enabled but not
    // started.
    let installed = ok("dpkg", &["-i", deb]);
    assert!(
        installed.contains("write /opt/wireleap-relay/config.json"),
        "the operator is told what to do next: {installed}"
    );
    let (uid, gid) = uid_gid(USER);
    let (sv_uid, sv_gid) = uid_gid(SUPERVISOR_USER);
    assert_eq!(sv_gid, gid, "the supervisor's user is in the relay's group");
    assert_ne!(sv_uid, 0);
    for user in [USER, SUPERVISOR_USER] {
        assert!(
            ok("getent", &["passwd", user])
                .trim()
                .ends_with(":/usr/sbin/nologin"),
            "{user}: a system user without a shell"
        );
    }
    let home = std::fs::metadata(HOME).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (sv_uid, gid, 0o1770)
    );
    let seed = std::fs::metadata(format!("{HOME}/key.seed")).unwrap();
    assert_eq!((seed.uid(), seed.mode() & 0o777), (uid, 0o600), "key.seed");
    for bin in ["wireleap-relay", "wireleap-relay-supervisor"] {
        let m = std::fs::metadata(format!("{HOME}/{bin}")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (sv_uid, 0o755), "{bin}");
    }
    let trusted = std::fs::metadata(format!("{HOME}/trusted-keys/roots")).unwrap();
    assert_eq!((trusted.uid(), trusted.mode() & 0o777), (sv_uid, 0o755));
    let version = format!("{}\n", env!("CARGO_PKG_VERSION"));
    assert!(ok("/usr/bin/wireleap-relay", &["--version"]).ends_with(&version));
    assert!(ok("/usr/sbin/wireleap-relay-supervisor", &["--version"]).ends_with(&version));
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/wireleap-relay.service").exists(),
        "the unit is enabled"
    );
    for file in [
        "/usr/share/man/man1/wireleap-relay.1.gz",
        "/usr/share/man/man1/wireleap-relay-status.1.gz",
        "/usr/share/man/man1/wireleap-relay-supervisor.1.gz",
        "/usr/share/bash-completion/completions/wireleap-relay",
        "/usr/share/zsh/vendor-completions/_wireleap-relay-supervisor",
        "/usr/share/fish/vendor_completions.d/wireleap-relay.fish",
        "/etc/logrotate.d/wireleap-relay",
        "/usr/share/doc/wireleap-relay/examples/config.json",
    ] {
        assert!(Path::new(file).exists(), "{file} is not installed");
    }

    // The installed units verify, the man pages they name included (when `man` is here).
    let man = if run("sh", &["-c", "command -v man"]).status.success() {
        "--man=yes"
    } else {
        "--man=no"
    };
    let verify = run(
        "systemd-analyze",
        &[
            "verify",
            man,
            UNIT,
            "/lib/systemd/system/wireleap-relay.socket",
        ],
    );
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {stderr}");
    assert!(!stderr.contains("wireleap-relay"), "warnings: {stderr}");
    // The exposure systemd rates the unit at, 0 (none) to 10, at most 2.0.
    let security = run("systemd-analyze", &["security", "--offline=yes", UNIT]);
    let report = String::from_utf8_lossy(&security.stdout);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in: {report}"));
    eprintln!("{line}");
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    assert!(score <= 2.0, "{report}");

    // The example config passes check-config as it is (the operator edits its values).
    let seed_before = sha(&format!("{HOME}/key.seed"));
    std::fs::copy(
        "/usr/share/doc/wireleap-relay/examples/config.json",
        format!("{HOME}/config.json"),
    )
    .unwrap();
    std::os::unix::fs::chown(format!("{HOME}/config.json"), Some(uid), Some(gid)).unwrap();
    let check = run(
        "runuser",
        &["-u", USER, "--", "/usr/bin/wireleap-relay", "check-config"],
    );
    assert!(check.status.success(), "{check:?}");

    // A config for the stand-in network, then the supervisor as the unit starts it.
    let standin = Standin::start();
    let port = free_port();
    std::fs::write(
        format!("{HOME}/config.json"),
        format!(
            r#"{{"address": "127.0.0.1:{port}", "heartbeat_interval": "500ms",
                "danger_zone": {{"allow_loopback": true}}, "auto_upgrade": false,
                "contracts": {{"{}": {{"address": "wireleap://127.0.0.1:{port}", "role": "backing"}}}}}}"#,
            standin.net.contract_url()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        format!("{HOME}/config.json"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let exec_start: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .split_whitespace()
        .collect();
    let log = dir.path().join("supervisor.log");
    // As systemd runs it: the unit's user and group, its ambient capabilities and bounding set,
    // no new privileges, its umask.
    let setting = |key: &str| -> String {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .next_back()
            .unwrap_or_else(|| panic!("the unit sets no {key}="))
            .to_owned()
    };
    assert_eq!(setting("User"), SUPERVISOR_USER);
    assert_eq!(setting("Group"), USER);
    let caps = |key: &str| -> String {
        setting(key)
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let umask = u32::from_str_radix(&setting("UMask"), 8).unwrap();
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    let mut supervisor = Supervisor(
        Command::new("setpriv")
            .arg(format!("--reuid={}", setting("User")))
            .arg(format!("--regid={}", setting("Group")))
            .arg("--init-groups")
            .arg(format!("--inh-caps={}", caps("AmbientCapabilities")))
            .arg(format!("--ambient-caps={}", caps("AmbientCapabilities")))
            .arg(format!(
                "--bounding-set=-all,{}",
                caps("CapabilityBoundingSet")
            ))
            .arg("--no-new-privs")
            .arg("--")
            .args(&exec_start)
            .current_dir(HOME)
            .env_remove("WIRELEAP_RELAY_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    nix::sys::stat::umask(umask);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(WAIT, "the packaged relay to be ready", || {
        read_log().contains("relay ready")
    });
    let key: String =
        serde_json::from_str(&std::fs::read_to_string(format!("{HOME}/key.pub")).unwrap()).unwrap();
    standin.wait_enrolled(&key, WAIT);
    let rt = runtime();
    let hop = Hop::new(
        format!("wireleap://127.0.0.1:{port}"),
        PublicKey::try_from_b64(&key).unwrap(),
    );
    let target = rt.block_on(tcp_echo());
    let sk = rt
        .block_on(activate_servicekey(standin.net.contract_url()))
        .unwrap();
    eventually(WAIT, "a stream through the packaged relay", || {
        rt.block_on(short_stream(&sk, &hop, target)).is_ok()
    });
    let relays = relay_pids_in(Path::new(HOME));
    assert!(!relays.is_empty());
    let sv_pid = supervisor.0.id();
    let sv_creds = crate::support::process::credentials(sv_pid);
    assert!(
        sv_creds.contains(&("Uid".into(), format!("{sv_uid} {sv_uid} {sv_uid} {sv_uid}"))),
        "the supervisor runs as {SUPERVISOR_USER}: {sv_creds:?}"
    );
    for pid in relays {
        let owner = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
        assert_eq!(owner, uid, "the relay (pid {pid}) runs as {USER}");
        // With none of the supervisor's capabilities or groups.
        crate::support::process::assert_unprivileged(pid, uid, gid);
        // Named for ps and pgrep, though it runs its verified copy through /proc/self/fd.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "wireleap-relay");
    }
    let status = run("/usr/bin/wireleap-relay", &["status"]);
    assert!(status.status.success(), "{status:?}\n{}", read_log());

    // A reinstall over the running relay keeps the operator's files and its identity; a TLS
    // certificate gone missing (a home restored from a backup of key.seed alone) is made again
    // from that key.
    let config_before = sha(&format!("{HOME}/config.json"));
    std::fs::remove_file(format!("{HOME}/relay-cert.pem")).unwrap();
    let again = ok("dpkg", &["-i", deb]);
    assert!(
        again.contains("kept /opt/wireleap-relay/wireleap-relay"),
        "{again}"
    );
    assert_eq!(sha(&format!("{HOME}/config.json")), config_before);
    assert_eq!(sha(&format!("{HOME}/key.seed")), seed_before);
    let cert = std::fs::metadata(format!("{HOME}/relay-cert.pem")).unwrap();
    assert_eq!(cert.uid(), uid, "relay-cert.pem is not the relay user's");
    assert!(rt.block_on(short_stream(&sk, &hop, target)).is_ok());

    kill(
        Pid::from_raw(i32::try_from(supervisor.0.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let mut exited = None;
    eventually(WAIT, "the supervisor to stop", || {
        exited = supervisor.0.try_wait().unwrap();
        exited.is_some()
    });
    assert_eq!(exited.unwrap().code(), Some(0), "{}", read_log());

    // A relay that upgraded itself past the package (the supervisor's, with its signed statement) is
    // kept, statement and all; one the relay's user could have written is replaced, and its
    // statement goes with it.
    let relay = format!("{HOME}/wireleap-relay");
    let newer = stamped(dir.path(), &relay_bin(), "9.0.0");
    std::fs::copy(&newer, &relay).unwrap();
    std::fs::write(format!("{relay}.hash"), "statement").unwrap();
    let kept = ok("dpkg", &["-i", deb]);
    assert!(kept.contains(&format!("kept {relay} 9.0.0")), "{kept}");
    assert!(ok(&relay, &["--version"]).ends_with("9.0.0\n"));
    assert!(Path::new(&format!("{relay}.hash")).exists());
    std::os::unix::fs::chown(&relay, Some(uid), None).unwrap();
    let replaced = ok("dpkg", &["-i", deb]);
    assert!(
        replaced.contains(&format!("{relay} is not {SUPERVISOR_USER}'s alone")),
        "{replaced}"
    );
    assert!(ok(&relay, &["--version"]).ends_with(&version));
    let m = std::fs::metadata(&relay).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (sv_uid, 0o755));
    assert!(!Path::new(&format!("{relay}.hash")).exists());

    // A home laid out by an earlier package, whose supervisor ran as root: the supervisor's
    // files become its user's; the relay's stay the relay's.
    let supervisors = [
        "wireleap-relay",
        "wireleap-relay-supervisor",
        "trusted-keys",
        "trusted-keys/roots",
        "upgrade-state.json",
        "upgrade-journal.jsonl",
        ".skip-upgrade-version",
    ];
    for name in supervisors {
        std::os::unix::fs::lchown(format!("{HOME}/{name}"), Some(0), Some(0)).unwrap();
    }
    std::os::unix::fs::chown(HOME, Some(0), None).unwrap();
    ok("dpkg", &["-i", deb]);
    for name in supervisors {
        let m = std::fs::symlink_metadata(format!("{HOME}/{name}")).unwrap();
        assert_eq!(m.uid(), sv_uid, "{name}");
    }
    assert_eq!(std::fs::metadata(HOME).unwrap().uid(), sv_uid);
    assert_eq!(
        std::fs::metadata(format!("{HOME}/key.seed")).unwrap().uid(),
        uid
    );

    // Removed: the package's files go, the relay's earnings stay; purged: the same, said.
    ok("dpkg", &["-r", "wireleap-relay"]);
    assert!(!Path::new("/usr/lib/wireleap-relay/wireleap-relay").exists());
    assert!(!Path::new("/usr/bin/wireleap-relay").exists());
    assert!(Path::new(&format!("{HOME}/key.seed")).exists());
    let masked = Path::new("/etc/systemd/system/wireleap-relay.service");
    assert!(masked.is_symlink(), "a removed package's unit is masked");
    // Installed again before a purge: unmasked, enabled, the relay's files as they were.
    ok("dpkg", &["-i", deb]);
    assert!(!masked.exists() && !masked.is_symlink(), "still masked");
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/wireleap-relay.service").exists()
    );
    assert_eq!(sha(&format!("{HOME}/key.seed")), seed_before);
    let purged = ok("dpkg", &["--purge", "wireleap-relay"]);
    assert!(purged.contains("kept /opt/wireleap-relay"), "{purged}");
    assert!(!Path::new("/etc/logrotate.d/wireleap-relay").exists());
    assert_eq!(sha(&format!("{HOME}/key.seed")), seed_before);
}

//! The supervisor upgrades itself (issue: the supervisor upgrades itself, never gives up): a
//! release that carries its own supervisor is committed relay first, then the new supervisor
//! is exec'd in place (same pid) on trial, under load, without a failed open or a cut stream,
//! and installs itself; one that crashes at start, or never takes over, is refused before it
//! runs (its preflight) or killed by the trial's guardian, the old supervisor serves on, and the
//! version is skipped.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wireleap_home::control::{Request, State, call};

use crate::cli_upgrade::{cli, supervised_with_releases_full};
use crate::support::load::Load;
use crate::support::process::{relay_bin, sibling_bin};
use crate::support::releases::{publish_release, release_key};
use crate::support::supervised::{Supervised, relay_pids_in};
use crate::support::{Home, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// A supervised relay whose supervisor runs from its home, as the systemd unit runs it.
fn supervised(args: &[&str]) -> (Supervised, tempfile::TempDir) {
    supervised_with_releases_full(args, &[], &|home: &Home| {
        let installed = home.file("wireleap-relay-supervisor");
        std::fs::copy(sibling_bin("wireleap-relay-supervisor"), &installed).unwrap();
        std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o755)).unwrap();
    })
}

/// Publishes `version`: the relay binary and `supervisor`, one signed statement.
fn publish(root: &Path, version: &str, supervisor: &Path) -> PathBuf {
    publish_with(root, version, &relay_bin(), supervisor)
}

/// As [`publish`], with `relay` as the release's relay binary; returns the supervisor's asset.
fn publish_with(root: &Path, version: &str, relay: &Path, supervisor: &Path) -> PathBuf {
    publish_release(root, version, relay, &[release_key()], Some(supervisor));
    std::fs::read_dir(root.join(format!("v{version}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("wireleap-relay-supervisor_")
        })
        .unwrap()
}

fn serving(home: &Home) -> bool {
    call(home.path(), &Request::Status, Duration::from_secs(2))
        .is_ok_and(|st| st.state == Some(State::Serving))
}

fn supervisor_pid(home: &Home) -> u32 {
    home.read("wireleap-relay-supervisor.pid")
        .trim()
        .parse()
        .unwrap()
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The pid of the trial's guardian, from the supervisor's log (the latest trial).
fn guardian_pid(log: &str) -> u32 {
    log.lines()
        .rev()
        .find_map(|l| l.split("guarded by pid ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no trial in the log:\n{log}"))
}

/// A stand-in for a release's supervisor: it passes the preflight (the real supervisor answers
/// it), then runs `body` in place of the supervisor.
fn fails_after_preflight(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncase \"$*\" in *--preflight*) exec \"{}\" \"$@\";; esac\n{body}\n",
            sibling_bin("wireleap-relay-supervisor").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_release_with_a_new_supervisor_commits_both_under_load() {
    let (mut s, root) = supervised(&["--health-window", "1"]);
    let old = s.supervisor.id();
    // A new stream every 10 ms, and 50 long-lived ones.
    let load = Load::start(&s.rt, &s.sk, &s.hop, s.target, 50);
    std::thread::sleep(Duration::from_millis(300));
    let asset = publish(
        root.path(),
        "9.0.0",
        &sibling_bin("wireleap-relay-supervisor"),
    );
    let up = cli(&s.home, &["upgrade", "--yes", "9.0.0"], "");
    assert_eq!(up.code, 0, "{up}\n{}", s.log());
    eventually(WAIT, "the new supervisor to take over and commit", || {
        s.home
            .journal_steps("9.0.0")
            .contains(&"supervisor-committed".to_owned())
    });
    // Exec'd in place: the same process, still running, its pid file unchanged.
    assert!(
        s.supervisor.try_wait().unwrap().is_none(),
        "the supervisor process exited\n{}",
        s.log()
    );
    assert_eq!(supervisor_pid(&s.home), old);
    let guardian = guardian_pid(&s.log());
    eventually(Duration::from_secs(10), "the guardian to exit", || {
        !running(guardian)
    });
    assert_eq!(
        std::fs::read(s.home.file("wireleap-relay-supervisor")).unwrap(),
        std::fs::read(&asset).unwrap(),
        "the installed supervisor is not the release's"
    );
    eventually(WAIT, "the new supervisor serving", || serving(&s.home));
    // The long-lived streams end here; then the old generations, drained, exit.
    let counts = load.finish(&s.rt);
    eventually(WAIT, "one relay process under the new supervisor", || {
        relay_pids_in(s.home.path()).len() == 1
    });
    // The relay generation is the supervisor's own child.
    let relay = relay_pids_in(s.home.path())[0];
    let stat = std::fs::read_to_string(format!("/proc/{relay}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, old, "the relay is not the supervisor's child");
    counts.assert_clean("supervisor swap under load", 50);
}

#[test]
fn a_new_supervisor_that_crashes_or_never_takes_over_is_rolled_back_and_skipped() {
    // The trial is at least the ready timeout and some: 5 s + 5 s here.
    let (mut s, root) = supervised(&[
        "--health-window",
        "1",
        "--ready-timeout",
        "5",
        "--supervisor-trial",
        "3s",
    ]);
    let work = tempfile::tempdir().unwrap();
    let old = s.supervisor.id();
    let installed = std::fs::read(s.home.file("wireleap-relay-supervisor")).unwrap();
    let script = |name: &str, body: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let load = Load::start(&s.rt, &s.sk, &s.hop, s.target, 0);
    // Refused by their preflight: the old supervisor never stopped (same process); then two
    // that pass it and fail once exec'd: the guardian kills them and starts the old one again.
    for (version, supervisor, why, preflight) in [
        ("9.1.0", script("crashes", "exit 3"), "it exited", true),
        (
            "9.2.0",
            script("hangs", "exec sleep 631"),
            "did not finish",
            true,
        ),
        (
            "9.3.0",
            fails_after_preflight(work.path(), "crashes-later", "exit 3"),
            "it exited",
            false,
        ),
        (
            "9.4.0",
            fails_after_preflight(work.path(), "hangs-later", "exec sleep 631"),
            "did not take over",
            false,
        ),
    ] {
        let before = supervisor_pid(&s.home);
        publish(root.path(), version, &supervisor);
        let up = cli(&s.home, &["upgrade", "--yes", version], "");
        if preflight {
            assert_ne!(up.code, 0, "{version}: {up}");
        }
        eventually(WAIT, &format!("{version}: the trial to fail"), || {
            s.home
                .journal_steps(version)
                .contains(&"supervisor-rolled-back".to_owned())
        });
        assert!(s.log().contains(why), "{why:?} missing\n{}", s.log());
        eventually(WAIT, "the old supervisor serving again", || {
            serving(&s.home)
        });
        if preflight {
            assert_eq!(
                supervisor_pid(&s.home),
                before,
                "{version}: not the old supervisor (same pid)"
            );
            assert!(running(before));
        } else {
            // The guardian is the old supervisor now.
            let guardian = guardian_pid(&s.log());
            eventually(WAIT, "the guardian's pid file", || {
                supervisor_pid(&s.home) == guardian
            });
            assert!(!running(before), "{version}: the failed supervisor runs on");
        }
        assert!(
            s.home
                .read(".skip-upgrade-version")
                .lines()
                .any(|l| l == version)
        );
        assert_eq!(
            std::fs::read(s.home.file("wireleap-relay-supervisor")).unwrap(),
            installed,
            "a supervisor that never took over was installed"
        );
    }
    let _ = s.wait_exit(Duration::from_secs(10));
    assert_ne!(supervisor_pid(&s.home), old);
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 631"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "the hung supervisor was left running"
    );
    let counts = load.finish(&s.rt);
    let refused = counts.refused();
    println!(
        "failed supervisor trials under load: {} opens ok, {} failed, {} refused",
        counts.opened,
        counts.failed.len(),
        refused.len()
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
}

/// A supervisor killed (SIGKILL) at each step of the swap: right after journaling the trial,
/// the new image while it starts (before it took over), the trial's guardian then (the image
/// goes on unguarded and commits), and the new
/// one right after it committed. Started again (as systemd would, when its main process died),
/// each converges on one serving supervisor with the version's relay, the old supervisor when
/// the trial did not finish (skipped), the new one when it did.
#[test]
fn kill_nine_at_every_step_of_the_supervisor_swap_converges() {
    let work = tempfile::tempdir().unwrap();
    let supervisor = sibling_bin("wireleap-relay-supervisor");
    // A new supervisor that takes two seconds to start: the window to kill the old one in.
    let slow = work.path().join("slow-supervisor");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nsleep 2\nexec \"{}\" \"$@\"\n",
            supervisor.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cases: [(&str, &str, &Path, &str); 4] = [
        (
            "trial, before it starts",
            "supervisor-trial",
            &supervisor,
            "supervisor-rolled-back",
        ),
        (
            "trial, while it starts",
            "",
            &slow,
            "supervisor-rolled-back",
        ),
        ("trial, its guardian", "", &slow, "supervisor-committed"),
        (
            "committed",
            "supervisor-committed",
            &supervisor,
            "supervisor-committed",
        ),
    ];
    for (case, failpoint, new, want) in cases {
        let args = ["--health-window", "1"];
        let (mut s, root) = supervised_with_releases_full(
            &args,
            &[("WIRELEAP_SUPERVISOR_FAILPOINT", failpoint)],
            &|home: &Home| {
                let installed = home.file("wireleap-relay-supervisor");
                std::fs::copy(&supervisor, &installed).unwrap();
                std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o755))
                    .unwrap();
            },
        );
        let load = Load::start(&s.rt, &s.sk, &s.hop, s.target, 0);
        publish(root.path(), "9.0.0", new);
        // The relay's own `upgrade` stages it and asks; its answer does not matter here (the
        // supervisor it asked may be the one killed).
        let binary = s.home.file("wireleap-relay");
        let home = s.home.path().to_path_buf();
        let asker = std::thread::spawn(move || {
            std::process::Command::new(binary)
                .args(["upgrade", "--yes", "9.0.0"])
                .env("WIRELEAP_RELAY_HOME", home)
                .stdin(std::process::Stdio::null())
                .output()
        });
        match case {
            "trial, while it starts" => {
                eventually(WAIT, "the trial to start", || {
                    s.log().contains("takes over on trial")
                });
                s.signal(nix::sys::signal::Signal::SIGKILL);
                let _ = s.wait_exit(Duration::from_secs(10));
                // The guardian starts the old supervisor again in its own process.
                let guardian = guardian_pid(&s.log());
                let served = (0..600).any(|_| {
                    std::thread::sleep(Duration::from_millis(100));
                    supervisor_pid(&s.home) == guardian && serving(&s.home)
                });
                assert!(served, "the guardian does not serve\n{}", s.log());
            }
            "trial, its guardian" => {
                eventually(WAIT, "the trial to start", || {
                    s.log().contains("takes over on trial")
                });
                let guardian = guardian_pid(&s.log());
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(guardian as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                // The new image goes on unguarded: it takes over and commits, same process.
                eventually(WAIT, "the unguarded supervisor to commit", || {
                    s.home
                        .journal_steps("9.0.0")
                        .contains(&"supervisor-committed".to_owned())
                });
                assert!(s.supervisor.try_wait().unwrap().is_none(), "{}", s.log());
            }
            "trial, before it starts" => {
                let _ = s.wait_exit(WAIT);
            }
            _ => {
                eventually(WAIT, "the new supervisor to commit", || {
                    s.home
                        .journal_steps("9.0.0")
                        .contains(&"supervisor-committed".to_owned())
                });
                // It killed itself at its failpoint; the old one had exited.
                let _ = s.wait_exit(Duration::from_secs(10));
                let new = supervisor_pid(&s.home);
                eventually(
                    Duration::from_secs(10),
                    "the new supervisor to be gone",
                    || {
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(new as i32), None)
                            .is_err()
                    },
                );
            }
        }
        // Started again as systemd does (Restart=on-failure, RestartSec=1): a start that finds
        // the home still held (by a new supervisor giving up) fails and is tried again.
        let _ = asker.join();
        let mut tries = 0;
        loop {
            s.restart_supervisor(&args);
            let up = (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(100));
                serving(&s.home) || s.supervisor.try_wait().unwrap().is_some()
            });
            if up && serving(&s.home) {
                break;
            }
            tries += 1;
            assert!(tries < 10, "{case}: never served again\n{}", s.log());
            std::thread::sleep(Duration::from_secs(1));
        }
        let journal = s.home.journal_steps("9.0.0");
        let last_swap = journal
            .iter()
            .rev()
            .find(|st| st.starts_with("supervisor-") && st.as_str() != "supervisor-trial");
        assert_eq!(
            last_swap.map(String::as_str),
            Some(want),
            "{case}: {journal:?}\n{}",
            s.log()
        );
        let st = call(s.home.path(), &Request::Status, Duration::from_secs(5)).unwrap();
        assert_eq!(st.version.as_deref(), Some("9.0.0"), "{case}");
        let counts = load.finish(&s.rt);
        let refused = counts.refused().len();
        println!(
            "{case:<24} converged: {want}; {} opens ok, {} failed, {refused} refused",
            counts.opened,
            counts.failed.len()
        );
        assert_eq!(refused, 0, "{case}: {:?}", counts.failed);
        assert!(
            s.rt.block_on(crate::support::load::short_stream(&s.sk, &s.hop, s.target))
                .is_ok(),
            "{case}: no stream gets through"
        );
    }
}

/// A stop (`systemctl stop`: SIGTERM to the main process, the supervisor's pid) during a
/// supervisor's trial is carried out by the new image: every relay stops, the supervisor exits
/// 0, nothing is left running, and the version is not skipped. The release's relay takes three
/// seconds to start, so the new image is still on trial when the stop arrives.
#[test]
fn a_stop_during_the_trial_is_carried_out_and_skips_nothing() {
    let (mut s, root) = supervised(&[
        "--health-window",
        "1",
        "--ready-timeout",
        "10",
        "--probe-count",
        "0",
    ]);
    let work = tempfile::tempdir().unwrap();
    let slow_relay = work.path().join("wireleap-relay");
    std::fs::write(
        &slow_relay,
        format!(
            "#!/bin/sh\n[ \"$1 $2\" = \"start --fg\" ] && sleep 3\nexec \"{}\" \"$@\"\n",
            relay_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow_relay, std::fs::Permissions::from_mode(0o755)).unwrap();
    publish_with(
        root.path(),
        "9.0.0",
        &slow_relay,
        &sibling_bin("wireleap-relay-supervisor"),
    );
    let up = cli(&s.home, &["upgrade", "--yes", "9.0.0"], "");
    assert_eq!(up.code, 0, "{up}\n{}", s.log());
    eventually(WAIT, "the trial", || {
        s.log().contains("takes over on trial")
    });
    let guardian = guardian_pid(&s.log());
    // Its generation starting (the relay sleeps), not taken over yet.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !s.log().contains("took over from the previous supervisor"),
        "the trial ended too soon\n{}",
        s.log()
    );
    s.signal(nix::sys::signal::Signal::SIGTERM);
    let status = s.wait_exit(WAIT);
    assert!(status.success(), "{status:?}\n{}", s.log());
    eventually(WAIT, "the guardian to exit", || !running(guardian));
    assert!(
        s.home
            .journal_steps("9.0.0")
            .contains(&"supervisor-rolled-back".to_owned()),
        "{}",
        s.log()
    );
    assert!(
        !s.home.read(".skip-upgrade-version").contains("9.0.0"),
        "a stop is not the version's fault"
    );
    eventually(Duration::from_secs(20), "every relay to stop", || {
        relay_pids_in(s.home.path()).is_empty()
    });
}

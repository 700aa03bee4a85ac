//! The README demo end to end: `wireleap-demo` with the workspace's binaries (built next to it
//! by `cargo build --workspace --bins`) runs three supervised relays through a signed upgrade and
//! a rollback, prints its summary, exits 0 and leaves nothing behind: no process, no temp dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The demo takes well under a minute with a release build and about 45 s with a debug build on
/// a quiet machine; this bounds it on a busy one.
const LIMIT: Duration = Duration::from_secs(180);

/// Processes whose executable or working directory lies under `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        for link in ["exe", "cwd"] {
            if let Ok(target) = std::fs::read_link(entry.path().join(link))
                && target.starts_with(dir)
            {
                found.push(format!("pid {name}: {link} {}", target.display()));
            }
        }
    }
    found
}

#[test]
fn demo_upgrades_under_traffic_rolls_back_the_broken_release_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wireleap-demo"))
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            // Ctrl-C: the demo stops what it started; then make sure.
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = kill(pid, Signal::SIGINT);
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the demo did not finish within {LIMIT:?}; its output:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let out = reader.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    println!("{out}{err}\n(the demo took {took:.1?})");
    if !status.success() {
        let kept = tmp.keep();
        panic!(
            "the demo failed ({status}); its files are in {}:\n{out}{err}",
            kept.display()
        );
    }

    // The summary: each relay went from this version to the next minor, and rolled back and
    // skipped the one after.
    let running = semver::Version::parse(env!("CARGO_PKG_VERSION")).unwrap();
    let good = semver::Version::new(running.major, running.minor + 1, 0);
    let broken = semver::Version::new(running.major, running.minor + 2, 0);
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    for role in ["fronting", "entropic", "backing"] {
        let row = out
            .lines()
            .map(words)
            .find(|w| w.len() == 6 && w[0] == role)
            .unwrap_or_else(|| panic!("no summary row for {role}:\n{out}"));
        assert_eq!(
            row[1..],
            [
                running.to_string(),
                good.to_string(),
                good.to_string(),
                broken.to_string(),
                broken.to_string()
            ],
            "{role}: before, after, committed, rolled back, skipped"
        );
    }
    let through = out
        .lines()
        .find(|l| l.starts_with(&format!("through the {good} upgrade")))
        .map(words)
        .unwrap_or_else(|| panic!("no traffic row for the upgrade:\n{out}"));
    let (ok, failed, cut) = (&through[4], &through[5], &through[6]);
    assert!(ok.parse::<u64>().unwrap() > 100, "too little traffic: {ok}");
    assert_eq!(failed, "0", "streams failed through the upgrade");
    assert!(cut.starts_with("0/"), "long-lived streams cut: {cut}");
    assert!(out.contains("nothing left running"), "{out}");
    assert!(out.contains("demo passed"), "{out}");

    // Nothing left behind.
    let left = processes_under(tmp.path());
    assert!(left.is_empty(), "processes left running: {left:?}");
    let files: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(files.is_empty(), "the demo left {files:?} in its temp dir");
}

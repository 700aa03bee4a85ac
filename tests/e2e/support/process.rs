//! A temp home directory with the real `wireleap-relay` binary, and cleanup of any daemon left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The relay binary cargo built for this test run.
pub fn relay_bin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_wireleap-relay"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Another binary of this workspace, built next to the relay.
pub fn sibling_bin(name: &str) -> PathBuf {
    let path = relay_bin().with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A home directory for one test. Dropping it kills any daemon whose pid it recorded.
pub struct Home {
    dir: tempfile::TempDir,
    pids: std::cell::RefCell<Vec<i32>>,
}

impl Home {
    /// The steps the supervisor journaled for `version`, in order.
    pub fn journal_steps(&self, version: &str) -> Vec<String> {
        self.read("upgrade-journal.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["version"] == version)
            .filter_map(|e| e["step"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Home {
    /// A home that trusts the test-only project key (`trusted-keys/test-only-project.pub`),
    /// which signs the tests' releases. No build trusts it: the tests install it here, as an
    /// operator of a private network installs its key.
    pub fn new() -> Self {
        let home = Self::untrusting();
        super::releases::trust_test_key(home.path());
        home
    }

    /// A home that trusts no release key: what a build from source has by itself.
    pub fn untrusting() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("wlr-e2e")
                .tempdir()
                .unwrap(),
            pids: Default::default(),
        }
    }

    /// A home with `init` done and `config` written as `config.json`.
    pub fn with_config(config: &str) -> Self {
        let home = Self::new();
        home.ok(&["init"]);
        home.write("config.json", config);
        home
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.file(name), text).unwrap();
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(name)).unwrap_or_default()
    }

    /// The command for `wireleap-relay ARGS` in this home, with a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(relay_bin());
        c.args(args)
            .env("WIRELEAP_RELAY_HOME", self.path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .env("RELAY_LOG", "info");
        c
    }

    /// Runs `wireleap-relay ARGS` to completion (bounded: every command here returns in seconds).
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().unwrap();
        let run = Run::from(out);
        if let Some(pid) = self.pid() {
            self.pids.borrow_mut().push(pid);
        }
        run
    }

    /// Runs and asserts exit 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, 0, "`{}` failed:\n{run}", args.join(" "));
        run
    }

    /// The pid in the pid file, if any.
    pub fn pid(&self) -> Option<i32> {
        self.read("wireleap-relay.pid").trim().parse().ok()
    }

    /// The address the daemon logged it listens on.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        let log = self.read("wireleap-relay.log");
        let line = log
            .lines()
            .rev()
            .find_map(|l| l.split("Listening for H/2 requests on https://").nth(1))
            .unwrap_or_else(|| panic!("no listen address in the log:\n{log}"));
        line.split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // The supervisor that `start` ran goes first, so that it restarts no relay killed here.
        let supervisor = self
            .read("wireleap-relay-supervisor.pid")
            .trim()
            .parse()
            .ok();
        for pid in supervisor
            .into_iter()
            .chain(self.pids.borrow().iter().copied())
            .chain(self.pid())
        {
            if is_alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !matches!(
        stat.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next()),
        Some("Z" | "X") | None
    )
}

/// The result of one command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Polls `check` every 20 ms until it returns true or `within` passes; panics with `what`.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The credentials of `pid` that say what it may do: its `Uid`, `Gid`, `Groups` and capability
/// sets, as `/proc/<pid>/status` gives them (`name: value`, values trimmed).
pub fn credentials(pid: u32) -> Vec<(String, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| ["Uid", "Gid", "Groups"].contains(k) || k.starts_with("Cap"))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// Asserts that `pid` runs as `uid`/`gid` (real, effective, saved, file system), without
/// supplementary groups and without any capability it could use or pass on.
pub fn assert_unprivileged(pid: u32, uid: u32, gid: u32) {
    let creds = credentials(pid);
    let get = |key: &str| {
        creds
            .iter()
            .find(|(k, _)| k == key)
            .map_or("(none)", |(_, v)| v.as_str())
    };
    let zero = "0000000000000000";
    assert_eq!(get("Uid"), format!("{uid} {uid} {uid} {uid}"), "{creds:?}");
    assert_eq!(get("Gid"), format!("{gid} {gid} {gid} {gid}"), "{creds:?}");
    assert_eq!(get("Groups"), "", "{creds:?}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(get(set), zero, "pid {pid} {set}: {creds:?}");
    }
}

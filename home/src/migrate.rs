//! Running a relay binary's own migrations of the home directory (`<binary> migrate FROM`, or
//! `migrate --down TO`): only the binary knows its migrations. The supervisor runs them around a
//! change; the relay's offline `rollback` runs them too. Bounded in time; on a timeout the whole
//! process group goes, so no child of a hung migration outlives it.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::files::HOME_ENV;

/// How long one `migrate` run may take.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of a bounded child's output is kept.
pub const MAX_OUTPUT: u64 = 64 * 1024;

/// Which way a `migrate` run goes, and on which config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `migrate FROM`: the binary's migrations above FROM; the config ones on a copy of
    /// `config.json` (`config.json.next`).
    Up,
    /// `migrate --down TO`: undone down to TO, on `config.json.next` if it exists (a failed
    /// upgrade), else on `config.json`.
    Down,
    /// `migrate --down --copy-config TO`: `config.json` is copied to `config.json.next` first
    /// and the copy is migrated down (a rollback, whose generation starts on the copy). The
    /// relay's user writes the copy, so the supervisor needs no right to give it a file.
    DownOnCopy,
}

impl Direction {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Up => &[],
            Self::Down => &["--down"],
            Self::DownOnCopy => &["--down", "--copy-config"],
        }
    }
}

/// Runs `<binary> migrate [--down] <version>` in `home`, at most `timeout`.
///
/// # Errors
/// What the command printed on stderr when it fails or exits non-zero; that it timed out.
pub fn run(
    home: &Path,
    binary: &Path,
    version: &str,
    direction: Direction,
    timeout: Duration,
) -> Result<(), String> {
    run_with(
        Command::new(binary),
        home,
        version,
        direction,
        timeout,
        &mut |_| {},
    )
}

/// [`run`] with a command prepared by the caller (the supervisor runs a verified copy).
///
/// # Errors
/// As [`run`].
pub fn run_with(
    mut cmd: Command,
    home: &Path,
    version: &str,
    direction: Direction,
    timeout: Duration,
    on_start: &mut dyn FnMut(u32),
) -> Result<(), String> {
    cmd.arg("migrate")
        .args(direction.args())
        .arg(version)
        .current_dir(home)
        .env(HOME_ENV, home);
    let out = bounded_with(cmd, timeout, on_start).map_err(|e| format!("migrate {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "migrate exited ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// What a bounded child left.
#[derive(Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output (at most [`MAX_OUTPUT`]).
    pub stdout: Vec<u8>,
    /// Its standard error (at most [`MAX_OUTPUT`]).
    pub stderr: Vec<u8>,
}

/// Runs `cmd` in a process group of its own, at most `timeout`: on the deadline the whole group
/// is killed, so no child of a hung command outlives it. Its output is read beside the wait, so
/// neither a full pipe nor a grandchild holding a pipe open holds the caller.
///
/// # Errors
/// `could not be started: …` or `did not finish in …`.
pub fn bounded(cmd: Command, timeout: Duration) -> Result<Output, String> {
    bounded_with(cmd, timeout, &mut |_| {})
}

/// [`bounded`], telling `on_start` the child's pid (its process group) once it runs.
///
/// # Errors
/// As [`bounded`].
pub fn bounded_with(
    mut cmd: Command,
    timeout: Duration,
    on_start: &mut dyn FnMut(u32),
) -> Result<Output, String> {
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not be started: {e}"))?;
    on_start(child.id());
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(pipe) = pipe {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut out);
                let _ = tx.send(out);
            });
        }
        rx
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let kill_group = || {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                // Not reaped yet: the group is still the child's.
                kill_group();
                let _ = child.wait();
                return Err(format!("did not finish in {timeout:?}"));
            }
        }
    };
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match rx.recv_timeout(left) {
            Ok(out) => Ok(out),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Ok(Vec::new()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Something it left in its group holds the pipe open: it goes.
                kill_group();
                Err(format!(
                    "did not finish in {timeout:?} (its children kept running)"
                ))
            }
        }
    };
    let stdout = collect(stdout)?;
    let stderr = collect(stderr)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        let path = dir.join("relay");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_hung_migration_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let relay = script(
            dir.path(),
            &format!("sleep 300 &\necho $! > {}\nwait", marker.display()),
        );
        let err = run(
            dir.path(),
            &relay,
            "0.7.0",
            Direction::Up,
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        let child: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_err()
        });
        assert!(gone, "the migration's child {child} outlived it");
    }

    #[test]
    fn a_failed_migration_says_what_it_printed() {
        let dir = tempfile::tempdir().unwrap();
        let relay = script(dir.path(), "echo 'migration 7: no' >&2\nexit 3");
        let err = run(
            dir.path(),
            &relay,
            "0.7.0",
            Direction::Down,
            MIGRATE_TIMEOUT,
        )
        .unwrap_err();
        assert!(err.contains("migration 7: no"), "{err}");
        let ok = script(dir.path(), "exit 0");
        run(dir.path(), &ok, "0.7.0", Direction::Up, MIGRATE_TIMEOUT).unwrap();
    }
}

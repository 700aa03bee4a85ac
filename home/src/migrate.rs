//! Running a relay binary's own migrations of the home directory (`<binary> migrate FROM`, or
//! `migrate --down TO`): only the binary knows its migrations. The supervisor runs them around a
//! change; the relay's offline `rollback` runs them too. Bounded in time; on a timeout the whole
//! process group goes, so no child of a hung migration outlives it.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::files::HOME_ENV;

/// How long one `migrate` run may take.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `<binary> migrate [--down] <version>` in `home`, at most `timeout`.
///
/// # Errors
/// What the command printed on stderr when it fails or exits non-zero; that it timed out.
pub fn run(
    home: &Path,
    binary: &Path,
    version: &str,
    down: bool,
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = Command::new(binary);
    cmd.arg("migrate");
    if down {
        cmd.arg("--down");
    }
    cmd.arg(version)
        .current_dir(home)
        .env(HOME_ENV, home)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not run {} migrate: {e}", binary.display()))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.wait();
                return Err(format!("migrate did not finish in {timeout:?}"));
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(pipe) = child.stderr.take() {
        let _ = pipe.take(4096).read_to_string(&mut err);
    }
    Err(format!("migrate exited ({status}): {}", err.trim()))
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
            false,
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
        let err = run(dir.path(), &relay, "0.7.0", true, MIGRATE_TIMEOUT).unwrap_err();
        assert!(err.contains("migration 7: no"), "{err}");
        let ok = script(dir.path(), "exit 0");
        run(dir.path(), &ok, "0.7.0", false, MIGRATE_TIMEOUT).unwrap();
    }
}

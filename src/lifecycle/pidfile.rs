//! `wireleap-relay.pid`: the daemon's pid as a JSON integer with no newline (spec §1.3), and
//! whether that process is alive.

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// What the pid file says.
#[derive(Debug)]
pub enum State {
    /// No pid file.
    Absent,
    /// The pid file names this process, and it is alive.
    Running(i32),
    /// The pid file names a process that is gone (crashed, or killed).
    Stale(i32),
    /// The pid file exists but could not be read or parsed.
    Unreadable(io::Error),
}

/// Reads the pid file and checks the process.
pub fn state(path: &Path) -> State {
    match read(path) {
        Ok(None) => State::Absent,
        Ok(Some(pid)) if is_alive(pid) => State::Running(pid),
        Ok(Some(pid)) => State::Stale(pid),
        Err(e) => State::Unreadable(e),
    }
}

/// Reads the pid; `Ok(None)` when the file does not exist.
///
/// # Errors
/// An I/O error, or `InvalidData` when the content is not a positive integer.
pub fn read(path: &Path) -> io::Result<Option<i32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Some(pid)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} does not hold a pid: {:?}", path.display(), text.trim()),
        )),
    }
}

/// Writes our own pid.
///
/// # Errors
/// An I/O error.
pub fn write_own(path: &Path) -> io::Result<()> {
    std::fs::write(path, std::process::id().to_string())
}

/// Removes the pid file if it still names `pid` (a newer daemon may have replaced it).
pub fn remove_if_own(path: &Path, pid: i32) {
    if matches!(read(path), Ok(Some(p)) if p == pid) {
        let _ = std::fs::remove_file(path);
    }
}

/// Liveness as the reference checks it (signal 0 succeeds or fails with EPERM), except that a
/// zombie counts as gone: in containers an orphaned daemon may never be reaped.
pub fn is_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X")
}

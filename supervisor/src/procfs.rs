//! What the supervisor reads of other processes in `/proc`: their state, parent, process
//! group, memory, command line and working directory.
//!
//! The systemd unit mounts `/proc` with `hidepid=invisible` (`ProtectProc=invisible`): a
//! process sees only those it may inspect, and the supervisor, which is not root and holds no
//! `CAP_SYS_PTRACE`, may not inspect the relay's, which run as another user. So a read that
//! finds nothing is tried once more with this thread's file-system credentials set to the
//! relay's user and group (`setfsuid`/`setfsgid`, which `CAP_SETUID`/`CAP_SETGID` allow): the
//! kernel then lets it see exactly what that user sees, its own processes. The credentials are
//! this thread's alone and are restored before the read returns.

use std::path::PathBuf;

/// `/proc/<pid>/stat`'s fields the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
    /// The process group.
    pub pgrp: u32,
}

/// Reads `pid`'s `/proc/<pid>/<file>` as this process, then as the relay's user.
fn read(pid: u32, file: &str) -> Option<Vec<u8>> {
    let path = format!("/proc/{pid}/{file}");
    as_self_then_relay_user(|| std::fs::read(&path).ok())
}

/// `pid`'s state, parent and process group (the command may hold spaces and parentheses, so
/// the fields follow the last `)`).
#[must_use]
pub fn stat(pid: u32) -> Option<Stat> {
    let stat = String::from_utf8(read(pid, "stat")?).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgrp })
}

/// Whether `pid` still runs (and is not a zombie).
#[must_use]
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z')
}

/// The resident memory of `pid`, in bytes (`VmRSS` in `/proc/<pid>/status`).
#[must_use]
pub fn resident(pid: u32) -> Option<u64> {
    let status = String::from_utf8(read(pid, "status")?).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

/// `pid`'s arguments (empty if it is gone).
#[must_use]
pub fn cmdline(pid: u32) -> Vec<Vec<u8>> {
    read(pid, "cmdline")
        .unwrap_or_default()
        .split(|&b| b == 0)
        .map(<[u8]>::to_vec)
        .collect()
}

/// `pid`'s working directory.
#[must_use]
pub fn cwd(pid: u32) -> Option<PathBuf> {
    let path = format!("/proc/{pid}/cwd");
    as_self_then_relay_user(|| std::fs::read_link(&path).ok())
}

/// Every pid this process can see, and those the relay's user can.
#[must_use]
pub fn pids() -> Vec<u32> {
    let list = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .collect::<Vec<u32>>()
    };
    let mut pids = list();
    pids.extend(as_relay_user(list).unwrap_or_default());
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// `look` as this process, and when it finds nothing, once more as the relay's user.
fn as_self_then_relay_user<T>(look: impl Fn() -> Option<T>) -> Option<T> {
    look().or_else(|| as_relay_user(&look).flatten())
}

/// Runs `f` with this thread's file-system uid and gid set to the relay's (privilege
/// separation only; `None` otherwise, or when they could not be set).
fn as_relay_user<T>(f: impl FnOnce() -> T) -> Option<T> {
    use nix::unistd::{Gid, Uid, setfsgid, setfsuid};
    let user = crate::privsep::user()?;
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    // Each call returns the previous value whether or not it changed it; the second call says
    // whether the first did.
    let old_gid = setfsgid(gid);
    let old_uid = setfsuid(uid);
    let changed = setfsgid(gid) == gid && setfsuid(uid) == uid;
    let out = changed.then(f);
    setfsuid(old_uid);
    setfsgid(old_gid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_read() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert_eq!(
            s.pgrp,
            rustix::process::getpgrp().as_raw_nonzero().get() as u32
        );
        assert!(alive(me));
        assert!(resident(me).unwrap() > 0);
        assert_eq!(cwd(me).unwrap(), std::env::current_dir().unwrap());
        assert!(!cmdline(me)[0].is_empty());
        assert!(pids().contains(&me));
        assert!(stat(u32::MAX).is_none());
    }
}

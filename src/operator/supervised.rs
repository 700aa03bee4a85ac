//! The control commands for a relay that runs under `wireleap-relay-supervisor` (DESIGN.md
//! "Processes"): `start` runs the supervisor in the background when its binary sits beside the
//! relay's executable, and `stop`, `reload` and `status` then act on the supervisor, which owns
//! the relay processes. Who calls it: [`super::control`], which picks this path when the
//! supervisor's pid file names a live process (or, for `start`, when the binary is there).
//!
//! Messages keep the reference's wording where scripts may read them ("successfully spawned",
//! "stopped wireleap-relay daemon (was pid N)", "wireleap-relay is running, pid N", with the
//! relay's own pid); what is new is added after them. This module never starts a relay itself
//! and never touches the listening socket.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use wireleap_home::control::{self as ctl, Reply, Request, State as Doing};

use super::control::{Error, io_err, open_log, read_from, signal};
use crate::home::{HOME_ENV, files};
use crate::lifecycle::pidfile::{self, State};
use wireleap_home::skip::SkipList;

/// The supervisor's binary name; `start` looks for it beside the relay's executable.
pub use wireleap_home::files::SUPERVISOR_BIN;
/// The supervisor's pid file in the home directory (written by the supervisor).
pub use wireleap_home::files::SUPERVISOR_PID;
/// How long `start` waits for the supervisor to report its relay serving. The supervisor's own
/// readiness timeout (30 s) and its crash budget fit in it.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits for the supervisor to stop its relays and exit before SIGKILL: the
/// supervisor gives a relay 10 s before it kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a `status` request to the supervisor may take.
const STATUS_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

/// The supervisor binary beside `exe` (symlinks resolved), if there is one.
pub fn supervisor_beside(exe: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(exe).ok()?;
    let candidate = real.parent()?.join(SUPERVISOR_BIN);
    candidate.is_file().then_some(candidate)
}

/// What the supervisor's pid file says.
pub fn supervisor_state(home: &Path) -> State {
    pidfile::state(&home.join(SUPERVISOR_PID))
}

/// Asks the running supervisor for its status.
///
/// # Errors
/// No supervisor answered in time, or it answered `"ok": false` (the reply's error).
pub fn status_reply(home: &Path) -> std::io::Result<Reply> {
    let reply = ctl::call(home, &Request::Status, STATUS_WAIT)?;
    if reply.ok {
        Ok(reply)
    } else {
        Err(std::io::Error::other(reply.error.unwrap_or_else(|| {
            "the supervisor refused the status request".to_owned()
        })))
    }
}

/// `start`: runs `<exe> detach-supervisor <supervisor> <exe>` (which leaves this session and
/// becomes the supervisor) with its output appended to the log, and waits until the supervisor
/// says its relay serves. Returns the relay's pid.
///
/// # Errors
/// [`Error::AlreadyRunning`]; [`Error::DiedAtStart`] with what this attempt logged;
/// [`Error::NotReady`] (the supervisor is stopped); [`Error::Io`].
pub fn start(home: &Path, exe: &Path, supervisor: &Path) -> Result<i32, Error> {
    if let State::Running(spid) = supervisor_state(home) {
        let relay = status_reply(home)
            .ok()
            .and_then(|r| relay_pid(&r))
            .unwrap_or(spid);
        return Err(Error::AlreadyRunning(relay));
    }
    if let State::Running(pid) = pidfile::state(&home.join(files::PID)) {
        return Err(Error::AlreadyRunning(pid));
    }
    let (log, log_path, offset) = open_log(home)?;
    let mut child = Command::new(exe)
        .arg(DETACH_COMMAND)
        .arg(supervisor)
        .arg(exe)
        .current_dir(home)
        .env(HOME_ENV, home)
        // Not ours to pass on: a background supervisor binds its own socket and has no systemd.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(io_err("could not duplicate the log handle"))?,
        )
        .stderr(log)
        .spawn()
        .map_err(io_err(format!("could not run {}", exe.display())))?;
    let spid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // The reference's first line names the relay's pid (the one in `wireleap-relay.pid`), so it
    // waits until the supervisor has started its relay; the supervisor is named on the next.
    let mut announced = false;
    let mut announce = |pid: i32| {
        if !std::mem::replace(&mut announced, true) {
            crate::out!(
                "starting wireleap-relay with pid {pid}, writing to {}...",
                log_path.display()
            );
        }
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(Error::DiedAtStart {
                path: log_path.clone(),
                log: read_from(&log_path, offset),
            });
        }
        if let Ok(reply) = status_reply(home) {
            if let Some(pid) = relay_pid(&reply) {
                announce(pid);
            }
            if reply.state == Some(Doing::Serving) {
                let pid = relay_pid(&reply).unwrap_or(0);
                announce(pid);
                crate::out!(
                    "successfully spawned wireleap-relay daemon (pid {pid}) under {SUPERVISOR_BIN} (pid {spid})"
                );
                return Ok(pid);
            }
        }
        if Instant::now() >= deadline {
            let _ = terminate(spid, None);
            let _ = child.wait();
            return Err(Error::NotReady(
                START_TIMEOUT,
                log_path.display().to_string(),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The hidden command `start` runs: it leaves the caller's session and becomes the supervisor.
pub const DETACH_COMMAND: &str = "detach-supervisor";

/// `detach-supervisor SUPERVISOR RELAY`: a new session (no controlling terminal, so a closed
/// terminal's SIGHUP, which the supervisor takes as "hand over", never reaches it), then `exec`
/// of the supervisor for `relay`. Only returns on failure.
///
/// `setsid` succeeds here because `start` spawns this process into its own process group, which
/// it does not lead; doing it in a process of its own keeps the crate free of `pre_exec`.
pub fn detach_and_exec(supervisor: &Path, relay: &Path) -> std::io::Error {
    if let Err(e) = nix::unistd::setsid() {
        return std::io::Error::other(format!("could not start a new session: {e}"));
    }
    Command::new(supervisor).arg("--relay").arg(relay).exec()
}

/// `stop`: SIGTERM to the supervisor, which stops its relays and exits; SIGKILL to both after
/// [`STOP_TIMEOUT`]. Returns the relay's pid.
///
/// # Errors
/// [`Error::Signal`] or [`Error::Unkillable`].
pub fn stop(home: &Path, spid: i32) -> Result<i32, Error> {
    let relay = status_reply(home)
        .ok()
        .and_then(|r| relay_pid(&r))
        .or_else(|| pidfile::read(&home.join(files::PID)).ok().flatten());
    let killed = terminate(spid, relay)?;
    pidfile::remove_if_own(&home.join(SUPERVISOR_PID), spid);
    if let Some(pid) = relay {
        pidfile::remove_if_own(&home.join(files::PID), pid);
    }
    let relay_shown = relay.unwrap_or(spid);
    let how = if killed { ", killed after 15s" } else { "" };
    crate::out!("stopped wireleap-relay daemon (was pid {relay_shown}{how})");
    crate::out!("stopped {SUPERVISOR_BIN} (was pid {spid})");
    Ok(relay_shown)
}

/// SIGTERM to the supervisor; after [`STOP_TIMEOUT`], SIGKILL to it and to `relay`. Returns
/// whether SIGKILL was needed.
fn terminate(spid: i32, relay: Option<i32>) -> Result<bool, Error> {
    signal(spid, Signal::SIGTERM)?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !pidfile::is_alive(spid) {
            return Ok(false);
        }
        std::thread::sleep(POLL);
    }
    signal(spid, Signal::SIGKILL)?;
    if let Some(pid) = relay.filter(|p| pidfile::is_alive(*p)) {
        signal(pid, Signal::SIGKILL)?;
    }
    for _ in 0..20 {
        if !pidfile::is_alive(spid) && relay.is_none_or(|p| !pidfile::is_alive(p)) {
            return Ok(true);
        }
        std::thread::sleep(POLL);
    }
    Err(Error::Unkillable(spid))
}

/// `reload`: SIGUSR1 to the supervisor, which passes it to the serving relay.
///
/// # Errors
/// [`Error::Signal`].
pub fn reload(home: &Path, spid: i32) -> Result<i32, Error> {
    signal(spid, Signal::SIGUSR1)?;
    let relay = status_reply(home)
        .ok()
        .and_then(|r| relay_pid(&r))
        .or_else(|| pidfile::read(&home.join(files::PID)).ok().flatten())
        .unwrap_or(spid);
    crate::out!(
        "reloaded wireleap-relay daemon (pid {relay}) through {SUPERVISOR_BIN} (pid {spid})"
    );
    Ok(relay)
}

/// `status` of a supervised relay: the reference's first line, then version, state, supervisor,
/// channel, highest committed and previous version, skipped versions and the last upgrade step.
/// Returns 0 (running) or 2 (the supervisor did not answer).
pub fn status(home: &Path, spid: i32, json: bool) -> u8 {
    let reply = match status_reply(home) {
        Ok(r) => r,
        Err(e) => {
            if json {
                crate::out!(
                    "{}",
                    serde_json::json!({"running": null, "error": format!("{SUPERVISOR_BIN} (pid {spid}) did not answer on its control socket: {e}")})
                );
            } else {
                crate::out!("could not read wireleap-relay status");
                eprintln!(
                    "{SUPERVISOR_BIN} (pid {spid}) did not answer on its control socket: {e}"
                );
            }
            return 2;
        }
    };
    let now = SystemTime::now();
    // No generation serving (starting, or restarting after a crash): not running.
    let pid = relay_pid(&reply);
    let code = if pid.is_some() { 0 } else { 1 };
    if json {
        let mut supervisor = serde_json::to_value(&reply).unwrap_or_default();
        if let Some(map) = supervisor.as_object_mut() {
            map.insert("supervisor_pid".into(), spid.into());
        }
        crate::out!(
            "{}",
            super::report::json(home, pid.is_some(), pid, Some(supervisor), now)
        );
        return code;
    }
    crate::outp!("{}", describe(home, spid, &reply, now));
    code
}

/// The text of `status` for a supervisor's reply.
fn describe(home: &Path, spid: i32, reply: &Reply, now: SystemTime) -> String {
    use std::fmt::Write as _;
    let none = "none";
    let mut t = String::new();
    match relay_pid(reply) {
        Some(pid) => {
            let _ = writeln!(t, "wireleap-relay is running, pid {pid}");
        }
        None => {
            // Starting, or waiting to restart after a crash: nothing serves now.
            let _ = writeln!(
                t,
                "wireleap-relay is not running ({SUPERVISOR_BIN}, pid {spid}, is starting it; its log says why it stopped)"
            );
        }
    }
    let _ = writeln!(
        t,
        "  version:           {}",
        reply.version.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(
        t,
        "  state:             {}",
        reply.state.map_or("unknown", Doing::as_str)
    );
    let _ = writeln!(t, "  supervisor:        {SUPERVISOR_BIN}, pid {spid}");
    let channel = match crate::config::load(&home.join(files::CONFIG)) {
        Ok(loaded) => match loaded.config.upgrade_channel() {
            Some((contract, channel)) => format!("{channel} (from contract {contract})"),
            None => "none (no contract has an upgrade_channel)".to_owned(),
        },
        Err(e) => format!("unknown ({e})"),
    };
    let _ = writeln!(t, "  channel:           {channel}");
    let _ = writeln!(
        t,
        "  highest committed: {}",
        reply.highest_committed.as_deref().unwrap_or(none)
    );
    let prev = match &reply.prev_version {
        Some(v) => format!("{v} (`wireleap-relay rollback` goes back to it)"),
        None => none.to_owned(),
    };
    let _ = writeln!(t, "  previous version:  {prev}");
    let skipped: Vec<String> = match &reply.skipped {
        Some(list) => list.clone(),
        // An older supervisor: read the file it writes.
        None => SkipList::load(home)
            .map(|l| l.versions.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
    };
    let skipped = if skipped.is_empty() {
        none.to_owned()
    } else {
        skipped.join(", ")
    };
    let _ = writeln!(t, "  skipped versions:  {skipped}");
    let last = match &reply.last {
        Some(last) => {
            let mut s = format!("{} {}", last.version, last.step);
            if !last.detail.is_empty() {
                let _ = write!(s, ": {}", last.detail);
            }
            if last.time_ms > 0 {
                let _ = write!(s, " ({})", ago(last.time_ms, now));
            }
            s
        }
        None => none.to_owned(),
    };
    let _ = writeln!(t, "  last upgrade step: {last}");
    t.push_str(&super::report::lines(
        super::report::relay_state(home, relay_pid(reply)).as_ref(),
        now,
    ));
    if let Some(info) = wireleap_home::state::ReleaseInfo::load(home) {
        let (age, stale) = info.age(wireleap_home::time::ms(now));
        let fetched = if info.fresh_ms > 0 {
            format!("fetched {}", ago(info.fresh_ms, now))
        } else {
            format!("never fetched (trying for {age}s)")
        };
        let warning = if stale {
            format!(
                "; STALE: older than {}s, an outage or an attacker may be hiding new releases",
                info.stale_after_secs
            )
        } else {
            String::new()
        };
        let _ = writeln!(t, "  release info:      {fetched}{warning}");
        if let Some(rollout) = &info.rollout {
            let _ = writeln!(t, "  rollout:           {rollout}");
        }
    }
    t
}

/// `time_ms` (milliseconds since the epoch) as "12s ago", "5m ago", "3h ago", "2d ago".
fn ago(time_ms: u64, now: SystemTime) -> String {
    let secs = wireleap_home::time::ms(now).saturating_sub(time_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// The serving relay's pid in a status reply.
pub fn relay_pid(reply: &Reply) -> Option<i32> {
    reply
        .pid
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_from_a_full_reply() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join(files::CONFIG),
            r#"{"address":"127.0.0.1:0","contracts":{"https://c.example":{"address":"wireleap://127.0.0.1:1","role":"backing"}}}"#,
        )
        .unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let reply = serde_json::json!({
            "ok": true, "pid": 42, "state": "serving", "version": "9.0.0",
            "highest_committed": "9.0.0", "prev_version": "0.7.0", "skipped": ["9.1.0", "9.2.0"],
            "last": {"version": "9.1.0", "step": "rolled-back", "detail": "crashed",
                     "time_ms": 1_000_000_000u64 - 90_000},
        });
        let text = describe(home.path(), 7, &serde_json::from_value(reply).unwrap(), now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "wireleap-relay is running, pid 42");
        for want in [
            "  version:           9.0.0",
            "  state:             serving",
            "  supervisor:        wireleap-relay-supervisor, pid 7",
            "  channel:           default (from contract https://c.example)",
            "  highest committed: 9.0.0",
            "  previous version:  0.7.0 (`wireleap-relay rollback` goes back to it)",
            "  skipped versions:  9.1.0, 9.2.0",
            "  last upgrade step: 9.1.0 rolled-back: crashed (1m ago)",
        ] {
            assert!(lines.contains(&want), "{want:?} missing from\n{text}");
        }
    }

    #[test]
    fn status_text_from_a_sparse_reply_reads_the_skip_file() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(files::SKIP_VERSION), "\"1.2.3\"\n").unwrap();
        let reply = serde_json::json!({"ok": true, "pid": 5, "state": "starting"});
        let text = describe(
            home.path(),
            4,
            &serde_json::from_value(reply).unwrap(),
            SystemTime::now(),
        );
        assert!(text.contains("  state:             starting"), "{text}");
        assert!(text.contains("  version:           unknown"), "{text}");
        assert!(text.contains("  skipped versions:  1.2.3"), "{text}");
        assert!(text.contains("  last upgrade step: none"), "{text}");
        assert!(text.contains("  channel:           unknown ("), "{text}");
        // No generation (restarting after a crash): not running, whatever the supervisor.
        let reply = serde_json::json!({"ok": true, "state": "starting"});
        let text = describe(
            home.path(),
            4,
            &serde_json::from_value(reply).unwrap(),
            SystemTime::now(),
        );
        assert!(
            text.starts_with("wireleap-relay is not running (wireleap-relay-supervisor, pid 4,"),
            "{text}"
        );
    }

    #[test]
    fn ages() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(200_000);
        assert_eq!(ago(199_990_000, now), "10s ago");
        assert_eq!(ago(200_000_000 - 7_200_000, now), "2h ago");
        assert_eq!(ago(0, now), "2d ago");
        assert_eq!(ago(300_000_000, now), "0s ago");
    }
}

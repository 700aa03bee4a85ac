//! A test hook (fault injection for the crash-recovery tests): with
//! `WIRELEAP_SUPERVISOR_FAILPOINT=<step>[:<victim>]`, right after journaling `<step>` the
//! supervisor kills with SIGKILL itself (victim `supervisor`, the default), the generation that
//! served before the change (`old`) or the one the change starts (`new`).

use std::path::Path;
use std::sync::Mutex;

use wireleap_home::journal::Step;

/// The fault-injection variable.
pub use wireleap_home::files::FAILPOINT_ENV;

/// A generation the hook is to kill on the loop's next turn: `true` for the new one.
static KILL: Mutex<Option<bool>> = Mutex::new(None);

/// Journals a step, then passes its failpoint.
pub fn step(home: &Path, version: &str, name: Step, detail: &str) {
    crate::upgrade::journal(home, version, name, detail);
    pass(name.as_str());
}

/// Passes a failpoint that is not a journal step (a point inside one, e.g. between two renames).
pub fn point(name: &str) {
    pass(name);
}

fn pass(step: &str) {
    let Ok(spec) = std::env::var(FAILPOINT_ENV) else {
        return;
    };
    let (at, victim) = spec
        .split_once(':')
        .unwrap_or((spec.as_str(), "supervisor"));
    if at != step {
        return;
    }
    match victim {
        "supervisor" => {
            crate::run::log(&format!("failpoint {step}: killing myself"));
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        "old" | "new" => {
            if let Ok(mut kill) = KILL.lock() {
                *kill = Some(victim == "new");
            }
        }
        other => crate::run::warn(&format!("failpoint {step}: unknown victim {other:?}")),
    }
}

/// The generation a failpoint named, if any: `Some(true)` for the new one. It stays named
/// until [`clear`] (the loop clears it once that generation exists and was killed).
pub fn victim() -> Option<bool> {
    KILL.lock().ok().and_then(|k| *k)
}

/// The named generation was killed.
pub fn clear() {
    if let Ok(mut k) = KILL.lock() {
        *k = None;
    }
}

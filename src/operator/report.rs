//! What `status` shows of the serving relay itself: per contract enrollment, last heartbeat and
//! its error, sharetokens (the relay's income) and the upgrader's state, read from the file the
//! relay writes ([`RELAY_STATUS`]); and the `--json` object (schema in `docs/status.md`).

use std::path::Path;
use std::time::SystemTime;

use serde_json::{Value, json};
use wireleap_home::files::RELAY_STATUS;

/// The cap on the status file.
const MAX_STATUS: u64 = 1024 * 1024;

/// Milliseconds since the epoch.
pub(super) fn now_ms(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The serving relay's own state, when the file was written by `pid` (another process wrote it:
/// a generation that is gone, or a relay of another run).
#[must_use]
pub fn relay_state(home: &Path, pid: Option<i32>) -> Option<Value> {
    let bytes =
        wireleap_home::durable::read_regular(&home.join(RELAY_STATUS), MAX_STATUS, None).ok()?;
    let state: Value = serde_json::from_slice(&bytes).ok()?;
    let written_by = state["pid"].as_i64();
    match pid {
        Some(pid) if written_by != Some(i64::from(pid)) => None,
        _ => Some(state),
    }
}

/// How many of the relay's contracts it is enrolled in.
fn enrolled(state: &Value) -> (usize, usize) {
    let contracts = state["relay_status"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let yes = contracts
        .iter()
        .filter(|c| c["status"]["enrolled"].as_bool() == Some(true))
        .count();
    (yes, contracts.len())
}

/// The lines about the relay's own state, for people.
#[must_use]
pub fn lines(state: Option<&Value>, now: SystemTime) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let Some(state) = state else {
        let _ = writeln!(
            t,
            "  relay state:       not reported yet (the relay writes {RELAY_STATUS} once it serves)"
        );
        return t;
    };
    let now_s = i64::try_from(now_ms(now) / 1000).unwrap_or(i64::MAX);
    let (yes, all) = enrolled(state);
    let summary = if yes == all {
        format!("in all {all} of its contracts")
    } else {
        format!("NOT in {} of its {all} contracts", all - yes)
    };
    let _ = writeln!(t, "  enrolled:          {summary}");
    for c in state["relay_status"].as_array().into_iter().flatten() {
        let url = c["contract"].as_str().unwrap_or("?");
        let role = c["role"].as_str().unwrap_or("?");
        let beat = c["last_heartbeat"]
            .as_i64()
            .map(|t| format!("last heartbeat {}s ago", now_s.saturating_sub(t).max(0)));
        let error = c["last_error"].as_str();
        let line = if c["status"]["enrolled"].as_bool() == Some(true) {
            let mut s = format!("enrolled as {role}");
            if let Some(beat) = beat {
                s.push_str(&format!(", {beat}"));
            }
            if let Some(e) = error {
                s.push_str(&format!("; last heartbeat failed: {e}"));
            }
            s
        } else {
            format!(
                "NOT enrolled ({role}): {}",
                error.unwrap_or("no answer from its directory yet")
            )
        };
        let _ = writeln!(t, "  contract {url}: {line}");
    }
    let tokens = &state["sharetokens"];
    if tokens.is_object() {
        let n = |k: &str| tokens[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            t,
            "  sharetokens:       {} pending, {} submitted, {} archived, {} expired",
            n("pending"),
            n("submitted"),
            n("archived"),
            n("expired")
        );
    }
    let up = &state["upgrade"];
    if up.is_object() {
        let mut s = if up["auto_upgrade"].as_bool() == Some(false) {
            "automatic upgrades off".to_owned()
        } else {
            "automatic".to_owned()
        };
        if let Some(v) = up["in_progress"].as_str() {
            s.push_str(&format!("; upgrading to {v}"));
        } else if let Some(v) = up["held_back"].as_str() {
            s.push_str(&format!("; {v} held back by its rollout"));
        }
        if let Some(last) = up["last_outcome"].as_str() {
            s.push_str(&format!("; last: {last}"));
        }
        let _ = writeln!(t, "  upgrades:          {s}");
    }
    t
}

/// The `--json` object. `running`: whether a relay runs; `pid`: the serving relay's; the
/// supervisor's reply when one runs; the relay's own state; what it knows of the release server.
#[must_use]
pub fn json(
    home: &Path,
    running: bool,
    pid: Option<i32>,
    supervisor: Option<Value>,
    now: SystemTime,
) -> Value {
    let relay = if running {
        relay_state(home, pid)
    } else {
        None
    };
    let release = wireleap_home::state::ReleaseInfo::load(home).map(|info| {
        let (age, stale) = info.age(now_ms(now));
        json!({
            "fetched_ms": (info.fresh_ms > 0).then_some(info.fresh_ms),
            "age_secs": age,
            "stale": stale,
            "stale_after_secs": info.stale_after_secs,
            "rollout": info.rollout,
            "held_back": info.held_back,
        })
    });
    let (enrolled_in, contracts) = relay.as_ref().map_or((0, 0), enrolled);
    json!({
        "running": running,
        "pid": pid,
        "enrolled": relay.as_ref().map(|_| enrolled_in == contracts),
        "supervisor": supervisor,
        "relay": relay,
        "release_info": release,
    })
}

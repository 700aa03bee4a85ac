//! What `status` shows of the serving relay itself: per contract enrollment, last heartbeat and
//! its error, sharetokens (the relay's income) and the upgrader's state, read from the file the
//! relay writes ([`RELAY_STATUS`]); and the `--json` object (schema in `docs/status.md`).

use std::path::Path;
use std::time::SystemTime;

use serde_json::{Value, json};
use wireleap_home::files::RELAY_STATUS;

/// The cap on the status file.
const MAX_STATUS: u64 = 1024 * 1024;

/// A status file older than this is not the relay's current state: the relay rewrites it at
/// least once a minute while it serves.
const MAX_STATUS_AGE_MS: u64 = 120_000;

/// The pid that wrote the status file last, if it can be read.
#[must_use]
pub fn written_by(home: &Path) -> Option<u32> {
    let bytes =
        wireleap_home::durable::read_regular(&home.join(RELAY_STATUS), MAX_STATUS, None).ok()?;
    let state: Value = serde_json::from_slice(&bytes).ok()?;
    state["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// The serving relay's own state: only when the file was written by `pid`, the relay serving now
/// (not a generation that is gone, not a relay of another run), and recently (a relay that hangs
/// stops rewriting it).
#[must_use]
pub fn relay_state(home: &Path, pid: Option<i32>) -> Option<Value> {
    let pid = pid?;
    let bytes =
        wireleap_home::durable::read_regular(&home.join(RELAY_STATUS), MAX_STATUS, None).ok()?;
    let state: Value = serde_json::from_slice(&bytes).ok()?;
    let fresh = state["time_ms"]
        .as_u64()
        .is_some_and(|t| wireleap_home::time::now_ms().saturating_sub(t) <= MAX_STATUS_AGE_MS);
    (state["pid"].as_i64() == Some(i64::from(pid)) && fresh).then_some(state)
}

/// Text from a peer (a directory's error reply) made safe for a terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// How many of the relay's contracts it is enrolled in (0 of 0: the relay did not say).
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
            "  relay state:       not reported (the serving relay writes {RELAY_STATUS} every few seconds; none recent)"
        );
        return t;
    };
    let now_s = i64::try_from(wireleap_home::time::ms(now) / 1000).unwrap_or(i64::MAX);
    let (yes, all) = enrolled(state);
    let summary = if all == 0 {
        "unknown (the relay did not report its contracts)".to_owned()
    } else if yes == all {
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
        let error = c["last_error"].as_str().map(printable);
        let line = if c["status"]["enrolled"].as_bool() == Some(true) {
            let mut s = format!("enrolled as {role}");
            if let Some(beat) = beat {
                s.push_str(&format!(", {beat}"));
            }
            if let Some(e) = &error {
                s.push_str(&format!("; last heartbeat failed: {e}"));
            }
            s
        } else {
            format!(
                "NOT enrolled ({role}): {}",
                error
                    .as_deref()
                    .unwrap_or("no answer from its directory yet")
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
        let (age, stale) = info.age(wireleap_home::time::ms(now));
        json!({
            "fetched_ms": (info.fresh_ms > 0).then_some(info.fresh_ms),
            "age_secs": age,
            "stale": stale,
            "stale_after_secs": info.stale_after_secs,
            "rollout": info.rollout,
            "held_back": info.held_back,
        })
    });
    let enrolled = relay
        .as_ref()
        .map(enrolled)
        .filter(|&(_, all)| all > 0)
        .map(|(yes, all)| yes == all);
    json!({
        "running": running,
        "pid": pid,
        "enrolled": enrolled,
        "supervisor": supervisor,
        "relay": relay,
        "release_info": release,
    })
}

//! The names of the home directory's shared files, sockets and environment variables: every one
//! that more than one of the relay, the supervisor and the demo reads or writes. A name used by
//! one module only stays with that module.

// === environment ===

/// Overrides the home directory (default: the folder of the real executable).
pub const HOME_ENV: &str = "WIRELEAP_RELAY_HOME";
/// How many times the supervisor restarted the relay, passed to each generation (metrics).
pub const RESTARTS_ENV: &str = "WIRELEAP_SUPERVISOR_RESTARTS";
/// How many times in a row the relay crashed before the supervisor started this generation.
pub const CRASH_STREAK_ENV: &str = "WIRELEAP_SUPERVISOR_CRASH_STREAK";
/// How many hung relays the supervisor replaced before it started this generation.
pub const HUNG_REPLACED_ENV: &str = "WIRELEAP_SUPERVISOR_HUNG_REPLACED";
/// The new versions the supervisor rolled back for a failed health criterion, by criterion
/// (`liveness=0,memory=1,...`), for the relay's `/metrics`.
pub const HEALTH_ROLLBACKS_ENV: &str = "WIRELEAP_SUPERVISOR_HEALTH_ROLLBACKS";
/// Set by a supervisor for the release's supervisor it starts on trial: `<pipe fd>:<lock
/// fd>:<its own pid>` (where to say it took over; the home's lock it inherits; who must still
/// be its parent until then).
pub const TAKEOVER_ENV: &str = "WIRELEAP_SUPERVISOR_TAKEOVER";
/// Where the supervisor on trial installs itself once it took over (the old one's path).
pub const SUPERVISOR_INSTALLED_ENV: &str = "WIRELEAP_SUPERVISOR_INSTALLED";
/// The supervisor's fault-injection hook for the crash-recovery tests.
pub const FAILPOINT_ENV: &str = "WIRELEAP_SUPERVISOR_FAILPOINT";
/// The installed path of the binary a supervised generation runs: the supervisor runs a
/// verified copy of it, so the generation's own executable path says nothing about the home.
pub const RELAY_BINARY_ENV: &str = "WIRELEAP_RELAY_BINARY";

// === binaries and their signed statements ===

/// The running relay binary.
pub const CURRENT: &str = "wireleap-relay";
/// The staged relay binary.
pub const NEXT: &str = "wireleap-relay.next";
/// The previous relay binary, kept for `rollback`.
pub const PREV: &str = "wireleap-relay.prev";
/// The signed statement of [`CURRENT`], kept after a commit.
pub const CURRENT_STATEMENT: &str = "wireleap-relay.hash";
/// The staged release's supervisor, when the release carries one (verified by the statement of
/// [`NEXT`], [`NEXT_STATEMENT`]).
pub const SUPERVISOR_NEXT: &str = "wireleap-relay-supervisor.next";
/// The signed statement of [`NEXT`].
pub const NEXT_STATEMENT: &str = "wireleap-relay.next.hash";
/// The signed statement of [`PREV`].
pub const PREV_STATEMENT: &str = "wireleap-relay.prev.hash";
/// Where a relay puts the release roots it fetched when it may not write the trusted roots
/// itself (privilege separation: `trusted-keys/` is the supervisor's). The supervisor moves in
/// each that is a valid rotation of the root it trusts; nothing else is taken from here.
pub const ROOTS_STAGED: &str = "trusted-keys.staged";
/// The folder where the supervisor keeps the copies of the binaries it verified and runs (each
/// copy is opened, then its name removed: only the supervisor's descriptor reaches it).
pub const VERIFIED_DIR: &str = "wireleap-relay-supervisor.verified";
/// The signed statement of the staged release as the supervisor verified it, kept in
/// [`VERIFIED_DIR`] (the supervisor's own folder) from the upgrade's `verified` step until its
/// commit or undo: a supervisor that recovers an unfinished upgrade checks the staged bytes
/// against this copy, never against [`NEXT_STATEMENT`], which the relay may change or remove.
pub const STAGED_STATEMENT_KEPT: &str = "staged.hash";
/// The supervisor's binary, beside the relay's.
pub const SUPERVISOR_BIN: &str = "wireleap-relay-supervisor";

// === configuration ===

/// The configuration.
pub const CONFIG: &str = "config.json";
/// The migrated configuration during an upgrade; a generation prefers it (spec §2.4).
pub const CONFIG_NEXT: &str = "config.json.next";
/// The configuration before the last commit.
pub const CONFIG_PREV: &str = "config.json.prev";

// === upgrades ===

/// Versions automatic upgrades skip (see [`crate::skip`]).
pub const SKIP_VERSION: &str = ".skip-upgrade-version";
/// The highest rollout-document serial the relay accepted for each version (JSON object),
/// so that an older document cannot be replayed over a halt or a recall. Written by the relay.
pub const ROLLOUT_SEEN: &str = "rollout-seen.json";
/// Signed upgrade outcome reports not yet delivered to the release server, and how far the
/// journal has been reported (JSON, at most a few dozen reports). Written by the relay: the
/// generation that runs after a change reports its outcome from the journal.
pub const OUTCOME_REPORTS: &str = "upgrade-reports.json";
/// The serving relay's own state for `status`: per contract enrollment, last heartbeat and its
/// error, sharetoken counts, the upgrader's state (the REST `/api/status` object, with `pid`
/// and `time_ms`). Written by the relay every few seconds when it changed.
pub const RELAY_STATUS: &str = "relay-status.json";
/// The bytes of each version's binary downloaded today (JSON, written by the relay's Upgrader):
/// the daily download budget per version.
pub const DOWNLOAD_BUDGET: &str = "download-budget.json";
/// What the relay last learnt from the release server, for `status` (JSON, written by the
/// relay's Upgrader after each check; [`crate::state::ReleaseInfo`]).
pub const RELEASE_INFO: &str = "release-info.json";
/// The supervisor's journal of upgrade steps, one JSON object per line.
pub const JOURNAL: &str = "upgrade-journal.jsonl";
/// The highest committed version.
pub const STATE: &str = "upgrade-state.json";

// === processes ===

/// The relay daemon's pid, a JSON integer.
pub const PID: &str = "wireleap-relay.pid";
/// The relay daemon's log when started in the background.
pub const LOG: &str = "wireleap-relay.log";
/// The supervisor's pid.
pub const SUPERVISOR_PID: &str = "wireleap-relay-supervisor.pid";
/// The pids of the relay generations the supervisor runs (taken over by its successor).
pub const CHILDREN: &str = "wireleap-relay-supervisor.children";
/// The process group of the migration the supervisor runs, while it runs (a successor kills
/// what a dead supervisor's migration left).
pub const MIGRATION_GROUP: &str = "wireleap-relay-supervisor.migration";
/// The supervisor's control socket (mode 0600).
pub const CONTROL_SOCKET: &str = "wireleap-relay-supervisor.sock";
/// The socket the relay generations report readiness on (mode 0600).
pub const READY_SOCKET: &str = "wireleap-relay-supervisor.ready";
/// The home's lock (see [`crate::instance`]).
pub const LOCK: &str = "wireleap-relay.lock";

/// The path this relay binary is installed at: what the supervisor says
/// ([`RELAY_BINARY_ENV`]: it runs a verified copy), else the executable's own path.
///
/// # Errors
/// The executable's path cannot be found.
pub fn installed_binary() -> std::io::Result<std::path::PathBuf> {
    match std::env::var_os(RELAY_BINARY_ENV).filter(|v| !v.is_empty()) {
        Some(path) => Ok(path.into()),
        None => std::env::current_exe(),
    }
}

/// Upgrades and rollbacks replace `<home>/wireleap-relay`. When the relay runs from another file
/// (`--relay`, or `WIRELEAP_RELAY_HOME` away from the binary), a commit would never reach the
/// binary that runs, so both are refused, with this reason. A generation running as
/// `wireleap-relay.next` or `.prev` (until a commit renames it) is in its home.
///
/// # Errors
/// The reason, naming both files.
pub fn runs_from_home(home: &std::path::Path, relay: &std::path::Path) -> Result<(), String> {
    let installed = home.join(CURRENT);
    let relay_dir = std::fs::canonicalize(relay)
        .ok()
        .and_then(|p| Some((p.parent()?.to_path_buf(), p.file_name()?.to_owned())));
    match (relay_dir, std::fs::canonicalize(home)) {
        (Some((dir, name)), Ok(home))
            if dir == home
                && [CURRENT, NEXT, PREV]
                    .map(std::ffi::OsStr::new)
                    .contains(&name.as_os_str()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "upgrades replace {}, but the relay runs from {}: put the relay binary in its home directory (and unset WIRELEAP_RELAY_HOME or --relay) to upgrade",
            installed.display(),
            relay.display()
        )),
    }
}

//! Privilege separation: the supervisor runs every relay process it starts — the generations,
//! `version`, `migrate`, `check-config` — as the relay's own user (`--relay-user`), so that a
//! compromised relay cannot change which binary the supervisor runs next, nor which keys it
//! trusts (OpenSSH's privileged monitor and unprivileged child).
//!
//! The supervisor itself need not be root: the systemd unit runs it as its own system user
//! (`wireleap-supervisor`) in the relay's group, with the capabilities to start the relay as its
//! user (`CAP_SETUID`, `CAP_SETGID`) and to stop it (`CAP_KILL`), and nothing else. Root works
//! too (a supervisor started by hand). Each relay process starts with no supplementary group
//! and no capability, whichever the supervisor holds.
//!
//! The home directory is the supervisor user's, with the relay's group allowed to create files
//! and the sticky bit set (mode 1770): the relay writes its own files (ledger, keys, the staged
//! release) but can neither replace nor remove the supervisor's (the binaries, their
//! statements, `trusted-keys/`, the journal, the skip list, the committed state). The
//! supervisor refuses to start when the relay's user could change any of those, naming each.
//! It reads what the relay's user wrote for it (`config.json`, the staged release and roots)
//! through the relay's group.
//!
//! Without `--relay-user` everything runs as one user, as `wireleap-relay start` does: it works,
//! and the supervisor says what it cannot protect then.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wireleap_home::files;

/// The user relay processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUser {
    /// Its name (or the uid given).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

static USER: OnceLock<RelayUser> = OnceLock::new();

impl RelayUser {
    /// Looks up a user name or a numeric uid.
    ///
    /// # Errors
    /// No such user, or root.
    pub fn lookup(name: &str) -> Result<Self, String> {
        let user = match name.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(name),
        }
        .map_err(|e| format!("--relay-user {name}: {e}"))?
        .ok_or_else(|| format!("--relay-user {name}: no such user"))?;
        if user.uid.is_root() {
            return Err(format!(
                "--relay-user {name}: the relay may not run as root (it would have every right the supervisor keeps from it)"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// Sets the relay's user for this process's life (once, at start).
pub fn set(user: RelayUser) {
    let _ = USER.set(user);
}

/// The relay's user, if the supervisor separates privileges.
#[must_use]
pub fn user() -> Option<&'static RelayUser> {
    USER.get()
}

/// Makes `cmd` run as the relay's user (its uid, its primary group, no supplementary groups,
/// no capabilities), if one is set.
pub fn apply(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    if let Some(u) = user() {
        cmd.uid(u.uid).gid(u.gid);
        // Only root loses its groups (std drops them) and capabilities with the uid change.
        let not_root = !rustix::process::geteuid().is_root();
        #[allow(unsafe_code)]
        // SAFETY: the closure makes raw system calls only (async-signal-safe, no allocation),
        // in the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || drop_privileges(not_root));
        }
    }
}

/// Runs in the child once std changed its uid and gid: a supervisor that is not root keeps its
/// supplementary groups and its capabilities across `setuid`, so both go here, before the
/// relay's binary runs (a root parent lost both already; lowering what is gone is a no-op).
fn drop_privileges(not_root: bool) -> std::io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets, set_capabilities, set_thread_groups};
    if not_root {
        set_thread_groups(&[])?;
    }
    // Lowering is always allowed; the ambient set follows the permitted and inheritable ones.
    set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// The capabilities a supervisor that is not root needs to separate privileges: start relay
/// processes as the relay's user, and signal them.
const NEEDED: [(rustix::thread::CapabilitySet, &str); 3] = [
    (rustix::thread::CapabilitySet::SETUID, "CAP_SETUID"),
    (rustix::thread::CapabilitySet::SETGID, "CAP_SETGID"),
    (rustix::thread::CapabilitySet::KILL, "CAP_KILL"),
];

/// The capabilities of [`NEEDED`] this process lacks (none for root).
fn missing_capabilities() -> Vec<&'static str> {
    if rustix::process::geteuid().is_root() {
        return Vec::new();
    }
    let effective = rustix::thread::capabilities(None)
        .map(|sets| sets.effective)
        .unwrap_or(rustix::thread::CapabilitySet::empty());
    NEEDED
        .iter()
        .filter(|(cap, _)| !effective.contains(*cap))
        .map(|(_, name)| *name)
        .collect()
}

/// Whether this process is in group `gid` (primary or supplementary).
fn in_group(gid: u32) -> bool {
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

/// The name of this process's user (its uid if it has none), for the fixes it suggests.
fn own_user() -> String {
    let uid = rustix::process::geteuid().as_raw();
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// Lets the relay's group reach a socket of the supervisor's (mode 0660), if privileges are
/// separated. The supervisor is in that group (checked at start), so no capability is needed.
///
/// # Errors
/// An I/O error.
pub fn share_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(u) = user() {
        std::os::unix::fs::chown(path, None, Some(u.gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(())
}

/// The files the relay's user must not be able to change: what decides which binary runs next
/// and what is trusted.
fn guarded(home: &Path, relay: &Path) -> Vec<PathBuf> {
    let mut paths = vec![home.to_owned(), relay.to_owned()];
    if let Ok(me) = std::env::current_exe() {
        paths.push(me);
    }
    for name in [
        files::CURRENT,
        files::CURRENT_STATEMENT,
        files::PREV,
        files::PREV_STATEMENT,
        files::JOURNAL,
        files::STATE,
        files::SKIP_VERSION,
        files::VERIFIED_DIR,
        files::LOCK,
        "trusted-keys",
    ] {
        paths.push(home.join(name));
    }
    let keys = home.join("trusted-keys");
    for dir in [keys.clone(), keys.join("roots")] {
        paths.push(dir.clone());
        if let Ok(entries) = std::fs::read_dir(&dir) {
            paths.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// Refuses a file the supervisor is about to trust (a binary, a statement) that the relay's
/// user could have written (it may create files in the home, say a `.prev` that was missing).
///
/// # Errors
/// The path and why.
pub fn trusted_file(path: &Path) -> Result<(), String> {
    match user().and_then(|u| exposed(path, u)) {
        Some(why) => Err(format!(
            "{} {why}: the relay's user could have written it",
            path.display()
        )),
        None => Ok(()),
    }
}

/// Why the relay's user could change `path` (`None`: it cannot). A folder it may write is fine
/// when it is sticky and not the user's own (it cannot replace others' files there).
fn exposed(path: &Path, user: &RelayUser) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.file_type().is_symlink() {
        return Some("is a symbolic link (replace it with the file)".into());
    }
    if meta.uid() == user.uid {
        return Some(format!(
            "is owned by {} (chown {} {})",
            user.name,
            own_user(),
            path.display()
        ));
    }
    let mode = meta.mode();
    let by_group = meta.gid() == user.gid && mode & 0o020 != 0;
    let by_all = mode & 0o002 != 0;
    let sticky = mode & 0o1000 != 0;
    if (by_group || by_all) && !(meta.is_dir() && sticky) {
        return Some(format!(
            "is writable by {} (chmod go-w {})",
            user.name,
            path.display()
        ));
    }
    None
}

/// With privilege separation: every path the relay's user could change, with why. Empty when
/// the home is laid out as `docs/install.md` says.
#[must_use]
pub fn exposures(home: &Path, relay: &Path, user: &RelayUser) -> Vec<String> {
    guarded(home, relay)
        .into_iter()
        .filter_map(|p| exposed(&p, user).map(|why| format!("{} {why}", p.display())))
        .collect()
}

/// Checks the home and logs the mode the supervisor runs in.
///
/// # Errors
/// Privileges are to be separated but the supervisor may not start the relay as its user, is
/// not in its group or cannot read its config, or the relay's user could change what runs next
/// (each path named).
pub fn check(home: &Path, relay: &Path) -> Result<(), String> {
    let Some(user) = user() else {
        crate::run::warn(&format!(
            "the relay runs as this supervisor's own user (uid {}): a compromised relay process could change the binary that runs next and the keys it trusts. Run the supervisor with --relay-user (the systemd unit does; docs/install.md) to prevent it",
            rustix::process::geteuid().as_raw()
        ));
        return Ok(());
    };
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err(format!(
            "--relay-user {}: to start the relay as another user and stop it, the supervisor must run as root or hold {} (it lacks {}; the systemd unit gives them with AmbientCapabilities=)",
            user.name,
            NEEDED.map(|(_, name)| name).join(", "),
            missing.join(", ")
        ));
    }
    // Root reads and shares without the group.
    if !rustix::process::geteuid().is_root() && !in_group(user.gid) {
        return Err(format!(
            "--relay-user {}: the supervisor ({}) must be in the relay's group (gid {}) to read its config.json and share its sockets with it (the systemd unit: Group=)",
            user.name,
            own_user(),
            user.gid
        ));
    }
    let config = home.join(files::CONFIG);
    if let Err(e) = std::fs::File::open(&config)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(format!(
            "{}: {e}: the supervisor ({}) reads it through the relay's group (chmod 0640 {0}; chgrp {} {0})",
            config.display(),
            own_user(),
            user.gid
        ));
    }
    // What the supervisor writes in place must be its own: a home laid out for a supervisor
    // that ran as root, by hand, would fail its first upgrade step instead.
    if !rustix::process::geteuid().is_root() {
        let keys = home.join("trusted-keys");
        let unwritable: Vec<String> = [
            home.to_owned(),
            home.join(files::JOURNAL),
            keys.join("roots"),
            keys,
        ]
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .filter(|p| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_err())
        .map(|p| p.display().to_string())
        .collect();
        if !unwritable.is_empty() {
            return Err(format!(
                "the supervisor ({0}) cannot write {1}, which it keeps up to date (chown {0} each; a home laid out for a supervisor running as root: docs/install.md)",
                own_user(),
                unwritable.join(", ")
            ));
        }
    }
    // Names only the supervisor makes, where the relay's user may put a file (it may create
    // files in the home): whatever it put there goes, rather than the supervisor refusing to
    // start for good. The supervisor's passing state goes when the relay's user could change
    // it at all; a statement (beside a binary installed by hand) or a `.prev` (after a
    // rollback) when that user made it (the binary itself is guarded below).
    for (name, passing) in [
        (files::SUPERVISOR_PID, true),
        (files::CHILDREN, true),
        (files::MIGRATION_GROUP, true),
        (wireleap_home::skip::WRITERS_LOCK, true),
        (files::CURRENT_STATEMENT, false),
        (files::PREV, false),
        (files::PREV_STATEMENT, false),
    ] {
        let path = home.join(name);
        let planted = if passing {
            exposed(&path, user).is_some()
        } else {
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == user.uid)
        };
        if planted {
            crate::run::warn(&if passing {
                format!("{} was the relay user's: removed", path.display())
            } else {
                format!(
                    "{} was made by the relay's user {}: removed",
                    path.display(),
                    user.name
                )
            });
            std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
    }
    // The supervisor's own files are made now, so that the relay's user cannot be the one to
    // create them (it may create files in the home).
    for (name, empty) in [
        (files::STATE, "{}"),
        (files::JOURNAL, ""),
        (files::SKIP_VERSION, ""),
        (wireleap_home::skip::WRITERS_LOCK, ""),
    ] {
        let path = home.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            wireleap_home::durable::write_atomic(&path, empty.as_bytes(), 0o644)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
        }
    }
    crate::verified::private_dir(&home.join(files::VERIFIED_DIR))?;
    let exposed = exposures(home, relay, user);
    if !exposed.is_empty() {
        return Err(format!(
            "--relay-user {}: the relay's user could change what the supervisor runs next: {}",
            user.name,
            exposed.join("; ")
        ));
    }
    crate::run::log(&format!(
        "privilege separation: relay processes run as {} (uid {}, gid {}, no capabilities); it cannot change the binaries, their statements or the trusted keys, which are {}'s",
        user.name,
        user.uid,
        user.gid,
        own_user()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn what_the_relay_user_could_change_is_named() {
        let home = tempfile::tempdir().unwrap();
        let user = RelayUser {
            name: "relay".into(),
            uid: 4242,
            gid: rustix::process::getegid().as_raw(),
        };
        let relay = home.path().join(files::CURRENT);
        std::fs::write(&relay, "bin").unwrap();
        std::fs::set_permissions(&relay, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o1770)).unwrap();
        assert!(
            exposures(home.path(), &relay, &user).is_empty(),
            "{:?}",
            exposures(home.path(), &relay, &user)
        );
        // Group-writable binary; a home that is group-writable without the sticky bit.
        std::fs::set_permissions(&relay, std::fs::Permissions::from_mode(0o775)).unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let found = exposures(home.path(), &relay, &user);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|f| f.contains("writable by relay")),
            "{found:?}"
        );
        // A link where a trust file belongs.
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o1770)).unwrap();
        std::fs::set_permissions(&relay, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(home.path().join("trusted-keys")).unwrap();
        std::os::unix::fs::symlink("/dev/null", home.path().join("trusted-keys/k.pub")).unwrap();
        let found = exposures(home.path(), &relay, &user);
        assert!(
            found.len() == 1 && found[0].contains("symbolic link"),
            "{found:?}"
        );
    }

    #[test]
    fn root_is_not_a_relay_user() {
        assert!(
            RelayUser::lookup("root")
                .unwrap_err()
                .contains("may not run as root")
        );
        assert!(RelayUser::lookup("0").is_err());
        assert!(
            RelayUser::lookup("no-such-user-here")
                .unwrap_err()
                .contains("no such user")
        );
    }
}

//! One process holds a home directory: the supervisor, or a relay started without one
//! (`wireleap-relay start --fg` that binds for itself). Both take an exclusive `flock` on
//! [`LOCK_FILE`] before they write a pid file or touch anything else, and keep it for their
//! whole life; the kernel drops it when the process dies, so a crash leaves no stale lock. The
//! relay generations a supervisor starts take no lock: their supervisor holds it for them.
//!
//! The file's content (`<pid> <holder>`) only serves the message of the one refused.

use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::files::LOCK as LOCK_FILE;

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct Instance {
    lock: Held,
}

/// How the lock is held.
#[derive(Debug)]
enum Held {
    /// Taken here: released on drop.
    Taken(Flock<std::fs::File>),
    /// Handed over by a predecessor (the same open file): dropping it only closes this
    /// descriptor, so a successor that gives up never unlocks its predecessor's lock.
    Adopted(std::mem::ManuallyDrop<Flock<std::fs::File>>),
}

impl std::os::fd::AsFd for Instance {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.lock {
            Held::Taken(lock) => lock.as_fd(),
            Held::Adopted(lock) => lock.as_fd(),
        }
    }
}

impl Instance {
    /// Holds the lock a predecessor passed on as descriptor `fd` (the supervisor that hands
    /// over to the release's own supervisor): the same open file, so the same lock.
    ///
    /// # Errors
    /// The descriptor does not hold the lock.
    pub fn adopt(fd: std::os::fd::OwnedFd) -> Result<Self, String> {
        let file = std::fs::File::from(fd);
        // Taking it again through the same open file succeeds only if that file holds it.
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| format!("the lock handed over is not held: {e}"))?;
        Ok(Self {
            lock: Held::Adopted(std::mem::ManuallyDrop::new(lock)),
        })
    }

    /// Takes the home's lock for `holder` (e.g. `wireleap-relay-supervisor`).
    ///
    /// # Errors
    /// When another process holds it: a message that names it and its pid; an I/O error.
    pub fn acquire(home: &Path, holder: &str) -> Result<Self, String> {
        let path = home.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(crate::durable::NO_FOLLOW_NO_BLOCK)
            .open(&path)
            .map_err(|e| format!("could not open {}: {e}", path.display()))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(format!(
                "{} is not a regular file: remove it",
                path.display()
            ));
        }
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut other = String::new();
                let _ = file.read_to_string(&mut other);
                let other = other.trim();
                return Err(format!(
                    "{} already runs in {} ({}); stop it first",
                    other
                        .split_once(' ')
                        .map_or("another process", |(_, who)| who),
                    home.display(),
                    other
                        .split_once(' ')
                        .map_or_else(|| "pid unknown".to_owned(), |(pid, _)| format!("pid {pid}")),
                ));
            }
        };
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = writeln!(lock, "{} {holder}", std::process::id());
        let _ = lock.sync_all();
        Ok(Self {
            lock: Held::Taken(lock),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_by_name_until_the_first_lets_go() {
        let home = tempfile::tempdir().unwrap();
        let first = Instance::acquire(home.path(), "wireleap-relay-supervisor").unwrap();
        let err = Instance::acquire(home.path(), "wireleap-relay").unwrap_err();
        assert!(
            err.contains("wireleap-relay-supervisor already runs")
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        Instance::acquire(home.path(), "wireleap-relay").unwrap();
    }
}

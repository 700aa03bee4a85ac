//! Only verified bytes run.
//!
//! Every binary the supervisor runs (a generation, `version`, `migrate`) is first copied into its
//! own folder ([`VERIFIED_DIR`]) under a fresh name, opened read-only, and the name removed:
//! from then on only the supervisor's descriptor reaches those bytes. The copy is what is
//! verified (its digest against the signed statement), what runs (the child gets the descriptor
//! as fd [`BINARY_FD`] and executes `/proc/self/fd/4`), and what a commit installs as
//! `wireleap-relay`. Replacing `wireleap-relay.next` (or `.prev`, or `wireleap-relay`) after it
//! was copied changes nothing that runs.
//!
//! Under privilege separation (the relay as another user) nobody but the supervisor can write
//! the copy. Run as one user, the relay process could still rewrite the copy through
//! `/proc/<supervisor>/fd` between its verification and a later start: that mode protects the
//! binary against everything but a compromised relay (see `docs/install.md`).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use command_fds::{CommandFdExt as _, FdMapping};
use relay_release::verify::{ExpiryCheck, read_statement, verify_file, verify_statement};
use relay_release::{Expected, Product, Target, Trust, VersionFloor};
use semver::Version;

pub use wireleap_home::files::VERIFIED_DIR;

/// The descriptor a child runs its binary from.
pub const BINARY_FD: i32 = 4;
/// The largest binary copied (a relay binary with debug information is about 100 MB).
pub const MAX_BINARY: u64 = 1 << 30;

/// The home every command run from a copy is told ([`set_home`]).
static HOME: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the home directory every command run from a verified copy gets in its environment (a
/// nameless copy cannot find the home by its own path). Set once, at start.
pub fn set_home(home: &Path) {
    let _ = HOME.set(home.to_path_buf());
}

/// A private, read-only copy of a binary.
#[derive(Debug)]
pub struct Verified {
    file: File,
    /// Where it was copied from.
    source: PathBuf,
    /// The signed statement it matched, if any (installed with it at a commit).
    pub statement: Option<Vec<u8>>,
    /// The version it reported (or its statement signs), once known.
    pub version: Option<Version>,
}

static COPIES: AtomicU64 = AtomicU64::new(0);

impl Verified {
    /// Copies `source` (not through a link) into `home`'s [`VERIFIED_DIR`].
    ///
    /// # Errors
    /// What failed, with the path.
    pub fn copy(home: &Path, source: &Path) -> Result<Self, String> {
        let at =
            |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
        let mut from = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(wireleap_home::durable::NO_FOLLOW_NO_BLOCK)
            .open(source)
            .map_err(|e| at("could not open", source, e))?;
        let meta = from
            .metadata()
            .map_err(|e| at("could not read", source, e))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", source.display()));
        }
        if meta.len() > MAX_BINARY {
            return Err(format!(
                "{} is {} bytes, more than the {MAX_BINARY} a relay binary may have",
                source.display(),
                meta.len()
            ));
        }
        let dir = home.join(VERIFIED_DIR);
        private_dir(&dir)?;
        let name = dir.join(format!(
            ".copy-{}-{}",
            std::process::id(),
            COPIES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&name);
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            // Runnable by the relay's user under privilege separation; writable by nobody.
            .mode(0o755)
            .open(&name)
            .map_err(|e| at("could not create", &name, e))?;
        // The mode exactly, whatever the supervisor's umask (under `UMask=0077` the copy would
        // otherwise be 0700, and the relay's user could not run it).
        let copied = to
            .set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| at("could not set the mode of", &name, e))
            .and_then(|()| {
                std::io::copy(&mut (&mut from).take(MAX_BINARY), &mut to)
                    .and_then(|_| to.flush())
                    .and_then(|()| to.sync_all())
                    .map_err(|e| at("could not copy to", &name, e))
            });
        // Read-only from here: the writable descriptor closes (a file open for writing cannot
        // be executed), and the name goes.
        let file = copied.and_then(|()| {
            File::open(format!("/proc/self/fd/{}", to.as_raw_fd()))
                .map_err(|e| at("could not reopen", &name, e))
        });
        drop(to);
        let _ = std::fs::remove_file(&name);
        Ok(Self {
            file: file?,
            source: source.to_owned(),
            statement: None,
            version: None,
        })
    }

    /// Where this process reads the copy (for hashing).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Where it was copied from.
    #[must_use]
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// A command that runs the copy, with `extra` descriptors passed too; it is named
    /// `wireleap-relay` in the process list, and told its installed path
    /// ([`wireleap_home::files::RELAY_BINARY_ENV`]).
    ///
    /// # Errors
    /// The descriptors could not be duplicated or mapped.
    pub fn command(&self, extra: Vec<FdMapping>) -> Result<Command, String> {
        let mut cmd = self.command_as_supervisor(extra)?;
        cmd.arg0(wireleap_home::files::CURRENT)
            .env(wireleap_home::files::RELAY_BINARY_ENV, &self.source);
        crate::privsep::apply(&mut cmd);
        Ok(cmd)
    }

    /// A command that runs the copy as this process's user (the release's own supervisor),
    /// named `wireleap-relay-supervisor`.
    ///
    /// # Errors
    /// The descriptors could not be duplicated or mapped.
    pub fn command_as_supervisor(&self, extra: Vec<FdMapping>) -> Result<Command, String> {
        let mut cmd = self.bare_command(extra)?;
        if let Some(home) = HOME.get() {
            cmd.env(wireleap_home::files::HOME_ENV, home);
        }
        Ok(cmd)
    }

    fn bare_command(&self, extra: Vec<FdMapping>) -> Result<Command, String> {
        let fd = self
            .file
            .try_clone()
            .map_err(|e| format!("duplicating the binary's descriptor: {e}"))?;
        let mut cmd = Command::new(format!("/proc/self/fd/{BINARY_FD}"));
        cmd.arg0(wireleap_home::files::SUPERVISOR_BIN)
            .env_remove(wireleap_home::files::TAKEOVER_ENV)
            .env_remove(wireleap_home::files::SUPERVISOR_INSTALLED_ENV)
            .env_remove(crate::swap::LISTENER_ENV);
        let mut maps = extra;
        maps.push(FdMapping {
            parent_fd: fd.into(),
            child_fd: BINARY_FD,
        });
        cmd.fd_mappings(maps)
            .map_err(|e| format!("passing descriptors: {e}"))?;
        Ok(cmd)
    }

    /// Checks the copy against the signed statement at `statement`, as an installed binary (no
    /// version floor, no expiry: it was checked when installed); returns the version it signs.
    /// With no statement file, `Ok(None)`: a binary installed by hand.
    ///
    /// # Errors
    /// Why it does not match, or why it cannot be checked.
    pub fn check_installed(
        &mut self,
        trust: &Trust,
        statement: &Path,
    ) -> Result<Option<Version>, String> {
        if !statement.exists() {
            return Ok(None);
        }
        let keys = trust
            .release_keys(ExpiryCheck::UnsafeIgnore)
            .map_err(|e| e.to_string())?;
        let at = |e: relay_release::Error| format!("{}: {e}", statement.display());
        let version = signed_version(statement, &keys).map_err(at)?;
        let expected = Expected {
            product: Product::relay(),
            version: version.clone(),
            target: Target::host().map_err(|e| e.to_string())?,
            floor: VersionFloor::UnsafeAllowAny,
            expiry: ExpiryCheck::UnsafeIgnore,
        };
        self.check(statement, &keys, &expected).map_err(at)?;
        Ok(Some(version))
    }

    /// Checks the copy against the statement at `statement` (read once, kept for the commit);
    /// returns the verified statement (for the other files it signs).
    ///
    /// # Errors
    /// The verification's error.
    pub fn check(
        &mut self,
        statement: &Path,
        keys: &relay_release::TrustedKeys,
        expected: &Expected,
    ) -> Result<relay_release::VerifiedStatement, relay_release::Error> {
        self.check_bytes(read_statement(statement)?, keys, expected)
    }

    /// [`Verified::check`] against a statement already read.
    ///
    /// # Errors
    /// The verification's error.
    pub fn check_bytes(
        &mut self,
        bytes: Vec<u8>,
        keys: &relay_release::TrustedKeys,
        expected: &Expected,
    ) -> Result<relay_release::VerifiedStatement, relay_release::Error> {
        let verified = verify_statement(&bytes, keys, expected)?;
        let asset = verified.asset.clone();
        verify_file(&self.path(), &verified, &asset)?;
        self.statement = Some(bytes);
        Ok(verified)
    }

    /// Writes exactly these bytes to `dest` (durably, mode 0755), and the statement they
    /// matched to `statement` (or removes a stale one). Two renames: a crash between them
    /// leaves the new bytes beside the old statement, which [`Verified::install_statement`]
    /// repairs (the commit calls it again even when the bytes are already in place).
    ///
    /// # Errors
    /// An I/O error.
    pub fn install(&self, dest: &Path, statement: &Path) -> std::io::Result<()> {
        let mut bytes = File::open(self.path())?;
        wireleap_home::durable::write_atomic_from(dest, &mut bytes, 0o755)?;
        crate::failpoint::point("binary-installed");
        self.install_statement(statement)
    }

    /// Writes the statement these bytes matched to `statement` (durably), or removes a stale
    /// one when they matched none (installed by hand).
    ///
    /// # Errors
    /// An I/O error.
    pub fn install_statement(&self, statement: &Path) -> std::io::Result<()> {
        match &self.statement {
            Some(s) => wireleap_home::durable::write_atomic(statement, s, 0o644),
            None => match std::fs::remove_file(statement) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Whether `path` holds exactly these bytes.
    #[must_use]
    pub fn same_as(&self, path: &Path) -> bool {
        match (digest(&self.path()), digest(path)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// The version the statement at `statement` signs, its signature checked with `keys` (only
/// the signed text is read; no file it lists is).
///
/// # Errors
/// The statement cannot be read, is not signed by `keys`, or is malformed.
pub fn signed_version(
    statement: &Path,
    keys: &relay_release::TrustedKeys,
) -> Result<Version, relay_release::Error> {
    let bytes = read_statement(statement)?;
    let text = relay_release::verify::signed_text(&bytes, keys, std::time::SystemTime::now())?;
    Ok(relay_release::Statement::parse(&text.text)?.version)
}

/// The folder for the copies: created 0700; one that is a link, or not this user's, is refused.
pub(crate) fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("could not create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!(
            "{} is not a folder of this user's (remove it; the supervisor makes it again)",
            dir.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    let mut f = File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_runs_and_replacing_the_source_changes_nothing() {
        let home = tempfile::tempdir().unwrap();
        let source = home.path().join("wireleap-relay.next");
        std::fs::write(&source, "#!/bin/sh\necho 1.2.3\n").unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = Verified::copy(home.path(), &source).unwrap();
        std::fs::write(&source, "#!/bin/sh\necho 6.6.6\n").unwrap();
        let out = copy.command(Vec::new()).unwrap().output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.2.3");
        // No name reaches the copy.
        let left: Vec<_> = std::fs::read_dir(home.path().join(VERIFIED_DIR))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!copy.same_as(&source));
        let dest = home.path().join("wireleap-relay");
        copy.install(&dest, &home.path().join("wireleap-relay.hash"))
            .unwrap();
        assert!(copy.same_as(&dest));
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "#!/bin/sh\necho 1.2.3\n"
        );
    }

    #[test]
    fn links_and_other_files_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let target = home.path().join("real");
        std::fs::write(&target, "x").unwrap();
        let link = home.path().join("wireleap-relay.next");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(Verified::copy(home.path(), &link).is_err());
        assert!(Verified::copy(home.path(), home.path()).is_err());
    }
}

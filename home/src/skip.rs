//! `.skip-upgrade-version`: versions that automatic upgrades ignore (spec §3.8 with §10 #15). The
//! one parser and the one writer: the relay's Upgrader, its `upgrade` and `status`, the
//! supervisor and the demo all read and write it here.
//!
//! One version per line, bare (`1.2.3`, as the reference's README tells operators to write it)
//! or JSON-quoted (`"1.2.3"`, as the reference writes it). Blank lines and `#` comments are
//! ignored. A line that is not a version is reported with its number, never silently dropped.
//! Only a plain version is ever written, so nothing written can add a line of its own.

use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use semver::Version;

/// The skip list, and the lines that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipList {
    /// Versions to skip, in file order.
    pub versions: Vec<Version>,
    /// `(line number, text)` of every line that is not a version.
    pub unreadable: Vec<(usize, String)>,
}

impl SkipList {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Self {
        let mut list = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bare = line
                .strip_prefix('"')
                .and_then(|l| l.strip_suffix('"'))
                .unwrap_or(line);
            match Version::parse(bare.trim().trim_start_matches('v')) {
                Ok(v) => list.versions.push(v),
                Err(_) => list.unreadable.push((i + 1, line.to_owned())),
            }
        }
        list
    }

    /// Reads the file in `home`; a missing file is an empty list.
    ///
    /// # Errors
    /// An I/O error other than "not found".
    pub fn load(home: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(home.join(crate::files::SKIP_VERSION)) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Whether `v` is skipped.
    #[must_use]
    pub fn contains(&self, v: &Version) -> bool {
        self.versions.contains(v)
    }

    /// Adds `version` to the file in `home` (once; the other lines, comments included, stay).
    ///
    /// # Errors
    /// An I/O error reading or writing the file; a version longer than [`MAX_VERSION_LEN`]
    /// (`InvalidInput`: nothing sane is that long, and the file must stay small).
    pub fn add(home: &Path, version: &Version) -> std::io::Result<()> {
        let shown = version.to_string();
        if shown.len() > MAX_VERSION_LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a version of {} bytes is not added to the skip list (at most {MAX_VERSION_LEN})",
                    shown.len()
                ),
            ));
        }
        let _writers = lock_writers(home);
        let path = home.join(crate::files::SKIP_VERSION);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        if Self::parse(&text).contains(version) {
            return Ok(());
        }
        let mut new = text;
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(&version.to_string());
        new.push('\n');
        crate::durable::write_atomic(&path, new.as_bytes(), 0o644)
    }
}

/// The lock file of the skip list's writers (see [`lock_writers`]).
pub const WRITERS_LOCK: &str = ".skip-upgrade-version.lock";

/// How long a writer waits for another to finish before it writes anyway.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serialises the writers of the list across processes: the relay and its supervisor, or a
/// supervisor on trial and the one guarding it, may add a version at the same moment, and each
/// reads the file, adds its line and replaces the file whole, so one line would be lost.
///
/// Best effort, so the list can always be written as before: a lock file that cannot be opened
/// (a home shared with another user, a read-only home) or a lock held longer than [`LOCK_WAIT`]
/// (nothing holds it for more than a read and a write) leaves the writer unlocked. `None` then.
/// So under privilege separation the relay's user, which may create files in the home, can at
/// worst delay a supervisor's write by [`LOCK_WAIT`], never stop it.
fn lock_writers(home: &Path) -> Option<Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = home.join(WRITERS_LOCK);
    // Readable by all (it is empty): `flock` needs only a read handle, so a writer that is not
    // the file's owner (the supervisor's user, after the relay's made it) still takes the lock.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(crate::durable::NO_FOLLOW_NO_BLOCK)
        .open(&path)
        .or_else(|_| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(crate::durable::NO_FOLLOW_NO_BLOCK)
                .open(&path)
        })
        .ok()?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return None;
    }
    let until = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err((_, e)) if e != nix::errno::Errno::EWOULDBLOCK && e != nix::errno::Errno::EINTR => {
                return None;
            }
            Err((back, _)) if std::time::Instant::now() < until => {
                file = back;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

/// The longest version acted on, announced or skipped (in bytes, as written): the relay ignores
/// a longer announced version, and the skip list takes none.
pub const MAX_VERSION_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_at_the_same_moment_lose_no_version() {
        let home = tempfile::tempdir().unwrap();
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (home, start) = (home.path(), &start);
                s.spawn(move || {
                    start.wait();
                    for i in 0..25 {
                        SkipList::add(home, &Version::new(1, t, i)).unwrap();
                    }
                });
            }
        });
        let list = SkipList::load(home.path()).unwrap();
        assert_eq!(list.versions.len(), 200, "{:?}", list.versions);
    }

    #[test]
    fn a_held_or_unusable_lock_delays_a_writer_but_never_stops_it() {
        let home = tempfile::tempdir().unwrap();
        let lock = home.path().join(WRITERS_LOCK);
        let held = Flock::lock(
            std::fs::File::create(&lock).unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        let began = std::time::Instant::now();
        SkipList::add(home.path(), &Version::new(1, 0, 0)).unwrap();
        assert!(began.elapsed() >= LOCK_WAIT, "{:?}", began.elapsed());
        drop(held);
        // Not a file: written unlocked.
        std::fs::remove_file(&lock).unwrap();
        std::fs::create_dir(&lock).unwrap();
        SkipList::add(home.path(), &Version::new(1, 0, 1)).unwrap();
        let list = SkipList::load(home.path()).unwrap();
        assert_eq!(
            list.versions,
            vec![Version::new(1, 0, 0), Version::new(1, 0, 1)]
        );
    }

    /// Another user's lock file (the relay's, under privilege separation) is still taken:
    /// read-only is enough for `flock`, so a writer that may not write the file waits as well.
    #[test]
    fn a_lock_file_the_writer_may_only_read_still_serialises() {
        use std::os::unix::fs::PermissionsExt as _;
        let home = tempfile::tempdir().unwrap();
        SkipList::add(home.path(), &Version::new(1, 0, 0)).unwrap();
        let lock = home.path().join(WRITERS_LOCK);
        let mode = std::fs::metadata(&lock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644 & !umask());
        // Read-only for everyone (as root, write permission would not be checked: the test
        // then only shows that the read-only path is taken when writing is refused).
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(lock_writers(home.path()).is_some());
        let held = lock_writers(home.path()).unwrap();
        assert!(
            Flock::lock(
                std::fs::File::open(&lock).unwrap(),
                FlockArg::LockExclusiveNonblock
            )
            .is_err(),
            "not held"
        );
        drop(held);
    }

    fn umask() -> u32 {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(old);
        old.bits()
    }

    #[test]
    fn a_version_too_long_is_not_added() {
        let home = tempfile::tempdir().unwrap();
        let long = Version::parse(&format!("1.0.0-{}", "a".repeat(100))).unwrap();
        let e = SkipList::add(home.path(), &long).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(!home.path().join(crate::files::SKIP_VERSION).exists());
        SkipList::add(home.path(), &Version::parse("1.0.0").unwrap()).unwrap();
    }

    #[test]
    fn bare_quoted_and_several_versions() {
        let list = SkipList::parse("\"1.2.3\"\n1.3.0\n\n# operator note\nv2.0.0\nnot-a-version\n");
        let want: Vec<Version> = ["1.2.3", "1.3.0", "2.0.0"]
            .iter()
            .map(|v| Version::parse(v).unwrap())
            .collect();
        assert_eq!(list.versions, want);
        assert_eq!(list.unreadable, vec![(6, "not-a-version".to_owned())]);
    }

    #[test]
    fn add_keeps_the_other_lines_and_adds_once() {
        let home = tempfile::tempdir().unwrap();
        let v = Version::new(0, 9, 0);
        SkipList::add(home.path(), &v).unwrap();
        std::fs::write(
            home.path().join(crate::files::SKIP_VERSION),
            "# why: broke on arm\n\"0.9.0\"",
        )
        .unwrap();
        SkipList::add(home.path(), &v).unwrap();
        SkipList::add(home.path(), &Version::new(0, 9, 1)).unwrap();
        let text = std::fs::read_to_string(home.path().join(crate::files::SKIP_VERSION)).unwrap();
        assert_eq!(text, "# why: broke on arm\n\"0.9.0\"\n0.9.1\n");
        let list = SkipList::load(home.path()).unwrap();
        assert_eq!(list.versions, vec![v, Version::new(0, 9, 1)]);
        assert!(list.unreadable.is_empty());
    }

    #[test]
    fn the_references_own_form_reads() {
        // What the reference writes: a JSON string, no newline.
        assert_eq!(
            SkipList::parse("\"0.6.2\"").versions,
            vec![Version::new(0, 6, 2)]
        );
    }
}

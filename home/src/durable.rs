//! The one durable file replacement of the relay, the supervisor and their tools: a temp file in
//! the same directory (`.<name>.tmp<pid>`), the exact mode, fsync, rename, fsync the directory.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file, never a
/// mix or nothing.
///
/// # Errors
/// Any I/O error; the temp file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_from(path, &mut &bytes[..], mode)
}

/// [`write_atomic`] of what `source` yields (a large file is not held in memory). The temp file
/// is created anew (never opened through a link someone left under its name).
///
/// # Errors
/// Any I/O error; the temp file is removed.
pub fn write_atomic_from(
    path: &Path,
    source: &mut dyn std::io::Read,
    mode: u32,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A fresh name per write (threads of one process write too); never a name someone else
    // made first: `create_new`, and a retry under the next name.
    let (tmp, mut f) = {
        let mut attempt = 0;
        loop {
            let tmp = dir.join(format!(
                ".{name}.tmp{}.{}",
                std::process::id(),
                TEMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
            {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let result = (|| {
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        std::io::copy(source, &mut f)?;
        f.flush()?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Temp files made so far by this process (their names are unique).
static TEMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `O_NOFOLLOW | O_NONBLOCK`: a path someone else may have planted is neither followed (a
/// link) nor waited on (a FIFO).
pub const NO_FOLLOW_NO_BLOCK: i32 = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK;

/// Reads at most `cap` bytes of the regular file at `path`, without following a link or
/// blocking on a FIFO; with `owner`, only a file that user owns.
///
/// # Errors
/// An I/O error; `InvalidData` for a file that is not regular, too large, or not `owner`'s.
pub fn read_regular(path: &Path, cap: u64, owner: Option<u32>) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(NO_FOLLOW_NO_BLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    if let Some(uid) = owner
        && meta.uid() != uid
    {
        return Err(bad(format!(
            "{} belongs to uid {}, not {uid}",
            path.display(),
            meta.uid()
        )));
    }
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(bad(format!(
            "{} is larger than {cap} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Fsyncs a folder, so that an entry created or renamed in it survives a crash.
///
/// # Errors
/// An I/O error.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_the_exact_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write_atomic(&dir.path().join("missing/f"), b"x", 0o600).is_err());
    }
}

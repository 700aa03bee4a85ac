//! Durable file writes: temp file in the destination directory, fsync, rename, fsync the
//! directory (SPEC step 12).
//!
//! Used by the downloader to stage a verified release and by `release-tool` to publish one.
//! A crash at any point leaves either the old file or the complete new one, never a partial
//! file under the final name.

use std::fs;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::Error;

/// Creates a temp file beside `dest` (same directory, so the rename is atomic), named
/// `.<file name>.<random>.part`.
///
/// # Errors
///
/// [`Error::Io`] if the directory is missing or not writable.
pub fn temp_beside(dest: &Path) -> Result<NamedTempFile, Error> {
    let dir = parent_dir(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| Error::io("create temp file in", dir, e))
}

/// Fsyncs `temp`, sets its mode (Unix), renames it to `dest`, and fsyncs the directory.
///
/// # Errors
///
/// [`Error::Io`] if any of these fail; the temp file is then removed.
pub fn persist(temp: NamedTempFile, dest: &Path, mode: u32) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        temp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("chmod", temp.path(), e))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    temp.as_file()
        .sync_all()
        .map_err(|e| Error::io("fsync", temp.path(), e))?;
    temp.persist(dest)
        .map_err(|e| Error::io("rename into place", dest, e.error))?;
    sync_dir(parent_dir(dest))
}

/// Writes `data` to `dest` durably with `mode`.
///
/// # Errors
///
/// [`Error::Io`].
pub fn write_file(dest: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    wireleap_home::durable::write_atomic(dest, data, mode).map_err(|e| Error::io("write", dest, e))
}

/// Fsyncs a directory so that a rename in it survives a crash.
///
/// # Errors
///
/// [`Error::Io`].
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    wireleap_home::durable::sync_dir(dir).map_err(|e| Error::io("fsync directory", dir, e))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_atomically_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        write_file(&dest, b"one", 0o644).unwrap();
        write_file(&dest, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}

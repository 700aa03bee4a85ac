//! The home directory: where every file of the relay lives (spec §1.1, §1.3).
//!
//! By default it is the folder that holds the real executable, symlinks resolved, as in the
//! reference relay, so an operator can switch from the Go relay by replacing the binary. The
//! environment variable [`HOME_ENV`] overrides it (tests, packaging that keeps binaries and state
//! apart); it is read through [`Environment`] so tests never touch the process environment.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the home directory.
pub use wireleap_home::files::HOME_ENV;

/// Read access to environment variables (so tests can supply their own).
pub trait Environment {
    /// The value of `key`, if set and valid UTF-8.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// Errors finding or creating the home directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The executable's own path could not be found.
    #[error("could not find the path of the running executable: {0}")]
    Executable(std::io::Error),
    /// The directory could not be created.
    #[error("could not create home directory {}: {source}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Resolves the home directory and, with `create`, creates it if missing (only commands that
/// write a home create it: a mistyped `WIRELEAP_RELAY_HOME` given to `status` creates nothing).
///
/// # Errors
/// [`Error::Executable`] or [`Error::Create`].
pub fn resolve(env: &dyn Environment, create: bool) -> Result<PathBuf, Error> {
    let dir = match env.var(HOME_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().map_err(Error::Executable)?;
            let real = std::fs::canonicalize(&exe).map_err(Error::Executable)?;
            real.parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("/"))
        }
    };
    if create {
        std::fs::create_dir_all(&dir).map_err(|source| Error::Create {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// File names of the home directory that are not owned by a single module.
pub use wireleap_home::files;

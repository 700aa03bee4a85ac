//! External tools: `gpg` in a throw-away GNUPGHOME, `sq`, `sha512sum`. A missing tool fails
//! the test with an install hint (CI installs them); it never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Panics with an install hint unless `tool --version` runs.
pub(crate) fn require(tool: &str, package: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{tool}` is required by this test and was not found: install it \
         (`apt-get install -y {package}`); CI's .ci/run installs it"
    );
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A temporary GnuPG home; the agent is stopped on drop. Never touches `~/.gnupg`.
#[derive(Debug)]
pub(crate) struct GnuPg {
    home: tempfile::TempDir,
}

impl GnuPg {
    pub(crate) fn new() -> Self {
        require("gpg", "gnupg");
        // A short path: the agent's socket path has a length limit.
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        Self { home }
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path())
            .arg("--homedir")
            .arg(self.home.path())
            .arg("--batch")
            .arg("--no-tty")
            .arg("--yes");
        c
    }

    pub(crate) fn import(&self, key: &Path) {
        let out = run(self.cmd().arg("--import").arg(key));
        assert!(out.status.success(), "gpg --import: {}", text(&out));
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.home.path().to_path_buf()
    }
}

impl Drop for GnuPg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .arg("--homedir")
            .arg(self.home.path())
            .arg("--kill")
            .arg("all")
            .output();
    }
}

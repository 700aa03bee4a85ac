//! Releasing with the real `release-tool`: stamp a copy of the relay with a new version, publish
//! it signed into the release tree the stand-in network serves, and point the default channel at
//! it, after which the directory announces it in its heartbeat replies.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The test-only project signing key (releases/testdata/keys), whose public half the demo
/// installs in each relay's `trusted-keys/` (no build trusts it). Only for demos and tests:
/// anyone can sign with it.
const TEST_ONLY_KEY: &str = include_str!("../../../releases/testdata/keys/test-only-project.key");

/// Bound on one run of the release tool (stamping a debug build reads and writes 250 MB).
const TOOL_WAIT: Duration = Duration::from_secs(180);

/// The release tree and the tool that writes it.
#[derive(Debug, Clone)]
pub(crate) struct Releaser {
    tool: PathBuf,
    root: PathBuf,
    work: PathBuf,
    key: PathBuf,
}

impl Releaser {
    /// A releaser writing into `root`, keeping its inputs in `work` (both exist).
    ///
    /// # Errors
    /// Writing the key file.
    pub(crate) fn new(tool: &Path, root: &Path, work: &Path) -> anyhow::Result<Self> {
        let key = work.join("test-only-project.key");
        std::fs::write(&key, TEST_ONLY_KEY).context("writing the test-only signing key")?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .context("restricting the signing key's mode")?;
        Ok(Self {
            tool: tool.to_path_buf(),
            root: root.to_path_buf(),
            work: work.to_path_buf(),
            key,
        })
    }

    /// `release-tool stamp`: a copy of `binary` that reports `version`.
    ///
    /// # Errors
    /// The tool's message.
    pub(crate) fn stamp(&self, binary: &Path, version: &str) -> anyhow::Result<PathBuf> {
        let out = self.work.join(format!("wireleap-relay-{version}"));
        self.run(&[
            "stamp".as_ref(),
            "--version".as_ref(),
            version.as_ref(),
            binary.as_os_str(),
            out.as_os_str(),
        ])?;
        Ok(out)
    }

    /// A release that is broken on purpose: it answers `version` as `version`, starts the relay
    /// `good` for real, and kills it one second later (inside the supervisor's health window).
    ///
    /// # Errors
    /// Writing the script.
    pub(crate) fn broken(&self, good: &Path, version: &str) -> anyhow::Result<PathBuf> {
        let path = self.work.join(format!("wireleap-relay-{version}-broken"));
        let good = good.display();
        let text = format!(
            "#!/bin/sh\n\
             # {version}: broken on purpose. It gets ready, then dies a second later.\n\
             case \"$1\" in\n\
             \x20 version) echo {version}; exit 0 ;;\n\
             \x20 start) ;;\n\
             \x20 *) exec \"{good}\" \"$@\" ;;\n\
             esac\n\
             \"{good}\" \"$@\" &\n\
             child=$!\n\
             sleep 1\n\
             kill -9 $child\n\
             exit 4\n"
        );
        std::fs::write(&path, text).context("writing the broken release")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .context("making the broken release executable")?;
        Ok(path)
    }

    /// `release-tool publish` of `binary` (and the release's own `supervisor`, if given) as
    /// `version`, then `channel set default version`.
    ///
    /// # Errors
    /// The tool's message.
    pub(crate) fn publish(
        &self,
        version: &str,
        binary: &Path,
        supervisor: Option<&Path>,
        changelog: &str,
    ) -> anyhow::Result<()> {
        self.publish_files(version, binary, supervisor, changelog)?;
        self.set_channel(version)
    }

    /// `release-tool publish`, without pointing a channel at it.
    ///
    /// # Errors
    /// The tool's message.
    pub(crate) fn publish_files(
        &self,
        version: &str,
        binary: &Path,
        supervisor: Option<&Path>,
        changelog: &str,
    ) -> anyhow::Result<()> {
        let notes = self.work.join(format!("changelog-{version}.md"));
        std::fs::write(&notes, format!("# {version}\n\n- {changelog}\n"))
            .context("writing the changelog")?;
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "publish".as_ref(),
            "--root".as_ref(),
            self.root.as_os_str(),
            "--key".as_ref(),
            self.key.as_os_str(),
            "--version".as_ref(),
            version.as_ref(),
            "--binary".as_ref(),
            binary.as_os_str(),
            "--changelog".as_ref(),
            notes.as_os_str(),
        ];
        if let Some(supervisor) = supervisor {
            args.extend(["--supervisor".as_ref(), supervisor.as_os_str()]);
        }
        self.run(&args).map(drop)
    }

    /// `release-tool channel set default <version>`: the directory announces it.
    ///
    /// # Errors
    /// The tool's message.
    pub(crate) fn set_channel(&self, version: &str) -> anyhow::Result<()> {
        self.run(&[
            "channel".as_ref(),
            "set".as_ref(),
            "--root".as_ref(),
            self.root.as_os_str(),
            "default".as_ref(),
            version.as_ref(),
        ])
        .map(drop)
    }

    /// Runs the tool to completion, bounded by [`TOOL_WAIT`]; killed on Ctrl-C. Returns what it
    /// printed.
    pub(crate) fn run(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
        let what = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stderr_path = self.work.join(format!("release-tool-{what}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).context("creating release-tool's log")?;
        let stdout_path = self.work.join(format!("release-tool-{what}.stdout"));
        let stdout =
            std::fs::File::create(&stdout_path).context("creating release-tool's output")?;
        let mut child = Command::new(&self.tool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("running {}", self.tool.display()))?;
        let deadline = Instant::now() + TOOL_WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for release-tool")? {
                break status;
            }
            let stop = if crate::INTERRUPTED.load(Ordering::Relaxed) {
                Some("interrupted".to_owned())
            } else if Instant::now() > deadline {
                Some(format!(
                    "release-tool {what} did not finish within {TOOL_WAIT:?}"
                ))
            } else {
                None
            };
            if let Some(why) = stop {
                let _ = child.kill();
                let _ = child.wait();
                bail!(why);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!(
                "release-tool {what} failed ({status}): {}",
                std::fs::read_to_string(&stderr_path)
                    .unwrap_or_default()
                    .trim()
            );
        }
        std::fs::read_to_string(&stdout_path).context("reading release-tool's output")
    }
}

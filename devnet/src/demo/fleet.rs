//! The demo's processes and relay homes: the workspace binaries next to the demo's own
//! executable, one home directory per relay, its supervisor in a process group of its own, and
//! what the supervisor journals.
//!
//! [`Fleet`] owns every process the demo starts. It stops them all (SIGTERM to each process
//! group, SIGKILL to what is left after [`STOP_WAIT`]) when told to and again when dropped, so
//! nothing outlives the demo: not on an error, not on Ctrl-C, not on a panic.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use wireleap_home::files::{CONTROL_SOCKET, CURRENT, SUPERVISOR_BIN};
use wireleap_home::journal::Step as Kind;

/// The public half of the demo network's TEST-ONLY release key (releases/testdata/keys).
const DEMO_RELEASE_KEY: &str =
    include_str!("../../../releases/testdata/keys/test-only-project.pub");

/// How long the supervisors get to stop their relays before everything left is killed.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(10);
/// Bound on a relay getting ready and enrolled.
const START_WAIT: Duration = Duration::from_secs(60);

/// The supervisor's stderr (with its relays').
pub(crate) const LOG: &str = "supervisor.log";

/// The workspace binaries the demo runs.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    /// `wireleap-relay`.
    pub(crate) relay: PathBuf,
    /// `wireleap-relay-supervisor`.
    pub(crate) supervisor: PathBuf,
    /// `release-tool`.
    pub(crate) release_tool: PathBuf,
}

impl Bins {
    /// The binaries next to the demo's own executable (cargo builds them all into one folder).
    ///
    /// # Errors
    /// Which binaries are missing and the cargo command that builds them.
    pub(crate) fn find() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the demo's own executable")?;
        let dir = exe
            .parent()
            .context("the demo's executable has no folder")?
            .to_path_buf();
        let bins = Self {
            relay: dir.join(CURRENT),
            supervisor: dir.join(SUPERVISOR_BIN),
            release_tool: dir.join("release-tool"),
        };
        let missing: Vec<String> = [&bins.relay, &bins.supervisor, &bins.release_tool]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            let profile = if dir.ends_with("release") {
                " --release"
            } else {
                ""
            };
            bail!(
                "missing {}: build them first with `cargo build{profile} --workspace --bins`",
                missing.join(", ")
            );
        }
        Ok(bins)
    }
}

/// Every process group the demo started.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    children: Mutex<Vec<Child>>,
}

impl Fleet {
    /// Spawns `cmd` as the leader of a new process group (so its relays can be stopped with it).
    ///
    /// # Errors
    /// The spawn error.
    pub(crate) fn spawn(&self, mut cmd: Command) -> std::io::Result<u32> {
        let child = cmd.process_group(0).spawn()?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
        Ok(pid)
    }

    /// Whether the process `pid` started has exited (its exit status, if so).
    pub(crate) fn exited(&self, pid: u32) -> Option<std::process::ExitStatus> {
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        children
            .iter_mut()
            .find(|c| c.id() == pid)
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stops every process group: SIGTERM (a supervisor then stops its relays), a bounded wait,
    /// SIGKILL to whatever is left in the groups. Returns how many had to be killed.
    pub(crate) fn stop(&self) -> usize {
        let mut children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(PoisonError::into_inner));
        for c in &children {
            signal_group(c.id(), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline
            && children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut killed = 0;
        for c in &mut children {
            if matches!(c.try_wait(), Ok(None)) {
                killed += 1;
            }
            // Relays a supervisor left behind are in its group too.
            signal_group(c.id(), Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
        killed
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), sig);
    }
}

/// One relay: its home, its role and how to reach it.
#[derive(Debug)]
pub(crate) struct Relay {
    /// `fronting`, `entropic` or `backing`.
    pub(crate) role: &'static str,
    /// Its home directory.
    pub(crate) home: PathBuf,
    /// Its public key, base64url (as in `key.pub`).
    pub(crate) pubkey: String,
    /// The supervisor's pid.
    pub(crate) supervisor: u32,
    /// Where it listens (the supervisor's socket, kept across upgrades).
    pub(crate) addr: SocketAddr,
    /// Journal lines already shown.
    seen: usize,
}

/// Who the relays run as when the demo runs as root: privilege separation as
/// `docs/install.md` lays it out (the supervisor its own user, the relay this user).
pub(crate) const RELAY_USER: &str = "nobody";

/// The uid the supervisors run as when the demo runs as root, as the systemd unit runs them
/// (`wireleap-supervisor`): no user of that id needs to exist.
pub(crate) const SUPERVISOR_UID: u32 = 64_999;

/// The capabilities the systemd unit gives the supervisor, as `setpriv` names them.
const SUPERVISOR_CAPS: &str = "+setuid,+setgid,+kill";

/// The command that starts a supervisor as the systemd unit does (its own user, the relay's
/// group, the unit's three ambient capabilities, no new privileges), when the demo separates
/// privileges and `setpriv` is installed; the supervisor's command line follows it.
pub(crate) fn supervisor_launcher() -> Option<Vec<String>> {
    let (_, gid) = relay_user()?;
    let found = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| {
        vec![
            "setpriv".to_owned(),
            format!("--reuid={SUPERVISOR_UID}"),
            format!("--regid={gid}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps={SUPERVISOR_CAPS}"),
            format!("--ambient-caps={SUPERVISOR_CAPS}"),
            format!("--bounding-set=-all,{SUPERVISOR_CAPS}"),
            "--no-new-privs".to_owned(),
            "--".to_owned(),
        ]
    })
}

/// Who owns what the supervisor trusts and writes: its own user when it runs as the unit runs
/// it ([`supervisor_launcher`]), else whoever runs the demo.
fn supervisor_owner() -> u32 {
    if supervisor_launcher().is_some() {
        SUPERVISOR_UID
    } else {
        nix::unistd::geteuid().as_raw()
    }
}

/// Gives `path`, and all below it, to the supervisor's user (group: the relay's) when the demo
/// separates privileges; links are changed, never followed.
///
/// # Errors
/// The change of owner failed.
pub(crate) fn give_to_supervisor(path: &Path) -> anyhow::Result<()> {
    let Some((_, gid)) = relay_user() else {
        return Ok(());
    };
    std::os::unix::fs::lchown(path, Some(supervisor_owner()), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            give_to_supervisor(&entry?.path())?;
        }
    }
    Ok(())
}

/// The relay user's uid and gid, when the demo runs as root and the user exists.
pub(crate) fn relay_user() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name(RELAY_USER).ok()??;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// Lays `home` out for privilege separation: the relay's own files are its user's, the home is
/// the supervisor's with the relay's group allowed to create files (sticky, mode 1770), the
/// binaries are the supervisor's; `dir` (the demo's folder) may be passed through.
fn separate(dir: &Path, home: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(home).with_context(|| format!("reading {}", home.display()))? {
        let path = entry?.path();
        if path.file_name() == Some(std::ffi::OsStr::new(CURRENT))
            || path.file_name() == Some(std::ffi::OsStr::new(SUPERVISOR_BIN))
        {
            give_to_supervisor(&path)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to {RELAY_USER}", path.display()))?;
        }
    }
    std::os::unix::fs::chown(home, Some(supervisor_owner()), Some(gid))
        .with_context(|| format!("chown {}", home.display()))?;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o1770))
        .with_context(|| format!("chmod {}", home.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("chmod {}", dir.display()))?;
    Ok(())
}

/// One step of the supervisor's upgrade journal (its typed entry).
pub(crate) use wireleap_home::journal::Entry as Step;

impl Relay {
    /// Makes a home for `role` in `dir`: a copy of the relay binary, `wireleap-relay init`, and a
    /// config.json for the stand-in network at `contract_url` that downloads announced releases
    /// from `releases_url`.
    ///
    /// # Errors
    /// What failed, with the relay's own message.
    pub(crate) fn init(
        bins: &Bins,
        dir: &Path,
        role: &'static str,
        contract_url: &str,
        releases_url: &str,
    ) -> anyhow::Result<(PathBuf, String)> {
        Self::init_named(
            bins,
            dir,
            role,
            role,
            contract_url,
            releases_url,
            &serde_json::json!({}),
        )
    }

    /// As [`Self::init`], the home named `name`, with `extra` top-level config.json fields.
    ///
    /// # Errors
    /// What failed, with the relay's own message.
    pub(crate) fn init_named(
        bins: &Bins,
        dir: &Path,
        name: &str,
        role: &str,
        contract_url: &str,
        releases_url: &str,
        extra: &serde_json::Value,
    ) -> anyhow::Result<(PathBuf, String)> {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        std::fs::copy(&bins.relay, home.join(CURRENT))
            .with_context(|| format!("copying the relay binary into {}", home.display()))?;
        // The supervisor runs from the home, as the unit runs it: a release's own supervisor
        // is installed there.
        std::fs::copy(&bins.supervisor, home.join(SUPERVISOR_BIN))
            .with_context(|| format!("copying the supervisor into {}", home.display()))?;
        let out = Command::new(home.join(CURRENT))
            .arg("init")
            .env("WIRELEAP_RELAY_HOME", &home)
            .stdin(Stdio::null())
            .output()
            .context("running wireleap-relay init")?;
        if !out.status.success() {
            bail!(
                "wireleap-relay init in {} failed: {}",
                home.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut config = serde_json::json!({
            "address": "127.0.0.1:0",
            "heartbeat_interval": "500ms",
            "release_url": releases_url,
            "danger_zone": {"allow_loopback": true},
            "contracts": {contract_url: {"address": "wireleap://127.0.0.1:13499", "role": role}},
        });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        std::fs::write(home.join("config.json"), format!("{config:#}\n"))
            .context("writing config.json")?;
        if let Some((uid, gid)) = relay_user() {
            separate(dir, &home, uid, gid)?;
        }
        let pubkey: String = std::fs::read_to_string(home.join("key.pub"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .with_context(|| format!("reading {}/key.pub", home.display()))?;
        Ok((home, pubkey))
    }

    /// Installs the demo network's release key (the public half of the TEST-ONLY key of
    /// `releases/testdata/keys`, whose secret signs the demo's releases) as
    /// `<home>/trusted-keys/test-only-project.pub`: no build trusts any key by itself. Returns
    /// what the relay then says it trusts (`version -v`).
    ///
    /// # Errors
    /// Writing the key; the relay's `version -v` failing or listing no key.
    pub(crate) fn trust_demo_key(bins: &Bins, home: &Path) -> anyhow::Result<Vec<String>> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = home.join("trusted-keys");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
        let key = dir.join("test-only-project.pub");
        std::fs::write(&key, DEMO_RELEASE_KEY)
            .with_context(|| format!("writing {}", key.display()))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", key.display()))?;
        give_to_supervisor(&dir)?;
        let out = Command::new(&bins.relay)
            .args(["version", "-v"])
            .env("WIRELEAP_RELAY_HOME", home)
            .stdin(Stdio::null())
            .output()
            .context("running wireleap-relay version -v")?;
        let trusted: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("trusted key "))
            .map(str::to_owned)
            .collect();
        if trusted.is_empty() {
            bail!(
                "the relay in {} trusts no release key after the demo installed one: {}",
                home.display(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(trusted)
    }

    /// Starts the supervisor of the relay in `home` (its stderr to [`LOG`]) without waiting for
    /// it: [`Starting::ready`] waits until the relay is ready and listening.
    ///
    /// # Errors
    /// The supervisor could not be started.
    pub(crate) fn spawn(
        fleet: &Fleet,
        bins: &Bins,
        role: &'static str,
        home: PathBuf,
        pubkey: String,
        health_window: Duration,
    ) -> anyhow::Result<Starting> {
        let log = std::fs::File::create(home.join(LOG)).context("creating the supervisor log")?;
        let mut cmd = match supervisor_launcher() {
            Some(launcher) => {
                let mut cmd = Command::new(&launcher[0]);
                cmd.args(&launcher[1..]).arg(home.join(SUPERVISOR_BIN));
                cmd
            }
            None => Command::new(home.join(SUPERVISOR_BIN)),
        };
        if relay_user().is_some() {
            cmd.args(["--relay-user", RELAY_USER]);
        }
        cmd.arg("--health-window")
            .arg(format!("{}", health_window.as_secs_f64()))
            .env("WIRELEAP_RELAY_HOME", &home)
            .env("RELAY_LOG", "info")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let supervisor = fleet
            .spawn(cmd)
            .with_context(|| format!("starting {}", bins.supervisor.display()))?;
        Ok(Starting {
            role,
            home,
            pubkey,
            supervisor,
        })
    }
}

/// A relay whose supervisor was started: [`Self::ready`] waits for it.
#[derive(Debug)]
pub(crate) struct Starting {
    role: &'static str,
    home: PathBuf,
    pubkey: String,
    supervisor: u32,
}

impl Starting {
    /// Waits until the relay is ready and listening.
    ///
    /// # Errors
    /// The supervisor exited, or did not get ready within [`START_WAIT`]: with its log's tail.
    pub(crate) fn ready(self, fleet: &Fleet) -> anyhow::Result<Relay> {
        let Self {
            role,
            home,
            pubkey,
            supervisor,
        } = self;
        let deadline = Instant::now() + START_WAIT;
        let addr = loop {
            let text = std::fs::read_to_string(home.join(LOG)).unwrap_or_default();
            let addr = text
                .lines()
                .find_map(|l| l.split("listening on ").nth(1))
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            if let (Some(addr), true) = (addr, text.contains("relay ready")) {
                break addr;
            }
            if let Some(status) = fleet.exited(supervisor) {
                bail!(
                    "the {role} relay's supervisor exited ({status}):\n{}",
                    tail(&text, 15)
                );
            }
            if crate::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {START_WAIT:?} waiting for the {role} relay to be ready:\n{}",
                    tail(&text, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Relay {
            role,
            home,
            pubkey,
            supervisor,
            addr,
            seen: 0,
        })
    }
}

impl Relay {
    /// Every step journaled so far.
    pub(crate) fn journal(&self) -> Vec<Step> {
        wireleap_home::journal::read(&self.home)
    }

    /// Journal steps not returned before.
    pub(crate) fn new_steps(&mut self) -> Vec<Step> {
        let all = self.journal();
        let new = all.get(self.seen..).unwrap_or_default().to_vec();
        self.seen = all.len();
        new
    }

    /// Whether `version` reached `step`.
    pub(crate) fn reached(&self, version: &str, step: Kind) -> bool {
        self.journal()
            .iter()
            .any(|s| s.version == version && s.step == step)
    }

    /// Versions listed in `.skip-upgrade-version`.
    pub(crate) fn skipped(&self) -> Vec<String> {
        wireleap_home::skip::SkipList::load(&self.home)
            .map(|l| l.versions.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// The pid in the supervisor's pid file (its own, kept across its upgrade in place).
    pub(crate) fn supervisor_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.home.join(wireleap_home::files::SUPERVISOR_PID))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The version the installed binary reports (`wireleap-relay version`).
    pub(crate) fn installed_version(&self) -> String {
        installed_version(&self.home.join(CURRENT))
    }

    /// The supervisor's state from its control socket (`serving`, `upgrading`, `starting`).
    pub(crate) fn state(&self) -> Option<String> {
        use std::io::{BufRead as _, Write as _};
        let mut conn =
            std::os::unix::net::UnixStream::connect(self.home.join(CONTROL_SOCKET)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        writeln!(conn, r#"{{"cmd":"status"}}"#).ok()?;
        let mut line = String::new();
        std::io::BufReader::new(conn).read_line(&mut line).ok()?;
        let reply: serde_json::Value = serde_json::from_str(&line).ok()?;
        reply["state"].as_str().map(str::to_owned)
    }

    /// Whether the relay logged that it accepted the notice for `version` (and so downloads it).
    pub(crate) fn accepted(&self, version: &str) -> bool {
        let needle = format!("upgrade accepted version={version}");
        std::fs::read_to_string(self.home.join(LOG))
            .is_ok_and(|text| text.lines().any(|l| l.trim_end().ends_with(&needle)))
    }

    /// The last lines of the log about upgrades (without the repeated notices), and warnings.
    pub(crate) fn upgrade_log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.home.join(LOG)).unwrap_or_default();
        let relevant: String = text
            .lines()
            .filter(|l| {
                (l.contains("upgrad") || l.contains("download") || l.contains("WARN"))
                    && !l.contains("notice dropped")
                    && !l.contains("received upgrade notice")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        tail(&relevant, lines)
    }

    /// The last lines of the supervisor's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(self.home.join(LOG)).unwrap_or_default(),
            lines,
        )
    }
}

/// The version `binary version` prints, or `?`.
pub(crate) fn installed_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

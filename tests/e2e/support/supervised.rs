//! A relay under its supervisor, enrolled at a stand-in network, and a client ready to send
//! streams through it to an echo target: the common setup of the handover and upgrade tests.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use wireleap_devnet::client::{Hop, activate_servicekey};
use wireleap_protocol::{PublicKey, Servicekey};

use super::load::short_stream;
use super::process::{relay_bin, sibling_bin};
use super::standin::Standin;
use super::target::tcp_echo;
use super::{Home, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// The running setup. Dropping it kills the supervisor (and so its relays).
pub struct Supervised {
    pub standin: Standin,
    pub home: Home,
    /// The relay's public key, base64url.
    pub key: String,
    /// The relay as a circuit hop.
    pub hop: Hop,
    pub rt: tokio::runtime::Runtime,
    /// An echo server streams end at.
    pub target: SocketAddr,
    pub sk: Servicekey,
    pub supervisor: Child,
}

impl Supervised {
    /// Copies the relay binary into a fresh home (so upgrades can replace it), starts the
    /// supervisor with `args`, and waits until a stream gets through.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Standin::start(), "", args)
    }

    /// As [`Self::start`], at `standin`, with `extra` top-level config.json fields (`"k": v,`).
    pub fn start_with(standin: Standin, extra: &str, args: &[&str]) -> Self {
        Self::start_full(standin, extra, args, &[])
    }

    /// As [`Self::start_with`], with extra environment variables for the supervisor.
    pub fn start_full(standin: Standin, extra: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_prepared(standin, extra, args, env, &|_| {})
    }

    /// As [`Self::start_full`], `prepare` arranging the home (with the relay binary in place)
    /// before the supervisor starts.
    pub fn start_prepared(
        standin: Standin,
        extra: &str,
        args: &[&str],
        env: &[(&str, &str)],
        prepare: &dyn Fn(&Home),
    ) -> Self {
        let home = Home::with_config(&format!(
            r#"{{"address": "127.0.0.1:0", "heartbeat_interval": "500ms", "danger_zone": {{"allow_loopback": true}}, {extra}
                "contracts": {{"{}": {{"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}}}}"#,
            standin.net.contract_url()
        ));
        std::fs::copy(relay_bin(), home.file("wireleap-relay")).unwrap();
        let key: String = serde_json::from_str(&home.read("key.pub")).unwrap();
        prepare(&home);
        let supervisor = spawn_supervisor(&home, args, env);
        let read_log = || home.read("supervisor.log");
        eventually(WAIT, "the relay to be ready", || {
            read_log().contains("relay ready")
        });
        standin.wait_enrolled(&key, WAIT);
        let addr: SocketAddr = read_log()
            .lines()
            .find_map(|l| l.split("listening on ").nth(1))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let hop = Hop::new(
            format!("wireleap://{addr}"),
            PublicKey::try_from_b64(&key).unwrap(),
        );
        let rt = super::runtime();
        let target = rt.block_on(tcp_echo());
        let sk = rt
            .block_on(activate_servicekey(standin.net.contract_url()))
            .unwrap();
        // Admission follows enrollment closely; wait until a stream gets through.
        eventually(WAIT, "a first admitted stream", || {
            rt.block_on(short_stream(&sk, &hop, target)).is_ok()
        });
        Self {
            standin,
            home,
            key,
            hop,
            rt,
            target,
            sk,
            supervisor,
        }
    }

    /// Starts a new supervisor in the same home (after the last one died), without extra
    /// environment; it logs to the same file.
    pub fn restart_supervisor(&mut self, args: &[&str]) {
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        self.supervisor = spawn_supervisor(&self.home, args, &[]);
    }

    /// What the supervisor (and its relays) logged.
    pub fn log(&self) -> String {
        self.home.read("supervisor.log")
    }

    /// Sends `sig` to the supervisor.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.supervisor.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// Waits for the supervisor to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut status = None;
        eventually(within, "the supervisor to exit", || {
            status = self.supervisor.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // A clean stop first (the supervisor stops its relays), then nothing may stay behind.
        let pid = nix::unistd::Pid::from_raw(self.supervisor.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..250 {
            if !matches!(self.supervisor.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        // A supervisor that took over from this one (the release's own) runs on its own.
        if let Some(pid) = std::fs::read_to_string(self.home.file("wireleap-relay-supervisor.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..250 {
                if nix::sys::signal::kill(pid, None).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        for pid in relay_pids_in(self.home.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Relay processes (`start --fg`) running in `home`, whoever started them.
pub fn relay_pids_in(home: &std::path::Path) -> Vec<u32> {
    let Ok(home) = std::fs::canonicalize(home) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
            let cwd = std::fs::read_link(proc.join("cwd")).ok();
            let args = std::fs::read(proc.join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            cwd.as_deref() == Some(home.as_path())
                && !zombie
                && args.split(|&b| b == 0).nth(1) == Some(b"start".as_slice())
        })
        .collect()
}

/// The supervisor for `home`, as a test starts it: outside systemd (no `NOTIFY_SOCKET`, no
/// inherited sockets).
pub fn supervisor_command(home: &Home) -> Command {
    // A supervisor installed in the home (as the systemd unit runs it) runs from there.
    let installed = home.file("wireleap-relay-supervisor");
    let binary = if installed.exists() {
        installed
    } else {
        sibling_bin("wireleap-relay-supervisor")
    };
    let mut command = Command::new(binary);
    command
        .env("WIRELEAP_RELAY_HOME", home.path())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS");
    command
}

thread_local! {
    static LAUNCHER: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Starts the supervisors of this thread through `argv` (`setpriv` with a user and
/// capabilities, as systemd starts it), which runs the supervisor's own command line.
pub fn launch_through(argv: &[&str]) {
    LAUNCHER.with(|l| *l.borrow_mut() = argv.iter().map(|&a| a.to_owned()).collect());
}

fn spawn_supervisor(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.file("supervisor.log"))
        .unwrap();
    let direct = supervisor_command(home);
    let launcher = LAUNCHER.with(|l| l.borrow().clone());
    let mut command = match launcher.split_first() {
        None => direct,
        Some((program, first)) => {
            let mut through = Command::new(program);
            through
                .args(first)
                .arg(direct.get_program())
                .args(direct.get_args());
            for (key, value) in direct.get_envs() {
                match value {
                    Some(v) => through.env(key, v),
                    None => through.env_remove(key),
                };
            }
            through
        }
    };
    command
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

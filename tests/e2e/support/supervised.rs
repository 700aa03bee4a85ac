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
        let home = Home::with_config(&format!(
            r#"{{"address": "127.0.0.1:0", "heartbeat_interval": "500ms", "danger_zone": {{"allow_loopback": true}}, {extra}
                "contracts": {{"{}": {{"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}}}}"#,
            standin.net.contract_url()
        ));
        std::fs::copy(relay_bin(), home.file("wireleap-relay")).unwrap();
        let key: String = serde_json::from_str(&home.read("key.pub")).unwrap();
        let log = std::fs::File::create(home.file("supervisor.log")).unwrap();
        let supervisor = Command::new(sibling_bin("wireleap-relay-supervisor"))
            .args(args)
            .env("WIRELEAP_RELAY_HOME", home.path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
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
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
    }
}

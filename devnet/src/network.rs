//! Starting the devnet servers and the in-process handle on them.
//!
//! [`Devnet::start`] binds the three servers (port 0 allowed), records their URLs, and
//! serves them on tasks that stop when the [`Devnet`] is dropped or [`Devnet::shutdown`]
//! is called. Keys come from `--state-dir` (`contract.seed`, `directory.seed`, JSON strings
//! in the `key.seed` form) or are generated.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wireleap_protocol::{Contract, PublicKey, RelayEntry, Seed, Servicekey, SigningKey};

use crate::state::{Down, Inner, RecordedRequest, Server, Shared, State, Switches, Urls};
use crate::web::Ctx;

/// Errors starting the devnet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not bind.
    #[error("could not bind {server} on {addr}: {source}")]
    Bind {
        /// Which server.
        server: &'static str,
        /// Requested address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file could not be read, parsed or written.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// How to start a devnet.
#[derive(Debug, Clone)]
pub struct Config {
    /// Contract listen address (`127.0.0.1:0` by default).
    pub contract_addr: SocketAddr,
    /// Directory listen address.
    pub directory_addr: SocketAddr,
    /// Release server listen address.
    pub releases_addr: SocketAddr,
    /// Release root (served statically; its `channels.json` feeds the directory).
    pub releases_root: Option<PathBuf>,
    /// Where keys are kept; `None` = fresh keys every start.
    pub state_dir: Option<PathBuf>,
    /// Initial switches.
    pub switches: Switches,
}

impl Default for Config {
    fn default() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            contract_addr: any,
            directory_addr: any,
            releases_addr: any,
            releases_root: None,
            state_dir: None,
            switches: Switches::default(),
        }
    }
}

/// The ready line: what a started devnet prints (one JSON line) and writes to `--ready-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Contract base URL.
    pub contract: String,
    /// Directory base URL.
    pub directory: String,
    /// Release server base URL.
    pub releases: String,
    /// The contract's public key (the contract id).
    pub contract_pubkey: PublicKey,
    /// The directory's public key.
    pub directory_pubkey: PublicKey,
}

/// A running devnet. Dropping it stops the servers.
#[derive(Debug)]
pub struct Devnet {
    shared: Shared,
    ready: Ready,
    tasks: Vec<JoinHandle<()>>,
}

fn load_or_create_key(dir: &Path, name: &str) -> Result<SigningKey, Error> {
    let path = dir.join(name);
    let err = |reason: String| Error::KeyFile {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let seed: Seed = serde_json::from_str(text.trim())
                .or_else(|_| Seed::try_from_b64(text.trim()).map_err(|e| e.to_string()))
                .map_err(err)?;
            Ok(seed.signing_key())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let seed = Seed::generate();
            let text = serde_json::to_string(&seed).map_err(|e| err(e.to_string()))?;
            // The seed is a secret: owner-only from creation on.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(text.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            Ok(seed.signing_key())
        }
        Err(e) => Err(err(e.to_string())),
    }
}

async fn bind(server: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        server,
        addr,
        source,
    })
}

fn url_of(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default()
}

fn refuses(server: Server, m: &BTreeMap<Server, Down>) -> bool {
    m.get(&server) == Some(&Down::Refuse)
}

/// Serves `server`, closing its listener while it is set to [`Down::Refuse`] and rebinding
/// the same address when it is set back. Connections already open drain on their own tasks.
async fn listen_loop(
    server: Server,
    listener: TcpListener,
    router: axum::Router,
    mut rx: watch::Receiver<BTreeMap<Server, Down>>,
) {
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(server = server.as_str(), error = %e, "devnet: no local address");
            return;
        }
    };
    let mut listener = Some(listener);
    let mut serving = tokio::task::JoinSet::new();
    loop {
        if refuses(server, &rx.borrow_and_update()) {
            drop(listener.take());
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    // The previous listener may not be closed yet: retry shortly.
                    tracing::debug!(server = server.as_str(), error = %e, "devnet: rebind");
                    tokio::time::sleep(REBIND_PAUSE).await;
                    continue;
                }
            },
        };
        let mut stop_rx = rx.clone();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            loop {
                if refuses(server, &stop_rx.borrow_and_update()) {
                    break;
                }
                if stop_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            let _ = stopped_tx.send(());
        };
        let app = router.clone();
        serving.spawn(async move {
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                tracing::error!(server = server.as_str(), error = %e, "devnet: server stopped");
            }
        });
        // Wait until this listener is told to stop, then loop to wait for `up`.
        if stopped_rx.await.is_err() {
            return;
        }
        // Reap finished servers; the one just stopped finishes once its connections drain.
        while serving.try_join_next().is_some() {}
    }
}

/// Pause between attempts to rebind a listener that comes back up.
const REBIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

impl Devnet {
    /// Binds and starts the contract, directory and release servers.
    ///
    /// # Errors
    /// [`Error::Bind`] or [`Error::KeyFile`].
    pub async fn start(cfg: Config) -> Result<Self, Error> {
        let (contract_key, directory_key) = match &cfg.state_dir {
            Some(d) => (
                load_or_create_key(d, "contract.seed")?,
                load_or_create_key(d, "directory.seed")?,
            ),
            None => (
                wireleap_protocol::keys::generate_signing_key(),
                wireleap_protocol::keys::generate_signing_key(),
            ),
        };
        let lc = bind("contract", cfg.contract_addr).await?;
        let ld = bind("directory", cfg.directory_addr).await?;
        let lr = bind("releases", cfg.releases_addr).await?;
        let urls = Urls {
            contract: url_of(&lc),
            directory: url_of(&ld),
            releases: url_of(&lr),
        };
        let shared: Shared = Arc::new(Inner {
            contract_key,
            directory_key,
            releases_root: cfg.releases_root.clone(),
            urls: OnceLock::new(),
            state: Mutex::new(State {
                switches: cfg.switches.clone(),
                ..State::default()
            }),
            down_tx: tokio::sync::watch::Sender::new(cfg.switches.down.clone()),
        });
        let _ = shared.urls.set(urls.clone());
        let ready = Ready {
            contract: urls.contract,
            directory: urls.directory,
            releases: urls.releases,
            contract_pubkey: PublicKey::from(&shared.contract_key),
            directory_pubkey: PublicKey::from(&shared.directory_key),
        };
        let mut tasks = Vec::new();
        for (server, listener) in [
            (Server::Contract, lc),
            (Server::Directory, ld),
            (Server::Releases, lr),
        ] {
            let router = crate::router(server, shared.clone());
            let rx = shared.down_tx.subscribe();
            tasks.push(tokio::spawn(listen_loop(server, listener, router, rx)));
        }
        Ok(Self {
            shared,
            ready,
            tasks,
        })
    }

    /// The bound URLs and public keys.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The contract base URL.
    pub fn contract_url(&self) -> &str {
        &self.ready.contract
    }

    /// The directory base URL.
    pub fn directory_url(&self) -> &str {
        &self.ready.directory
    }

    /// The release server base URL.
    pub fn releases_url(&self) -> &str {
        &self.ready.releases
    }

    /// The contract's signing key (tests sign servicekeys directly with it).
    pub fn contract_key(&self) -> &SigningKey {
        &self.shared.contract_key
    }

    /// The directory's signing key.
    pub fn directory_key(&self) -> &SigningKey {
        &self.shared.directory_key
    }

    /// A servicekey activated directly with the contract key (no HTTP), with the current
    /// settlement window settings.
    pub fn mint_servicekey(&self) -> Servicekey {
        let ctx = Ctx {
            shared: self.shared.clone(),
            server: Server::Contract,
        };
        let c: Contract = crate::contract::sign_window(&ctx);
        Servicekey::from_signing_key(wireleap_protocol::keys::generate_signing_key(), Some(c))
    }

    /// Every request recorded so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().log.iter().cloned().collect()
    }

    /// Requests seen by one server.
    pub fn requests_to(&self, server: Server) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.server == server)
            .cloned()
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// The enrolled relays.
    pub fn enrolled(&self) -> Vec<RelayEntry> {
        self.shared.lock().relays.values().cloned().collect()
    }

    /// A relay's available balance at the contract.
    pub fn balance(&self, relay: &PublicKey) -> i64 {
        self.shared
            .lock()
            .accounts
            .get(relay)
            .map(|a| a.available)
            .unwrap_or(0)
    }

    /// Credits `amount` to a relay's available balance, as accepted sharetokens would (for
    /// tests of withdrawals that need no tokens).
    pub fn credit(&self, relay: &PublicKey, amount: i64) {
        let mut s = self.shared.lock();
        let acct = s.accounts.entry(*relay).or_default();
        acct.available = acct.available.saturating_add(amount);
    }

    /// Reads and edits the switches atomically.
    pub fn with_switches<T>(&self, f: impl FnOnce(&mut Switches) -> T) -> T {
        self.shared.edit_switches(f)
    }

    /// Require (or not) the bcrypt challenge on first enrollment.
    pub fn set_challenge(&self, enabled: bool, cost: u32) {
        self.with_switches(|s| {
            s.require_challenge = enabled;
            s.challenge_cost = cost;
        });
    }

    /// Force an upgrade notice for `channel` (or clear it with `None`).
    pub fn force_upgrade(&self, channel: &str, version: Option<&str>) {
        self.with_switches(|s| match version {
            Some(v) => {
                s.forced_upgrade.insert(channel.to_owned(), v.to_owned());
            }
            None => {
                s.forced_upgrade.remove(channel);
            }
        });
    }

    /// Set a relay channel version at run time (or clear it with `None`).
    pub fn set_channel(&self, channel: &str, version: Option<&str>) {
        self.with_switches(|s| match version {
            Some(v) => {
                s.channels.insert(channel.to_owned(), v.to_owned());
            }
            None => {
                s.channels.remove(channel);
            }
        });
    }

    /// Simulate a server being down (or back up).
    pub fn set_down(&self, server: Server, mode: Down) {
        self.with_switches(|s| {
            s.down.insert(server, mode);
        });
    }

    /// Make a server answer another interface version (or its own with `None`).
    pub fn set_version(&self, server: Server, version: Option<&str>) {
        self.with_switches(|s| match version {
            Some(v) => {
                s.version_override.insert(server, v.to_owned());
            }
            None => {
                s.version_override.remove(&server);
            }
        });
    }

    /// The contract answers 500 to the next `count` requests (`u64::MAX` = until reset).
    pub fn set_contract_500(&self, count: u64) {
        self.with_switches(|s| s.contract_fail_500 = count);
    }

    /// Stops the servers and waits for their tasks.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

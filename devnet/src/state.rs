//! The devnet's shared state: keys, runtime switches, enrolled relays, balances, and the
//! record of every request the servers saw.
//!
//! One [`Shared`] value backs all three servers, so a switch set through any server's admin
//! API (or in-process through [`crate::Devnet`]) applies at once. Locks are held only for
//! short, non-async sections; bcrypt and signature checks run outside them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wireleap_protocol::{PublicKey, RelayEntry, Role, Sharetoken, SigningKey};

/// Which of the devnet's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// The service contract.
    Contract,
    /// The directory.
    Directory,
    /// The release file server.
    Releases,
}

impl Server {
    /// Lowercase name, as in the ready line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Contract => "contract",
            Self::Directory => "directory",
            Self::Releases => "releases",
        }
    }
}

/// How a server that is "down" answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Down {
    /// Answers normally.
    Up,
    /// Answers every non-admin request with 503 and a status body.
    Unavailable,
    /// Sends response headers, then drops the connection before the body completes.
    Close,
    /// Closes the listener: new connections are refused until the server is set `up`
    /// again (it rebinds the same port). Requests on connections already open get 503.
    Refuse,
}

/// One request a server saw (admin requests under `/_devnet/` are not recorded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Which server saw it.
    pub server: Server,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body as UTF-8 (lossy).
    pub body: String,
    /// Arrival time, unix milliseconds.
    pub time_ms: u64,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Runtime switches, all settable through the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Switches {
    /// Demand a bcrypt challenge on a relay's first enrollment.
    pub require_challenge: bool,
    /// bcrypt cost of challenges.
    pub challenge_cost: u32,
    /// Per channel: answer every heartbeat with an upgrade notice for this version,
    /// whatever the relay runs.
    pub forced_upgrade: BTreeMap<String, String>,
    /// Relay channels set at run time (overlay on `channels.json`).
    pub channels: BTreeMap<String, String>,
    /// Down mode of each server.
    pub down: BTreeMap<Server, Down>,
    /// Interface version a server claims instead of its real one (reply header and gate).
    pub version_override: BTreeMap<Server, String>,
    /// The contract answers 500 to this many further non-admin requests (`u64::MAX` = until
    /// switched off).
    pub contract_fail_500: u64,
    /// The contract answers every `/submit` with 400 "settlement window already closed" (the
    /// reference contract's answer once a token's window has closed), whatever the token's
    /// window says.
    #[serde(default)]
    pub settlement_closed: bool,
    /// `settlement_open` of new activations = now + this many seconds.
    pub servicekey_duration_secs: u64,
    /// `settlement_close` = `settlement_open` + this many seconds.
    pub submission_window_secs: u64,
    /// Balance units credited per accepted sharetoken.
    pub credit_per_token: i64,
    /// Enrollment keys per role; a role with keys is restricted.
    pub enrollment_keys: BTreeMap<Role, Vec<String>>,
    /// Release server: stall (stop sending, keep the connection) after this many bytes.
    pub stall_after_bytes: Option<u64>,
    /// Release server: answer every file with an endless body.
    pub endless: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            require_challenge: false,
            challenge_cost: 4,
            forced_upgrade: BTreeMap::new(),
            channels: BTreeMap::new(),
            down: BTreeMap::new(),
            version_override: BTreeMap::new(),
            contract_fail_500: 0,
            settlement_closed: false,
            servicekey_duration_secs: 600,
            submission_window_secs: 3600,
            credit_per_token: 1,
            enrollment_keys: BTreeMap::new(),
            stall_after_bytes: None,
            endless: false,
        }
    }
}

/// A withdrawal record (spec §5.7 shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withdrawal {
    /// Identifier.
    pub id: String,
    /// `pending`, `complete` or `failed`.
    pub state: String,
    /// Unix seconds of the last state change.
    pub state_changed: i64,
    /// Amount.
    pub amount: i64,
    /// Type (the relay sends `wireleap_protocol::signed::WITHDRAWAL_TYPE`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Destination.
    pub destination: String,
    /// Receipt (raw JSON, `null` here).
    pub receipt: serde_json::Value,
}

/// Per-relay ledger at the contract.
#[derive(Debug, Clone, Default)]
pub(crate) struct Account {
    pub(crate) available: i64,
    pub(crate) tokens: Vec<Sharetoken>,
    pub(crate) withdrawals: Vec<Withdrawal>,
}

/// Mutable state behind the lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) switches: Switches,
    /// Enrolled relays by key.
    pub(crate) relays: BTreeMap<PublicKey, RelayEntry>,
    /// Challenges issued and not yet answered.
    pub(crate) challenges: HashSet<String>,
    /// Accepted sharetoken ids (replay protection at the contract).
    pub(crate) seen_tokens: HashSet<String>,
    /// Contract ledger per relay.
    pub(crate) accounts: HashMap<PublicKey, Account>,
    /// Idempotency cache of successful POST replies: (path, key) → (code, body).
    pub(crate) idempotency: HashMap<(String, String), (u16, String)>,
    /// Recorded requests.
    pub(crate) log: std::collections::VecDeque<RecordedRequest>,
}

/// Shared by every server of one devnet.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) contract_key: SigningKey,
    pub(crate) directory_key: SigningKey,
    pub(crate) releases_root: Option<PathBuf>,
    pub(crate) urls: OnceLock<Urls>,
    pub(crate) state: Mutex<State>,
    /// Publishes the down modes to the listener loops (for [`Down::Refuse`]).
    pub(crate) down_tx: tokio::sync::watch::Sender<BTreeMap<Server, Down>>,
}

/// The bound base URLs of the three servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Urls {
    /// Contract base URL, `http://127.0.0.1:PORT`.
    pub contract: String,
    /// Directory base URL.
    pub directory: String,
    /// Release server base URL.
    pub releases: String,
}

/// Cheap handle on [`Inner`].
pub(crate) type Shared = Arc<Inner>;

/// How many recorded requests are kept (oldest dropped first).
pub(crate) const MAX_RECORDED: usize = 10_000;
/// Largest request body a server reads.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Default idle pause of a stalled download before it is dropped.
pub(crate) const STALL_HOLD: Duration = Duration::from_secs(3600);

impl Inner {
    /// Locks the state; a poisoned lock (a panicked handler) still yields the data, since
    /// every mutation is a single assignment or push.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Edits the switches and publishes the down modes to the listener loops.
    pub(crate) fn edit_switches<T>(&self, f: impl FnOnce(&mut Switches) -> T) -> T {
        let (out, down) = {
            let mut st = self.lock();
            let out = f(&mut st.switches);
            (out, st.switches.down.clone())
        };
        self.down_tx.send_if_modified(|d| {
            let changed = *d != down;
            *d = down;
            changed
        });
        out
    }

    pub(crate) fn urls(&self) -> Urls {
        self.urls.get().cloned().unwrap_or(Urls {
            contract: String::new(),
            directory: String::new(),
            releases: String::new(),
        })
    }

    pub(crate) fn record(&self, r: RecordedRequest) {
        let mut st = self.lock();
        if st.log.len() >= MAX_RECORDED {
            st.log.pop_front();
        }
        st.log.push_back(r);
    }
}

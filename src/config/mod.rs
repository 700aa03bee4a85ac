//! `config.json`: loading, validation and the typed [`Config`] (spec §2).
//!
//! The file is read as JSON, then walked key by key. Every problem is collected with its key
//! path before anything is returned, so an operator fixes them all in one edit. The walker knows
//! every key the reference relay writes (its migrations write out every defaulted key, often as
//! `null`), so a config written by a reference relay loads unchanged. An unknown key is an error
//! that names it and, when one is close, the valid key that was probably meant.
//!
//! [`load`] is the only entry point: `start`, `check-config`, `reload` and the supervisor all call
//! it, so they agree on what is valid. A [`Config`] only holds valid states: nothing downstream
//! re-validates it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

pub use wireleap_home::value::{
    FormatError, format_datasize, format_duration, parse_datasize, parse_duration,
};

/// Default tick of the sharetoken submission scheduler (reference `5m0s`).
pub const DEFAULT_AUTO_SUBMIT_INTERVAL: Duration = Duration::from_secs(300);
/// Default outgoing dial timeout (reference `5s`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default per-direction copy buffer in bytes (reference 4096).
pub const DEFAULT_BUFSIZE: usize = 4096;
/// Default `network_usage.write_interval` when the key is absent (reference: 1 minute).
pub const DEFAULT_WRITE_INTERVAL: Duration = Duration::from_secs(60);
/// Default mode of the REST API unix socket (reference `"600"`).
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Default heartbeat interval (the reference's fixed 5 minutes, spec §4.5).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(300);
/// Default `release_check_interval`: how often the release server's channel information and
/// rollout documents are fetched.
pub const DEFAULT_RELEASE_CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// Default `release_stale_after`: release information older than this is reported as stale.
pub const DEFAULT_RELEASE_STALE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The channel a single contract follows when it names none (spec §2.3 rule 4).
pub const DEFAULT_CHANNEL: &str = "default";
/// An example `metrics.address` for error messages and docs (Prometheus's exporter port range).
pub const EXAMPLE_METRICS_ADDRESS: &str = "127.0.0.1:9101";

/// A validated relay configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listen address of the TLS/HTTP/2 server, as written (`host:port`).
    pub address: ListenAddress,
    /// Tick of the submission scheduler; `None` when the file sets 0 (submission disabled).
    pub auto_submit_interval: Option<Duration>,
    /// Archive of submitted sharetokens, relative to the home directory (spec §1.3 path rule).
    pub archive_dir: Option<PathBuf>,
    /// Maximum lifetime of one relayed connection; `None` = unlimited.
    pub maxtime: Option<Duration>,
    /// Outgoing dial timeout.
    pub timeout: Duration,
    /// Per-direction copy buffer in bytes.
    pub bufsize: NonZeroUsize,
    /// Network usage accounting and caps; `None` when disabled (spec §2.5).
    pub network_usage: Option<NetworkUsage>,
    /// Service contracts, keyed by contract URL (at least one).
    pub contracts: BTreeMap<ContractUrl, Contract>,
    /// The REST status API; `None` when off.
    pub rest_api: Option<RestApi>,
    /// Act on upgrade notices from the directory.
    pub auto_upgrade: bool,
    /// Expert settings.
    pub danger_zone: DangerZone,
    /// How often each enrolled contract gets a heartbeat (our extension; the reference fixes
    /// 5 minutes).
    pub heartbeat_interval: Duration,
    /// The Prometheus metrics endpoint (our extension); `None` when off (the default).
    pub metrics: Option<Metrics>,
    /// Base URL of the signed releases the Upgrader downloads (our extension, spec §10 #11;
    /// layout in `releases/SPEC.md`); `None` = automatic upgrades cannot download.
    pub release_url: Option<url::Url>,
    /// How often the release server's channel information and the rollout documents of the
    /// running and the announced version are fetched (our extension).
    pub release_check_interval: Duration,
    /// Release information older than this is reported as stale in `status`, the metrics and
    /// the log: an outage or an attacker may be hiding new releases (our extension).
    pub release_stale_after: Duration,
    /// How the supervisor judges a new version (our extension); unset keys keep its defaults.
    pub supervisor: SupervisorSettings,
}

impl Config {
    /// The contract whose `upgrade_channel` the relay follows, and that channel (spec §2.3, §10 #9).
    pub fn upgrade_channel(&self) -> Option<(&ContractUrl, &str)> {
        self.contracts
            .iter()
            .find_map(|(url, c)| c.upgrade_channel.as_deref().map(|ch| (url, ch)))
    }
}

/// The listen address: `host:port` where host may be a name, an IPv4 or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    /// Host part, without brackets.
    pub host: String,
    /// TCP port (0 = any free port, useful for tests).
    pub port: u16,
}

impl ListenAddress {
    /// The address as a socket address when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A service contract URL, as written in the config (the map key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContractUrl(String);

impl ContractUrl {
    /// The URL text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContractUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The role a relay plays in a contract's circuits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// First hop: the client's entry point.
    Fronting,
    /// Middle hops.
    Entropic,
    /// Last hop: dials the target.
    Backing,
}

impl Role {
    /// The role's name on the wire and in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Fronting => "fronting",
            Role::Entropic => "entropic",
            Role::Backing => "backing",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The enrollment key (`user:password` by convention). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentKey(String);

impl EnrollmentKey {
    /// The key text, for the enrollment body only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EnrollmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrollmentKey(<redacted>)")
    }
}

/// One entry of `contracts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// The relay's public address advertised to the directory (`wireleap://` or `https://`).
    pub address: Url,
    /// The relay's role in this contract.
    pub role: Role,
    /// Enrollment key sent to the directory, if any.
    pub key: Option<EnrollmentKey>,
    /// The upgrade channel, set on exactly one contract after validation.
    pub upgrade_channel: Option<String>,
    /// Per-contract cap per period, in bytes.
    pub network_usage_limit: Option<u64>,
}

/// `network_usage` when accounting is on.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkUsage {
    /// Period length.
    pub timeframe: Duration,
    /// Cap on all relayed bytes per period.
    pub global_limit: Option<u64>,
    /// How often `stats.json` is written.
    pub write_interval: Duration,
    /// Archive of finished periods, relative to the home directory.
    pub archive_dir: Option<PathBuf>,
}

/// Where the REST status API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestAddress {
    /// `file:///path`: a unix socket.
    Unix(PathBuf),
    /// `http://host:port`.
    Http(String),
}

/// `rest_api` when on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestApi {
    /// Where it listens.
    pub address: RestAddress,
    /// Mode given to the unix socket file (`socket_umask`, despite the name).
    pub socket_mode: u32,
}

/// `metrics` when on: where `GET /metrics` is served (plain HTTP; see `src/metrics.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// The IP address and port to listen on (port 0 = any free port, for tests).
    pub address: SocketAddr,
}

/// `supervisor` (our extension): read by `wireleap-relay-supervisor` when it starts (through the
/// hidden `supervisor-settings` command), so that `wireleap-relay start` needs no flags. A flag
/// given to the supervisor wins over these. The type is the one the supervisor reads.
pub type SupervisorSettings = wireleap_home::control::Waits;

/// The smallest `supervisor.max_memory` accepted (a relay needs more to start).
pub const MIN_SUPERVISOR_MEMORY: u64 = 16 << 20;

/// The longest `supervisor.health_window` and `supervisor.ready_timeout` accepted.
pub const MAX_SUPERVISOR_WAIT: Duration = Duration::from_secs(3600);

/// `danger_zone`: settings for tests and experts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DangerZone {
    /// Allow dialing loopback and unspecified addresses.
    pub allow_loopback: bool,
}

/// One problem in a config file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `contracts["https://c1.example"].role`.
    pub path: String,
    /// What is wrong, without echoing secrets.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A config that did not load.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("could not read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{} is not valid JSON: {message} at line {line}, column {column}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The file is JSON but some values are wrong.
    #[error("{} has {} problem{}:\n{}", path.display(), problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

/// A config that loaded, with notes about deprecated forms it used.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated config.
    pub config: Config,
    /// Deprecations and other non-fatal notes, each with its key path.
    pub warnings: Vec<Problem>,
}

/// Reads and validates a config file.
///
/// # Errors
/// [`Error::Read`], [`Error::Syntax`], or [`Error::Invalid`] with every problem found.
pub fn load(path: &Path) -> Result<Loaded, Error> {
    let text = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|e| e.at(path))
}

/// Validates config text; errors carry an empty path until [`load`] sets it.
///
/// # Errors
/// As [`load`].
pub fn parse(text: &[u8]) -> Result<Loaded, Error> {
    let value: Value = serde_json::from_slice(text).map_err(|e| Error::Syntax {
        path: PathBuf::new(),
        message: syntax_message(&e),
        line: e.line(),
        column: e.column(),
    })?;
    let mut walker = Walker::default();
    let config = walker.config(&value);
    match config {
        Some(config) if walker.problems.is_empty() => Ok(Loaded {
            config,
            warnings: walker.warnings,
        }),
        _ => Err(Error::Invalid {
            path: PathBuf::new(),
            problems: walker.problems,
        }),
    }
}

impl Error {
    fn at(mut self, file: &Path) -> Self {
        match &mut self {
            Error::Read { path, .. } | Error::Syntax { path, .. } | Error::Invalid { path, .. } => {
                *path = file.to_owned();
            }
        }
        self
    }

    /// Every problem, for callers that print them one per line.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Error::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// serde_json's message without its trailing " at line L column C" (we print those ourselves).
fn syntax_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

// === the walker ===

const TOP_KEYS: &[&str] = &[
    "address",
    "auto_submit_interval",
    "archive_dir",
    "maxtime",
    "timeout",
    "bufsize",
    "network_usage",
    "rest_api",
    "contracts",
    "auto_upgrade",
    "danger_zone",
    // Our extensions (ignored by a reference relay, which ignores unknown keys).
    "heartbeat_interval",
    "metrics",
    "release_url",
    "release_check_interval",
    "release_stale_after",
    "supervisor",
];
const NETWORK_USAGE_KEYS: &[&str] = &["timeframe", "global_limit", "write_interval", "archive_dir"];
const REST_API_KEYS: &[&str] = &["address", "addr", "socket_umask"];
const DANGER_ZONE_KEYS: &[&str] = &["allow_loopback"];
const METRICS_KEYS: &[&str] = &["address"];
const SUPERVISOR_KEYS: &[&str] = &[
    "health_window",
    "ready_timeout",
    "max_memory",
    "liveness",
    "probe_count",
    "refused_margin",
    "require_enrollment",
];
const CONTRACT_KEYS: &[&str] = &[
    "role",
    "address",
    "key",
    "upgrade_channel",
    "update_channel",
    "network_usage_limit",
    // Fields of the shared relay-entry type: accepted and ignored (the daemon fills its own).
    "pubkey",
    "version",
    "versions",
];

#[derive(Default)]
struct Walker {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Walker {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// An object at `path`, with unknown keys reported. `None` (after reporting) if not an object.
    fn object<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            self.problem(path, format!("expected an object, found {}", kind(value)));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let at = join(path, key);
                let message = match nearest(key, known) {
                    Some(near) => format!("unknown key (did you mean \"{near}\"?)"),
                    None => format!("unknown key (valid keys here: {})", known.join(", ")),
                };
                self.problem(&at, message);
            }
        }
        Some(map)
    }

    fn config(&mut self, root: &Value) -> Option<Config> {
        let map = self.object("(top level)", root, TOP_KEYS)?;
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());

        let address = match get("address") {
            None => {
                self.problem(
                    "address",
                    "'address' has to be set (the host:port to listen on)",
                );
                None
            }
            Some(v) => self
                .string("address", v)
                .and_then(|s| self.listen_address(s)),
        };
        let auto_submit_interval = self
            .duration_or(
                "auto_submit_interval",
                get("auto_submit_interval"),
                DEFAULT_AUTO_SUBMIT_INTERVAL,
            )
            .map(nonzero);
        let archive_dir = get("archive_dir").and_then(|v| self.home_path("archive_dir", v));
        let maxtime = self
            .duration_or("maxtime", get("maxtime"), Duration::ZERO)
            .map(nonzero);
        let timeout = self.duration_or("timeout", get("timeout"), DEFAULT_TIMEOUT);
        let heartbeat_interval = self
            .duration_or(
                "heartbeat_interval",
                get("heartbeat_interval"),
                DEFAULT_HEARTBEAT_INTERVAL,
            )
            .and_then(|d| {
                if d < Duration::from_millis(100) {
                    self.problem("heartbeat_interval", "must be at least 100ms");
                    None
                } else {
                    Some(d)
                }
            });
        let release_url = match get("release_url") {
            None => Some(None),
            Some(v) => self.string("release_url", v).and_then(|s| {
                match relay_release::Layout::try_new(s) {
                    Ok(layout) => Some(Some(layout.base().clone())),
                    Err(e) => {
                        self.problem("release_url", e.to_string());
                        None
                    }
                }
            }),
        };
        let at_least_a_second = |me: &mut Self, key: &str, d: Duration| {
            if d < Duration::from_secs(1) {
                me.problem(key, "must be at least 1s");
                None
            } else {
                Some(d)
            }
        };
        let release_check_interval = self
            .duration_or(
                "release_check_interval",
                get("release_check_interval"),
                DEFAULT_RELEASE_CHECK_INTERVAL,
            )
            .and_then(|d| at_least_a_second(self, "release_check_interval", d));
        let release_stale_after = self
            .duration_or(
                "release_stale_after",
                get("release_stale_after"),
                DEFAULT_RELEASE_STALE_AFTER,
            )
            .and_then(|d| at_least_a_second(self, "release_stale_after", d));
        let bufsize = match get("bufsize") {
            None => NonZeroUsize::new(DEFAULT_BUFSIZE),
            Some(v) => match v.as_u64().map(usize::try_from) {
                // Go omits a zero bufsize when writing, so 0 means the default.
                Some(Ok(0)) => NonZeroUsize::new(DEFAULT_BUFSIZE),
                Some(Ok(n)) if n <= 16 << 20 => NonZeroUsize::new(n),
                _ => {
                    self.problem(
                        "bufsize",
                        format!(
                            "expected a whole number of bytes from 1 to 16777216, found {}",
                            show(v)
                        ),
                    );
                    None
                }
            },
        };
        let network_usage = match get("network_usage") {
            None => Some(None),
            Some(v) => self.network_usage(v),
        };
        let contracts = match get("contracts") {
            None => {
                self.problem(
                    "contracts",
                    "'contracts' have to be set (at least one service contract)",
                );
                None
            }
            Some(v) => self.contracts(v),
        };
        let rest_api = match get("rest_api") {
            None => Some(None),
            Some(v) => self.rest_api(v),
        };
        let auto_upgrade = match get("auto_upgrade") {
            None => Some(true),
            Some(v) => self.boolean("auto_upgrade", v),
        };
        let metrics = match get("metrics") {
            None => Some(None),
            Some(v) => self.metrics(v),
        };
        let supervisor = match get("supervisor") {
            None => Some(SupervisorSettings::default()),
            Some(v) => self.supervisor(v),
        };
        let danger_zone = match get("danger_zone") {
            None => Some(DangerZone::default()),
            Some(v) => self
                .object("danger_zone", v, DANGER_ZONE_KEYS)
                .and_then(|m| {
                    let allow_loopback = match m.get("allow_loopback").filter(|v| !v.is_null()) {
                        None => Some(false),
                        Some(v) => self.boolean("danger_zone.allow_loopback", v),
                    };
                    Some(DangerZone {
                        allow_loopback: allow_loopback?,
                    })
                }),
        };

        Some(Config {
            address: address?,
            auto_submit_interval: auto_submit_interval?,
            archive_dir,
            maxtime: maxtime?,
            timeout: timeout?,
            bufsize: bufsize?,
            network_usage: network_usage?,
            contracts: contracts?,
            rest_api: rest_api?,
            auto_upgrade: auto_upgrade?,
            danger_zone: danger_zone?,
            heartbeat_interval: heartbeat_interval?,
            metrics: metrics?,
            release_url: release_url?,
            release_check_interval: release_check_interval?,
            release_stale_after: release_stale_after?,
            supervisor: supervisor?,
        })
    }

    /// `supervisor`: `health_window` (0 commits as soon as the new version is ready) and
    /// `ready_timeout` (above 0), each at most [`MAX_SUPERVISOR_WAIT`].
    fn supervisor(&mut self, v: &Value) -> Option<SupervisorSettings> {
        let m = self.object("supervisor", v, SUPERVISOR_KEYS)?;
        let mut wait = |key: &str, zero_ok: bool| {
            let path = format!("supervisor.{key}");
            let Some(raw) = m.get(key).filter(|v| !v.is_null()) else {
                return Some(None);
            };
            let d = self.duration_or(&path, Some(raw), Duration::ZERO)?;
            if d > MAX_SUPERVISOR_WAIT || (d.is_zero() && !zero_ok) {
                let low = if zero_ok { "0s" } else { "more than 0s" };
                self.problem(&path, format!("must be from {low} to 1h, found {d:?}"));
                return None;
            }
            Some(Some(d))
        };
        let health_window = wait("health_window", true);
        let ready_timeout = wait("ready_timeout", false);
        let liveness = wait("liveness", true);
        let max_memory = match m.get("max_memory").filter(|v| !v.is_null()) {
            None => Some(None),
            Some(raw) => match self.datasize_or("supervisor.max_memory", Some(raw)) {
                Some(bytes) if bytes < MIN_SUPERVISOR_MEMORY => {
                    self.problem(
                        "supervisor.max_memory",
                        format!("must be at least 16MB, found {}", format_datasize(bytes)),
                    );
                    None
                }
                Some(bytes) => Some(Some(bytes)),
                None => None,
            },
        };
        let mut small = |key: &str, max: u32| {
            let path = format!("supervisor.{key}");
            let Some(raw) = m.get(key).filter(|v| !v.is_null()) else {
                return Some(None);
            };
            match raw.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n <= max => Some(Some(n)),
                _ => {
                    self.problem(
                        &path,
                        format!("must be a whole number from 0 to {max}, found {raw}"),
                    );
                    None
                }
            }
        };
        let probe_count = small("probe_count", 20);
        let refused_margin = small("refused_margin", 100);
        let require_enrollment = match m.get("require_enrollment").filter(|v| !v.is_null()) {
            None => Some(None),
            Some(raw) => self.boolean("supervisor.require_enrollment", raw).map(Some),
        };
        Some(SupervisorSettings {
            health_window: health_window?,
            ready_timeout: ready_timeout?,
            max_memory: max_memory?,
            liveness: liveness?,
            probe_count: probe_count?,
            refused_margin: refused_margin?,
            require_enrollment: require_enrollment?,
        })
    }

    fn listen_address(&mut self, text: &str) -> Option<ListenAddress> {
        let bad =
            |why: &str| format!("{why}: {text:?} (expected host:port, e.g. \"0.0.0.0:13499\")");
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            match rest.split_once("]:") {
                Some((h, p)) => (h, p),
                None => {
                    self.problem("address", bad("malformed IPv6 address"));
                    return None;
                }
            }
        } else {
            match text.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    self.problem("address", bad("IPv6 addresses must be in brackets"));
                    return None;
                }
                Some((h, p)) => (h, p),
                None => {
                    self.problem("address", bad("missing port"));
                    return None;
                }
            }
        };
        match port.parse::<u16>() {
            Ok(port) => Some(ListenAddress {
                host: host.to_owned(),
                port,
            }),
            Err(_) => {
                self.problem("address", bad("invalid port"));
                None
            }
        }
    }

    fn network_usage(&mut self, v: &Value) -> Option<Option<NetworkUsage>> {
        let m = self.object("network_usage", v, NETWORK_USAGE_KEYS)?;
        let get = |k: &str| m.get(k).filter(|v| !v.is_null());
        let timeframe =
            self.duration_or("network_usage.timeframe", get("timeframe"), Duration::ZERO);
        let global_limit = self.datasize_or("network_usage.global_limit", get("global_limit"));
        let write_interval = self.duration_or(
            "network_usage.write_interval",
            get("write_interval"),
            DEFAULT_WRITE_INTERVAL,
        );
        let archive_dir =
            get("archive_dir").and_then(|v| self.home_path("network_usage.archive_dir", v));
        let (timeframe, global_limit, write_interval) =
            (timeframe?, global_limit?, write_interval?);
        if timeframe.is_zero() {
            return Some(None);
        }
        if write_interval.is_zero() {
            self.warn(
                "network_usage.write_interval",
                "is 0, which disables network usage accounting",
            );
            return Some(None);
        }
        Some(Some(NetworkUsage {
            timeframe,
            global_limit: (global_limit > 0).then_some(global_limit),
            write_interval,
            archive_dir,
        }))
    }

    /// `metrics`: off unless `metrics.address` is set to an IP literal and port.
    fn metrics(&mut self, v: &Value) -> Option<Option<Metrics>> {
        let m = self.object("metrics", v, METRICS_KEYS)?;
        let Some(raw) = m.get("address").filter(|v| !v.is_null()) else {
            return Some(None);
        };
        let text = self.string("metrics.address", raw)?;
        match text.parse::<SocketAddr>() {
            Ok(address) => Some(Some(Metrics { address })),
            Err(_) => {
                self.problem(
                    "metrics.address",
                    format!(
                        "expected an IP address and port such as \"{EXAMPLE_METRICS_ADDRESS}\" or \"[::1]:9101\", found {text:?}"
                    ),
                );
                None
            }
        }
    }

    fn rest_api(&mut self, v: &Value) -> Option<Option<RestApi>> {
        let m = self.object("rest_api", v, REST_API_KEYS)?;
        let get = |k: &str| m.get(k).filter(|v| !v.is_null());
        let socket_mode = match get("socket_umask") {
            None => Some(DEFAULT_SOCKET_MODE),
            Some(v) => self.string("rest_api.socket_umask", v).and_then(|s| {
                let ok = s.len() == 3 && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
                match (ok, u32::from_str_radix(s, 8)) {
                    (true, Ok(mode)) => Some(mode),
                    _ => {
                        self.problem(
                            "rest_api.socket_umask",
                            format!("expected three octal digits such as \"600\", found {s:?}"),
                        );
                        None
                    }
                }
            }),
        };
        let (key, raw) = match (get("address"), get("addr")) {
            (Some(v), _) => ("rest_api.address", Some(v)),
            (None, Some(v)) => ("rest_api.addr", Some(v)),
            (None, None) => ("rest_api.address", None),
        };
        let address = match raw {
            None => return socket_mode.map(|_| None),
            Some(v) => self.string(key, v).and_then(|s| self.rest_address(key, s)),
        };
        Some(Some(RestApi {
            address: address?,
            socket_mode: socket_mode?,
        }))
    }

    fn rest_address(&mut self, key: &str, text: &str) -> Option<RestAddress> {
        let url = match Url::parse(text) {
            Ok(url) => url,
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "invalid URL {text:?}: {e} (expected http://host:port or file:///path)"
                    ),
                );
                return None;
            }
        };
        match url.scheme() {
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    self.problem(
                        key,
                        "restapi address failed to validate: file path must start by \"file:///\" (an absolute path)",
                    );
                    return None;
                }
                Some(RestAddress::Unix(PathBuf::from(url.path())))
            }
            "http" => match (url.host_str(), url.port_or_known_default()) {
                (Some(host), Some(port)) if url.path() == "/" || url.path().is_empty() => {
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host.to_owned()
                    };
                    Some(RestAddress::Http(format!("{host}:{port}")))
                }
                _ => {
                    self.problem(
                        key,
                        format!("expected http://host:port with no path, found {text:?}"),
                    );
                    None
                }
            },
            other => {
                self.problem(
                    key,
                    format!("unsupported scheme {other:?} (use http://host:port or file:///path)"),
                );
                None
            }
        }
    }

    fn contracts(&mut self, v: &Value) -> Option<BTreeMap<ContractUrl, Contract>> {
        let Value::Object(map) = v else {
            self.problem(
                "contracts",
                format!(
                    "expected an object of contract URL to entry, found {}",
                    kind(v)
                ),
            );
            return None;
        };
        if map.is_empty() {
            self.problem(
                "contracts",
                "'contracts' have to be set (at least one service contract)",
            );
            return None;
        }
        let mut out = BTreeMap::new();
        let mut complete = true;
        for (url_text, entry) in map {
            let path = format!("contracts[{url_text:?}]");
            match Url::parse(url_text) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => {
                    self.problem(&path, "the key must be the contract's http(s) URL");
                    complete = false;
                }
            }
            match self.contract(&path, entry) {
                Some(c) => {
                    out.insert(ContractUrl(url_text.clone()), c);
                }
                None => complete = false,
            }
        }
        // Spec §2.3 rules 3 and 4: which contract names the upgrade channel. Counted from the
        // file, so an entry with another mistake still counts.
        let with_channel: Vec<&String> = map
            .iter()
            .filter(|(_, e)| {
                e.get("upgrade_channel")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            })
            .map(|(u, _)| u)
            .collect();
        if map.len() > 1 {
            if with_channel.len() > 1 {
                let names = with_channel
                    .iter()
                    .map(|u| format!("{u:?}"))
                    .collect::<Vec<_>>();
                self.problem(
                    "contracts",
                    format!(
                        "only 1 contract in 'contracts' can have an 'upgrade_channel' field set, found {}: {}",
                        names.len(),
                        names.join(", ")
                    ),
                );
                complete = false;
            } else if with_channel.is_empty() {
                self.problem(
                    "contracts",
                    "no contract in 'contracts' has an 'upgrade_channel' field set to watch for upgrades (set it on exactly one)",
                );
                complete = false;
            }
        } else if let Some(c) = out.values_mut().next() {
            c.upgrade_channel
                .get_or_insert_with(|| DEFAULT_CHANNEL.to_owned());
        }
        complete.then_some(out)
    }

    fn contract(&mut self, path: &str, v: &Value) -> Option<Contract> {
        let m = self.object(path, v, CONTRACT_KEYS)?;
        let get = |k: &str| m.get(k).filter(|v| !v.is_null());
        let role = match get("role") {
            None => {
                self.problem(
                    &join(path, "role"),
                    "has to be set (fronting, entropic or backing)",
                );
                None
            }
            Some(v) => self.string(&join(path, "role"), v).and_then(|s| match s {
                "fronting" => Some(Role::Fronting),
                "entropic" => Some(Role::Entropic),
                "backing" => Some(Role::Backing),
                other => {
                    self.problem(
                        &join(path, "role"),
                        format!(
                            "invalid relay role: {other} (expected fronting, entropic or backing)"
                        ),
                    );
                    None
                }
            }),
        };
        let address_key = join(path, "address");
        let address = match get("address") {
            None => {
                self.problem(&address_key, "relay entry address is null (set the relay's public wireleap://host:port address)");
                None
            }
            Some(v) => self.string(&address_key, v).and_then(|s| match Url::parse(s) {
                Ok(u) if u.scheme() == "wireleap" && u.host_str().is_some() && u.port().is_some() => Some(u),
                Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {
                    self.warn(&address_key, "the https:// scheme is deprecated, use wireleap://");
                    Some(u)
                }
                Ok(u) if matches!(u.scheme(), "wireleap" | "https") => {
                    self.problem(&address_key, format!("{s:?} needs a host and a port, e.g. wireleap://relay.example.com:13499"));
                    None
                }
                Ok(u) => {
                    self.problem(
                        &address_key,
                        format!("invalid relay URL scheme: {} (expected wireleap://host:port)", u.scheme()),
                    );
                    None
                }
                Err(e) => {
                    self.problem(&address_key, format!("invalid URL {s:?}: {e}"));
                    None
                }
            }),
        };
        let key = match get("key") {
            None => Some(None),
            Some(Value::String(s)) if s.is_empty() => Some(None),
            Some(Value::String(s)) => Some(Some(EnrollmentKey(s.clone()))),
            // Never echo the value: it is a secret.
            Some(other) => {
                self.problem(
                    &join(path, "key"),
                    format!("expected a string, found {}", kind(other)),
                );
                None
            }
        };
        let channel = |w: &mut Self, k: &str| match get(k) {
            None => Some(None),
            Some(v) => w
                .string(&join(path, k), v)
                .map(|s| (!s.is_empty()).then(|| s.to_owned())),
        };
        let upgrade_channel = channel(self, "upgrade_channel");
        let update_channel = channel(self, "update_channel");
        if matches!(update_channel, Some(Some(_))) {
            self.warn(
                &join(path, "update_channel"),
                "is deprecated and ignored; use 'upgrade_channel'",
            );
        }
        let network_usage_limit = self
            .datasize_or(
                &join(path, "network_usage_limit"),
                get("network_usage_limit"),
            )
            .map(|n| (n > 0).then_some(n));
        Some(Contract {
            address: address?,
            role: role?,
            key: key?,
            upgrade_channel: upgrade_channel?,
            network_usage_limit: network_usage_limit?,
        })
    }

    fn string<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.problem(path, format!("expected a string, found {}", show(other)));
                None
            }
        }
    }

    fn boolean(&mut self, path: &str, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.problem(
                    path,
                    format!("expected true or false, found {}", show(other)),
                );
                None
            }
        }
    }

    fn duration_or(
        &mut self,
        path: &str,
        v: Option<&Value>,
        default: Duration,
    ) -> Option<Duration> {
        let Some(v) = v else { return Some(default) };
        let text = self.string(path, v)?;
        match parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(path, e.to_string());
                None
            }
        }
    }

    fn datasize_or(&mut self, path: &str, v: Option<&Value>) -> Option<u64> {
        let Some(v) = v else { return Some(0) };
        let Value::String(text) = v else {
            self.problem(
                path,
                format!("expected a string such as \"50MB\", found {}", show(v)),
            );
            return None;
        };
        match parse_datasize(text) {
            Ok(n) => Some(n),
            Err(e) => {
                self.problem(path, e.to_string());
                None
            }
        }
    }

    /// A path that is joined onto the home directory even when it looks absolute (spec §1.3).
    fn home_path(&mut self, path: &str, v: &Value) -> Option<PathBuf> {
        let text = self.string(path, v)?;
        if text.is_empty() {
            return None;
        }
        let rel: PathBuf = Path::new(text)
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        if Path::new(text)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            self.problem(
                path,
                format!("{text:?} must stay inside the home directory (no \"..\")"),
            );
            return None;
        }
        Some(rel)
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn join(path: &str, key: &str) -> String {
    if path == "(top level)" {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of a value for messages: scalars shown, containers named.
fn show(v: &Value) -> String {
    match v {
        Value::Bool(_) | Value::Number(_) => format!("{} {v}", kind(v)),
        Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        _ => kind(v).to_owned(),
    }
}

/// The known key closest to `key`, if it is close enough to be a likely typo.
fn nearest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) || k.contains(key) && key.len() >= 4)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests;

//! The supervisor's control protocol, typed: what the relay's commands, the supervisor's `ctl`
//! and the supervisor itself send and read on `<home>/wireleap-relay-supervisor.sock` (a unix
//! stream socket, mode 0600; 0660 with the relay's group under privilege separation, where a
//! `rollback` without a recall is refused unless root or the supervisor's user asks). One JSON
//! object per line each way:
//!
//! | request | reply |
//! | --- | --- |
//! | `{"cmd":"status","protocol":1}` | `{"ok":true,"protocol":1,"pid":N,"state":"serving"\|"starting"\|"upgrading"\|"rolling-back","version":V,"prev_version":A,"highest_committed":H,"skipped":[..],"last":{journal entry},"draining":[pids]}` |
//! | `{"cmd":"upgrade","version":"V","protocol":1}` | when the staged `V` is committed or rolled back: `{"ok":bool,"version":V,"from":A,"error"?}`; under privilege separation a `V` on the skip list is refused unless root or the supervisor's user asks |
//! | `{"cmd":"rollback","protocol":1}` | when `wireleap-relay.prev` serves again (or could not): `{"ok":bool,"version":A,"from":B,"error"?}` |
//! | `{"cmd":"rollback","recall":"<rollout document>","protocol":1}` | the same, for a recall: the signed rollout document recalling the running version, which the supervisor verifies |
//! | `{"cmd":"skip","version":"V","statement":"<signed statement>","protocol":1}` | once `V` is in `.skip-upgrade-version` (or was refused): `{"ok":bool,"error"?}`; the statement must verify and list no binary for this host |
//!
//! Versioning: a request without `protocol` is protocol 1; the supervisor refuses, with a reply
//! that says so, a request of a protocol newer than its own. Replies only gain fields: a reader
//! ignores the fields it does not know and takes a missing one as absent, so an older relay and a
//! newer supervisor (or the reverse) still talk, with two limits: under privilege separation a
//! recall from a relay older than its supervisor carries no document and is refused, and a
//! supervisor older than its relay answers `skip` as "not a request" (the relay then retries the
//! version after a backoff) and reads at most 4096 bytes of a recall.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::files::CONTROL_SOCKET;
use crate::journal::Entry;

/// The protocol this build speaks.
pub const PROTOCOL: u32 = 1;

/// The longest request line a supervisor reads: room for a recall's rollout document (at most
/// 64 KiB as a relay fetches it) escaped in JSON.
pub const MAX_REQUEST: u64 = 256 * 1024;

/// What a generation tells the supervisor (on the readiness socket) once its heartbeats are
/// paused and no directory call of its own is in flight.
pub const PAUSED: &str = "WIRELEAP_HEARTBEATS=paused";

/// What a generation tells the supervisor (on the readiness socket) whenever its count of
/// contracts it is enrolled in changes: `WIRELEAP_ENROLLED=<enrolled>/<contracts>`.
pub const ENROLLED: &str = "WIRELEAP_ENROLLED=";

/// What a generation tells the supervisor (on the readiness socket) when its counts of streams
/// since it started changed: `WIRELEAP_STREAMS=<admitted>/<failed>`, `failed` the streams it
/// refused for its own failure (a 5xx other than the target's), not a client's mistake.
pub const STREAMS: &str = "WIRELEAP_STREAMS=";

/// Sent in the same datagram as [`STREAMS`], on a line of its own:
/// `WIRELEAP_STREAMS_REFUSED=<refused>`, every stream refused since the generation started,
/// whatever the reason (a client's mistake included). A line of its own, so that a supervisor
/// that does not know it still reads [`STREAMS`].
pub const STREAMS_REFUSED: &str = "WIRELEAP_STREAMS_REFUSED=";

/// Reads a [`STREAMS`] line: `(admitted, failed)`.
#[must_use]
pub fn parse_streams(line: &str) -> Option<(u64, u64)> {
    let (a, r) = line.strip_prefix(STREAMS)?.split_once('/')?;
    Some((a.parse().ok()?, r.parse().ok()?))
}

/// Reads a [`STREAMS_REFUSED`] line.
#[must_use]
pub fn parse_streams_refused(line: &str) -> Option<u64> {
    line.strip_prefix(STREAMS_REFUSED)?.parse().ok()
}

/// Reads an [`ENROLLED`] line: `(enrolled, contracts)`.
#[must_use]
pub fn parse_enrolled(line: &str) -> Option<(u32, u32)> {
    let (k, n) = line.strip_prefix(ENROLLED)?.split_once('/')?;
    let (k, n) = (k.parse().ok()?, n.parse().ok()?);
    (k <= n).then_some((k, n))
}

/// The settings config.json's `supervisor` section holds (how a new version is judged), as the
/// relay reads them and tells the supervisor (`wireleap-relay supervisor-settings`). Unset: the
/// supervisor's flag or default applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waits {
    /// `supervisor.health_window`.
    pub health_window: Option<Duration>,
    /// `supervisor.ready_timeout`.
    pub ready_timeout: Option<Duration>,
    /// `supervisor.max_memory`: the resident memory a new version may reach inside its health
    /// window, in bytes.
    pub max_memory: Option<u64>,
    /// `supervisor.liveness`: how long a relay may go without its liveness ping (0: not
    /// watched).
    pub liveness: Option<Duration>,
    /// `supervisor.probe_count`: PINGs a new version must answer through the public socket
    /// inside its window (0: no probe).
    pub probe_count: Option<u32>,
    /// `supervisor.refused_margin`: how many percentage points more of its streams a new
    /// version may refuse or fail than the old one did.
    pub refused_margin: Option<u32>,
    /// `supervisor.require_enrollment`: whether a new version must end its window enrolled in
    /// every contract (when the old one was).
    pub require_enrollment: Option<bool>,
}

/// The keys of [`Waits`]' other fields in the `supervisor-settings` reply.
const MAX_MEMORY_JSON: &str = "max_memory_bytes";
const PROBE_COUNT_JSON: &str = "probe_count";
const REFUSED_MARGIN_JSON: &str = "refused_margin_percent";
const REQUIRE_ENROLLMENT_JSON: &str = "require_enrollment";

impl Waits {
    /// Each wait with its key in the `supervisor-settings` reply (seconds) and in config.json.
    #[must_use]
    pub fn entries(&self) -> [(&'static str, &'static str, Option<Duration>); 3] {
        [
            ("health_window_secs", "health_window", self.health_window),
            ("ready_timeout_secs", "ready_timeout", self.ready_timeout),
            ("liveness_secs", "liveness", self.liveness),
        ]
    }

    /// What `wireleap-relay supervisor-settings` prints: one JSON object with only the waits
    /// that are set.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut out: serde_json::Map<String, serde_json::Value> = self
            .entries()
            .into_iter()
            .filter_map(|(json, _, d)| Some((json.to_owned(), d?.as_secs_f64().into())))
            .collect();
        if let Some(bytes) = self.max_memory {
            out.insert(MAX_MEMORY_JSON.to_owned(), bytes.into());
        }
        if let Some(n) = self.probe_count {
            out.insert(PROBE_COUNT_JSON.to_owned(), n.into());
        }
        if let Some(n) = self.refused_margin {
            out.insert(REFUSED_MARGIN_JSON.to_owned(), n.into());
        }
        if let Some(b) = self.require_enrollment {
            out.insert(REQUIRE_ENROLLMENT_JSON.to_owned(), b.into());
        }
        serde_json::Value::Object(out).to_string()
    }

    /// Reads [`Waits::to_json`]'s output; what is missing or malformed stays unset.
    #[must_use]
    pub fn from_json(bytes: &[u8]) -> Self {
        let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let [health, ready, liveness] = Self::default().entries().map(|(json, _, _)| {
            value
                .get(json)
                .and_then(serde_json::Value::as_f64)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
        });
        let small = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        Self {
            health_window: health,
            ready_timeout: ready,
            max_memory: value
                .get(MAX_MEMORY_JSON)
                .and_then(serde_json::Value::as_u64),
            liveness,
            probe_count: small(PROBE_COUNT_JSON),
            refused_margin: small(REFUSED_MARGIN_JSON),
            require_enrollment: value
                .get(REQUIRE_ENROLLMENT_JSON)
                .and_then(serde_json::Value::as_bool),
        }
    }
}

/// A request to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Its state.
    Status,
    /// Verify the staged release as `version`, hand over to it, commit or roll back.
    Upgrade {
        /// The staged version: a plain version, checked when the request is read.
        version: String,
    },
    /// Go back to `wireleap-relay.prev`: the operator's, or a recall's.
    Rollback {
        /// A recall: the rollout document of the running version that recalls it, as the
        /// release server served it (clear-signed text). The supervisor verifies it itself;
        /// under privilege separation the relay's user may roll back only with one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recall: Option<String>,
    },
    /// Add `version` to `.skip-upgrade-version`, for a relay that may not write it (the
    /// supervisor's file under privilege separation): a release that can never install here is
    /// not fetched again.
    Skip {
        /// The version: a plain version, checked when the request is read.
        version: String,
        /// The proof: the version's signed release statement for this host, as served, which
        /// lists no binary for it. The supervisor verifies it with its own trust.
        statement: String,
    },
}

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Its relay serves and no change is in progress.
    Serving,
    /// Its relay is not ready yet.
    Starting,
    /// An upgrade is in progress.
    Upgrading,
    /// An operator's rollback is in progress.
    RollingBack,
    /// A state this build does not know.
    #[serde(other)]
    Other,
}

/// A reply: `ok` and `error` always; the rest as the request calls for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The protocol of the one replying.
    pub protocol: u32,
    /// Status: the serving relay's pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Status: what the supervisor is doing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// Status: the running version; upgrade and rollback: the version installed (or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Upgrade and rollback: the version that ran before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Status: the version of `wireleap-relay.prev`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_version: Option<String>,
    /// Status: the highest committed version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highest_committed: Option<String>,
    /// Status: the skipped versions (absent from an old supervisor: read the file then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Vec<String>>,
    /// Status: the journal's last entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Entry>,
    /// Status: the pids of the generations draining.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<u32>,
}

// === impl State ===

impl State {
    /// The state's name on the wire and in `status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Starting => "starting",
            Self::Upgrading => "upgrading",
            Self::RollingBack => "rolling-back",
            Self::Other => "unknown",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Request ===

impl Request {
    /// Reads one request line as a supervisor does: JSON, a protocol it speaks, a known command,
    /// and for an upgrade a plain version (anything else, a newline in it say, changes nothing).
    ///
    /// # Errors
    /// What is wrong, for the error reply.
    pub fn parse(line: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("expected one JSON object per line: {e}"))?;
        let protocol = value
            .get("protocol")
            .map_or(Some(1), serde_json::Value::as_u64)
            .ok_or("\"protocol\" must be a number")?;
        if protocol > u64::from(PROTOCOL) {
            return Err(format!(
                "the request speaks control protocol {protocol}; this supervisor speaks {PROTOCOL}"
            ));
        }
        let request: Self = serde_json::from_value(value)
            .map_err(|e| format!("not a request (status, upgrade, rollback, skip): {e}"))?;
        if let Self::Upgrade { version } | Self::Skip { version, .. } = &request
            && !is_plain_version(version)
        {
            return Err("the request names no plain version (MAJOR.MINOR.PATCH[-PRE])".to_owned());
        }
        Ok(request)
    }

    /// The request's line, with this build's protocol.
    #[must_use]
    pub fn to_line(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("protocol".to_owned(), PROTOCOL.into());
        }
        value.to_string()
    }
}

/// A version as the release format allows it: `MAJOR.MINOR.PATCH[-PRE]`, no build metadata, no
/// `v`, nothing around it.
fn is_plain_version(text: &str) -> bool {
    semver::Version::parse(text).is_ok_and(|v| v.build.is_empty() && v.to_string() == text)
}

// === impl Reply ===

impl Reply {
    /// A success with nothing more to say.
    #[must_use]
    pub fn ok() -> Self {
        Self {
            ok: true,
            protocol: PROTOCOL,
            ..Self::default()
        }
    }

    /// A failure saying why.
    #[must_use]
    pub fn error(why: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(why.into()),
            protocol: PROTOCOL,
            ..Self::default()
        }
    }

    /// The same reply naming the version of a change and the one before it.
    #[must_use]
    pub fn versions(mut self, version: impl ToString, from: Option<impl ToString>) -> Self {
        self.version = Some(version.to_string());
        self.from = from.map(|f| f.to_string());
        self
    }

    /// The reply's line.
    #[must_use]
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"ok":false}"#.to_owned())
    }
}

/// Client side: sends `request` to the supervisor of `home` and waits up to `wait` for its reply.
///
/// # Errors
/// An I/O error (no supervisor, a timeout) or a reply that is not one.
pub fn call(home: &Path, request: &Request, wait: Duration) -> std::io::Result<Reply> {
    let line = request.to_line();
    if line.len() as u64 >= MAX_REQUEST {
        return Err(std::io::Error::other(format!(
            "the request is {} bytes long; a supervisor reads at most {MAX_REQUEST}",
            line.len()
        )));
    }
    let mut conn = UnixStream::connect(home.join(CONTROL_SOCKET))?;
    conn.set_read_timeout(Some(wait))?;
    writeln!(conn, "{line}")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The health criteria a new version is judged by inside its window, as the journal, the
/// metrics and the outcome reports name them.
pub const HEALTH_CRITERIA: [&str; 5] = ["liveness", "memory", "probe", "enrollment", "streams"];

/// How a refusal for a failed health criterion starts: `health: <criterion>: <detail>`.
pub const HEALTH_PREFIX: &str = "health: ";

/// The health criterion a supervisor's refusal names, if it names one.
#[must_use]
pub fn failed_criterion(why: &str) -> Option<&'static str> {
    let rest = why.strip_prefix(HEALTH_PREFIX)?;
    HEALTH_CRITERIA.into_iter().find(|c| rest.starts_with(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_wire_says_and_bad_ones_say_why() {
        assert_eq!(Request::parse(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            Request::parse(r#"{"cmd":"upgrade","version":"1.2.3-rc.1","protocol":1}"#),
            Ok(Request::Upgrade {
                version: "1.2.3-rc.1".to_owned()
            })
        );
        let round = Request::Upgrade {
            version: "0.8.0".to_owned(),
        };
        assert_eq!(Request::parse(&round.to_line()), Ok(round));
        assert_eq!(
            Request::parse(r#"{"cmd":"skip","version":"1.2.3","statement":"signed"}"#),
            Ok(Request::Skip {
                version: "1.2.3".to_owned(),
                statement: "signed".to_owned()
            })
        );
        // The operator's rollback is the line it always was; a recall carries its document.
        let operator = Request::Rollback { recall: None };
        assert_eq!(
            Request::parse(r#"{"cmd":"rollback"}"#),
            Ok(operator.clone())
        );
        assert!(
            !operator.to_line().contains("recall"),
            "{}",
            operator.to_line()
        );
        let recall = Request::Rollback {
            recall: Some("-----BEGIN PGP SIGNED MESSAGE-----\n\"quoted\"\n".to_owned()),
        };
        assert_eq!(Request::parse(&recall.to_line()), Ok(recall));
        for (line, says) in [
            ("not json", "JSON"),
            (r#"{"cmd":"reboot"}"#, "not a request"),
            (
                r#"{"cmd":"upgrade","version":"9.0.0\n0.1.0"}"#,
                "no plain version",
            ),
            (
                r#"{"cmd":"upgrade","version":"v1.0.0"}"#,
                "no plain version",
            ),
            (
                r#"{"cmd":"upgrade","version":"1.0.0+build"}"#,
                "no plain version",
            ),
            (r#"{"cmd":"upgrade"}"#, "not a request"),
            (
                r#"{"cmd":"skip","version":"1.0.0\n2.0.0","statement":""}"#,
                "no plain version",
            ),
            (r#"{"cmd":"skip","version":"1.0.0"}"#, "not a request"),
            (r#"{"cmd":"status","protocol":2}"#, "protocol 2"),
        ] {
            let err = Request::parse(line).unwrap_err();
            assert!(err.contains(says), "{line}: {err}");
        }
    }

    #[test]
    fn replies_ignore_unknown_fields_and_default_missing_ones() {
        let newer =
            r#"{"ok":true,"protocol":7,"pid":42,"state":"hibernating","from_the_future":[1]}"#;
        let reply: Reply = serde_json::from_str(newer).unwrap();
        assert!(reply.ok);
        assert_eq!(reply.pid, Some(42));
        assert_eq!(reply.state, Some(State::Other));
        let older: Reply = serde_json::from_str(r#"{"ok":false,"error":"busy"}"#).unwrap();
        assert_eq!(older.error.as_deref(), Some("busy"));
        assert_eq!(older.skipped, None);
        let line = Reply::error("no")
            .versions("1.0.0", Some("0.9.0"))
            .to_line();
        assert_eq!(
            serde_json::from_str::<Reply>(&line).unwrap(),
            Reply::error("no").versions("1.0.0", Some("0.9.0"))
        );
    }
}

//! The init payload of a relay stream: the `wl-payload` request header (spec §6.2, §6.3).
//!
//! [`InitPayload`] is the wire form (compact JSON, key order `command`, `protocol`, `remote`,
//! `token`, `version`). [`Request::parse`] turns header bytes into a validated request:
//! PING, or CONNECT with a known protocol, a `wireleap`/`https`/`target` remote with host and
//! port, a sharetoken and a client-relay version of minor 2 (spec §10 #3, #13). The loopback
//! guard of §6.3 step 9 is [`Remote::check_loopback`]; the relay decides when to call it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::sharetoken::Sharetoken;
use crate::version;

/// Name of the request header carrying the init payload.
pub const WL_PAYLOAD: &str = "wl-payload";

/// `command` of a stream that relays bytes.
pub const COMMAND_CONNECT: &str = "CONNECT";
/// `command` of a health check.
pub const COMMAND_PING: &str = "PING";

/// The init payload as it is on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPayload {
    /// `CONNECT` or `PING`.
    #[serde(default)]
    pub command: String,
    /// Go network name: `tcp`, `tcp4`, `tcp6`, `udp`, `udp4`, `udp6`.
    #[serde(default)]
    pub protocol: String,
    /// `wireleap://host:port[/path]`, `https://…` or `target://host:port`.
    #[serde(default)]
    pub remote: String,
    /// Sharetoken for the relay receiving this payload (`null` when absent).
    #[serde(default)]
    pub token: Option<Sharetoken>,
    /// client-relay interface version, `0.2.0`.
    #[serde(default)]
    pub version: String,
}

/// Why a payload is refused. Every variant becomes a 400 status whose description is the
/// `Display` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The header is missing.
    #[error("could not parse payload header: no wl-payload header")]
    Missing,
    /// The header is not JSON of the payload shape.
    #[error("could not parse payload header: {0}")]
    Parse(String),
    /// A CONNECT without `token` (spec §10 #3).
    #[error("no sharetoken in payload")]
    MissingToken,
    /// `protocol` is not `tcp*`/`udp*`.
    #[error("unknown protocol in payload: {0}")]
    UnknownProtocol(String),
    /// `version` is not a client-relay version with our minor number.
    #[error("invalid client-relay version in payload: expecting version 0.2.x, got {0}")]
    Version(String),
    /// `remote` is not a URL.
    #[error("invalid remote URL in payload: {0}")]
    RemoteUrl(String),
    /// `remote` has a scheme other than `wireleap`, `https`, `target`.
    #[error("unknown URL scheme in payload: {0}")]
    UnknownScheme(String),
    /// `remote` has no host.
    #[error("missing host in remote address: {0}")]
    MissingHost(String),
    /// The loopback guard refused the remote (spec §6.3 step 9).
    #[error("loopback address '{0}' requested, refusing to dial")]
    Loopback(String),
}

/// Outgoing network of a CONNECT (the `protocol` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// `tcp`
    Tcp,
    /// `tcp4`
    Tcp4,
    /// `tcp6`
    Tcp6,
    /// `udp`
    Udp,
    /// `udp4`
    Udp4,
    /// `udp6`
    Udp6,
}

impl Network {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tcp4 => "tcp4",
            Self::Tcp6 => "tcp6",
            Self::Udp => "udp",
            Self::Udp4 => "udp4",
            Self::Udp6 => "udp6",
        }
    }

    /// Whether this is one of the UDP networks.
    pub const fn is_udp(self) -> bool {
        matches!(self, Self::Udp | Self::Udp4 | Self::Udp6)
    }
}

impl FromStr for Network {
    type Err = PayloadError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "tcp" => Self::Tcp,
            "tcp4" => Self::Tcp4,
            "tcp6" => Self::Tcp6,
            "udp" => Self::Udp,
            "udp4" => Self::Udp4,
            "udp6" => Self::Udp6,
            other => return Err(PayloadError::UnknownProtocol(other.to_owned())),
        })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Scheme of a remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteKind {
    /// `wireleap://`: the next relay.
    Wireleap,
    /// `https://`: the next relay, deprecated form.
    Https,
    /// `target://`: the final destination; errors then have origin `"target"`.
    Target,
}

/// A parsed `remote`: scheme, host and port. A remote without a port parses (the reference
/// finds out when it dials: 502 "missing port in address", the token stored first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Which kind of remote.
    pub kind: RemoteKind,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    /// Port, when the remote names one.
    pub port: Option<u16>,
    /// The full URL as sent.
    pub url: Url,
}

impl Remote {
    /// Parses a remote URL.
    ///
    /// # Errors
    /// [`PayloadError::RemoteUrl`], [`PayloadError::UnknownScheme`],
    /// [`PayloadError::MissingHost`].
    pub fn parse(text: &str) -> Result<Self, PayloadError> {
        let url = Url::parse(text).map_err(|e| PayloadError::RemoteUrl(format!("{text}: {e}")))?;
        let kind = match url.scheme() {
            "wireleap" => RemoteKind::Wireleap,
            "https" => RemoteKind::Https,
            "target" => RemoteKind::Target,
            other => return Err(PayloadError::UnknownScheme(other.to_owned())),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(PayloadError::MissingHost(text.to_owned())),
        };
        // For `https` the url crate hides an explicit `:443`: read it from the text then. The
        // scheme's default is not used (the reference dials host:port as written).
        let port = url.port().or_else(|| explicit_port(text));
        Ok(Self {
            kind,
            host,
            port,
            url,
        })
    }

    /// A `target://host:port` remote.
    ///
    /// # Errors
    /// As [`Remote::parse`].
    pub fn target(host: &str, port: u16) -> Result<Self, PayloadError> {
        Self::parse(&format!("target://{}", join_host_port(host, port)))
    }

    /// The dial address `host:port` (IPv6 in brackets); the host alone without a port.
    pub fn host_port(&self) -> String {
        match self.port {
            Some(port) => join_host_port(&self.host, port),
            None => bracketed(&self.host),
        }
    }

    /// The host as an IP address, when it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Whether the host is `localhost`, a loopback IP or the unspecified address (names that
    /// merely resolve to loopback are not detected, as in the reference).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }

    /// The loopback guard of spec §6.3 step 9.
    ///
    /// # Errors
    /// [`PayloadError::Loopback`] naming the host.
    pub fn check_loopback(&self) -> Result<(), PayloadError> {
        if self.is_loopback() {
            Err(PayloadError::Loopback(self.host.clone()))
        } else {
            Ok(())
        }
    }

    /// Whether errors for this remote carry origin `"target"`.
    pub fn is_target(&self) -> bool {
        self.kind == RemoteKind::Target
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// `localhost`, a loopback IP (incl. IPv4-mapped IPv6) or an unspecified address. An IPv4
/// address counts in every form the system resolver reads as one (`127.1`, `2130706433`,
/// `0x7f000001`, `0`: see [`numeric_ipv4`]), since the dial resolves the host with it.
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if numeric_ipv4(host).is_some_and(|ip| ip.is_loopback() || ip.is_unspecified()) {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
        Err(_) => false,
    }
}

/// An IPv4 address in the numbers-and-dots forms of `inet_aton(3)`, which the system resolver
/// tries before anything else: one to four parts, each decimal, octal (a leading `0`) or hex
/// (`0x`); the last part fills the bytes the others leave (`127.1` is 127.0.0.1, `2130706433`
/// and `0x7f000001` too, `0` is 0.0.0.0). `None` for anything else (a name, an IPv6 address).
pub fn numeric_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        // `0x` alone is 0 to inet_aton; an empty part otherwise is not a number.
        let value = if digits.is_empty() && radix == 16 {
            0
        } else if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        } else {
            u32::from_str_radix(digits, radix).ok()?
        };
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 0xff) {
        return None;
    }
    let room = 32 - 8 * u32::try_from(leading.len()).ok()?;
    if room < 32 && *last >> room != 0 {
        return None;
    }
    let high = leading
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &v)| acc | (v << (24 - 8 * i)));
    Some(Ipv4Addr::from(high | last))
}

/// The port written in `text`'s authority (`scheme://[user@]host:port/...`), if any.
fn explicit_port(text: &str) -> Option<u16> {
    let rest = text.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.ends_with(']') {
        return None;
    }
    hostport.rsplit_once(':')?.1.parse().ok()
}

/// `host`, an IPv6 address in brackets.
fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracketed(host))
}

/// A validated CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Outgoing network.
    pub network: Network,
    /// Where to dial.
    pub remote: Remote,
    /// The sharetoken for this relay (not yet accepted: see [`Sharetoken::accept`]).
    pub token: Sharetoken,
    /// The client-relay version the client sent.
    pub version: semver::Version,
}

/// A validated stream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Health check: answer [`crate::status::Status::pong`] in the body.
    Ping,
    /// Relay bytes to `remote`.
    Connect(Box<Connect>),
}

impl Request {
    /// Parses and validates a `wl-payload` header value.
    ///
    /// Order: JSON shape; PING (no further checks); token present; version minor; protocol;
    /// remote scheme and host. Any command other than PING is a CONNECT (the reference checks no
    /// other value). A field of the wrong JSON type (`"version": 7`) fails the parse, a PING's
    /// included, as it fails Go's decoder; what Go's decoder checks beyond that for a PING (a
    /// version or remote that does not parse, a token's own fields) is not checked here: such a
    /// PING is answered.
    ///
    /// # Errors
    /// The first failing check as a [`PayloadError`].
    pub fn parse(header: &[u8]) -> Result<Self, PayloadError> {
        match InitPayload::from_header(header) {
            Ok(payload) => payload.validate(),
            Err(e) => {
                /// The payload's fields with their JSON types, the token's content unread.
                #[derive(Deserialize)]
                #[allow(dead_code, reason = "only their JSON types are checked")]
                struct Shape {
                    #[serde(default)]
                    command: Option<String>,
                    #[serde(default)]
                    protocol: Option<String>,
                    #[serde(default)]
                    remote: Option<String>,
                    #[serde(default)]
                    version: Option<String>,
                    #[serde(default)]
                    token: Option<serde_json::Map<String, serde_json::Value>>,
                }
                match serde_json::from_slice::<Shape>(header) {
                    Ok(Shape {
                        command: Some(c), ..
                    }) if c == COMMAND_PING => Ok(Self::Ping),
                    _ => Err(e),
                }
            }
        }
    }
}

impl InitPayload {
    /// A CONNECT payload (client side).
    pub fn connect(network: Network, remote: &str, token: Sharetoken) -> Self {
        Self {
            command: COMMAND_CONNECT.to_owned(),
            protocol: network.as_str().to_owned(),
            remote: remote.to_owned(),
            token: Some(token),
            version: version::CLIENT_RELAY.to_string(),
        }
    }

    /// A PING payload (client side).
    pub fn ping() -> Self {
        Self {
            command: COMMAND_PING.to_owned(),
            protocol: String::new(),
            remote: String::new(),
            token: None,
            version: version::CLIENT_RELAY.to_string(),
        }
    }

    /// Decodes header bytes, without validation.
    ///
    /// # Errors
    /// [`PayloadError::Parse`] with the JSON error.
    pub fn from_header(header: &[u8]) -> Result<Self, PayloadError> {
        serde_json::from_slice(header).map_err(|e| PayloadError::Parse(e.to_string()))
    }

    /// Compact JSON for the `wl-payload` header (no newline; valid header value).
    pub fn to_header_value(&self) -> String {
        // Strings, integers and base64 text only: serialization into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Validates into a [`Request`] (see [`Request::parse`] for the order).
    ///
    /// # Errors
    /// The first failing check as a [`PayloadError`].
    pub fn validate(self) -> Result<Request, PayloadError> {
        if self.command == COMMAND_PING {
            return Ok(Request::Ping);
        }
        let token = self.token.ok_or(PayloadError::MissingToken)?;
        let version = semver::Version::parse(self.version.trim())
            .ok()
            .filter(|v| v.minor == version::CLIENT_RELAY.minor)
            .ok_or_else(|| PayloadError::Version(self.version.clone()))?;
        let network = self.protocol.parse()?;
        let remote = Remote::parse(&self.remote)?;
        Ok(Request::Connect(Box::new(Connect {
            network,
            remote,
            token,
            version,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{PublicKey, SigningKey};
    use crate::servicekey::{Contract, Servicekey};

    #[test]
    fn payload_loopback_guard_knows_every_numeric_form_the_resolver_reads() {
        for host in [
            "localhost",
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0X7F.1",
            "0177.0.0.1",
            "017700000001",
            "0",
            "0.0",
            "0x",
            "0.0.0.0",
            "[::1]",
            "[::]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(host), "{host} passed the guard");
        }
        for host in [
            "example.com",
            "127.example",
            "1.2.3.4",
            "16909060",
            "08",
            "127.0.0.256",
            "127.0.0.0.1",
            "1..2",
            "",
            "[2001:db8::1]",
            "localhost.example",
        ] {
            assert!(!is_loopback_host(host), "{host} refused");
        }
        assert_eq!(numeric_ipv4("1.2.772"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(numeric_ipv4("1.66052"), Some(Ipv4Addr::new(1, 1, 2, 4)));
        assert_eq!(numeric_ipv4("1.2.65536"), None);
        assert_eq!(numeric_ipv4("256.1"), None);
        assert_eq!(numeric_ipv4("4294967296"), None);
    }

    fn token() -> Sharetoken {
        let c = Contract::sign(&SigningKey::from_bytes(&[1; 32]), 100, 200);
        let sk = Servicekey::from_signing_key(SigningKey::from_bytes(&[2; 32]), Some(c));
        Sharetoken::new(&sk, PublicKey::from(&SigningKey::from_bytes(&[3; 32])), 50).unwrap()
    }

    #[test]
    fn connect_round_trip_and_key_order() {
        let p = InitPayload::connect(Network::Tcp, "target://example.org:443", token());
        let h = p.to_header_value();
        assert!(h.starts_with(
            r#"{"command":"CONNECT","protocol":"tcp","remote":"target://example.org:443","token":{"version":0,"#
        ));
        assert!(h.ends_with(r#"},"version":"0.2.0"}"#));
        let Request::Connect(c) = Request::parse(h.as_bytes()).unwrap() else {
            panic!("not connect")
        };
        assert_eq!(c.network, Network::Tcp);
        assert_eq!(c.remote.kind, RemoteKind::Target);
        assert_eq!(c.remote.host_port(), "example.org:443");
        assert!(c.remote.is_target());
    }

    #[test]
    fn ping_needs_nothing_else() {
        assert_eq!(
            Request::parse(br#"{"command":"PING"}"#).unwrap(),
            Request::Ping
        );
        assert_eq!(
            Request::parse(InitPayload::ping().to_header_value().as_bytes()).unwrap(),
            Request::Ping
        );
    }

    #[test]
    fn refusals() {
        let ok = InitPayload::connect(Network::Udp, "wireleap://relay.example:13499/x", token());
        assert!(ok.clone().validate().is_ok());

        assert!(matches!(
            Request::parse(b"{not json"),
            Err(PayloadError::Parse(_))
        ));
        assert!(
            Request::parse(b"42")
                .unwrap_err()
                .to_string()
                .starts_with("could not parse payload header: ")
        );
        let mut p = ok.clone();
        p.token = None;
        assert_eq!(p.validate(), Err(PayloadError::MissingToken));
        // Any command but PING is a CONNECT (spec §6.3 step 11).
        for command in ["BIND", "", "connect"] {
            let mut p = ok.clone();
            p.command = command.into();
            assert!(
                matches!(p.validate(), Ok(Request::Connect(_))),
                "{command:?}"
            );
        }
        // A PING needs nothing else (spec §6.3 step 4), its token is not looked into, and
        // nulls are Go's zero values; but a field of the wrong JSON type fails the parse
        // (step 3), as Go's decoder does.
        for header in [
            &br#"{"command":"PING","token":{}}"#[..],
            br#"{"command":"PING","token":{"contract":7}}"#,
            br#"{"command":"PING","protocol":null,"version":null,"extra":[1]}"#,
            br#"{"command":"PING"}"#,
        ] {
            assert_eq!(Request::parse(header), Ok(Request::Ping));
        }
        for header in [
            &br#"{"command":"PING","version":7}"#[..],
            br#"{"command":"PING","remote":["x"]}"#,
            br#"{"command":"PING","token":"t"}"#,
        ] {
            assert!(
                matches!(Request::parse(header), Err(PayloadError::Parse(_))),
                "{}",
                String::from_utf8_lossy(header)
            );
        }
        assert!(Request::parse(br#"{"command":"CONNECT","token":{}}"#).is_err());
        let mut p = ok.clone();
        p.version = "0.3.0".into();
        assert_eq!(p.validate(), Err(PayloadError::Version("0.3.0".into())));
        let mut p = ok.clone();
        p.version = "x".into();
        assert!(matches!(p.validate(), Err(PayloadError::Version(_))));
        let mut p = ok.clone();
        p.protocol = "sctp".into();
        assert_eq!(
            p.validate(),
            Err(PayloadError::UnknownProtocol("sctp".into()))
        );
        let mut p = ok.clone();
        p.remote = "ftp://x:1".into();
        assert_eq!(p.validate(), Err(PayloadError::UnknownScheme("ftp".into())));
        // No port: parsed; the dial refuses it (502, as the reference's dial does).
        for (remote, host_port) in [
            ("target://example.org", "example.org"),
            ("https://127.0.0.1", "127.0.0.1"),
            ("https://127.0.0.1:443/x", "127.0.0.1:443"),
            ("https://u@[::1]:443", "[::1]:443"),
            ("target://[::1]", "[::1]"),
        ] {
            let r = Remote::parse(remote).unwrap();
            assert_eq!(r.host_port(), host_port, "{remote}");
        }
        let mut p = ok;
        p.remote = "target://:80".into();
        assert!(p.validate().is_err());
    }

    #[test]
    fn loopback_guard() {
        for h in [
            "target://127.0.0.1:80",
            "target://127.8.9.1:80",
            "target://localhost:80",
            "target://LOCALHOST:80",
            "target://[::1]:80",
            "target://0.0.0.0:80",
            "target://[::]:80",
            "target://[::ffff:127.0.0.1]:80",
        ] {
            let r = Remote::parse(h).unwrap();
            assert!(r.is_loopback(), "{h}");
            let e = r.check_loopback().unwrap_err();
            assert!(e.to_string().starts_with("loopback address '"), "{e}");
        }
        for h in [
            "target://10.0.0.1:80",
            "target://example.org:80",
            "wireleap://192.168.1.1:13499",
        ] {
            assert!(!Remote::parse(h).unwrap().is_loopback(), "{h}");
        }
        let r = Remote::parse("target://[::1]:80").unwrap();
        assert_eq!(r.host_port(), "[::1]:80");
        assert_eq!(
            Remote::parse("target://127.0.0.1:80")
                .unwrap()
                .check_loopback(),
            Err(PayloadError::Loopback("127.0.0.1".into()))
        );
    }

    #[test]
    fn hostile_headers_never_panic() {
        for h in [
            &b""[..],
            b"null",
            b"{}",
            br#"{"command":"CONNECT","token":null}"#,
            br#"{"command":"CONNECT","token":{}}"#,
            br#"{"command":"CONNECT","token":{"version":0,"public_key":"AA"}}"#,
            b"\xff\xfe",
        ] {
            let _ = Request::parse(h);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = Request::parse(&bytes);
            }

            #[test]
            fn target_remote_round_trip(host in "[a-z]{1,10}(\\.[a-z]{2,5})?", port in 1u16..) {
                let r = Remote::target(&host, port).unwrap();
                prop_assert_eq!(r.host_port(), format!("{host}:{port}"));
                prop_assert_eq!(r.kind, RemoteKind::Target);
                let p = InitPayload::connect(Network::Tcp, r.url.as_str(), token());
                let Request::Connect(c) = Request::parse(p.to_header_value().as_bytes()).unwrap() else {
                    panic!("not connect")
                };
                prop_assert_eq!(c.remote, r);
            }
        }
    }
}

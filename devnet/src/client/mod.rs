//! The circuit client: mints servicekeys and opens streams through 1..n relays (spec §6.4).
//!
//! For hop *i* the client sends a `PUT` whose `wl-payload` names hop *i+1* (or, on the last
//! hop, `target://host:port`) and carries a sharetoken bound to hop *i*'s key; through that
//! stream's bytes it then runs a new TLS 1.3 + HTTP/2 session with hop *i+1*. The connection
//! to the first hop is shared by every stream of a [`CircuitClient`] (as the Go client pools
//! it); inner hops get one connection per stream, as they must.
//!
//! Flow-control windows are large by default (16 MiB connection, 4 MiB stream) so that the
//! client is never the bottleneck of a benchmark; all knobs are in [`ClientConfig`].

pub mod exit;
mod stream;
pub use wireleap_protocol::tls_client as tls;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use wireleap_protocol::payload::WL_PAYLOAD;
use wireleap_protocol::{
    Contract, InitPayload, Network, PublicKey, Servicekey, Sharetoken, Status, unix_now,
};

use stream::AbortOnDrop;
pub use stream::{H2Stream, StreamEnd};

/// Errors of the circuit client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A hop address is not `wireleap://host:port[/path]` (or `https://`).
    #[error("invalid hop address {0:?}")]
    Address(String),
    /// The circuit has no hops.
    #[error("a circuit needs at least one relay")]
    NoHops,
    /// TCP connection to the first hop failed.
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A step took longer than the configured timeout.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// TLS setup or handshake with a hop failed.
    #[error("TLS with hop {hop}: {reason}")]
    Tls {
        /// Hop index (0 = first relay).
        hop: usize,
        /// What failed.
        reason: String,
    },
    /// HTTP/2 error with a hop.
    #[error("HTTP/2 with hop {hop}: {source}")]
    H2 {
        /// Hop index.
        hop: usize,
        /// The h2 error.
        source: h2::Error,
    },
    /// A hop ended its stream with a `wl-status` error (e.g. it could not reach the next hop).
    #[error("hop {hop} reported {status}")]
    Status {
        /// Hop index whose stream carried the status.
        hop: usize,
        /// The status (code, description, origin).
        status: Status,
    },
    /// The servicekey is not activated.
    #[error("sharetoken: {0}")]
    Token(#[from] wireleap_protocol::sharetoken::SignError),
    /// Building a request failed.
    #[error("request: {0}")]
    Request(String),
    /// Servicekey activation at the contract failed.
    #[error("servicekey activation at {url}: {reason}")]
    Activate {
        /// Contract URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Reading a PING answer failed.
    #[error("ping: {0}")]
    Ping(String),
}

impl ClientError {
    /// The relay's status, when a hop reported one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The Go client's rule (spec §6.8): rebuild the circuit when a relay (not the target)
    /// reported an error other than 400, or when the circuit could not be reached at all.
    pub fn is_circuit_error(&self) -> bool {
        match self {
            Self::Status { status, .. } => status.is_circuit_error(),
            Self::Connect { .. } | Self::Timeout(_) | Self::Tls { .. } | Self::H2 { .. } => true,
            _ => false,
        }
    }
}

/// One relay of a circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Advertised address: `wireleap://host:port[/path]`.
    pub address: String,
    /// The relay's public key (sharetokens are bound to it).
    pub pubkey: PublicKey,
}

impl Hop {
    /// A hop from its address and key.
    pub fn new(address: impl Into<String>, pubkey: PublicKey) -> Self {
        Self {
            address: address.into(),
            pubkey,
        }
    }

    /// `(host, port, https URI)` of this hop.
    fn parts(&self) -> Result<(String, u16, String), ClientError> {
        let bad = || ClientError::Address(self.address.clone());
        let rest = self
            .address
            .strip_prefix("wireleap://")
            .or_else(|| self.address.strip_prefix("https://"))
            .ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, p) = r.split_once("]:").ok_or_else(bad)?;
            (h.to_owned(), p)
        } else {
            let (h, p) = authority.rsplit_once(':').ok_or_else(bad)?;
            (h.to_owned(), p)
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok((host, port, format!("https://{authority}{path}")))
    }
}

/// Knobs of the circuit client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Timeout of each connect / handshake step.
    pub connect_timeout: Duration,
    /// HTTP/2 stream receive window we advertise (bytes).
    pub stream_window: u32,
    /// HTTP/2 connection receive window we advertise (bytes).
    pub connection_window: u32,
    /// Largest DATA frame we accept (bytes).
    pub max_frame_size: u32,
    /// Per-stream send buffer limit (bytes).
    pub max_send_buffer: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            max_frame_size: 1 << 20,
            max_send_buffer: 4 << 20,
        }
    }
}

struct FirstHop {
    send: h2::client::SendRequest<Bytes>,
    _driver: AbortOnDrop,
}

/// Opens streams through a fixed list of relays with one servicekey.
pub struct CircuitClient {
    servicekey: Servicekey,
    hops: Vec<Hop>,
    cfg: ClientConfig,
    tls: TlsConnector,
    first: tokio::sync::Mutex<Option<FirstHop>>,
}

impl std::fmt::Debug for CircuitClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitClient")
            .field("servicekey", &self.servicekey)
            .field("hops", &self.hops)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl CircuitClient {
    /// A client for `hops` (first relay first), paying with `servicekey`.
    ///
    /// # Errors
    /// [`ClientError::NoHops`], [`ClientError::Address`], or a TLS setup error.
    pub fn new(
        servicekey: Servicekey,
        hops: Vec<Hop>,
        cfg: ClientConfig,
    ) -> Result<Self, ClientError> {
        if hops.is_empty() {
            return Err(ClientError::NoHops);
        }
        for h in &hops {
            h.parts()?;
        }
        let tls = tls::client_config().map_err(|e| ClientError::Tls {
            hop: 0,
            reason: e.to_string(),
        })?;
        Ok(Self {
            servicekey,
            hops,
            cfg,
            tls: TlsConnector::from(tls),
            first: tokio::sync::Mutex::new(None),
        })
    }

    /// The hops of this client.
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// The servicekey this client pays with.
    pub fn servicekey(&self) -> &Servicekey {
        &self.servicekey
    }

    /// The HTTP/2 settings of every connection to a hop.
    fn h2_builder(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.cfg.stream_window)
            .initial_connection_window_size(self.cfg.connection_window)
            .max_frame_size(self.cfg.max_frame_size)
            .max_send_buffer_size(self.cfg.max_send_buffer);
        b
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = T>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.cfg.connect_timeout, f)
            .await
            .map_err(|_| ClientError::Timeout(what))
    }

    /// A ready sender on the shared first-hop connection (connecting if needed).
    async fn first_sender(&self) -> Result<h2::client::SendRequest<Bytes>, ClientError> {
        let mut guard = self.first.lock().await;
        if let Some(f) = guard.as_ref() {
            let s = f.send.clone();
            if let Ok(Ok(s)) = tokio::time::timeout(self.cfg.connect_timeout, s.ready()).await {
                return Ok(s);
            }
            *guard = None;
        }
        let (host, port, _) = self.hops[0].parts()?;
        let addr = format!("{}:{port}", bracket(&host));
        let tcp = self
            .timed("connect to first hop", TcpStream::connect(&addr))
            .await?
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let name = tls::server_name(&host).map_err(|e| ClientError::Tls {
            hop: 0,
            reason: e.to_string(),
        })?;
        let tls = self
            .timed("TLS handshake with first hop", self.tls.connect(name, tcp))
            .await?
            .map_err(|e| ClientError::Tls {
                hop: 0,
                reason: e.to_string(),
            })?;
        let (send, conn) = self
            .timed(
                "HTTP/2 handshake with first hop",
                self.h2_builder().handshake(tls),
            )
            .await?
            .map_err(|source| ClientError::H2 { hop: 0, source })?;
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        *guard = Some(FirstHop {
            send: send.clone(),
            _driver: driver,
        });
        drop(guard);
        self.timed("first hop ready", send.ready())
            .await?
            .map_err(|source| ClientError::H2 { hop: 0, source })
    }

    /// Opens a stream through every hop to `target` (`host:port`) over `network`.
    ///
    /// The returned stream carries the application bytes; its end (and a `wl-status` error
    /// of the last relay) is in [`H2Stream::end`].
    ///
    /// # Errors
    /// Connection, TLS or HTTP/2 errors per hop, and [`ClientError::Status`] when a relay
    /// refused or could not reach the next hop while the circuit was being built.
    pub async fn open(&self, target: &str, network: Network) -> Result<H2Stream, ClientError> {
        let n = self.hops.len();
        let mut sender = self.first_sender().await?;
        let mut keep: Vec<AbortOnDrop> = Vec::new();
        let mut outer_end = None;
        for i in 0..n {
            let (remote, net) = if i + 1 < n {
                (self.hops[i + 1].address.clone(), Network::Tcp)
            } else {
                (format!("target://{target}"), network)
            };
            let token = Sharetoken::new(&self.servicekey, self.hops[i].pubkey, unix_now())?;
            let payload = InitPayload::connect(net, &remote, token).to_header_value();
            let (_, _, uri) = self.hops[i].parts()?;
            let req = http::Request::builder()
                .method(http::Method::PUT)
                .uri(uri)
                .header(WL_PAYLOAD, payload)
                .body(())
                .map_err(|e| ClientError::Request(e.to_string()))?;
            let mut ready = self
                .timed("stream slot", sender.ready())
                .await?
                .map_err(|source| ClientError::H2 { hop: i, source })?;
            if i + 1 == n && network == Network::Udp {
                peer_settings(&ready, self.cfg.connect_timeout).await;
            }
            let (resp, send) = ready
                .send_request(req, false)
                .map_err(|source| self.hop_error(i, source, outer_end.as_ref()))?;
            let mut s = H2Stream::new(send, resp);
            s.keep = std::mem::take(&mut keep);
            if i + 1 == n {
                return Ok(s);
            }
            // Nest: a new TLS + HTTP/2 session with hop i+1 inside this stream.
            let slot = s.end_slot();
            let (host, _, _) = self.hops[i + 1].parts()?;
            let name = tls::server_name(&host).map_err(|e| ClientError::Tls {
                hop: i + 1,
                reason: e.to_string(),
            })?;
            let tls = match self
                .timed("nested TLS handshake", self.tls.connect(name, s))
                .await?
            {
                Ok(t) => t,
                Err(e) => {
                    return Err(status_of(i, &slot).unwrap_or(ClientError::Tls {
                        hop: i + 1,
                        reason: e.to_string(),
                    }));
                }
            };
            let (snd, conn) = match self
                .timed("nested HTTP/2 handshake", self.h2_builder().handshake(tls))
                .await?
            {
                Ok(x) => x,
                Err(source) => {
                    return Err(
                        status_of(i, &slot).unwrap_or(ClientError::H2 { hop: i + 1, source })
                    );
                }
            };
            keep.push(AbortOnDrop(tokio::spawn(async move {
                let _ = conn.await;
            })));
            outer_end = Some((i, slot));
            sender = snd;
        }
        Err(ClientError::NoHops)
    }

    fn hop_error(
        &self,
        hop: usize,
        source: h2::Error,
        outer: Option<&(usize, stream::EndSlot)>,
    ) -> ClientError {
        outer
            .and_then(|(i, slot)| status_of(*i, slot))
            .unwrap_or(ClientError::H2 { hop, source })
    }

    /// Sends PING to the first relay and returns its answer (`200 "PONG"`, origin = key).
    ///
    /// # Errors
    /// Connection errors, or [`ClientError::Ping`] when the answer is not a status.
    pub async fn ping(&self) -> Result<Status, ClientError> {
        let mut sender = self.first_sender().await?;
        let (_, _, uri) = self.hops[0].parts()?;
        let req = http::Request::builder()
            .method(http::Method::PUT)
            .uri(uri)
            .header(WL_PAYLOAD, InitPayload::ping().to_header_value())
            .body(())
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let (resp, send) = sender
            .send_request(req, false)
            .map_err(|source| ClientError::H2 { hop: 0, source })?;
        let mut s = H2Stream::new(send, resp);
        let mut body = Vec::new();
        let read = async {
            while let Some(c) = s.recv_chunk().await? {
                body.extend_from_slice(&c);
                if body.len() > 64 * 1024 {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        self.timed("ping answer", read)
            .await?
            .map_err(|e| ClientError::Ping(e.to_string()))?;
        s.finish();
        Status::from_json(body.trim_ascii()).map_err(|e| {
            ClientError::Ping(format!(
                "{e}: {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        })
    }
}

fn status_of(hop: usize, slot: &stream::EndSlot) -> Option<ClientError> {
    match slot.lock().ok()?.clone() {
        StreamEnd::Status(status) => Some(ClientError::Status { hop, status }),
        _ => None,
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Activates a fresh servicekey at a contract (`POST <contract>/servicekey/activate`).
///
/// The proof of funding is a placeholder the devnet contract accepts.
///
/// # Errors
/// [`ClientError::Activate`] on HTTP errors or a reply that is not a signed contract object.
pub async fn activate_servicekey(contract_url: &str) -> Result<Servicekey, ClientError> {
    let mut sk = Servicekey::generate();
    let url = format!("{}/servicekey/activate", contract_url.trim_end_matches('/'));
    let err = |reason: String| ClientError::Activate {
        url: url.clone(),
        reason,
    };
    let body = serde_json::json!({
        "pubkey": sk.public_key(),
        "pof": {"type": "dummy", "expiration": 0, "nonce": "", "signature": ""},
    });
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    let code = resp.status();
    let text = resp.text().await.map_err(|e| err(e.to_string()))?;
    if !code.is_success() {
        return Err(err(format!("HTTP {code}: {}", text.trim())));
    }
    let c: Contract = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    c.verify().map_err(|e| err(e.to_string()))?;
    sk.contract = Some(c);
    Ok(sk)
}

/// Finds a circuit through the relays a contract's directory lists (spec §4.1, §4.8).
///
/// Fetches `<contract>/info`, then the directory's signed `GET /relays` (the signature must
/// be by `directory.public_key`), keeps relays whose `client-relay` minor matches ours, and
/// builds a circuit of `len` hops: 1 = a backing relay; 2 = fronting + backing; more =
/// fronting, entropic…, backing (first suitable relays by address order). When no relay has
/// the wanted role, any relay not yet used is taken, so a one-relay devnet still works.
///
/// # Errors
/// [`ClientError::Activate`] (used for any discovery failure, with the URL) when a request,
/// the signature or the list fails, or the list has fewer than `len` relays.
pub async fn discover_circuit(contract_url: &str, len: usize) -> Result<Vec<Hop>, ClientError> {
    use wireleap_protocol::signed;
    use wireleap_protocol::{ContractInfo, RelayList, Role};
    let base = contract_url.trim_end_matches('/');
    let err = |url: &str, reason: String| ClientError::Activate {
        url: url.to_owned(),
        reason,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| err(base, e.to_string()))?;
    let info_url = format!("{base}/info");
    let info: ContractInfo = http
        .get(&info_url)
        .send()
        .await
        .map_err(|e| err(&info_url, e.to_string()))?
        .json()
        .await
        .map_err(|e| err(&info_url, e.to_string()))?;
    let list_url = info.relays_url();
    let resp = http
        .get(&list_url)
        .send()
        .await
        .map_err(|e| err(&list_url, e.to_string()))?;
    let h = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| err(&list_url, e.to_string()))?;
    signed::verify_directory_reply(
        h.get(signed::HEADER_DIRECTORY_PUBKEY)
            .and_then(|v| v.to_str().ok()),
        h.get(signed::HEADER_DIRECTORY_SIGNATURE)
            .and_then(|v| v.to_str().ok()),
        &body,
        Some(
            &info
                .directory
                .public_key
                .ok_or_else(|| err(&info_url, "contract names no directory key".into()))?,
        ),
    )
    .map_err(|e| err(&list_url, e.to_string()))?;
    let list: RelayList =
        serde_json::from_slice(&body).map_err(|e| err(&list_url, e.to_string()))?;
    let mut pool: Vec<_> = list
        .into_values()
        .filter(|e| {
            e.versions.client_relay.as_deref().is_some_and(|v| {
                wireleap_protocol::version::is_compatible(
                    &wireleap_protocol::version::CLIENT_RELAY,
                    v,
                )
            })
        })
        .collect();
    if len == 0 || pool.len() < len {
        return Err(err(
            &list_url,
            format!("{} usable relays listed, {len} needed", pool.len()),
        ));
    }
    let roles: Vec<Role> = match len {
        1 => vec![Role::Backing],
        n => std::iter::once(Role::Fronting)
            .chain(std::iter::repeat_n(Role::Entropic, n - 2))
            .chain(std::iter::once(Role::Backing))
            .collect(),
    };
    let mut hops = Vec::with_capacity(len);
    for role in roles {
        let i = pool.iter().position(|e| e.role == role).unwrap_or(0);
        let e = pool.remove(i);
        hops.push(Hop::new(e.address, e.pubkey));
    }
    Ok(hops)
}

/// A servicekey signed directly with a contract key (in-process; no HTTP).
pub fn servicekey_signed_by(
    contract_key: &wireleap_protocol::SigningKey,
    settlement_open: i64,
    settlement_close: i64,
) -> Servicekey {
    Servicekey::from_signing_key(
        wireleap_protocol::keys::generate_signing_key(),
        Some(Contract::sign(
            contract_key,
            settlement_open,
            settlement_close,
        )),
    )
}

/// Keeps `Arc` in the public vocabulary for callers sharing one client across tasks.
pub type SharedClient = Arc<CircuitClient>;

/// Waits (at most `within`, checking every millisecond) until the hop's HTTP/2 SETTINGS have
/// arrived on the connection behind `sender`. Until then frames go out at the protocol's
/// default 16 KiB at most, and a larger UDP datagram, which must be one DATA frame, would go
/// out split. The connection's own task reads the SETTINGS; they are known once the hop's
/// stream limit replaced the unlimited default.
async fn peer_settings(sender: &h2::client::SendRequest<Bytes>, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while sender.current_max_send_streams() == usize::MAX && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

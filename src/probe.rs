//! `wireleap-relay probe`: the in-band health check the supervisor asks of a new version inside
//! its health window. It connects to the relay's public listening socket as a client would (TLS
//! 1.3, ALPN `h2`, spec §6.1), opens a `PING` stream (spec §6.3 step 4) and requires the answer
//! `200 "PONG"` with the relay's own public key as `origin`, `count` times, each `interval`
//! after the last (the first too), each on a new connection and bounded by `timeout`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wireleap_protocol::payload::{InitPayload, WL_PAYLOAD};
use wireleap_protocol::status::Status;
use wireleap_protocol::tls_client;

/// The largest answer read.
const MAX_ANSWER: usize = 4096;

/// One `PING` through `addr`; returns the answer's `origin`.
///
/// # Errors
/// What failed (connect, TLS, HTTP/2, the answer), within `timeout` in all.
pub async fn ping(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    tokio::time::timeout(timeout, ping_unbounded(addr))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn ping_unbounded(addr: SocketAddr) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let config = tls_client::client_config().map_err(|e| format!("TLS client: {e}"))?;
    let name = tls_client::server_name(&addr.ip().to_string())
        .map_err(|e| format!("TLS server name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut sender, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = async {
        let req = http::Request::builder()
            .method(http::Method::PUT)
            .uri(format!("https://{addr}/"))
            .header(WL_PAYLOAD, InitPayload::ping().to_header_value())
            .body(())
            .map_err(|e| format!("the request: {e}"))?;
        let (resp, _send) = sender
            .send_request(req, true)
            .map_err(|e| format!("opening the stream: {e}"))?;
        let resp = resp.await.map_err(|e| format!("the answer: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("answered HTTP {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("reading the answer: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_ANSWER || bytes.ends_with(b"\n") {
                break;
            }
        }
        let status = Status::from_json(bytes.trim_ascii()).map_err(|e| {
            format!(
                "the answer is not a status ({e}): {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )
        })?;
        if status != Status::pong(status.origin.clone()) {
            return Err(format!("answered {status:?}, not PONG"));
        }
        Ok(status.origin)
    }
    .await;
    driver.abort();
    answer
}

/// `count` pings through `addr`, each answered by `origin` (the relay's public key); returns how
/// long the slowest took.
///
/// # Errors
/// The first that failed, numbered.
pub async fn probe(
    addr: SocketAddr,
    origin: &str,
    count: u32,
    timeout: Duration,
    interval: Duration,
) -> Result<Duration, String> {
    let mut slowest = Duration::ZERO;
    for i in 1..=count {
        // Each ping `interval` after the last, the first too (at least a moment): the
        // generation that handed over may not have stopped accepting at once.
        tokio::time::sleep(if i == 1 {
            interval.max(Duration::from_millis(200))
        } else {
            interval
        })
        .await;
        let started = Instant::now();
        let answered = ping(addr, timeout)
            .await
            .map_err(|e| format!("ping {i} of {count}: {e}"))?;
        if answered != origin {
            return Err(format!(
                "ping {i} of {count}: answered by {answered:?}, not this relay ({origin})"
            ));
        }
        slowest = slowest.max(started.elapsed());
    }
    Ok(slowest)
}

//! One relay stream: the checks of spec §6.3 in order, then the dial and the splice.
//!
//! Every answer is an HTTP/2 response that ends cleanly: HTTP 405 with a JSON body for a method
//! other than `PUT`; otherwise `:status 200` with `trailer: wl-status`, then either the PONG
//! body (PING), the relayed bytes, or a trailing `wl-status` with the refusal (spec §6.7,
//! §10 #1, #2). Nothing here panics on peer input, and nothing secret is logged: the sharetoken
//! appears only through its redacted `Debug`, and a target's address is logged as `(target)`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tracing::debug;
use wireleap_protocol::payload::{Connect, WL_PAYLOAD};
use wireleap_protocol::status::{self, ORIGIN_TARGET, WL_STATUS};
use wireleap_protocol::{PublicKey, Status, unix_now};

use super::conn::Shared;
use super::splice::{self, Budget, Chunk, SpliceEnd};
use crate::ledger::AdmitError;

/// How long the ledger has to store a token before the stream is refused.
const LEDGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one stream. Returns when the stream has ended (cleanly, as far as the peer allows).
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    budget: &Budget,
    request: Request<RecvStream>,
    mut respond: SendResponse<Chunk>,
) {
    let mut stream_metrics = crate::metrics::stream_started();
    if crate::daemon::fault::blackhole() {
        // The test fault: streams are accepted and never answered.
        std::future::pending::<()>().await;
    }
    // §6.3 step 1: the method.
    if request.method() != Method::PUT {
        debug!(method = %request.method(), "method not allowed");
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        crate::metrics::stream_failed(405);
        method_not_allowed(&mut respond);
        return;
    }
    let (parts, body) = request.into_parts();
    let origin_relay = shared.deps.relay_pubkey.as_str();
    // §6.3 step 3 (+ §10 #3, #13): parse and validate the payload.
    let header = parts
        .headers
        .get(WL_PAYLOAD)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let parsed = if parts.headers.contains_key(WL_PAYLOAD) {
        wireleap_protocol::Request::parse(header)
    } else {
        Err(wireleap_protocol::payload::PayloadError::Missing)
    };
    let connect = match parsed {
        // §6.3 step 4: PING needs nothing else.
        Ok(wireleap_protocol::Request::Ping) => {
            debug!("ping");
            pong(&mut respond, origin_relay);
            return;
        }
        Ok(wireleap_protocol::Request::Connect(_)) if crate::daemon::fault::refuse().is_some() => {
            refuse(
                shared,
                &mut respond,
                crate::daemon::fault::refuse().unwrap_or(503),
                "test fault".to_owned(),
                origin_relay,
            );
            return;
        }
        Ok(wireleap_protocol::Request::Connect(c)) => c,
        Err(e) => {
            refuse(shared, &mut respond, 400, e.to_string(), origin_relay);
            return;
        }
    };
    let Connect {
        network,
        remote,
        token,
        ..
    } = *connect;
    // §6.3 step 5-6: the contract of the token must be admitted (enrolled).
    let contract_id = token.contract_id().map(|k| k.to_b64()).unwrap_or_default();
    let pass = match shared.deps.admission.check(&contract_id) {
        Ok(pass) => pass,
        Err(e) => {
            refuse(shared, &mut respond, 400, e.to_string(), origin_relay);
            return;
        }
    };
    // §6.3 step 7, §5.4 rules 1-4.
    let trusted: Vec<PublicKey> = shared
        .deps
        .admission
        .trusted_ids()
        .iter()
        .filter_map(|id| PublicKey::try_from_b64(id).ok())
        .collect();
    if let Err(e) = token.accept_with(&shared.relay, unix_now(), &trusted, &shared.contracts) {
        refuse(shared, &mut respond, 400, e.to_string(), origin_relay);
        return;
    }
    // §6.3 step 8: errors about the target name the target.
    let origin = if remote.is_target() {
        ORIGIN_TARGET
    } else {
        origin_relay
    };
    // §5.4 rule 5 and §6.3 steps 9-11: the token is stored first, so a replay (or a storage
    // failure) is refused before anything is dialled; the target is then dialled while the
    // flush that makes the token durable runs, and nothing moves until both are done: no byte
    // reaches the target before its token is durable, and a flush that fails drops the dialled
    // connection unused. The refusals keep their order: the ledger's first, then the loopback
    // guard's, then the dial's, so a failed dial still earns its token.
    let deadline = tokio::time::Instant::now() + LEDGER_TIMEOUT;
    let pending = match tokio::time::timeout_at(deadline, shared.deps.ledger.store(&token)).await {
        Ok(Ok(pending)) => pending,
        refused => {
            let refused = refused.map(|r| r.map(drop));
            return refuse_ledger(shared, &mut respond, refused, origin_relay);
        }
    };
    let durable = tokio::time::timeout_at(deadline, pending.durable());
    let dial = async {
        // §6.3 step 9: the loopback guard.
        if !shared.limits.allow_loopback
            && let Err(e) = remote.check_loopback()
        {
            return Err((400, e.to_string()));
        }
        if remote.is_target() {
            debug!(protocol = %network, "dialing {network} connection to (target)");
        } else {
            debug!(protocol = %network, remote = %remote, "dialing {network} connection to {remote}");
        }
        let dialed =
            crate::metrics::timed_dial(splice::dial(network, &remote, shared.limits.dial_timeout))
                .await;
        dialed.map_err(|e| {
            debug!(error = %e, "dial failed");
            (if e.is_timeout() { 408 } else { 502 }, e.to_string())
        })
    };
    let (mut durable, mut dial) = (std::pin::pin!(durable), std::pin::pin!(dial));
    let mut dialed = None;
    let on_disk = loop {
        tokio::select! {
            biased;
            a = &mut durable => break a,
            d = &mut dial, if dialed.is_none() => dialed = Some(d),
        }
    };
    if !matches!(on_disk, Ok(Ok(()))) {
        return refuse_ledger(shared, &mut respond, on_disk, origin_relay);
    }
    shared.counters.admitted.fetch_add(1, Ordering::Relaxed);
    crate::metrics::token_admitted();
    let dialed = match dialed {
        Some(d) => d,
        None => dial.await,
    };
    let remote_conn = match dialed {
        Ok(r) => r,
        Err((code, why)) => {
            refuse(shared, &mut respond, code, why, origin);
            return;
        }
    };
    // The response head goes out now; the client has been sending already (spec §6.2).
    let Ok(mut send) = respond.send_response(ok_head(), false) else {
        return;
    };
    // §6.3 step 12.
    stream_metrics.relaying();
    let end = splice::run(
        remote_conn,
        body,
        &mut send,
        &shared.limits,
        budget,
        &pass.cancel,
        &pass.meter,
    )
    .await;
    debug!(end = ?end, "stream ended");
    match end {
        SpliceEnd::Done => {
            let _ = send.send_data(Chunk::from(Bytes::new()), true);
        }
        SpliceEnd::ClientGone => {}
        SpliceEnd::Failed { timeout, why } => {
            let code = if timeout { 408 } else { 410 };
            crate::metrics::stream_failed(code);
            let _ = send.send_trailers(status_trailer(&Status::new(code, why).with_origin(origin)));
        }
    }
}

/// Refuses a stream whose token the ledger did not admit (`outcome` is not `Ok(Ok(()))`): a
/// replay is the client's 400; a storage failure or no answer in time is the relay's 500.
fn refuse_ledger(
    shared: &Shared,
    respond: &mut SendResponse<Chunk>,
    outcome: Result<Result<(), AdmitError>, tokio::time::error::Elapsed>,
    origin_relay: &str,
) {
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e @ AdmitError::Duplicate)) => {
            refuse(shared, respond, 400, e.to_string(), origin_relay);
        }
        Ok(Err(e)) => {
            debug!(error = %e, "ledger refused the sharetoken");
            refuse(shared, respond, 500, e.to_string(), origin_relay);
        }
        Err(_) => {
            debug!("ledger did not answer");
            let why = format!(
                "could not store sharetoken: ledger unavailable (no answer within {} s)",
                LEDGER_TIMEOUT.as_secs()
            );
            refuse(shared, respond, 500, why, origin_relay);
        }
    }
}

/// `:status 200` with `trailer: wl-status` (spec §6.3 step 2).
fn ok_head() -> Response<()> {
    let mut r = Response::new(());
    r.headers_mut()
        .insert(http::header::TRAILER, HeaderValue::from_static(WL_STATUS));
    r
}

/// The trailer block carrying `status` as compact JSON.
fn status_trailer(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    let json = status.to_json();
    // Compact JSON escapes control characters; `from_bytes` also admits non-ASCII text. The
    // fallback keeps the code and origin if a description could still not be encoded.
    let value = HeaderValue::from_bytes(json.as_bytes()).unwrap_or_else(|_| {
        let safe = Status::new(status.code, "invalid status text").with_origin(&status.origin);
        HeaderValue::from_bytes(safe.to_json().as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static(r#"{"code":500}"#))
    });
    map.insert(WL_STATUS, value);
    map
}

/// Refuses a stream: the 200 head, then the status in the trailer (spec §6.7).
/// Whether a refusal with `code` is the relay's own failure (a 5xx other than the target's:
/// 502 and 504 say the target could not be reached), not the client's mistake: what the
/// supervisor compares between a new version and the old.
fn relay_fault(code: u16) -> bool {
    code >= 500 && code != 502 && code != 504
}

fn refuse(
    shared: &Shared,
    respond: &mut SendResponse<Chunk>,
    code: u16,
    description: String,
    origin: &str,
) {
    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
    if relay_fault(code) {
        shared.counters.failed.fetch_add(1, Ordering::Relaxed);
    }
    crate::metrics::stream_failed(code);
    debug!(code, description = %description, "stream refused");
    let status = Status::new(code, description).with_origin(origin);
    if let Ok(mut send) = respond.send_response(ok_head(), false) {
        let _ = send.send_trailers(status_trailer(&status));
    }
}

/// PING: the PONG status plus a newline as the body, then a clean end (spec §6.3 step 4).
fn pong(respond: &mut SendResponse<Chunk>, relay: &str) {
    let mut body = Status::pong(relay).to_json();
    body.push('\n');
    if let Ok(mut send) = respond.send_response(ok_head(), false) {
        let _ = send.send_data(Chunk::from(Bytes::from(body)), true);
    }
}

/// HTTP 405 with the reference's JSON body (spec §6.2).
fn method_not_allowed(respond: &mut SendResponse<Chunk>) {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let mut body = status::METHOD_NOT_ALLOWED.status().to_json();
    body.push('\n');
    if let Ok(mut send) = respond.send_response(r, false) {
        let _ = send.send_data(Chunk::from(Bytes::from(body)), true);
    }
}

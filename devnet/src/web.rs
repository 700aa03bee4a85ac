//! HTTP plumbing shared by the devnet servers: status replies, the request recorder, and the
//! gate that applies down mode, the contract's 500 mode and the interface version rules of
//! spec §7 (request check when the header is present, own version header on every reply).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use wireleap_protocol::status::{self, Catalogued};
use wireleap_protocol::{Status, version};

use crate::state::{Down, MAX_BODY, RecordedRequest, Server, Shared};

/// Per-server handler context.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) shared: Shared,
    pub(crate) server: Server,
}

/// Path prefix of the admin API (never recorded, never gated).
pub(crate) const ADMIN_PREFIX: &str = "/_devnet/";

/// A status object reply with the given HTTP code. The body ends with a newline, as Go's
/// `http.Error` writes it.
pub(crate) fn status_reply(s: &Status) -> Response {
    let code = StatusCode::from_u16(s.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (code, format!("{}\n", s.to_json())).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A catalogue status with a cause.
pub(crate) fn fail(c: Catalogued, cause: impl Into<String>) -> Response {
    status_reply(&c.with_cause(cause))
}

/// A JSON reply with 200.
pub(crate) fn json_reply(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The first value of a header as text.
pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Records every non-admin request (body buffered up to [`MAX_BODY`]).
pub(crate) async fn record(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if path.starts_with(ADMIN_PREFIX) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return fail(status::BAD_REQUEST, format!("could not read body: {e}")),
    };
    ctx.shared.record(RecordedRequest {
        server: ctx.server,
        method: parts.method.to_string(),
        path,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
        time_ms: now_ms(),
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Down mode, 500 mode and the version gate; adds the server's version header to replies.
pub(crate) async fn gate(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with(ADMIN_PREFIX) {
        return next.run(req).await;
    }
    let (down, fail500, override_version) = {
        let mut st = ctx.shared.lock();
        let down = st
            .switches
            .down
            .get(&ctx.server)
            .copied()
            .unwrap_or(Down::Up);
        let mut fail500 = false;
        if ctx.server == Server::Contract && st.switches.contract_fail_500 > 0 {
            fail500 = true;
            if st.switches.contract_fail_500 != u64::MAX {
                st.switches.contract_fail_500 -= 1;
            }
        }
        let ov = st.switches.version_override.get(&ctx.server).cloned();
        (down, fail500, ov)
    };
    match down {
        Down::Up => {}
        Down::Unavailable | Down::Refuse => {
            return status_reply(&Status::new(503, "service unavailable"));
        }
        Down::Close => {
            // Headers go out, then the body errors: hyper drops the connection mid-reply.
            let stream = futures::stream::once(async {
                Err::<bytes::Bytes, std::io::Error>(std::io::Error::other("devnet: close"))
            });
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, "100")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    }
    let iface = match ctx.server {
        Server::Contract => Some((
            version::HEADER_RELAY_CONTRACT_VERSION,
            version::RELAY_CONTRACT,
        )),
        Server::Directory => Some((version::HEADER_RELAY_DIR_VERSION, version::RELAY_DIR)),
        Server::Releases => None,
    };
    let Some((hname, real)) = iface else {
        return next.run(req).await;
    };
    let ours = override_version
        .as_deref()
        .and_then(|v| semver::Version::parse(v).ok())
        .unwrap_or(real);
    let mut resp = if fail500 {
        status_reply(&status::INTERNAL.status())
    } else if let Err(e) = version::check_request(&ours, header_str(req.headers(), hname)) {
        fail(status::BAD_REQUEST, e.to_string())
    } else {
        next.run(req).await
    };
    // An override that is not semver is still sent as is (to test the caller's parse error).
    let text = override_version.unwrap_or_else(|| ours.to_string());
    if let Ok(v) = HeaderValue::from_str(&text) {
        resp.headers_mut().insert(hname, v);
    }
    resp
}

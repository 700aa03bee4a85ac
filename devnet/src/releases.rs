//! The release file server: serves a directory tree read-only.
//!
//! GET and HEAD only (405 otherwise), no directory listings (404), and any path with a `..`,
//! `.`, backslash or NUL segment, or one that resolves outside the root (symlinks included),
//! is refused with 400. Test switches: stall after N bytes (the connection stays open and
//! silent), and endless bodies.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use wireleap_protocol::status;

use crate::state::STALL_HOLD;
use crate::web::{Ctx, fail};

pub(crate) fn routes() -> Router<Ctx> {
    Router::new().fallback(serve)
}

/// Resolves a URL path to a file under `root`, or explains why not.
fn resolve(root: &Path, url_path: &str) -> Result<PathBuf, Box<Response>> {
    let mut out = root.to_path_buf();
    for seg in url_path.split('/').filter(|s| !s.is_empty()) {
        let seg =
            percent_decode(seg).ok_or_else(|| Box::new(fail(status::BAD_REQUEST, "bad path")))?;
        if seg == ".." || seg == "." || seg.contains(['/', '\\', '\0']) {
            return Err(Box::new(fail(
                status::BAD_REQUEST,
                "path traversal refused",
            )));
        }
        out.push(seg);
    }
    let canon_root = root
        .canonicalize()
        .map_err(|_| Box::new(status_only(StatusCode::NOT_FOUND)))?;
    let canon = out
        .canonicalize()
        .map_err(|_| Box::new(status_only(StatusCode::NOT_FOUND)))?;
    if !canon.starts_with(&canon_root) {
        return Err(Box::new(fail(
            status::BAD_REQUEST,
            "path traversal refused",
        )));
    }
    if !canon.is_file() {
        return Err(Box::new(status_only(StatusCode::NOT_FOUND)));
    }
    Ok(canon)
}

fn status_only(code: StatusCode) -> Response {
    let c = match code {
        StatusCode::NOT_FOUND => status::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED => status::METHOD_NOT_ALLOWED,
        _ => status::INTERNAL,
    };
    crate::web::status_reply(&c.status())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn serve(State(ctx): State<Ctx>, req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(root) = ctx.shared.releases_root.clone() else {
        return status_only(StatusCode::NOT_FOUND);
    };
    let path = match resolve(&root, req.uri().path()) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let (stall, endless) = {
        let st = ctx.shared.lock();
        (st.switches.stall_after_bytes, st.switches.endless)
    };
    if endless {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let s = futures::stream::repeat(chunk).map(Ok::<_, std::io::Error>);
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from_stream(s))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let data = match tokio::fs::read(&path).await {
        Ok(d) => d,
        Err(_) => return status_only(StatusCode::NOT_FOUND),
    };
    let len = data.len();
    let body = match stall {
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(len);
            let head = Bytes::from(data).slice(..n);
            let s = futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
                futures::stream::once(async {
                    tokio::time::sleep(STALL_HOLD).await;
                    Err(std::io::Error::other("devnet: stalled download dropped"))
                }),
            );
            Body::from_stream(s)
        }
        None => Body::from(data),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

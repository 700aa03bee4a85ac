//! The REST status API (spec §2.6): `GET /api/status` over plain HTTP/1.1, on a unix socket
//! (`file:///path`, chmod to `socket_umask`) or on `http://host:port`. Other methods get 405 with
//! a JSON status body, other paths 404. The reply is the same object SIGUSR2 prints.
//!
//! Off unless `rest_api.address` is set. The unix socket file is replaced at start and removed
//! at shutdown. A TCP port is shared with the relay's next generation during a handover, and
//! with no other relay ([`crate::shared_port`]). Who calls it: the daemon, once before it starts
//! anything ([`check`]), once after the actors run ([`start`]).

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::{RestAddress, RestApi};
use crate::shared_port;
use crate::status::StatusSource;

/// The config.json key of the address, for messages.
const OPTION: &str = "rest_api.address";

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound, or the socket file not replaced or chmod-ed.
    #[error("could not start the REST API on {address}: {source}")]
    Bind {
        /// The configured address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TCP port could not be bound, or another relay (or process) holds it.
    #[error("could not start the REST API on {address}: {source}")]
    Port {
        /// The configured address.
        address: String,
        /// Why.
        source: shared_port::Error,
    },
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// A running REST API. Dropping it does not stop it; call [`RestApiHandle::stop`].
#[derive(Debug)]
pub struct RestApiHandle {
    stop: CancellationToken,
    /// The unix socket file and its (device, inode): removed at stop only while it is still ours
    /// (after a handover the next generation has bound a new one at the same path).
    socket: Option<(PathBuf, (u64, u64))>,
    /// Where it listens, for the log.
    pub address: String,
}

impl RestApiHandle {
    /// Stops accepting and removes the unix socket file if it is still this one.
    pub fn stop(&self) {
        self.stop.cancel();
        if let Some((path, id)) = &self.socket
            && file_id(path).is_some_and(|now| now == *id)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether the API can bind its TCP address: free, or held only by this relay's previous
/// generation (see [`crate::shared_port`]). A unix socket is not checked (its file is
/// replaced). Run before the relay starts anything.
///
/// # Errors
/// [`Error::Bind`] when the address does not resolve, [`Error::Port`].
pub fn check(config: &RestApi, home: &Path) -> Result<(), Error> {
    let hostport = match &config.address {
        RestAddress::Http(hostport) => hostport,
        RestAddress::Unix(path) => {
            return socket_folder_usable(path).map_err(|source| Error::Bind {
                address: format!("file://{}", path.display()),
                source,
            });
        }
    };
    let address = std::net::ToSocketAddrs::to_socket_addrs(hostport.as_str())
        .and_then(|mut a| a.next().ok_or_else(resolves_to_nothing))
        .map_err(|source| Error::Bind {
            address: hostport.clone(),
            source,
        })?;
    shared_port::check(address, OPTION, home).map_err(|source| Error::Port {
        address: hostport.clone(),
        source,
    })
}

/// Whether this process may create the unix socket `path`: its folder exists, and this user
/// may write and search it (under systemd, `/run/wireleap` of the unit's `RuntimeDirectory=`).
///
/// # Errors
/// Why not, naming the folder.
pub fn socket_folder_usable(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|errno| {
        std::io::Error::new(
            std::io::Error::from(errno).kind(),
            format!(
                "cannot create a socket in {}: {}",
                dir.display(),
                errno.desc()
            ),
        )
    })
}

/// Binds the configured address and serves in the background.
///
/// # Errors
/// [`Error::Bind`], [`Error::Port`].
pub async fn start(
    config: &RestApi,
    home: &Path,
    source: StatusSource,
) -> Result<RestApiHandle, Error> {
    let (listener, address) = match &config.address {
        RestAddress::Unix(path) => {
            let address = format!("file://{}", path.display());
            let bind_err = |source| Error::Bind {
                address: address.clone(),
                source,
            };
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(bind_err(e)),
            }
            let l = UnixListener::bind(path).map_err(bind_err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
                .map_err(bind_err)?;
            (Listener::Unix(l, path.clone()), address)
        }
        RestAddress::Http(hostport) => {
            let address = tokio::net::lookup_host(hostport)
                .await
                .and_then(|mut a| a.next().ok_or_else(resolves_to_nothing))
                .map_err(|source| Error::Bind {
                    address: hostport.clone(),
                    source,
                })?;
            let l = shared_port::bind(address, OPTION, home)
                .await
                .map_err(|source| Error::Port {
                    address: hostport.clone(),
                    source,
                })?;
            let bound = l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| hostport.clone());
            (Listener::Tcp(l), format!("http://{bound}"))
        }
    };
    info!(address = %address, "REST API listening");
    let stop = CancellationToken::new();
    let socket = match &listener {
        Listener::Unix(_, p) => file_id(p).map(|id| (p.clone(), id)),
        Listener::Tcp(_) => None,
    };
    tokio::spawn(serve(listener, Arc::new(source), stop.clone()));
    Ok(RestApiHandle {
        stop,
        socket,
        address,
    })
}

/// (device, inode) of a file.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn resolves_to_nothing() -> std::io::Error {
    std::io::Error::other("the address resolves to nothing")
}

async fn serve(listener: Listener, source: Arc<StatusSource>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = accept(&listener) => a,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // Out of descriptors, say: a pause, not a loop that spins beside the data path.
                debug!(error = %e, "REST API accept failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let source = Arc::clone(&source);
                async move { Ok::<_, Infallible>(respond(req, &source).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            if let Err(e) = conn.await {
                debug!(error = %e, "REST API connection ended");
            }
        });
    }
}

type Io = TokioIo<Box<dyn IoStream>>;

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoStream for T {}

async fn accept(listener: &Listener) -> std::io::Result<Io> {
    Ok(match listener {
        Listener::Unix(l, _) => TokioIo::new(Box::new(l.accept().await?.0) as Box<dyn IoStream>),
        Listener::Tcp(l) => TokioIo::new(Box::new(l.accept().await?.0) as Box<dyn IoStream>),
    })
}

async fn respond(req: Request<Incoming>, source: &StatusSource) -> Response<Full<Bytes>> {
    let (code, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/api/status") => (StatusCode::OK, source.json().await.to_string()),
        (_, "/api/status") => (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"code":405,"description":"HTTP method not allowed"}"#.to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"code":404,"description":"resource not found"}"#.to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

//! The control socket: `<home>/wireleap-relay-supervisor.sock`, a unix stream socket with mode
//! 0600 (only the relay's user may steer it). One JSON request per line, one JSON reply per line:
//!
//! | request | reply |
//! | --- | --- |
//! | `{"cmd":"status"}` | `{"ok":true,"pid":N,"state":"serving"\|"starting"\|"upgrading"\|"rolling-back","version":V,"prev_version":A,"highest_committed":H,"skipped":[..],"last":{"version","step","detail"},"draining":[pids]}` |
//! | `{"cmd":"upgrade","version":"V"}` | when the staged `V` is committed or rolled back: `{"ok":bool,"version":V,"from":A,"error"?}` |
//! | `{"cmd":"rollback"}` | when `wireleap-relay.prev` serves again (or could not): `{"ok":bool,"version":A,"from":B,"error"?}` |
//!
//! The supervision loop polls it without blocking; a request that needs time (an upgrade) keeps
//! its connection until the reply.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The socket's file name in the home directory.
pub use wireleap_home::files::CONTROL_SOCKET as SOCKET;
/// Largest request line accepted.
const MAX_REQUEST: u64 = 4096;

/// The listening control socket.
#[derive(Debug)]
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
}

/// A request and the connection its reply goes to.
#[derive(Debug)]
pub struct Request {
    /// The parsed request.
    pub body: Value,
    conn: UnixStream,
}

impl Control {
    /// Binds the socket in `home` (replacing a stale one) with mode 0600.
    ///
    /// # Errors
    /// An I/O error.
    pub fn bind(home: &Path) -> std::io::Result<Self> {
        let path = home.join(SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path })
    }

    /// A waiting request, if any. Malformed requests are answered and dropped here.
    pub fn poll(&self) -> Option<Request> {
        let (conn, _) = self.listener.accept().ok()?;
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let read = BufReader::new(std::io::Read::take(&conn, MAX_REQUEST)).read_line(&mut line);
        match read
            .ok()
            .and_then(|_| serde_json::from_str::<Value>(&line).ok())
        {
            Some(body) => Some(Request { body, conn }),
            None => {
                let mut conn = conn;
                let _ = writeln!(
                    conn,
                    r#"{{"ok":false,"error":"expected one JSON object per line"}}"#
                );
                None
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Request {
    /// The `cmd` field.
    pub fn cmd(&self) -> &str {
        self.body.get("cmd").and_then(Value::as_str).unwrap_or("")
    }

    /// Sends the reply and closes the connection.
    pub fn reply(mut self, reply: &Value) {
        let _ = writeln!(self.conn, "{reply}");
    }
}

/// Client side: sends `request` to the supervisor of `home` and waits up to `wait` for the reply.
///
/// # Errors
/// An I/O error (no supervisor, timeout) or an unparsable reply.
pub fn call(home: &Path, request: &Value, wait: Duration) -> std::io::Result<Value> {
    let mut conn = UnixStream::connect(home.join(SOCKET))?;
    conn.set_read_timeout(Some(wait))?;
    writeln!(conn, "{request}")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

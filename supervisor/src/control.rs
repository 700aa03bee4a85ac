//! The control socket's server side: `<home>/wireleap-relay-supervisor.sock`, a unix stream
//! socket with mode 0600 (only the relay's user may steer it), speaking the typed protocol of
//! [`wireleap_home::control`]. The supervision loop polls it without blocking; a request that
//! needs time (an upgrade) keeps its connection until the reply.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wireleap_home::control::MAX_REQUEST;
pub use wireleap_home::control::{Reply, Request, State, call};

/// The socket's file name in the home directory.
pub use wireleap_home::files::CONTROL_SOCKET as SOCKET;

/// The listening control socket.
#[derive(Debug)]
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
}

/// A request's connection, waiting for its reply.
#[derive(Debug)]
pub struct Pending {
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
        // Under privilege separation the relay's group may ask too (its Upgrader does).
        crate::privsep::share_socket(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path })
    }

    /// A waiting request, if any. A request that is not one (malformed, unknown, of a newer
    /// protocol, an upgrade naming no plain version) is answered with why and dropped here.
    pub fn poll(&self) -> Option<(Request, Pending)> {
        let (conn, _) = self.listener.accept().ok()?;
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let read = BufReader::new(std::io::Read::take(&conn, MAX_REQUEST)).read_line(&mut line);
        let pending = Pending { conn };
        match read
            .map_err(|e| e.to_string())
            .and_then(|_| Request::parse(&line))
        {
            Ok(request) => Some((request, pending)),
            Err(why) => {
                crate::run::warn(&format!("control request refused: {why}"));
                pending.reply(&Reply::error(why));
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

impl Pending {
    /// Sends the reply and closes the connection.
    pub fn reply(mut self, reply: &Reply) {
        let _ = writeln!(self.conn, "{}", reply.to_line());
    }
}

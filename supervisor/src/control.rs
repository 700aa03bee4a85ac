//! The control socket's server side: `<home>/wireleap-relay-supervisor.sock`, a unix stream
//! socket with mode 0600 (only the relay's user may steer it), speaking the typed protocol of
//! [`wireleap_home::control`]. The supervision loop polls it without blocking; a request that
//! needs time (an upgrade) keeps its connection until the reply.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
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
    /// Requests read by their connection's own thread.
    read: Receiver<(Request, Pending)>,
    reader: Sender<(Request, Pending)>,
}

/// A request's connection, waiting for its reply.
#[derive(Debug)]
pub struct Pending {
    conn: UnixStream,
}

/// How long a client has to send its whole request.
pub const READ_WAIT: Duration = Duration::from_secs(2);

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
        let (reader, read) = std::sync::mpsc::channel();
        Ok(Self {
            listener,
            path,
            read,
            reader,
        })
    }

    /// A waiting request, if any. Each connection is read on a thread of its own, within
    /// [`READ_WAIT`] in all, so a slow or silent client never holds the loop. A request that is
    /// not one (malformed, unknown, of a newer protocol, an upgrade naming no plain version) is
    /// answered with why and dropped there.
    pub fn poll(&self) -> Option<(Request, Pending)> {
        while let Ok((conn, _)) = self.listener.accept() {
            let tx = self.reader.clone();
            std::thread::spawn(move || {
                if let Some(request) = read_request(conn) {
                    let _ = tx.send(request);
                }
            });
        }
        self.read.try_recv().ok()
    }
}

/// Reads one request line from `conn` within [`READ_WAIT`].
fn read_request(conn: UnixStream) -> Option<(Request, Pending)> {
    use std::io::Read as _;
    let deadline = std::time::Instant::now() + READ_WAIT;
    let _ = conn.set_nonblocking(false);
    let mut line = Vec::new();
    let mut byte = [0u8; 512];
    let mut reader = &conn;
    let read = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break Err(format!("no complete request within {READ_WAIT:?}"));
        }
        let _ = conn.set_read_timeout(Some(left));
        match reader.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                line.extend_from_slice(&byte[..n]);
                if line.contains(&b'\n') || line.len() as u64 >= MAX_REQUEST {
                    break Ok(());
                }
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let pending = Pending { conn };
    let text = String::from_utf8_lossy(&line);
    let first = text.split_inclusive('\n').next().unwrap_or("").to_owned();
    match read.and_then(|()| Request::parse(&first)) {
        Ok(request) => Some((request, pending)),
        Err(why) => {
            crate::run::warn(&format!("control request refused: {why}"));
            pending.reply(&Reply::error(why));
            None
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

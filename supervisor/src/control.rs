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
    /// Connections being read now (at most [`MAX_READERS`]).
    readers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// A request's connection, waiting for its reply.
#[derive(Debug)]
pub struct Pending {
    conn: UnixStream,
}

/// How long a client has to send its whole request.
pub const READ_WAIT: Duration = Duration::from_secs(2);

/// Connections taken per turn of the loop: a flood of them cannot keep the loop in `poll`.
pub const ACCEPT_PER_TURN: usize = 16;

/// Connections read at once, each on a thread of its own; more are closed unread (their client
/// sees the connection end without an answer, and may ask again).
pub const MAX_READERS: usize = 32;

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
            readers: std::sync::Arc::default(),
        })
    }

    /// A waiting request, if any. Each connection is read on a thread of its own, within
    /// [`READ_WAIT`] in all, so a slow or silent client never holds the loop. A request that is
    /// not one (malformed, unknown, of a newer protocol, an upgrade naming no plain version) is
    /// answered with why and dropped there.
    ///
    /// At most [`ACCEPT_PER_TURN`] connections are taken per call and [`MAX_READERS`] read at
    /// once, so a flood of connections neither holds the loop nor piles up threads; a thread the
    /// OS refuses drops its connection, never the loop.
    pub fn poll(&self) -> Option<(Request, Pending)> {
        use std::sync::atomic::Ordering::SeqCst;
        for _ in 0..ACCEPT_PER_TURN {
            let Ok((conn, _)) = self.listener.accept() else {
                break;
            };
            if self.readers.fetch_add(1, SeqCst) >= MAX_READERS {
                self.readers.fetch_sub(1, SeqCst);
                continue;
            }
            let (tx, readers) = (self.reader.clone(), self.readers.clone());
            let spawned = std::thread::Builder::new()
                .name("control-read".into())
                .spawn(move || {
                    // Gives the slot back however the thread ends.
                    struct Slot(std::sync::Arc<std::sync::atomic::AtomicUsize>);
                    impl Drop for Slot {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, SeqCst);
                        }
                    }
                    let _slot = Slot(readers);
                    if let Some(request) = read_request(conn) {
                        let _ = tx.send(request);
                    }
                });
            if spawned.is_err() {
                self.readers.fetch_sub(1, SeqCst);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    /// A flood of silent connections neither keeps `poll` taking them nor piles up reader
    /// threads past [`MAX_READERS`]; once they are gone, a request is read and answered.
    #[test]
    fn a_flood_of_silent_connections_is_bounded_and_requests_still_get_through() {
        let home = tempfile::tempdir().unwrap();
        let control = Control::bind(home.path()).unwrap();
        let flood: Vec<UnixStream> = (0..3 * MAX_READERS)
            .map(|_| UnixStream::connect(home.path().join(SOCKET)).unwrap())
            .collect();
        // Each turn takes at most ACCEPT_PER_TURN of them.
        assert!(control.poll().is_none());
        assert!(control.readers.load(SeqCst) <= ACCEPT_PER_TURN);
        for _ in 0..2 * MAX_READERS / ACCEPT_PER_TURN + 2 {
            assert!(control.poll().is_none());
        }
        assert_eq!(control.readers.load(SeqCst), MAX_READERS);
        // The silent clients go: their readers end, and a request is served again.
        drop(flood);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while control.readers.load(SeqCst) > 0 {
            assert!(std::time::Instant::now() < deadline, "readers did not end");
            let _ = control.poll();
            std::thread::sleep(Duration::from_millis(5));
        }
        let h = home.path().to_path_buf();
        let asker = std::thread::spawn(move || call(&h, &Request::Status, Duration::from_secs(10)));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (request, pending) = loop {
            if let Some(got) = control.poll() {
                break got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the request was not read"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(request, Request::Status);
        pending.reply(&Reply::error("answered"));
        let reply = asker.join().unwrap().unwrap();
        assert_eq!(reply.error.as_deref(), Some("answered"));
    }
}

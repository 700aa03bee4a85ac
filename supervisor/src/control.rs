//! The control socket's server side: `<home>/wireleap-relay-supervisor.sock`, a unix stream
//! socket with mode 0600 (only the relay's user may steer it; 0660 with the relay's group under
//! privilege separation), speaking the typed protocol of [`wireleap_home::control`]. The
//! supervision loop polls it without blocking; a request that needs time (an upgrade) keeps its
//! connection until the reply.
//!
//! Who asks matters under privilege separation ([`authorize`]): the relay's user (a relay
//! process, or anyone who can act as it) may ask for status, upgrades to versions not on the
//! skip list (the supervisor verifies the release itself), a rollback only with a signed recall
//! of the running version, and a skip only with the version's signed statement listing no
//! binary for this host (both verified). A rollback without a recall and a retry of a skipped
//! version are the operator's, asked as root or as the supervisor's user.

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
    /// The uid of the process that connected (`SO_PEERCRED`), if the kernel said.
    peer: Option<u32>,
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
    let peer = rustix::net::sockopt::socket_peercred(&conn)
        .ok()
        .map(|c| c.uid.as_raw());
    let mut line = Vec::new();
    let mut byte = [0u8; 4096];
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
                if byte[..n].contains(&b'\n') || line.len() as u64 >= MAX_REQUEST {
                    break Ok(());
                }
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let pending = Pending { conn, peer };
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
    /// The uid of the process that asked, if known.
    #[must_use]
    pub fn peer(&self) -> Option<u32> {
        self.peer
    }

    /// Sends the reply and closes the connection.
    pub fn reply(mut self, reply: &Reply) {
        let _ = writeln!(self.conn, "{}", reply.to_line());
    }
}

/// Who asks, as far as the supervisor can tell.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The asking process's uid (`SO_PEERCRED`), if the kernel said.
    pub peer: Option<u32>,
    /// The relay's user, under privilege separation.
    pub relay: Option<&'a crate::privsep::RelayUser>,
    /// The supervisor's own uid.
    pub own: u32,
}

impl Asker<'_> {
    /// Whether the asker holds the operator's authority: under privilege separation only root
    /// and the supervisor's own user do; the relay's user, the members of its group (trusted as
    /// much as it and no more) and an asker whose uid is unknown do not. Run as one user,
    /// everyone who can reach the socket is that user.
    #[must_use]
    pub fn is_operator(&self) -> bool {
        self.relay.is_none() || self.peer.is_some_and(|uid| uid == self.own || uid == 0)
    }

    /// The asker, named for a refusal.
    fn named(&self) -> String {
        match (self.peer, self.relay) {
            (Some(uid), Some(relay)) if uid == relay.uid => {
                format!("the relay's user {} (uid {uid})", relay.name)
            }
            (Some(uid), _) => format!("uid {uid}, neither root nor the supervisor's user"),
            (None, _) => "a process whose user the kernel did not name".to_owned(),
        }
    }
}

/// Whether `asker` may ask for `request` in `home`. What only the operator may do (no downgrade
/// but the operator's; a failed version is retried only by the operator): roll back without a
/// signed recall of the running version, and retry a version of the skip list (`skipped` says whether a version is on it; a list that cannot be read counts
/// as holding it). Everything else anyone who can reach the socket may ask; the supervisor
/// verifies what it installs itself.
///
/// # Errors
/// Why the request is refused, with what to do instead, for the reply.
pub fn authorize(
    request: &Request,
    asker: &Asker<'_>,
    home: &Path,
    skipped: impl FnOnce(&str) -> Result<bool, String>,
) -> Result<(), String> {
    if asker.is_operator() {
        return Ok(());
    }
    match request {
        Request::Rollback { recall: None } => Err(format!(
            "a rollback is the operator's: this request came from {}, which may ask for one only with a signed recall of the running version; ask as root (sudo wireleap-relay rollback) or as the supervisor's user",
            asker.named()
        )),
        Request::Upgrade { version } => {
            let why = match skipped(version) {
                Ok(false) => return Ok(()),
                Ok(true) => format!("{version} is on the skip list (it failed here before)"),
                Err(e) => format!("the skip list cannot be read ({e})"),
            };
            Err(format!(
                "{why}: retrying it is the operator's, and this request came from {}; it stays staged until another release is: ask as root: sudo {} ctl upgrade {version}",
                asker.named(),
                home.join(wireleap_home::files::SUPERVISOR_BIN).display()
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    /// Under privilege separation the relay's user may steer upgrades and ask for a recall, but
    /// only the operator (root, the supervisor's user) rolls back without one or retries a
    /// skipped version; run as one user, everyone may.
    #[test]
    fn what_is_the_operators_is_refused_to_the_relays_user_only() {
        let relay = crate::privsep::RelayUser {
            name: "wireleap".to_owned(),
            uid: 1001,
            gid: 1001,
        };
        let own = 998;
        let home = Path::new("/opt/wireleap-relay");
        let operator = Request::Rollback { recall: None };
        let recall = Request::Rollback {
            recall: Some("signed".to_owned()),
        };
        let upgrade = |v: &str| Request::Upgrade {
            version: v.to_owned(),
        };
        // 1.0.0 is skipped; the list holds nothing else; for 3.0.0 it cannot be read.
        let skipped = |v: &str| match v {
            "1.0.0" => Ok(true),
            "3.0.0" => Err("Permission denied".to_owned()),
            _ => Ok(false),
        };
        for (request, peer, relay, allowed) in [
            (&operator, Some(1001), Some(&relay), false),
            (&operator, None, Some(&relay), false),
            (&operator, Some(1002), Some(&relay), false),
            (&operator, Some(0), Some(&relay), true),
            (&operator, Some(own), Some(&relay), true),
            (&recall, Some(1001), Some(&relay), true),
            (&recall, None, Some(&relay), true),
            (&upgrade("2.0.0"), Some(1001), Some(&relay), true),
            (&upgrade("1.0.0"), Some(1001), Some(&relay), false),
            (&upgrade("3.0.0"), Some(1001), Some(&relay), false),
            (&upgrade("1.0.0"), Some(0), Some(&relay), true),
            (&Request::Status, None, Some(&relay), true),
            (&operator, Some(1001), None, true),
            (&upgrade("1.0.0"), None, None, true),
        ] {
            let asker = Asker { peer, relay, own };
            let got = authorize(request, &asker, home, skipped);
            assert_eq!(got.is_ok(), allowed, "{request:?} from {peer:?}: {got:?}");
        }
        let relays = Asker {
            peer: Some(1001),
            relay: Some(&relay),
            own,
        };
        let why = authorize(&operator, &relays, home, skipped).unwrap_err();
        for says in [
            "wireleap (uid 1001)",
            "signed recall",
            "sudo wireleap-relay rollback",
        ] {
            assert!(why.contains(says), "{why}");
        }
        let why = authorize(&upgrade("1.0.0"), &relays, home, skipped).unwrap_err();
        for says in [
            "1.0.0 is on the skip list",
            "it stays staged",
            "sudo /opt/wireleap-relay/wireleap-relay-supervisor ctl upgrade 1.0.0",
        ] {
            assert!(why.contains(says), "{why}");
        }
        let why = authorize(&upgrade("3.0.0"), &relays, home, skipped).unwrap_err();
        assert!(why.contains("cannot be read (Permission denied)"), "{why}");
    }

    /// A client thread asking `request`, and the request as `control` read it (within 10 s).
    fn ask(
        home: &Path,
        control: &Control,
        request: Request,
    ) -> (
        std::thread::JoinHandle<std::io::Result<Reply>>,
        (Request, Pending),
    ) {
        let h = home.to_path_buf();
        let asker = std::thread::spawn(move || call(&h, &request, Duration::from_secs(10)));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(got) = control.poll() {
                return (asker, got);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the request was not read"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A recall's rollout document (up to 64 KiB as a relay fetches it) is read whole, escapes
    /// and all; a request longer than a supervisor reads is refused by the client before it
    /// connects.
    #[test]
    fn a_long_recall_is_read_whole_and_an_overlong_request_is_not_sent() {
        let home = tempfile::tempdir().unwrap();
        let control = Control::bind(home.path()).unwrap();
        let document: String = (0..64 * 1024)
            .map(|i| ["a", "\n", "\"", "é"][i % 4])
            .collect();
        let recall = Request::Rollback {
            recall: Some(document),
        };
        let (asker, (request, pending)) = ask(home.path(), &control, recall.clone());
        assert_eq!(request, recall);
        pending.reply(&Reply::ok());
        assert!(asker.join().unwrap().unwrap().ok);
        let overlong = Request::Rollback {
            recall: Some("x".repeat(MAX_REQUEST as usize)),
        };
        let err = call(home.path(), &overlong, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("reads at most"), "{err}");
    }

    /// The kernel names the asker's uid: here, this test's own.
    #[test]
    fn a_request_carries_the_uid_of_whoever_asked() {
        let home = tempfile::tempdir().unwrap();
        let control = Control::bind(home.path()).unwrap();
        let (asker, (_, pending)) = ask(home.path(), &control, Request::Status);
        assert_eq!(pending.peer(), Some(rustix::process::geteuid().as_raw()));
        pending.reply(&Reply::ok());
        assert!(asker.join().unwrap().unwrap().ok);
    }

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
        let (asker, (request, pending)) = ask(home.path(), &control, Request::Status);
        assert_eq!(request, Request::Status);
        pending.reply(&Reply::error("answered"));
        let reply = asker.join().unwrap().unwrap();
        assert_eq!(reply.error.as_deref(), Some("answered"));
    }
}

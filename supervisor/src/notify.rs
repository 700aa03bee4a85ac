//! `sd_notify`: the supervisor receives its relay's `READY=1` on a socket in the home directory
//! that only its user can reach, and sends its own state to systemd when `NOTIFY_SOCKET` is set.

use std::io;
use std::os::fd::AsRawFd as _;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A private socket a relay generation reports readiness on.
#[derive(Debug)]
pub struct ReadySocket {
    sock: UnixDatagram,
    name: String,
}

impl ReadySocket {
    /// Binds [`READY_SOCKET`] in the home directory `home`, mode 0600, replacing a stale one.
    /// The caller holds the home ([`crate::instance`]), so a socket there is its predecessor's.
    /// Its path depends only on `home`, so the relay generations a crashed supervisor left behind
    /// (whose `NOTIFY_SOCKET` names it) reach its successor. Unlike an abstract name, no other
    /// user can take it first: creating it takes write access to the home.
    ///
    /// # Errors
    /// An I/O error from bind.
    pub fn bind(home: &std::path::Path) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
        let path = home.join(READY_SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let sock = UnixDatagram::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        crate::privsep::share_socket(&path)?;
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)?;
        Ok(Self {
            sock,
            name: path.display().to_string(),
        })
    }

    /// The value to give the relay as `NOTIFY_SOCKET`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `wait` for a datagram and says what it was and who sent it.
    ///
    /// # Errors
    /// An I/O error other than a timeout.
    pub fn notice_within(&self, wait: Duration) -> io::Result<Option<Notice>> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let received = recvmsg::<UnixAddr>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        );
        let (n, pid) = match received {
            Ok(msg) => {
                let pid = msg
                    .cmsgs()
                    .ok()
                    .into_iter()
                    .flatten()
                    .find_map(|c| match c {
                        ControlMessageOwned::ScmCredentials(cred) => u32::try_from(cred.pid()).ok(),
                        _ => None,
                    })
                    .unwrap_or(0);
                (msg.bytes, pid)
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let kind = if text.lines().any(|l| l == "READY=1") {
            Kind::Ready
        } else if text.lines().any(|l| l == "WATCHDOG=1") {
            Kind::Watchdog
        } else if let Some((a, f)) = text.lines().find_map(wireleap_home::control::parse_streams) {
            let refused = text
                .lines()
                .find_map(wireleap_home::control::parse_streams_refused);
            Kind::Streams(a, f, refused)
        } else if text.lines().any(|l| l == PAUSED) {
            Kind::Paused
        } else if let Some((k, n)) = text
            .lines()
            .find_map(wireleap_home::control::parse_enrolled)
        {
            Kind::Enrolled(k, n)
        } else {
            Kind::Other
        };
        Ok(Some(Notice { pid, kind }))
    }
}

/// The readiness socket in the home directory.
pub use wireleap_home::files::READY_SOCKET;

pub use wireleap_home::control::PAUSED;

/// A datagram from a relay generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// The sender's pid (0 if the kernel did not say).
    pub pid: u32,
    /// What it said.
    pub kind: Kind,
}

/// The notices the supervisor acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `READY=1`: serving.
    Ready,
    /// [`PAUSED`]: heartbeats paused for a successor.
    Paused,
    /// `WATCHDOG=1`: the generation's liveness ping.
    Watchdog,
    /// `WIRELEAP_STREAMS=a/f` (with `WIRELEAP_STREAMS_REFUSED=r`): its counts of streams
    /// admitted, refused for its own failure, and refused at all (`None` from a relay that does
    /// not say), since it started.
    Streams(u64, u64, Option<u64>),
    /// `WIRELEAP_ENROLLED=k/n`: enrolled in `k` of its `n` contracts.
    Enrolled(u32, u32),
    /// Anything else (`STATUS=`, `STOPPING=1`, ...).
    Other,
}

/// How often to send `WATCHDOG=1`: half of systemd's `WATCHDOG_USEC`, if it is set and meant
/// for this process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    // A third: a ping may be late by one period when the main process changes (a swap's
    // guardian and the supervisor each ping on their own clock).
    (usec > 0).then(|| Duration::from_micros(usec / 3))
}

/// The name the listening socket is kept under in systemd's file descriptor store.
pub const STORED_LISTENER: &str = "listener";

/// Asks systemd to keep `fd` for the unit under `name` (`FDSTORE=1`), if it asked for
/// notifications: a supervisor systemd restarts after a crash gets it back in `LISTEN_FDS`
/// (the unit's `FileDescriptorStoreMax=`). systemd keeps one copy of a socket however often it
/// is sent.
///
/// # Errors
/// The message could not be sent.
pub fn store_fd(
    socket: Option<&str>,
    name: &str,
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};
    let Some(path) = socket.filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddrUnix::new_abstract_name(abstract_name.as_bytes()),
        None => SocketAddrUnix::new(path),
    }?;
    let sock = UnixDatagram::unbound()?;
    let message = format!("FDSTORE=1\nFDNAME={name}");
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    rustix::net::sendmsg_addr(
        &sock,
        &addr,
        &[io::IoSlice::new(message.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Sends `message` to systemd if it asked for notifications (best effort).
pub fn to_systemd(socket: Option<&str>, message: &str) {
    let Some(name) = socket.filter(|s| !s.is_empty()) else {
        return;
    };
    let addr = match name.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(name),
    };
    if let Ok(addr) = addr
        && let Ok(sock) = UnixDatagram::unbound()
    {
        let _ = sock.send_to_addr(message.as_bytes(), &addr);
    }
}

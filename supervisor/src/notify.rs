//! `sd_notify`: the supervisor receives its relay's `READY=1` on a private abstract socket, and
//! sends its own state to systemd when `NOTIFY_SOCKET` is set.

use std::io;
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
    /// Binds a fresh abstract socket.
    ///
    /// # Errors
    /// An I/O error from bind.
    pub fn bind() -> io::Result<Self> {
        let name = format!(
            "wireleap-relay-supervisor-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        Ok(Self {
            sock,
            name: format!("@{name}"),
        })
    }

    /// The value to give the relay as `NOTIFY_SOCKET`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `wait` for a datagram; true if it says `READY=1`.
    ///
    /// # Errors
    /// An I/O error other than a timeout.
    pub fn ready_within(&self, wait: Duration) -> io::Result<bool> {
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Ok(String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
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

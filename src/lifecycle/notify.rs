//! Readiness notification over the `sd_notify` protocol.
//!
//! The daemon sends `READY=1` once its listeners are bound and its actors run, `STOPPING=1` when
//! it shuts down, and `STATUS=…` lines. The receiver is systemd (`Type=notify`) in production,
//! or the `start` command itself, which listens on a private abstract socket so that it reports
//! "started" only for a relay that really came up.

use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The variable that names the notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

fn socket_addr(name: &str) -> io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(name),
    }
}

/// Sends a notification if `socket` (the value of `NOTIFY_SOCKET`) is set. Best effort: a
/// daemon must not fail because nobody listens.
pub fn send(socket: Option<&str>, message: &str) {
    let Some(name) = socket.filter(|s| !s.is_empty()) else {
        return;
    };
    let result = socket_addr(name).and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(message.as_bytes(), &addr)
    });
    if let Err(e) = result {
        tracing::debug!(error = %e, "could not send readiness notification");
    }
}

/// The watchdog period asked of this process: `WATCHDOG_USEC` (microseconds), if `WATCHDOG_PID`
/// is absent or names `own_pid` (the `sd_watchdog_enabled` rules).
#[must_use]
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(own_pid)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec))
}

/// A private socket on which a parent waits for its child's notifications.
#[derive(Debug)]
pub struct Listener {
    sock: UnixDatagram,
    name: String,
}

/// What a child told its parent.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// `READY=1`.
    Ready,
    /// A `STATUS=` line.
    Status(String),
}

impl Listener {
    /// Binds a fresh abstract socket.
    ///
    /// # Errors
    /// An I/O error from bind.
    pub fn bind() -> io::Result<Self> {
        let mut nonce = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let name = format!(
            "wireleap-relay-start-{}-{}",
            std::process::id(),
            hex_lower(&nonce)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let sock = UnixDatagram::bind_addr(&addr)?;
        Ok(Self {
            sock,
            name: format!("@{name}"),
        })
    }

    /// The value to give the child as `NOTIFY_SOCKET`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `wait` for one datagram and returns the events in it.
    ///
    /// # Errors
    /// An I/O error other than a timeout.
    pub fn recv(&self, wait: Duration) -> io::Result<Vec<Event>> {
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Ok(parse(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

fn parse(datagram: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Event::Ready),
            Some(("STATUS", s)) => Some(Event::Status(s.to_owned())),
            _ => None,
        })
        .collect()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_notification_reaches_the_listener() {
        let l = Listener::bind().unwrap();
        send(Some(l.name()), "STATUS=binding\nREADY=1\n");
        let events = l.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(events, vec![Event::Status("binding".into()), Event::Ready]);
        assert!(l.recv(Duration::from_millis(10)).unwrap().is_empty());
    }
}

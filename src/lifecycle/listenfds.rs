//! Listening sockets inherited from a parent: the supervisor, or systemd socket activation
//! (the `LISTEN_FDS` convention; `LISTEN_PID` is checked when set, and may be absent when the
//! supervisor spawns the relay).
//!
//! The daemon calls [`take_from_env`] once, first thing, before any thread starts (reading the
//! variables also removes them, so a child of the relay does not inherit them). The transport
//! then takes the stashed listener instead of binding, so the listening socket stays open across
//! relay restarts and upgrades: connections wait in its backlog instead of being refused.

use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

static STASH: Mutex<Option<TcpListener>> = Mutex::new(None);

/// Reads `LISTEN_FDS` and stashes the first descriptor as a TCP listener. Returns whether one
/// was inherited. Must run before any other thread exists.
///
/// # Errors
/// When `LISTEN_FDS` names a descriptor that is not a TCP listening socket.
pub fn take_from_env() -> std::io::Result<bool> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(false);
    }
    let Some(listener) = fds.take_tcp_listener(0)? else {
        return Ok(false);
    };
    listener.set_nonblocking(true)?;
    *STASH.lock().unwrap_or_else(PoisonError::into_inner) = Some(listener);
    Ok(true)
}

/// The inherited listener, once (later calls get `None`).
pub fn take_stashed() -> Option<TcpListener> {
    STASH.lock().unwrap_or_else(PoisonError::into_inner).take()
}

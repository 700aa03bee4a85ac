//! The listening socket the supervisor owns: from systemd (socket activation, or its file
//! descriptor store after a crash), from a generation a crashed predecessor left serving, or
//! bound to config.json's address.

use std::net::TcpListener;
use std::path::Path;

use crate::run::{Error, io, log, warn};
use crate::{notify, recover};

/// The listener: the one a predecessor handed over ([`crate::swap`]); from systemd if given
/// (socket activation, or the file descriptor store); else the socket of a generation a crashed
/// predecessor left serving; else bound to config.json's address (with `SO_REUSEPORT`, so that
/// a successor can bind beside generations it could not take the socket from).
///
/// Under systemd, a listener systemd does not hold yet goes into the unit's file descriptor
/// store ([`notify::store_fd`]): a supervisor systemd restarts after a crash gets it
/// back, even when it may not take it from the generations that kept serving (a supervisor that
/// is not root holds no `CAP_SYS_PTRACE` for `pidfd_getfd`).
///
/// # Errors
/// [`Error::Address`] or [`Error::Io`].
pub fn listener(
    home: &Path,
    orphans: &[u32],
    notify_socket: Option<&str>,
) -> Result<TcpListener, Error> {
    let (listener, held_by_systemd) = take(home, orphans)?;
    if !held_by_systemd
        && let Err(e) = notify::store_fd(
            notify_socket,
            notify::STORED_LISTENER,
            std::os::fd::AsFd::as_fd(&listener),
        )
    {
        warn(&format!(
            "could not give the listening socket to systemd's store: a supervisor restarted after a crash may not take it over ({e})"
        ));
    }
    Ok(listener)
}

/// The listener, and whether systemd holds it already (the socket unit's, or the stored one;
/// what a predecessor that exec'd this image stored).
fn take(home: &Path, orphans: &[u32]) -> Result<(TcpListener, bool), Error> {
    if let Some(l) = crate::swap::inherited_listener() {
        log("using the listening socket the previous supervisor handed over");
        // The same process (an exec in place): what it stored, systemd still holds.
        return Ok((l, true));
    }
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0
        && let Some(l) = fds.take_tcp_listener(0).map_err(io("inherited socket"))?
    {
        // `LISTEN_FDNAMES` names each descriptor: the socket unit's by its unit, the stored
        // one by the name it was stored under.
        let stored = std::env::var("LISTEN_FDNAMES")
            .is_ok_and(|names| names.split(':').next() == Some(notify::STORED_LISTENER));
        log(if stored {
            "using the listening socket systemd kept for this unit (its previous supervisor stopped)"
        } else {
            "using the socket passed by systemd"
        });
        return Ok((l, true));
    }
    if let Some((pid, fd)) = recover::adopt_listener(orphans) {
        log(&format!("took over the listening socket of pid {pid}"));
        return Ok((TcpListener::from(fd), false));
    }
    let address = address(&home.join(wireleap_home::files::CONFIG))?;
    let listener =
        bind_reuseport(&address).map_err(io(format!("could not listen on {address}")))?;
    Ok((listener, false))
}

fn bind_reuseport(address: &str) -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketType, bind, listen, socket, sockopt};
    let addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(address)?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = socket(family, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    bind(&fd, &addr)?;
    listen(&fd, 1024)?;
    Ok(TcpListener::from(fd))
}

/// config.json's `address`, as a socket address to bind.
///
/// # Errors
/// [`Error::Address`]: the file is missing, or names no address; [`Error::Io`]: it cannot be
/// read.
pub fn address(path: &Path) -> Result<String, Error> {
    let err = |why: String| Error::Address {
        path: path.display().to_string(),
        why,
    };
    // A file that is not there is the operator's to fix (the unit stops for good); another
    // read error may pass (the unit restarts).
    let text = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            err(e.to_string())
        } else {
            Error::Io {
                what: format!("reading {}", path.display()),
                source: e,
            }
        }
    })?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
    value
        .get("address")
        .and_then(serde_json::Value::as_str)
        .map(|s| s.trim_start_matches('[').replacen("]:", ":", 1).to_owned())
        .map(|s| {
            if s.matches(':').count() > 1 {
                bracket(&s)
            } else {
                s
            }
        })
        .ok_or_else(|| err("no \"address\"".into()))
}

/// `::1:443` → `[::1]:443`.
fn bracket(host_port: &str) -> String {
    match host_port.rsplit_once(':') {
        Some((h, p)) => format!("[{h}]:{p}"),
        None => host_port.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        for (text, want) in [
            (r#"{"address":"127.0.0.1:0"}"#, "127.0.0.1:0"),
            (r#"{"address":"[::1]:13499"}"#, "[::1]:13499"),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(address(&path).unwrap(), want);
        }
        std::fs::write(&path, "{}").unwrap();
        assert!(address(&path).is_err());
    }
}

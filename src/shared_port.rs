//! The TCP ports of the metrics server and the REST API: shared between the generations of one
//! relay, with nobody else (issue #18).
//!
//! During a handover the supervisor starts the next generation while the previous one still
//! serves, so both bind these ports with `SO_REUSEPORT`. That option alone also lets a relay of
//! another home (run by the same user) join the port without a word, and a scrape then reaches
//! either relay. So before the shared bind, [`bind`] (and [`check`], which the daemon runs before
//! it starts anything) finds out whether the port is held, and by whom:
//!
//! 1. A plain bind of the same address (without `SO_REUSEPORT`): it succeeds when nobody listens
//!    there; it is closed again and the shared bind follows.
//! 2. When it fails with `EADDRINUSE`, every listening socket on the port (`/proc/self/net/tcp`,
//!    `tcp6`, addresses that overlap) must be held by one of this home's other
//!    generations: a pid the supervisor lists in `wireleap-relay-supervisor.children` whose
//!    working directory is this home (the supervisor starts every generation there) and whose
//!    `/proc/<pid>/fd` holds the socket. The holder is not asked anything, so a hung generation
//!    (which the supervisor replaces while it still holds the port) and a generation of an older
//!    version are recognised as well.
//! 3. After the shared bind, the same test runs once more, leaving out the new socket: should
//!    two relays have found the port free at the same moment, each now sees the other and
//!    refuses.
//!
//! A holder that went away between two steps makes the test run again ([`ATTEMPTS`] times). Any
//! other holder refuses the start with [`Error::Held`], which names the holder as far as this
//! process can see it. Port 0 (an ephemeral port) skips the test. Linux only (`/proc`), like the
//! supervisor. Who calls it: [`crate::metrics`] and [`crate::restapi`].

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tracing::info;

use crate::home::files;

/// How many times the test runs when the holder went away between two of its steps.
const ATTEMPTS: u32 = 5;
/// The pause before the next attempt.
const PAUSE: Duration = Duration::from_millis(50);
/// The listen backlog of the shared socket.
const BACKLOG: u32 = 128;
/// The supervisor's list of generations is a few pids; a larger file is not read.
const CHILDREN_CAP: u64 = 64 << 10;

/// Errors binding a shared port.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something other than this relay's own generations listens on the port.
    #[error(
        "the port is held by {holder}, which is not a generation of this relay: another relay (or another process) listens there. Give {option} in config.json a free port, or stop the other one"
    )]
    Held {
        /// The config.json key that sets the address (`metrics.address`, `rest_api.address`).
        option: &'static str,
        /// Who holds it.
        holder: Holder,
    },
    /// The address could not be bound for another reason.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Who holds a port, as far as this process can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This process: another of its own servers listens there.
    ThisProcess,
    /// A process of this user.
    Process {
        /// Its pid.
        pid: u32,
        /// Its command name ([`command_name`]).
        name: String,
        /// Its working directory: a relay's home when a supervisor or `start` started it.
        dir: Option<PathBuf>,
    },
    /// A process of another user (its uid).
    OtherUser(u32),
    /// A process this one cannot see, or a socket bound without listening.
    Unidentified,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::ThisProcess => write!(
                f,
                "this relay itself (rest_api.address and metrics.address must name different ports)"
            ),
            Holder::Process {
                pid,
                name,
                dir: Some(dir),
            } => write!(f, "pid {pid} ({name}, running in {})", dir.display()),
            Holder::Process { pid, name, .. } => write!(f, "pid {pid} ({name})"),
            Holder::OtherUser(uid) => write!(f, "a process of uid {uid}"),
            Holder::Unidentified => write!(f, "a process this relay cannot identify"),
        }
    }
}

/// Whether `address` can be bound by this relay now: free, or held only by this home's other
/// generations. Binds nothing that stays; for the daemon, before it starts anything.
///
/// # Errors
/// [`Error::Held`], or [`Error::Io`] when the address cannot be bound at all.
pub fn check(address: SocketAddr, option: &'static str, home: &Path) -> Result<(), Error> {
    if address.port() == 0 {
        return Ok(());
    }
    for _ in 0..ATTEMPTS {
        match claim(address, home)? {
            Claim::Free | Claim::Ours => return Ok(()),
            Claim::Theirs(holder) => return Err(Error::Held { option, holder }),
            Claim::Unseen => std::thread::sleep(PAUSE),
        }
    }
    Err(Error::Held {
        option,
        holder: Holder::Unidentified,
    })
}

/// Binds `address` with `SO_REUSEPORT` (shared with the next generation) once the test of the
/// module doc passed, and listens. Must run inside the tokio runtime.
///
/// # Errors
/// [`Error::Held`], or [`Error::Io`] when the address cannot be bound.
pub async fn bind(
    address: SocketAddr,
    option: &'static str,
    home: &Path,
) -> Result<TcpListener, Error> {
    if address.port() == 0 {
        return Ok(shared(address)?);
    }
    for _ in 0..ATTEMPTS {
        let claim = claim(address, home)?;
        match claim {
            Claim::Free | Claim::Ours => {}
            Claim::Theirs(holder) => return Err(Error::Held { option, holder }),
            Claim::Unseen => {
                tokio::time::sleep(PAUSE).await;
                continue;
            }
        }
        let listener = match shared(address) {
            Ok(l) => l,
            // Taken meanwhile by a socket that does not share: look again.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                tokio::time::sleep(PAUSE).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // Another relay that found the port free at the same moment has bound it too: each
        // sees the other now, and both refuse rather than share.
        if let Some(own) = socket_inode_of(&listener)
            && let Claim::Theirs(holder) = judge(address, home, Some(own))
        {
            return Err(Error::Held { option, holder });
        }
        if claim == Claim::Ours {
            info!(%address, %option, "sharing the port with this relay's previous generation");
        }
        return Ok(listener);
    }
    Err(Error::Held {
        option,
        holder: Holder::Unidentified,
    })
}

/// Binds with `SO_REUSEPORT` and listens: the kernel spreads connections over this socket and
/// those of the other generation until that one closes its own. Only processes of the same user
/// can share the port.
fn shared(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(address)?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

fn new_socket(address: SocketAddr) -> io::Result<TcpSocket> {
    if address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

// === who holds the port ===

/// What holds a port now.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// Nobody listens there.
    Free,
    /// Only this home's other generations.
    Ours,
    /// Someone else.
    Theirs(Holder),
    /// The plain bind failed, yet no listening socket is there: it just went away, or it is
    /// bound without listening.
    Unseen,
}

/// Steps 1 and 2 of the module doc.
fn claim(address: SocketAddr, home: &Path) -> io::Result<Claim> {
    // Without SO_REUSEPORT, the bind fails while anyone listens there. SO_REUSEADDR as the
    // shared socket has it: connections a previous holder left in TIME_WAIT do not count.
    let socket = new_socket(address)?;
    socket.set_reuseaddr(true)?;
    match socket.bind(address) {
        Ok(()) => return Ok(Claim::Free),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(e),
    }
    drop(socket);
    Ok(match judge(address, home, None) {
        Claim::Free => Claim::Unseen,
        other => other,
    })
}

/// The listening sockets that overlap `address`, except the socket `own`: [`Claim::Free`] when
/// there is none, [`Claim::Ours`] when this home's other generations hold them all.
fn judge(address: SocketAddr, home: &Path, own: Option<u64>) -> Claim {
    let others: Vec<Listening> = listening(address)
        .into_iter()
        .filter(|l| Some(l.inode) != own)
        .collect();
    if others.is_empty() {
        return Claim::Free;
    }
    let ours = generation_sockets(home);
    match others.iter().find(|l| !ours.contains(&l.inode)) {
        None => Claim::Ours,
        Some(l) => Claim::Theirs(holder(l)),
    }
}

/// A listening TCP socket, from `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, PartialEq, Eq)]
struct Listening {
    address: SocketAddr,
    uid: u32,
    inode: u64,
}

impl Listening {
    /// One line of `/proc/net/tcp` (`v6`: `tcp6`); `None` for the header, a socket that does
    /// not listen, or a line it cannot read.
    fn parse(line: &str, v6: bool) -> Option<Self> {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, uid, inode) = (
            fields.get(1)?,
            fields.get(3)?,
            fields.get(7)?,
            fields.get(9)?,
        );
        if *state != "0A" {
            return None;
        }
        let (ip, port) = local.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // Each 32-bit word is printed as the number its bytes (network order) make in host
        // order.
        let words: Vec<[u8; 4]> = (0..ip.len() / 8)
            .map(|i| {
                ip.get(i * 8..i * 8 + 8)
                    .and_then(|w| u32::from_str_radix(w, 16).ok())
                    .map(u32::to_ne_bytes)
            })
            .collect::<Option<_>>()?;
        let ip = match (v6, words.as_slice()) {
            (false, [a]) => IpAddr::V4(Ipv4Addr::from(*a)),
            (true, [a, b, c, d]) => {
                let mut bytes = [0u8; 16];
                for (chunk, w) in bytes.chunks_exact_mut(4).zip([a, b, c, d]) {
                    chunk.copy_from_slice(w);
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => return None,
        };
        Some(Self {
            address: SocketAddr::new(ip, port),
            uid: uid.parse().ok()?,
            inode: inode.parse().ok()?,
        })
    }
}

/// The listening sockets whose address overlaps `address` (same port).
fn listening(address: SocketAddr) -> Vec<Listening> {
    let mut out = Vec::new();
    for (path, v6) in [("/proc/self/net/tcp", false), ("/proc/self/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        out.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| Listening::parse(l, v6))
                .filter(|l| {
                    l.address.port() == address.port() && overlap(address.ip(), l.address.ip())
                }),
        );
    }
    out
}

/// Whether two listening addresses on one port conflict: the same address, or either one
/// unspecified; across families, when the IPv6 one is `::` (dual stack, the default).
fn overlap(a: IpAddr, b: IpAddr) -> bool {
    let unmap = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    match (unmap(a), unmap(b)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        (IpAddr::V6(a), IpAddr::V6(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        (IpAddr::V6(v6), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(v6)) => v6.is_unspecified(),
    }
}

/// The sockets held by this home's other generations: the pids in the supervisor's list, but
/// this one, that run in `home` (so that a reused pid is not taken for one).
fn generation_sockets(home: &Path) -> HashSet<u64> {
    let own = std::process::id();
    let pids: Vec<u32> =
        wireleap_home::durable::read_regular(&home.join(files::CHILDREN), CHILDREN_CAP, None)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_owned());
    pids.into_iter()
        .filter(|&pid| pid != own && working_dir(pid).is_some_and(|dir| dir == home))
        .flat_map(socket_inodes)
        .collect()
}

/// Who holds `socket`, for the message.
fn holder(socket: &Listening) -> Holder {
    if socket.uid != nix::unistd::geteuid().as_raw() {
        return Holder::OtherUser(socket.uid);
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Holder::Unidentified;
    };
    let own = std::process::id();
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| socket_inodes(pid).contains(&socket.inode))
        .map_or(Holder::Unidentified, |pid| {
            if pid == own {
                Holder::ThisProcess
            } else {
                Holder::Process {
                    pid,
                    name: command_name(pid),
                    dir: working_dir(pid),
                }
            }
        })
}

/// The file name of `pid`'s `argv[0]`, else its `comm`: a supervised relay runs a verified copy
/// through `/proc/self/fd/<n>` (its `comm` is a number), with `argv[0]` `wireleap-relay`.
fn command_name(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    match Path::new(&*String::from_utf8_lossy(argv0)).file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        None => std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_default(),
    }
}

fn working_dir(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The inodes of the sockets `pid` holds (only a process of this user can be looked into).
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The inode of a socket of this process, as `/proc/net/tcp` shows it.
fn socket_inode_of(listener: &TcpListener) -> Option<u64> {
    nix::sys::stat::fstat(listener).ok().map(|s| s.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_give_listening_sockets_only() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(Listening::parse(header, false), None);
        let v4 = "   0: 0100007F:238D 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 100 0 0 10 0";
        let expected_ip = Ipv4Addr::from(0x0100_007F_u32.to_ne_bytes());
        assert_eq!(
            Listening::parse(v4, false),
            Some(Listening {
                address: SocketAddr::new(IpAddr::V4(expected_ip), 9101),
                uid: 1000,
                inode: 123_456,
            })
        );
        if cfg!(target_endian = "little") {
            assert_eq!(expected_ip, Ipv4Addr::LOCALHOST);
        }
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(Listening::parse(&established, false), None);
        let v6 = "   1: 00000000000000000000000001000000:238D 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0";
        let parsed = Listening::parse(v6, true).unwrap();
        assert_eq!((parsed.uid, parsed.inode), (0, 77));
        if cfg!(target_endian = "little") {
            assert_eq!(parsed.address, "[::1]:9101".parse().unwrap());
        }
        assert_eq!(Listening::parse(v6, false), None, "a v6 address in tcp");
    }

    #[test]
    fn addresses_overlap_when_equal_or_unspecified() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(overlap(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(overlap(ip("127.0.0.1"), ip("0.0.0.0")));
        assert!(overlap(ip("0.0.0.0"), ip("10.1.2.3")));
        assert!(!overlap(ip("127.0.0.1"), ip("127.0.0.2")));
        assert!(overlap(ip("::"), ip("127.0.0.1")), "dual stack");
        assert!(overlap(ip("0.0.0.0"), ip("::")));
        assert!(!overlap(ip("0.0.0.0"), ip("::1")));
        assert!(overlap(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(!overlap(ip("::1"), ip("fe80::1")));
    }

    /// A child process, killed when dropped (also when a test fails).
    struct Child(std::process::Child);

    impl Child {
        fn id(&self) -> u32 {
            self.0.id()
        }

        fn stop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_free_port_binds_and_a_port_this_process_holds_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let rt = runtime();
        let _guard = rt.enter();
        let first = rt
            .block_on(bind(
                "127.0.0.1:0".parse().unwrap(),
                "metrics.address",
                home.path(),
            ))
            .unwrap();
        let address = first.local_addr().unwrap();
        // The port is held (by this process, which is no other generation of the home).
        let err = check(address, "metrics.address", home.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Held {
                    holder: Holder::ThisProcess,
                    ..
                }
            ),
            "{err:?}"
        );
        let said = err.to_string();
        assert!(said.contains("metrics.address"), "{said}");
        assert!(
            said.contains("another relay (or another process)"),
            "{said}"
        );
        let err = rt
            .block_on(bind(address, "rest_api.address", home.path()))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Held {
                    option: "rest_api.address",
                    ..
                }
            ),
            "{err:?}"
        );
        drop(first);
        check(address, "metrics.address", home.path()).unwrap();
        let again = rt
            .block_on(bind(address, "metrics.address", home.path()))
            .unwrap();
        assert_eq!(again.local_addr().unwrap(), address);
    }

    /// Two child processes hold a shared socket each on the port: one listed in the supervisor's
    /// file and running in the home is a generation (the port is shared); the other, running
    /// elsewhere, is not.
    #[test]
    fn a_generation_listed_by_the_supervisor_and_running_in_the_home_may_share() {
        let rt = runtime();
        let _guard = rt.enter();
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        // A child inherits its socket (no close-on-exec) and sleeps; this process lets go.
        let spawn_holding = |socket: TcpListener, dir: &Path| {
            use std::os::fd::AsFd as _;
            nix::fcntl::fcntl(
                socket.as_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .unwrap();
            let child = Child(
                std::process::Command::new("sleep")
                    .arg("30")
                    .current_dir(dir)
                    .spawn()
                    .unwrap(),
            );
            drop(socket);
            child
        };
        let first = shared("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = first.local_addr().unwrap();
        let mut other_home = spawn_holding(first, elsewhere.path());
        let mut generation = spawn_holding(shared(address).unwrap(), home.path());
        let children = format!("[{}, {}]", other_home.id(), generation.id());
        std::fs::write(home.path().join(files::CHILDREN), &children).unwrap();

        // Both children hold it; the one running elsewhere is not this home's.
        let err = check(address, "metrics.address", home.path()).unwrap_err();
        match &err {
            Error::Held {
                holder: Holder::Process { pid, dir, .. },
                ..
            } => {
                assert_eq!(*pid, other_home.id());
                assert_eq!(
                    dir.as_deref(),
                    Some(std::fs::canonicalize(elsewhere.path()).unwrap().as_path())
                );
            }
            other => panic!("{other:?}"),
        }
        other_home.stop();

        // Only the generation holds it now: shared.
        check(address, "metrics.address", home.path()).unwrap();
        let joined = rt
            .block_on(bind(address, "metrics.address", home.path()))
            .unwrap();
        assert_eq!(joined.local_addr().unwrap(), address);
        drop(joined);

        // Not listed by the supervisor: refused, though it runs in the home.
        std::fs::write(home.path().join(files::CHILDREN), "[]").unwrap();
        let err = check(address, "metrics.address", home.path()).unwrap_err();
        assert!(
            matches!(&err, Error::Held { holder: Holder::Process { pid, .. }, .. } if *pid == generation.id()),
            "{err:?}"
        );
        generation.stop();
        check(address, "metrics.address", home.path()).unwrap();
    }
}

//! The supervisor owns the listening socket: a relay killed with SIGKILL is restarted on the same
//! socket, and connections made meanwhile wait in its backlog instead of being refused.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::process::{is_alive, relay_bin};
use crate::support::supervised::supervisor_command;
use crate::support::{Home, eventually, tls};

/// Kills the supervisor if a test fails before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the supervisor for `home`, its output in `supervisor.log`.
fn start_supervisor(home: &Home) -> Guard {
    let log = std::fs::File::create(home.file("supervisor.log")).unwrap();
    let child = supervisor_command(home)
        .args(["--relay".as_ref(), relay_bin().as_os_str()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Guard(child)
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap();
}

#[test]
fn a_killed_relay_is_restarted_on_the_same_listening_socket() {
    let home = Home::with_config(
        r#"{"address": "127.0.0.1:0",
            "contracts": {"http://127.0.0.1:9": {"address": "wireleap://127.0.0.1:13499", "role": "fronting"}}}"#,
    );
    let mut sup = start_supervisor(&home);
    let read_log = || home.read("supervisor.log");
    eventually(
        Duration::from_secs(30),
        "the first relay to be ready",
        || read_log().contains("relay ready"),
    );
    let addr: SocketAddr = read_log()
        .lines()
        .find_map(|l| l.split("listening on ").nth(1))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        read_log().contains("inherited from the parent"),
        "the relay bound its own socket:\n{}",
        read_log()
    );
    tls::handshake(addr).unwrap();
    let first = home.pid().unwrap();

    signal(first, Signal::SIGKILL);
    eventually(Duration::from_secs(5), "the relay to die", || {
        !is_alive(first)
    });
    // The socket never closed: a connection is accepted into the backlog at once.
    let t0 = Instant::now();
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect("connection refused while the relay restarted");
    eventually(
        Duration::from_secs(30),
        "a TLS handshake with the restarted relay",
        || tls::handshake(addr).is_ok(),
    );
    let gap = t0.elapsed();
    let second = home.pid().unwrap();
    assert_ne!(first, second);
    assert!(read_log().contains("restarting in"), "{}", read_log());
    println!("relay restarted on the same socket; first handshake after {gap:?}");

    // SIGTERM stops the relay, then the supervisor, cleanly.
    signal(sup.0.id() as i32, Signal::SIGTERM);
    let mut status = None;
    eventually(Duration::from_secs(15), "the supervisor to exit", || {
        status = sup.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "{}", read_log());
    assert!(!is_alive(second), "the relay outlived its supervisor");
    assert!(!home.file("wireleap-relay-supervisor.pid").exists());
}

#[test]
fn the_supervisor_refuses_a_bad_config_with_the_relays_reason() {
    let home = Home::with_config(r#"{"address": "127.0.0.1:0", "timeout": "soon"}"#);
    let out = supervisor_command(&home)
        .args(["--relay".as_ref(), relay_bin().as_os_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("timeout: invalid duration") && stderr.contains("check-config failed"),
        "{stderr}"
    );
}

/// A second supervisor for a home that already has one refuses to start, says why, and touches
/// nothing: the first one's relay serves on.
#[test]
fn a_second_supervisor_for_the_same_home_refuses_to_start() {
    let s = crate::support::supervised::Supervised::start(&[]);
    let serving = s.home.pid().unwrap();
    let out = supervisor_command(&s.home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("wireleap-relay-supervisor already runs in"),
        "{stderr}"
    );
    assert_eq!(s.home.pid().unwrap(), serving);
    assert!(
        s.rt.block_on(crate::support::load::short_stream(&s.sk, &s.hop, s.target))
            .is_ok(),
        "no stream through the first supervisor's relay"
    );
}

mod handover {
    //! A hot handover under load: a new stream every 10 ms and 50 long-lived streams moving data
    //! while the supervisor replaces the relay generation (SIGHUP).

    use std::time::Duration;

    use super::*;
    use crate::support::load::Load;
    use crate::support::supervised::Supervised;

    const WAIT: Duration = Duration::from_secs(30);

    #[test]
    fn a_handover_under_load_fails_no_open_cuts_no_stream_and_keeps_enrollment() {
        let mut s = Supervised::start(&[]);
        let old_pid = s.home.pid().unwrap();
        let load = Load::start(&s.rt, &s.sk, &s.hop, s.target, 50);
        std::thread::sleep(Duration::from_millis(1000));
        let deletes_before = s.standin.relays_requests("DELETE").len();
        s.signal(Signal::SIGHUP);
        eventually(WAIT, "the handover", || {
            s.log().contains("stops accepting and drains")
        });
        let new_pid = s.home.pid().unwrap();
        assert_ne!(new_pid, old_pid);
        std::thread::sleep(Duration::from_millis(1000));
        let counts = load.finish(&s.rt);
        eventually(WAIT, "the old generation to exit", || {
            s.log()
                .contains(&format!("pid {old_pid} drained and exited"))
        });
        println!(
            "handover under load: {} stream opens ok, {} failed, {} of {} long-lived streams cut",
            counts.opened,
            counts.failed.len(),
            counts.cut.len(),
            counts.long
        );
        assert!(
            counts.failed.is_empty(),
            "failed opens: {:?}",
            counts.failed
        );
        assert!(
            counts.cut.is_empty(),
            "cut long-lived streams: {:?}",
            counts.cut
        );
        assert!(
            counts.opened > 50,
            "too little load to mean anything: {}",
            counts.opened
        );
        assert_eq!(
            s.standin.relays_requests("DELETE").len(),
            deletes_before,
            "the handover disenrolled"
        );
        assert!(s.standin.is_enrolled(&s.key));
        assert!(is_alive(new_pid) && !is_alive(old_pid));

        s.signal(Signal::SIGTERM);
        assert_eq!(s.wait_exit(Duration::from_secs(15)).code(), Some(0));
    }

    /// `GET /api/status` over `conn`; the HTTP status code.
    fn api_status(mut conn: impl std::io::Read + std::io::Write) -> u16 {
        write!(
            conn,
            "GET /api/status HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// The REST API on a unix socket and over HTTP: the next generation binds both while the old
    /// one still serves, and the old one's stop does not take them away.
    #[test]
    fn the_rest_api_serves_on_across_a_handover() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        for address in [
            format!("http://127.0.0.1:{port}"),
            format!("file://{}", socket.display()),
        ] {
            let extra = format!(r#""rest_api": {{"address": "{address}"}},"#);
            let s = Supervised::start_with(crate::support::standin::Standin::start(), &extra, &[]);
            let ask = || match address.strip_prefix("file://") {
                Some(path) => std::os::unix::net::UnixStream::connect(path)
                    .map(api_status)
                    .unwrap_or(0),
                None => std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(api_status)
                    .unwrap_or(0),
            };
            eventually(WAIT, "the REST API", || ask() == 200);
            let old_pid = s.home.pid().unwrap();
            s.signal(Signal::SIGHUP);
            eventually(WAIT, "the old generation to exit", || {
                s.log()
                    .contains(&format!("pid {old_pid} drained and exited"))
            });
            assert!(
                !s.log().contains("handover failed"),
                "{address}: {}",
                s.log()
            );
            assert_eq!(ask(), 200, "{address}: no REST API after the handover");
        }
    }
}

/// The signals an operator may send by habit leave the supervisor running: USR2 (nginx's "new
/// binary") logs where things stand; a second supervisor refused for the home leaves the first
/// one's pid file alone.
#[test]
fn usr2_and_a_second_supervisor_leave_the_running_one_and_its_pid_file_alone() {
    let mut s = crate::support::supervised::Supervised::start(&[]);
    let pid_file = s.home.file("wireleap-relay-supervisor.pid");
    let supervisor_pid = s.supervisor.id().to_string();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), supervisor_pid);
    let relay = s.home.pid().unwrap();
    s.signal(Signal::SIGUSR2);
    eventually(Duration::from_secs(10), "the USR2 status line", || {
        s.log().contains("status: relay pid")
    });
    assert!(
        s.supervisor.try_wait().unwrap().is_none(),
        "USR2 stopped the supervisor"
    );
    assert!(is_alive(relay));
    let out = supervisor_command(&s.home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        supervisor_pid,
        "the refused second supervisor touched the pid file"
    );
    assert_eq!(s.home.pid().unwrap(), relay);
    let status = s.home.run(&["status"]);
    assert_eq!(status.code, 0, "{status}");
}

/// A socket left at the readiness path (a squatter, or a crashed predecessor) does not stop a
/// supervisor that holds the home: it takes the path over and its relay gets ready.
#[test]
fn a_squatted_readiness_socket_does_not_stop_the_supervisor() {
    let home = Home::with_config(
        r#"{"address": "127.0.0.1:0", "contracts": {"https://contract.example.invalid": {"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}"#,
    );
    std::fs::copy(relay_bin(), home.file("wireleap-relay")).unwrap();
    let _squatter =
        std::os::unix::net::UnixDatagram::bind(home.file("wireleap-relay-supervisor.ready"))
            .unwrap();
    let mut supervisor = supervisor_command(&home)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while !ready && Instant::now() < deadline {
        ready = home.run(&["status"]).stdout.contains("serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(
        Pid::from_raw(i32::try_from(supervisor.id()).unwrap()),
        Signal::SIGTERM,
    );
    let _ = supervisor.wait();
    assert!(ready, "the relay never got ready under the supervisor");
}

/// `start --fg` in the home of a relay that runs (without a supervisor, or under one) refuses
/// before it touches anything: the running one's pid file stays, and it serves on.
#[test]
fn a_second_relay_in_a_running_home_refuses_and_leaves_the_pid_file() {
    let home = Home::with_config(
        r#"{"address": "127.0.0.1:0", "contracts": {"https://contract.example.invalid": {"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}"#,
    );
    let mut first = home
        .command(&["start", "--fg"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the first relay's pid file",
        || home.pid().is_some(),
    );
    let pid = home.pid().unwrap();
    let second = home.run(&["start", "--fg"]);
    assert_ne!(second.code, 0, "{second}");
    assert!(
        second.stderr.contains("wireleap-relay already runs in")
            && second.stderr.contains(&format!("pid {pid}")),
        "{second}"
    );
    assert!(!second.stderr.contains("panicked"), "{second}");
    assert_eq!(home.pid(), Some(pid), "the pid file changed");
    assert!(is_alive(pid));
    let status = home.run(&["status"]);
    assert!(status.stdout.contains("running"), "{status}");
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let _ = first.wait();
}

/// A relay that crashes at every start never makes the supervisor give up: past five crashes in
/// a row it backs off, says so, keeps answering, and keeps trying.
#[test]
fn a_relay_that_keeps_crashing_is_retried_with_a_backoff_and_never_given_up() {
    use std::os::unix::fs::PermissionsExt as _;
    let home = Home::with_config(
        r#"{"address": "127.0.0.1:0",
            "contracts": {"http://127.0.0.1:9": {"address": "wireleap://127.0.0.1:13499", "role": "fronting"}}}"#,
    );
    let relay = home.file("wireleap-relay");
    std::fs::write(
        &relay,
        format!(
            "#!/bin/sh\n[ \"$1\" = start ] && exit 3\nexec \"{}\" \"$@\"\n",
            relay_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&relay, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = std::fs::File::create(home.file("supervisor.log")).unwrap();
    let mut sup = Guard(
        supervisor_command(&home)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    eventually(
        Duration::from_secs(30),
        "the supervisor to back off",
        || {
            home.read("supervisor.log")
                .contains("backing off: next try in 30s")
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        sup.0.try_wait().unwrap().is_none(),
        "the supervisor exited:\n{}",
        home.read("supervisor.log")
    );
    assert!(home.read("supervisor.log").contains("6 crashes in a row"));
    let status = wireleap_home::control::call(
        home.path(),
        &wireleap_home::control::Request::Status,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(status.state, Some(wireleap_home::control::State::Starting));
}

/// A relay that hangs (SIGSTOP: alive, not serving) stops sending its liveness pings; within
/// the bound (`--liveness 2s`) a new generation starts on the same socket, serves, and the hung
/// one is killed. Under a new stream every 10 ms no connection is refused: the ones that
/// arrive meanwhile wait in the socket's backlog for the new generation.
#[test]
fn a_hung_relay_is_replaced_within_the_liveness_bound_and_no_open_is_refused() {
    use crate::support::load::Load;
    let s = crate::support::supervised::Supervised::start(&["--liveness", "2s"]);
    let status = |home: &Home| {
        wireleap_home::control::call(
            home.path(),
            &wireleap_home::control::Request::Status,
            Duration::from_secs(5),
        )
        .unwrap()
    };
    // The relay pings every second once ready: let it ping.
    std::thread::sleep(Duration::from_millis(2100));
    let load = Load::start(&s.rt, &s.sk, &s.hop, s.target, 0);
    std::thread::sleep(Duration::from_millis(500));
    let hung = status(&s.home).pid.unwrap();
    signal(hung as i32, Signal::SIGSTOP);
    let stopped = Instant::now();
    eventually(Duration::from_secs(20), "a new generation serving", || {
        let st = status(&s.home);
        st.pid.is_some_and(|p| p != hung)
            && st.state == Some(wireleap_home::control::State::Serving)
    });
    let replaced_in = stopped.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    let counts = load.finish(&s.rt);
    let refused = counts.refused();
    println!(
        "hung relay replaced {replaced_in:?} after SIGSTOP (liveness bound 2 s); {} opens ok, {} failed (in flight on the hung one), {} refused",
        counts.opened,
        counts.failed.len(),
        refused.len()
    );
    assert!(refused.is_empty(), "refused: {refused:?}");
    // Only the opens the hung relay had taken when it stopped may fail (a new one every 10 ms,
    // each in flight for a handshake: a few, more on a loaded machine); the ~200 that arrive
    // during the hang must wait for the new generation.
    let after: Vec<_> = counts
        .failed
        .iter()
        .zip(&counts.failed_began)
        .filter(|(_, began)| **began > stopped)
        .collect();
    assert!(
        after.is_empty(),
        "opens begun after the SIGSTOP failed: {after:?}"
    );
    assert!(
        counts.failed.len() <= 20,
        "more failed opens than were in flight: {:?}",
        counts.failed
    );
    assert!(
        replaced_in < Duration::from_secs(8),
        "replaced after {replaced_in:?}\n{}",
        s.log()
    );
    eventually(Duration::from_secs(5), "the hung relay to be gone", || {
        !is_alive(hung as i32)
    });
    assert!(s.log().contains("sent no liveness ping"), "{}", s.log());
}

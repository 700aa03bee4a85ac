//! Enrollment, heartbeat and disenrollment against the stand-in directory (spec §4).

use std::time::Duration;

use wireleap_devnet::{Down, RecordedRequest, Server};
use wireleap_protocol::signed;

use crate::support::standin::Standin;
use crate::support::{Home, eventually};

fn config(contracts: &[(&str, Option<&str>)]) -> String {
    let entries: Vec<String> = contracts
        .iter()
        .map(|(url, channel)| {
            let channel = channel.map(|c| format!(r#", "upgrade_channel": "{c}""#)).unwrap_or_default();
            format!(r#""{url}": {{"address": "wireleap://127.0.0.1:13499", "role": "fronting"{channel}}}"#)
        })
        .collect();
    format!(
        r#"{{"address": "127.0.0.1:0", "heartbeat_interval": "300ms", "contracts": {{{}}}}}"#,
        entries.join(", ")
    )
}

fn pubkey(home: &Home) -> String {
    serde_json::from_str(&home.read("key.pub")).unwrap()
}

fn assert_signed_by(r: &RecordedRequest, key: &str) {
    assert_eq!(r.header("wireleap-relay-pubkey"), Some(key), "{r:?}");
    signed::verify_relay_request(
        r.header("wireleap-relay-pubkey"),
        r.header("wireleap-relay-signature"),
        r.body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("bad signature on {} {}: {e}", r.method, r.path));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

fn is_idempotency_key(v: Option<&str>) -> bool {
    v.is_some_and(|k| {
        k.len() == 32
            && k.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[test]
fn enrolls_with_the_challenge_heartbeats_and_disenrolls_as_the_transcript_shows() {
    let s = Standin::start();
    s.net.set_challenge(true, 4);
    let home = Home::with_config(&config(&[(s.net.contract_url(), None)]));
    let key = pubkey(&home);
    home.ok(&["start"]);
    s.wait_enrolled(&key, Duration::from_secs(30));
    eventually(Duration::from_secs(30), "two heartbeats", || {
        s.relays_requests("POST")
            .iter()
            .filter(|r| r.header("wireleap-relay-dir-version").is_none())
            .count()
            >= 2
    });

    // Contract discovery: a signed GET with the body `null` (spec §4.1, §4.2).
    let info = s
        .net
        .requests_to(Server::Contract)
        .into_iter()
        .find(|r| r.path == "/info")
        .unwrap();
    assert_eq!(info.method, "GET");
    assert_eq!(info.body, "null");
    assert_signed_by(&info, &key);
    assert_eq!(
        info.header("wireleap-relay-contract-version"),
        Some("0.1.0")
    );

    // Enrollment: first POST is challenged, the second answers it (spec §4.4, §4.9).
    let posts = s.relays_requests("POST");
    let (first, second) = (&posts[0], &posts[1]);
    for r in [first, second] {
        assert_signed_by(r, &key);
        assert_eq!(r.header("wireleap-relay-dir-version"), Some("0.2.0"));
        assert_eq!(r.header("wireleap-relay-contract-version"), Some("0.1.0"));
        assert!(is_idempotency_key(r.header("idempotency-key")), "{r:?}");
        assert!(semver::Version::parse(r.header("wireleap-relay-version").unwrap()).is_ok());
    }
    assert_eq!(
        first.body, second.body,
        "the challenge answer must resend the same body"
    );
    assert_ne!(
        first.header("idempotency-key"),
        second.header("idempotency-key")
    );
    assert!(first.header("wireleap-directory-response").is_none());
    let challenge = second.header("wireleap-directory-challenge").unwrap();
    assert!(challenge.starts_with("4~"), "{challenge}");
    assert!(
        second
            .header("wireleap-directory-response")
            .unwrap()
            .starts_with("$2")
    );

    // The body, key order as the reference writes it, plus upgrade_channel (spec §10 #5).
    let body: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["role", "address", "pubkey", "versions", "upgrade_channel"],
        "{}",
        first.body
    );
    assert_eq!(body["role"], "fronting");
    assert_eq!(body["address"], "wireleap://127.0.0.1:13499");
    assert_eq!(body["pubkey"], key.as_str());
    assert_eq!(body["versions"]["client-relay"], "0.2.0");
    assert_eq!(body["upgrade_channel"], "default");

    // Heartbeats: the same body, no relay-dir version header, fresh idempotency keys (§4.5).
    let beats: Vec<RecordedRequest> = posts.iter().skip(2).cloned().collect();
    assert!(beats.len() >= 2);
    for b in &beats {
        assert_signed_by(b, &key);
        assert!(b.header("wireleap-relay-dir-version").is_none(), "{b:?}");
        assert_eq!(b.body, first.body);
    }
    assert_ne!(
        beats[0].header("idempotency-key"),
        beats[1].header("idempotency-key")
    );
    let gap = beats[1].time_ms - beats[0].time_ms;
    assert!(
        (200..3000).contains(&gap),
        "heartbeats {gap} ms apart with a 300ms interval"
    );

    // Graceful stop disenrolls: DELETE, no relay-dir header, no idempotency key (§4.6).
    home.ok(&["stop"]);
    let deletes = s.relays_requests("DELETE");
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_signed_by(&deletes[0], &key);
    assert!(deletes[0].header("wireleap-relay-dir-version").is_none());
    assert!(deletes[0].header("idempotency-key").is_none());
    assert!(!s.is_enrolled(&key));
}

#[test]
fn directory_down_at_start_the_relay_keeps_retrying_and_enrolls_when_it_returns() {
    let s = Standin::start();
    s.net.set_down(Server::Directory, Down::Unavailable);
    let home = Home::with_config(&config(&[(s.net.contract_url(), None)]));
    let key = pubkey(&home);
    home.ok(&["start"]);
    eventually(
        Duration::from_secs(20),
        "a failed enrollment in the log",
        || home.read("wireleap-relay.log").contains("not enrolled yet"),
    );
    assert_eq!(
        home.run(&["status"]).code,
        0,
        "the relay exited while the directory was down"
    );

    // The status dump says it is not enrolled, and why.
    let pid = home.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    eventually(Duration::from_secs(10), "the status dump", || {
        home.read("wireleap-relay.log")
            .contains("\"enrolled\":false")
    });
    assert!(
        home.read("wireleap-relay.log")
            .contains("\"last_error\":\"enrollment:")
    );

    s.net.set_down(Server::Directory, Down::Up);
    s.wait_enrolled(&key, Duration::from_secs(40));
    home.ok(&["stop"]);
}

/// A directory of another minor version refuses the relay for good: at start that is fatal, as
/// with the reference (spec §4.4, §7), with an error that names both versions.
#[test]
fn another_minor_version_is_a_clear_error_naming_both() {
    let s = Standin::start();
    s.net.set_version(Server::Directory, Some("0.3.0"));
    let home = Home::with_config(&config(&[(s.net.contract_url(), None)]));
    let run = home.command(&["start", "--fg"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("could not enroll")
            && stderr.contains("expecting version 0.2.x, got 0.3.0"),
        "{stderr}"
    );
    assert!(!s.is_enrolled(&pubkey(&home)));
    assert!(home.pid().is_none(), "pid file left behind");
}

/// A wrong enrollment key is refused for good (400 "enrollment key is incorrect"): a relay
/// without a supervisor says so and exits 1, as the reference's does, instead of retrying
/// unenrolled forever; a contract it did enroll in meanwhile is withdrawn.
#[test]
fn a_refused_enrollment_at_start_is_fatal_and_withdraws_the_others() {
    let (good, bad) = (Standin::start(), Standin::start());
    bad.net.with_switches(|w| {
        w.enrollment_keys.insert(
            wireleap_protocol::Role::Fronting,
            vec!["fronting:right".to_owned()],
        );
    });
    let text = config(&[
        (good.net.contract_url(), Some("default")),
        (bad.net.contract_url(), None),
    ]);
    let home = Home::with_config(&text);
    let key = pubkey(&home);
    let run = home.command(&["start", "--fg"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("could not enroll") && stderr.contains("enrollment key"),
        "{stderr}"
    );
    assert!(!bad.is_enrolled(&key));
    assert!(!good.is_enrolled(&key), "left enrolled where it enrolled");
    assert!(
        !good.relays_requests("DELETE").is_empty() || good.relays_requests("POST").is_empty(),
        "enrolled at the good contract and never withdrawn"
    );
    assert_eq!(home.run(&["status"]).code, 1);
}

/// A reload with an unchanged config.json re-announces the relay at once to every contract it is
/// enrolled in (spec §1.4): one heartbeat each within a second, long before the next one is due.
#[test]
fn a_reload_with_an_unchanged_config_heartbeats_every_enrolled_contract_at_once() {
    let (a, b) = (Standin::start(), Standin::start());
    let text = config(&[
        (a.net.contract_url(), Some("default")),
        (b.net.contract_url(), None),
    ])
    .replace(
        r#""heartbeat_interval": "300ms""#,
        r#""heartbeat_interval": "1h""#,
    );
    let home = Home::with_config(&text);
    let key = pubkey(&home);
    home.ok(&["start"]);
    a.wait_enrolled(&key, Duration::from_secs(30));
    b.wait_enrolled(&key, Duration::from_secs(30));
    // The relay itself knows it is enrolled in both (the directory's list comes first).
    eventually(
        Duration::from_secs(30),
        "status to show both enrolled",
        || {
            serde_json::from_str::<serde_json::Value>(&home.run(&["status", "--json"]).stdout)
                .is_ok_and(|v| v["enrolled"] == true)
        },
    );
    let posts = |s: &Standin| s.relays_requests("POST").len();
    let before = (posts(&a), posts(&b));
    home.ok(&["reload"]);
    let asked = std::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "a heartbeat to each contract",
        || posts(&a) > before.0 && posts(&b) > before.1,
    );
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "heartbeats {took:?} after the reload"
    );
    // One each: not an enrollment again.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((posts(&a), posts(&b)), (before.0 + 1, before.1 + 1));
    home.ok(&["stop"]);
}

#[test]
fn reload_enrolls_an_added_contract_and_disenrolls_a_removed_one() {
    let (a, b) = (Standin::start(), Standin::start());
    let home = Home::with_config(&config(&[(a.net.contract_url(), None)]));
    let key = pubkey(&home);
    home.ok(&["start"]);
    a.wait_enrolled(&key, Duration::from_secs(30));

    home.write(
        "config.json",
        &config(&[
            (a.net.contract_url(), Some("default")),
            (b.net.contract_url(), None),
        ]),
    );
    home.ok(&["reload"]);
    b.wait_enrolled(&key, Duration::from_secs(30));
    assert!(a.is_enrolled(&key));

    home.write("config.json", &config(&[(b.net.contract_url(), None)]));
    home.ok(&["reload"]);
    // The stand-in records a request before handling it: wait for the entry to go too.
    eventually(
        Duration::from_secs(20),
        "the removed contract's DELETE",
        || !a.relays_requests("DELETE").is_empty() && !a.is_enrolled(&key),
    );
    assert!(b.is_enrolled(&key));

    home.ok(&["stop"]);
    assert_eq!(b.relays_requests("DELETE").len(), 1);
}

#[test]
fn a_heartbeat_upgrade_notice_reaches_the_upgrader() {
    let s = Standin::start();
    s.net.force_upgrade("default", Some("9.9.9"));
    let home = Home::with_config(&config(&[(s.net.contract_url(), None)]));
    home.ok(&["start"]);
    eventually(
        Duration::from_secs(30),
        "the upgrade notice accepted",
        || {
            let log = home.read("wireleap-relay.log");
            log.contains("received upgrade notice") && log.contains("upgrade accepted")
        },
    );
    home.ok(&["stop"]);

    // Skipped by hand, as the reference's README tells operators (bare, spec §10 #15), next to a
    // line that is not a version: the notice is ignored and the bad line reported.
    home.write(".skip-upgrade-version", "9.9.9\nnine\n");
    home.ok(&["start"]);
    eventually(Duration::from_secs(30), "the notice ignored", || {
        let log = home.read("wireleap-relay.log");
        log.contains("upgrade notice ignored")
            && log.contains("version 9.9.9 is in .skip-upgrade-version")
    });
    let log = home.read("wireleap-relay.log");
    assert!(
        log.contains("unreadable line of .skip-upgrade-version") && log.contains("line=2"),
        "{log}"
    );
    home.ok(&["stop"]);
}

/// One HTTP/1.1 exchange on a connected stream; returns (status code, body).
fn http_exchange(mut s: impl std::io::Read + std::io::Write, method: &str) -> (u16, String) {
    write!(
        s,
        "{method} /api/status HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn the_rest_api_shows_the_relay_enrolled_on_a_unix_socket_and_over_http() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Standin::start();
    let home = Home::new();
    home.ok(&["init"]);
    let socket = home.file("api.sock");
    let with_api = config(&[(s.net.contract_url(), None)]).replacen(
        "{",
        &format!(
            r#"{{"rest_api": {{"address": "file://{}", "socket_umask": "600"}}, "#,
            socket.display()
        ),
        1,
    );
    home.write("config.json", &with_api);
    home.ok(&["start"]);
    s.wait_enrolled(&pubkey(&home), Duration::from_secs(30));
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut status = serde_json::Value::Null;
    eventually(
        Duration::from_secs(10),
        "the API to report enrolled",
        || {
            let conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            let (code, body) = http_exchange(conn, "GET");
            assert_eq!(code, 200, "{body}");
            status = serde_json::from_str(&body).unwrap();
            status["relay_status"][0]["status"]["enrolled"] == true
        },
    );
    assert_eq!(status["controller_started"], true);
    assert_eq!(
        status["relay_status"][0]["id"],
        s.net.ready().contract_pubkey.to_b64()
    );
    assert!(status["network_usage"].is_null());

    let conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let (code, body) = http_exchange(conn, "POST");
    assert_eq!(
        (code, body.as_str()),
        (
            405,
            r#"{"code":405,"description":"HTTP method not allowed"}"#
        )
    );

    home.ok(&["stop"]);
    assert!(!socket.exists(), "the socket file was left behind");

    // The same over http://host:port.
    let with_http = config(&[(s.net.contract_url(), None)]).replacen(
        "{",
        r#"{"rest_api": {"address": "http://127.0.0.1:0"}, "#,
        1,
    );
    home.write("config.json", &with_http);
    home.ok(&["start"]);
    let mut addr = None;
    eventually(
        Duration::from_secs(10),
        "the REST API address in the log",
        || {
            addr = home.read("wireleap-relay.log").lines().rev().find_map(|l| {
                l.split("address=http://")
                    .nth(1)
                    .map(|a| a.split_whitespace().next().unwrap().to_owned())
            });
            addr.is_some()
        },
    );
    let conn = std::net::TcpStream::connect(addr.unwrap()).unwrap();
    let (code, body) = http_exchange(conn, "GET");
    assert_eq!(code, 200, "{body}");
    home.ok(&["stop"]);
}

/// A relay started without a supervisor gets SIGHUP, SIGWINCH and SIGCONT from its terminal (a
/// hang-up, a resize) or from `kill`, never from a supervisor: a resize must not pause its
/// heartbeats, and a hang-up is a graceful shutdown that disenrolls (not a handover that drains
/// for a successor that never comes and leaves the directory listing a dead relay).
#[test]
fn without_a_supervisor_a_resize_changes_nothing_and_a_hang_up_disenrolls() {
    use nix::sys::signal::{Signal, kill};
    let s = Standin::start();
    let home = Home::with_config(&config(&[(s.net.contract_url(), None)]));
    let key = pubkey(&home);
    let log = std::fs::File::create(home.file("wireleap-relay.log")).unwrap();
    let mut child = home
        .command(&["start", "--fg"])
        .stderr(log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    s.wait_enrolled(&key, Duration::from_secs(30));

    // A resize: heartbeats go on (a pause would hold them for 90 s). Then a continue.
    kill(pid, Signal::SIGWINCH).unwrap();
    let beats = || {
        s.relays_requests("POST")
            .iter()
            .filter(|r| r.header("wireleap-relay-dir-version").is_none())
            .count()
    };
    let before = beats();
    eventually(
        Duration::from_secs(10),
        "three heartbeats after SIGWINCH",
        || beats() >= before + 3,
    );
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");

    // A hang-up, which comes twice (the shell passes it on, the kernel sends it to the
    // foreground group): disenrolled all the same, exit 128 + 1.
    kill(pid, Signal::SIGHUP).unwrap();
    eventually(Duration::from_secs(10), "the shutdown to begin", || {
        home.read("wireleap-relay.log").contains("shutting down")
    });
    kill(pid, Signal::SIGHUP).unwrap();
    let mut status = None;
    eventually(Duration::from_secs(20), "the relay to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(129));
    assert!(
        !home.read("wireleap-relay.log").contains("second signal"),
        "the second hang-up cut the shutdown short"
    );
    assert_eq!(s.relays_requests("DELETE").len(), 1, "not disenrolled");
    assert!(!s.is_enrolled(&key));
    assert!(home.pid().is_none(), "pid file left behind");
}

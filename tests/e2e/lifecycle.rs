//! `start`, `status`, `reload`, `stop`, `restart` as spec §1.2 says, with no process left behind.
//!
//! The relay binary under test has `wireleap-relay-supervisor` beside it (both in target/), so
//! `start` runs the supervisor in the background and the other commands act through it; the
//! reference's messages still come first, with the relay's own pid.

use std::time::Duration;

use crate::support::{Home, eventually, process::is_alive, tls};

fn config(address: &str) -> String {
    format!(
        r#"{{"address": "{address}",
            "contracts": {{"http://127.0.0.1:9": {{"address": "wireleap://127.0.0.1:13499", "role": "fronting"}}}}}}"#
    )
}

#[test]
fn start_status_reload_stop() {
    let home = Home::with_config(&config("127.0.0.1:0"));
    assert_eq!(home.run(&["status"]).code, 1);

    let start = home.ok(&["start"]);
    assert!(start.stdout.contains("successfully spawned"), "{start}");
    let pid = home.pid().expect("start wrote no pid file");
    assert!(is_alive(pid));

    let status = home.run(&["status"]);
    assert_eq!(
        (
            status.code,
            status.stdout.lines().next().unwrap_or_default()
        ),
        (0, format!("wireleap-relay is running, pid {pid}").as_str()),
        "{status}"
    );
    // A reader that has gone (`status | head -1`, `status | grep -q running`): the command ends
    // quietly, as SIGPIPE ends the reference, with no panic on stderr.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let gone = home
        .command(&["status"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(gone.status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Supervised: the details follow the reference's line.
    let supervisor: i32 = home
        .read("wireleap-relay-supervisor.pid")
        .trim()
        .parse()
        .expect("start wrote no supervisor pid file");
    assert!(is_alive(supervisor));
    for want in [
        "  state:             serving".to_owned(),
        format!("  supervisor:        wireleap-relay-supervisor, pid {supervisor}"),
        "  channel:           default (from contract http://127.0.0.1:9)".to_owned(),
    ] {
        assert!(
            status.stdout.lines().any(|l| l == want),
            "{want:?} missing:\n{status}"
        );
    }

    // A second start refuses.
    let again = home.run(&["start"]);
    assert_eq!(again.code, 1, "{again}");
    assert!(again.stderr.contains("already running"), "{again}");

    let reload = home.ok(&["reload"]);
    assert!(
        reload
            .stdout
            .contains(&format!("reloaded wireleap-relay daemon (pid {pid})")),
        "{reload}"
    );
    eventually(Duration::from_secs(10), "the reload in the log", || {
        home.read("wireleap-relay.log").contains("config reloaded")
    });

    let stop = home.ok(&["stop"]);
    assert!(
        stop.stdout
            .contains(&format!("stopped wireleap-relay daemon (was pid {pid})")),
        "{stop}"
    );
    assert!(!is_alive(pid), "the daemon survived stop");
    assert!(!is_alive(supervisor), "the supervisor survived stop");
    assert!(!home.file("wireleap-relay.pid").exists());
    assert!(!home.file("wireleap-relay-supervisor.pid").exists());
    let status = home.run(&["status"]);
    assert_eq!(
        (status.code, status.stdout.trim()),
        (1, "wireleap-relay is not running")
    );

    // The shutdown ran its phases in order.
    let log = home.read("wireleap-relay.log");
    let order = [
        "stop-accepting",
        "deregister",
        "drain",
        "flush-ledger",
        "stop-actors",
        "phase=stopped",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|p| {
            log.find(p)
                .unwrap_or_else(|| panic!("phase {p} not logged:\n{log}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "phases out of order:\n{log}"
    );
}

#[test]
fn restart_replaces_the_daemon() {
    let home = Home::with_config(&config("127.0.0.1:0"));
    home.ok(&["start"]);
    let first = home.pid().unwrap();
    let run = home.ok(&["restart"]);
    assert!(
        run.stdout.contains("stopped") && run.stdout.contains("successfully spawned"),
        "{run}"
    );
    let second = home.pid().unwrap();
    assert_ne!(first, second);
    assert!(!is_alive(first) && is_alive(second));
    home.ok(&["stop"]);
    assert!(!is_alive(second));

    // restart with nothing running just starts.
    home.ok(&["restart"]);
    let third = home.pid().unwrap();
    assert!(is_alive(third));
    home.ok(&["stop"]);
}

#[test]
fn start_fails_with_the_reason_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let home = Home::with_config(&config(&addr));
    let run = home.run(&["start"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(!run.stdout.contains("successfully"), "{run}");
    // As the reference: the line, then the daemon's log, on stdout.
    assert!(
        run.stdout.contains("wireleap-relay is not running, ")
            && run.stdout.contains("wireleap-relay.log follows:"),
        "{run}"
    );
    assert!(
        run.stdout.contains(&format!("could not listen on {addr}"))
            && run.stdout.contains("Address already in use"),
        "the reason is missing:\n{run}"
    );
    assert_eq!(home.run(&["status"]).code, 1);
    assert!(home.pid().is_none(), "a pid file was left behind");
}

/// A REST socket the relay cannot create (here a path longer than a unix socket's name may be;
/// under systemd, a folder it may not write) stops the start with that reason, and nothing
/// panics: the transport does not run before the REST API and the metrics are bound.
#[test]
fn a_rest_socket_that_cannot_be_created_fails_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("s".repeat(120));
    std::fs::create_dir(&long).unwrap();
    let socket = long.join("relay.sock");
    let with_rest = config("127.0.0.1:0").replacen(
        r#""contracts""#,
        &format!(
            r#""rest_api": {{"address": "file://{}"}}, "contracts""#,
            socket.display()
        ),
        1,
    );
    let home = Home::with_config(&with_rest);
    let run = home.run(&["start", "--fg"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.all().contains(&format!(
            "could not start the REST API on file://{}",
            socket.display()
        )),
        "the reason is missing:\n{run}"
    );
    assert!(!run.all().contains("panicked"), "{run}");
}

/// A REST socket in a folder that does not exist (under systemd: the unit's /run/wireleap not
/// created, or not the relay's to write): check-config warns, and the relay refuses to start
/// before it enrolls, naming the folder.
#[test]
fn a_rest_socket_folder_that_is_missing_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("missing");
    let socket = folder.join("relay.sock");
    let home = Home::with_config(&config("127.0.0.1:0").replacen(
        r#""contracts""#,
        &format!(
            r#""rest_api": {{"address": "file://{}"}}, "contracts""#,
            socket.display()
        ),
        1,
    ));
    let check = home.run(&["check-config"]);
    assert_eq!(check.code, 0, "{check}");
    assert!(
        check.stderr.contains(&format!(
            "note: rest_api.address: cannot create a socket in {}: No such file or directory: the relay needs the folder when it starts",
            folder.display()
        )),
        "{check}"
    );
    let run = home.run(&["start", "--fg"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.all().contains(&format!(
            "could not start the REST API on file://{}: cannot create a socket in {}",
            socket.display(),
            folder.display()
        )),
        "{run}"
    );
    assert!(!run.all().contains("Listening for H/2 requests"), "{run}");
}

#[test]
fn start_with_a_bad_config_fails_with_every_problem() {
    let home = Home::with_config(r#"{"address": "127.0.0.1:0", "timeout": "soon"}"#);
    let run = home.run(&["start"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.all().contains("timeout: invalid duration \"soon\""),
        "{run}"
    );
    assert!(
        run.all().contains("contracts: 'contracts' have to be set"),
        "{run}"
    );
}

#[test]
fn status_exit_codes_for_stale_and_unreadable_pid_files() {
    let home = Home::new();
    // A pid that certainly is not running: a child we started and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    home.write("wireleap-relay.pid", &dead.to_string());
    let run = home.run(&["status"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("might have crashed"), "{run}");

    home.write("wireleap-relay.pid", "not a pid");
    let run = home.run(&["status"]);
    assert_eq!(
        (run.code, run.stdout.trim()),
        (2, "could not read wireleap-relay status"),
        "{run}"
    );

    let run = home.run(&["stop"]);
    assert_eq!(run.code, 1, "{run}");
}

#[test]
fn foreground_daemon_writes_pid_serves_tls13_h2_and_exits_128_plus_signal() {
    let home = Home::with_config(&config("127.0.0.1:0"));
    let log = std::fs::File::create(home.file("wireleap-relay.log")).unwrap();
    let mut child = home
        .command(&["start", "--fg"])
        .stderr(log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    eventually(Duration::from_secs(20), "the daemon to listen", || {
        home.read("wireleap-relay.log")
            .contains("Listening for H/2")
    });
    assert_eq!(home.pid(), Some(pid));

    // TLS 1.3 only (spec §6.1): a client limited to TLS 1.2 is refused.
    let tls12 = tls::handshake_with(home.listen_addr(), &[&rustls::version::TLS12]);
    assert!(tls12.is_err(), "the relay accepted TLS 1.2");
    let hs = tls::handshake(home.listen_addr()).unwrap();
    assert_eq!(hs.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(hs.alpn.as_deref(), Some(&b"h2"[..]));
    let pem = home.read("relay-cert.pem");
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        hs.peer_cert,
        der.to_vec(),
        "the relay served another certificate than init's"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    assert!(home.pid().is_none(), "pid file left behind");
}

#[test]
fn sigusr2_dumps_status_json() {
    let home = Home::with_config(&config("127.0.0.1:0"));
    home.ok(&["start"]);
    let pid = home.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let mut dump = None;
    eventually(Duration::from_secs(10), "the status dump", || {
        dump = home
            .read("wireleap-relay.log")
            .lines()
            .find(|l| l.starts_with("{\"controller_started\""))
            .map(str::to_owned);
        dump.is_some()
    });
    let v: serde_json::Value = serde_json::from_str(&dump.unwrap()).unwrap();
    assert_eq!(v["relay_status"][0]["role"], "fronting");
    assert_eq!(v["relay_status"][0]["status"]["enrolled"], false);
    assert!(v["network_usage"].is_null());
    home.ok(&["stop"]);
}

#[test]
fn version_and_usage() {
    let home = Home::new();
    let run = home.ok(&["version", "-v"]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(semver::Version::parse(lines[0]).is_ok(), "{run}");
    // `--version` (and `-V`) print the same version, as the supervisor's `--version` does.
    for flag in ["--version", "-V"] {
        let v = home.ok(&[flag]);
        assert_eq!(
            v.stdout.trim(),
            format!("wireleap-relay {}", lines[0]),
            "{v}"
        );
    }
    let sup = std::process::Command::new(crate::support::process::sibling_bin(
        "wireleap-relay-supervisor",
    ))
    .arg("--version")
    .output()
    .unwrap();
    assert!(sup.status.success());
    assert!(
        String::from_utf8_lossy(&sup.stdout).starts_with("wireleap-relay-supervisor "),
        "{sup:?}"
    );
    // The reference's lines first; then ours: what this relay trusts to sign its releases.
    assert!(lines[5].starts_with("release trust: "), "{run}");
    assert_eq!(
        &lines[1..5],
        [
            "relay-contract interface version 0.1.0",
            "relay-dir interface version 0.2.0",
            "relay-relay interface version 0.2.0",
            "client-relay interface version 0.2.0",
        ]
    );
    assert_eq!(home.run(&["no-such-command"]).code, 2);
    assert_eq!(home.run(&[]).code, 2);
    // `help` and `help COMMAND` print the usage on stderr and exit 2, as the reference's
    // (spec §1.1); `--help` is the usual 0 on stdout.
    for args in [&["help"][..], &["help", "start"]] {
        let run = home.run(args);
        assert_eq!(run.code, 2, "{run}");
        assert!(run.stderr.contains("Usage"), "{run}");
    }
    let run = home.run(&["--help"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("Usage"), "{run}");
    // The hidden `migrate` without its version: the reference's message and 1 (spec §1.2).
    let run = home.run(&["migrate"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains("which version to migrate from? usage:"),
        "{run}"
    );
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let mut status = None;
    eventually(within, "the daemon to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

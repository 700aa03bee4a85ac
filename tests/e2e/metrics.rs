//! Prometheus metrics of the real relay binary (issue #8): streams through the stand-in network,
//! some refused, then `GET /metrics` shows what a user expects and passes `promtool check
//! metrics`; a relay restarted by its supervisor publishes the restart count. The metrics and
//! REST ports are the relay's own (issue #18): its next generation shares them through a
//! handover, and a relay of another home is refused.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::TcpListener;
use wireleap_devnet::client::{self, CircuitClient, ClientConfig, StreamEnd};
use wireleap_protocol::keys::generate_signing_key;
use wireleap_protocol::{Network, unix_now};

use crate::support::load::short_stream;
use crate::support::relay::{self, StartedRelay};
use crate::support::standin::Standin;
use crate::support::supervised::Supervised;
use crate::support::target::tcp_echo;
use crate::support::webserver::free_port;
use crate::support::{Home, eventually};

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(30);
/// What a generation logs when it binds a port its previous generation still holds.
pub(crate) const SHARING: &str = "sharing the port with this relay's previous generation";

/// One scrape: the raw text and its samples by `name{labels}`.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of `series` (e.g. `wireleap_relay_streams_total` or
    /// `wireleap_relay_stream_errors_total{code="502"}`); panics with the scrape if absent.
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{}", self.text))
    }
}

/// `GET /metrics` over plain HTTP/1.1; asserts 200 and the exposition content type.
fn scrape(addr: SocketAddr) -> Scrape {
    try_scrape(addr).unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}

/// `GET /metrics`; what went wrong if it was not a 200 with the exposition content type.
fn try_scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let reply = http_get(addr, "/metrics")?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of the headers in {reply:?}"))?;
    if !head.starts_with("HTTP/1.1 200")
        || !head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4")
    {
        return Err(format!("unexpected reply head: {head}"));
    }
    // hyper sends a full body with a content-length here (no chunked encoding).
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(series, value)| Some((series.to_owned(), value.parse::<f64>().ok()?)))
                .ok_or_else(|| format!("not a sample: {l:?}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Scrape {
        text: body.to_owned(),
        samples,
    })
}

/// `GET path` over plain HTTP/1.1 with `Connection: close`: the whole reply.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, WAIT).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(reply)
}

/// The metrics address the relay logged.
fn metrics_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .rev()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
}

/// Runs `promtool check metrics` on the scrape; `false` (with a message) when promtool is absent.
fn promtool_check(text: &str) -> bool {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!(
            "SKIPPED: promtool check metrics (promtool is not installed; apt-get install prometheus; .ci/run installs it)"
        );
        return false;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// A stream that must end with a `wl-status` of `code`.
async fn refused(c: &CircuitClient, target: &str, code: u16) {
    let end = match c.open(target, Network::Tcp).await {
        Ok(mut s) => s.wait_end().await,
        Err(e) => StreamEnd::Status(e.status().cloned().unwrap_or_else(|| panic!("{e}"))),
    };
    match end {
        StreamEnd::Status(st) => assert_eq!(st.code, code, "{st:?}"),
        other => panic!("expected a {code} wl-status, got {other:?}"),
    }
}

#[test]
fn metrics_count_streams_bytes_errors_tokens_and_pass_promtool() {
    let s = Standin::start();
    // Servicekeys settle 2 s after activation, so the relay submits the tokens soon.
    s.net.with_switches(|w| {
        w.servicekey_duration_secs = 2;
        w.submission_window_secs = 300;
    });
    let contract = s.net.contract_url().to_owned();
    let StartedRelay { home, hop } = relay::start(
        &s,
        "backing",
        r#""auto_submit_interval": "1s", "heartbeat_interval": "300ms",
            "metrics": {"address": "127.0.0.1:0"}"#,
    );
    let metrics = metrics_addr(&home.read("wireleap-relay.log")).unwrap();

    let rt = crate::support::runtime();
    let target = rt.block_on(tcp_echo());
    let sk = rt.block_on(client::activate_servicekey(&contract)).unwrap();
    eventually(WAIT, "a first admitted stream", || {
        rt.block_on(short_stream(&sk, &hop, target)).is_ok()
    });
    let before = scrape(metrics);

    // 3 streams relayed, 2 dials refused by a closed loopback port (502), 1 token of a contract
    // the relay does not serve (400).
    let closed = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    });
    const LEN: usize = 100_000;
    rt.block_on(async {
        let c = CircuitClient::new(sk.clone(), vec![hop.clone()], ClientConfig::default()).unwrap();
        for _ in 0..3 {
            relay::round_trip(&c, target, LEN).await;
        }
        for _ in 0..2 {
            refused(&c, &closed.to_string(), 502).await;
        }
        let now = unix_now();
        let foreign = client::servicekey_signed_by(&generate_signing_key(), now - 1, now + 60);
        let c = CircuitClient::new(foreign, vec![hop.clone()], ClientConfig::default()).unwrap();
        refused(&c, &target.to_string(), 400).await;
    });

    // The counters are updated before the answer leaves the relay, except the active gauge and
    // the duration, which follow the stream task's end.
    let mut after = scrape(metrics);
    eventually(WAIT, "the streams to end in the relay", || {
        after = scrape(metrics);
        after.get("wireleap_relay_streams_active") == 0.0
    });
    let delta = |series: &str| after.get(series) - before.get(series);
    eprintln!("scrape after the streams:\n{}", after.text);
    assert_eq!(delta("wireleap_relay_streams_total"), 6.0);
    assert_eq!(
        delta(r#"wireleap_relay_stream_errors_total{code="502"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"wireleap_relay_stream_errors_total{code="400"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"wireleap_relay_stream_errors_total{code="410"}"#),
        0.0
    );
    assert_eq!(
        delta(r#"wireleap_relay_relayed_bytes_total{direction="client_to_remote"}"#),
        (3 * LEN) as f64
    );
    assert_eq!(
        delta(r#"wireleap_relay_relayed_bytes_total{direction="remote_to_client"}"#),
        (3 * LEN) as f64
    );
    assert_eq!(delta("wireleap_relay_dial_duration_seconds_count"), 5.0);
    assert_eq!(delta("wireleap_relay_stream_duration_seconds_count"), 3.0);
    assert_eq!(
        delta(r#"wireleap_relay_stream_duration_seconds_bucket{le="+Inf"}"#),
        3.0
    );
    // A refused dial still earns its token (spec §5.4 rule 5): 3 + 2.
    assert_eq!(delta("wireleap_relay_sharetokens_admitted_total"), 5.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        after.get(&format!(
            r#"wireleap_relay_build_info{{version="{version}"}}"#
        )),
        1.0
    );
    assert_eq!(
        after.get(&format!(
            r#"wireleap_relay_enrolled{{contract="{contract}",role="backing"}}"#
        )),
        1.0
    );
    // `start` may run the relay under a supervisor; either way nothing crashed.
    assert_eq!(after.get("wireleap_relay_supervisor_restarts"), 0.0);
    assert_eq!(after.get("wireleap_relay_sharetokens_expired_total"), 0.0);
    assert!(after.get("wireleap_relay_auto_upgrade") == 1.0);

    // Heartbeats every 300 ms; the tokens settle after 2 s and are submitted each second.
    let admitted = after.get("wireleap_relay_sharetokens_admitted_total");
    let mut last = scrape(metrics);
    eventually(
        WAIT,
        "every admitted token submitted and a heartbeat",
        || {
            last = scrape(metrics);
            last.get("wireleap_relay_sharetokens_submitted_total") >= admitted
                && last.get("wireleap_relay_heartbeat_duration_seconds_count") > 0.0
        },
    );

    // A contract whose settlement window has closed: the next token expires unsubmitted.
    s.net.with_switches(|w| w.settlement_closed = true);
    let submitted = last.get("wireleap_relay_sharetokens_submitted_total");
    rt.block_on(async {
        // A fresh servicekey: the first one's window is open by now, its tokens refused.
        let sk = client::activate_servicekey(&contract).await.unwrap();
        let c = CircuitClient::new(sk, vec![hop.clone()], ClientConfig::default()).unwrap();
        relay::round_trip(&c, target, 10).await;
    });
    eventually(WAIT, "the token to expire", || {
        last = scrape(metrics);
        last.get("wireleap_relay_sharetokens_expired_total") == 1.0
    });
    assert_eq!(
        last.get("wireleap_relay_sharetokens_submitted_total"),
        submitted
    );
    promtool_check(&last.text);

    // Anything but GET /metrics is refused.
    let mut tcp = std::net::TcpStream::connect(metrics).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        tcp,
        "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
}

#[test]
fn metrics_off_by_default_and_a_bad_address_is_a_config_error_with_its_key() {
    let home = Home::with_config(
        r#"{"address": "127.0.0.1:0", "metrics": {"address": "localhost:9101"},
            "contracts": {"https://c.example": {"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}"#,
    );
    let run = home.run(&["check-config"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.all().contains(
            r#"metrics.address: expected an IP address and port such as "127.0.0.1:9101""#
        ),
        "{run}"
    );
    home.write(
        "config.json",
        r#"{"address": "127.0.0.1:0",
            "contracts": {"https://c.example": {"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}"#,
    );
    home.ok(&["check-config"]);
    home.ok(&["start"]);
    eventually(WAIT, "the relay to listen", || {
        home.read("wireleap-relay.log")
            .contains("Listening for H/2 requests")
    });
    assert!(
        !home.read("wireleap-relay.log").contains("metrics on"),
        "metrics must be off unless configured"
    );
    home.ok(&["stop"]);
}

#[test]
fn metrics_publish_the_supervisors_restart_count_and_survive_a_handover() {
    let sup = Supervised::start(&[]);
    // The next generation reads a config with metrics and the REST API on fixed ports.
    let port = free_port();
    let rest: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = sup.home.read("config.json");
    let with_metrics = config.replacen(
        r#""heartbeat_interval""#,
        &format!(
            r#""metrics": {{"address": "127.0.0.1:{port}"}}, "rest_api": {{"address": "http://{rest}"}}, "heartbeat_interval""#
        ),
        1,
    );
    assert_ne!(config, with_metrics);
    sup.home.write("config.json", &with_metrics);
    let line = format!("metrics on http://127.0.0.1:{port}/metrics");
    let pid = sup.home.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(WAIT, "the restarted relay's metrics", || {
        sup.log().contains(&line)
    });
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    let scraped = scrape(metrics);
    assert_eq!(
        scraped.get("wireleap_relay_supervised"),
        1.0,
        "{}",
        sup.log()
    );
    assert_eq!(scraped.get("wireleap_relay_supervisor_restarts"), 1.0);
    assert_eq!(scraped.get("wireleap_relay_supervisor_crash_streak"), 1.0);
    promtool_check(&scraped.text);

    assert!(rest_status(rest).is_ok());

    // A handover: the next generation binds the same metrics and REST ports while this one
    // still runs (this home's previous generation: shared), and scrapes go on meanwhile.
    let restarted = sup.home.pid().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match try_scrape(metrics).and_then(|_| rest_status(rest)) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        }
    });
    sup.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(WAIT, "the next generation's metrics", || {
        sup.log().matches(&line).count() == 2
    });
    eventually(WAIT, "the old generation to exit", || {
        !crate::support::process::is_alive(restarted)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = scraper.join().unwrap();
    eprintln!("scrapes through the handover: {ok} ok, {failed:?} failed");
    let log = sup.log();
    assert!(!log.contains("could not start the metrics server"), "{log}");
    assert!(!log.contains("could not start the REST API"), "{log}");
    assert_eq!(
        log.matches(&format!("REST API listening address=http://{rest}"))
            .count(),
        2,
        "{log}"
    );
    // Both ports were still held by the old generation when the next one bound them.
    for option in ["metrics.address", "rest_api.address"] {
        assert!(
            log.lines()
                .any(|l| l.contains(SHARING) && l.contains(option)),
            "{option}: {log}"
        );
    }
    let next = sup.home.pid().unwrap();
    assert_ne!(next, restarted, "{log}");
    assert!(crate::support::process::is_alive(next), "{log}");
    assert!(
        failed.is_empty(),
        "{} of {} scrapes failed through the handover: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 0);
    let scraped = scrape(metrics);
    assert_eq!(scraped.get("wireleap_relay_supervisor_restarts"), 1.0);
    assert!(rest_status(rest).is_ok());
}

/// A hung generation still holds the metrics port when its replacement starts, and cannot answer
/// anything: the replacement still recognises it as this relay's own (by its socket, not by
/// asking it) and shares the port.
#[test]
fn a_hung_relay_holding_the_metrics_port_is_replaced() {
    let port = free_port();
    let extra = format!(r#""metrics": {{"address": "127.0.0.1:{port}"}},"#);
    let sup = Supervised::start_with(Standin::start(), &extra, &["--liveness", "2s"]);
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    scrape(metrics);
    let line = format!("metrics on http://127.0.0.1:{port}/metrics");
    // It pings every second once ready: let it ping, then stop it.
    std::thread::sleep(Duration::from_millis(2100));
    let hung = sup.home.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hung),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    eventually(WAIT, "the replacement's metrics", || {
        sup.log().matches(&line).count() == 2
    });
    eventually(WAIT, "the hung relay to be gone", || {
        !crate::support::process::is_alive(hung)
    });
    let log = sup.log();
    assert!(log.contains("sent no liveness ping"), "{log}");
    assert!(!log.contains("could not start the metrics server"), "{log}");
    assert_eq!(log.matches(SHARING).count(), 1, "{log}");
    assert_ne!(sup.home.pid(), Some(hung));
    // A scrape the kernel queued on the hung relay's socket (the port is shared with its
    // replacement) is reset when that relay is killed; the replacement answers the next one.
    let mut last = None;
    eventually(WAIT, "a scrape of the replacement", || {
        last = try_scrape(metrics).ok();
        last.is_some()
    });
    let replaced = last.map(|s| s.get("wireleap_relay_supervisor_hung_replaced"));
    assert_eq!(replaced, Some(1.0));
}

/// `GET /api/status` answered 200.
fn rest_status(addr: SocketAddr) -> Result<(), String> {
    let reply = http_get(addr, "/api/status")?;
    if reply.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("REST API: {reply}"))
    }
}

/// Relay A serves metrics and the REST API on fixed ports; relay B, in another home (same
/// user), configured with either port, must refuse to start and say why, and A keeps serving.
#[test]
fn a_relay_of_another_home_on_the_same_metrics_or_rest_port_is_refused() {
    let s = Standin::start();
    let metrics_port = free_port();
    let rest: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let a = relay::start(
        &s,
        "backing",
        &format!(
            r#""metrics": {{"address": "127.0.0.1:{metrics_port}"}}, "rest_api": {{"address": "http://{rest}"}}"#
        ),
    );
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    assert_eq!(
        metrics_addr(&a.home.read("wireleap-relay.log")),
        Some(metrics)
    );
    let a_pid = a.home.pid().unwrap();
    let before = scrape(metrics);
    rest_status(rest).unwrap();

    let b_config = |extra: &str| {
        format!(
            r#"{{"address": "127.0.0.1:0", {extra}, "danger_zone": {{"allow_loopback": true}},
                "contracts": {{"{}": {{"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}}}}"#,
            s.net.contract_url()
        )
    };
    let cases = [
        (
            format!(r#""metrics": {{"address": "127.0.0.1:{metrics_port}"}}"#),
            format!("could not start the metrics server on {metrics}"),
            "metrics.address",
        ),
        (
            format!(
                r#""metrics": {{"address": "127.0.0.1:{}"}}, "rest_api": {{"address": "http://{rest}"}}"#,
                free_port()
            ),
            format!("could not start the REST API on {rest}"),
            "rest_api.address",
        ),
    ];
    for (extra, failure, option) in cases {
        let b = Home::with_config(&b_config(&extra));
        let run = run_bounded(&b, &["start", "--fg"]);
        let said = run.all();
        assert_eq!(run.code, 1, "B must fail to start:\n{run}");
        for expected in [
            failure.as_str(),
            &format!("the port is held by pid {a_pid} (wireleap-relay"),
            "another relay (or another process) listens there",
            &format!("Give {option} in config.json a free port"),
        ] {
            assert!(said.contains(expected), "{expected:?} not in:\n{run}");
        }
        // Refused before it enrolled or listened.
        assert!(!said.contains("Listening for H/2 requests"), "{run}");
    }

    // A kept serving its own metrics and API.
    assert!(crate::support::process::is_alive(a_pid));
    let after = scrape(metrics);
    assert_eq!(
        after.get("wireleap_relay_streams_total"),
        before.get("wireleap_relay_streams_total")
    );
    rest_status(rest).unwrap();
    assert!(
        !a.home
            .read("wireleap-relay.log")
            .contains("could not start"),
        "{}",
        a.home.read("wireleap-relay.log")
    );
}

/// Runs `wireleap-relay ARGS` in `home` and waits for its exit, its output in files of the home;
/// a relay still running after [`WAIT`] is killed and fails the test.
fn run_bounded(home: &Home, args: &[&str]) -> crate::support::process::Run {
    let out = std::fs::File::create(home.file("run.out")).unwrap();
    let err = std::fs::File::create(home.file("run.err")).unwrap();
    let mut child = home.command(args).stdout(out).stderr(err).spawn().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{}` still runs after {WAIT:?}:\n{}{}",
                args.join(" "),
                home.read("run.out"),
                home.read("run.err")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    crate::support::process::Run {
        code: status.code().unwrap_or(-1),
        stdout: home.read("run.out"),
        stderr: home.read("run.err"),
    }
}

/// The alert rules shipped for operators (docs/monitoring/alerts.yml) are valid and only use
/// metrics the relay exports.
#[test]
fn the_shipped_alert_rules_check_and_name_only_exported_metrics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let documented = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"),
    )
    .unwrap();
    for name in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("wireleap_relay_"))
    {
        assert!(
            documented.contains(name),
            "{name} is not a documented metric"
        );
    }
    // The Grafana dashboard is JSON, and its queries name documented metrics too.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring/dashboard.json"),
    )
    .unwrap();
    let board: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(board["panels"].as_array().is_some_and(|p| p.len() > 5));
    for name in dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("wireleap_relay_"))
    {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            documented.contains(base),
            "dashboard: {name} is not a documented metric"
        );
    }
    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => println!(
            "SKIPPED: promtool check rules (promtool is not installed; scripts/test installs it)"
        ),
    }
}

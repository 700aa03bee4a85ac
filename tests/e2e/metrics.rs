//! Prometheus metrics of the real relay binary (issue #8): streams through the stand-in network,
//! some refused, then `GET /metrics` shows what a user expects and passes `promtool check
//! metrics`; a relay restarted by its supervisor publishes the restart count.

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
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, WAIT).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    // hyper sends a full body with a content-length here (no chunked encoding).
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect();
    Scrape {
        text: body.to_owned(),
        samples,
    }
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
    assert_eq!(run.code, 78, "{run}");
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
            .contains("listening for H/2 requests")
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
    // The next generation reads a config with metrics on a fixed port.
    let port = free_port();
    let config = sup.home.read("config.json");
    let with_metrics = config.replacen(
        r#""heartbeat_interval""#,
        &format!(r#""metrics": {{"address": "127.0.0.1:{port}"}}, "heartbeat_interval""#),
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

    // A handover: the next generation binds the same metrics port while this one still runs.
    let restarted = sup.home.pid().unwrap();
    sup.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(WAIT, "the next generation's metrics", || {
        sup.log().matches(&line).count() == 2
    });
    eventually(WAIT, "the old generation to exit", || {
        !crate::support::process::is_alive(restarted)
    });
    assert!(
        !sup.log().contains("could not start the metrics server"),
        "{}",
        sup.log()
    );
    let scraped = scrape(metrics);
    assert_eq!(scraped.get("wireleap_relay_supervisor_restarts"), 1.0);
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

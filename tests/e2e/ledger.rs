//! The sharetoken ledger of the real relay binary against the stand-in contract (issue #5):
//! submission through a contract outage, expiry when the window closes first, import of a
//! reference store, `balance`/`withdraw`, two relays on one ledger, and `kill -9` during intake.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::Connection;
use wireleap_devnet::Server;
use wireleap_devnet::client;
use wireleap_protocol::{
    InitPayload, Network, PublicKey, Servicekey, Sharetoken, Status, unix_now,
};

use crate::support::runtime;
use crate::support::standin::Standin;
use crate::support::{Home, eventually};

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(40);

fn config(contract: &str, auto_submit: &str) -> String {
    format!(
        r#"{{"address": "127.0.0.1:0", "auto_submit_interval": "{auto_submit}", "archive_dir": "archive",
            "heartbeat_interval": "1s", "danger_zone": {{"allow_loopback": true}},
            "contracts": {{"{contract}": {{"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}}}}"#
    )
}

fn relay_key(home: &Home) -> PublicKey {
    let key: String = serde_json::from_str(&home.read("key.pub")).unwrap();
    PublicKey::try_from_b64(&key).unwrap()
}

/// `(signature, state)` of every row of the relay's ledger (read-only, beside the daemon).
fn ledger_rows(home: &Path) -> Vec<(String, String)> {
    let path = home.join("ledger.db");
    if !path.exists() {
        return Vec::new();
    }
    let conn =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT json_extract(body, '$.signature'),
                    CASE state WHEN 0 THEN 'pending' WHEN 1 THEN 'submitted'
                               WHEN 2 THEN 'archived' ELSE 'expired' END
             FROM tokens ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `last_error` of every row (read-only, beside the daemon).
fn last_errors(home: &Path) -> Vec<Option<String>> {
    let conn = Connection::open_with_flags(
        home.join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare("SELECT last_error FROM tokens ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn states(home: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, s) in ledger_rows(home) {
        *m.entry(s).or_default() += 1;
    }
    m
}

fn tokens(sks: &[Servicekey], relay: PublicKey, n: usize) -> Vec<Sharetoken> {
    (0..n)
        .map(|i| Sharetoken::new(&sks[i % sks.len()], relay, unix_now()).unwrap())
        .collect()
}

/// Writes tokens as a reference relay does: `sharetokens/<contract>/<signature>.json`.
fn write_store(home: &Path, tokens: &[Sharetoken]) {
    for t in tokens {
        let dir = home
            .join("sharetokens")
            .join(t.contract.public_key.unwrap().to_b64());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{}.json", t.signature.to_b64())),
            serde_json::to_string(t).unwrap(),
        )
        .unwrap();
    }
}

/// Asks the daemon for its status dump (SIGUSR2) and waits until its log shows `counts`.
fn status_dump_shows(home: &Home, counts: &str) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(home.pid().unwrap()),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    eventually(WAIT, "the status dump with the counts", || {
        home.read("wireleap-relay.log").contains(counts)
    });
}

fn submits(s: &Standin) -> usize {
    s.net
        .requests_to(Server::Contract)
        .iter()
        .filter(|r| r.path == "/submit")
        .count()
}

#[test]
fn ledger_retries_through_a_contract_outage_then_submits_archives_and_pays_out_once() {
    let s = Standin::start();
    s.net.with_switches(|w| {
        w.servicekey_duration_secs = 5;
        w.submission_window_secs = 300;
    });
    let home = Home::with_config(&config(s.net.contract_url(), "1s"));
    let relay = relay_key(&home);
    let sks: Vec<_> = (0..3).map(|_| s.net.mint_servicekey()).collect();
    let toks = tokens(&sks, relay, 30);
    write_store(home.path(), &toks);
    home.ok(&["start"]);
    s.wait_enrolled(&relay.to_b64(), WAIT);
    s.net.set_contract_500(u64::MAX);
    eventually(WAIT, "imported tokens", || {
        states(home.path()).get("pending") == Some(&30)
    });

    // Due at settlement_open + 1; every token is tried, fails, and is tried again.
    eventually(WAIT, "two failed attempts per token", || submits(&s) >= 60);
    assert_eq!(s.net.balance(&relay), 0);
    assert_eq!(states(home.path()).get("pending"), Some(&30));

    s.net.set_contract_500(0);
    eventually(WAIT, "every token archived", || {
        states(home.path()).get("archived") == Some(&30)
    });
    assert_eq!(s.net.balance(&relay), 30, "each token paid exactly once");
    for t in &toks {
        let file = home
            .path()
            .join("archive")
            .join(t.contract.public_key.unwrap().to_b64())
            .join(format!("{}.json", t.signature.to_b64()));
        let body = std::fs::read_to_string(&file).unwrap();
        assert_eq!(body, serde_json::to_string(t).unwrap());
    }
    // `status` counts (the SIGUSR2 dump, the REST API's shape).
    status_dump_shows(
        &home,
        r#""sharetokens":{"pending":0,"submitted":0,"expired":0,"archived":30}"#,
    );
    // Nothing more is submitted once every token is settled.
    let settled = submits(&s);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(submits(&s), settled);

    // The submissions are signed by the relay with both interface headers (spec §5.6).
    let sub = s
        .net
        .requests_to(Server::Contract)
        .into_iter()
        .rfind(|r| r.path == "/submit")
        .unwrap();
    assert_eq!(
        sub.header("wireleap-relay-pubkey"),
        Some(relay.to_b64().as_str())
    );
    assert_eq!(sub.header("wireleap-relay-dir-version"), Some("0.2.0"));
    assert!(sub.header("idempotency-key").is_some());

    // `balance` and `withdraw` (spec §5.7): relay-contract header only.
    // The reference's JSON by default; `--json` is still accepted.
    let run = home.ok(&["balance"]);
    assert_eq!(run.stdout, home.ok(&["balance", "--json"]).stdout);
    let b: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(b["contract"], s.net.contract_url());
    assert_eq!(b["balance"]["available"], 30);
    assert_eq!(b["tokens"].as_array().unwrap().len(), 30);
    let run = home.ok(&["balance", "--human"]);
    assert!(run.stdout.contains("available:   30 usd"), "{run}");
    assert!(
        run.stdout
            .contains("0 pending, 0 submitted, 30 archived, 0 expired"),
        "{run}"
    );
    let run = home.ok(&[
        "withdraw",
        "-destination",
        "acct_x",
        "-amount",
        "12",
        "--json",
        "--yes",
    ]);
    let w: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (w["amount"].as_i64(), w["state"].as_str()),
        (Some(12), Some("complete"))
    );
    assert_eq!(s.net.balance(&relay), 18);
    let run = home.run(&["withdraw", "--destination", "acct_x", "--amount", "0"]);
    assert_eq!(run.code, 1, "{run}");
    for r in s.net.requests_to(Server::Contract) {
        if r.path.starts_with("/payout/") {
            assert_eq!(r.header("wireleap-relay-contract-version"), Some("0.1.0"));
            assert_eq!(r.header("wireleap-relay-dir-version"), None, "{r:?}");
        }
    }
    let w = s
        .net
        .requests_to(Server::Contract)
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/payout/withdrawals")
        .unwrap();
    assert_eq!(
        w.body,
        r#"{"amount":12,"type":"TODO","destination":"acct_x"}"#
    );
    home.ok(&["stop"]);
}

/// A withdrawal moves money: once its POST may have reached the contract (here a 500 after the
/// contract read it) it is never sent again. A script (no terminal) is not asked, as with the
/// reference, and gets the contract's reply as it was sent.
#[test]
fn a_scripted_withdrawal_prints_the_reply_and_its_post_is_never_sent_twice() {
    let s = Standin::start();
    let home = Home::with_config(&config(s.net.contract_url(), "1s"));
    let posts = || {
        s.net
            .requests_to(Server::Contract)
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/payout/withdrawals")
            .count()
    };
    // The reference's command line, from a script: sent once, the reply printed as sent.
    s.net.credit(&relay_key(&home), 100);
    let url = s.net.contract_url();
    let run = home.run(&[
        "withdraw",
        "-contract",
        url,
        "-destination",
        "acct_x",
        "-amount",
        "5",
    ]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(posts(), 1);
    let reply: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(reply["amount"], 5, "{run}");
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "not the reply as sent: {run}"
    );
    let run = home.run(&[
        "withdraw",
        "--destination",
        "acct_x",
        "--amount",
        "5",
        "--human",
    ]);
    assert!(run.stdout.starts_with("withdrawal "), "{run}");
    let sent = posts();
    // The contract fails the request after reading it: the relay does not send it again (the
    // reference retries it, twice, 5 s apart).
    let withdraw = |more: &[&str]| {
        let base = [
            "withdraw",
            "--destination",
            "acct_x",
            "--amount",
            "5",
            "--yes",
        ];
        home.run(&[&base[..], more].concat())
    };
    s.net.set_contract_500(1);
    let run = withdraw(&[]);
    assert_ne!(run.code, 0, "{run}");
    assert!(run.stderr.contains("500"), "{run}");
    assert_eq!(
        posts(),
        sent + 1,
        "the withdrawal POST was sent more than once"
    );
    // A contract that cannot be reached at all: the error says why (the cause, not only
    // "error sending request").
    let run = withdraw(&["--contract", "http://127.0.0.1:9"]);
    assert_ne!(run.code, 0, "{run}");
    assert!(
        run.stderr.to_lowercase().contains("connection refused"),
        "the cause is missing: {run}"
    );
}

#[test]
fn ledger_expires_tokens_whose_window_closes_during_an_outage_keeps_them_and_stops_retrying() {
    let s = Standin::start();
    s.net.with_switches(|w| {
        w.servicekey_duration_secs = 3;
        w.submission_window_secs = 3;
    });
    let home = Home::with_config(&config(s.net.contract_url(), "1s"));
    let relay = relay_key(&home);
    let toks = tokens(&[s.net.mint_servicekey()], relay, 10);
    write_store(home.path(), &toks);
    home.ok(&["start"]);
    s.wait_enrolled(&relay.to_b64(), WAIT);
    s.net.set_contract_500(u64::MAX);
    eventually(WAIT, "failed attempts", || submits(&s) >= 10);
    eventually(WAIT, "every token expired", || {
        states(home.path()).get("expired") == Some(&10)
    });
    s.net.set_contract_500(0);
    let tried = submits(&s);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(submits(&s), tried, "an expired token is never retried");
    assert_eq!(s.net.balance(&relay), 0);
    assert_eq!(
        ledger_rows(home.path()).len(),
        10,
        "expired tokens are kept"
    );
    home.ok(&["stop"]);
}

#[test]
fn ledger_settlement_window_already_closed_marks_tokens_expired_and_they_are_never_retried() {
    let s = Standin::start();
    // Windows that stay open for the whole test: expiry can only come from the contract's answer.
    s.net.with_switches(|w| {
        w.servicekey_duration_secs = 3;
        w.submission_window_secs = 600;
    });
    let home = Home::with_config(&config(s.net.contract_url(), "1s"));
    let relay = relay_key(&home);
    let toks = tokens(
        &[s.net.mint_servicekey(), s.net.mint_servicekey()],
        relay,
        12,
    );
    write_store(home.path(), &toks);
    home.ok(&["start"]);
    s.wait_enrolled(&relay.to_b64(), WAIT);
    // First an outage: every token is tried and retried.
    s.net.set_contract_500(u64::MAX);
    eventually(WAIT, "two failed attempts per token", || submits(&s) >= 24);
    assert_eq!(states(home.path()).get("pending"), Some(&12));

    // Then the contract answers as the reference does once a window has closed.
    s.net.with_switches(|w| {
        w.settlement_closed = true;
        w.contract_fail_500 = 0;
    });
    eventually(WAIT, "every token expired", || {
        states(home.path()).get("expired") == Some(&12)
    });
    for e in last_errors(home.path()) {
        let e = e.unwrap_or_default();
        assert!(e.contains("settlement window already closed"), "{e}");
    }
    // Final: the contract would accept them now, but they are never tried again.
    s.net.with_switches(|w| w.settlement_closed = false);
    let tried = submits(&s);
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(submits(&s), tried, "an expired token was retried");
    assert_eq!(s.net.balance(&relay), 0);
    assert_eq!(
        ledger_rows(home.path()).len(),
        12,
        "expired tokens are kept"
    );
    status_dump_shows(
        &home,
        r#""sharetokens":{"pending":0,"submitted":0,"expired":12,"archived":0}"#,
    );
    home.ok(&["stop"]);
}

/// Every file below `dir`, relative, with its content.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn ledger_imports_a_reference_store_in_both_layouts_and_a_second_import_changes_nothing() {
    let s = Standin::start();
    let home = Home::with_config(&config(s.net.contract_url(), "0"));
    let relay = relay_key(&home);
    let sks: Vec<_> = (0..4).map(|_| s.net.mint_servicekey()).collect();
    let toks = tokens(&sks, relay, 40);
    // v0.3.8 layout for most, older nesting and the `expired/` subtree for some.
    write_store(home.path(), &toks[..30]);
    let contract = toks[0].contract.public_key.unwrap().to_b64();
    for (i, t) in toks[30..].iter().enumerate() {
        let sub = if i % 2 == 0 { "expired" } else { "old/nested" };
        let dir = home.path().join("sharetokens").join(sub).join(&contract);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{}.json", t.signature.to_b64())),
            serde_json::to_string(t).unwrap(),
        )
        .unwrap();
    }
    let store = home.path().join("sharetokens");
    std::fs::write(store.join(&contract).join("garbage.json"), "{\"version\":").unwrap();

    home.ok(&["start"]);
    eventually(WAIT, "the import", || ledger_rows(home.path()).len() == 40);
    home.ok(&["stop"]);
    let want: BTreeSet<String> = toks.iter().map(|t| t.signature.to_b64()).collect();
    let got: BTreeSet<String> = ledger_rows(home.path()).into_iter().map(|r| r.0).collect();
    assert_eq!(got, want, "nothing lost");
    assert!(
        store
            .join("malformed")
            .join(&contract)
            .join("garbage.json")
            .exists()
    );
    assert!(!store.join(&contract).join("garbage.json").exists());
    assert!(
        home.read("wireleap-relay.log")
            .contains("malformed sharetoken file moved aside")
    );

    let rows = ledger_rows(home.path());
    let files = tree(&store);
    home.ok(&["start"]);
    eventually(WAIT, "the second start", || {
        home.read("wireleap-relay.log")
            .matches("Listening for H/2 requests")
            .count()
            >= 2
    });
    home.ok(&["stop"]);
    assert_eq!(
        ledger_rows(home.path()),
        rows,
        "the second import changed the ledger"
    );
    assert_eq!(tree(&store), files, "the second import changed the store");
}

// === streams through the real transport ===

/// A relay started with `start --fg` by the test (so it can be `kill -9`ed); killed on drop.
/// A relay generation in the home, as a supervisor starts one during a handover: it inherits
/// its listening socket (`LISTEN_FDS`), so two of them share the home and its ledger (a relay
/// that binds for itself would hold the home alone).
struct FgRelay {
    child: Child,
    addr: SocketAddr,
}

impl FgRelay {
    fn start(home: &Home, log: &str, s: &Standin) -> Self {
        use command_fds::{CommandFdExt as _, FdMapping};
        let log_path = home.file(log);
        let _ = std::fs::remove_file(&log_path);
        let err = std::fs::File::create(&log_path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut command = home.command(&["start", "--fg"]);
        command
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID")
            .fd_mappings(vec![FdMapping {
                parent_fd: std::os::fd::OwnedFd::from(listener),
                child_fd: 3,
            }])
            .unwrap();
        let child = command.stdout(Stdio::null()).stderr(err).spawn().unwrap();
        let mut addr = None;
        eventually(WAIT, "the listen address", || {
            addr = std::fs::read_to_string(&log_path).ok().and_then(|l| {
                l.split("Listening for H/2 requests on https://")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            });
            addr.is_some()
        });
        s.wait_enrolled(&relay_key(home).to_b64(), WAIT);
        Self {
            child,
            addr: addr.unwrap(),
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FgRelay {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn h2_conn(addr: SocketAddr) -> Option<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(client::tls::client_config().unwrap())
        .connect(client::tls::server_name("wireleap.com").unwrap(), tcp)
        .await
        .ok()?;
    let (send, conn) = h2::client::handshake(tls).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(send)
}

/// Opens one stream with `token` to a closed local port. `Some(true)`: admitted (the relay
/// stored the token, then the dial failed: 502); `Some(false)`: refused (400/500);
/// `None`: no answer (the relay died).
async fn open_stream(
    conn: &h2::client::SendRequest<Bytes>,
    token: Sharetoken,
    closed: SocketAddr,
) -> Option<bool> {
    stream_status(conn, token, closed)
        .await
        .map(|s| s.code == 502)
}

/// As [`open_stream`], with the `wl-status` trailer the relay answered.
async fn stream_status(
    conn: &h2::client::SendRequest<Bytes>,
    token: Sharetoken,
    closed: SocketAddr,
) -> Option<Status> {
    let payload = InitPayload::connect(Network::Tcp, &format!("target://{closed}"), token);
    let req = http::Request::builder()
        .method(http::Method::PUT)
        .uri("https://wireleap.com/")
        .header("wl-payload", payload.to_header_value())
        .body(())
        .ok()?;
    let fut = async {
        let mut ready = conn.clone().ready().await.ok()?;
        let (resp, _send) = ready.send_request(req, false).ok()?;
        let mut body = resp.await.ok()?.into_body();
        while let Some(c) = body.data().await {
            let c = c.ok()?;
            let _ = body.flow_control().release_capacity(c.len());
        }
        let trailers = body.trailers().await.ok()??;
        Status::from_json(trailers.get("wl-status")?.as_bytes()).ok()
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .ok()
        .flatten()
}

fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn ledger_two_relays_on_one_ledger_admit_each_token_exactly_once() {
    let s = Standin::start();
    let home = Home::with_config(&config(s.net.contract_url(), "0"));
    let relay = relay_key(&home);
    let a = FgRelay::start(&home, "a.log", &s);
    let b = FgRelay::start(&home, "b.log", &s);
    let closed = closed_port();
    let sk = s.net.mint_servicekey();
    let rt = runtime();
    rt.block_on(async {
        let (ca, cb) = (
            h2_conn(a.addr).await.unwrap(),
            h2_conn(b.addr).await.unwrap(),
        );
        // Both admit fresh tokens (both are serving).
        for c in [&ca, &cb] {
            let t = Sharetoken::new(&sk, relay, unix_now()).unwrap();
            let deadline = Instant::now() + WAIT;
            while open_stream(c, t.clone(), closed).await != Some(true) {
                assert!(Instant::now() < deadline, "a relay never admitted a stream");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // The same token to both at the same instant, 300 times.
        let mut wins = Vec::new();
        for _ in 0..300 {
            let t = Sharetoken::new(&sk, relay, unix_now()).unwrap();
            let (x, y) = tokio::join!(
                open_stream(&ca, t.clone(), closed),
                open_stream(&cb, t.clone(), closed)
            );
            wins.push((x, y));
        }
        for (i, (x, y)) in wins.iter().enumerate() {
            assert!(
                matches!(
                    (x, y),
                    (Some(true), Some(false)) | (Some(false), Some(true))
                ),
                "token {i}: {x:?} {y:?}"
            );
        }
        let both_won = wins.iter().filter(|(x, _)| *x == Some(true)).count();
        eprintln!("relay a won {both_won} of 300, relay b {}", 300 - both_won);
    });
    assert_eq!(ledger_rows(home.path()).len(), 302);
    drop((a, b));
}

#[test]
fn ledger_kill_9_during_intake_loses_no_admitted_token_and_submission_resumes() {
    let s = Standin::start();
    s.net.with_switches(|w| {
        w.servicekey_duration_secs = 6;
        w.submission_window_secs = 300;
    });
    let home = Home::with_config(&config(s.net.contract_url(), "1s"));
    let relay = relay_key(&home);
    let closed = closed_port();
    let rt = runtime();
    let mut seen_admitted: Vec<String> = Vec::new();
    let mut attempted = 0usize;
    let mut rng_state: u64 = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut rand_ms = |lo: u64, hi: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        lo + rng_state % (hi - lo)
    };
    const KILLS: usize = 22;
    for round in 0..KILLS {
        let mut r = FgRelay::start(&home, "fg.log", &s);
        // A fresh servicekey each round: usable until its settlement_open, 6 s from now.
        let sk = s.net.mint_servicekey();
        let run_for = Duration::from_millis(rand_ms(300, 1500));
        let admitted = rt.block_on(async {
            let conn = h2_conn(r.addr).await.unwrap();
            let deadline = Instant::now() + run_for;
            let mut out = Vec::new();
            let mut sent = 0;
            // As fast as it can: 16 streams at a time, until the kill lands mid-batch.
            let killer = {
                let pid = r.child.id();
                tokio::spawn(async move {
                    tokio::time::sleep_until(deadline.into()).await;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                })
            };
            loop {
                let batch: Vec<Sharetoken> = (0..16)
                    .map(|_| Sharetoken::new(&sk, relay, unix_now()).unwrap())
                    .collect();
                sent += batch.len();
                let answers = futures::future::join_all(
                    batch.iter().map(|t| open_stream(&conn, t.clone(), closed)),
                )
                .await;
                let mut dead = false;
                for (t, a) in batch.iter().zip(answers) {
                    match a {
                        Some(true) => out.push(t.signature.to_b64()),
                        Some(false) => panic!("a fresh token was refused in round {round}"),
                        None => dead = true,
                    }
                }
                if dead || Instant::now() > deadline + Duration::from_secs(5) {
                    break;
                }
            }
            let _ = killer.await;
            (out, sent)
        });
        r.kill9();
        attempted += admitted.1;
        seen_admitted.extend(admitted.0);
    }
    // One more start: the ledger must hold every token the client saw admitted, each once.
    let _r = FgRelay::start(&home, "fg.log", &s);
    let rows = ledger_rows(home.path());
    let in_ledger: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(
        in_ledger.len(),
        rows.len(),
        "a token is in the ledger twice"
    );
    let missing: Vec<_> = seen_admitted
        .iter()
        .filter(|s| !in_ledger.contains(*s))
        .collect();
    eprintln!(
        "{KILLS} kills: {attempted} streams tried, {} seen admitted, {} in the ledger",
        seen_admitted.len(),
        rows.len()
    );
    assert!(missing.is_empty(), "{} admitted tokens lost", missing.len());
    assert!(
        seen_admitted.len() > 100,
        "too few streams admitted to mean anything"
    );
    // Submission resumes: every token in the ledger is paid, once.
    eventually(Duration::from_secs(60), "every token archived", || {
        states(home.path()).get("archived") == Some(&rows.len())
    });
    assert_eq!(s.net.balance(&relay), i64::try_from(rows.len()).unwrap());
}

#[test]
fn ledger_prunes_settled_tokens_once_their_window_closed_and_a_pruned_token_stays_refused() {
    let s = Standin::start();
    s.net.with_switches(|w| {
        w.servicekey_duration_secs = 3;
        w.submission_window_secs = 3;
    });
    let short = s.net.mint_servicekey();
    s.net.with_switches(|w| w.submission_window_secs = 600);
    let long = s.net.mint_servicekey();
    let home = Home::with_config(&config(s.net.contract_url(), "1s"));
    let relay = relay_key(&home);
    let r = FgRelay::start(&home, "fg.log", &s);
    let closed = closed_port();
    let rt = runtime();
    let conn = rt.block_on(h2_conn(r.addr)).unwrap();
    // Streams through the real transport: 10 tokens with a short window, 3 with a long one.
    let mut admitted = Vec::new();
    for sk in std::iter::repeat_n(&short, 10).chain(std::iter::repeat_n(&long, 3)) {
        let t = Sharetoken::new(sk, relay, unix_now()).unwrap();
        assert_eq!(
            rt.block_on(open_stream(&conn, t.clone(), closed)),
            Some(true)
        );
        admitted.push(t);
    }
    eventually(WAIT, "every token archived", || {
        states(home.path()).get("archived") == Some(&13)
    });
    // The short window closes (3 s after it opened): those rows leave the ledger, the long
    // window's stay.
    eventually(WAIT, "the short window's rows pruned", || {
        ledger_rows(home.path()).len() == 3
    });
    let left: BTreeSet<String> = ledger_rows(home.path()).into_iter().map(|r| r.0).collect();
    let want: BTreeSet<String> = admitted[10..]
        .iter()
        .map(|t| t.signature.to_b64())
        .collect();
    assert_eq!(left, want);
    eventually(WAIT, "the prune logged", || {
        std::fs::read_to_string(home.file("fg.log"))
            .unwrap_or_default()
            .contains("pruned settled sharetokens whose window closed")
    });
    // The archive keeps every file, and every token was paid once.
    for t in &admitted {
        let file = home
            .path()
            .join("archive")
            .join(t.contract.public_key.unwrap().to_b64())
            .join(format!("{}.json", t.signature.to_b64()));
        assert!(file.exists(), "{}", file.display());
    }
    assert_eq!(s.net.balance(&relay), 13);
    // A pruned token presented again is still refused: its servicekey expired before the row
    // could go (spec §5.4 rule 2), so pruning reopened no replay window.
    let again = rt
        .block_on(stream_status(&conn, admitted[0].clone(), closed))
        .unwrap();
    assert_eq!(
        (again.code, again.description.as_str()),
        (400, "sharetoken is expired"),
        "{again:?}"
    );
    assert_eq!(ledger_rows(home.path()).len(), 3);
    drop(r);
}

/// Tokens in `tokens` and folders in the import's fingerprint (read-only, beside the daemon).
fn imported(home: &Path) -> (i64, i64) {
    let path = home.join("ledger.db");
    if !path.exists() {
        return (0, 0);
    }
    let conn =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap_or(0)
    };
    (count("tokens"), count("store_imports"))
}

/// A kill -9 while the relay imports a reference store leaves all of it or none of it (never a
/// fingerprint without its tokens), the next start imports the whole store, and the start after
/// that one does not import again.
#[test]
fn ledger_import_is_all_or_nothing_under_kill_nine_and_happens_once() {
    let s = Standin::start();
    let home = Home::with_config(&config(s.net.contract_url(), "0"));
    let relay = relay_key(&home);
    let sks: Vec<_> = (0..4).map(|_| s.net.mint_servicekey()).collect();
    const N: usize = 20_000;
    write_store(home.path(), &tokens(&sks, relay, N));
    // The import trusts a store left alone for this long (its fingerprint is recorded then).
    std::thread::sleep(relay_migrations::ledger::SETTLE);
    let mut child = home
        .command(&["start", "--fg"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed as soon as the ledger exists: the import runs right after it is opened.
    let deadline = Instant::now() + WAIT;
    while !home.path().join("ledger.db").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let (count, folders) = imported(home.path());
    assert!(
        (count == 0 && folders == 0) || (count == N as i64 && folders > 0),
        "after the kill: {count} tokens, {folders} folders fingerprinted"
    );
    // The next start imports everything.
    home.ok(&["start"]);
    eventually(WAIT, "the import", || {
        imported(home.path()) == (N as i64, 2)
    });
    home.ok(&["stop"]);
    // And the one after does not read the store again.
    home.ok(&["start"]);
    home.ok(&["stop"]);
    // (The killed run logged to its own stderr: if it finished the import, no start here did.)
    let log = home.read("wireleap-relay.log");
    assert_eq!(
        log.matches("imported the sharetokens/ store").count(),
        usize::from(count == 0),
        "{log}"
    );
    assert_eq!(imported(home.path()).0, N as i64);
}

/// A submission that meets a passing 500 is retried as the reference's client does (spec §4.2,
/// §5.6): 5 s later, as the same request with the same Idempotency-Key (a contract that carried
/// out the first and lost its reply answers the second from its cache), not a round later as a
/// new one.
#[test]
fn a_submission_that_meets_a_500_is_retried_5_s_later_with_the_same_idempotency_key() {
    let s = Standin::start();
    s.net.with_switches(|w| {
        w.servicekey_duration_secs = 8;
        w.submission_window_secs = 300;
    });
    let home = Home::with_config(&config(s.net.contract_url(), "1s"));
    let relay = relay_key(&home);
    let toks = tokens(&[s.net.mint_servicekey()], relay, 1);
    write_store(home.path(), &toks);
    home.ok(&["start"]);
    s.wait_enrolled(&relay.to_b64(), WAIT);
    s.net.set_contract_500(1);
    assert!(
        unix_now() < toks[0].contract.settlement_open,
        "the relay enrolled after the token fell due: the 500 may have come too late"
    );
    eventually(WAIT, "the token archived", || {
        states(home.path()).get("archived") == Some(&1)
    });
    let submits: Vec<_> = s
        .net
        .requests_to(Server::Contract)
        .into_iter()
        .filter(|r| r.path == "/submit")
        .collect();
    assert_eq!(submits.len(), 2, "{submits:?}");
    assert_eq!(submits[0].body, submits[1].body);
    let key = |i: usize| submits[i].header("idempotency-key").map(str::to_owned);
    assert!(key(0).is_some());
    assert_eq!(key(0), key(1), "a retry is the same request");
    let gap = submits[1].time_ms - submits[0].time_ms;
    assert!((4500..9000).contains(&gap), "retried {gap} ms later");
    assert_eq!(s.net.balance(&relay), 1);
}

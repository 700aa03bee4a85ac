//! Network usage accounting and caps (spec §2.5) through the real relay binary enrolled in the
//! stand-in network: over 90 % of a contract's cap the relay disenrolls, over 93 % it cuts the
//! contract's streams; the counters live in `stats.json` across a restart; a period that ends
//! (while the relay runs, or while it was down) goes to the archive and the counters restart.
//!
//! Usage counts the payload read from both sides of a stream, so a round trip of N bytes through
//! an echo target counts 2N.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wireleap_devnet::client::{
    self, CircuitClient, ClientConfig, ClientError, H2Stream, Hop, StreamEnd,
};
use wireleap_protocol::{Network, PublicKey, Servicekey};

use crate::support::runtime;
use crate::support::standin::Standin;
use crate::support::target::tcp_echo;
use crate::support::{Home, eventually};

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(30);
/// 4 MiB (`"4MB"`: datasize units are binary, spec §2.2).
const CAP: u64 = 4 << 20;

fn config(contract: &str, cap: &str, network_usage: &str) -> String {
    format!(
        r#"{{"address": "127.0.0.1:0", "danger_zone": {{"allow_loopback": true}},
            "rest_api": {{"address": "http://127.0.0.1:0"}},
            "network_usage": {network_usage},
            "contracts": {{"{contract}": {{"address": "wireleap://127.0.0.1:13499",
                "role": "backing", "network_usage_limit": "{cap}"}}}}}}"#
    )
}

fn pubkey(home: &Home) -> String {
    serde_json::from_str(&home.read("key.pub")).unwrap()
}

/// A stand-in network and a relay home for one contract with `cap`; returns them with the
/// relay's key and the contract id.
fn setup(cap: &str, network_usage: &str) -> (Standin, Home, String, String) {
    let s = Standin::start();
    let home = Home::with_config(&config(s.net.contract_url(), cap, network_usage));
    let key = pubkey(&home);
    let contract_id = s.net.ready().contract_pubkey.to_b64();
    (s, home, key, contract_id)
}

/// Starts the relay and waits for its listener and REST API; returns (relay address, API address).
fn start(home: &Home) -> (SocketAddr, String) {
    let log_before = home.read("wireleap-relay.log").len();
    home.ok(&["start"]);
    let mut api = None;
    eventually(WAIT, "the REST API address in the log", || {
        let log = home.read("wireleap-relay.log");
        api = log[log_before.min(log.len())..].lines().find_map(|l| {
            l.split("address=http://")
                .nth(1)
                .map(|a| a.split_whitespace().next().unwrap().to_owned())
        });
        api.is_some()
    });
    (home.listen_addr(), api.unwrap())
}

/// The relay as a one-hop circuit.
fn hop(addr: SocketAddr, key: &str) -> Hop {
    Hop::new(
        format!("wireleap://{addr}"),
        PublicKey::try_from_b64(key).unwrap(),
    )
}

/// `GET /api/status` (spec §2.6).
fn status(api: &str) -> Value {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /api/status HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn stats(home: &Home) -> Value {
    serde_json::from_str(&home.read("stats.json")).unwrap()
}

/// A client whose first stream through `hop` is admitted (enrollment reaches the relay's gate
/// shortly after the directory records it).
async fn admitted_client(sk: &Servicekey, hop: &Hop, target: SocketAddr) -> CircuitClient {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = CircuitClient::new(sk.clone(), vec![hop.clone()], ClientConfig::default()).unwrap();
        let ok = async {
            let mut s = c.open(&target.to_string(), Network::Tcp).await?;
            echo(&mut s, b"?").await;
            s.finish();
            Ok::<_, ClientError>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), ok).await {
            Ok(Ok(())) => return c,
            other => assert!(
                Instant::now() < deadline,
                "streams never admitted: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `data` through an open stream to the echo target and reads it back.
async fn echo(s: &mut H2Stream, data: &[u8]) {
    tokio::time::timeout(WAIT, async {
        let (mut r, mut w) = tokio::io::split(&mut *s);
        let mut back = vec![0u8; data.len()];
        let (read, written) = tokio::join!(r.read_exact(&mut back), w.write_all(data));
        written.unwrap();
        read.unwrap();
        assert!(back == data, "bytes differ after the round trip");
    })
    .await
    .expect("echo round trip timed out");
}

/// Opens a stream that the relay must refuse; returns its status.
async fn refused(c: &CircuitClient, target: SocketAddr) -> wireleap_protocol::Status {
    let mut s = c.open(&target.to_string(), Network::Tcp).await.unwrap();
    match tokio::time::timeout(WAIT, s.wait_end()).await.unwrap() {
        StreamEnd::Status(st) => st,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Keeps sending through `s` (reading the echo) until the relay ends the stream; returns how it
/// ended and how many bytes were sent. Panics if the stream is not ended in time.
async fn send_until_cut(mut s: H2Stream, limit: usize) -> (StreamEnd, usize) {
    let chunk = vec![7u8; 32 << 10];
    let sent = std::cell::Cell::new(0usize);
    let (mut r, mut w) = tokio::io::split(&mut s);
    tokio::time::timeout(WAIT, async {
        let reader = async {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let writer = async {
            while sent.get() < limit && w.write_all(&chunk).await.is_ok() {
                sent.set(sent.get() + chunk.len());
            }
        };
        tokio::pin!(reader);
        tokio::select! {
            () = &mut reader => {}
            () = writer => reader.await,
        }
    })
    .await
    .expect("the stream was not ended by the hard cap");
    drop((r, w));
    (s.end(), sent.get())
}

#[test]
fn usage_over_90_percent_disenrolls_and_over_93_percent_cuts_streams_and_persists() {
    let (s, home, key, contract_id) =
        setup("4MB", r#"{"timeframe": "1h", "write_interval": "100ms"}"#);
    let (addr, api) = start(&home);
    s.wait_enrolled(&key, WAIT);
    let hop = hop(addr, &key);
    let soft = CAP * 90 / 100;
    let hard = CAP * 93 / 100;

    let rt = runtime();
    let final_usage = rt.block_on(async {
        let target = tcp_echo().await;
        let sk = client::activate_servicekey(s.net.contract_url())
            .await
            .unwrap();
        let c = admitted_client(&sk, &hop, target).await;

        // Under 90 %: still enrolled, nothing deleted.
        let mut open = c.open(&target.to_string(), Network::Tcp).await.unwrap();
        echo(&mut open, &vec![1u8; 1_500_000]).await;
        let st = status(&api);
        let used = st["relay_status"][0]["network_usage"].as_u64().unwrap();
        assert!((3_000_000..soft).contains(&used), "{st}");
        assert!(s.relays_requests("DELETE").is_empty());

        // Over 90 %: disenrolled at the directory; new streams refused; the open one goes on.
        echo(&mut open, &vec![2u8; 400_000]).await;
        // The stand-in records a request before handling it: wait for the entry to go too.
        eventually(WAIT, "the DELETE at the directory", || {
            !s.relays_requests("DELETE").is_empty() && !s.is_enrolled(&key)
        });
        let st = refused(&c, target).await;
        assert_eq!(
            (st.code, st.description.as_str(), st.origin.as_str()),
            (
                400,
                format!("relay contract not available: {contract_id}").as_str(),
                key.as_str()
            )
        );
        echo(&mut open, b"the open stream still moves data").await;
        let st = status(&api);
        let rs = &st["relay_status"][0];
        assert_eq!(rs["status"]["enrolled"], false, "{st}");
        assert_eq!(rs["status"]["network_cap_reached"], false, "{st}");
        let used = rs["network_usage"].as_u64().unwrap();
        assert!(
            used > soft && used <= hard,
            "{used} not between 90 and 93 %: {st}"
        );

        // Over 93 %: the open stream moving data is ended (cleanly, spec §6.5), and new streams
        // are still refused. stats.json is read all along: it must always parse (atomic writes).
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let watcher = {
            let path = home.file("stats.json");
            let reads = reads.clone();
            tokio::task::spawn_blocking(move || {
                let end = Instant::now() + Duration::from_secs(2);
                while Instant::now() < end {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let v: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("torn stats.json ({e}): {text:?}"));
                    assert!(v["created_at"].as_i64().unwrap() > 0);
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let (end, sent) = send_until_cut(open, 16 << 20).await;
        assert_eq!(end, StreamEnd::Clean);
        assert!(sent < 16 << 20, "the stream was never cut");
        watcher.await.unwrap();
        assert!(reads.load(std::sync::atomic::Ordering::Relaxed) > 50);
        let st = refused(&c, target).await;
        assert_eq!(st.code, 400);
        assert!(st.description.starts_with("relay contract not available"));

        let st = status(&api);
        let rs = &st["relay_status"][0];
        assert_eq!(rs["id"], contract_id.as_str());
        assert_eq!(rs["status"]["network_cap_reached"], true, "{st}");
        assert_eq!(rs["network_cap"], CAP);
        let used = rs["network_usage"].as_u64().unwrap();
        assert!(used > hard, "{st}");
        let total = &st["network_usage"];
        assert!(total["usage"].as_u64().unwrap() >= used, "{st}");
        assert!(total["cap"].is_null());
        assert_eq!(
            total["timeframe_until"].as_i64().unwrap() - total["timeframe_since"].as_i64().unwrap(),
            3_600_000
        );
        assert_eq!(
            s.relays_requests("DELETE").len(),
            1,
            "disenrolled once, not again at the hard cap"
        );
        used
    });

    // A graceful stop writes the counters (spec §2.5); the format is the reference's.
    home.ok(&["stop"]);
    let saved = stats(&home);
    assert_eq!(
        saved["contract_stats"][&contract_id]["network_bytes"], final_usage,
        "{saved}"
    );
    let created = saved["created_at"].as_i64().unwrap();
    assert!(saved["updated_at"].as_i64().unwrap() >= created);
    assert!(!home.file("stats.json.tmp").exists());

    // After a restart the counters are back and the contract, still over its cap, is not
    // enrolled (spec §2.5 "at startup").
    let posts = s.relays_requests("POST").len();
    let (_, api) = start(&home);
    eventually(WAIT, "the relay to see the cap at start", || {
        home.read("wireleap-relay.log")
            .contains("network usage over the cap: not enrolling")
    });
    let st = status(&api);
    assert_eq!(st["relay_status"][0]["network_usage"], final_usage, "{st}");
    assert_eq!(st["relay_status"][0]["status"]["enrolled"], false);
    assert_eq!(st["network_usage"]["timeframe_since"], created);
    assert_eq!(
        s.relays_requests("POST").len(),
        posts,
        "enrolled over the cap"
    );
    home.ok(&["stop"]);
}

#[test]
fn a_period_that_ended_while_the_relay_was_down_is_archived_at_start() {
    let (s, home, key, contract_id) = setup(
        "4MB",
        r#"{"timeframe": "1h", "archive_dir": "/archive/netstats"}"#,
    );
    // The operator's file: a period that started 1.5 periods ago, the contract over its hard
    // cap, and a contract no longer configured.
    let hour = 3_600_000i64;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let created = now - hour * 3 / 2;
    home.write(
        "stats.json",
        &format!(
            r#"{{"contract_stats": {{"{contract_id}": {{"network_bytes": 4000000}},
                 "old-contract": {{"network_bytes": 1234}}}},
                "created_at": {created}, "updated_at": {created}}}"#
        ),
    );
    let (_, api) = start(&home);

    // The new period starts where the old one ended (spec §2.5), so the contract is under its
    // cap again and enrolls.
    s.wait_enrolled(&key, WAIT);
    let archive = home.file(&format!("archive/netstats/{key}-{}.json", created + hour));
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&archive).unwrap()).unwrap();
    assert_eq!(record["relay_id"], key.as_str());
    assert_eq!(
        (record["start_at"].as_i64(), record["end_at"].as_i64()),
        (Some(created), Some(created + hour))
    );
    let mut metrics: Vec<(String, bool, u64)> = record["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["contract"].as_str().unwrap().to_owned(),
                m["active"].as_bool().unwrap(),
                m["network_usage_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    metrics.sort();
    let mut want = vec![
        (contract_id.clone(), false, 4_000_000),
        ("old-contract".to_owned(), false, 1234),
    ];
    want.sort();
    assert_eq!(metrics, want);

    let saved = stats(&home);
    assert_eq!(saved["created_at"], created + hour, "{saved}");
    assert!(
        saved["contract_stats"].get("old-contract").is_none(),
        "{saved}"
    );
    let st = status(&api);
    assert_eq!(st["network_usage"]["timeframe_since"], created + hour);
    assert_eq!(st["network_usage"]["timeframe_until"], created + 2 * hour);
    home.ok(&["stop"]);
}

#[test]
fn a_period_end_archives_the_usage_resets_the_counters_and_enrolls_again() {
    let (s, home, key, contract_id) = setup(
        "1MB",
        r#"{"timeframe": "4s", "write_interval": "1s", "archive_dir": "netstats"}"#,
    );
    let (addr, api) = start(&home);
    s.wait_enrolled(&key, WAIT);
    let hop = hop(addr, &key);
    let hard = (1u64 << 20) * 93 / 100;

    let rt = runtime();
    rt.block_on(async {
        let target = tcp_echo().await;
        let sk = client::activate_servicekey(s.net.contract_url())
            .await
            .unwrap();
        let c = admitted_client(&sk, &hop, target).await;
        let s2 = c.open(&target.to_string(), Network::Tcp).await.unwrap();
        let (end, _) = send_until_cut(s2, 16 << 20).await;
        assert_eq!(end, StreamEnd::Clean);
    });
    eventually(WAIT, "the DELETE at the directory", || {
        !s.relays_requests("DELETE").is_empty()
    });
    let deleted_at = s.relays_requests("DELETE")[0].time_ms;

    // At the period end the usage is archived, the counters restart and the relay enrolls again.
    eventually(WAIT, "the re-enrollment after the period end", || {
        s.relays_requests("POST")
            .iter()
            .any(|r| r.time_ms > deleted_at)
            && s.is_enrolled(&key)
    });
    let mut archived = Vec::new();
    eventually(WAIT, "the archived period with the capped usage", || {
        archived = std::fs::read_dir(home.file("netstats"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        archived.iter().any(|p| {
            let r: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            r["metrics"].as_array().unwrap().iter().any(|m| {
                m["contract"] == contract_id.as_str()
                    && m["network_usage_bytes"].as_u64().unwrap() > hard
            })
        })
    });
    for p in &archived {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{key}-")) && name.ends_with(".json"),
            "{name}"
        );
    }
    let st = status(&api);
    let rs = &st["relay_status"][0];
    assert!(rs["network_usage"].as_u64().unwrap() < hard, "{st}");
    assert_eq!(rs["status"]["network_cap_reached"], false, "{st}");
    home.ok(&["stop"]);
}

#[test]
fn at_93_percent_of_the_global_cap_every_contract_is_disenrolled_and_cut() {
    let (a, b) = (Standin::start(), Standin::start());
    let home = Home::new();
    home.ok(&["init"]);
    home.write(
        "config.json",
        &format!(
            r#"{{"address": "127.0.0.1:0", "danger_zone": {{"allow_loopback": true}},
                "rest_api": {{"address": "http://127.0.0.1:0"}},
                "network_usage": {{"timeframe": "1h", "global_limit": "1MB"}},
                "contracts": {{
                    "{}": {{"address": "wireleap://127.0.0.1:13499", "role": "backing",
                            "upgrade_channel": "default"}},
                    "{}": {{"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}}}}"#,
            a.net.contract_url(),
            b.net.contract_url()
        ),
    );
    let key = pubkey(&home);
    let (addr, api) = start(&home);
    a.wait_enrolled(&key, WAIT);
    b.wait_enrolled(&key, WAIT);
    let hop = hop(addr, &key);
    let rt = runtime();
    rt.block_on(async {
        let target = tcp_echo().await;
        let sk_a = client::activate_servicekey(a.net.contract_url())
            .await
            .unwrap();
        let sk_b = client::activate_servicekey(b.net.contract_url())
            .await
            .unwrap();
        let ca = admitted_client(&sk_a, &hop, target).await;
        let cb = admitted_client(&sk_b, &hop, target).await;
        // A stream of contract B is open while contract A's traffic reaches the global cap.
        let mut open_b = cb.open(&target.to_string(), Network::Tcp).await.unwrap();
        echo(&mut open_b, b"b is open").await;
        let sa = ca.open(&target.to_string(), Network::Tcp).await.unwrap();
        let (end, _) = send_until_cut(sa, 16 << 20).await;
        assert_eq!(end, StreamEnd::Clean);
        let end_b = tokio::time::timeout(WAIT, open_b.wait_end()).await.unwrap();
        assert_eq!(end_b, StreamEnd::Clean, "contract B's stream was not cut");
        for c in [&ca, &cb] {
            let st = refused(c, target).await;
            assert_eq!(st.code, 400);
            assert!(
                st.description.starts_with("relay contract not available"),
                "{st:?}"
            );
        }
    });
    eventually(WAIT, "a DELETE at both directories", || {
        !a.relays_requests("DELETE").is_empty() && !b.relays_requests("DELETE").is_empty()
    });
    let st = status(&api);
    assert_eq!(st["network_usage"]["cap"], 1u64 << 20, "{st}");
    assert!(st["network_usage"]["usage"].as_u64().unwrap() >= (1u64 << 20) * 93 / 100);
    for rs in st["relay_status"].as_array().unwrap() {
        assert_eq!(rs["status"]["network_cap_reached"], true, "{st}");
        assert_eq!(rs["status"]["enrolled"], false, "{st}");
    }
    home.ok(&["stop"]);
}

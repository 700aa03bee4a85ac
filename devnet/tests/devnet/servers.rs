//! Contract, directory and release server through real HTTP on 127.0.0.1.

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wireleap_devnet::{Config, Devnet, Down, RecordedRequest, Server};
use wireleap_protocol::signed::{
    self, HEADER_DIRECTORY_CHALLENGE, HEADER_DIRECTORY_RESPONSE, Interface,
};
use wireleap_protocol::status;
use wireleap_protocol::{
    ContractInfo, DirectoryInfo, PublicKey, RelayEntry, RelayList, Role, Sharetoken, SigningKey,
    Versions, unix_now,
};

use crate::support::{TEST_TIMEOUT, signed_call};

fn entry(key: &SigningKey, software: &str, channel: &str) -> RelayEntry {
    RelayEntry {
        role: Role::Fronting,
        address: "wireleap://127.0.0.1:13499".into(),
        pubkey: PublicKey::from(key),
        versions: Versions::relay(software),
        key: String::new(),
        update_channel: String::new(),
        upgrade_channel: channel.into(),
        network_usage_limit: String::new(),
    }
}

async fn start() -> Devnet {
    Devnet::start(Config::default()).await.unwrap()
}

fn relays_url(net: &Devnet) -> String {
    format!("{}/relays", net.directory_url())
}

#[tokio::test]
async fn enrollment_with_challenge_answered_by_pow_helper() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = start().await;
        net.set_challenge(true, 4);
        let key = SigningKey::from_bytes(&[11; 32]);
        let body = entry(&key, "0.7.0", "default").to_json();
        let ifs = [Interface::RelayDir, Interface::RelayContract];
        let r = signed_call(
            &key,
            Method::POST,
            &relays_url(&net),
            body.as_bytes(),
            &ifs,
            &[],
        )
        .await;
        assert_eq!(r.code, 202);
        assert!(r.status().is(status::CHALLENGE));
        assert_eq!(r.header("Wireleap-Relay-Dir-Version"), Some("0.2.0"));
        let challenge = r.header(HEADER_DIRECTORY_CHALLENGE).unwrap().to_owned();
        assert!(challenge.starts_with("4~"));
        assert!(net.enrolled().is_empty());

        // A wrong answer is refused.
        let r = signed_call(
            &key,
            Method::POST,
            &relays_url(&net),
            body.as_bytes(),
            &ifs,
            &[
                (HEADER_DIRECTORY_CHALLENGE, &challenge),
                (HEADER_DIRECTORY_RESPONSE, "$2a$04$nope"),
            ],
        )
        .await;
        assert_eq!(r.code, 400);

        let answer = signed::answer_challenge(&challenge).unwrap();
        let r = signed_call(
            &key,
            Method::POST,
            &relays_url(&net),
            body.as_bytes(),
            &ifs,
            &[
                (HEADER_DIRECTORY_CHALLENGE, &challenge),
                (HEADER_DIRECTORY_RESPONSE, &answer),
            ],
        )
        .await;
        assert_eq!(r.code, 200, "{}", r.body);
        assert!(r.status().is_ok());
        assert_eq!(net.enrolled().len(), 1);

        // Heartbeat (no dir version header): no new challenge for an enrolled relay.
        let r = signed_call(
            &key,
            Method::POST,
            &relays_url(&net),
            body.as_bytes(),
            &[],
            &[],
        )
        .await;
        assert_eq!(r.code, 200);

        // The record has the three POSTs with the spec's headers.
        let posts: Vec<RecordedRequest> = net
            .requests_to(Server::Directory)
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        assert_eq!(posts.len(), 4);
        assert_eq!(posts[0].body, body);
        assert_eq!(posts[0].header("wireleap-relay-version"), Some("0.7.0"));
        assert_eq!(posts[0].header("idempotency-key").map(str::len), Some(32));
        assert_eq!(posts[3].header("wireleap-relay-dir-version"), None);

        // Disenroll.
        let r = signed_call(
            &key,
            Method::DELETE,
            &relays_url(&net),
            body.as_bytes(),
            &[],
            &[],
        )
        .await;
        assert_eq!(r.code, 200);
        assert!(net.enrolled().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn enrollment_refusals() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = start().await;
        let key = SigningKey::from_bytes(&[12; 32]);
        let other = SigningKey::from_bytes(&[13; 32]);
        let body = entry(&key, "0.7.0", "").to_json();
        // Signed by another key than the entry's pubkey.
        let r = signed_call(
            &other,
            Method::POST,
            &relays_url(&net),
            body.as_bytes(),
            &[],
            &[],
        )
        .await;
        assert_eq!(r.code, 400);
        assert!(
            r.status().cause.contains("does not match signing key"),
            "{}",
            r.body
        );
        // Unsigned.
        let r = reqwest::Client::new()
            .post(relays_url(&net))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        // Restricted role with a wrong key.
        net.with_switches(|s| {
            s.enrollment_keys
                .insert(Role::Fronting, vec!["f:ok".into()]);
        });
        let r = signed_call(
            &key,
            Method::POST,
            &relays_url(&net),
            body.as_bytes(),
            &[],
            &[],
        )
        .await;
        assert_eq!(r.status().cause, status::cause::BAD_ENROLLMENT_KEY);
        assert!(net.enrolled().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn heartbeat_upgrade_notice_per_channel() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join(wireleap_devnet::CHANNELS_FILE),
            r#"{"relay":{"stable":"0.9.0","old":"0.6.1"}}"#,
        )
        .unwrap();
        let net = Devnet::start(Config {
            releases_root: Some(root.path().to_path_buf()),
            ..Config::default()
        })
        .await
        .unwrap();
        let key = SigningKey::from_bytes(&[14; 32]);
        let beat = |channel: &'static str| {
            let body = entry(&key, "0.7.0", channel).to_json();
            let url = relays_url(&net);
            let key = key.clone();
            async move { signed_call(&key, Method::POST, &url, body.as_bytes(), &[], &[]).await }
        };
        // From channels.json: newer → notice; older → OK; unknown channel → OK.
        let r = beat("stable").await;
        assert_eq!(r.code, 202);
        assert_eq!(
            r.body.trim(),
            r#"{"code":202,"description":"please upgrade your relay to the given version as soon as possible","cause":"0.9.0"}"#
        );
        assert!(beat("old").await.status().is_ok());
        assert!(beat("beta").await.status().is_ok());
        // The default channel (empty upgrade_channel) set at run time.
        net.set_channel("default", Some("0.7.1"));
        assert_eq!(beat("").await.status().cause, "0.7.1");
        // Forced notice for a channel, whatever the version.
        net.force_upgrade("beta", Some("0.6.0"));
        let r = beat("beta").await;
        assert!(r.status().is(status::UPGRADE));
        assert_eq!(r.status().cause, "0.6.0");
        net.force_upgrade("beta", None);
        assert!(beat("beta").await.status().is_ok());
        // /info shows file + run-time channels.
        let info: DirectoryInfo = reqwest::get(format!("{}/info", net.directory_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info.relay_channel_version("stable"), Some("0.9.0"));
        assert_eq!(info.relay_channel_version("default"), Some("0.7.1"));
        assert_eq!(info.public_key, net.ready().directory_pubkey);
        assert_eq!(info.enrollment.fronting.count, 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn version_mismatch_errors() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = start().await;
        net.set_version(Server::Directory, Some("0.3.0"));
        let key = SigningKey::from_bytes(&[15; 32]);
        let body = entry(&key, "0.7.0", "").to_json();
        let r = signed_call(
            &key,
            Method::POST,
            &relays_url(&net),
            body.as_bytes(),
            &[Interface::RelayDir],
            &[],
        )
        .await;
        assert_eq!(r.code, 400);
        assert_eq!(
            r.status().cause,
            "invalid client API version: expecting version 0.3.x, got 0.2.0"
        );
        let hv = r.header("Wireleap-Relay-Dir-Version");
        assert_eq!(
            signed::check_reply_version(Interface::RelayDir, hv)
                .unwrap_err()
                .to_string(),
            "invalid server API version: expecting version 0.2.x, got 0.3.0"
        );
        // Heartbeat without the header passes the gate (and gets the reply header).
        let r = signed_call(
            &key,
            Method::POST,
            &relays_url(&net),
            body.as_bytes(),
            &[],
            &[],
        )
        .await;
        assert_eq!(r.code, 200);
        assert_eq!(r.header("Wireleap-Relay-Dir-Version"), Some("0.3.0"));
        // The contract gates its own interface.
        net.set_version(Server::Contract, Some("0.2.0"));
        let r = signed_call(
            &key,
            Method::GET,
            &format!("{}/info", net.contract_url()),
            b"null",
            &[Interface::RelayContract],
            &[],
        )
        .await;
        assert_eq!(r.code, 400);
        assert_eq!(r.header("Wireleap-Relay-Contract-Version"), Some("0.2.0"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn signed_relay_list_and_contract_info() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = start().await;
        let key = SigningKey::from_bytes(&[16; 32]);
        let e = entry(&key, "0.7.0", "");
        let r = signed_call(
            &key,
            Method::POST,
            &relays_url(&net),
            e.to_json().as_bytes(),
            &[],
            &[],
        )
        .await;
        assert_eq!(r.code, 200);
        // Contract info names the directory and its key.
        let r = signed_call(
            &key,
            Method::GET,
            &format!("{}/info", net.contract_url()),
            b"null",
            &[Interface::RelayContract],
            &[],
        )
        .await;
        assert_eq!(r.header("Wireleap-Relay-Contract-Version"), Some("0.1.0"));
        let ci: ContractInfo = serde_json::from_str(&r.body).unwrap();
        assert_eq!(ci.pubkey, net.ready().contract_pubkey);
        assert_eq!(ci.relays_url(), relays_url(&net));
        // The list is signed by that key.
        let resp = reqwest::get(ci.relays_url()).await.unwrap();
        let h = resp.headers().clone();
        let body = resp.bytes().await.unwrap();
        let signer = signed::verify_directory_reply(
            h.get(signed::HEADER_DIRECTORY_PUBKEY)
                .and_then(|v| v.to_str().ok()),
            h.get(signed::HEADER_DIRECTORY_SIGNATURE)
                .and_then(|v| v.to_str().ok()),
            &body,
            ci.directory.public_key.as_ref(),
        )
        .unwrap();
        assert_eq!(signer, net.ready().directory_pubkey);
        let list: RelayList = serde_json::from_slice(&body).unwrap();
        assert_eq!(list.get(&e.address), Some(&e));
    })
    .await
    .unwrap();
}

fn token_for(net: &Devnet, relay: &SigningKey, open: i64, close: i64) -> Sharetoken {
    let sk = wireleap_devnet::client::servicekey_signed_by(net.contract_key(), open, close);
    Sharetoken::new(&sk, PublicKey::from(relay), open - 100).unwrap()
}

#[tokio::test]
async fn submit_window_rules_and_500_mode() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = start().await;
        let relay = SigningKey::from_bytes(&[17; 32]);
        let url = format!("{}/submit", net.contract_url());
        let ifs = [Interface::RelayDir, Interface::RelayContract];
        let now = unix_now();
        let submit = |t: Sharetoken| {
            let body = serde_json::to_vec(&t).unwrap();
            let (relay, url) = (relay.clone(), url.clone());
            async move { signed_call(&relay, Method::POST, &url, &body, &ifs, &[]).await }
        };
        let r = submit(token_for(&net, &relay, now + 100, now + 1000)).await;
        assert_eq!(r.code, 400);
        assert_eq!(r.status().cause, "settlement window not yet open");
        let r = submit(token_for(&net, &relay, now - 1000, now - 10)).await;
        assert_eq!(r.code, 400);
        assert_eq!(r.status().cause, "settlement window already closed");
        let good = token_for(&net, &relay, now - 10, now + 1000);
        let r = submit(good.clone()).await;
        assert_eq!(r.code, 200, "{}", r.body);
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap();
        assert_eq!(net.balance(&PublicKey::from(&relay)), 1);
        // Replay → 409; a token of another contract → 400.
        assert_eq!(submit(good).await.code, 409);
        let foreign = wireleap_devnet::client::servicekey_signed_by(
            &SigningKey::from_bytes(&[99; 32]),
            now - 10,
            now + 1000,
        );
        let t = Sharetoken::new(&foreign, PublicKey::from(&relay), now - 100).unwrap();
        assert_eq!(
            submit(t).await.status().cause,
            status::cause::CONTRACT_PUBKEY_MISMATCH
        );
        // 500 for the next two requests, then normal again.
        net.set_contract_500(2);
        let t = token_for(&net, &relay, now - 10, now + 1000);
        let r = submit(t.clone()).await;
        assert_eq!(r.code, 500);
        assert!(r.status().is_retryable());
        assert_eq!(submit(t.clone()).await.code, 500);
        assert_eq!(submit(t).await.code, 200);
        assert_eq!(net.balance(&PublicKey::from(&relay)), 2);
        // The admin switch: every submission answers as the reference does once a window has
        // closed, however open the token's window is; switched off, the same token is paid.
        let admin = |enabled: bool| {
            let url = format!("{}/_devnet/settlement-closed", net.contract_url());
            async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .json(&serde_json::json!({ "enabled": enabled }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                r.json::<wireleap_devnet::Snapshot>().await.unwrap()
            }
        };
        assert!(admin(true).await.switches.settlement_closed);
        let t = token_for(&net, &relay, now - 10, now + 1000);
        let r = submit(t.clone()).await;
        assert_eq!(r.code, 400);
        assert_eq!(r.status().description, "bad request");
        assert_eq!(r.status().cause, status::cause::SETTLEMENT_CLOSED);
        assert_eq!(net.balance(&PublicKey::from(&relay)), 2);
        assert!(!admin(false).await.switches.settlement_closed);
        assert_eq!(submit(t).await.code, 200);
        assert_eq!(net.balance(&PublicKey::from(&relay)), 3);

        // Payout endpoints (signed GETs with body `null`).
        let get = |path: &str| {
            let (relay, url) = (relay.clone(), format!("{}{path}", net.contract_url()));
            async move {
                signed_call(
                    &relay,
                    Method::GET,
                    &url,
                    b"null",
                    &[Interface::RelayContract],
                    &[],
                )
                .await
            }
        };
        let b: serde_json::Value =
            serde_json::from_str(&get("/payout/balance").await.body).unwrap();
        assert_eq!(b, serde_json::json!({"currency": "usd", "available": 3}));
        let t: Vec<Sharetoken> = serde_json::from_str(&get("/payout/tokens").await.body).unwrap();
        assert_eq!(t.len(), 3);
        let w =
            serde_json::json!({"amount": 2, "type": wireleap_protocol::signed::WITHDRAWAL_TYPE, "destination": "acct_x"}).to_string();
        let r = signed_call(
            &relay,
            Method::POST,
            &format!("{}/payout/withdrawals", net.contract_url()),
            w.as_bytes(),
            &[Interface::RelayContract],
            &[],
        )
        .await;
        assert_eq!(r.code, 200, "{}", r.body);
        let list: serde_json::Value =
            serde_json::from_str(&get("/payout/withdrawals").await.body).unwrap();
        assert_eq!(list[0]["amount"], 2);
        assert_eq!(net.balance(&PublicKey::from(&relay)), 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn down_modes_and_admin_api() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = start().await;
        let client = reqwest::Client::new();
        let info = format!("{}/info", net.directory_url());
        net.set_down(Server::Directory, Down::Unavailable);
        assert_eq!(
            client.get(&info).send().await.unwrap().status().as_u16(),
            503
        );
        net.set_down(Server::Directory, Down::Close);
        let r = client.get(&info).send().await;
        let failed = match r {
            Err(_) => true,
            Ok(resp) => resp.bytes().await.is_err(),
        };
        assert!(failed, "close mode must break the reply");
        // Switch back up through the admin API (any server's).
        let r = client
            .post(format!("{}/_devnet/down", net.contract_url()))
            .json(&serde_json::json!({"server": "directory", "mode": "up"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            client.get(&info).send().await.unwrap().status().as_u16(),
            200
        );
        let r = client
            .post(format!("{}/_devnet/challenge", net.directory_url()))
            .json(&serde_json::json!({"enabled": true, "cost": 5}))
            .send()
            .await
            .unwrap();
        let snap: wireleap_devnet::Snapshot = r.json().await.unwrap();
        assert!(snap.switches.require_challenge);
        assert_eq!(snap.switches.challenge_cost, 5);
        // Refuse: the listener closes (connection refused), then comes back on the same port.
        net.set_down(Server::Directory, Down::Refuse);
        let addr = net.directory_url().trim_start_matches("http://").to_owned();
        let mut refused = false;
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(&addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(refused, "listener still accepting");
        net.set_down(Server::Directory, Down::Up);
        let mut back = false;
        for _ in 0..500 {
            if let Ok(r) = reqwest::Client::new().get(&info).send().await {
                back = r.status().as_u16() == 200;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(back, "listener did not come back");
        // Recorded requests over HTTP, filtered per server; admin calls are not recorded.
        let log: Vec<RecordedRequest> = client
            .get(format!(
                "{}/_devnet/requests?server=directory",
                net.releases_url()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(log.len(), 4);
        assert!(
            log.iter()
                .all(|r| r.path == "/info" && r.server == Server::Directory)
        );
    })
    .await
    .unwrap();
}

async fn raw_get(base: &str, path: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn release_server_static_and_switches() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("v1")).unwrap();
        std::fs::write(root.path().join("v1/asset.bin"), vec![b'a'; 1000]).unwrap();
        let net = Devnet::start(Config {
            releases_root: Some(root.path().to_path_buf()),
            ..Config::default()
        })
        .await
        .unwrap();
        let base = net.releases_url().to_owned();
        let client = reqwest::Client::new();
        let r = client
            .get(format!("{base}/v1/asset.bin"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 1000);
        // No listing, no other methods, no traversal.
        assert_eq!(
            client
                .get(format!("{base}/v1/"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            404
        );
        assert_eq!(
            client
                .post(format!("{base}/v1/asset.bin"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            405
        );
        for p in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/v1/..%2f..%2fetc%2fpasswd",
        ] {
            let out = raw_get(&base, p).await;
            assert!(out.starts_with("HTTP/1.1 400"), "{p}: {out}");
        }
        // Stall after 10 bytes: 10 arrive, then silence.
        client
            .post(format!("{base}/_devnet/releases"))
            .json(&serde_json::json!({"stall_after_bytes": 10}))
            .send()
            .await
            .unwrap();
        let mut r = client
            .get(format!("{base}/v1/asset.bin"))
            .send()
            .await
            .unwrap();
        let mut got = 0;
        // The first 10 bytes arrive (bounded wait)…
        while got < 10 {
            match tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk()).await {
                Ok(Ok(Some(c))) => got += c.len(),
                other => panic!("stalled download ended early: {other:?}"),
            }
        }
        assert_eq!(got, 10);
        // …then nothing more.
        let more = tokio::time::timeout(std::time::Duration::from_millis(500), r.chunk()).await;
        assert!(more.is_err(), "data after the stall point: {more:?}");
        // Endless: more than the file's size arrives.
        client
            .post(format!("{base}/_devnet/releases"))
            .json(&serde_json::json!({"endless": true}))
            .send()
            .await
            .unwrap();
        let mut r = client
            .get(format!("{base}/v1/asset.bin"))
            .send()
            .await
            .unwrap();
        let mut got = 0usize;
        for _ in 0..1000 {
            match r.chunk().await.unwrap() {
                Some(c) => got += c.len(),
                None => break,
            }
            if got > 1_000_000 {
                break;
            }
        }
        assert!(got > 1_000_000);
    })
    .await
    .unwrap();
}

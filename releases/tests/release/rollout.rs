//! The rollout service end to end: `release-tool rollout serve` as a process on loopback,
//! driven by `release-tool rollout start|halt|resume|recall|status`, read by the relays'
//! downloader ([`Fetcher::fetch_rollout`]) and fed signed outcome reports
//! ([`Fetcher::post_report`]).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use relay_release::fetch::{Fetcher, Limits};
use relay_release::outcome::{Outcome, Report};
use relay_release::rollout::{Gate, position};
use relay_release::{Error, Layout, Role, TrustedKeys};
use wireleap_protocol::{PublicKey, SigningKey};

use crate::support::key_path;
use crate::support::tools::{run, text};

const VERSION: &str = "1.0.0";

struct Service {
    child: Child,
    url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_release-tool"))
}

fn serve(tree: &Path, state: &Path) -> Service {
    let out = tempfile::NamedTempFile::new().unwrap();
    let child = tool()
        .args(["rollout", "serve", "--listen", "127.0.0.1:0"])
        .arg("--tree")
        .arg(tree)
        .arg("--state")
        .arg(state)
        .arg("--key")
        .arg(key_path("root-e", "key"))
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed on drop, also when the wait below fails.
    let mut service = Service {
        child,
        url: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(out.path()).unwrap();
        if let Some(url) = text.split_whitespace().find(|w| w.starts_with("http://")) {
            service.url = url.to_owned();
            return service;
        }
        assert!(Instant::now() < deadline, "the service did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn admin(state: &Path, args: &[&str]) -> serde_json::Value {
    let out = run(tool()
        .arg("rollout")
        .args(args)
        .arg("--state")
        .arg(state)
        .arg("--json"));
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn admin_text(state: &Path, args: &[&str]) -> std::process::Output {
    run(tool().arg("rollout").args(args).arg("--state").arg(state))
}

fn rollout_keys() -> TrustedKeys {
    TrustedKeys::empty()
        .with_file(&key_path("root-e", "pub"))
        .unwrap()
        .with_role(Role::Rollout)
}

/// Relay keys whose position in [`VERSION`] is below `percent`, or not.
fn relay_key(below: Option<f64>) -> SigningKey {
    let v = semver::Version::parse(VERSION).unwrap();
    loop {
        let key = wireleap_protocol::keys::generate_signing_key();
        let at = position(PublicKey::from(&key).as_bytes(), &v);
        match below {
            Some(p) if at < p => return key,
            None if at >= 50.0 => return key,
            _ => {}
        }
    }
}

fn report(key: &SigningKey, outcome: Outcome) -> Vec<u8> {
    Report::new(
        PublicKey::from(key),
        &semver::Version::parse(VERSION).unwrap(),
        &semver::Version::parse("0.9.0").unwrap(),
        outcome,
        Some("probe"),
        SystemTime::now(),
    )
    .sign(key)
    .unwrap()
}

#[test]
fn the_service_schedules_counts_reports_halts_and_recalls_and_old_documents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, state) = (dir.path().join("tree"), dir.path().join("state"));
    let vdir = tree.join(format!("v{VERSION}"));
    std::fs::create_dir_all(&vdir).unwrap();
    std::fs::write(vdir.join("wireleap-relay_linux-x86_64"), b"binary").unwrap();
    let service = serve(&tree, &state);

    // Only a published version may be phased.
    let out = admin_text(&state, &["start", "9.9.9", "--steps", "0:10,60:100"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("publish the release first"),
        "{}",
        text(&out)
    );
    std::fs::write(vdir.join("wireleap-relay_linux-x86_64.hash"), b"statement").unwrap();
    let out = admin_text(&state, &["start", VERSION, "--steps", "0:50,20:10"]);
    assert!(
        text(&out).contains("percents are cumulative"),
        "{}",
        text(&out)
    );
    let started = admin(&state, &["start", VERSION, "--steps", "0:10,1h:100"]);
    assert!(
        started["rollouts"][0]["serial"].as_u64().unwrap() > 0,
        "{started}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let early = relay_key(Some(10.0));
    let late = relay_key(None);
    let fetcher = |key: &SigningKey| {
        Fetcher::try_new(Layout::try_new(&service.url).unwrap(), Limits::default())
            .unwrap()
            .with_relay(PublicKey::from(key).to_b64())
    };
    let v = semver::Version::parse(VERSION).unwrap();
    let fetch = |key: &SigningKey, seen: Option<u64>| {
        rt.block_on(fetcher(key).fetch_rollout(&v, &rollout_keys(), SystemTime::now(), seen))
    };
    let doc = fetch(&early, None).unwrap().unwrap();
    let at = |key: &SigningKey| position(PublicKey::from(key).as_bytes(), &v);
    assert!(matches!(
        doc.gate(at(&early), SystemTime::now()),
        Gate::Open { step: 0 }
    ));
    assert!(matches!(
        doc.gate(at(&late), SystemTime::now()),
        Gate::Wait { step: Some(1), .. }
    ));
    let first_doc = reqwest_get(&rt, &format!("{}v{VERSION}/rollout", service.url));

    // A download is counted with the relay that named itself.
    let download = |key: &SigningKey| {
        rt.block_on(async {
            let r = reqwest::Client::new()
                .get(format!(
                    "{}v{VERSION}/wireleap-relay_linux-x86_64",
                    service.url
                ))
                .header(
                    relay_release::fetch::RELAY_HEADER,
                    PublicKey::from(key).to_b64(),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.bytes().await.unwrap().as_ref(), b"binary");
        });
    };

    // Reports: a forged one is refused; one from a relay that did not download the version
    // here is not counted (made-up keys cannot halt a rollout for free); one from a step not
    // open is not counted; two rollbacks in step 1 halt it.
    let post = |bytes: Vec<u8>| rt.block_on(fetcher(&early).post_report(bytes));
    let mut forged = String::from_utf8(report(&early, Outcome::Committed)).unwrap();
    forged = forged.replace("committed", "rolled-back");
    assert!(matches!(
        post(forged.into_bytes()),
        Err(Error::HttpStatus { status: 400, .. })
    ));
    assert!(matches!(
        post(report(&early, Outcome::RolledBack)),
        Err(Error::HttpStatus { status: 403, .. })
    ));
    download(&early);
    download(&late);
    post(report(&late, Outcome::RolledBack)).unwrap();
    post(report(&early, Outcome::RolledBack)).unwrap();
    post(report(&early, Outcome::RolledBack)).unwrap();
    let st = admin(&state, &["status", VERSION]);
    assert_eq!(
        st["rollouts"][0]["halted"], false,
        "one relay counts once: {st}"
    );
    let second = relay_key(Some(10.0));
    download(&second);
    post(report(&second, Outcome::RolledBack)).unwrap();
    let st = admin(&state, &["status", VERSION]);
    let r = &st["rollouts"][0];
    assert_eq!(r["halted"], true, "{st}");
    assert_eq!(r["per_step"][0]["rolled_back"], 2, "{st}");
    assert_eq!(r["per_step"][1]["rolled_back"], 0, "{st}");
    assert_eq!(r["downloads"], 3, "{st}");
    assert_eq!(r["downloaders"], 3, "{st}");
    assert_eq!(r["criteria"]["probe"], 2, "{st}");
    assert!(r["first_rollback_to_halt_ms"].is_u64(), "{st}");

    // The halted document has a higher serial; the one before it is a replay from now on.
    let first_serial = doc.document.serial;
    let halted = fetch(&late, Some(first_serial)).unwrap().unwrap();
    assert!(halted.document.serial > first_serial);
    assert_eq!(halted.gate(at(&late), SystemTime::now()), Gate::Halted);
    let replay = relay_release::rollout::verify(
        &first_doc,
        &rollout_keys(),
        &v,
        SystemTime::now(),
        Some(halted.document.serial),
    )
    .unwrap_err();
    assert!(matches!(replay, Error::RolloutReplayed { .. }), "{replay}");
    assert_eq!(
        admin(&state, &["status", VERSION])["rollouts"][0]["saw_halt"],
        1
    );

    // The state survives a restart; resume and recall each issue a new serial.
    drop(service);
    let service = serve(&tree, &state);
    let st = admin(&state, &["status"]);
    assert_eq!(st["rollouts"][0]["halted"], true, "{st}");
    admin(&state, &["resume", VERSION]);
    // A report of an upgrade that ended before the resume belongs to the halted attempt.
    let old = Report::new(
        PublicKey::from(&second),
        &v,
        &semver::Version::parse("0.9.0").unwrap(),
        Outcome::RolledBack,
        Some("probe"),
        SystemTime::now() - Duration::from_secs(600),
    )
    .sign(&second)
    .unwrap();
    let f = Fetcher::try_new(Layout::try_new(&service.url).unwrap(), Limits::default()).unwrap();
    assert!(matches!(
        rt.block_on(f.post_report(old)),
        Err(Error::HttpStatus { status: 409, .. })
    ));
    let recalled = admin(&state, &["recall", VERSION]);
    assert_eq!(recalled["rollouts"][0]["recall"], true, "{recalled}");
    let text = String::from_utf8(admin_text(&state, &["status"]).stdout).unwrap();
    assert!(text.contains("RECALLED"), "{text}");
    let fetcher =
        Fetcher::try_new(Layout::try_new(&service.url).unwrap(), Limits::default()).unwrap();
    let recalled_doc = rt
        .block_on(fetcher.fetch_rollout(
            &v,
            &rollout_keys(),
            SystemTime::now(),
            Some(halted.document.serial),
        ))
        .unwrap()
        .unwrap();
    assert!(
        recalled_doc.document.recall && recalled_doc.document.halted,
        "{:?}",
        recalled_doc.document
    );
    // Resume and recall each issued a new serial.
    assert!(recalled_doc.document.serial >= halted.document.serial + 2);
    // A version without a plan is not phased (404).
    let none = rt
        .block_on(fetcher.fetch_rollout(
            &semver::Version::parse("2.0.0").unwrap(),
            &rollout_keys(),
            SystemTime::now(),
            None,
        ))
        .unwrap();
    assert!(none.is_none());
    // Names that are not plain file names are not served.
    let r = rt
        .block_on(reqwest::get(format!(
            "{}v{VERSION}/..%2f..%2fetc",
            service.url
        )))
        .unwrap();
    assert_eq!(r.status(), 404);
}

fn reqwest_get(rt: &tokio::runtime::Runtime, url: &str) -> Vec<u8> {
    rt.block_on(async {
        reqwest::get(url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    })
}

//! Phased rollouts (issue: fleet-safe upgrades), end to end with 20 relays under their
//! supervisors: `wireleap-demo --fleet 20` publishes a good release with a schedule of
//! 10 % / 50 % / 100 %, a release that fails the probe on every relay, and recalls the good one.
//! The demo checks what it shows; this test checks again, on its own, from what the run left
//! behind: each relay's journal against its position (from its `key.pub` and the version), and
//! the rollout service's state (its downloads per relay, its halt).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use relay_release::rollout::{position, step_of};
use wireleap_home::journal::Step as Kind;

use crate::support::process::sibling_bin;

const RELAYS: usize = 20;
/// Bound on the whole demo.
const DEMO_WAIT: Duration = Duration::from_secs(900);

struct Run {
    stdout: String,
    kept: PathBuf,
}

fn fleet_demo() -> Run {
    let out_path = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(sibling_bin("wireleap-demo"))
        .args(["--fleet", &RELAYS.to_string(), "--keep"])
        .stdin(Stdio::null())
        .stdout(out_path.reopen().unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEMO_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the fleet demo did not finish within {DEMO_WAIT:?}:\n{}",
                std::fs::read_to_string(out_path.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(out_path.path()).unwrap();
    println!("{stdout}");
    assert!(status.success(), "the fleet demo failed ({status})");
    let kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kept "))
        .and_then(|l| l.split_whitespace().next())
        .map(PathBuf::from)
        .expect("the demo names the folder it kept");
    Run { stdout, kept }
}

struct Member {
    name: String,
    key: wireleap_protocol::PublicKey,
    journal: Vec<wireleap_home::journal::Entry>,
}

fn members(dir: &Path) -> Vec<Member> {
    let mut out = Vec::new();
    for i in 0..RELAYS {
        let name = format!("relay-{i:02}");
        let home = dir.join(&name);
        let key: String =
            serde_json::from_str(&std::fs::read_to_string(home.join("key.pub")).unwrap()).unwrap();
        out.push(Member {
            name,
            key: wireleap_protocol::PublicKey::try_from_b64(&key).unwrap(),
            journal: wireleap_home::journal::read(&home),
        });
    }
    out
}

fn at(m: &Member, version: &str, step: Kind) -> Option<u64> {
    m.journal
        .iter()
        .find(|e| e.version == version && e.step == step)
        .map(|e| e.time_ms)
}

#[test]
fn twenty_relays_take_a_good_release_in_step_order_a_bad_one_halts_after_its_first_step_and_a_recall_brings_them_back()
 {
    let run = fleet_demo();
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.kept.join("rollout-state/rollouts.json")).unwrap(),
    )
    .unwrap();
    let plans = state["plans"].as_object().unwrap();
    let plan = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        plans
            .iter()
            .find(|(_, p)| pred(p))
            .map(|(v, p)| (v.clone(), p.clone()))
            .unwrap()
    };
    let (good, good_plan) = plan(&|p| p["recall"].as_bool() == Some(true));
    let (bad, bad_plan) = plan(&|p| p["recall"].as_bool() == Some(false));
    let steps = |p: &serde_json::Value| -> Vec<relay_release::rollout::Step> {
        serde_json::from_value(p["steps"].clone()).unwrap()
    };
    let members = members(&run.kept);
    let v = |s: &str| semver::Version::parse(s).unwrap();

    // The good release: every relay committed it, none before its step opened.
    let good_steps = steps(&good_plan);
    let start = good_plan["start_ms"].as_u64().unwrap();
    let mut per_step: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for m in &members {
        let pos = position(m.key.as_bytes(), &v(&good));
        let step = step_of(&good_steps, pos).unwrap();
        let opens = start + good_steps[step].after_secs * 1000;
        let committed = at(m, &good, Kind::Committed)
            .unwrap_or_else(|| panic!("{} never committed {good}", m.name));
        // Its first step of the change (the download verified): after its step opened.
        let started = at(m, &good, Kind::Verified).unwrap();
        assert!(
            started >= opens,
            "{} (position {pos:.2}%, step {}) started {good} {} ms before its step opened",
            m.name,
            step + 1,
            opens - started
        );
        per_step.entry(step).or_default().push(committed - start);
    }
    for (step, times) in &per_step {
        println!(
            "{good} step {}: {} relays committed between +{:.1} s and +{:.1} s (opens +{} s)",
            step + 1,
            times.len(),
            *times.iter().min().unwrap() as f64 / 1000.0,
            *times.iter().max().unwrap() as f64 / 1000.0,
            good_steps[*step].after_secs
        );
    }

    // The bad release: only relays of its first step tried it, and only they downloaded it.
    let bad_steps = steps(&bad_plan);
    let first: Vec<&Member> = members
        .iter()
        .filter(|m| position(m.key.as_bytes(), &v(&bad)) < bad_steps[0].percent)
        .collect();
    let tried: Vec<&Member> = members
        .iter()
        .filter(|m| m.journal.iter().any(|e| e.version == bad))
        .collect();
    assert!(!tried.is_empty(), "no relay tried {bad}");
    for m in &tried {
        assert!(
            first.iter().any(|f| f.name == m.name),
            "{} tried {bad} outside its first step",
            m.name
        );
        assert!(
            at(m, &bad, Kind::RolledBack).is_some(),
            "{} tried {bad} and did not roll it back",
            m.name
        );
    }
    assert_eq!(bad_plan["halted"].as_bool(), Some(true), "{bad_plan}");
    let downloaders: Vec<String> =
        serde_json::from_value(state["downloads"][&bad]["relays"].clone()).unwrap();
    for relay in &downloaders {
        assert!(
            first.iter().any(|f| f.key.to_b64() == *relay),
            "{relay} downloaded {bad} and is not in its first step"
        );
    }
    let halt = bad_plan["halted_ms"].as_u64().unwrap();
    let first_rollback = bad_plan["first_rollback_ms"].as_u64().unwrap();
    let saw: Vec<u64> = bad_plan["saw_halt"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(
        saw.len(),
        RELAYS - tried.len(),
        "every relay that did not try {bad} fetched the halt"
    );
    let first_rolled_back = tried
        .iter()
        .filter_map(|m| at(m, &bad, Kind::RolledBack))
        .min()
        .unwrap();
    println!(
        "{bad}: blast radius {}/{RELAYS} (first step {}), downloaded by {} relays; first rollback (journal) to halt {} ms, of which first rollback report to halt {} ms; halt to every waiting relay having seen it {} ms",
        tried.len(),
        first.len(),
        downloaders.len(),
        halt.saturating_sub(first_rolled_back),
        halt - first_rollback,
        saw.iter().max().unwrap() - halt
    );

    // The recall: every relay went back, and no stream failed through it.
    let original = crate::support::process::Home::new()
        .ok(&["version"])
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    for m in &members {
        let home = run.kept.join(&m.name);
        let installed = Command::new(home.join("wireleap-relay"))
            .arg("version")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&installed.stdout).trim(),
            original,
            "{} is not back on {original}",
            m.name
        );
        // Its supervisor verified the recall (the journal names its serial) and skipped the
        // recalled version (under privilege separation the relay may not write the list).
        let recalled = m.journal.iter().any(|e| {
            e.version == original
                && e.step == Kind::RollbackStarted
                && e.detail
                    .contains(&format!("from {good}, recalled (rollout serial "))
        });
        assert!(recalled, "{}: {:?}", m.name, m.journal);
        let skipped = wireleap_home::skip::SkipList::load(&home).unwrap();
        assert!(
            skipped.contains(&semver::Version::parse(&good).unwrap()),
            "{}: {skipped:?}",
            m.name
        );
    }
    let recall = run
        .stdout
        .lines()
        .find(|l| l.contains("through the recall:"))
        .unwrap();
    assert!(recall.contains(", 0 failed;"), "{recall}");
    std::fs::remove_dir_all(&run.kept).unwrap();
}

/// Freeze detection: a relay whose release server cannot be reached says, after
/// `release_stale_after`, that its release information is stale (in `status` and the log), and
/// one that reaches it says when it last fetched it.
#[test]
fn a_relay_cut_off_from_its_release_server_says_its_release_information_is_stale() {
    use crate::support::standin::Standin;
    use crate::support::supervised::Supervised;
    // Nothing listens on the discard port of loopback.
    let cut = Supervised::start_with(
        Standin::start(),
        r#""release_url": "http://127.0.0.1:9/", "release_check_interval": "1s", "release_stale_after": "2s","#,
        &["--health-window", "1"],
    );
    let mut last = String::new();
    crate::support::eventually(
        Duration::from_secs(30),
        "status to say the release information is stale",
        || {
            last = cut.home.run(&["status"]).stdout;
            last.contains("release info:") && last.contains("STALE")
        },
    );
    println!("{last}");
    assert!(last.contains("never fetched"), "{last}");
    crate::support::eventually(Duration::from_secs(10), "a warning in the log", || {
        cut.log().contains("release information is stale")
    });

    // Reaching a release server with channel information: fresh.
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(
        tree.path().join("channels.json"),
        r#"{"relay": {"default": "0.1.0"}}"#,
    )
    .unwrap();
    let standin = Standin::start_with(wireleap_devnet::Config {
        releases_root: Some(tree.path().to_path_buf()),
        ..wireleap_devnet::Config::default()
    });
    let url = standin.net.releases_url().to_owned();
    let fine = Supervised::start_with(
        standin,
        &format!(
            r#""release_url": "{url}", "release_check_interval": "1s", "release_stale_after": "2s","#
        ),
        &["--health-window", "1"],
    );
    crate::support::eventually(Duration::from_secs(30), "status to show a fetch", || {
        last = fine.home.run(&["status"]).stdout;
        last.contains("release info:      fetched")
    });
    std::thread::sleep(Duration::from_secs(3));
    let status = fine.home.run(&["status"]).stdout;
    assert!(!status.contains("STALE"), "{status}");
}

/// The rollout gate on one supervised relay that trusts a root with a rollout role: an expired
/// rollout document holds the announced version back (nothing is downloaded, `status` says
/// why), so do a halt and an older document replayed over it, and a valid newer one lets it
/// through.
#[test]
fn an_expired_rollout_document_holds_the_version_back_and_a_valid_one_lets_it_through() {
    use crate::support::process::relay_bin;
    use crate::support::releases::{publish, release_tool, set_channel, stamped, test_key};
    use crate::support::standin::Standin;
    use crate::support::supervised::Supervised;
    use relay_release::rollout::{Document, steps};
    use std::time::SystemTime;

    let tree = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.display().to_string();
    // The network's root: A signs roots, the project key releases, E rollout documents.
    let root1 = work.path().join("1.root");
    release_tool(&[
        "root",
        "init",
        "--out",
        &s(&root1),
        "--key",
        &s(&test_key("root-a", "pub")),
        "--threshold",
        "1",
        "--release-key",
        &s(&test_key("project", "pub")),
        "--rollout-key",
        &s(&test_key("root-e", "pub")),
    ]);
    release_tool(&[
        "root",
        "sign",
        "--key",
        &s(&test_key("root-a", "key")),
        &s(&root1),
    ]);
    let standin = Standin::start_with(wireleap_devnet::Config {
        releases_root: Some(tree.path().to_path_buf()),
        ..wireleap_devnet::Config::default()
    });
    let extra = format!(
        r#""release_url": "{}", "release_check_interval": "1s", "supervisor": {{"health_window": "1s"}},"#,
        standin.net.releases_url()
    );
    let trust_the_root = |home: &crate::support::Home| {
        use std::os::unix::fs::PermissionsExt as _;
        // With a root, the root alone decides: no key file beside it.
        let _ = std::fs::remove_file(home.file("trusted-keys/test-only-project.pub"));
        let roots = home.file("trusted-keys/roots");
        std::fs::create_dir_all(&roots).unwrap();
        std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(&root1, roots.join("1.root")).unwrap();
    };
    let sv = Supervised::start_prepared(standin, &extra, &[], &[], &trust_the_root);
    let home = &sv.home;

    let version = semver::Version::new(9, 1, 0);
    let key = relay_release::SigningKey::from_file(&test_key("root-e", "key")).unwrap();
    let document = |serial: u64, issued: SystemTime, halted: bool| {
        Document::new(
            &version,
            serial,
            issued,
            Duration::from_secs(3600),
            issued,
            steps(&[(0, 100.0)]),
            halted,
            false,
        )
        .unwrap()
        .sign(std::slice::from_ref(&key), issued)
        .unwrap()
    };
    let binary = stamped(work.path(), &relay_bin(), "9.1.0");
    publish(tree.path(), "9.1.0", &binary);
    let place = tree.path().join("v9.1.0/rollout");
    // Issued two hours ago, valid for one: expired.
    std::fs::write(
        &place,
        document(1, SystemTime::now() - Duration::from_secs(7200), false),
    )
    .unwrap();
    set_channel(tree.path(), "9.1.0");

    let said = || {
        wireleap_home::state::ReleaseInfo::load(home.path())
            .and_then(|i| i.rollout)
            .unwrap_or_default()
    };
    crate::support::eventually(
        Duration::from_secs(30),
        "the relay to refuse the expired document",
        || said().contains("refused") && said().contains("expired"),
    );
    println!("held back: {}", said());
    let status = home.run(&["status"]).stdout;
    assert!(status.contains("rollout document refused"), "{status}");
    // Held back: nothing downloaded, nothing journaled.
    std::thread::sleep(Duration::from_secs(3));
    let asset_gets = || {
        sv.standin
            .net
            .requests_to(wireleap_devnet::Server::Releases)
            .into_iter()
            .filter(|r| r.path.starts_with("/v9.1.0/wireleap-relay_"))
            .count()
    };
    assert_eq!(asset_gets(), 0, "the held-back version was downloaded");
    assert!(home.journal_steps("9.1.0").is_empty());

    // Halted (serial 5), then an older "go" (serial 2) replayed over the halt: still held back.
    std::fs::write(&place, document(5, SystemTime::now(), true)).unwrap();
    crate::support::eventually(Duration::from_secs(30), "the relay to see the halt", || {
        said().contains("rollout halted")
    });
    std::fs::write(&place, document(2, SystemTime::now(), false)).unwrap();
    crate::support::eventually(
        Duration::from_secs(30),
        "the relay to refuse the replayed document",
        || said().contains("a replay"),
    );
    println!("held back: {}", said());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(asset_gets(), 0, "the held-back version was downloaded");
    assert!(home.journal_steps("9.1.0").is_empty());

    // A valid document (a newer serial): the version goes through.
    std::fs::write(&place, document(6, SystemTime::now(), false)).unwrap();
    crate::support::eventually(Duration::from_secs(90), "9.1.0 to commit", || {
        home.journal_steps("9.1.0").iter().any(|s| s == "committed")
    });
    assert!(
        sv.log()
            .contains("rollout step open: upgrading version=9.1.0"),
        "{}",
        sv.log()
    );
}

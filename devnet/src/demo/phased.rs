//! `wireleap-demo --fleet N`: phased rollouts on a fleet of N supervised relays.
//!
//! The relays trust a root whose `rollout` role is a key held by the rollout service
//! (`release-tool rollout serve`), which serves the release tree to them. The demo publishes a
//! good release with a schedule compressed into about a minute (10 % at once, 50 % after 20 s,
//! everyone after 40 s) and shows the relays moving wave by wave; each commit is checked
//! against the opening of its relay's step. Then it publishes a release that fails the probe on
//! every relay: the first wave tries it, rolls back and reports; the service halts the rollout;
//! the demo waits until the whole schedule would have opened and checks at the service that no
//! relay outside the first wave downloaded it. Last it recalls the good release: every relay
//! goes back to the version it started with, under traffic, without a failed stream.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wireleap_devnet::Devnet;
use wireleap_devnet::client::{Hop, activate_servicekey};
use wireleap_home::journal::Step as Kind;
use wireleap_protocol::PublicKey;

use crate::fleet::{Bins, Fleet, Relay, installed_version};
use crate::release::Releaser;
use crate::traffic::{Circuit, Counts, Traffic};
use crate::{Out, reported_version, wait};

/// TEST-ONLY keys (releases/testdata/keys): the root key, the rollout key, and the public half
/// of the release key. Only for the demo's temporary homes; anyone can sign with them.
const ROOT_KEY: (&str, &str) = (
    include_str!("../../../releases/testdata/keys/test-only-root-a.key"),
    include_str!("../../../releases/testdata/keys/test-only-root-a.pub"),
);
const ROLLOUT_KEY: &str = include_str!("../../../releases/testdata/keys/test-only-root-e.key");
const ROLLOUT_PUB: &str = include_str!("../../../releases/testdata/keys/test-only-root-e.pub");
const RELEASE_PUB: &str = include_str!("../../../releases/testdata/keys/test-only-project.pub");

/// The good release's schedule: `OFFSET:PERCENT` steps.
const GOOD_STEPS: [(u64, f64); 3] = [(0, 10.0), (20, 50.0), (40, 100.0)];
/// The bad release's schedule; one rollback in a step halts it.
const BAD_STEPS: [(u64, f64); 3] = [(0, 10.0), (25, 50.0), (40, 100.0)];
/// The supervisors' health window.
const HEALTH_WINDOW: Duration = Duration::from_secs(3);
/// Bound on each phase.
const PHASE_WAIT: Duration = Duration::from_secs(240);
/// Long-lived streams per watched relay.
const LONG_STREAMS: usize = 3;

/// What the fleet demo found.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// The closing lines.
    pub(crate) lines: Vec<String>,
    /// What went wrong (empty: passed).
    pub(crate) problems: Vec<String>,
}

/// One relay of the fleet.
struct Member {
    name: String,
    relay: Relay,
    key: PublicKey,
}

fn steps_arg(steps: &[(u64, f64)]) -> String {
    steps
        .iter()
        .map(|(o, p)| format!("{o}:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The step (0-based) of a position in `steps`, and when it opens (seconds after the start).
fn step_of(steps: &[(u64, f64)], position: f64) -> (usize, u64) {
    relay_release::rollout::step_of(&relay_release::rollout::steps(steps), position)
        .map_or((steps.len(), u64::MAX), |i| (i, steps[i].0))
}

fn position(key: &PublicKey, version: &str) -> f64 {
    semver::Version::parse(version).map_or(100.0, |v| {
        relay_release::rollout::position(key.as_bytes(), &v)
    })
}

use wireleap_home::time::now_ms;

fn write_key(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The fleet demo, from the network's start to its stop.
#[allow(clippy::too_many_lines)]
pub(crate) fn run(
    rt: &tokio::runtime::Runtime,
    bins: &Bins,
    dir: &Path,
    n: usize,
    out: &mut Out,
) -> anyhow::Result<Summary> {
    let (tree, work) = crate::folders(dir)?;
    let state = dir.join("rollout-state");
    let releaser = Releaser::new(&bins.release_tool, &tree, &work)?;
    // The network's root: root key A, release key "project", rollout key E (all TEST-ONLY).
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys)?;
    write_key(&keys.join("root.key"), ROOT_KEY.0, 0o600)?;
    write_key(&keys.join("root.pub"), ROOT_KEY.1, 0o644)?;
    write_key(&keys.join("rollout.key"), ROLLOUT_KEY, 0o600)?;
    write_key(&keys.join("rollout.pub"), ROLLOUT_PUB, 0o644)?;
    write_key(&keys.join("release.pub"), RELEASE_PUB, 0o644)?;
    let root1 = work.join("1.root");
    let k = |name: &str| keys.join(name).into_os_string();
    releaser.run(&[
        "root".as_ref(),
        "init".as_ref(),
        "--out".as_ref(),
        root1.as_os_str(),
        "--key".as_ref(),
        &k("root.pub"),
        "--threshold".as_ref(),
        "1".as_ref(),
        "--release-key".as_ref(),
        &k("release.pub"),
        "--rollout-key".as_ref(),
        &k("rollout.pub"),
    ])?;
    releaser.run(&[
        "root".as_ref(),
        "sign".as_ref(),
        "--key".as_ref(),
        &k("root.key"),
        root1.as_os_str(),
    ])?;
    out.say("▸ the network's root (TEST-ONLY keys): one root key, the release key, and a rollout key held by the rollout service");

    out.say("▸ starting the stand-in network (contract, directory) and the rollout service");
    let net = crate::start_network(rt, &tree)?;
    let fleet = Fleet::default();
    let result = fleet_demo(
        rt, bins, dir, n, out, &net, &fleet, &releaser, &tree, &state, &keys, &root1,
    );
    out.say("▸ stopping every relay and the rollout service");
    fleet.stop();
    rt.block_on(net.shutdown());
    result
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
fn fleet_demo(
    rt: &tokio::runtime::Runtime,
    bins: &Bins,
    dir: &Path,
    n: usize,
    out: &mut Out,
    net: &Devnet,
    fleet: &Fleet,
    releaser: &Releaser,
    tree: &Path,
    state: &Path,
    keys: &Path,
    root1: &Path,
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let service = start_service(fleet, bins, tree, state, keys, dir)?;
    out.say(format!(
        "  rollout service {service} (release-tool rollout serve): serves the release tree, signs rollout documents, counts outcome reports"
    ));

    // The fleet.
    out.say(format!(
        "▸ starting {n} relays, each under wireleap-relay-supervisor (health window {HEALTH_WINDOW:?}, release checks every second)"
    ));
    let mut starting = Vec::new();
    for i in 0..n {
        let name = format!("relay-{i:02}");
        let (home, pubkey) = Relay::init_named(
            bins,
            dir,
            &name,
            "backing",
            net.contract_url(),
            &service,
            &serde_json::json!({"release_check_interval": "1s"}),
        )?;
        install_root(&home, root1)?;
        let key = PublicKey::try_from_b64(&pubkey).context("key.pub")?;
        starting.push((
            name,
            key,
            Relay::spawn(fleet, bins, "backing", home, pubkey, HEALTH_WINDOW)?,
        ));
    }
    let mut members = Vec::new();
    for (name, key, s) in starting {
        members.push(Member {
            name,
            relay: s.ready(fleet)?,
            key,
        });
    }
    wait(out, None, PHASE_WAIT, "every relay to enroll", |_| {
        Ok(members
            .iter()
            .all(|m| reported_version(net, &m.relay.pubkey).is_some()))
    })?;
    let original = installed_version(&bins.relay);
    let running = semver::Version::parse(&original)
        .with_context(|| format!("{} reports version {original:?}", bins.relay.display()))?;
    out.say(format!("  all {n} enrolled, running {original}"));

    // The releases.
    let good = semver::Version::new(running.major, running.minor + 1, 0).to_string();
    let bad = pick_bad(&members, &running);
    let good_bin = releaser.stamp(&bins.relay, &good)?;
    // The bad release's binary reports its own version (as a real release does), and runs with
    // the test fault on.
    let bad_bin = faulty(dir, &releaser.stamp(&bins.relay, &bad)?, &bad)?;

    // Traffic through one relay of each step of the good release.
    let target = rt.block_on(crate::traffic::tcp_echo())?;
    let sk = rt
        .block_on(activate_servicekey(net.contract_url()))
        .context("activating a servicekey")?;
    let mut watched: Vec<usize> = Vec::new();
    for step in 0..GOOD_STEPS.len() {
        if let Some(i) = members
            .iter()
            .position(|m| step_of(&GOOD_STEPS, position(&m.key, &good)).0 == step)
        {
            watched.push(i);
        }
    }
    let circuits: Vec<Circuit> = watched
        .iter()
        .map(|&i| Circuit {
            sk: sk.clone(),
            hops: vec![Hop::new(
                format!("wireleap://{}", members[i].relay.addr),
                members[i].key,
            )],
            target,
        })
        .collect();
    let _in_rt = rt.enter();
    let names: Vec<&str> = watched.iter().map(|&i| members[i].name.as_str()).collect();
    out.say(format!(
        "▸ traffic through {} (one relay of each step): a new stream every 20 ms each, {LONG_STREAMS} long-lived streams each",
        names.join(", ")
    ));
    for c in &circuits {
        let mut last = String::new();
        wait(out, None, PHASE_WAIT, "a first stream", |_| {
            match rt.block_on(crate::traffic::short_stream(c)) {
                Ok(()) => Ok(true),
                Err(e) => {
                    last = e;
                    Ok(false)
                }
            }
        })
        .with_context(|| format!("last error: {last}"))?;
    }

    // 1. A good release, phased.
    let loads: Vec<Traffic> = circuits
        .iter()
        .map(|c| Traffic::start(c, LONG_STREAMS))
        .collect();
    releaser.publish_files(&good, &good_bin, None, "the fleet demo's good release")?;
    let t0 = rollout(
        releaser,
        state,
        &[
            "start",
            &good,
            "--steps",
            &steps_arg(&GOOD_STEPS),
            "--halt-after",
            "2",
        ],
    )?;
    releaser.set_channel(&good)?;
    out.say(format!(
        "▸ {good}: published, phased {} (offset s: cumulative %), announced by the directory",
        steps_arg(&GOOD_STEPS)
    ));
    let mut committed: BTreeMap<usize, u64> = BTreeMap::new();
    let mut last_line = Instant::now();
    wait(
        out,
        None,
        PHASE_WAIT,
        &format!("every relay to commit {good}"),
        |out| {
            for (i, m) in members.iter().enumerate() {
                if committed.contains_key(&i) {
                    continue;
                }
                let journal = m.relay.journal();
                let time = |step: Kind| {
                    journal
                        .iter()
                        .find(|s| s.version == good && s.step == step)
                        .map(|s| s.time_ms)
                };
                let (Some(at), Some(verified)) = (time(Kind::Committed), time(Kind::Verified))
                else {
                    continue;
                };
                committed.insert(i, at);
                let pos = position(&m.key, &good);
                let (step, opens) = step_of(&GOOD_STEPS, pos);
                let after = at.saturating_sub(t0);
                let began = verified.saturating_sub(t0);
                out.say(format!(
                    "  {}  position {pos:>5.2}%  step {}  (opens +{opens:>2} s)  downloaded and verified {good} at +{:.1} s, committed at +{:.1} s",
                    m.name,
                    step + 1,
                    began as f64 / 1000.0,
                    after as f64 / 1000.0
                ));
                if began < opens * 1000 {
                    summary.problems.push(format!(
                        "{} started {good} at +{:.1} s, before its step {} opened (+{opens} s)",
                        m.name,
                        began as f64 / 1000.0,
                        step + 1
                    ));
                }
            }
            if last_line.elapsed() >= Duration::from_secs(5) {
                last_line = Instant::now();
                out.say(wave_line(&members, &good, &GOOD_STEPS, t0, &committed));
            }
            Ok(committed.len() == members.len())
        },
    )?;
    let through_good = finish(rt, loads);
    out.say(counts_line("through the phased upgrade", &through_good));
    check_traffic(&mut summary, "the phased upgrade", &through_good);

    // 2. A bad release: halted after the first wave.
    let first_wave: Vec<usize> = (0..members.len())
        .filter(|&i| position(&members[i].key, &bad) < BAD_STEPS[0].1)
        .collect();
    releaser.publish_files(
        &bad,
        &bad_bin,
        None,
        "the fleet demo's bad release (answers nothing)",
    )?;
    let t1 = rollout(
        releaser,
        state,
        &[
            "start",
            &bad,
            "--steps",
            &steps_arg(&BAD_STEPS),
            "--halt-after",
            "1",
        ],
    )?;
    releaser.set_channel(&bad)?;
    out.say(format!(
        "▸ {bad}: published (signed, but it answers nothing: every relay's probe fails), phased {}, halted after 1 rollback; its first wave is {} of {n} relays",
        steps_arg(&BAD_STEPS),
        first_wave.len()
    ));
    let mut shown: BTreeMap<usize, usize> = BTreeMap::new();
    let mut halted_shown = false;
    let until = t1 + BAD_STEPS[BAD_STEPS.len() - 1].0 * 1000 + 3000;
    let mut last_line = Instant::now();
    wait(
        out,
        None,
        PHASE_WAIT,
        "the bad release's whole schedule to pass",
        |out| {
            for (i, m) in members.iter().enumerate() {
                let steps: Vec<_> = m
                    .relay
                    .journal()
                    .into_iter()
                    .filter(|s| s.version == bad)
                    .collect();
                let seen = shown.entry(i).or_insert(0);
                for s in steps.iter().skip(*seen) {
                    if s.step == Kind::Committing {
                        continue;
                    }
                    out.say(format!(
                        "  {} (position {:.2}%): {} {}{}",
                        m.name,
                        position(&m.key, &bad),
                        s.version,
                        s.step.as_str(),
                        if s.detail.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", s.detail)
                        }
                    ));
                }
                *seen = steps.len();
            }
            if !halted_shown
                && let Some(st) = status(releaser, state, &bad)?
                && st["halted"].as_bool() == Some(true)
            {
                halted_shown = true;
                out.say(format!(
                "  rollout of {bad} HALTED by the service: {} ({} ms after the first rollback report)",
                st["halt_reason"].as_str().unwrap_or("?"),
                st["first_rollback_to_halt_ms"]
            ));
            }
            if last_line.elapsed() >= Duration::from_secs(5) {
                last_line = Instant::now();
                let at = now_ms().saturating_sub(t1) / 1000;
                let schedule = BAD_STEPS
                    .iter()
                    .take_while(|(o, _)| *o <= at)
                    .last()
                    .map_or(0.0, |(_, p)| *p);
                out.say(format!(
                    "  [+{at:>2} s] the schedule alone would be at {schedule}%{}",
                    if halted_shown {
                        "; halted: no other relay starts it"
                    } else {
                        ""
                    }
                ));
            }
            Ok(now_ms() >= until && halted_shown)
        },
    )?;
    let st = status(releaser, state, &bad)?.context("no rollout status")?;
    let tried: Vec<usize> = (0..members.len())
        .filter(|&i| {
            members[i]
                .relay
                .journal()
                .iter()
                .any(|s| s.version == bad && s.step == Kind::Verified)
        })
        .collect();
    let downloads = st["downloads"].as_u64().unwrap_or(0);
    let downloaders = st["downloaders"].as_u64().unwrap_or(0);
    let saw_halt = st["saw_halt"].as_u64().unwrap_or(0);
    let outside: Vec<&str> = tried
        .iter()
        .filter(|i| !first_wave.contains(i))
        .map(|&i| members[i].name.as_str())
        .collect();
    if !outside.is_empty() {
        summary.problems.push(format!(
            "relays outside the first wave tried {bad}: {}",
            outside.join(", ")
        ));
    }
    if downloaders > first_wave.len() as u64 || downloaders < tried.len() as u64 {
        summary.problems.push(format!(
            "{downloaders} relays downloaded {bad} at the release server, {} tried it, and its first wave is {}",
            tried.len(),
            first_wave.len()
        ));
    }
    if st["halted"].as_bool() != Some(true) {
        summary
            .problems
            .push(format!("the rollout of {bad} was not halted"));
    }
    let waiting = (members.len() - tried.len()) as u64;
    if saw_halt < waiting {
        summary.problems.push(format!(
            "only {saw_halt} of the {waiting} relays that did not try {bad} fetched the halted rollout"
        ));
    }
    let rolled_back = (0..members.len())
        .filter(|&i| {
            members[i]
                .relay
                .journal()
                .iter()
                .any(|s| s.version == bad && s.step == Kind::RolledBack)
        })
        .count();
    if rolled_back != tried.len() {
        summary.problems.push(format!(
            "{} relays tried {bad} but {rolled_back} rolled it back",
            tried.len()
        ));
    }
    let blast = format!(
        "blast radius of {bad}: {} of {n} relays tried it ({:.0} %), downloaded by {downloaders} relays ({downloads} downloads) at the release server; first rollback report to halt {} ms; halt to the last of {saw_halt} waiting relays seeing it {} ms",
        tried.len(),
        tried.len() as f64 * 100.0 / n as f64,
        st["first_rollback_to_halt_ms"],
        st["halt_to_last_seen_ms"]
    );
    out.say(format!("  {blast}"));
    summary.lines.push(blast);

    // 3. Recall the good release.
    let loads: Vec<Traffic> = circuits
        .iter()
        .map(|c| Traffic::start(c, LONG_STREAMS))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    rollout(releaser, state, &["recall", &good])?;
    let t2 = now_ms();
    out.say(format!(
        "▸ {good} recalled: every relay that committed it goes back to {original}"
    ));
    let mut back: BTreeMap<usize, u64> = BTreeMap::new();
    wait(
        out,
        None,
        PHASE_WAIT,
        &format!("every relay back on {original}"),
        |out| {
            for (i, m) in members.iter().enumerate() {
                if back.contains_key(&i) {
                    continue;
                }
                if m.relay.installed_version() == original
                    && m.relay.state().as_deref() == Some("serving")
                {
                    let after = now_ms().saturating_sub(t2);
                    back.insert(i, after);
                    out.say(format!(
                        "  {}  back on {original} at +{:.1} s",
                        m.name,
                        after as f64 / 1000.0
                    ));
                }
            }
            Ok(back.len() == members.len())
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let through_recall = finish(rt, loads);
    out.say(counts_line("through the recall", &through_recall));
    check_traffic(&mut summary, "the recall", &through_recall);
    summary.lines.push(format!(
        "{good}: reached all {n} relays in step order; {}",
        counts_line("through it", &through_good).trim()
    ));
    summary.lines.push(format!(
        "recall of {good}: all {n} relays back on {original} within {:.1} s; {}",
        back.values().max().copied().unwrap_or(0) as f64 / 1000.0,
        counts_line("through it", &through_recall).trim()
    ));
    Ok(summary)
}

/// Installs `root1` as the relay's trusted root (owned by the supervisor's user under privilege
/// separation, so the relay's user cannot change it).
fn install_root(home: &Path, root1: &Path) -> anyhow::Result<()> {
    let dir = home.join("trusted-keys");
    let roots = dir.join("roots");
    std::fs::create_dir_all(&roots).with_context(|| format!("creating {}", roots.display()))?;
    for d in [&dir, &roots] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let to = roots.join("1.root");
    std::fs::copy(root1, &to).with_context(|| format!("copying the root to {}", to.display()))?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
    super::fleet::give_to_supervisor(&dir)?;
    Ok(())
}

/// Starts `release-tool rollout serve` and returns its URL.
fn start_service(
    fleet: &Fleet,
    bins: &Bins,
    tree: &Path,
    state: &Path,
    keys: &Path,
    dir: &Path,
) -> anyhow::Result<String> {
    let stdout_path = dir.join("rollout-service.out");
    let stdout = std::fs::File::create(&stdout_path)?;
    let stderr = std::fs::File::create(dir.join("rollout-service.log"))?;
    let mut cmd = Command::new(&bins.release_tool);
    cmd.args([
        "rollout",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--lifetime",
        "1h",
    ])
    .arg("--tree")
    .arg(tree)
    .arg("--state")
    .arg(state)
    .arg("--key")
    .arg(keys.join("rollout.key"))
    .stdin(Stdio::null())
    .stdout(stdout)
    .stderr(stderr);
    let pid = fleet
        .spawn(cmd)
        .context("starting release-tool rollout serve")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        if let Some(url) = text.split_whitespace().find(|w| w.starts_with("http://")) {
            return Ok(url.to_owned());
        }
        if let Some(status) = fleet.exited(pid) {
            bail!(
                "the rollout service exited ({status}): {}",
                std::fs::read_to_string(dir.join("rollout-service.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("the rollout service did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `release-tool rollout <args> --state <state>`; for `start`, returns the rollout's start
/// (ms since the epoch).
fn rollout(releaser: &Releaser, state: &Path, args: &[&str]) -> anyhow::Result<u64> {
    let mut all: Vec<&std::ffi::OsStr> = vec!["rollout".as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    all.extend(["--state".as_ref(), state.as_os_str()]);
    releaser.run(&all)?;
    let version = args.get(1).copied().unwrap_or_default();
    let st = status(releaser, state, version)?.context("no rollout status")?;
    st["start"]
        .as_str()
        .and_then(relay_release::manifest::parse_time)
        .map(wireleap_home::time::ms)
        .context("the rollout status has no start")
}

/// The service's status of `version` (JSON).
fn status(
    releaser: &Releaser,
    state: &Path,
    version: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let text = releaser.run(&[
        "rollout".as_ref(),
        "status".as_ref(),
        "--json".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        version.as_ref(),
    ])?;
    let reply: serde_json::Value =
        serde_json::from_str(&text).context("release-tool rollout status --json")?;
    Ok(reply["rollouts"]
        .as_array()
        .and_then(|a| a.first())
        .cloned())
}

/// The bad release's version: the first patch of minor + 2 whose first wave holds at least one
/// relay (positions differ per version; an empty first wave would show nothing).
fn pick_bad(members: &[Member], running: &semver::Version) -> String {
    (0..100)
        .map(|patch| semver::Version::new(running.major, running.minor + 2, patch).to_string())
        .find(|v| members.iter().any(|m| position(&m.key, v) < BAD_STEPS[0].1))
        .unwrap_or_else(|| semver::Version::new(running.major, running.minor + 2, 0).to_string())
}

/// A release of `version` that runs `binary` (stamped `version`) with the test fault
/// `blackhole` (it serves nothing): it fails the in-band probe on every relay.
fn faulty(dir: &Path, binary: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let path = dir
        .join("work")
        .join(format!("wireleap-relay-{version}-blackhole"));
    let text = format!(
        "#!/bin/sh\n\
         # {version}: broken on purpose. It runs, pings its supervisor, enrolls, and answers no stream.\n\
         [ \"$1\" = version ] && {{ echo {version}; exit 0; }}\n\
         WIRELEAP_RELAY_FAULT=blackhole exec \"{}\" \"$@\"\n",
        binary.display()
    );
    std::fs::write(&path, text).context("writing the bad release")?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Which relays of each step committed `version` so far.
fn wave_line(
    members: &[Member],
    version: &str,
    steps: &[(u64, f64)],
    t0: u64,
    committed: &BTreeMap<usize, u64>,
) -> String {
    let at = now_ms().saturating_sub(t0) / 1000;
    let schedule = steps
        .iter()
        .take_while(|(o, _)| *o <= at)
        .last()
        .map_or(0.0, |(_, p)| *p);
    let mut per: Vec<(usize, usize)> = vec![(0, 0); steps.len()];
    for (i, m) in members.iter().enumerate() {
        let (step, _) = step_of(steps, position(&m.key, version));
        if let Some(c) = per.get_mut(step) {
            c.1 += 1;
            if committed.contains_key(&i) {
                c.0 += 1;
            }
        }
    }
    let parts: Vec<String> = per
        .iter()
        .enumerate()
        .map(|(i, (c, t))| format!("step {} {c}/{t}", i + 1))
        .collect();
    format!(
        "  [+{at:>2} s] schedule at {schedule}%: committed {}",
        parts.join(", ")
    )
}

fn finish(rt: &tokio::runtime::Runtime, loads: Vec<Traffic>) -> Counts {
    let mut all = Counts::default();
    for l in loads {
        let c = rt.block_on(l.finish());
        all.ok += c.ok;
        all.failed.extend(c.failed);
        all.long += c.long;
        all.cut.extend(c.cut);
    }
    all
}

fn counts_line(phase: &str, c: &Counts) -> String {
    format!(
        "  {phase}: {} streams ok, {} failed; {} of {} long-lived streams unbroken",
        c.ok,
        c.failed.len(),
        c.long - c.cut.len(),
        c.long
    )
}

fn check_traffic(summary: &mut Summary, phase: &str, c: &Counts) {
    if !c.failed.is_empty() {
        summary.problems.push(format!(
            "{} streams failed through {phase}: {}",
            c.failed.len(),
            c.failed
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if !c.cut.is_empty() {
        summary.problems.push(format!(
            "{} long-lived streams were cut through {phase}: {}",
            c.cut.len(),
            c.cut.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
}

//! `wireleap-demo`: the whole product on loopback in one command.
//!
//! It starts the stand-in network (in this process), three relays (fronting, entropic,
//! backing), each under its own `wireleap-relay-supervisor` in its own home directory, and pushes
//! traffic through the three-hop circuit. Then it publishes a new signed version on the release
//! channel: the directory announces it in heartbeat replies, each relay downloads and verifies
//! it, and its supervisor hands the socket over and commits after the health window, while the
//! traffic keeps flowing. Then it publishes a broken version, which every supervisor rolls back
//! and skips. It ends with a summary table, stops everything it started, and exits 0 only if
//! nothing failed through the good upgrade, every relay ended on the good version and skipped
//! the broken one, and traffic flows after the rollback.
//!
//! The binaries it runs (`wireleap-relay`, `wireleap-relay-supervisor`, `release-tool`) are taken
//! from the folder of its own executable: `cargo build --release --workspace --bins` builds them
//! all. Everything lives in a temp dir, removed at the end (kept, and named, if the demo fails or
//! with `--keep`).

mod fleet;
mod phased;
mod release;
mod traffic;

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use wireleap_devnet::client::{Hop, activate_servicekey};
use wireleap_devnet::{Config, Devnet, Server};
use wireleap_protocol::PublicKey;

use fleet::{Bins, Fleet, Relay, Step, installed_version};
use release::Releaser;
use traffic::{Circuit, Counts, Traffic};
use wireleap_home::journal::Step as Kind;

/// The relays, in circuit order.
const ROLES: [&str; 3] = ["fronting", "entropic", "backing"];
/// The supervisors' health window: a new version must stay up this long to be committed.
const HEALTH_WINDOW: Duration = Duration::from_secs(3);
/// Bound on the network and the relays getting ready.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Bound on each relay finishing an upgrade or a rollback.
const UPGRADE_WAIT: Duration = Duration::from_secs(120);
/// Long-lived streams kept open through each phase.
const LONG_STREAMS: usize = 10;
/// Heartbeats each relay sends after the rollback, to show the broken version is not retried.
const MORE_HEARTBEATS: usize = 3;

/// Set on Ctrl-C or SIGTERM, or when the demo gives up with work still in the background; every
/// wait checks it, and the release tool is killed when it is set.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Set on Ctrl-C or SIGTERM: the temp dir is not kept then (unless `--keep`).
static SIGNALLED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Parser)]
#[command(
    name = "wireleap-demo",
    version,
    about = "Three supervised relays on a stand-in network: traffic, a signed upgrade, a rollback"
)]
struct Cli {
    /// Keep the temp dir (homes, logs, release tree) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Instead: N relays (1 to 50) and phased rollouts: a good release wave by wave, a bad one
    /// halted after its first wave, a recall.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=50))]
    fleet: Option<u16>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = Instant::now();
    let mut out = Out::new();
    let bins = match Bins::find() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wireleap-demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wireleap-demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.spawn(watch_signals());
    let dir = match tempfile::Builder::new().prefix("wireleap-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("wireleap-demo: cannot create a temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (name, outcome, kept) = if let Some(n) = cli.fleet {
        let n = usize::from(n);
        let outcome = phased::run(&rt, &bins, dir.path(), n, &mut out).map(|summary| {
            out.say("");
            for line in &summary.lines {
                out.say(line);
            }
            let passed = format!(
                "the good release reached the {n} relays wave by wave, the bad one was halted after its first wave, the recall brought every relay back."
            );
            (summary.problems, passed)
        });
        (
            "fleet demo",
            outcome,
            "relay homes, the release tree, the rollout service's state and log",
        )
    } else {
        let outcome = run(&rt, &bins, dir.path(), &mut out).map(|summary| {
            out.say("");
            out.say(summary.table());
            let passed = format!(
                "no stream failed through the upgrade, every relay runs {} and skips {}.",
                summary.good, summary.broken
            );
            (summary.problems(), passed)
        });
        (
            "demo",
            outcome,
            "relay homes with supervisor.log and upgrade-journal.jsonl, the release tree",
        )
    };
    let (code, keep) = match outcome {
        Ok((problems, passed)) if problems.is_empty() => {
            out.say(format!(
                "{name} passed in {:.0} s: {passed}",
                started.elapsed().as_secs_f64()
            ));
            (ExitCode::SUCCESS, cli.keep)
        }
        Ok((problems, _)) => {
            out.say(format!(
                "{name} FAILED after {:.0} s:",
                started.elapsed().as_secs_f64()
            ));
            for p in &problems {
                out.say(format!("  - {p}"));
            }
            (ExitCode::FAILURE, true)
        }
        Err(e) => {
            out.say(format!(
                "{name} FAILED after {:.0} s: {e:#}",
                started.elapsed().as_secs_f64()
            ));
            (
                ExitCode::FAILURE,
                cli.keep || !SIGNALLED.load(Ordering::Relaxed),
            )
        }
    };
    if keep {
        let path = dir.keep();
        out.say(format!("kept {} ({kept})", path.display()));
    }
    code
}

/// Sets [`INTERRUPTED`] on Ctrl-C or SIGTERM.
async fn watch_signals() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    SIGNALLED.store(true, Ordering::Relaxed);
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// The demo from the network's start to the last process stopped. The network and every
/// process are stopped on the way out, whatever happened.
fn run(
    rt: &tokio::runtime::Runtime,
    bins: &Bins,
    dir: &Path,
    out: &mut Out,
) -> anyhow::Result<Summary> {
    let (root, work) = folders(dir)?;
    out.say("▸ starting the stand-in network (contract, directory, release server)");
    let net = start_network(rt, &root)?;
    out.say(format!(
        "  contract {}  directory {}  releases {}",
        net.contract_url(),
        net.directory_url(),
        net.releases_url()
    ));
    let fleet = Fleet::default();
    let result = demo(rt, bins, &net, &fleet, &root, &work, dir, out);
    out.say("▸ stopping: each supervisor stops its relay, which disenrolls");
    let killed = fleet.stop();
    rt.block_on(net.shutdown());
    out.say(if killed == 0 {
        "  every process exited on its own; nothing left running".to_owned()
    } else {
        format!(
            "  {killed} supervisor(s) did not stop within {:?} and were killed with their relays; nothing left running",
            fleet::STOP_WAIT
        )
    });
    let mut summary = result?;
    summary.killed_at_stop = killed;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn demo(
    rt: &tokio::runtime::Runtime,
    bins: &Bins,
    net: &Devnet,
    fleet: &Fleet,
    root: &Path,
    work: &Path,
    dir: &Path,
    out: &mut Out,
) -> anyhow::Result<Summary> {
    // The next version, stamped in the background while the relays start (it reads and writes the
    // whole binary: seconds for a debug build).
    let running = installed_version(&bins.relay);
    let running = semver::Version::parse(&running)
        .with_context(|| format!("{} reports version {running:?}", bins.relay.display()))?;
    let good = semver::Version::new(running.major, running.minor + 1, 0).to_string();
    let broken = semver::Version::new(running.major, running.minor + 2, 0).to_string();
    let releaser = Releaser::new(&bins.release_tool, root, work)?;
    let mut stamping = Background({
        let (releaser, relay, good) = (releaser.clone(), bins.relay.clone(), good.clone());
        Some(std::thread::spawn(move || releaser.stamp(&relay, &good)))
    });

    // The relays, each in its own home under its own supervisor.
    out.say(format!(
        "▸ starting three relays, each under wireleap-relay-supervisor (health window {HEALTH_WINDOW:?})"
    ));
    out.say(match (fleet::relay_user(), fleet::supervisor_launcher()) {
        (Some(_), Some(_)) => format!(
            "  privilege separation as the systemd unit sets it up: each supervisor runs as uid {} (not root; CAP_SETUID, CAP_SETGID, CAP_KILL) and its relay as {} (no capability; docs/install.md): a relay cannot change the binary that runs next nor the keys it trusts",
            fleet::SUPERVISOR_UID,
            fleet::RELAY_USER
        ),
        (Some(_), None) => format!(
            "  privilege separation: each supervisor runs as root (setpriv, to run it as the systemd unit does, is not installed) and its relay as {} (docs/install.md): a relay cannot change the binary that runs next nor the keys it trusts",
            fleet::RELAY_USER
        ),
        (None, _) => "  one user for the supervisors and their relays (not root: no privilege separation; docs/install.md)".to_owned(),
    });
    let mut relays = Vec::new();
    for role in ROLES {
        let (home, pubkey) = Relay::init(bins, dir, role, net.contract_url(), net.releases_url())?;
        for line in Relay::trust_demo_key(bins, &home)? {
            let key = line.split_whitespace().nth(2).unwrap_or_default();
            out.say(format!(
                "  {role:<9} trusts the demo network's release key {key} (the public TEST-ONLY key in releases/testdata/keys, installed in its trusted-keys/: no build trusts a key)"
            ));
        }
        let relay = Relay::spawn(fleet, bins, role, home, pubkey, HEALTH_WINDOW)?.ready(fleet)?;
        out.say(format!(
            "  {:<9} listening on {}  key {}…  supervisor pid {}",
            relay.role,
            relay.addr,
            &relay.pubkey[..8.min(relay.pubkey.len())],
            relay.supervisor
        ));
        relays.push(relay);
    }
    let before: Vec<String> = relays.iter().map(Relay::installed_version).collect();

    wait(out, None, READY_WAIT, "the three relays to enroll", |_| {
        Ok(relays
            .iter()
            .all(|r| reported_version(net, &r.pubkey).is_some()))
    })?;
    out.say(format!(
        "  all three enrolled at the directory, reporting version {}",
        before[0]
    ));

    // The circuit and its first stream.
    let target = rt
        .block_on(traffic::tcp_echo())
        .context("starting the echo target")?;
    let sk = rt
        .block_on(activate_servicekey(net.contract_url()))
        .context("activating a servicekey at the contract")?;
    let hops = relays
        .iter()
        .map(|r| {
            PublicKey::try_from_b64(&r.pubkey)
                .map(|k| Hop::new(format!("wireleap://{}", r.addr), k))
                .with_context(|| format!("the {} relay's key.pub", r.role))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let circuit = Circuit { sk, hops, target };
    let mut last_error = String::new();
    wait(
        out,
        None,
        READY_WAIT,
        "a first stream through the three hops",
        |_| match rt.block_on(traffic::short_stream(&circuit)) {
            Ok(()) => Ok(true),
            Err(e) => {
                last_error = e;
                Ok(false)
            }
        },
    )
    .with_context(|| format!("last error: {last_error}"))?;
    out.say(format!(
        "▸ traffic: client → fronting → entropic → backing → echo {target}: a new circuit every 20 ms, {LONG_STREAMS} long-lived streams"
    ));
    let _in_rt = rt.enter();
    let load = Traffic::start(&circuit, LONG_STREAMS);
    pause(out, &load, Duration::from_secs(3))?;
    out.say(format!(
        "  {} streams ok, {} failed so far",
        load.ok(),
        load.failed()
    ));

    // A good release.
    if !stamping.finished() {
        out.say(format!(
            "  (waiting for release-tool to stamp {good}: a copy of the relay binary that reports {good})"
        ));
    }
    wait(
        out,
        Some(&load),
        UPGRADE_WAIT,
        &format!("release-tool to stamp {good}"),
        |_| Ok(stamping.finished()),
    )?;
    let next = stamping
        .0
        .take()
        .context("stamping was not started")?
        .join()
        .map_err(|_| anyhow::anyhow!("stamping {good} panicked"))??;
    out.say(format!(
        "▸ publishing {good} (signed; it carries the relay and its own supervisor) and setting the default channel to it"
    ));
    releaser.publish(
        &good,
        &next,
        Some(&bins.supervisor),
        "the demo's good release",
    )?;
    out.say(format!(
        "  the directory now announces {good} in its heartbeat replies; the relays download, verify and hand over"
    ));
    follow(out, &load, &mut relays, net, &good, true)?;
    for r in &relays {
        // Exec'd in place: the pid the demo started is the supervisor that runs now.
        let same = r.supervisor_pid() == Some(r.supervisor) && fleet.exited(r.supervisor).is_none();
        if !same {
            bail!(
                "the {} relay's supervisor is not the process the demo started (pid {}, pid file {:?})\n{}",
                r.role,
                r.supervisor,
                r.supervisor_pid(),
                r.log_tail(15)
            );
        }
        out.say(format!(
            "  {:<9} supervisor upgraded in place: pid {} runs the release's supervisor (its relay is still its child) and installed it for its next start",
            r.role, r.supervisor
        ));
    }
    pause(out, &load, Duration::from_secs(1))?;
    let through_upgrade = rt.block_on(load.finish());
    out.say(counts_line(
        "through the upgrade: ",
        &through_upgrade,
        "failed",
    ));

    // A broken release.
    let bad = releaser.broken(&next, &broken)?;
    let load = Traffic::start(&circuit, LONG_STREAMS);
    pause(out, &load, Duration::from_secs(1))?;
    out.say(format!(
        "▸ publishing {broken} (signed, but broken: it dies a second after it starts)"
    ));
    releaser.publish(&broken, &bad, None, "the demo's broken release")?;
    follow(out, &load, &mut relays, net, &broken, false)?;
    let posts = heartbeats(net);
    let more = MORE_HEARTBEATS * relays.len();
    wait(
        out,
        Some(&load),
        READY_WAIT,
        "more heartbeats after the rollback",
        |_| Ok(heartbeats(net) >= posts + more),
    )?;
    let retried: Vec<&str> = relays
        .iter()
        .filter(|r| count(&r.journal(), &broken, Kind::Verified) > 1)
        .map(|r| r.role)
        .collect();
    out.say(if retried.is_empty() {
        format!(
            "  {MORE_HEARTBEATS} more heartbeats each: the directory still announces {broken}, no relay tries it again"
        )
    } else {
        format!("  {broken} was tried again by: {}", retried.join(", "))
    });
    let through_rollback = rt.block_on(load.finish());
    out.say(counts_line(
        "through the rollback: ",
        &through_rollback,
        &format!("lost with the killed {broken} processes"),
    ));

    out.say(format!("▸ traffic after the rollback ({good} serving)"));
    let load = Traffic::start(&circuit, LONG_STREAMS);
    pause(out, &load, Duration::from_secs(2))?;
    let after = rt.block_on(load.finish());
    out.say(counts_line("", &after, "failed"));

    let rows = relays
        .iter()
        .zip(before)
        .map(|(r, before)| {
            let journal = r.journal();
            Row {
                role: r.role,
                before,
                installed: r.installed_version(),
                reported: reported_version(net, &r.pubkey).unwrap_or_else(|| "-".to_owned()),
                committed: versions_at(&journal, Kind::Committed),
                rolled_back: versions_at(&journal, Kind::RolledBack),
                skipped: r.skipped(),
                retried: count(&journal, &broken, Kind::Verified) > 1,
            }
        })
        .collect();
    Ok(Summary {
        good,
        broken,
        rows,
        through_upgrade,
        through_rollback,
        after,
        killed_at_stop: 0,
    })
}

/// The demo's release tree and work folder in `dir`, created.
///
/// # Errors
/// Creating them.
fn folders(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (root, work) = (dir.join("releases"), dir.join("work"));
    for d in [&root, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok((root, work))
}

/// The stand-in network (contract, directory, and a release server for `root`), in `rt`.
///
/// # Errors
/// It could not start.
fn start_network(rt: &tokio::runtime::Runtime, root: &Path) -> anyhow::Result<Devnet> {
    rt.block_on(Devnet::start(Config {
        releases_root: Some(root.to_path_buf()),
        ..Config::default()
    }))
    .context("starting the stand-in network")
}

/// A background thread. Dropped before it was joined (the demo gave up), it tells the thread to
/// stop (its release tool is killed) and waits for it, so nothing outlives the demo.
#[derive(Debug)]
struct Background<T>(Option<std::thread::JoinHandle<T>>);

impl<T> Background<T> {
    fn finished(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            INTERRUPTED.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// One line on what a phase's traffic saw.
fn counts_line(phase: &str, c: &Counts, failed: &str) -> String {
    format!(
        "  {phase}{} streams ok, {} {failed}; {} of {} long-lived streams unbroken",
        c.ok,
        c.failed.len(),
        c.long - c.cut.len(),
        c.long
    )
}

/// Shows each relay's journal steps for `version` as they happen, until every relay committed
/// it and reports it to the directory (`good`), or rolled it back and skipped it (not `good`).
fn follow(
    out: &mut Out,
    load: &Traffic,
    relays: &mut [Relay],
    net: &Devnet,
    version: &str,
    good: bool,
) -> anyhow::Result<()> {
    let mut announced = vec![false; relays.len()];
    let mut downloading = vec![false; relays.len()];
    let what = if good {
        format!("every relay to commit {version}")
    } else {
        format!("every relay to roll back and skip {version}")
    };
    let mut finished = vec![false; relays.len()];
    let waited = wait(out, Some(load), UPGRADE_WAIT, &what, |out| {
        for (i, r) in relays.iter_mut().enumerate() {
            if !downloading[i] && r.accepted(version) {
                downloading[i] = true;
                out.say(format!(
                    "  {:<9} {version}: announced in a heartbeat reply; accepted, downloading",
                    r.role
                ));
            }
            for s in r.new_steps() {
                if s.step == Kind::Committing {
                    continue;
                }
                out.say(format!("  {:<9} {}", r.role, describe(&s)));
                if good
                    && s.version == version
                    && matches!(
                        s.step,
                        Kind::RolledBack
                            | Kind::SupervisorRolledBack
                            | Kind::VerifyFailed
                            | Kind::CommitFailed
                            | Kind::MigrateDownFailed
                    )
                {
                    bail!(
                        "the {} relay did not take {version}: {} {}\n  its supervisor's log ends:\n{}",
                        r.role,
                        s.step,
                        s.detail,
                        r.log_tail(15)
                    );
                }
            }
            // Sticky: a draining old generation may still heartbeat with the old version.
            finished[i] = finished[i]
                || if good {
                    r.reached(version, Kind::Committed)
                        && r.reached(version, Kind::SupervisorCommitted)
                        && reported_version(net, &r.pubkey).as_deref() == Some(version)
                } else {
                    r.reached(version, Kind::RolledBack)
                        && r.skipped().iter().any(|v| v == version)
                        && r.state().as_deref() == Some("serving")
                };
            if finished[i] && !announced[i] {
                announced[i] = true;
                out.say(format!(
                    "  {:<9} {}",
                    r.role,
                    if good {
                        format!("now reports {version} to the directory")
                    } else {
                        format!("{version} added to .skip-upgrade-version")
                    }
                ));
            }
        }
        Ok(finished.iter().all(|f| *f))
    });
    waited.map_err(|e| {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return e;
        }
        let mut why = format!("{e:#}");
        for (r, _) in relays.iter().zip(&finished).filter(|(_, f)| !**f) {
            let last = r
                .journal()
                .last()
                .map(|s| format!("{} {}", s.version, s.step))
                .unwrap_or_else(|| "none".to_owned());
            let _ = write!(
                why,
                "\n  {}: last journal step: {last}; reports {} to the directory; its upgrade log ends:\n{}",
                r.role,
                reported_version(net, &r.pubkey).unwrap_or_else(|| "nothing".to_owned()),
                r.upgrade_log_tail(8)
            );
        }
        anyhow::anyhow!(why)
    })
}

fn describe(s: &Step) -> String {
    match s.step {
        Kind::Verified => format!(
            "{}: downloaded, verified (signature, digest, version); starting it on the same socket",
            s.version
        ),
        Kind::Swapped => format!(
            "{}: ready and serving new connections; the old process drains its streams",
            s.version
        ),
        Kind::Migrated => format!("{}: home directory migrated to it", s.version),
        Kind::Committed => format!(
            "{}: committed after the {HEALTH_WINDOW:?} health window",
            s.version
        ),
        Kind::SupervisorTrial => format!(
            "{}: its own supervisor replaces this one in place (same pid), on trial under a guardian",
            s.version
        ),
        Kind::SupervisorCommitted => format!(
            "{}: its supervisor took over (new relay generation ready, the old one drained) and installed itself",
            s.version
        ),
        Kind::RolledBack => format!(
            "{}: ROLLED BACK ({}); the old version serves",
            s.version,
            if s.detail.is_empty() {
                "no reason given"
            } else {
                &s.detail
            }
        ),
        other => format!(
            "{}: {other}{}",
            s.version,
            if s.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.detail)
            }
        ),
    }
}

/// The software version the directory last heard from the relay with `pubkey`, if enrolled.
fn reported_version(net: &Devnet, pubkey: &str) -> Option<String> {
    net.enrolled()
        .into_iter()
        .find(|e| e.pubkey.to_b64() == pubkey)
        .map(|e| e.versions.software.unwrap_or_else(|| "?".to_owned()))
}

/// Heartbeats (and enrollments) the directory has seen.
fn heartbeats(net: &Devnet) -> usize {
    net.requests_to(Server::Directory)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/relays"))
        .count()
}

fn count(journal: &[Step], version: &str, step: Kind) -> usize {
    journal
        .iter()
        .filter(|s| s.version == version && s.step == step)
        .count()
}

fn versions_at(journal: &[Step], step: Kind) -> Vec<String> {
    let mut v: Vec<String> = journal
        .iter()
        .filter(|s| s.step == step)
        .map(|s| s.version.clone())
        .collect();
    v.dedup();
    v
}

/// Polls `check` every 100 ms until it says done, showing the traffic counter meanwhile.
///
/// # Errors
/// `check`'s error, a timeout after `within` naming `what`, or Ctrl-C.
fn wait(
    out: &mut Out,
    load: Option<&Traffic>,
    within: Duration,
    what: &str,
    mut check: impl FnMut(&mut Out) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if check(out)? {
            return Ok(());
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        if let Some(load) = load {
            out.tick(load);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lets the traffic run for `how_long`, showing its counter.
fn pause(out: &mut Out, load: &Traffic, how_long: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + how_long;
    wait(out, Some(load), how_long * 2, "", |_| {
        Ok(Instant::now() >= until)
    })
}

/// Progress on stdout: event lines, and a live traffic counter (rewritten in place on a
/// terminal, one line every few seconds otherwise).
#[derive(Debug)]
struct Out {
    tty: bool,
    last: Instant,
    counter_shown: bool,
    started: Instant,
}

impl Out {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            last: Instant::now(),
            counter_shown: false,
            started: Instant::now(),
        }
    }

    fn say(&mut self, line: impl std::fmt::Display) {
        let mut stdout = std::io::stdout().lock();
        if self.counter_shown {
            let _ = write!(stdout, "\r\x1b[K");
            self.counter_shown = false;
        }
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    fn tick(&mut self, load: &Traffic) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(3)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let text = format!(
            "  [{:>3.0} s] traffic: {} streams ok, {} failed",
            self.started.elapsed().as_secs_f64(),
            load.ok(),
            load.failed()
        );
        let mut stdout = std::io::stdout().lock();
        if self.tty {
            let _ = write!(stdout, "\r\x1b[K{text}");
            self.counter_shown = true;
        } else {
            let _ = writeln!(stdout, "{text}");
        }
        let _ = stdout.flush();
    }
}

/// One relay's line in the summary.
#[derive(Debug)]
struct Row {
    role: &'static str,
    before: String,
    installed: String,
    reported: String,
    committed: Vec<String>,
    rolled_back: Vec<String>,
    skipped: Vec<String>,
    retried: bool,
}

/// What the demo saw.
#[derive(Debug)]
struct Summary {
    good: String,
    broken: String,
    rows: Vec<Row>,
    through_upgrade: Counts,
    through_rollback: Counts,
    after: Counts,
    killed_at_stop: usize,
}

impl Summary {
    fn table(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(",")
            }
        };
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:<9} {:<8} {:<8} {:<10} {:<11} skipped",
            "relay", "before", "after", "committed", "rolled back"
        );
        for r in &self.rows {
            let _ = writeln!(
                t,
                "{:<9} {:<8} {:<8} {:<10} {:<11} {}",
                r.role,
                r.before,
                r.installed,
                list(&r.committed),
                list(&r.rolled_back),
                list(&r.skipped)
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<31} {:>10} {:>7} {:>13}",
            "three-hop streams", "ok", "failed", "long-lived cut"
        );
        for (name, c) in [
            (
                format!("through the {} upgrade", self.good),
                &self.through_upgrade,
            ),
            (
                format!("through the {} rollback", self.broken),
                &self.through_rollback,
            ),
            ("after the rollback".to_owned(), &self.after),
        ] {
            let _ = writeln!(
                t,
                "{name:<31} {:>10} {:>7} {:>13}",
                c.ok,
                c.failed.len(),
                format!("{}/{}", c.cut.len(), c.long)
            );
        }
        let total_ok = self.through_upgrade.ok + self.through_rollback.ok + self.after.ok;
        let total_failed = self.through_upgrade.failed.len()
            + self.through_rollback.failed.len()
            + self.after.failed.len();
        let _ = write!(t, "{:<31} {total_ok:>10} {total_failed:>7}", "total");
        if !self.through_rollback.failed.is_empty() {
            let _ = write!(
                t,
                "\n(the rollback's failures are streams that were in flight on a {} process when it died)",
                self.broken
            );
        }
        t
    }

    /// Why the demo failed; empty when it passed.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let first = |v: &[String]| v.first().cloned().unwrap_or_default();
        if !self.through_upgrade.failed.is_empty() {
            p.push(format!(
                "{} streams failed through the {} upgrade, e.g. {}",
                self.through_upgrade.failed.len(),
                self.good,
                first(&self.through_upgrade.failed)
            ));
        }
        if !self.through_upgrade.cut.is_empty() {
            p.push(format!(
                "{} long-lived streams were cut through the {} upgrade, e.g. {}",
                self.through_upgrade.cut.len(),
                self.good,
                first(&self.through_upgrade.cut)
            ));
        }
        if self.through_upgrade.ok == 0 {
            p.push("no stream got through during the upgrade".to_owned());
        }
        if !self.after.failed.is_empty() || !self.after.cut.is_empty() || self.after.ok == 0 {
            p.push(format!(
                "after the rollback: {} ok, {} failed, {} long-lived cut{}",
                self.after.ok,
                self.after.failed.len(),
                self.after.cut.len(),
                self.after
                    .failed
                    .first()
                    .map(|f| format!(", e.g. {f}"))
                    .unwrap_or_default()
            ));
        }
        for r in &self.rows {
            if r.installed != self.good || r.reported != self.good {
                p.push(format!(
                    "the {} relay runs {} (reports {} to the directory), not {}",
                    r.role, r.installed, r.reported, self.good
                ));
            }
            if !r.skipped.contains(&self.broken) {
                p.push(format!(
                    "the {} relay does not skip {}",
                    r.role, self.broken
                ));
            }
            if !r.rolled_back.contains(&self.broken) {
                p.push(format!(
                    "the {} relay did not roll back {}",
                    r.role, self.broken
                ));
            }
            if r.retried {
                p.push(format!(
                    "the {} relay tried the skipped {} again",
                    r.role, self.broken
                ));
            }
        }
        if self.killed_at_stop > 0 {
            p.push(format!(
                "{} supervisor(s) had to be killed at the end",
                self.killed_at_stop
            ));
        }
        p
    }
}

//! `rollout-sim`: phased rollouts at internet scale, by simulation. No processes: the rollout
//! logic of the relays and of the service (positions, the schedule, outcome counting, the halt)
//! runs against a simulated fleet, for several failure rates and halt thresholds, and prints the
//! blast radius and the times to halt. Then it measures what one outcome report costs the
//! service (signature check and count), against one bare ed25519 verification measured in the
//! same run, and prints the service's capacity in reports per second.
//!
//! ```text
//! cargo run --release -p relay-release --bin rollout-sim -- [RELAYS] [SEED]
//! ```
//!
//! The model, per relay: it learns of the version from a directory notice and checks the
//! rollout document then and every `poll` (config `release_check_interval`, default 10 min); it
//! starts once its step is open, at its next check (a uniformly random phase). It checks the
//! document right before it starts, so it never starts a halted rollout. A start takes `trial`
//! (download and health window) to end; a bad release fails with the given probability, and
//! its report reaches the service `report` later (sent by the generation that serves next, at
//! its start). The service halts the rollout once `threshold` relays of one step rolled back.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use relay_release::outcome::{Counted, Outcome, Report, Tally};
use relay_release::rollout::{Step, percent_at, position, step_of, steps};
use wireleap_protocol::PublicKey;

/// A small deterministic generator (xorshift64*), so that runs are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Scenario {
    name: &'static str,
    steps: Vec<Step>,
    poll: Duration,
    trial: Duration,
    report: Duration,
}

#[derive(Debug, Default)]
struct Result {
    tried: usize,
    failed: usize,
    halted_after: Option<Duration>,
    first_report_to_halt: Option<Duration>,
    halt_seen_by_all: Option<Duration>,
}

/// One rollout of a release that fails on a share `failure` of the relays that try it.
fn simulate(
    s: &Scenario,
    keys: &[[u8; 32]],
    failure: f64,
    threshold: u64,
    rng: &mut Rng,
) -> Result {
    let version = semver::Version::new(9, 9, rng.next() % 1000);
    // Each relay: when it would start (its step's opening, then its next check).
    let mut starts: Vec<(f64, usize)> = keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let step = step_of(&s.steps, position(k, &version))?;
            let opens = s.steps[step].after_secs as f64;
            Some((opens + rng.unit() * s.poll.as_secs_f64(), i))
        })
        .collect();
    starts.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Outcome reports arriving at the service: (time, relay, failed).
    let mut arrivals: Vec<(f64, usize, bool)> = Vec::new();
    let mut result = Result::default();
    let mut service = Service {
        steps: &s.steps,
        version: &version,
        threshold,
        tally: Tally::default(),
        halted_at: None,
        first_report: None,
    };
    let mut next_arrival = 0;
    for &(start, i) in &starts {
        // Count every report that arrived before this start, in order.
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
        while next_arrival < arrivals.len() && arrivals[next_arrival].0 <= start {
            let (t, relay, failed) = arrivals[next_arrival];
            next_arrival += 1;
            service.receive(t, keys[relay], failed);
        }
        if service.halted_at.is_some_and(|h| h <= start) {
            break;
        }
        result.tried += 1;
        let failed = rng.unit() < failure;
        if failed {
            result.failed += 1;
        }
        let end = start + s.trial.as_secs_f64() + rng.unit() * s.report.as_secs_f64();
        arrivals.push((end, i, failed));
    }
    // Reports still in flight after the last start.
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    for &(t, relay, failed) in &arrivals[next_arrival..] {
        service.receive(t, keys[relay], failed);
    }
    let (halted_at, first_report) = (service.halted_at, service.first_report);
    if let Some(h) = halted_at {
        result.halted_after = Some(Duration::from_secs_f64(h));
        result.first_report_to_halt = first_report.map(|f| Duration::from_secs_f64(h - f));
        // Every relay checks the document within one poll interval.
        result.halt_seen_by_all = Some(Duration::from_secs_f64(h) + s.poll);
    }
    result
}

/// The rollout service's side: it counts the reports as they arrive and halts.
struct Service<'a> {
    steps: &'a [Step],
    version: &'a semver::Version,
    threshold: u64,
    tally: Tally,
    halted_at: Option<f64>,
    first_report: Option<f64>,
}

impl Service<'_> {
    /// A report from `relay` arrives at `t` seconds after the start.
    fn receive(&mut self, t: f64, relay: [u8; 32], failed: bool) {
        if self.halted_at.is_some() {
            return;
        }
        let epoch = SystemTime::UNIX_EPOCH;
        let report = Report::new(
            PublicKey::from_bytes(relay),
            self.version,
            &semver::Version::new(9, 8, 0),
            if failed {
                Outcome::RolledBack
            } else {
                Outcome::Committed
            },
            failed.then_some("probe"),
            epoch,
        );
        if failed {
            self.first_report.get_or_insert(t);
        }
        let open = percent_at(self.steps, epoch, epoch + Duration::from_secs_f64(t));
        if let Counted::Step(_) = self.tally.record(&report, self.steps, open)
            && self
                .tally
                .halt_reason(self.steps.len(), self.threshold)
                .is_some()
        {
            self.halted_at = Some(t);
        }
    }
}

fn hms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| {
            let s = d.as_secs();
            format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
        },
    )
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let relays: usize = args
        .next()
        .map_or(Ok(10_000), |a| a.parse())
        .context("RELAYS")?;
    let seed: u64 = args.next().map_or(Ok(7), |a| a.parse()).context("SEED")?;
    let mut rng = Rng(seed.max(1));
    let keys: Vec<[u8; 32]> = (0..relays)
        .map(|_| {
            let mut k = [0u8; 32];
            for chunk in k.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_be_bytes());
            }
            k
        })
        .collect();
    let scenarios = [
        Scenario {
            name: "days: 1% now, 5% at 6h, 25% at 24h, 100% at 72h; checks every 10 min",
            steps: steps(&[
                (0, 1.0),
                (6 * 3600, 5.0),
                (24 * 3600, 25.0),
                (72 * 3600, 100.0),
            ]),
            poll: Duration::from_secs(600),
            trial: Duration::from_secs(120),
            report: Duration::from_secs(10),
        },
        Scenario {
            name: "the acceptance schedule: 10% now, 50% at 1h, 100% at 2h; checks every 10 min",
            steps: steps(&[(0, 10.0), (3600, 50.0), (7200, 100.0)]),
            poll: Duration::from_secs(600),
            trial: Duration::from_secs(120),
            report: Duration::from_secs(10),
        },
    ];
    println!("{relays} simulated relays, seed {seed}");
    for s in &scenarios {
        println!("\n{}", s.name);
        println!(
            "{:>9} {:>9} | {:>14} {:>8} | {:>12} {:>16} {:>16}",
            "failure",
            "halt at",
            "blast radius",
            "failed",
            "halted at",
            "1st report→halt",
            "all saw halt"
        );
        for failure in [1.0, 0.5, 0.1, 0.01, 0.001] {
            for threshold in [1u64, 2, 5, 10] {
                let r = simulate(s, &keys, failure, threshold, &mut rng);
                println!(
                    "{:>8.1}% {:>9} | {:>6} {:>6.2}% {:>8} | {:>12} {:>16} {:>16}",
                    failure * 100.0,
                    threshold,
                    r.tried,
                    r.tried as f64 * 100.0 / relays as f64,
                    r.failed,
                    hms(r.halted_after),
                    hms(r.first_report_to_halt),
                    hms(r.halt_seen_by_all),
                );
            }
        }
    }
    bench_reports(&mut rng)
}

/// The service's cost per report: signature check and count, against a bare ed25519 check.
fn bench_reports(rng: &mut Rng) -> anyhow::Result<()> {
    const N: usize = 5_000;
    let version = semver::Version::new(9, 9, 9);
    let steps = steps(&[(0, 100.0)]);
    let signed: Vec<(Vec<u8>, Vec<u8>, wireleap_protocol::Signature, PublicKey)> = (0..N)
        .map(|_| {
            let mut seed = [0u8; 32];
            for chunk in seed.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_be_bytes());
            }
            let key = wireleap_protocol::SigningKey::from_bytes(&seed);
            let public = PublicKey::from(&key);
            let report = Report::new(
                public,
                &version,
                &semver::Version::new(9, 9, 8),
                Outcome::RolledBack,
                Some("probe"),
                SystemTime::now(),
            );
            let envelope = report.sign(&key).map_err(anyhow::Error::from)?;
            let message = b"the same message, signed once".to_vec();
            let signature = wireleap_protocol::keys::sign(&key, &message);
            Ok((envelope, message, signature, public))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut best_bare = Duration::MAX;
    let mut best_report = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for (_, message, signature, public) in &signed {
            anyhow::ensure!(public.verify(message, signature), "bare verify");
        }
        best_bare = best_bare.min(t.elapsed());
        let mut tally = Tally::default();
        let t = Instant::now();
        for (envelope, ..) in &signed {
            let report = Report::verify(envelope)?;
            tally.record(&report, &steps, 100.0);
            let _ = tally.halt_reason(steps.len(), u64::MAX);
        }
        best_report = best_report.min(t.elapsed());
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
    println!(
        "\nservice cost per report ({N} reports, best of 3): {:.1} µs (verify and count) vs {:.1} µs (a bare ed25519 verify): ratio {:.2}; about {:.0} reports/s on one core",
        per(best_report),
        per(best_bare),
        best_report.as_secs_f64() / best_bare.as_secs_f64(),
        N as f64 / best_report.as_secs_f64()
    );
    Ok(())
}

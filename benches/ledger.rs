//! Durable sharetoken intake (issue #5): tokens/s through the real `Ledger` actor over a real
//! SQLite file (WAL, `synchronous=FULL`, group commit), and the admission delay it adds, each
//! against baselines measured in the same run:
//! - `memory`: the previous ledger, an in-memory replay set behind the same actor round trip;
//! - `raw INSERT`: one fsynced transaction per token, no grouping (what group commit buys).
//!
//! - `disk floor`: the p50/p99 of a bare `fdatasync` on the same disk, in the same run. A token
//!   must be on disk before its stream is admitted, so no durable ledger can add less than this
//!   to the p99 on this disk; on a shared machine it moves with everyone else's I/O.
//!
//! - `one at a time`: a lone stream's token, nothing to group it with, against the memory set;
//!   with a new ledger, and again after the saturation run, the ledger then holding 106 000
//!   tokens (its page cache full, the replay index larger than the cache).
//!
//! Run: `cargo bench --bench ledger` (release); `BENCH_QUICK=1` for the one-at-a-time run and
//! two paced rates only (about 30 s). The temp dir is on the disk the tests use.
//! Target (issue #5): ≥ 20 000 tokens/s, p99 added delay < 5 ms (shown at offered loads of
//! 2 000 to 20 000 tokens/s; on 2 cores the tail grows with the CPU the ledger takes).

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/disk.rs"]
mod disk;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix::prelude::*;
use wireleap_protocol::keys::{Signature, generate_signing_key};
use wireleap_protocol::{Contract, PublicKey, Servicekey, Sharetoken, unix_now};
use wireleap_relay::config;
use wireleap_relay::directory::Admission;
use wireleap_relay::directory::client::Client;
use wireleap_relay::ledger::{AdmitError, AdmitToken, Flush, Ledger};

/// Tokens per saturation run.
const N: usize = 100_000;
/// Admissions in flight at saturation (streams being opened at once).
const CONCURRENCY: usize = 256;
/// Offered loads of the latency runs, tokens per second, highest first.
const PACED_RATES: [usize; 4] = [20_000, 10_000, 5_000, 2_000];
/// Tokens of the one-at-a-time run.
const ONE_AT_A_TIME: usize = 3_000;
/// Between two tokens of that run: about the rest of one stream's set-up through a relay.
const ONE_GAP: Duration = Duration::from_micros(300);
/// Length of the latency run.
const PACED_FOR: Duration = Duration::from_secs(3);

/// The old ledger: a replay set in memory, same message, same actor hop.
struct MemoryLedger(HashSet<(String, String, String)>);

impl Actor for MemoryLedger {
    type Context = Context<Self>;
}

impl Handler<AdmitToken> for MemoryLedger {
    type Result = Result<(), AdmitError>;
    fn handle(&mut self, AdmitToken(t): AdmitToken, _: &mut Self::Context) -> Self::Result {
        let key = (
            t.contract
                .public_key
                .map(|k| k.to_b64())
                .unwrap_or_default(),
            t.public_key.to_b64(),
            t.signature.to_b64(),
        );
        if self.0.insert(key) {
            Ok(())
        } else {
            Err(AdmitError::Duplicate)
        }
    }
}

/// `n` distinct tokens (distinct signatures; the ledger does not verify, the transport did).
fn tokens(n: usize) -> Vec<Sharetoken> {
    let now = unix_now();
    let contract = Contract::sign(&generate_signing_key(), now + 600, now + 3600);
    let sk = Servicekey::from_signing_key(generate_signing_key(), Some(contract));
    let relay = PublicKey::from(&generate_signing_key());
    let base = Sharetoken::new(&sk, relay, now).unwrap();
    (0..n)
        .map(|_| {
            let mut t = base.clone();
            t.signature = Signature::from_bytes(rand_sig());
            t
        })
        .collect()
}

fn rand_sig() -> [u8; 64] {
    let a: [u8; 32] = rand::random();
    let b: [u8; 32] = rand::random();
    let mut s = [0u8; 64];
    s[..32].copy_from_slice(&a);
    s[32..].copy_from_slice(&b);
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Tokens per second of this process's CPU time (user + system): what the code costs,
    /// whatever else the machine runs.
    per_cpu_s: f64,
}

/// CPU time of this process so far (`/proc/self/stat` utime + stime).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields after the command: state is index 0, utime 11, stime 12 (clock ticks, 100 Hz).
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Saturation: `CONCURRENCY` tasks admit `tokens` as fast as the ledger answers.
async fn saturate(r: Recipient<AdmitToken>, tokens: Vec<Sharetoken>) -> Run {
    let chunks: Vec<Vec<Sharetoken>> = tokens
        .chunks(tokens.len().div_ceil(CONCURRENCY))
        .map(<[Sharetoken]>::to_vec)
        .collect();
    let start = Instant::now();
    let cpu0 = cpu_time();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let r = r.clone();
            actix_rt::spawn(async move {
                let mut lat = Vec::with_capacity(chunk.len());
                for t in chunk {
                    let t0 = Instant::now();
                    r.send(AdmitToken(t)).await.unwrap().unwrap();
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    summarize(lat, elapsed, cpu_time().saturating_sub(cpu0))
}

/// One admission at a time, [`ONE_GAP`] apart (the rest of a stream's set-up between two
/// tokens): the delay a lone stream's token adds, with nothing to group it with.
async fn one_at_a_time(r: Recipient<AdmitToken>) -> Run {
    let start = Instant::now();
    let cpu0 = cpu_time();
    let mut lat = Vec::with_capacity(ONE_AT_A_TIME);
    for t in tokens(ONE_AT_A_TIME) {
        let t0 = Instant::now();
        r.send(AdmitToken(t)).await.unwrap().unwrap();
        lat.push(t0.elapsed());
        let until = Instant::now() + ONE_GAP;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    let elapsed = start.elapsed();
    summarize(lat, elapsed, cpu_time().saturating_sub(cpu0))
}

/// [`one_at_a_time`] through the memory set, then through the durable ledger.
async fn one_at_a_time_each(mem: &Addr<MemoryLedger>, ledger: &Addr<Ledger>) -> (Run, Run) {
    let m = one_at_a_time(mem.clone().recipient()).await;
    let d = one_at_a_time(ledger.clone().recipient()).await;
    (m, d)
}

/// Open loop at `rate`: a batch every millisecond, each admission its own task, as the
/// transport's stream tasks do.
async fn paced(r: Recipient<AdmitToken>, tokens: Vec<Sharetoken>, rate: usize) -> Run {
    let per_ms = rate / 1000;
    let mut it = tokens.into_iter();
    let start = Instant::now();
    let cpu0 = cpu_time();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut tasks = Vec::new();
    while start.elapsed() < PACED_FOR {
        tick.tick().await;
        for _ in 0..per_ms {
            let Some(t) = it.next() else { break };
            let r = r.clone();
            tasks.push(actix_rt::spawn(async move {
                let t0 = Instant::now();
                r.send(AdmitToken(t)).await.unwrap().unwrap();
                t0.elapsed()
            }));
        }
    }
    let mut lat = Vec::with_capacity(tasks.len());
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    summarize(lat, elapsed, cpu_time().saturating_sub(cpu0))
}

fn summarize(mut lat: Vec<Duration>, elapsed: Duration, cpu: Duration) -> Run {
    lat.sort_unstable();
    Run {
        per_cpu_s: lat.len() as f64 / cpu.as_secs_f64().max(0.001),
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}

fn durable_ledger(home: &std::path::Path) -> Ledger {
    let cfg = config::parse(
        br#"{"address": "127.0.0.1:0", "auto_submit_interval": "0",
             "contracts": {"https://contract.invalid": {"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}"#,
    )
    .unwrap()
    .config;
    let client = Client::try_new(generate_signing_key(), "bench").unwrap();
    Ledger::try_open(home, &cfg, client, Admission::new()).unwrap()
}

/// One fsynced transaction per token (no grouping), for `budget`.
fn raw_insert(home: &std::path::Path, tokens: &[Sharetoken], budget: Duration) -> f64 {
    let conn = relay_migrations::ledger::open(&home.join("raw.db")).unwrap();
    relay_migrations::ledger::ensure_schema(&conn).unwrap();
    let start = Instant::now();
    let mut n = 0;
    for t in tokens {
        if start.elapsed() > budget {
            break;
        }
        conn.execute(
            "INSERT INTO tokens (body, settlement_open, settlement_close, admitted_at,
                 next_attempt)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                serde_json::to_string(t).unwrap(),
                t.contract.settlement_open,
                t.contract.settlement_close,
                unix_now(),
                t.contract.settlement_open + 1,
            ],
        )
        .unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn line(name: &str, r: &Run) {
    println!(
        "{name:<28} {:>9.0} tokens/s ({:>7.0}/CPU-s)   p50 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        r.rate,
        r.per_cpu_s,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.max.as_secs_f64() * 1e3
    );
}

fn print_floor(floor: &[Duration]) {
    println!(
        "disk floor: fdatasync of a 4 KiB overwrite, {} times: p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
        floor.len(),
        percentile(floor, 0.50).as_secs_f64() * 1e3,
        percentile(floor, 0.99).as_secs_f64() * 1e3,
        floor.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

fn print_one(ledger: &str, mem: &Run, dur: &Run) {
    println!("one admission at a time, {ONE_AT_A_TIME} tokens, {ONE_GAP:?} apart, {ledger}:");
    line("  memory set (baseline)", mem);
    line("  durable ledger", dur);
    println!(
        "  added by durability: p50 {:.3} ms   p99 {:.3} ms",
        dur.p50.saturating_sub(mem.p50).as_secs_f64() * 1e3,
        dur.p99.saturating_sub(mem.p99).as_secs_f64() * 1e3
    );
}

fn main() {
    // `BENCH_QUICK=1`: the one-at-a-time run and two paced rates only (about 30 s, for A/B
    // comparisons of the durable path; no saturation or raw INSERT figures).
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let dir = tempfile::Builder::new()
        .prefix("ledger-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let paced_n = |rate: usize| rate * (PACED_FOR.as_secs() as usize + 1);
    let raw_rate =
        (!quick).then(|| raw_insert(dir.path(), &tokens(20_000), Duration::from_secs(2)));
    let floor = disk::fdatasync_floor(dir.path(), 500, 4096, true);
    let rates: &[usize] = if quick {
        &[10_000, 5_000]
    } else {
        &PACED_RATES
    };

    let sys = actix_rt::System::new();
    let (mem_one, dur_one, saturation, latency) = sys.block_on(async {
        let mem = MemoryLedger(HashSet::new()).start();
        let ledger = durable_ledger(dir.path()).start();
        // Two interleaved rounds, so both see the same machine; the first warms both up.
        one_at_a_time_each(&mem, &ledger).await;
        let (mem_one, dur_one) = one_at_a_time_each(&mem, &ledger).await;
        let saturation = if quick {
            None
        } else {
            let m = saturate(mem.clone().recipient(), tokens(N)).await;
            let d = saturate(ledger.clone().recipient(), tokens(N)).await;
            // Again one at a time, now that the ledger holds what a busy relay's does: its page
            // cache full, the replay index larger than the cache.
            let (m1, d1) = one_at_a_time_each(&mem, &ledger).await;
            Some((m, d, m1, d1))
        };
        let mut latency = Vec::new();
        for &rate in rates {
            let m = paced(mem.clone().recipient(), tokens(paced_n(rate)), rate).await;
            let d = paced(ledger.clone().recipient(), tokens(paced_n(rate)), rate).await;
            latency.push((rate, m, d));
        }
        ledger.send(Flush).await.unwrap();
        (mem_one, dur_one, saturation, latency)
    });

    let db = dir.path().join(relay_migrations::ledger::DB_FILE);
    let wal = std::fs::metadata(relay_migrations::ledger::wal_path(&db)).map_or(0, |m| m.len());
    let stored: i64 = relay_migrations::ledger::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))
        .unwrap();
    println!(
        "after the flush of a graceful stop: WAL {:.1} MiB (target ≤ 4 MiB); ledger.db {} tokens, {} bytes per token",
        wal as f64 / (1 << 20) as f64,
        stored,
        std::fs::metadata(&db).map_or(0, |m| m.len()) / stored.max(1) as u64
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    print_floor(&floor);
    print_one("a new ledger", &mem_one, &dur_one);
    if let (Some((mem_sat, dur_sat, mem_full, dur_full)), Some(raw_rate)) = (&saturation, raw_rate)
    {
        println!("ledger intake, {N} tokens at {CONCURRENCY} in flight (saturation):");
        line("  memory set (baseline)", mem_sat);
        line("  durable ledger", dur_sat);
        println!("  raw INSERT, 1 fsync/token  {raw_rate:>9.0} tokens/s");
        println!(
            "  durable / raw INSERT: {:.1}x   durable / memory: {:.3}x",
            dur_sat.rate / raw_rate,
            dur_sat.rate / mem_sat.rate
        );
        print_one(
            &format!("the ledger holding {} tokens", ONE_AT_A_TIME * 2 + N),
            mem_full,
            dur_full,
        );
    }
    for (rate, mem, dur) in &latency {
        println!("admission delay at an offered {rate} tokens/s for {PACED_FOR:?}:");
        line("  memory set (baseline)", mem);
        line("  durable ledger", dur);
        let added = dur.p99.saturating_sub(mem.p99);
        println!(
            "  p99 delay added by durability: {:.3} ms (target < 5 ms)",
            added.as_secs_f64() * 1e3
        );
    }
    let within = latency
        .iter()
        .filter(|(_, mem, dur)| dur.p99.saturating_sub(mem.p99) < Duration::from_millis(5))
        .map(|(rate, _, _)| *rate)
        .max();
    match within {
        Some(rate) => println!("p99 added delay under 5 ms up to an offered {rate} tokens/s"),
        None => println!("p99 added delay under 5 ms: at none of the offered rates"),
    }
    if let Some((_, dur_sat, _, _)) = &saturation {
        println!(
            "throughput target 20000/s: {}",
            if dur_sat.rate >= 20_000.0 {
                "met"
            } else {
                "NOT met on this run"
            }
        );
    }
}

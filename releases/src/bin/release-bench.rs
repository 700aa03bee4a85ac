//! `release-bench`: measures full release verification against `sha512sum` on the same file,
//! in one run. Build with `--release`:
//!
//! ```text
//! cargo run --release -p relay-release --bin release-bench -- [SIZE_MIB] [RUNS]
//! ```
//!
//! It writes a file of SIZE_MIB (default 50) pseudo-random bytes to a temp dir, signs a
//! statement for it with a fresh key, reads the file once to warm the page cache, then times
//! RUNS (default 5) rounds of `sha512sum <file>` and of our full verification (statement read,
//! signature, every field, size and SHA-512 of the file), and prints the best and median of
//! each and the ratio of the medians. Target: at most 1.5x.

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use relay_release::layout::{asset_name, statement_name};
use relay_release::manifest::whole_seconds;
use relay_release::{
    Expected, ExpiryCheck, FileEntry, Product, SigningKey, Statement, Target, VersionFloor,
    parse_version, sign, verify, verify_release_files,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let size_mib: u64 = args
        .next()
        .map_or(Ok(50), |a| a.parse())
        .context("SIZE_MIB")?;
    let runs: usize = args.next().map_or(Ok(5), |a| a.parse()).context("RUNS")?;
    if runs == 0 {
        bail!("RUNS must be positive");
    }

    let dir = tempfile::tempdir()?;
    let product = Product::relay();
    let target = Target::host()?;
    let asset = asset_name(&product, &target);
    let asset_path = dir.path().join(&asset);
    write_random(&asset_path, size_mib << 20)?;

    // The keys must be older than the statement they sign.
    let issued = whole_seconds(SystemTime::now() - Duration::from_secs(60));
    let created = issued - Duration::from_secs(3600);
    let key = SigningKey::generate_at("bench <bench@example.invalid>", created)?;
    let keys = key.trusted()?;
    let version = parse_version("9.9.9")?;
    let entry = FileEntry::digest(&asset, std::fs::File::open(&asset_path)?, &asset_path)?;
    let statement = Statement {
        product: product.clone(),
        version: version.clone(),
        target: target.clone(),
        issued,
        expires: issued + Duration::from_secs(86_400),
        files: vec![entry],
    };
    let name = statement_name(&asset);
    let statement_path = dir.path().join(&name);
    std::fs::write(
        &statement_path,
        sign::sign_statement(&key, &statement, &name)?,
    )?;
    let expected = Expected {
        product,
        version,
        target,
        floor: VersionFloor::Above {
            running: parse_version("0.7.0")?,
            highest_committed: None,
        },
        expiry: ExpiryCheck::At(SystemTime::now()),
    };

    // Warm the page cache so that both sides read from memory.
    std::fs::read(&asset_path)?;

    let mut ours = Vec::with_capacity(runs);
    let mut theirs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new("sha512sum")
            .arg(&asset_path)
            .output()
            .context("running sha512sum (coreutils)")?;
        theirs.push(t.elapsed());
        if !out.status.success() {
            bail!("sha512sum failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        let t = Instant::now();
        verify_release_files(&statement_path, &asset_path, &keys, &expected)?;
        ours.push(t.elapsed());
    }
    ours.sort();
    theirs.sort();

    // The signature check alone: one signature, then three of which two are required (a 2-of-3
    // root's release role), on the same statement text.
    let others = [
        SigningKey::generate_at("bench2 <b2@example.invalid>", created)?,
        SigningKey::generate_at("bench3 <b3@example.invalid>", created)?,
    ];
    let mut two_of_three = keys.clone();
    for k in &others {
        two_of_three = two_of_three.with_armored(&k.public_armored()?, "bench key")?;
    }
    let two_of_three = two_of_three.with_threshold(2);
    let three = sign::clearsign_by(
        &[key.clone(), others[0].clone(), others[1].clone()],
        &statement.render(&name),
        issued,
    )?;
    let one = std::fs::read(&statement_path)?;
    let mut sig_one = Vec::new();
    let mut sig_three = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        verify::verify_statement(&one, &keys, &expected)?;
        sig_one.push(t.elapsed());
        let t = Instant::now();
        verify::verify_statement(&three, &two_of_three, &expected)?;
        sig_three.push(t.elapsed());
    }
    sig_one.sort();
    sig_three.sort();
    let median = |v: &[Duration]| v.get(v.len() / 2).copied().unwrap_or_default();
    let best = |v: &[Duration]| v.first().copied().unwrap_or_default();
    let ratio = median(&ours).as_secs_f64() / median(&theirs).as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(out, "file: {size_mib} MiB, {runs} runs")?;
    writeln!(
        out,
        "sha512sum:            best {:>8.1} ms  median {:>8.1} ms",
        ms(best(&theirs)),
        ms(median(&theirs))
    )?;
    writeln!(
        out,
        "verify_release_files: best {:>8.1} ms  median {:>8.1} ms",
        ms(best(&ours)),
        ms(median(&ours))
    )?;
    writeln!(
        out,
        "ratio (median ours / median sha512sum): {ratio:.2} (target <= 1.50); best/best: {:.2}",
        best(&ours).as_secs_f64() / best(&theirs).as_secs_f64()
    )?;
    writeln!(
        out,
        "statement, 1 signature (1 of 1):   median {:>6.2} ms",
        ms(median(&sig_one))
    )?;
    writeln!(
        out,
        "statement, 3 signatures (2 of 3):  median {:>6.2} ms  ({:.2}x)",
        ms(median(&sig_three)),
        median(&sig_three).as_secs_f64() / median(&sig_one).as_secs_f64()
    )?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `len` bytes of xorshift output (incompressible, deterministic).
fn write_random(path: &std::path::Path, len: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = usize::try_from(left.min(buf.len() as u64))?;
        file.write_all(buf.get(..n).unwrap_or_default())?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

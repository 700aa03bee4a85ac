//! `release-tool`: creates signing keys, publishes signed releases into a release tree, points
//! channels at versions, and verifies releases. The CLI is documented in `releases/SPEC.md`
//! ("Release tool"); the demo network and the tests of other crates drive it.
//!
//! Exit codes: 0 success, 2 usage (clap), 65 a release failed to verify (bad release data),
//! 1 anything else.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use relay_release::layout::{CHANGELOG_NAME, asset_name, statement_name};
use relay_release::manifest::{format_time, parse_time, whole_seconds};
use relay_release::{
    Channels, Error, Expected, ExpiryCheck, FileEntry, Product, ReleaseDir, SigningKey, Statement,
    Target, TrustedKeys, VersionFloor, durable, parse_version, sign, verify,
};

/// Sign, publish and verify Wireleap relay releases.
#[derive(Debug, Parser)]
#[command(name = "release-tool", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new signing key: OUT.key (secret, mode 0600) and OUT.pub (public).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
        /// The key's user id.
        #[arg(
            long,
            default_value = "Wireleap relay releases <releases@example.invalid>"
        )]
        user_id: String,
    },
    /// Import an existing unencrypted OpenPGP secret key (e.g. from `sq key generate`, or
    /// `gpg --export-secret-keys` of a key without passphrase) as OUT.key and OUT.pub.
    Import {
        /// The secret key file (armoured or binary).
        #[arg(long)]
        secret: PathBuf,
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish one binary: copy it and the changelog into ROOT/vVERSION/ and write the
    /// signed statement ASSET.hash beside them.
    Publish {
        /// The release tree's root (served as the base URL).
        #[arg(long)]
        root: PathBuf,
        /// The secret signing key file.
        #[arg(long)]
        key: PathBuf,
        /// The release's version (plain semver).
        #[arg(long)]
        version: String,
        /// The built binary.
        #[arg(long)]
        binary: PathBuf,
        /// The changelog (Markdown). Required on the first publish of a version; later
        /// publishes of other targets must give the same file or none.
        #[arg(long)]
        changelog: Option<PathBuf>,
        /// The product.
        #[arg(long, default_value = "wireleap-relay")]
        product: String,
        /// The binary's target `<os>-<arch>`; default: this machine's.
        #[arg(long)]
        target: Option<String>,
        /// How long the statement stays valid: `<n>d`, `<n>h`, `<n>m` or `<n>s`.
        #[arg(long, default_value = "180d")]
        valid_for: String,
        /// The issue time, RFC 3339 UTC (`2026-11-22T00:00:00Z`); default: now.
        #[arg(long)]
        issued: Option<String>,
    },
    /// Write VERSION into the version slot of a relay binary (before `publish`), so that one
    /// build can be released as that version; OUTPUT gets the stamped copy (mode 0755).
    Stamp {
        /// The version to write (plain semver).
        #[arg(long)]
        version: String,
        /// The built binary.
        input: PathBuf,
        /// Where the stamped copy goes (may be INPUT itself).
        output: PathBuf,
    },
    /// Clear-sign an arbitrary text file (for hand-made fixtures).
    Clearsign {
        /// The secret signing key file.
        #[arg(long)]
        key: PathBuf,
        /// The text to sign.
        input: PathBuf,
        /// Where to write the signed text.
        output: PathBuf,
    },
    /// Channels in ROOT/channels.json.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Verify a release statement and binary, as the upgrader would.
    Verify {
        /// The statement (`ASSET.hash`).
        #[arg(long)]
        statement: PathBuf,
        /// The binary; without it only the statement is checked.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The version expected.
        #[arg(long)]
        version: String,
        /// The product expected.
        #[arg(long, default_value = "wireleap-relay")]
        product: String,
        /// The target expected; default: this machine's.
        #[arg(long)]
        target: Option<String>,
        /// Extra trusted public key files (repeatable).
        #[arg(long = "trust")]
        trust: Vec<PathBuf>,
        /// Do not trust the embedded project key.
        #[arg(long)]
        no_project_key: bool,
        /// Refuse versions not above this running version.
        #[arg(long)]
        running: Option<String>,
        /// Refuse versions not above this highest committed version.
        #[arg(long)]
        committed: Option<String>,
        /// Check expiry at this time (RFC 3339 UTC) instead of now.
        #[arg(long)]
        now: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Point a channel at a version (written atomically).
    Set {
        /// The release tree's root.
        #[arg(long)]
        root: PathBuf,
        /// The product.
        #[arg(long, default_value = "wireleap-relay")]
        product: String,
        /// The channel, e.g. `default`.
        channel: String,
        /// The version.
        version: String,
    },
    /// Print channels.json.
    Show {
        /// The release tree's root.
        #[arg(long)]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("release-tool: {e:#}");
            let bad_data = e.downcast_ref::<Error>().is_some_and(Error::is_peer_fault);
            ExitCode::from(if bad_data { 65 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out, user_id } => {
            let key = SigningKey::generate(&user_id)?;
            write_key_pair(&key, &out)
        }
        Command::Import { secret, out } => {
            let key = SigningKey::from_file(&secret)?;
            write_key_pair(&key, &out)
        }
        Command::Publish {
            root,
            key,
            version,
            binary,
            changelog,
            product,
            target,
            valid_for,
            issued,
        } => publish(&Publish {
            root,
            key,
            version,
            binary,
            changelog,
            product,
            target,
            valid_for,
            issued,
        }),
        Command::Stamp {
            version,
            input,
            output,
        } => {
            let version = parse_version(&version)?;
            let mut bytes =
                fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            relay_release::stamp::stamp(&mut bytes, &version)
                .with_context(|| format!("stamping {}", input.display()))?;
            durable::write_file(&output, &bytes, 0o755)?;
            println!("{}: {version}", output.display());
            Ok(())
        }
        Command::Clearsign { key, input, output } => {
            let key = SigningKey::from_file(&key)?;
            let text = fs::read_to_string(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let signed = sign::clearsign(&key, &text, SystemTime::now())?;
            durable::write_file(&output, &signed, 0o644)?;
            Ok(())
        }
        Command::Channel {
            command:
                ChannelCommand::Set {
                    root,
                    product,
                    channel,
                    version,
                },
        } => {
            let dir = ReleaseDir::new(root);
            let path = dir.channels_path();
            let mut channels = match fs::read(&path) {
                Ok(bytes) => Channels::parse(&bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Channels::default(),
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            channels.set(
                &Product::try_new(&product)?,
                &channel,
                parse_version(&version)?,
            )?;
            fs::create_dir_all(dir.root())?;
            durable::write_file(&path, channels.to_json().as_bytes(), 0o644)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Channel {
            command: ChannelCommand::Show { root },
        } => {
            let path = ReleaseDir::new(root).channels_path();
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            print!("{}", Channels::parse(&bytes)?.to_json());
            Ok(())
        }
        Command::Verify {
            statement,
            binary,
            version,
            product,
            target,
            trust,
            no_project_key,
            running,
            committed,
            now,
        } => {
            let mut keys = if no_project_key {
                TrustedKeys::empty()
            } else {
                TrustedKeys::project()?
            };
            for path in &trust {
                keys = keys.with_file(path)?;
            }
            if keys.is_empty() {
                bail!("no trusted key: give --trust or drop --no-project-key");
            }
            let floor = match (running, committed) {
                (None, None) => VersionFloor::UnsafeAllowAny,
                (running, committed) => VersionFloor::Above {
                    running: parse_version(running.as_deref().unwrap_or("0.0.0"))?,
                    highest_committed: committed.as_deref().map(parse_version).transpose()?,
                },
            };
            let now = match now {
                Some(t) => parse_time(&t).context("--now is not RFC 3339 UTC")?,
                None => SystemTime::now(),
            };
            let expected = Expected {
                product: Product::try_new(&product)?,
                version: parse_version(&version)?,
                target: target_or_host(target.as_deref())?,
                floor,
                expiry: ExpiryCheck::At(now),
            };
            let verified = match &binary {
                Some(bin) => verify::verify_release_files(&statement, bin, &keys, &expected)?,
                None => {
                    let bytes = verify::read_statement(&statement)?;
                    verify::verify_statement(&bytes, &keys, &expected)?
                }
            };
            println!(
                "OK {} {} {} signed by {} expires {}{}",
                verified.statement.product,
                verified.statement.version,
                verified.statement.target,
                verified.signer,
                format_time(verified.statement.expires),
                if binary.is_some() {
                    " (binary size and SHA-512 match)"
                } else {
                    " (statement only)"
                }
            );
            Ok(())
        }
    }
}

#[derive(Debug)]
struct Publish {
    root: PathBuf,
    key: PathBuf,
    version: String,
    binary: PathBuf,
    changelog: Option<PathBuf>,
    product: String,
    target: Option<String>,
    valid_for: String,
    issued: Option<String>,
}

fn publish(p: &Publish) -> anyhow::Result<()> {
    let key = SigningKey::from_file(&p.key)?;
    let version = parse_version(&p.version)?;
    let product = Product::try_new(&p.product)?;
    let target = target_or_host(p.target.as_deref())?;
    let issued = match &p.issued {
        Some(t) => parse_time(t).context("--issued is not RFC 3339 UTC")?,
        None => whole_seconds(SystemTime::now()),
    };
    let expires = issued + parse_span(&p.valid_for)?;
    let dir = ReleaseDir::new(&p.root);
    let asset = asset_name(&product, &target);
    let vdir = dir.version_dir(&version);
    fs::create_dir_all(&vdir).with_context(|| format!("creating {}", vdir.display()))?;

    let changelog_path = dir.file_path(&version, CHANGELOG_NAME)?;
    match (&p.changelog, changelog_path.exists()) {
        (Some(src), true) => {
            if fs::read(src)? != fs::read(&changelog_path)? {
                bail!(
                    "{} differs from the changelog already published for {version}",
                    src.display()
                );
            }
        }
        (Some(src), false) => {
            let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
            durable::write_file(&changelog_path, &data, 0o644)?;
        }
        (None, true) => {}
        (None, false) => bail!("--changelog is required for the first publish of {version}"),
    }

    let asset_path = dir.file_path(&version, &asset)?;
    let data = fs::read(&p.binary).with_context(|| format!("reading {}", p.binary.display()))?;
    durable::write_file(&asset_path, &data, 0o755)?;

    let files = vec![
        digest(&asset_path, &asset)?,
        digest(&changelog_path, CHANGELOG_NAME)?,
    ];
    let statement = Statement {
        product,
        version: version.clone(),
        target,
        issued,
        expires,
        files,
    };
    let name = statement_name(&asset);
    let signed = sign::sign_statement(&key, &statement, &name)?;
    let statement_path = dir.file_path(&version, &name)?;
    durable::write_file(&statement_path, &signed, 0o644)?;
    println!("{}", asset_path.display());
    println!("{}", statement_path.display());
    println!(
        "signed by {} until {}",
        key.fingerprint(),
        format_time(expires)
    );
    Ok(())
}

fn digest(path: &Path, name: &str) -> anyhow::Result<FileEntry> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(FileEntry::digest(name, file, path)?)
}

fn write_key_pair(key: &SigningKey, out: &Path) -> anyhow::Result<()> {
    let secret = with_suffix(out, ".key");
    let public = with_suffix(out, ".pub");
    key.write_secret(&secret)?;
    durable::write_file(&public, &key.public_armored()?, 0o644)?;
    println!("{}", key.fingerprint());
    println!("secret: {}", secret.display());
    println!("public: {}", public.display());
    Ok(())
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn target_or_host(target: Option<&str>) -> anyhow::Result<Target> {
    Ok(match target {
        Some(t) => Target::parse(t)?,
        None => Target::host()?,
    })
}

/// Parses `<n>d`, `<n>h`, `<n>m` or `<n>s`.
fn parse_span(text: &str) -> anyhow::Result<Duration> {
    let split = text.len().saturating_sub(1);
    let (num, unit) = (text.get(..split), text.get(split..));
    let n: u64 = num
        .filter(|n| !n.is_empty())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("bad duration {text:?}: expected e.g. 180d, 12h, 30m, 45s"))?;
    let secs = match unit {
        Some("d") => n.checked_mul(86_400),
        Some("h") => n.checked_mul(3_600),
        Some("m") => n.checked_mul(60),
        Some("s") => Some(n),
        _ => None,
    }
    .with_context(|| format!("bad duration {text:?}: expected e.g. 180d, 12h, 30m, 45s"))?;
    if secs == 0 {
        bail!("duration {text:?} must be positive");
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_shape() {
        Cli::command().debug_assert();
    }

    #[test]
    fn spans() {
        assert_eq!(parse_span("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_span("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_span("d").is_err());
        assert!(parse_span("0d").is_err());
        assert!(parse_span("5w").is_err());
    }
}

//! `release-tool`: creates signing keys, publishes signed releases into a release tree, points
//! channels at versions, and verifies releases. The CLI is documented in `releases/SPEC.md`
//! ("Release tool"); the demo network and the tests of other crates drive it.
//!
//! Exit codes: 0 success, 2 usage (clap), 65 a release failed to verify (bad release data),
//! 1 anything else.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use relay_release::layout::{CHANGELOG_NAME, asset_name, statement_name};
use relay_release::manifest::{format_time, parse_time, whole_seconds};
use relay_release::root::RoleKeys;
use relay_release::{
    Channels, Error, Expected, ExpiryCheck, FileEntry, Product, ReleaseDir, Role, Root, SigningKey,
    Statement, Target, TrustedKeys, VersionFloor, durable, parse_version, sign, verify,
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
        /// The key's creation time, RFC 3339 UTC; default: now (fixtures signed in the past
        /// need older keys).
        #[arg(long)]
        created: Option<String>,
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
        /// A secret signing key file; repeat it to sign with several keys (a root's threshold).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// The release's version (plain semver).
        #[arg(long)]
        version: String,
        /// The built binary.
        #[arg(long)]
        binary: PathBuf,
        /// The release's supervisor (`wireleap-relay-supervisor`), published beside the relay
        /// binary and signed by the same statement.
        #[arg(long)]
        supervisor: Option<PathBuf>,
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
    /// Add a signature to a clear-signed file (a statement or a root) in place, keeping the
    /// signatures it has: each key holder runs it in turn until the threshold is reached.
    Sign {
        /// A secret signing key file (repeatable).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// The signed file.
        file: PathBuf,
    },
    /// Roots: which keys may sign what, and how many of them must (docs/releasing.md).
    Root {
        #[command(subcommand)]
        command: RootCommand,
    },
    /// Channels in ROOT/channels.json.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Phased rollouts: the rollout service and its commands (docs/releasing.md).
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
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
        /// Trusted public key files, any one of which may sign (repeatable; without a root).
        #[arg(long = "trust")]
        trust: Vec<PathBuf>,
        /// A trusted root: its release keys and threshold decide.
        #[arg(long = "root", conflicts_with = "trust")]
        root: Option<PathBuf>,
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
enum RootCommand {
    /// Write a new root (version 1 unless given), unsigned: sign it with `root sign`.
    Init {
        /// Where to write it (e.g. 1.root).
        #[arg(long)]
        out: PathBuf,
        /// A public key of the `root` role (repeatable); also a release key unless
        /// --release-key is given.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// How many root keys must sign a root.
        #[arg(long)]
        threshold: usize,
        /// A public key of the `release` role (repeatable); default: the root keys.
        #[arg(long = "release-key")]
        release_keys: Vec<PathBuf>,
        /// How many release keys must sign a statement; default: --threshold.
        #[arg(long)]
        release_threshold: Option<usize>,
        /// A public key of the `rollout` role (repeatable).
        #[arg(long = "rollout-key")]
        rollout_keys: Vec<PathBuf>,
        /// How many rollout keys must sign a rollout document; default: 1.
        #[arg(long)]
        rollout_threshold: Option<usize>,
        /// The root's version.
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// How long the root stays valid: `<n>d`, `<n>h`, `<n>m` or `<n>s`.
        #[arg(long, default_value = "365d")]
        valid_for: String,
    },
    /// Write the next root (version N+1) from root N with keys added or removed, unsigned: sign
    /// it with `root sign` by the old root's threshold and by its own.
    Rotate {
        /// The current root (N.root).
        #[arg(long)]
        from: PathBuf,
        /// Where to write root N+1.
        #[arg(long)]
        out: PathBuf,
        /// A public key to add to the root and release roles (repeatable).
        #[arg(long = "add-key")]
        add_keys: Vec<PathBuf>,
        /// A fingerprint to remove from every role (repeatable).
        #[arg(long = "remove-key")]
        remove_keys: Vec<String>,
        /// The new root threshold; default: the old one.
        #[arg(long)]
        threshold: Option<usize>,
        /// The new release threshold; default: the old one.
        #[arg(long)]
        release_threshold: Option<usize>,
        /// How long the new root stays valid.
        #[arg(long, default_value = "365d")]
        valid_for: String,
    },
    /// Sign a root (the unsigned text from init/rotate, or a root others signed) in place.
    Sign {
        /// A secret signing key file (repeatable).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// The root file.
        file: PathBuf,
    },
    /// Check a root: signed by its own threshold, or (with --previous) a valid rotation.
    Verify {
        /// The root file.
        file: PathBuf,
        /// The root before it: check the rotation from it.
        #[arg(long)]
        previous: Option<PathBuf>,
    },
    /// Check a root and copy it into the release tree as ROOT/root/N.root, where relays fetch
    /// rotations from (root N-1 there must chain to it).
    Publish {
        /// The release tree's root.
        #[arg(long)]
        root: PathBuf,
        /// The root file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Serve a release tree with signed rollout documents, count the relays' outcome reports
    /// and halt a rollout automatically; runs until SIGTERM. Prints its address when ready.
    Serve {
        /// The release tree to serve (what `publish` writes).
        #[arg(long)]
        tree: PathBuf,
        /// The state folder: plans, counts, the admin socket.
        #[arg(long)]
        state: PathBuf,
        /// A secret key of the root's rollout role (repeatable, up to its threshold).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// Where to listen for HTTP.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// How long each rollout document is valid: `<n>h`, `<n>m` or `<n>s` (at most 24h).
        #[arg(long, default_value = "6h")]
        lifetime: String,
        /// Count the outcome reports of any validly signed relay key, not only of relays that
        /// downloaded the version from this service (when a front server serves the binaries).
        #[arg(long)]
        open_reports: bool,
    },
    /// Start (or restart) the rollout of a version that is published in the tree.
    Start {
        /// The service's state folder.
        #[arg(long)]
        state: PathBuf,
        /// The version.
        version: String,
        /// The schedule: `OFFSET:PERCENT,...` with cumulative percents, e.g. `0:10,1d:50,2d:100`
        /// (offsets as `<n>d`, `<n>h`, `<n>m`, `<n>s`, or seconds).
        #[arg(long)]
        steps: String,
        /// Rollbacks reported in one step that halt the rollout.
        #[arg(long, default_value_t = relay_release::service::DEFAULT_HALT_AFTER)]
        halt_after: u64,
        /// When the schedule starts, RFC 3339 UTC; default: now.
        #[arg(long)]
        start: Option<String>,
        /// Print the service's reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Halt a rollout: no relay that has not started the version starts it.
    Halt {
        /// The service's state folder.
        #[arg(long)]
        state: PathBuf,
        /// The version.
        version: String,
        /// Why (shown by `status`).
        #[arg(long)]
        reason: Option<String>,
        /// Print the service's reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume a halted or recalled rollout (its counts start again).
    Resume {
        /// The service's state folder.
        #[arg(long)]
        state: PathBuf,
        /// The version.
        version: String,
        /// Print the service's reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recall a version: relays that committed it go back to their previous version.
    Recall {
        /// The service's state folder.
        #[arg(long)]
        state: PathBuf,
        /// The version.
        version: String,
        /// Print the service's reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show each rollout: schedule, counts per step, halt, downloads.
    Status {
        /// The service's state folder.
        #[arg(long)]
        state: PathBuf,
        /// Only this version.
        version: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
        Command::Keygen {
            out,
            user_id,
            created,
        } => {
            let key = match created {
                Some(t) => SigningKey::generate_at(
                    &user_id,
                    parse_time(&t).context("--created is not RFC 3339 UTC")?,
                )?,
                None => SigningKey::generate(&user_id)?,
            };
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
            supervisor,
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
            supervisor,
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
        Command::Sign { key, file } => sign_in_place(&key, &file),
        Command::Root { command } => root_command(command),
        Command::Rollout { command } => rollout_command(command),
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
            root,
            running,
            committed,
            now,
        } => {
            let now = match now {
                Some(t) => parse_time(&t).context("--now is not RFC 3339 UTC")?,
                None => SystemTime::now(),
            };
            let mut keys = match &root {
                Some(path) => {
                    let root = Root::verify_anchor(&read(path)?, now)?;
                    root.check_expiry(now)?;
                    root.keys_for(Role::Release)
                }
                None => TrustedKeys::empty(),
            };
            for path in &trust {
                keys = keys.with_file(path)?;
            }
            let floor = match (running, committed) {
                (None, None) => VersionFloor::UnsafeAllowAny,
                (running, committed) => VersionFloor::Above {
                    running: parse_version(running.as_deref().unwrap_or("0.0.0"))?,
                    highest_committed: committed.as_deref().map(parse_version).transpose()?,
                },
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
                verified.signers.join(", "),
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
    key: Vec<PathBuf>,
    version: String,
    binary: PathBuf,
    supervisor: Option<PathBuf>,
    changelog: Option<PathBuf>,
    product: String,
    target: Option<String>,
    valid_for: String,
    issued: Option<String>,
}

fn publish(p: &Publish) -> anyhow::Result<()> {
    let keys = signing_keys(&p.key)?;
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
    check_reported_version(&p.binary, &data, &version, &target)?;
    durable::write_file(&asset_path, &data, 0o755)?;

    let mut files = vec![
        digest(&asset_path, &asset)?,
        digest(&changelog_path, CHANGELOG_NAME)?,
    ];
    if let Some(supervisor) = &p.supervisor {
        let name = asset_name(&Product::supervisor(), &target);
        let path = dir.file_path(&version, &name)?;
        let data =
            fs::read(supervisor).with_context(|| format!("reading {}", supervisor.display()))?;
        durable::write_file(&path, &data, 0o755)?;
        files.push(digest(&path, &name)?);
        println!("{}", path.display());
    }
    let statement = Statement {
        product,
        version: version.clone(),
        target,
        issued,
        expires,
        files,
    };
    let name = statement_name(&asset);
    let signed = sign::clearsign_by(&keys, &statement.render(&name), statement.issued)?;
    let statement_path = dir.file_path(&version, &name)?;
    durable::write_file(&statement_path, &signed, 0o644)?;
    println!("{}", asset_path.display());
    println!("{}", statement_path.display());
    let signers: Vec<String> = keys.iter().map(SigningKey::fingerprint).collect();
    println!(
        "signed by {} until {}",
        signers.join(", "),
        format_time(expires)
    );
    // What every relay downloads (and hashes) for this release.
    let sizes: Vec<String> = statement
        .files
        .iter()
        .filter(|f| f.name != CHANGELOG_NAME)
        .map(|f| format!("{} {:.1} MB", f.name, f.size as f64 / 1e6))
        .collect();
    println!("sizes: {}", sizes.join(", "));
    Ok(())
}

/// Refuses a binary that would report another version than the one its statement signs: its
/// stamped slot, or (for a binary of this host's target that has no stamp) what its `version`
/// command prints. A supervisor refuses such a release anyway; this says so before signing.
fn check_reported_version(
    path: &Path,
    data: &[u8],
    version: &semver::Version,
    target: &Target,
) -> anyhow::Result<()> {
    if let Some(stamped) = relay_release::stamp::find(data) {
        if stamped != version.to_string() {
            bail!(
                "{} is stamped as version {stamped}, not {version}: stamp it first (release-tool stamp --version {version})",
                path.display()
            );
        }
        return Ok(());
    }
    if *target != Target::host()? {
        eprintln!(
            "note: {} has no version stamp and is for {target}: its reported version is not checked here",
            path.display()
        );
        return Ok(());
    }
    let out = run_version(path)?;
    let reported = out.lines().next().unwrap_or_default().trim();
    if reported != version.to_string() {
        bail!(
            "{} reports version {reported:?}, not {version}: stamp it first (release-tool stamp --version {version})",
            path.display()
        );
    }
    Ok(())
}

/// `<binary> version`, at most 10 s.
fn run_version(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut child = std::process::Command::new(path)
        .arg("version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("running {} version", path.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} version did not answer in 10 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = String::new();
    if let Some(stdout) = child.stdout.as_mut() {
        stdout.take(4096).read_to_string(&mut out)?;
    }
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn signing_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    paths
        .iter()
        .map(|p| SigningKey::from_file(p).map_err(anyhow::Error::from))
        .collect()
}

/// Signs `file` with each key in turn, in place: an unsigned text is clear-signed, a signed
/// one gets one more signature.
fn sign_in_place(keys: &[PathBuf], file: &Path) -> anyhow::Result<()> {
    let mut bytes = read(file)?;
    for key in signing_keys(keys)? {
        let now = SystemTime::now();
        bytes = if bytes
            .windows(BEGIN_SIGNED.len())
            .any(|w| w == BEGIN_SIGNED.as_bytes())
        {
            sign::add_signature(&bytes, &key, now)?
        } else {
            let text = String::from_utf8(bytes).context("the file is not UTF-8 text")?;
            sign::clearsign(&key, &text, now)?
        };
        println!("{}: signed by {}", file.display(), key.fingerprint());
    }
    durable::write_file(file, &bytes, 0o644)?;
    Ok(())
}

const BEGIN_SIGNED: &str = "-----BEGIN PGP SIGNED MESSAGE-----";

fn public_certs(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, TrustedKeys)>> {
    paths
        .iter()
        .map(|p| {
            let keys = TrustedKeys::empty().with_file(p)?;
            let fprs = keys.fingerprints();
            let [fpr] = fprs.as_slice() else {
                bail!(
                    "{} holds {} keys; give one key per file",
                    p.display(),
                    fprs.len()
                );
            };
            Ok((fpr.clone(), keys))
        })
        .collect()
}

fn root_command(command: RootCommand) -> anyhow::Result<()> {
    match command {
        RootCommand::Init {
            out,
            keys,
            threshold,
            release_keys,
            release_threshold,
            rollout_keys,
            rollout_threshold,
            version,
            valid_for,
        } => {
            let root_keys = public_certs(&keys)?;
            let release = if release_keys.is_empty() {
                public_certs(&keys)?
            } else {
                public_certs(&release_keys)?
            };
            let rollout = public_certs(&rollout_keys)?;
            let mut roles = BTreeMap::new();
            let fprs = |v: &[(String, TrustedKeys)]| v.iter().map(|(f, _)| f.clone()).collect();
            roles.insert(
                Role::Root,
                RoleKeys {
                    threshold,
                    keys: fprs(&root_keys),
                },
            );
            roles.insert(
                Role::Release,
                RoleKeys {
                    threshold: release_threshold.unwrap_or(threshold),
                    keys: fprs(&release),
                },
            );
            if !rollout.is_empty() {
                roles.insert(
                    Role::Rollout,
                    RoleKeys {
                        threshold: rollout_threshold.unwrap_or(1),
                        keys: fprs(&rollout),
                    },
                );
            }
            let certs = root_keys
                .iter()
                .chain(&release)
                .chain(&rollout)
                .flat_map(|(_, k)| k.certs().to_vec())
                .collect();
            let issued = whole_seconds(SystemTime::now());
            let root = Root::new(
                version,
                issued,
                issued + parse_span(&valid_for)?,
                certs,
                roles,
            )?;
            write_unsigned_root(&root, &out)
        }
        RootCommand::Rotate {
            from,
            out,
            add_keys,
            remove_keys,
            threshold,
            release_threshold,
            valid_for,
        } => {
            let old = Root::verify_anchor(&read(&from)?, SystemTime::now())
                .with_context(|| format!("{} does not verify", from.display()))?;
            let added = public_certs(&add_keys)?;
            let removed: Vec<String> = remove_keys
                .iter()
                .map(|f| f.replace(' ', "").to_ascii_uppercase())
                .collect();
            for fpr in &removed {
                if !old.certs().contains_key(fpr) {
                    bail!(
                        "--remove-key {fpr}: root version {} has no such key",
                        old.version()
                    );
                }
            }
            let mut roles = old.roles().clone();
            for (role, rk) in &mut roles {
                rk.keys.retain(|k| !removed.contains(k));
                if matches!(role, Role::Root | Role::Release) {
                    for (fpr, _) in &added {
                        if !rk.keys.contains(fpr) {
                            rk.keys.push(fpr.clone());
                        }
                    }
                }
                let wanted = match role {
                    Role::Root => threshold,
                    Role::Release => release_threshold,
                    Role::Rollout => None,
                };
                rk.threshold = wanted.unwrap_or(rk.threshold);
            }
            let certs = old
                .certs()
                .iter()
                .filter(|(f, _)| !removed.contains(f))
                .map(|(_, c)| c.clone())
                .chain(added.iter().flat_map(|(_, k)| k.certs().to_vec()))
                .collect();
            let issued = whole_seconds(SystemTime::now());
            let root = Root::new(
                old.version() + 1,
                issued,
                issued + parse_span(&valid_for)?,
                certs,
                roles,
            )?;
            write_unsigned_root(&root, &out)?;
            println!(
                "sign it with {} keys of root version {} and {} of its own (release-tool root sign)",
                old.threshold(Role::Root),
                old.version(),
                root.threshold(Role::Root)
            );
            Ok(())
        }
        RootCommand::Sign { key, file } => sign_in_place(&key, &file),
        RootCommand::Verify { file, previous } => {
            let now = SystemTime::now();
            let root = match previous {
                Some(prev) => Root::verify_anchor(&read(&prev)?, now)
                    .with_context(|| format!("{} does not verify", prev.display()))?
                    .verify_next(&read(&file)?, now)?,
                None => Root::verify_anchor(&read(&file)?, now)?,
            };
            root.check_expiry(now)?;
            print_root(&root);
            Ok(())
        }
        RootCommand::Publish { root: tree, file } => {
            let now = SystemTime::now();
            let bytes = read(&file)?;
            let root = Root::verify_anchor(&bytes, now)?;
            // An expired root would refuse every release on every relay that follows it.
            root.check_expiry(now)?;
            let dir = ReleaseDir::new(tree);
            if root.version() > 1 {
                let prev_path = dir.root_path(root.version() - 1);
                if prev_path.exists() {
                    Root::verify_anchor(&read(&prev_path)?, now)?.verify_next(&bytes, now)?;
                }
            }
            let dest = dir.root_path(root.version());
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            durable::write_file(&dest, &bytes, 0o644)?;
            println!("{}", dest.display());
            Ok(())
        }
    }
}

fn write_unsigned_root(root: &Root, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists; not overwriting it", out.display());
    }
    durable::write_file(out, root.render()?.as_bytes(), 0o644)?;
    println!("{} (unsigned)", out.display());
    print_root(root);
    Ok(())
}

fn print_root(root: &Root) {
    println!(
        "root version {} expires {}",
        root.version(),
        format_time(root.expires())
    );
    for (role, rk) in root.roles() {
        println!(
            "{role}: {} of {}: {}",
            rk.threshold,
            rk.keys.len(),
            rk.keys.join(", ")
        );
    }
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
fn rollout_command(command: RolloutCommand) -> anyhow::Result<()> {
    use relay_release::service::{self, AdminRequest};
    let (state, request, json) = match command {
        RolloutCommand::Serve {
            tree,
            state,
            key,
            listen,
            lifetime,
            open_reports,
        } => {
            let lifetime = parse_span(&lifetime)?;
            if lifetime > relay_release::rollout::MAX_LIFETIME {
                bail!("--lifetime is at most 24h: a rollout document is short-lived");
            }
            let opts = service::Options {
                tree,
                state,
                keys: signing_keys(&key)?,
                lifetime,
                listen,
                open_reports,
            };
            tracing_subscriber_init();
            let runtime = tokio::runtime::Runtime::new()?;
            return runtime.block_on(service::serve(opts, |addr, admin| {
                println!(
                    "rollout service listening on http://{addr}/ (admin socket {})",
                    admin.display()
                );
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
            }));
        }
        RolloutCommand::Start {
            state,
            version,
            steps,
            halt_after,
            start,
            json,
        } => (
            state,
            AdminRequest::Start {
                version,
                steps: parse_steps(&steps)?,
                halt_after,
                start,
            },
            json,
        ),
        RolloutCommand::Halt {
            state,
            version,
            reason,
            json,
        } => (state, AdminRequest::Halt { version, reason }, json),
        RolloutCommand::Resume {
            state,
            version,
            json,
        } => (state, AdminRequest::Resume { version }, json),
        RolloutCommand::Recall {
            state,
            version,
            json,
        } => (state, AdminRequest::Recall { version }, json),
        RolloutCommand::Status {
            state,
            version,
            json,
        } => (state, AdminRequest::Status { version }, json),
    };
    let reply = service::admin_call(&state, &request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    }
    if !reply.ok {
        bail!(
            "{}",
            reply
                .error
                .unwrap_or_else(|| "the rollout service refused".to_owned())
        );
    }
    if !json {
        for r in &reply.rollouts {
            print_rollout(r);
        }
    }
    Ok(())
}

/// Logs of the service to stderr, info and above.
fn tracing_subscriber_init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

fn print_rollout(r: &relay_release::service::RolloutStatus) {
    let state = if r.recall {
        "RECALLED".to_owned()
    } else if r.halted {
        format!(
            "HALTED at {} ({})",
            r.halted_at.as_deref().unwrap_or("?"),
            r.halt_reason.as_deref().unwrap_or("no reason given")
        )
    } else {
        format!("at {}%", r.percent_now)
    };
    println!(
        "{}: {state}; serial {}, started {}",
        r.version, r.serial, r.start
    );
    for (i, (step, count)) in r.steps.iter().zip(&r.per_step).enumerate() {
        println!(
            "  step {}: +{}s {:>5}%  committed {:>4}  rolled back {:>4}",
            i + 1,
            step.after_secs,
            step.percent,
            count.committed,
            count.rolled_back
        );
    }
    println!(
        "  halts after {} rollbacks in a step; downloads {} by {} relays",
        r.halt_after, r.downloads, r.downloaders
    );
    if !r.criteria.is_empty() {
        let list: Vec<String> = r.criteria.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!("  rollbacks by criterion: {}", list.join(", "));
    }
    if let Some(ms) = r.first_rollback_to_halt_ms {
        println!("  first rollback report to halt: {ms} ms");
    }
    if r.halted {
        println!(
            "  relays that fetched the halt: {}{}",
            r.saw_halt,
            r.halt_to_last_seen_ms
                .map(|ms| format!(" (the last {ms} ms after it)"))
                .unwrap_or_default()
        );
    }
}

/// `OFFSET:PERCENT,...`, e.g. `0:10,1d:50,2d:100`.
fn parse_steps(text: &str) -> anyhow::Result<Vec<relay_release::rollout::Step>> {
    text.split(',')
        .map(|part| {
            let (offset, percent) = part
                .split_once(':')
                .with_context(|| format!("step {part:?} is not OFFSET:PERCENT"))?;
            let after_secs = match offset.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => parse_span(offset.trim())?.as_secs(),
            };
            let percent: f64 = percent
                .trim()
                .trim_end_matches('%')
                .parse()
                .with_context(|| format!("step {part:?}: {percent:?} is not a percent"))?;
            Ok(relay_release::rollout::Step {
                after_secs,
                percent,
            })
        })
        .collect()
}

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

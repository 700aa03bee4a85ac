//! `wireleap-relay`: parse the command line, dispatch, map errors to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use wireleap_relay::cli::{self, Cli, Command};
use wireleap_relay::home::{self, ProcessEnv};
use wireleap_relay::identity::Identity;
use wireleap_relay::operator::{control, rollback, supervised, upgrade};
use wireleap_relay::{config, daemon, exit, ledger, out, outp, telemetry, version};

fn main() -> ExitCode {
    // Under the supervisor this runs as a verified copy through /proc/self/fd/<n>, which names
    // the process "<n>": named for ps, pgrep and the journal (before any thread starts).
    let _ = nix::sys::prctl::set_name(c"wireleap-relay");
    // Code pages are mapped as they are used, not 64 KiB around each (most of the resident set).
    wireleap_relay::memory::map_code_on_demand();
    // `--version` (and `-V`) print the name and the version stamped into this binary.
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag] = args.as_slice()
        && matches!(flag.as_str(), "--version" | "-V" | "-version")
    {
        out!("wireleap-relay {}", version::software_str());
        return ExitCode::from(wireleap_relay::operator::output::exit_code(exit::OK));
    }
    let cli = match Cli::try_parse_from(cli::normalize(std::env::args())) {
        Ok(cli) => cli,
        // `help [COMMAND]` prints on stderr and exits 2, as the reference's does (spec §1.1);
        // `--help` and `-h` print on stdout and exit 0.
        Err(e) if args.get(1).is_some_and(|a| a == "help") => {
            eprint!("{}", e.render());
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let env = ProcessEnv;
    telemetry::init();
    let Ok(version) = version::software() else {
        eprintln!(
            "this build's version {:?} is not semver",
            version::software_str()
        );
        return ExitCode::from(exit::FAILURE);
    };
    // Only the commands that make a home create it.
    let create = matches!(cli.command, Command::Init { .. } | Command::Start { .. });
    let home = match home::resolve(&env, create) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = dispatch(cli.command, &home, &version);
    ExitCode::from(wireleap_relay::operator::output::exit_code(code))
}

fn dispatch(command: Command, home: &Path, version: &semver::Version) -> u8 {
    match command {
        Command::Version { verbose } => {
            out!("{version}");
            if verbose {
                for (name, v) in version::INTERFACES {
                    out!("{name} interface version {v}");
                }
                match relay_release::Trust::load(home) {
                    Ok(trust) => {
                        for line in trust.describe() {
                            out!("{line}");
                        }
                    }
                    Err(e) => {
                        out!("release trust: unusable: {e}");
                        out!("trusted release keys: none");
                    }
                }
            }
            exit::OK
        }
        Command::Init { force } => match Identity::init(home, force) {
            Ok(done) => {
                if let Some(seed) = done.kept {
                    out!("kept {} (the relay's identity)", seed.display());
                }
                for p in done.written {
                    out!("wrote {}", p.display());
                }
                match wireleap_relay::identity::unpack_license(home) {
                    Ok(Some(p)) => out!("wrote {}", p.display()),
                    Ok(None) => {}
                    // The identity is what init is for: a license it could not add is a warning.
                    Err(e) => tracing::warn!("{e}"),
                }
                exit::OK
            }
            Err(e) => fail(&e, exit::FAILURE),
        },
        Command::CheckConfig => check_config(home),
        Command::SupervisorSettings => supervisor_settings(home),
        Command::Probe {
            address,
            count,
            timeout,
            interval_ms,
        } => probe(
            home,
            address,
            count,
            (
                Duration::from_secs(timeout),
                Duration::from_millis(interval_ms),
            ),
        ),
        Command::Migrate { version: None, .. } => {
            eprintln!("which version to migrate from? usage: `wireleap-relay migrate 1.2.3`");
            exit::FAILURE
        }
        Command::Migrate {
            version: Some(other),
            down,
            copy_config,
        } => wireleap_relay::migrate::command(home, version, &other, down, copy_config),
        Command::Start { fg: true } => match daemon::run(home, &ProcessEnv, version) {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e}");
                e.exit_code()
            }
        },
        Command::Start { fg: false } => control_result(control::start(home, &own_exe())),
        Command::Restart => control_result(control::restart(home, &own_exe())),
        Command::Stop => control_result(control::stop(home)),
        Command::Reload => {
            // Refuse a config the daemon would refuse, and say why here rather than in its log.
            if let Err(e) = config::load(&home.join(home::files::CONFIG)) {
                return fail(&e, exit::FAILURE);
            }
            control_result(control::reload(home))
        }
        Command::Status { json } => control::status(home, json),
        Command::Upgrade { yes, version: to } => upgrade::run(home, version, yes, to.as_deref()),
        Command::Rollback => rollback::run(home),
        Command::DetachSupervisor { supervisor, relay } => {
            let e = supervised::detach_and_exec(&supervisor, &relay);
            eprintln!("error: could not run {}: {e}", supervisor.display());
            exit::FAILURE
        }
        Command::Balance {
            contract, human, ..
        } => payout_result(ledger::payout::balance(
            home,
            contract.as_deref(),
            !human,
            &version.to_string(),
        )),
        Command::Withdraw {
            contract,
            destination,
            amount,
            human,
            json: _,
            yes,
        } => payout_result(ledger::payout::withdraw(
            home,
            contract.as_deref(),
            &destination,
            amount,
            human,
            yes,
            &version.to_string(),
        )),
    }
}

fn check_config(home: &Path) -> u8 {
    match config::load(&home.join(home::files::CONFIG)) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            for w in trust_warnings(home, loaded.config.auto_upgrade) {
                eprintln!("warning: {w}");
            }
            // Not an error: check-config may run as another user than the relay, or before
            // systemd created the unit's runtime folder (/run/wireleap).
            if let Some(config::RestApi {
                address: config::RestAddress::Unix(path),
                ..
            }) = &loaded.config.rest_api
                && let Err(e) = wireleap_relay::restapi::socket_folder_usable(path)
            {
                if e.kind() == std::io::ErrorKind::NotFound {
                    eprintln!(
                        "note: rest_api.address: {e}: the relay needs the folder when it starts (the systemd unit creates /run/wireleap then)"
                    );
                } else {
                    eprintln!(
                        "warning: rest_api.address: {e} (as this user; the relay needs it when it starts)"
                    );
                }
            }
            out!("OK");
            exit::OK
        }
        // As the reference's check-config (spec §1.2): the error on stdout, where `OK` goes,
        // and exit 1 (78 is the daemon's, for systemd).
        Err(e) => {
            out!("{e}");
            exit::FAILURE
        }
    }
}

/// What `check-config` says about release trust: nothing trusted while `auto_upgrade` is on,
/// unusable trust files, public test keys, an expired root.
fn trust_warnings(home: &Path, auto_upgrade: bool) -> Vec<String> {
    if let Err(e) = relay_release::trust::check_home(home) {
        return vec![format!("upgrades will be refused: {e}")];
    }
    match relay_release::Trust::load(home) {
        Ok(trust) if trust.is_empty() && auto_upgrade => vec![format!(
            "auto_upgrade is on but no release key is trusted: every upgrade will be refused; put the network's root in {} or its key in {} (docs/releasing.md)",
            trust.roots_dir().display(),
            home.join(relay_release::trust::TRUST_DIR).display()
        )],
        Ok(trust) => trust.warnings(std::time::SystemTime::now()),
        Err(e) => vec![format!("upgrades will be refused: {e}")],
    }
}

/// `probe`: exit 0 when every ping through `address` was answered PONG by this home's key.
fn probe(
    home: &Path,
    address: std::net::SocketAddr,
    count: u32,
    (timeout, interval): (Duration, Duration),
) -> u8 {
    // The key the relay answers with is key.seed's (key.pub may be stale: a seed restored from
    // a backup over a fresh install's).
    let origin = match wireleap_relay::identity::Identity::load(home) {
        Ok(id) => id.public_key_b64(),
        Err(e) => {
            eprintln!("wireleap-relay probe: {e}");
            return exit::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wireleap-relay probe: {e}");
            return exit::FAILURE;
        }
    };
    match runtime.block_on(wireleap_relay::probe::probe(
        address, &origin, count, timeout, interval,
    )) {
        Ok(slowest) => {
            out!(
                "{count} PONG from {origin} through {address}; the slowest took {} ms",
                slowest.as_millis()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("wireleap-relay probe: {e}");
            exit::FAILURE
        }
    }
}

fn supervisor_settings(home: &Path) -> u8 {
    match config::load(&home.join(home::files::CONFIG)) {
        Ok(loaded) => {
            out!("{}", loaded.config.supervisor.to_json());
            exit::OK
        }
        Err(e) => fail(&e, exit::CONFIG),
    }
}

fn payout_result(r: Result<String, ledger::payout::Error>) -> u8 {
    match r {
        Ok(text) => {
            outp!("{text}");
            exit::OK
        }
        Err(e) => fail(&e, exit::FAILURE),
    }
}

fn control_result<T>(r: Result<T, control::Error>) -> u8 {
    match r {
        Ok(_) => exit::OK,
        // As the reference's `start`: the line and the daemon's log on stdout (spec §1.2).
        Err(e @ control::Error::DiedAtStart { .. }) => {
            out!("{e}");
            exit::FAILURE
        }
        Err(e) => fail(&e, exit::FAILURE),
    }
}

fn fail(e: &dyn std::error::Error, code: u8) -> u8 {
    eprintln!("error: {e}");
    code
}

/// The path to run for the background daemon: this executable, as invoked.
fn own_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("wireleap-relay"))
}

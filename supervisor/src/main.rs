//! `wireleap-relay-supervisor`: keeps the relay running on a listening socket it owns.
//!
//! Usage: `wireleap-relay-supervisor [--relay PATH] [--health-window D] [--ready-timeout D]
//! [ctl status|upgrade VERSION|rollback]` (`--help`). The home directory is the folder of this
//! executable (symlinks resolved) or `$WIRELEAP_RELAY_HOME`; the relay binary is
//! `<home>/wireleap-relay` unless `--relay` names another.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wireleap_relay_supervisor::exit;
use wireleap_relay_supervisor::run::{self, HOME_ENV, Options};

/// Keeps wireleap-relay running on a listening socket it owns, upgrades it from verified
/// releases and rolls back a version that fails.
///
/// The home directory is the folder of this executable (symlinks resolved), or
/// $WIRELEAP_RELAY_HOME. The waits default to config.json's "supervisor" section, else 30 s.
#[derive(Debug, Parser)]
#[command(name = "wireleap-relay-supervisor", version)]
struct Cli {
    /// The relay binary to run [default: <home>/wireleap-relay].
    #[arg(long, value_name = "PATH")]
    relay: Option<PathBuf>,
    /// How long a new version must serve before it is committed, in config.json's duration
    /// syntax (30s, 1m, 1m30s; a bare number is seconds).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    health_window: Option<Duration>,
    /// How long a relay generation may take to report ready, same syntax.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    ready_timeout: Option<Duration>,
    /// How long one run of a release's migrations may take before it is killed (with its
    /// process group) and the release rolled back, same syntax.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "2m")]
    migrate_timeout: Duration,
    /// Run every relay process as this user (name or uid; its primary group), the supervisor
    /// staying root: a compromised relay cannot change what runs next (docs/install.md).
    #[arg(long, value_name = "USER")]
    relay_user: Option<String>,
    /// How long a serving relay may go without its liveness ping before a new generation
    /// replaces it (the relay pings three times per period); 0 turns the watch off [default:
    /// config.json's supervisor.liveness, else 15s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    liveness: Option<Duration>,
    /// The resident memory a new version may reach inside its health window before it is
    /// rolled back and skipped, in config.json's data-size syntax (512MB, 1GB; 1 KB = 1024 B); 0 turns the
    /// check off [default: config.json's supervisor.max_memory, else 1GB].
    #[arg(long, value_name = "SIZE", value_parser = size)]
    max_memory: Option<u64>,
    /// How many PINGs a new version must answer through the public socket (TLS, HTTP/2, with
    /// its own key as origin) inside its health window; 0 turns the probe off [default:
    /// config.json's supervisor.probe_count, else 3].
    #[arg(long, value_name = "N")]
    probe_count: Option<u32>,
    /// How long the release's own supervisor has to take over (serve) before it is killed,
    /// skipped, and this one serves on; at least the ready timeout and 5 s.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "60s")]
    supervisor_trial: Duration,
    /// Check the arguments and the home as a start would, print the version and exit, running
    /// nothing (a supervisor runs a release's own supervisor so before it hands over to it).
    #[arg(long, hide = true)]
    preflight: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask the supervisor that runs this home.
    Ctl {
        #[command(subcommand)]
        request: Ctl,
    },
}

#[derive(Debug, Subcommand)]
enum Ctl {
    /// Its state: relay pid, versions, the last journal step.
    Status,
    /// Verify the staged wireleap-relay.next as VERSION, start it beside the running relay and
    /// commit it after its health window.
    Upgrade {
        /// The staged version.
        version: String,
    },
    /// Go back to wireleap-relay.prev.
    Rollback,
}

/// A duration in config.json's syntax, or a bare number of seconds.
fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{text:?} is not a duration: expected e.g. 30s, 1m, 1m30s"));
    }
    wireleap_home::value::parse_duration(text).map_err(|e| e.to_string())
}

/// A data size in config.json's syntax (`512MB`), or a bare number of bytes.
fn size(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .or_else(|_| wireleap_home::value::parse_datasize(text).map_err(|e| e.to_string()))
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        Duration::ZERO => Err("must be more than 0".to_owned()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    wireleap_home::log::init("wireleap-relay-supervisor");
    let Cli {
        relay,
        health_window,
        ready_timeout,
        migrate_timeout,
        relay_user,
        liveness,
        max_memory,
        probe_count,
        supervisor_trial,
        preflight,
        command,
    } = cli;
    let home = match std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => match std::env::current_exe().and_then(std::fs::canonicalize) {
            Ok(exe) => exe
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
            Err(e) => {
                eprintln!("wireleap-relay-supervisor: cannot find its own path: {e}");
                return ExitCode::from(exit::FAILURE);
            }
        },
    };
    // Every command it runs (`version`, `probe`, `migrate`, ...) runs from a nameless verified
    // copy, which cannot find the home by its own path: each is told.
    wireleap_relay_supervisor::verified::set_home(&home);
    // A guardian of a supervisor's trial (started by the supervisor it replaces, `swap`).
    if let Some(code) = wireleap_relay_supervisor::swap::guard_from_env(&home) {
        return ExitCode::from(code);
    }
    if let Some(Command::Ctl { request }) = command {
        return ctl_command(&home, &request);
    }
    let relay = relay.unwrap_or_else(|| home.join(wireleap_home::files::CURRENT));
    if let Some(name) = relay_user {
        match wireleap_relay_supervisor::privsep::RelayUser::lookup(&name) {
            Ok(user) => wireleap_relay_supervisor::privsep::set(user),
            Err(e) => {
                eprintln!("wireleap-relay-supervisor: {e}");
                return ExitCode::from(exit::USAGE);
            }
        }
    }
    // A flag wins; else config.json's `supervisor` section; else the defaults (`run`).
    let opts = Options {
        relay,
        notify_socket: std::env::var("NOTIFY_SOCKET").ok(),
        health_window,
        ready_timeout,
        migrate_timeout,
        liveness,
        max_memory,
        probe_count,
        supervisor_trial,
        home,
    };
    let code = match if preflight {
        run::preflight(&opts)
    } else {
        run::run(&opts)
    } {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            match e {
                // On trial (an image exec'd by its predecessor) a refusal is a failed trial,
                // which systemd must answer with a restart of the unit's (old) binary: 78 would
                // stop it for good.
                run::Error::Config(..) | run::Error::Address { .. } | run::Error::Privileges(_)
                    if std::env::var_os(wireleap_home::files::TAKEOVER_ENV).is_some() =>
                {
                    exit::FAILURE
                }
                run::Error::Config(..) | run::Error::Address { .. } | run::Error::Privileges(_) => {
                    exit::CONFIG
                }
                run::Error::Io { .. } | run::Error::AlreadyRunning(_) | run::Error::Binary(_) => {
                    exit::FAILURE
                }
            }
        }
    };
    ExitCode::from(code)
}

/// `ctl status` / `ctl upgrade VERSION` / `ctl rollback`: asks the running supervisor and prints its reply.
fn ctl_command(home: &std::path::Path, request: &Ctl) -> ExitCode {
    use wireleap_relay_supervisor::control::Request;
    let request = match request {
        Ctl::Status => Request::Status,
        Ctl::Upgrade { version } => Request::Upgrade {
            version: version.clone(),
        },
        Ctl::Rollback => Request::Rollback,
    };
    // An upgrade answers after the new version's start and health window.
    let wait = std::time::Duration::from_secs(600);
    match wireleap_relay_supervisor::control::call(home, &request, wait) {
        Ok(reply) => {
            println!("{}", reply.to_line());
            if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::FAILURE)
            }
        }
        Err(e) => {
            eprintln!(
                "wireleap-relay-supervisor: no answer from the supervisor in {}: {e}",
                home.display()
            );
            ExitCode::from(exit::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_shape_and_durations_in_the_configs_syntax() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["s", "--health-window", "1m", "--ready-timeout", "30"]).unwrap();
        assert_eq!(cli.health_window, Some(Duration::from_secs(60)));
        assert_eq!(cli.ready_timeout, Some(Duration::from_secs(30)));
        assert_eq!(
            Cli::try_parse_from(["s", "--health-window", "1m30s"])
                .unwrap()
                .health_window,
            Some(Duration::from_secs(90))
        );
        // A flag without its value, a bad duration, a zero ready timeout: usage errors.
        for bad in [
            &["s", "--relay"][..],
            &["s", "--health-window", "soon"],
            &["s", "--ready-timeout", "0s"],
            &["s", "ctl", "upgrade"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["s", "ctl", "upgrade", "1.2.3"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Ctl { request: Ctl::Upgrade { version } }) if version == "1.2.3"
        ));
    }
}

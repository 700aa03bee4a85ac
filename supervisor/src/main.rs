//! `wireleap-relay-supervisor`: keeps the relay running on a listening socket it owns.
//!
//! Usage: `wireleap-relay-supervisor [--relay PATH] [--health-window D] [--ready-timeout D]
//! [ctl status|upgrade VERSION|rollback]` (`--help`). The home directory is the folder of this
//! executable (symlinks resolved) or `$WIRELEAP_RELAY_HOME`; the relay binary is
//! `<home>/wireleap-relay` unless `--relay` names another.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser as _;
use wireleap_relay_supervisor::cli::{Cli, Command, Ctl};
use wireleap_relay_supervisor::exit;
use wireleap_relay_supervisor::run::{self, HOME_ENV, Options};

fn main() -> ExitCode {
    // A release's supervisor is run from its verified copy through /proc/self/fd/<n>, which
    // names the process "<n>": named as when it runs from its file (the kernel keeps 15 bytes:
    // `wireleap-relay-`; `pgrep -f wireleap-relay-supervisor` finds it).
    let _ = nix::sys::prctl::set_name(c"wireleap-relay-supervisor");
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
        Ctl::Rollback => Request::Rollback { recall: None },
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

//! `wireleap-relay-supervisor`: keeps the relay running on a listening socket it owns.
//!
//! Usage: `wireleap-relay-supervisor [--relay PATH]`. The home directory is the folder of this
//! executable (symlinks resolved) or `$WIRELEAP_RELAY_HOME`; the relay binary is
//! `<home>/wireleap-relay` unless `--relay` names another.

use std::path::PathBuf;
use std::process::ExitCode;

use wireleap_relay_supervisor::exit;
use wireleap_relay_supervisor::run::{self, HOME_ENV, Options};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut relay = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--relay" | "-relay" => relay = args.next().map(PathBuf::from),
            "--version" => {
                println!("{}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!(
                    "usage: wireleap-relay-supervisor [--relay PATH]\n\nhome: the executable's folder, or ${HOME_ENV}"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("wireleap-relay-supervisor: unknown argument {other:?} (try --help)");
                return ExitCode::from(exit::USAGE);
            }
        }
    }
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
    let opts = Options {
        relay: relay.unwrap_or_else(|| home.join("wireleap-relay")),
        notify_socket: std::env::var("NOTIFY_SOCKET").ok(),
        home,
    };
    let pid_file = opts.home.join("wireleap-relay-supervisor.pid");
    let _ = std::fs::write(&pid_file, std::process::id().to_string());
    let code = match run::run(&opts) {
        Ok(code) => code,
        Err(e) => {
            run::log(&format!("error: {e}"));
            match e {
                run::Error::Config(_) | run::Error::Address { .. } => exit::CONFIG,
                run::Error::Io { .. } => exit::FAILURE,
            }
        }
    };
    let _ = std::fs::remove_file(&pid_file);
    ExitCode::from(code)
}

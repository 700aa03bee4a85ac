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
    let mut health_window = None;
    let mut ready_timeout = None;
    let mut ctl: Option<Vec<String>> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--relay" | "-relay" => relay = args.next().map(PathBuf::from),
            "--health-window" | "-health-window" => {
                match args
                    .next()
                    .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok())
                {
                    Some(secs) if secs >= 0.0 => {
                        health_window = Some(std::time::Duration::from_secs_f64(secs));
                    }
                    _ => {
                        eprintln!(
                            "wireleap-relay-supervisor: --health-window takes seconds, e.g. 30"
                        );
                        return ExitCode::from(exit::USAGE);
                    }
                }
            }
            "--ready-timeout" | "-ready-timeout" => {
                match args
                    .next()
                    .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok())
                {
                    Some(secs) if secs > 0.0 => {
                        ready_timeout = Some(std::time::Duration::from_secs_f64(secs));
                    }
                    _ => {
                        eprintln!(
                            "wireleap-relay-supervisor: --ready-timeout takes seconds, e.g. 30"
                        );
                        return ExitCode::from(exit::USAGE);
                    }
                }
            }
            "ctl" => {
                ctl = Some(args.by_ref().collect());
                break;
            }
            "--version" => {
                println!("{}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!(
                    "usage: wireleap-relay-supervisor [--relay PATH] [--health-window SECS] [--ready-timeout SECS]\n\nhome: the executable's folder, or ${HOME_ENV}\nthe waits default to config.json's \"supervisor\" section, else 30 s each"
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
    if let Some(words) = ctl {
        return ctl_command(&home, &words);
    }
    let relay = relay.unwrap_or_else(|| home.join("wireleap-relay"));
    // A flag wins; else config.json's `supervisor` section; else the defaults.
    let configured = if health_window.is_none() || ready_timeout.is_none() {
        run::configured_waits(&relay, &home)
    } else {
        run::Waits::default()
    };
    let opts = Options {
        relay,
        notify_socket: std::env::var("NOTIFY_SOCKET").ok(),
        health_window: health_window
            .or(configured.health_window)
            .unwrap_or(run::HEALTH_WINDOW),
        ready_timeout: ready_timeout
            .or(configured.ready_timeout)
            .unwrap_or(run::READY_TIMEOUT),
        home,
    };
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
    ExitCode::from(code)
}

/// `ctl status` / `ctl upgrade VERSION` / `ctl rollback`: asks the running supervisor and prints its reply.
fn ctl_command(home: &std::path::Path, words: &[String]) -> ExitCode {
    let request = match words {
        [w] if w == "status" => serde_json::json!({"cmd": "status"}),
        [w, v] if w == "upgrade" => serde_json::json!({"cmd": "upgrade", "version": v}),
        [w] if w == "rollback" => serde_json::json!({"cmd": "rollback"}),
        _ => {
            eprintln!(
                "usage: wireleap-relay-supervisor ctl status | ctl upgrade VERSION | ctl rollback"
            );
            return ExitCode::from(exit::USAGE);
        }
    };
    // An upgrade answers after the new version's start and health window.
    let wait = std::time::Duration::from_secs(600);
    match wireleap_relay_supervisor::control::call(home, &request, wait) {
        Ok(reply) => {
            println!("{reply}");
            if reply.get("ok").and_then(serde_json::Value::as_bool) == Some(true) {
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

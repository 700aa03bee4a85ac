//! The command line, shaped like the reference relay's (spec §1.2).
//!
//! Go's `flag` package accepts `-fg` as well as `--fg`; [`normalize`] rewrites single-dash long
//! flags so scripts written for the Go relay keep working. Usage errors exit 2, as there.

use clap::{Parser, Subcommand};

/// A relay for the Wireleap network, wire-compatible with the reference relay 0.6.x.
#[derive(Debug, Parser)]
#[command(
    name = "wireleap-relay",
    disable_version_flag = true,
    after_help = "The home directory is the folder of the executable (symlinks resolved), or $WIRELEAP_RELAY_HOME.\n`wireleap-relay --version` prints `wireleap-relay <version>`; `version` prints the version alone."
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the relay's identity: key.seed, key.pub, relay-cert.pem, relay-key.pem.
    Init {
        /// Replace an existing identity (its earnings stay bound to the old key).
        #[arg(long)]
        force: bool,
    },
    /// Start the relay daemon in the background (or in the foreground with --fg).
    Start {
        /// Run in the foreground.
        #[arg(long)]
        fg: bool,
    },
    /// Stop the running daemon (SIGTERM, then SIGKILL after 3 s).
    Stop,
    /// Stop the daemon if it runs, then start it.
    Restart,
    /// Make the daemon re-read config.json (SIGUSR1).
    Reload,
    /// Report whether the daemon runs (exit 0 running, 1 not running, 2 unknown), with its
    /// enrollment, sharetokens and upgrades.
    Status {
        /// One JSON object instead (docs/status.md).
        #[arg(long)]
        json: bool,
    },
    /// Validate config.json; print OK or every problem.
    CheckConfig,
    /// Show the relay's balance, accepted tokens and withdrawals at its contract(s).
    Balance {
        /// Only this contract (default: every contract in config.json).
        #[arg(long, value_name = "URL")]
        contract: Option<String>,
        /// A summary for people (with the local ledger's counts) instead of the reference's
        /// indented JSON per contract.
        #[arg(long, conflicts_with = "json")]
        human: bool,
        /// Print the reference's JSON (the default; kept for scripts that pass it).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Withdraw earnings from a contract.
    Withdraw {
        /// The contract (default: the only contract in config.json).
        #[arg(long, value_name = "URL")]
        contract: Option<String>,
        /// Where the payout goes (see the contract's payout info).
        #[arg(long)]
        destination: String,
        /// How much, in the contract's smallest unit (> 0).
        #[arg(long, allow_negative_numbers = true)]
        amount: i64,
        /// A one-line summary for people instead of the contract's JSON reply as it sent it
        /// (the reference's output).
        #[arg(long, conflicts_with = "json")]
        human: bool,
        /// Print the contract's JSON reply (the default; kept for scripts that pass it).
        #[arg(long, hide = true)]
        json: bool,
        /// Do not ask for confirmation at a terminal (a script is never asked).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Apply this version's migrations to the home directory: `migrate FROM` copies config.json
    /// to config.json.next and migrates it (and the ledger) up from FROM; `migrate --down TO`
    /// undoes them back to TO. Run by the supervisor during upgrades and rollbacks.
    #[command(hide = true)]
    Migrate {
        /// The version migrated from (up), or back to (with --down). Missing: the reference's
        /// message, exit 1.
        version: Option<String>,
        /// Undo this version's migrations down to VERSION.
        #[arg(long)]
        down: bool,
        /// With --down: copy config.json to config.json.next first and undo on the copy.
        #[arg(long, requires = "down")]
        copy_config: bool,
    },
    /// Upgrade to the newest version of the update channel, or to VERSION: shows the changelog,
    /// asks, downloads and verifies the signed release, and has the supervisor hand over to it.
    Upgrade {
        /// Do not ask (for scripts).
        #[arg(long, short = 'y')]
        yes: bool,
        /// The version to install (default: the newest of the contract's upgrade_channel).
        version: Option<String>,
    },
    /// Go back to the previous version (wireleap-relay.prev and config.json.prev), through the
    /// supervisor when it runs.
    Rollback,
    /// Internal, run by the supervisor when it starts: print config.json's `supervisor` settings
    /// as JSON (`health_window_secs`, `ready_timeout_secs`, `max_memory_bytes`; only those that are set).
    #[command(hide = true)]
    SupervisorSettings,
    /// Internal, run by the supervisor inside a new version's health window: PING the relay
    /// through its public socket at ADDRESS (TLS 1.3, HTTP/2) COUNT times; each answer must be
    /// PONG from this home's key.pub.
    #[command(hide = true)]
    Probe {
        /// The listening socket's address.
        address: std::net::SocketAddr,
        /// How many pings, each on a new connection.
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// The bound on each, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// The wait between two pings, in milliseconds (they spread over a health window).
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// Internal, run by `start`: leave the terminal's session, then become the supervisor.
    #[command(hide = true)]
    DetachSupervisor {
        /// The supervisor binary.
        supervisor: std::path::PathBuf,
        /// The relay binary it runs.
        relay: std::path::PathBuf,
    },
    /// Print the software version (with -v, the interface versions too).
    Version {
        /// Also print the interface versions.
        #[arg(short = 'v')]
        verbose: bool,
    },
}

/// Rewrites flags the way Go's `flag` package reads them into the form clap expects, so
/// scripts written for the Go relay keep working: one dash or two before any flag (`-fg`,
/// `--fg`, `--v`), a boolean flag with a value (`-fg=true`, `--force=false`: `1`, `t`, `true`,
/// `0`, `f`, `false` in Go's spellings; false drops the flag), and the argument after a flag
/// that takes a value is that value even when it starts with a dash (`--destination -acct`).
/// What is not a flag of the command is left for clap to report.
pub fn normalize<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let mut command: Option<&clap::Command> = None;
    let mut out = Vec::new();
    let mut args = args.into_iter().enumerate();
    while let Some((i, a)) = args.next() {
        if i == 0 || a == "--" {
            out.push(a);
            if i > 0 {
                out.extend(args.by_ref().map(|(_, a)| a));
            }
            continue;
        }
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            if command.is_none() {
                command = cli.find_subcommand(&a);
            }
            out.push(a);
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (flag, None),
        };
        let known = command.and_then(|c| {
            c.get_arguments().find(|arg| {
                arg.get_long() == Some(name)
                    || (name.chars().count() == 1 && arg.get_short() == name.chars().next())
            })
        });
        let Some(arg) = known else {
            // Not a flag of the command (or no command yet): a single-dash long flag gets its
            // second dash, the rest goes to clap as it is.
            let single_long = !a.starts_with("--")
                && a.len() > 2
                && a[1..].starts_with(|c: char| c.is_ascii_alphabetic());
            out.push(if single_long { format!("-{a}") } else { a });
            continue;
        };
        let spelled = match (arg.get_long(), arg.get_short()) {
            (Some(long), _) => format!("--{long}"),
            (None, Some(short)) => format!("-{short}"),
            (None, None) => a.clone(),
        };
        let boolean = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        match (boolean, value) {
            (true, None) => out.push(spelled),
            (true, Some(v)) => match go_bool(v) {
                Some(true) => out.push(spelled),
                Some(false) => {}
                // clap says the flag takes no value, as Go says the value is not a boolean.
                None => out.push(format!("{spelled}={v}")),
            },
            (false, Some(v)) => out.push(format!("{spelled}={v}")),
            (false, None) => {
                out.push(spelled);
                if let Some((_, value)) = args.next() {
                    // `=` keeps clap from reading a value that starts with a dash as a flag.
                    let last = out.len() - 1;
                    out[last] = format!("{}={value}", out[last]);
                }
            }
        }
    }
    out
}

/// A boolean as Go's `strconv.ParseBool` spells it.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_shape_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn go_style_flags_are_accepted() {
        let args = normalize(["wireleap-relay", "start", "-fg"].map(String::from));
        let cli = Cli::try_parse_from(args).unwrap();
        assert!(matches!(cli.command, Command::Start { fg: true }));
        let args = normalize(["wireleap-relay", "version", "-v"].map(String::from));
        let cli = Cli::try_parse_from(args).unwrap();
        assert!(matches!(cli.command, Command::Version { verbose: true }));
    }

    #[test]
    fn flags_read_as_go_reads_them() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(normalize(
                std::iter::once("wireleap-relay")
                    .chain(args.iter().copied())
                    .map(str::to_owned),
            ))
            .map(|c| c.command)
        };
        for fg in [
            &["start", "--fg"][..],
            &["start", "-fg=true"],
            &["start", "--fg=1"],
            &["start", "-fg=T"],
        ] {
            assert!(
                matches!(parse(fg), Ok(Command::Start { fg: true })),
                "{fg:?}"
            );
        }
        for bg in [
            &["start", "-fg=false"][..],
            &["start", "--fg=0"],
            &["start"],
        ] {
            assert!(
                matches!(parse(bg), Ok(Command::Start { fg: false })),
                "{bg:?}"
            );
        }
        assert!(parse(&["start", "--fg=maybe"]).is_err());
        for v in [
            &["version", "-v"][..],
            &["version", "--v"],
            &["version", "-v=true"],
        ] {
            assert!(
                matches!(parse(v), Ok(Command::Version { verbose: true })),
                "{v:?}"
            );
        }
        assert!(matches!(
            parse(&["init", "-force=false"]),
            Ok(Command::Init { force: false })
        ));
        // A value that starts with a dash is the flag's value, with or without `=`.
        for w in [
            &["withdraw", "-destination", "-acct1", "-amount", "5"][..],
            &["withdraw", "--destination=-acct1", "--amount=5"],
        ] {
            match parse(w) {
                Ok(Command::Withdraw {
                    destination,
                    amount: 5,
                    ..
                }) => assert_eq!(destination, "-acct1", "{w:?}"),
                other => panic!("{w:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(&["withdraw", "--destination", "x", "--amount", "-5"]),
            Ok(Command::Withdraw { amount: -5, .. })
        ));
        // The version positional and the global help are not touched.
        assert!(matches!(
            parse(&["upgrade", "-yes=true", "1.2.3"]),
            Ok(Command::Upgrade { yes: true, version: Some(v) }) if v == "1.2.3"
        ));
        assert!(parse(&["start", "-nope"]).is_err());
    }

    #[test]
    fn upgrade_takes_yes_and_an_optional_version() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(normalize(args.iter().map(|a| (*a).to_owned()))).map(|c| c.command)
        };
        assert!(matches!(
            parse(&["wireleap-relay", "upgrade"]),
            Ok(Command::Upgrade {
                yes: false,
                version: None
            })
        ));
        assert!(matches!(
            parse(&["wireleap-relay", "upgrade", "-yes", "1.2.3"]),
            Ok(Command::Upgrade { yes: true, version: Some(v) }) if v == "1.2.3"
        ));
        assert!(matches!(
            parse(&["wireleap-relay", "upgrade", "-y"]),
            Ok(Command::Upgrade {
                yes: true,
                version: None
            })
        ));
        assert!(parse(&["wireleap-relay", "rollback", "1.2.3"]).is_err());
    }
}

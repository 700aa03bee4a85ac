//! The supervisor's command line (clap): its flags and `ctl` requests. Its own module so the
//! packaging tool renders the man page and completions from the same definition.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Keeps wireleap-relay running on a listening socket it owns, upgrades it from verified
/// releases and rolls back a version that fails.
///
/// The home directory is the folder of this executable (symlinks resolved), or
/// $WIRELEAP_RELAY_HOME. The waits default to config.json's "supervisor" section, else 30 s.
#[derive(Debug, Parser)]
#[command(name = "wireleap-relay-supervisor", version)]
pub struct Cli {
    /// The relay binary to run [default: <home>/wireleap-relay].
    #[arg(long, value_name = "PATH")]
    pub relay: Option<PathBuf>,
    /// How long a new version must serve before it is committed, in config.json's duration
    /// syntax (30s, 1m, 1m30s; a bare number is seconds).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub health_window: Option<Duration>,
    /// How long a relay generation may take to report ready, same syntax.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub ready_timeout: Option<Duration>,
    /// How long one run of a release's migrations may take before it is killed (with its
    /// process group) and the release rolled back, same syntax.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "2m")]
    pub migrate_timeout: Duration,
    /// Run every relay process as this user (name or uid; its primary group), without
    /// capabilities: a compromised relay cannot change what runs next (docs/install.md). The
    /// supervisor needs root, or CAP_SETUID, CAP_SETGID and CAP_KILL and the user's group.
    #[arg(long, value_name = "USER")]
    pub relay_user: Option<String>,
    /// How long a serving relay may go without its liveness ping before a new generation
    /// replaces it (the relay pings three times per period); 0 turns the watch off [default:
    /// config.json's supervisor.liveness, else 15s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub liveness: Option<Duration>,
    /// The resident memory a new version may reach inside its health window before it is
    /// rolled back and skipped, in config.json's data-size syntax (512MB, 1GB; 1 KB = 1024 B); 0 turns the
    /// check off [default: config.json's supervisor.max_memory, else 1GB].
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub max_memory: Option<u64>,
    /// How many PINGs a new version must answer through the public socket (TLS, HTTP/2, with
    /// its own key as origin) inside its health window; 0 turns the probe off [default:
    /// config.json's supervisor.probe_count, else 3].
    #[arg(long, value_name = "N")]
    pub probe_count: Option<u32>,
    /// How long the release's own supervisor has to take over (serve) before it is killed,
    /// skipped, and this one serves on; at least the ready timeout and 5 s.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "60s")]
    pub supervisor_trial: Duration,
    /// Check the arguments and the home as a start would, print the version and exit, running
    /// nothing (a supervisor runs a release's own supervisor so before it hands over to it).
    #[arg(long, hide = true)]
    pub preflight: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask the supervisor that runs this home.
    Ctl {
        #[command(subcommand)]
        request: Ctl,
    },
}

#[derive(Debug, Subcommand)]
pub enum Ctl {
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
pub fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{text:?} is not a duration: expected e.g. 30s, 1m, 1m30s"));
    }
    wireleap_home::value::parse_duration(text).map_err(|e| e.to_string())
}

/// A data size in config.json's syntax (`512MB`), or a bare number of bytes.
pub fn size(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .or_else(|_| wireleap_home::value::parse_datasize(text).map_err(|e| e.to_string()))
}

pub fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        Duration::ZERO => Err("must be more than 0".to_owned()),
        d => Ok(d),
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

//! The relay's side of the seam with its supervisor, one path for the Upgrader and the `upgrade`
//! command: where a release is staged, and the request that hands it over.

use std::path::Path;
use std::time::Duration;

use relay_release::fetch::Destination;
use semver::Version;
use wireleap_home::control::{self, Request};
use wireleap_home::files::{NEXT, NEXT_STATEMENT};

/// How long the supervisor may take to answer an upgrade or a rollback: its readiness timeout,
/// the health window and the drain all fit in this.
pub const SUPERVISOR_WAIT: Duration = Duration::from_secs(30 * 60);

/// Where a verified release is staged: `wireleap-relay.next` and its statement.
#[must_use]
pub fn destination(home: &Path) -> Destination {
    Destination {
        binary: home.join(NEXT),
        statement: home.join(NEXT_STATEMENT),
        supervisor: Some(home.join(wireleap_home::files::SUPERVISOR_NEXT)),
    }
}

/// What became of a staged release handed to the supervisor.
#[derive(Debug)]
pub enum Handover {
    /// The supervisor committed it.
    Committed,
    /// The supervisor refused it or rolled it back (and skipped it), saying why.
    Refused(String),
    /// No supervisor listens: the staged files were removed (no `.next` is left behind, spec §10
    /// #8).
    NoSupervisor,
    /// The supervisor took the request but its answer did not arrive (it may have replaced the
    /// generation that asked); its journal has the outcome.
    NoAnswer(std::io::Error),
}

/// Asks the supervisor of `home` to install the staged `version`, waiting up to
/// [`SUPERVISOR_WAIT`] (blocking).
#[must_use]
pub fn hand_over(home: &Path, version: &Version) -> Handover {
    let request = Request::Upgrade {
        version: version.to_string(),
    };
    match control::call(home, &request, SUPERVISOR_WAIT) {
        Ok(reply) if reply.ok => Handover::Committed,
        Ok(reply) => Handover::Refused(
            reply
                .error
                .unwrap_or_else(|| "the supervisor refused".to_owned()),
        ),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            let staged = destination(home);
            let _ = std::fs::remove_file(&staged.binary);
            let _ = std::fs::remove_file(&staged.statement);
            if let Some(supervisor) = &staged.supervisor {
                let _ = std::fs::remove_file(supervisor);
            }
            Handover::NoSupervisor
        }
        Err(e) => Handover::NoAnswer(e),
    }
}

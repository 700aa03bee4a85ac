//! Interface versions and the minor-number compatibility rule (spec §7).
//!
//! Every pair of components has an interface version; two sides are compatible when the
//! **minor** numbers match (the major is ignored). Header names follow
//! `Wireleap-<Consumer>-<Provider>-Version`.

use semver::Version;

/// client-relay interface: what clients put in `wl-payload.version`.
pub const CLIENT_RELAY: Version = Version::new(0, 2, 0);
/// relay-relay interface (advertised only).
pub const RELAY_RELAY: Version = Version::new(0, 2, 0);
/// relay-dir interface.
pub const RELAY_DIR: Version = Version::new(0, 2, 0);
/// relay-contract interface.
pub const RELAY_CONTRACT: Version = Version::new(0, 1, 0);

/// Header carrying the relay-dir interface version (requests and replies).
pub const HEADER_RELAY_DIR_VERSION: &str = "Wireleap-Relay-Dir-Version";
/// Header carrying the relay-contract interface version (requests and replies).
pub const HEADER_RELAY_CONTRACT_VERSION: &str = "Wireleap-Relay-Contract-Version";
/// Header carrying the relay's software version.
pub const HEADER_RELAY_VERSION: &str = "Wireleap-Relay-Version";

/// A version text that failed the compatibility rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The other side answered with another minor number (a reply check).
    #[error("invalid server API version: expecting version 0.{expected_minor}.x, got {got}")]
    Server {
        /// Our minor number.
        expected_minor: u64,
        /// The version text received.
        got: String,
    },
    /// The caller sent another minor number (a server-side request check).
    #[error("invalid client API version: expecting version 0.{expected_minor}.x, got {got}")]
    Client {
        /// Our minor number.
        expected_minor: u64,
        /// The version text received.
        got: String,
    },
}

/// Whether `theirs` parses as semver and has the same minor number as `ours`.
pub fn is_compatible(ours: &Version, theirs: &str) -> bool {
    Version::parse(theirs.trim()).is_ok_and(|v| v.minor == ours.minor)
}

/// The caller-side check of a reply's version header (spec §4.2).
///
/// `None` (header absent) passes.
///
/// # Errors
/// [`VersionError::Server`] with the reference's text.
pub fn check_reply(ours: &Version, header: Option<&str>) -> Result<(), VersionError> {
    match header {
        None => Ok(()),
        Some(v) if is_compatible(ours, v) => Ok(()),
        Some(v) => Err(VersionError::Server {
            expected_minor: ours.minor,
            got: v.to_owned(),
        }),
    }
}

/// The server-side check of a request's version header (spec §7, `VersionGate`).
///
/// `None` (header absent) passes.
///
/// # Errors
/// [`VersionError::Client`] with the reference's text (goes into `cause` of a 400).
pub fn check_request(ours: &Version, header: Option<&str>) -> Result<(), VersionError> {
    match header {
        None => Ok(()),
        Some(v) if is_compatible(ours, v) => Ok(()),
        Some(v) => Err(VersionError::Client {
            expected_minor: ours.minor,
            got: v.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_rule() {
        assert!(check_reply(&RELAY_DIR, None).is_ok());
        assert!(check_reply(&RELAY_DIR, Some("0.2.7")).is_ok());
        assert!(check_reply(&RELAY_DIR, Some("1.2.0")).is_ok());
        let e = check_reply(&RELAY_DIR, Some("0.3.0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid server API version: expecting version 0.2.x, got 0.3.0"
        );
        assert!(check_reply(&RELAY_DIR, Some("garbage")).is_err());
        let e = check_request(&RELAY_CONTRACT, Some("0.2.0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid client API version: expecting version 0.1.x, got 0.2.0"
        );
    }
}

//! Release versions: parsing untrusted version text safely, and the version floor.
//!
//! A version arrives from the directory (an upgrade notice), from `channels.json`, from the
//! operator and from the signed statement. Before any of them touches a path or a URL it must
//! parse here (SPEC step 4): a plain `MAJOR.MINOR.PATCH[-PRE]` semantic version, no build
//! metadata, no leading `v`, nothing else. The floor (SPEC step 8) is the rule that makes
//! rollback and replay fail: the offered version must be strictly above both the running
//! version and the highest version ever committed.

use semver::Version;

use crate::Error;
use crate::error::clip;

/// The longest version text accepted.
pub const MAX_VERSION_LEN: usize = 64;

/// Parses untrusted version text into a plain semantic version.
///
/// Accepts `1.2.3` and `1.2.3-rc.1`; refuses build metadata (`+x`, which semver ordering
/// ignores), a leading `v`, whitespace, and anything with characters outside
/// `[0-9A-Za-z.-]`, so the result is always safe in a path or URL segment.
///
/// # Errors
///
/// [`Error::UnsafeVersion`] when the text is not such a version.
pub fn parse_version(text: &str) -> Result<Version, Error> {
    let unsafe_version = || Error::UnsafeVersion { text: clip(text) };
    if text.is_empty()
        || text.len() > MAX_VERSION_LEN
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(unsafe_version());
    }
    let version = Version::parse(text).map_err(|_| unsafe_version())?;
    if !version.build.is_empty() {
        return Err(unsafe_version());
    }
    Ok(version)
}

/// Which versions may be installed (SPEC step 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionFloor {
    /// Only versions strictly above the running version and strictly above the highest
    /// version ever committed on this host. The normal case, for the automatic upgrade and
    /// for the operator's `upgrade`.
    Above {
        /// The version running now.
        running: Version,
        /// The highest version committed on this host (persisted by the supervisor, raised
        /// only after a commit, never from an announcement), if any.
        highest_committed: Option<Version>,
    },
    /// Any version, including downgrades. Only for the operator's explicit `rollback` and
    /// for re-checking a binary that is already installed.
    UnsafeAllowAny,
}

// === impl VersionFloor ===

impl VersionFloor {
    /// Checks `offered` against the floor.
    ///
    /// # Errors
    ///
    /// [`Error::NotAboveRunning`] or [`Error::NotAboveCommitted`].
    pub fn check(&self, offered: &Version) -> Result<(), Error> {
        match self {
            Self::UnsafeAllowAny => Ok(()),
            Self::Above {
                running,
                highest_committed,
            } => {
                if offered <= running {
                    return Err(Error::NotAboveRunning {
                        offered: offered.clone(),
                        running: running.clone(),
                    });
                }
                if let Some(committed) = highest_committed
                    && offered <= committed
                {
                    return Err(Error::NotAboveCommitted {
                        offered: offered.clone(),
                        committed: committed.clone(),
                    });
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_versions_parse() {
        assert_eq!(parse_version("0.7.1").unwrap(), Version::new(0, 7, 1));
        assert!(parse_version("1.0.0-rc.1").is_ok());
    }

    #[test]
    fn unsafe_versions_are_refused() {
        for bad in [
            "",
            "v1.0.0",
            "1.0",
            "1.0.0+build",
            "1.0.0/../../x",
            "../1.0.0",
            " 1.0.0",
            "1.0.0\n",
            "1.0.0-..",
            "01.0.0",
            &"1".repeat(100),
        ] {
            assert!(
                matches!(parse_version(bad), Err(Error::UnsafeVersion { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn floor_is_strict() {
        let floor = VersionFloor::Above {
            running: Version::new(0, 7, 0),
            highest_committed: Some(Version::new(0, 7, 2)),
        };
        assert!(matches!(
            floor.check(&Version::new(0, 7, 0)),
            Err(Error::NotAboveRunning { .. })
        ));
        assert!(matches!(
            floor.check(&Version::new(0, 7, 2)),
            Err(Error::NotAboveCommitted { .. })
        ));
        assert!(floor.check(&Version::new(0, 7, 3)).is_ok());
        assert!(
            VersionFloor::UnsafeAllowAny
                .check(&Version::new(0, 1, 0))
                .is_ok()
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_round_trips_and_orders(
            a in (0u64..50, 0u64..50, 0u64..50),
            b in (0u64..50, 0u64..50, 0u64..50),
        ) {
            let va = Version::new(a.0, a.1, a.2);
            let vb = Version::new(b.0, b.1, b.2);
            proptest::prop_assert_eq!(parse_version(&va.to_string()).unwrap(), va.clone());
            let floor = VersionFloor::Above { running: va.clone(), highest_committed: None };
            proptest::prop_assert_eq!(floor.check(&vb).is_ok(), vb > va);
        }

        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            if let Ok(v) = parse_version(&text) {
                // Whatever parses is path-safe.
                let s = v.to_string();
                proptest::prop_assert!(!s.contains('/') && !s.contains("..") && !s.starts_with('.'));
            }
        }
    }
}

//! Whether an upgrade notice is acted on (DESIGN.md upgrade step 1): a pure function, so every
//! rule is tested without clocks, files or networks.

use semver::Version;

/// What to do with a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Download, verify and stage this version.
    Upgrade(Version),
    /// Leave it; the reason is logged and shown in `status`.
    Ignore(Ignored),
}

/// Why a notice is ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// `auto_upgrade` is off: the operator upgrades by hand.
    #[error("auto_upgrade is off; upgrade by hand with `wireleap-relay upgrade`")]
    AutoUpgradeOff,
    /// The version is in `.skip-upgrade-version` (a failed upgrade, or the operator's choice).
    #[error("version {0} is in .skip-upgrade-version")]
    Skipped(Version),
    /// Not newer than what runs: no downgrade except by the operator's `rollback`.
    #[error("version {offered} is not above the running {running}")]
    NotAboveRunning {
        /// The announced version.
        offered: Version,
        /// The running version.
        running: Version,
    },
    /// Not newer than the highest version ever committed (rollback/replay protection).
    #[error("version {offered} is not above the highest committed {committed}")]
    NotAboveCommitted {
        /// The announced version.
        offered: Version,
        /// The highest committed version.
        committed: Version,
    },
    /// The skip list or the highest committed version cannot be read: nothing installs.
    #[error("{0}")]
    StateUnreadable(String),
}

/// Decides on a notice for `offered`.
pub fn decide(
    offered: &Version,
    auto_upgrade: bool,
    skipped: &[Version],
    running: &Version,
    highest_committed: Option<&Version>,
) -> Decision {
    let ignore = Decision::Ignore;
    if !auto_upgrade {
        return ignore(Ignored::AutoUpgradeOff);
    }
    if skipped.contains(offered) {
        return ignore(Ignored::Skipped(offered.clone()));
    }
    if offered <= running {
        return ignore(Ignored::NotAboveRunning {
            offered: offered.clone(),
            running: running.clone(),
        });
    }
    if let Some(committed) = highest_committed
        && offered <= committed
    {
        return ignore(Ignored::NotAboveCommitted {
            offered: offered.clone(),
            committed: committed.clone(),
        });
    }
    Decision::Upgrade(offered.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn each_rule() {
        let run = v("0.7.0");
        assert_eq!(
            decide(&v("0.8.0"), true, &[], &run, None),
            Decision::Upgrade(v("0.8.0"))
        );
        assert_eq!(
            decide(&v("0.8.0"), false, &[], &run, None),
            Decision::Ignore(Ignored::AutoUpgradeOff)
        );
        assert!(matches!(
            decide(&v("0.8.0"), true, &[v("0.8.0")], &run, None),
            Decision::Ignore(Ignored::Skipped(_))
        ));
        assert!(matches!(
            decide(&v("0.6.9"), true, &[], &run, None),
            Decision::Ignore(Ignored::NotAboveRunning { .. })
        ));
        assert!(matches!(
            decide(&v("0.7.0"), true, &[], &run, None),
            Decision::Ignore(Ignored::NotAboveRunning { .. })
        ));
        // Running 0.7.0 after an operator rollback from 0.9.0: 0.8.0 must not come back.
        assert!(matches!(
            decide(&v("0.8.0"), true, &[], &run, Some(&v("0.9.0"))),
            Decision::Ignore(Ignored::NotAboveCommitted { .. })
        ));
    }

    proptest! {
        #[test]
        fn never_a_downgrade(a in 0u64..50, b in 0u64..50, c in 0u64..50) {
            let (offered, running, committed) = (Version::new(0, a, 0), Version::new(0, b, 0), Version::new(0, c, 0));
            if let Decision::Upgrade(to) = decide(&offered, true, &[], &running, Some(&committed)) {
                prop_assert!(to > running && to > committed);
            }
        }
    }
}

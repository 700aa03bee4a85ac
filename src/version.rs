//! The software version and the interface versions (spec §7).

/// The software version. A build may set `WIRELEAP_BUILD_VERSION` (upgrade tests build several
/// versions of the same source); it must be valid semver, which `main` checks at start.
pub const SOFTWARE: &str = match option_env!("WIRELEAP_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Interface versions, printed by `version -v` in the reference's order.
pub const INTERFACES: &[(&str, &str)] = &[
    ("relay-contract", "0.1.0"),
    ("relay-dir", "0.2.0"),
    ("relay-relay", "0.2.0"),
    ("client-relay", "0.2.0"),
];

/// The software version, parsed.
///
/// # Errors
/// When the build set a version that is not semver.
pub fn software() -> Result<semver::Version, semver::Error> {
    semver::Version::parse(SOFTWARE)
}

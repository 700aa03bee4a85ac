//! The software version and the interface versions (spec §7).

/// The version this source builds as. A build may set `WIRELEAP_BUILD_VERSION`; a release may
/// stamp another into [`STAMP`] (see [`software_str`]). It must be valid semver, which `main`
/// checks at start.
pub const BUILT: &str = match option_env!("WIRELEAP_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The version slot `release-tool stamp` fills after the build (`relay_release::stamp`).
#[used]
static STAMP: [u8; relay_release::stamp::SLOT_LEN] = relay_release::stamp::EMPTY_SLOT;

/// The software version: the stamped one if the binary was stamped, else [`BUILT`].
pub fn software_str() -> &'static str {
    // Read through an opaque reference: the slot's bytes change after compilation, so the
    // compiler must not fold them to the empty slot it saw.
    let slot: &'static [u8; relay_release::stamp::SLOT_LEN] = std::hint::black_box(&STAMP);
    relay_release::stamp::read(slot).unwrap_or(BUILT)
}

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
    semver::Version::parse(software_str())
}

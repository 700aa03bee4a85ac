//! One test per attack of upgrade-threats.md §2, each on its fixture in
//! `testdata/<scenario>/` and each asserting its own error variant (offline verification, as
//! the supervisor runs it; the download path is in `fetch.rs`).

use relay_release::layout::{Layout, statement_name};
use relay_release::verify::{read_statement, verify_statement};
use relay_release::{
    Error, Expected, ExpiryCheck, TrustedKeys, VerifiedStatement, VersionFloor, parse_version,
    verify_release_files,
};

use crate::support::{
    ASSET, FIXTURE_NOW, RUNNING, SCENARIOS, expected, key_path, project_keys, scenario_dir, time,
    write_scenarios,
};

fn check(
    scenario: &str,
    keys: &TrustedKeys,
    expected: &Expected,
) -> Result<VerifiedStatement, Error> {
    let dir = scenario_dir(scenario);
    verify_release_files(
        &dir.join(statement_name(ASSET)),
        &dir.join(ASSET),
        keys,
        expected,
    )
}

fn check_default(scenario: &str) -> Result<VerifiedStatement, Error> {
    check(scenario, &project_keys(), &expected())
}

#[test]
fn valid_release_verifies() {
    let v = check_default("valid").unwrap();
    assert_eq!(v.statement.version, parse_version("0.7.1").unwrap());
    assert_eq!(v.asset, ASSET);
    assert_eq!(v.signers, project_keys().fingerprints());
}

#[test]
fn arbitrary_installation_prefix_injected_digest_is_refused() {
    let err = check_default("prefix-injected").unwrap_err();
    assert!(matches!(err, Error::UnsignedText { line: 1 }), "{err:?}");
}

#[test]
fn arbitrary_installation_no_signed_block_is_refused() {
    let err = check_default("no-signed-block").unwrap_err();
    assert!(matches!(err, Error::NoSignedBlock), "{err:?}");
}

#[test]
fn arbitrary_installation_unknown_key_is_refused() {
    let err = check_default("unknown-key").unwrap_err();
    let Error::UnknownKey { issuers } = &err else {
        panic!("{err:?}");
    };
    assert!(!issuers.is_empty());
}

#[test]
fn arbitrary_installation_altered_signed_text_is_refused() {
    let err = check_default("bad-signature").unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");
}

#[test]
fn wrong_software_other_product_is_refused() {
    let err = check_default("wrong-product").unwrap_err();
    assert!(
        matches!(&err, Error::ProductMismatch { signed, .. } if signed == "wireleap"),
        "{err:?}"
    );
}

#[test]
fn wrong_software_other_target_is_refused() {
    let err = check_default("wrong-target").unwrap_err();
    assert!(
        matches!(&err, Error::TargetMismatch { signed, .. } if signed == "linux-aarch64"),
        "{err:?}"
    );
}

#[test]
fn replay_of_older_release_is_refused() {
    // A genuine 0.6.9 statement served where 0.7.1 was asked for.
    let err = check_default("version-rollback").unwrap_err();
    assert!(matches!(err, Error::VersionMismatch { .. }), "{err:?}");
}

#[test]
fn rollback_to_version_not_above_running_is_refused() {
    // The directory itself asks for the older 0.6.9.
    let mut want = expected();
    want.version = parse_version("0.6.9").unwrap();
    let err = check("downgrade", &project_keys(), &want).unwrap_err();
    assert!(matches!(err, Error::NotAboveRunning { .. }), "{err:?}");
    // The operator's explicit rollback may install it.
    want.floor = VersionFloor::UnsafeAllowAny;
    check("downgrade", &project_keys(), &want).unwrap();
}

#[test]
fn rollback_to_version_not_above_highest_committed_is_refused() {
    // Running 0.7.0 after a rollback from 0.7.2: 0.7.1 is above running, not above committed.
    let mut want = expected();
    want.floor = VersionFloor::Above {
        running: parse_version(RUNNING).unwrap(),
        highest_committed: Some(parse_version("0.7.2").unwrap()),
    };
    let err = check("below-threshold", &project_keys(), &want).unwrap_err();
    assert!(matches!(err, Error::NotAboveCommitted { .. }), "{err:?}");
}

#[test]
fn indefinite_freeze_expired_statement_is_refused() {
    let err = check_default("expired").unwrap_err();
    let Error::Expired { expires, now } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(expires, "2026-11-30T12:00:00Z");
    assert_eq!(now, FIXTURE_NOW);
    // The same statement was fine before it expired.
    let mut want = expected();
    want.expiry = ExpiryCheck::At(time("2026-11-30T06:00:00Z"));
    check("expired", &project_keys(), &want).unwrap();
}

#[test]
fn digest_mismatch_is_refused() {
    let err = check_default("digest-mismatch").unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
}

#[test]
fn truncated_file_is_refused() {
    let err = check_default("truncated").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                expected: 4096,
                got: 3000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn endless_data_oversized_file_is_refused() {
    let err = check_default("oversized").unwrap_err();
    assert!(
        matches!(err, Error::Oversized { limit: 4096, .. }),
        "{err:?}"
    );
}

#[test]
fn endless_data_oversized_statement_is_refused() {
    let dir = scenario_dir("oversized-statement");
    let err = read_statement(&dir.join(statement_name(ASSET))).unwrap_err();
    assert!(matches!(err, Error::StatementTooLarge { .. }), "{err:?}");
    let bytes = std::fs::read(dir.join(statement_name(ASSET))).unwrap();
    let err = verify_statement(&bytes, &project_keys(), &expected()).unwrap_err();
    assert!(matches!(err, Error::StatementTooLarge { .. }), "{err:?}");
}

#[test]
fn unsafe_asset_name_is_refused() {
    let err = check_default("traversal-name").unwrap_err();
    assert!(
        matches!(&err, Error::UnsafeName { name } if name.starts_with("../")),
        "{err:?}"
    );
}

#[test]
fn unsafe_version_is_refused() {
    // In the signed text...
    let err = check_default("unsafe-version").unwrap_err();
    assert!(matches!(err, Error::UnsafeVersion { .. }), "{err:?}");
    // ...and in an upgrade notice, before any URL or path is built.
    let err = parse_version("0.7.1/../../../etc").unwrap_err();
    assert!(matches!(err, Error::UnsafeVersion { .. }), "{err:?}");
    let layout = Layout::try_new("https://releases.example.invalid/").unwrap();
    let err = layout
        .asset_url(&parse_version("0.7.1").unwrap(), "../../evil")
        .unwrap_err();
    assert!(matches!(err, Error::UnsafeName { .. }), "{err:?}");
}

#[test]
fn mix_and_match_unlisted_asset_is_refused() {
    let err = check_default("mix-and-match").unwrap_err();
    // The error carries the signed statement as served: a relay's proof for its supervisor.
    let served =
        std::fs::read_to_string(scenario_dir("mix-and-match").join(statement_name(ASSET))).unwrap();
    assert!(
        matches!(&err, Error::AssetNotListed { statement, .. } if *statement == served),
        "{err:?}"
    );
}

#[test]
fn key_rotation_second_trusted_key_verifies() {
    // Signed by the rotated key: unknown to a relay that trusts only the project key...
    let err = check_default("rotated-key").unwrap_err();
    assert!(matches!(err, Error::UnknownKey { .. }), "{err:?}");
    // ...and accepted once the new key is trusted too (both keys during a rotation).
    let keys = project_keys()
        .with_file(&key_path("rotated", "pub"))
        .unwrap();
    assert_eq!(keys.fingerprints().len(), 2);
    let v = check("rotated-key", &keys, &expected()).unwrap();
    assert_eq!(v.signers, vec![keys.fingerprints()[1].clone()]);
    // The project key still verifies its own releases with both trusted.
    check("valid", &keys, &expected()).unwrap();
}

#[test]
fn every_attack_has_its_own_error_variant() {
    let variant = |scenario: &str| {
        let result = check_default(scenario);
        assert!(result.is_err(), "{scenario} verified");
        variant_name(&result)
    };
    let mut seen = std::collections::BTreeMap::new();
    for scenario in [
        "prefix-injected",
        "no-signed-block",
        "unknown-key",
        "bad-signature",
        "wrong-product",
        "wrong-target",
        "version-rollback",
        "expired",
        "digest-mismatch",
        "truncated",
        "oversized",
        "traversal-name",
        "unsafe-version",
        "mix-and-match",
        "oversized-statement",
    ] {
        let v = variant(scenario);
        if let Some(other) = seen.insert(v.clone(), scenario) {
            panic!("{scenario} and {other} both fail with {v}");
        }
    }
}

#[test]
fn checked_in_fixtures_are_complete_and_regenerate_consistently() {
    // Every scenario directory exists with its three files.
    for name in SCENARIOS {
        let dir = scenario_dir(name);
        for file in [
            ASSET.to_owned(),
            statement_name(ASSET),
            "changelog.md".to_owned(),
        ] {
            assert!(
                dir.join(&file).is_file(),
                "missing {}/{file}",
                dir.display()
            );
        }
    }
    // The generator yields fixtures that fail the same way (signatures differ byte-wise).
    let tmp = tempfile::tempdir().unwrap();
    write_scenarios(tmp.path());
    for name in SCENARIOS {
        let fresh = verify_release_files(
            &tmp.path().join(name).join(statement_name(ASSET)),
            &tmp.path().join(name).join(ASSET),
            &project_keys(),
            &expected(),
        );
        let checked_in = check_default(name);
        assert_eq!(variant_name(&fresh), variant_name(&checked_in), "{name}");
    }
}

/// `Ok` or the error variant's name.
fn variant_name<T>(result: &Result<T, Error>) -> String {
    match result {
        Ok(_) => "Ok".to_owned(),
        Err(e) => format!("{e:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

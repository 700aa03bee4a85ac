//! Roots and thresholds (SPEC "Roots"): one test per hostile input of the trust root, each on
//! its fixture in `testdata/roots/` and each asserting its own error variant; rotation followed
//! and persisted through a home directory's `trusted-keys/`.
//!
//! The fixture roots: `1.root` (keys A, B, C; 2 of them sign roots and releases) and `2.root`
//! (C replaced by D), signed by the TEST-ONLY keys `test-only-root-{a..e}` of `testdata/keys/`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use relay_release::layout::statement_name;
use relay_release::trust::{ROOTS_DIR, TRUST_DIR};
use relay_release::verify::verify_statement;
use relay_release::{Error, ExpiryCheck, Role, Root, Trust, TrustedKeys};

use crate::support::{ASSET, FIXTURE_NOW, expected, key_path, testdata, time};

fn roots_dir() -> PathBuf {
    testdata().join("roots")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(roots_dir().join(name)).unwrap()
}

fn now() -> SystemTime {
    time(FIXTURE_NOW)
}

fn root_v1() -> Root {
    Root::verify_anchor(&fixture("1.root"), now()).unwrap()
}

fn root_v2() -> Root {
    root_v1().verify_next(&fixture("2.root"), now()).unwrap()
}

fn fpr(name: &str) -> String {
    TrustedKeys::empty()
        .with_file(&key_path(name, "pub"))
        .unwrap()
        .fingerprints()
        .remove(0)
}

/// The release fixture `release-<signers>.hash` checked with the release keys of `root`.
fn release(signers: &str, keys: &TrustedKeys) -> Result<Vec<String>, Error> {
    let bytes = fixture(&format!("release-{signers}.hash"));
    verify_statement(&bytes, keys, &expected()).map(|v| v.signers)
}

#[test]
fn two_of_three_release_verifies_with_two_distinct_keys() {
    let keys = root_v1().keys_for(Role::Release);
    assert_eq!(keys.threshold(), 2);
    let mut signers = release("a-b", &keys).unwrap();
    signers.sort();
    let mut want = vec![fpr("root-a"), fpr("root-b")];
    want.sort();
    assert_eq!(signers, want);
    // The fixtures are real: the statement names the fixture binary.
    assert!(
        String::from_utf8(fixture("release-a-b.hash"))
            .unwrap()
            .contains(ASSET)
    );
}

#[test]
fn one_signature_when_two_are_required_is_refused() {
    let err = release("a", &root_v1().keys_for(Role::Release)).unwrap_err();
    assert!(
        matches!(&err, Error::ThresholdNotMet { needed: 2, valid, role } if valid.len() == 1 && role == "release"),
        "{err:?}"
    );
}

#[test]
fn the_same_key_signing_twice_counts_once() {
    let text = String::from_utf8(fixture("release-a-a.hash")).unwrap();
    assert!(text.matches("-----BEGIN PGP SIGNATURE-----").count() == 1);
    let err = release("a-a", &root_v1().keys_for(Role::Release)).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateSigner { key, needed: 2, .. } if *key == fpr("root-a")),
        "{err:?}"
    );
}

#[test]
fn a_key_the_newer_root_removed_is_refused_by_name() {
    // Under root 1, A and C suffice.
    release("a-c", &root_v1().keys_for(Role::Release)).unwrap();
    // Root 2 replaced C by D: C's signature no longer counts, and the error says why.
    let home = home_with_root(&["1.root"]);
    let mut trust = Trust::load(home.path()).unwrap();
    trust.accept_next(&fixture("2.root"), now()).unwrap();
    let keys = trust.release_keys(ExpiryCheck::At(now())).unwrap();
    let err = release("a-c", &keys).unwrap_err();
    assert!(
        matches!(&err, Error::RemovedKey { key, removed_in: 2, .. } if *key == fpr("root-c")),
        "{err:?}"
    );
    // After a restart too: the persisted chain says C was removed in 2.
    let keys = Trust::load(home.path())
        .unwrap()
        .release_keys(ExpiryCheck::At(now()))
        .unwrap();
    let err = release("a-c", &keys).unwrap_err();
    assert!(
        matches!(&err, Error::RemovedKey { removed_in: 2, .. }),
        "{err:?}"
    );
    // A and D, both in root 2, verify.
    release("a-d", &keys).unwrap();
}

#[test]
fn an_older_root_replayed_after_a_newer_one_is_refused() {
    let home = home_with_root(&["1.root", "2.root"]);
    let mut trust = Trust::load(home.path()).unwrap();
    assert_eq!(trust.root().unwrap().version(), 2);
    let err = trust.accept_next(&fixture("1.root"), now()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RootRollback {
                offered: 1,
                trusted: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        Trust::load(home.path()).unwrap().root().unwrap().version(),
        2
    );
}

#[test]
fn a_rotation_signed_only_by_the_new_keys_is_refused() {
    let err = root_v1()
        .verify_next(&fixture("rotation-new-keys-only.root"), now())
        .unwrap_err();
    assert!(
        matches!(&err, Error::RotationNotSignedByOld { version: 2, previous: 1, needed: 2, valid } if valid.is_empty()),
        "{err:?}"
    );
}

#[test]
fn a_rotation_signed_only_by_the_old_keys_is_refused() {
    let err = root_v1()
        .verify_next(&fixture("rotation-old-keys-only.root"), now())
        .unwrap_err();
    assert!(
        matches!(&err, Error::RotationNotSignedByNew { version: 2, needed: 2, valid } if valid.is_empty()),
        "{err:?}"
    );
}

#[test]
fn a_root_past_its_expiry_refuses_every_release() {
    let home = home_with_root(&[]);
    install(home.path(), "expired.root", "1.root");
    let trust = Trust::load(home.path()).unwrap();
    let err = trust.release_keys(ExpiryCheck::At(now())).unwrap_err();
    assert!(
        matches!(err, Error::RootExpired { version: 1, .. }),
        "{err:?}"
    );
    assert!(
        !err.is_peer_fault(),
        "an expired root must not skip the version"
    );
}

#[test]
fn an_oversized_root_is_refused_before_it_is_parsed() {
    let bytes = fixture("oversized.root");
    assert!(bytes.len() > 64 * 1024);
    let err = root_v1().verify_next(&bytes, now()).unwrap_err();
    assert!(
        matches!(err, Error::RootTooLarge { limit: 65536 }),
        "{err:?}"
    );
    let err = Root::verify_anchor(&bytes, now()).unwrap_err();
    assert!(matches!(err, Error::RootTooLarge { .. }), "{err:?}");
}

#[test]
fn a_world_writable_trust_folder_is_refused_with_its_path() {
    let home = home_with_root(&["1.root"]);
    let folder = home.path().join(TRUST_DIR);
    set_mode(&folder, 0o777);
    let err = Trust::load(home.path()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsafeTrustFile { path, .. } if *path == folder),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&folder.display().to_string()) && text.contains("0777"),
        "{text}"
    );
    // The roots folder and a root file are held to the same rule.
    set_mode(&folder, 0o755);
    let root_file = folder.join(ROOTS_DIR).join("1.root");
    set_mode(&root_file, 0o666);
    let err = Trust::load(home.path()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsafeTrustFile { path, .. } if *path == root_file),
        "{err:?}"
    );
}

#[test]
fn a_test_key_release_on_a_relay_that_does_not_trust_it_is_refused_by_name() {
    let project = fpr("project");
    // Nothing trusted at all (a build from source, nothing installed).
    let err = release("test-key", &TrustedKeys::empty()).unwrap_err();
    let Error::NothingTrusted { signers } = &err else {
        panic!("{err:?}");
    };
    assert!(signers.iter().any(|s| s.contains(&project)), "{signers:?}");
    let text = err.to_string();
    assert!(
        text.contains("TEST-ONLY") && text.contains("trusted-keys"),
        "{text}"
    );
    assert!(
        !err.is_peer_fault(),
        "nothing trusted is the operator's to fix, not a skip"
    );
    // A relay that trusts a root without that key.
    let err = release("test-key", &root_v1().keys_for(Role::Release)).unwrap_err();
    let Error::UnknownKey { issuers } = &err else {
        panic!("{err:?}");
    };
    assert!(issuers.iter().any(|s| s.contains(&project)), "{issuers:?}");
    assert!(err.to_string().contains("not trusted"), "{err}");
}

#[test]
fn a_rotation_is_followed_and_persisted_durably() {
    let home = home_with_root(&["1.root"]);
    let mut trust = Trust::load(home.path()).unwrap();
    assert_eq!(trust.root().unwrap().version(), 1);
    assert_eq!(
        trust
            .accept_next(&fixture("2.root"), now())
            .unwrap()
            .version(),
        2
    );
    let persisted = home.path().join(TRUST_DIR).join(ROOTS_DIR).join("2.root");
    assert_eq!(std::fs::read(&persisted).unwrap(), fixture("2.root"));
    let again = Trust::load(home.path()).unwrap();
    assert_eq!(again.root().unwrap().version(), 2);
    let listed: Vec<String> = again.keys().into_iter().map(|k| k.fingerprint).collect();
    assert!(listed.contains(&fpr("root-d")) && !listed.contains(&fpr("root-c")));
    // A key file beside a root is refused: the root alone decides.
    std::fs::copy(
        key_path("project", "pub"),
        home.path().join(TRUST_DIR).join("extra.pub"),
    )
    .unwrap();
    let err = Trust::load(home.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Trust { reason } if reason.contains("extra.pub")),
        "{err:?}"
    );
}

#[test]
fn fixtures_are_signed_by_what_they_claim() {
    // 2.root is a real rotation: 2 of root 1's keys and 2 of its own.
    let v2 = root_v2();
    assert_eq!(v2.version(), 2);
    assert!(v2.certs().contains_key(&fpr("root-d")));
    assert!(!v2.certs().contains_key(&fpr("root-c")));
}

/// A temp home whose `trusted-keys/roots/` holds the named fixture roots.
fn home_with_root(roots: &[&str]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(TRUST_DIR).join(ROOTS_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    set_mode(&home.path().join(TRUST_DIR), 0o755);
    set_mode(&dir, 0o755);
    for name in roots {
        install(home.path(), name, name);
    }
    home
}

fn install(home: &Path, fixture_name: &str, as_name: &str) {
    let dest = home.join(TRUST_DIR).join(ROOTS_DIR).join(as_name);
    std::fs::write(&dest, fixture(fixture_name)).unwrap();
    set_mode(&dest, 0o644);
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Rewrites `releases/testdata/roots/` from the test-only keys. Run by hand:
/// `cargo nextest run -p relay-release --run-ignored only regenerate_root_fixtures`.
#[test]
#[ignore = "rewrites the checked-in fixtures"]
fn regenerate_root_fixtures() {
    crate::support::write_root_fixtures(&roots_dir());
    let _ = statement_name(ASSET);
}

mod follow {
    //! Following rotations from a release server on 127.0.0.1 (`Fetcher::update_root`).

    use relay_release::fetch::Fetcher;
    use relay_release::{Error, Trust};

    use super::{fixture, home_with_root};
    use crate::support::server::{Route, Server};

    fn fetcher(server: &Server) -> Fetcher {
        crate::fetch::fetcher(server, crate::fetch::limits())
    }

    #[tokio::test]
    async fn rotations_are_followed_until_the_server_has_no_newer_root() {
        let server = Server::start().await;
        server.route("root/2.root", Route::Bytes(fixture("2.root")));
        let home = home_with_root(&["1.root"]);
        let mut trust = Trust::load(home.path()).unwrap();
        let followed = fetcher(&server).update_root(&mut trust).await.unwrap();
        assert_eq!(followed, vec![2]);
        assert_eq!(
            server.hits("root/3.root"),
            1,
            "asked for the next one, got 404"
        );
        assert_eq!(
            Trust::load(home.path()).unwrap().root().unwrap().version(),
            2
        );
        // Nothing newer: nothing changes.
        assert!(
            fetcher(&server)
                .update_root(&mut trust)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_forged_rotation_on_the_server_is_refused_and_nothing_is_kept() {
        let server = Server::start().await;
        server.route(
            "root/2.root",
            Route::Bytes(fixture("rotation-new-keys-only.root")),
        );
        let home = home_with_root(&["1.root"]);
        let mut trust = Trust::load(home.path()).unwrap();
        let err = fetcher(&server).update_root(&mut trust).await.unwrap_err();
        assert!(
            matches!(err, Error::RotationNotSignedByOld { .. }),
            "{err:?}"
        );
        assert_eq!(trust.root().unwrap().version(), 1);
        assert!(!home.path().join("trusted-keys/roots/2.root").exists());
    }

    #[tokio::test]
    async fn an_endless_root_download_is_cut_at_64_kib() {
        let server = Server::start().await;
        server.route("root/2.root", Route::Endless);
        let home = home_with_root(&["1.root"]);
        let mut trust = Trust::load(home.path()).unwrap();
        let err = fetcher(&server).update_root(&mut trust).await.unwrap_err();
        assert!(matches!(err, Error::RootTooLarge { .. }), "{err:?}");
    }
}

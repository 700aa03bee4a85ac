//! Release trust with the real binaries (issue: release trust): a relay that trusts nothing
//! refuses a release signed by the public test key and names it; with a 2-of-3 root made by
//! the real `release-tool`, an upgrade commits only with two distinct keys' signatures, a
//! rotation published on the release server is followed, and a key it removed no longer counts.

use std::path::{Path, PathBuf};

use crate::cli_upgrade::{assert_nothing_staged, cli, status_field, supervised_with_releases};
use crate::support::Home;
use crate::support::process::relay_bin;
use crate::support::releases::{
    publish, publish_signed, release_tool, set_channel, stamped, test_key,
};

/// The test-only project key's primary fingerprint (releases/testdata/keys).
const TEST_KEY_FPR: &str = "21244F0243F6E3AFA0D8424DF885560E8FE40EA4";

pub(crate) fn untrust(home: &Home) {
    std::fs::remove_dir_all(home.file("trusted-keys")).unwrap();
}

#[test]
fn a_relay_that_trusts_nothing_refuses_the_test_keys_release_by_name() {
    let (s, root) = supervised_with_releases();
    let home = &s.home;
    untrust(home);
    let version = cli(home, &["version", "-v"], "");
    assert_eq!(version.code, 0, "{version}");
    assert!(
        version.stdout.contains("trusted release keys: none"),
        "{version}"
    );

    let binary = stamped(root.path(), &relay_bin(), "9.0.0");
    publish(root.path(), "9.0.0", &binary);
    set_channel(root.path(), "9.0.0");
    let up = cli(home, &["upgrade", "--yes", "9.0.0"], "");
    assert_ne!(up.code, 0, "{up}");
    let line = up
        .stderr
        .lines()
        .find(|l| l.contains("no release key is trusted"))
        .unwrap_or_else(|| panic!("no refusal line:\n{up}"));
    assert!(
        line.contains(TEST_KEY_FPR),
        "the signer is not named: {line}"
    );
    assert!(
        line.contains("TEST-ONLY") && line.contains("trusted-keys"),
        "{line}"
    );
    assert_nothing_staged(home);
    let status = cli(home, &["status"], "");
    assert_eq!(
        status_field(&status, "version"),
        env!("CARGO_PKG_VERSION"),
        "{status}"
    );
    // Not the release's fault: the version is not skipped, so it installs once a key is added.
    assert!(!home.read(".skip-upgrade-version").contains("9.0.0"));
}

#[test]
fn check_config_warns_when_auto_upgrade_is_on_and_nothing_is_trusted() {
    let home = Home::untrusting();
    home.ok(&["init"]);
    home.write(
        "config.json",
        r#"{"address": "127.0.0.1:0", "auto_upgrade": true,
            "contracts": {"https://contract.example.invalid": {"address": "wireleap://127.0.0.1:13499", "role": "backing"}}}"#,
    );
    let out = home.run(&["check-config"]);
    assert!(
        out.stderr
            .contains("auto_upgrade is on but no release key is trusted"),
        "{out}"
    );
    // With the demo network's key installed the warning names it as a public test key.
    crate::support::releases::trust_test_key(home.path());
    let out = home.run(&["check-config"]);
    assert!(!out.stderr.contains("no release key is trusted"), "{out}");
    assert!(
        out.stderr.contains(TEST_KEY_FPR) && out.stderr.contains("TEST-ONLY"),
        "{out}"
    );
    let version = home.run(&["version", "-v"]);
    assert!(
        version
            .stdout
            .contains(&format!("trusted key {TEST_KEY_FPR}")),
        "{version}"
    );
}

#[test]
fn a_world_writable_trust_folder_is_refused_with_its_path() {
    use std::os::unix::fs::PermissionsExt as _;
    let (s, root) = supervised_with_releases();
    let home = &s.home;
    let folder = home.file("trusted-keys");
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(
        folder.join("test-only-project.pub"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let binary = stamped(root.path(), &relay_bin(), "9.0.0");
    publish(root.path(), "9.0.0", &binary);
    let up = cli(home, &["upgrade", "--yes", "9.0.0"], "");
    assert_ne!(up.code, 0, "{up}");
    assert!(
        up.stderr
            .contains(&format!("refusing {}", folder.display()))
            && up.stderr.contains("0777"),
        "{up}"
    );
    assert_nothing_staged(home);
}

/// The operator's root 1 at `out`: keys A, B, C; two of them sign roots and releases.
pub(crate) fn operator_root(out: &Path) {
    release_tool(&[
        "root",
        "init",
        "--threshold",
        "2",
        "--out",
        &s(out),
        "--key",
        &s(&key("a", "pub")),
        "--key",
        &s(&key("b", "pub")),
        "--key",
        &s(&key("c", "pub")),
    ]);
}

/// Root 2 at `root2` from `root1`: C out, D in, signed by the old threshold (A, B) and the new
/// (A, B, D), published into the release tree `tree`. Returns C's fingerprint.
pub(crate) fn rotate_c_out_d_in(root1: &Path, root2: &Path, tree: &Path) -> String {
    let c_fpr = key_fingerprint(&key("c", "pub"));
    release_tool(&[
        "root",
        "rotate",
        "--from",
        &s(root1),
        "--out",
        &s(root2),
        "--add-key",
        &s(&key("d", "pub")),
        "--remove-key",
        &c_fpr,
    ]);
    sign_and_publish(root2, &["a", "b", "d"], tree);
    c_fpr
}

pub(crate) fn key(n: &str, ext: &str) -> PathBuf {
    test_key(&format!("root-{n}"), ext)
}

pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn two_of_three_root_commits_with_two_keys_and_a_rotation_removes_a_key() {
    let (sv, tree) = supervised_with_releases();
    let home = &sv.home;
    let tree = tree.path();
    let work = tempfile::tempdir().unwrap();
    // The operator's root: A, B, C; two of them sign roots and releases.
    let root1 = work.path().join("1.root");
    operator_root(&root1);
    sign_and_publish(&root1, &["a", "b"], tree);
    untrust(home);
    let roots = home.file("trusted-keys/roots");
    std::fs::create_dir_all(&roots).unwrap();
    std::fs::copy(&root1, roots.join("1.root")).unwrap();
    let version = cli(home, &["version", "-v"], "");
    assert!(version.stdout.contains("root version 1"), "{version}");
    assert!(
        version.stdout.contains("needs 2 of its 3 release keys"),
        "{version}"
    );

    // One signature where two are required: refused, nothing staged.
    let v9 = stamped(work.path(), &relay_bin(), "9.0.0");
    publish_signed(tree, "9.0.0", &v9, &[key("a", "key")]);
    let up = cli(home, &["upgrade", "--yes", "9.0.0"], "");
    assert_ne!(up.code, 0, "{up}");
    assert!(
        up.stderr
            .contains("release needs 2 signatures by distinct trusted keys"),
        "{up}"
    );
    assert_nothing_staged(home);
    // Two distinct keys: committed.
    publish_signed(tree, "9.0.0", &v9, &[key("a", "key"), key("b", "key")]);
    let up = cli(home, &["upgrade", "--yes", "9.0.0"], "");
    assert_eq!(up.code, 0, "{up}");
    assert!(
        up.stdout.contains("successfully upgraded to version 9.0.0"),
        "{up}"
    );

    // Rotation to root 2: C out, D in, signed by the old threshold (A, B) and the new (A, B, D).
    let root2 = work.path().join("2.root");
    let c_fpr = rotate_c_out_d_in(&root1, &root2, tree);

    // A release signed by A and the removed C: the relay follows the rotation, then refuses.
    let v91 = stamped(work.path(), &relay_bin(), "9.1.0");
    publish_signed(tree, "9.1.0", &v91, &[key("a", "key"), key("c", "key")]);
    let up = cli(home, &["upgrade", "--yes", "9.1.0"], "");
    assert_ne!(up.code, 0, "{up}");
    assert!(up.stdout.contains("rotation to version 2"), "{up}");
    assert!(
        up.stderr.contains(&c_fpr) && up.stderr.contains("root version 2 removed"),
        "{up}"
    );
    assert_eq!(
        std::fs::read(roots.join("2.root")).unwrap(),
        std::fs::read(&root2).unwrap()
    );
    assert_nothing_staged(home);
    // A and D: committed, and the relay says it trusts root 2.
    publish_signed(tree, "9.1.0", &v91, &[key("a", "key"), key("d", "key")]);
    let up = cli(home, &["upgrade", "--yes", "9.1.0"], "");
    assert_eq!(up.code, 0, "{up}");
    let version = cli(home, &["version", "-v"], "");
    assert!(version.stdout.contains("root version 2"), "{version}");
    assert!(!version.stdout.contains(&c_fpr), "{version}");
}

/// `release-tool root sign` by each of `signers` (root-a … root-e), then `root publish` into the
/// release tree `tree`.
pub(crate) fn sign_and_publish(root: &Path, signers: &[&str], tree: &Path) {
    let mut args = vec!["root".to_owned(), "sign".to_owned()];
    for n in signers {
        args.push("--key".to_owned());
        args.push(s(&key(n, "key")));
    }
    args.push(s(root));
    release_tool(&args.iter().map(String::as_str).collect::<Vec<_>>());
    release_tool(&["root", "publish", "--root", &s(tree), &s(root)]);
}

pub(crate) fn key_fingerprint(public: &Path) -> String {
    relay_release::TrustedKeys::empty()
        .with_file(public)
        .unwrap()
        .fingerprints()
        .remove(0)
}

//! Interop with real tools: statements clear-signed by `gpg --clearsign` and by `sq` verify
//! with our verifier; ours verify with `gpg --verify` and `sq verify`, and pass
//! `sha512sum -c` / `sha256sum -c`. These tests fail (never skip) when a tool is missing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use relay_release::layout::statement_name;
use relay_release::manifest::whole_seconds;
use relay_release::{Error, ExpiryCheck, Statement, sign, verify_statement};

use crate::support::tools::{GnuPg, require, run, text};
use crate::support::{
    ASSET, TARGET, VERSION, expected, genuine_binary, key, key_path, project_keys, statement,
};

/// A statement issued a minute ago, valid for a day, and the expectation for "now".
fn fresh_statement() -> Statement {
    let mut s = statement("wireleap-relay", VERSION, TARGET, ASSET, &genuine_binary());
    s.issued = whole_seconds(SystemTime::now() - Duration::from_secs(60));
    s.expires = s.issued + Duration::from_secs(86_400);
    s
}

fn expected_now() -> relay_release::Expected {
    let mut e = expected();
    e.expiry = ExpiryCheck::At(SystemTime::now());
    e
}

#[test]
fn gpg_clearsigned_statement_verifies() {
    let gpg = GnuPg::new();
    gpg.import(&key_path("project", "key"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("statement.txt");
    std::fs::write(&input, fresh_statement().render(&statement_name(ASSET))).unwrap();
    for digest in ["SHA512", "SHA256"] {
        let output = dir.path().join(format!("statement-{digest}.asc"));
        let out = run(gpg
            .cmd()
            .args(["--pinentry-mode", "loopback", "--passphrase", ""])
            .args(["--digest-algo", digest])
            .arg("--local-user")
            .arg(key("project").fingerprint())
            .arg("--output")
            .arg(&output)
            .arg("--clearsign")
            .arg(&input));
        assert!(out.status.success(), "gpg --clearsign: {}", text(&out));
        let bytes = std::fs::read(&output).unwrap();
        let v = verify_statement(&bytes, &project_keys(), &expected_now())
            .unwrap_or_else(|e| panic!("{digest}: {e:?}\n{}", String::from_utf8_lossy(&bytes)));
        assert_eq!(v.statement, fresh_statement_like(&v.statement));
    }
}

/// The fresh statement with the verified one's times (they are set per call).
fn fresh_statement_like(verified: &Statement) -> Statement {
    let mut s = fresh_statement();
    s.issued = verified.issued;
    s.expires = verified.expires;
    s
}

#[test]
fn gpg_clearsigned_with_unknown_key_is_refused() {
    let gpg = GnuPg::new();
    gpg.import(&key_path("unknown", "key"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("statement.txt");
    let output = dir.path().join("statement.asc");
    std::fs::write(&input, fresh_statement().render("x.hash")).unwrap();
    let out = run(gpg
        .cmd()
        .args(["--pinentry-mode", "loopback", "--passphrase", ""])
        .arg("--output")
        .arg(&output)
        .arg("--clearsign")
        .arg(&input));
    assert!(out.status.success(), "{}", text(&out));
    let err = verify_statement(
        &std::fs::read(&output).unwrap(),
        &project_keys(),
        &expected_now(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::UnknownKey { .. }), "{err:?}");
}

#[test]
fn sq_clearsigned_statement_verifies() {
    require("sq", "sq");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("statement.txt");
    let output = dir.path().join("statement.asc");
    std::fs::write(&input, fresh_statement().render(&statement_name(ASSET))).unwrap();
    let out = run(Command::new("sq")
        .env("SEQUOIA_HOME", dir.path())
        .arg("sign")
        .arg("--cleartext-signature")
        .arg("--signer-key")
        .arg(key_path("project", "key"))
        .arg("--output")
        .arg(&output)
        .arg(&input));
    assert!(out.status.success(), "sq sign: {}", text(&out));
    let bytes = std::fs::read(&output).unwrap();
    let v = verify_statement(&bytes, &project_keys(), &expected_now())
        .unwrap_or_else(|e| panic!("{e:?}\n{}", String::from_utf8_lossy(&bytes)));
    assert_eq!(v.statement, fresh_statement_like(&v.statement));
}

/// Writes a release like `release-tool publish` does: binary, changelog and our statement.
fn our_release(dir: &Path) -> std::path::PathBuf {
    let s = fresh_statement();
    std::fs::write(dir.join(ASSET), genuine_binary()).unwrap();
    std::fs::write(dir.join("changelog.md"), crate::support::CHANGELOG).unwrap();
    let name = statement_name(ASSET);
    let signed = sign::sign_statement(&key("project"), &s, &name).unwrap();
    let path = dir.join(&name);
    std::fs::write(&path, signed).unwrap();
    path
}

#[test]
fn our_statement_verifies_with_gpg() {
    let gpg = GnuPg::new();
    gpg.import(&key_path("project", "pub"));
    let dir = tempfile::tempdir().unwrap();
    let path = our_release(dir.path());
    let out = run(gpg.cmd().arg("--verify").arg(&path));
    assert!(out.status.success(), "gpg --verify: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Good signature"),
        "{}",
        text(&out)
    );
    // A tampered copy fails gpg too.
    let tampered = dir.path().join("tampered.hash");
    let body = std::fs::read_to_string(&path)
        .unwrap()
        .replace("version: 0.7.1", "version: 0.7.9");
    std::fs::write(&tampered, body).unwrap();
    let out = run(gpg.cmd().arg("--verify").arg(&tampered));
    assert!(!out.status.success(), "gpg accepted a tampered statement");
    assert!(gpg.home().exists());
}

#[test]
fn our_statement_verifies_with_sq() {
    require("sq", "sq");
    let dir = tempfile::tempdir().unwrap();
    let path = our_release(dir.path());
    let out = run(Command::new("sq")
        .env("SEQUOIA_HOME", dir.path())
        .arg("verify")
        .arg("--signer-cert")
        .arg(key_path("project", "pub"))
        .arg(&path));
    assert!(out.status.success(), "sq verify: {}", text(&out));
}

#[test]
fn our_statement_passes_sha512sum_and_sha256sum() {
    require("sha512sum", "coreutils");
    let dir = tempfile::tempdir().unwrap();
    let path = our_release(dir.path());
    for tool in ["sha512sum", "sha256sum"] {
        let out = run(Command::new(tool)
            .current_dir(dir.path())
            .arg("-c")
            .arg(&path));
        assert!(out.status.success(), "{tool} -c: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("{ASSET}: OK")), "{}", text(&out));
        assert!(stdout.contains("changelog.md: OK"), "{}", text(&out));
    }
    // And it notices a swapped binary.
    std::fs::write(dir.path().join(ASSET), crate::support::evil_binary()).unwrap();
    let out = run(Command::new("sha512sum")
        .current_dir(dir.path())
        .arg("-c")
        .arg(&path));
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn gpg_clearsigned_by_two_keys_meets_a_threshold_of_two() {
    let gpg = GnuPg::new();
    gpg.import(&key_path("root-a", "key"));
    gpg.import(&key_path("root-b", "key"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("statement.txt");
    let output = dir.path().join("statement.asc");
    std::fs::write(&input, fresh_statement().render(&statement_name(ASSET))).unwrap();
    let out = run(gpg
        .cmd()
        .args(["--pinentry-mode", "loopback", "--passphrase", ""])
        .args(["--digest-algo", "SHA512"])
        .arg("--local-user")
        .arg(key("root-a").fingerprint())
        .arg("--local-user")
        .arg(key("root-b").fingerprint())
        .arg("--output")
        .arg(&output)
        .arg("--clearsign")
        .arg(&input));
    assert!(out.status.success(), "gpg --clearsign: {}", text(&out));
    let keys = relay_release::TrustedKeys::empty()
        .with_file(&key_path("root-a", "pub"))
        .unwrap()
        .with_file(&key_path("root-b", "pub"))
        .unwrap()
        .with_file(&key_path("root-c", "pub"))
        .unwrap()
        .with_threshold(2);
    let bytes = std::fs::read(&output).unwrap();
    let v = verify_statement(&bytes, &keys, &expected_now())
        .unwrap_or_else(|e| panic!("{e:?}\n{}", String::from_utf8_lossy(&bytes)));
    assert_eq!(v.signers.len(), 2);
    // Three required: two is not enough.
    let err = verify_statement(&bytes, &keys.with_threshold(3), &expected_now()).unwrap_err();
    assert!(
        matches!(err, Error::ThresholdNotMet { needed: 3, .. }),
        "{err:?}"
    );
}

//! The `release-tool` CLI end to end: keygen, publish, channel set, verify.

use std::path::Path;
use std::process::Command;

use relay_release::{Channels, Product, parse_version};

use crate::support::tools::{run, text};

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_release-tool"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A stand-in relay binary: a script that reports `version`.
fn fake_relay(path: &Path, version: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\necho {version}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn publish_refuses_a_binary_stamped_with_another_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut bin = b"binary".to_vec();
    bin.extend_from_slice(&relay_release::stamp::EMPTY_SLOT);
    relay_release::stamp::stamp(&mut bin, &parse_version("2.0.0").unwrap()).unwrap();
    std::fs::write(d.join("bin"), bin).unwrap();
    std::fs::write(d.join("notes.md"), b"# 2.0.1\n").unwrap();
    let out = run(tool()
        .arg("publish")
        .arg("--root")
        .arg(d.join("root"))
        .arg("--key")
        .arg(crate::support::key_path("project", "key"))
        .args(["--version", "2.0.1", "--target", "linux-aarch64"])
        .arg("--binary")
        .arg(d.join("bin"))
        .arg("--changelog")
        .arg(d.join("notes.md")));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("stamped as version 2.0.0, not 2.0.1"),
        "{}",
        text(&out)
    );
    assert!(
        !d.join("root/v2.0.1/wireleap-relay_linux-aarch64.hash")
            .exists()
    );
}

#[test]
fn keygen_publish_channel_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = d.join("k");
    ok(tool().arg("keygen").arg("--out").arg(&prefix));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.join("k.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // keygen never overwrites a secret key.
    let out = run(tool().arg("keygen").arg("--out").arg(&prefix));
    assert!(!out.status.success());

    fake_relay(&d.join("bin"), "1.2.3");
    std::fs::write(d.join("notes.md"), b"# 1.2.3\n").unwrap();
    let root = d.join("root");
    // A binary that reports another version than the one to sign is refused.
    fake_relay(&d.join("other"), "1.2.2");
    let out = run(tool()
        .arg("publish")
        .arg("--root")
        .arg(&root)
        .arg("--key")
        .arg(d.join("k.key"))
        .args(["--version", "1.2.3"])
        .arg("--binary")
        .arg(d.join("other"))
        .arg("--changelog")
        .arg(d.join("notes.md")));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("reports version \"1.2.2\", not 1.2.3"),
        "{}",
        text(&out)
    );
    ok(tool()
        .arg("publish")
        .arg("--root")
        .arg(&root)
        .arg("--key")
        .arg(d.join("k.key"))
        .args(["--version", "1.2.3", "--target", "linux-x86_64"])
        .arg("--binary")
        .arg(d.join("bin"))
        .arg("--changelog")
        .arg(d.join("notes.md")));
    let vdir = root.join("v1.2.3");
    for f in [
        "wireleap-relay_linux-x86_64",
        "wireleap-relay_linux-x86_64.hash",
        "changelog.md",
    ] {
        assert!(vdir.join(f).is_file(), "{f}");
    }
    // A second target of the same version reuses the changelog.
    ok(tool()
        .arg("publish")
        .arg("--root")
        .arg(&root)
        .arg("--key")
        .arg(d.join("k.key"))
        .args(["--version", "1.2.3", "--target", "linux-aarch64"])
        .arg("--binary")
        .arg(d.join("bin")));
    assert!(vdir.join("wireleap-relay_linux-aarch64.hash").is_file());

    ok(tool()
        .args(["channel", "set", "--root"])
        .arg(&root)
        .args(["default", "1.2.3"]));
    let channels = Channels::parse(&std::fs::read(root.join("channels.json")).unwrap()).unwrap();
    assert_eq!(
        channels.version(&Product::relay(), "default"),
        Some(&parse_version("1.2.3").unwrap())
    );
    assert!(ok(tool().args(["channel", "show", "--root"]).arg(&root)).contains("\"relay\""));

    let verify = |version: &str, extra: &[&str]| {
        let mut cmd = tool();
        cmd.arg("verify")
            .arg("--statement")
            .arg(vdir.join("wireleap-relay_linux-x86_64.hash"))
            .arg("--binary")
            .arg(vdir.join("wireleap-relay_linux-x86_64"))
            .args(["--version", version, "--target", "linux-x86_64"])
            .arg("--trust")
            .arg(d.join("k.pub"))
            .args(extra);
        run(&mut cmd)
    };
    let out = verify("1.2.3", &["--running", "1.2.2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK wireleap-relay 1.2.3"));
    // Bad release data exits 65.
    let out = verify("1.2.4", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let out = verify("1.2.3", &["--running", "1.2.3"]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    // Nothing is trusted by default: a local problem (exit 1) that says how to add a key.
    let statement = vdir.join("wireleap-relay_linux-x86_64.hash");
    let out = run(tool()
        .arg("verify")
        .arg("--statement")
        .arg(&statement)
        .args(["--version", "1.2.3", "--target", "linux-x86_64"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no release key is trusted"),
        "{}",
        text(&out)
    );
    // Another trusted key does not trust this new one: bad release data (exit 65).
    let out = run(tool()
        .arg("verify")
        .arg("--statement")
        .arg(&statement)
        .args(["--version", "1.2.3", "--target", "linux-x86_64"])
        .arg("--trust")
        .arg(crate::support::key_path("project", "pub")));
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
}

#[test]
fn import_accepts_a_secret_key_and_refuses_a_public_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(tool()
        .arg("import")
        .arg("--secret")
        .arg(crate::support::key_path("rotated", "key"))
        .arg("--out")
        .arg(d.join("imported")));
    assert!(Path::new(&d.join("imported.key")).is_file());
    let out = run(tool()
        .arg("import")
        .arg("--secret")
        .arg(crate::support::key_path("rotated", "pub"))
        .arg("--out")
        .arg(d.join("nope")));
    assert!(!out.status.success(), "{}", text(&out));
}

/// `release-tool publish` output, served as-is, is what the downloader stages for this host,
/// with the release's supervisor signed by the same statement; a supervisor the statement does
/// not sign stages nothing at all.
#[tokio::test]
async fn published_tree_is_staged_by_the_fetcher_for_this_host() {
    use relay_release::fetch::{Destination, Fetcher, Limits};
    use relay_release::{Expected, Layout};

    use crate::support::server::Server;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A stand-in relay for this host that reports 0.7.5, padded to 100 kB.
    fake_relay(&d.join("bin"), "0.7.5");
    let mut script = std::fs::read(d.join("bin")).unwrap();
    script.extend(std::iter::repeat_n(b'#', 100_000 - script.len()));
    std::fs::write(d.join("bin"), script).unwrap();
    std::fs::write(d.join("notes.md"), b"# 0.7.5\n").unwrap();
    std::fs::write(d.join("sup"), b"#!/bin/sh\necho the supervisor\n").unwrap();
    let root = d.join("root");
    // No --target: the host's OS and architecture.
    ok(tool()
        .arg("publish")
        .arg("--root")
        .arg(&root)
        .arg("--key")
        .arg(crate::support::key_path("project", "key"))
        .args(["--version", "0.7.5", "--valid-for", "1h"])
        .arg("--binary")
        .arg(d.join("bin"))
        .arg("--supervisor")
        .arg(d.join("sup"))
        .arg("--changelog")
        .arg(d.join("notes.md")));

    let server = Server::start().await;
    server.serve_dir("0.7.5", &root.join("v0.7.5"));
    let fetcher = Fetcher::try_new(
        Layout::try_new(&server.base_url()).unwrap(),
        Limits::default(),
    )
    .unwrap();
    let expected = Expected::for_host(
        Product::relay(),
        parse_version("0.7.5").unwrap(),
        parse_version("0.7.0").unwrap(),
        Some(parse_version("0.7.4").unwrap()),
    )
    .unwrap();
    let staging = d.join("home");
    std::fs::create_dir(&staging).unwrap();
    let dest = Destination {
        binary: staging.join("wireleap-relay.next"),
        statement: staging.join("wireleap-relay.next.hash"),
        supervisor: Some(staging.join("wireleap-relay-supervisor.next")),
    };
    let staged = fetcher
        .stage_release(&crate::support::project_keys(), &expected, &dest, |_| {})
        .await
        .unwrap();
    assert_eq!(
        staged.verified.asset,
        format!(
            "wireleap-relay_{}-{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        )
    );
    assert_eq!(
        std::fs::read(&dest.binary).unwrap(),
        std::fs::read(d.join("bin")).unwrap()
    );
    assert_eq!(
        std::fs::read(staged.supervisor.as_ref().unwrap()).unwrap(),
        std::fs::read(d.join("sup")).unwrap()
    );
    let notes = fetcher.fetch_changelog(&staged.verified).await.unwrap();
    assert_eq!(notes, "# 0.7.5\n");

    // The server's supervisor replaced: the release stages nothing.
    for f in std::fs::read_dir(&staging).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let sup = std::fs::read_dir(root.join("v0.7.5"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("wireleap-relay-supervisor_")
        })
        .unwrap();
    std::fs::write(&sup, b"#!/bin/sh\necho another\n").unwrap();
    let server = Server::start().await;
    server.serve_dir("0.7.5", &root.join("v0.7.5"));
    let fetcher = Fetcher::try_new(
        Layout::try_new(&server.base_url()).unwrap(),
        Limits::default(),
    )
    .unwrap();
    let err = fetcher
        .stage_release(&crate::support::project_keys(), &expected, &dest, |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("wireleap-relay-supervisor_"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
    assert!(left.is_empty(), "staged after a bad supervisor: {left:?}");
}

/// `root init`, `root sign` by two key holders in turn, `root verify`, `root rotate` (one key
/// replaced) signed by the old and the new keys, `root publish`, `publish` with two keys, and
/// `verify --root`: a 2-of-3 root end to end; the roots and the statement verify with
/// `gpg --verify`.
#[test]
fn root_init_sign_rotate_publish_and_verify_with_gpg() {
    use crate::support::key_path;
    use crate::support::tools::GnuPg;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = |n: &str, ext: &str| key_path(&format!("root-{n}"), ext);
    let root1 = d.join("1.root");
    ok(tool()
        .args(["root", "init", "--threshold", "2", "--valid-for", "30d"])
        .arg("--out")
        .arg(&root1)
        .args(
            ["a", "b", "c"]
                .iter()
                .flat_map(|n| ["--key".into(), k(n, "pub")]),
        ));
    // Unsigned: nothing trusts it yet.
    assert!(
        !run(tool().args(["root", "verify"]).arg(&root1))
            .status
            .success()
    );
    ok(tool()
        .args(["root", "sign", "--key"])
        .arg(k("a", "key"))
        .arg(&root1));
    let one = run(tool().args(["root", "verify"]).arg(&root1));
    assert!(
        !one.status.success(),
        "one of two signatures: {}",
        text(&one)
    );
    assert!(text(&one).contains("needs 2"), "{}", text(&one));
    // The same key again is refused; a second holder completes it.
    assert!(
        !run(tool()
            .args(["root", "sign", "--key"])
            .arg(k("a", "key"))
            .arg(&root1))
        .status
        .success()
    );
    ok(tool()
        .args(["root", "sign", "--key"])
        .arg(k("b", "key"))
        .arg(&root1));
    assert!(ok(tool().args(["root", "verify"]).arg(&root1)).contains("release: 2 of 3"));

    // Rotation: C out, D in; signed by A and B (old and new) and D.
    let root2 = d.join("2.root");
    let c_fpr = relay_release::TrustedKeys::empty()
        .with_file(&k("c", "pub"))
        .unwrap()
        .fingerprints()
        .remove(0);
    ok(tool()
        .args(["root", "rotate", "--from"])
        .arg(&root1)
        .arg("--out")
        .arg(&root2)
        .arg("--add-key")
        .arg(k("d", "pub"))
        .args(["--remove-key", &c_fpr]));
    ok(tool()
        .args(["root", "sign", "--key"])
        .arg(k("d", "key"))
        .arg(&root2));
    let new_only = run(tool()
        .args(["root", "verify", "--previous"])
        .arg(&root1)
        .arg(&root2));
    assert!(!new_only.status.success(), "{}", text(&new_only));
    ok(tool()
        .args(["root", "sign", "--key"])
        .arg(k("a", "key"))
        .arg("--key")
        .arg(k("b", "key"))
        .arg(&root2));
    ok(tool()
        .args(["root", "verify", "--previous"])
        .arg(&root1)
        .arg(&root2));
    let tree = d.join("tree");
    for r in [&root1, &root2] {
        ok(tool().args(["root", "publish", "--root"]).arg(&tree).arg(r));
    }
    assert!(tree.join("root/1.root").is_file() && tree.join("root/2.root").is_file());

    // A release signed by two keys of root 2.
    fake_relay(&d.join("bin"), "1.2.3");
    std::fs::write(d.join("notes.md"), b"# 1.2.3\n").unwrap();
    ok(tool()
        .args(["publish", "--version", "1.2.3", "--target", "linux-x86_64"])
        .arg("--root")
        .arg(&tree)
        .arg("--key")
        .arg(k("a", "key"))
        .arg("--key")
        .arg(k("d", "key"))
        .arg("--binary")
        .arg(d.join("bin"))
        .arg("--changelog")
        .arg(d.join("notes.md")));
    let statement = tree.join("v1.2.3/wireleap-relay_linux-x86_64.hash");
    let verify = |root: &Path| {
        run(tool()
            .arg("verify")
            .arg("--statement")
            .arg(&statement)
            .args(["--version", "1.2.3", "--target", "linux-x86_64"])
            .arg("--root")
            .arg(root))
    };
    assert!(verify(&root2).status.success(), "{}", text(&verify(&root2)));
    // Root 1 does not have D: one valid signature of two.
    let out = verify(&root1);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));

    // gpg checks every signature of the roots and the statement.
    let gpg = GnuPg::new();
    for n in ["a", "b", "c", "d"] {
        gpg.import(&k(n, "pub"));
    }
    for file in [&root1, &root2, &statement] {
        let out = run(gpg.cmd().arg("--verify").arg(file));
        assert!(
            out.status.success(),
            "gpg --verify {}: {}",
            file.display(),
            text(&out)
        );
        let good = String::from_utf8_lossy(&out.stderr)
            .matches("Good signature")
            .count();
        assert!(
            good >= 2,
            "{}: {good} good signatures\n{}",
            file.display(),
            text(&out)
        );
    }
}

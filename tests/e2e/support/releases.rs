//! Releases made with the real `release-tool` and the test-only project key (trusted by the homes
//! the tests make, never by a build), for the upgrade
//! tests: stamp a copy of the relay with a version, publish it signed into a release tree, point
//! a channel at it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::sibling_bin;

/// The test-only release key (releases/testdata/keys): its secret is public, so only homes the
/// tests make trust it ([`trust_test_key`]).
pub fn release_key() -> PathBuf {
    test_key("project", "key")
}

/// A test-only key file of releases/testdata/keys: `test-only-<name>.<ext>`.
pub fn test_key(name: &str, ext: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("releases/testdata/keys/test-only-{name}.{ext}"))
}

/// Installs the public half of [`release_key`] as `<home>/trusted-keys/test-only-project.pub`.
pub fn trust_test_key(home: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = home.join("trusted-keys");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.join("test-only-project.pub");
    std::fs::copy(test_key("project", "pub"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Runs `release-tool` with `args`; panics with its stderr if it fails.
pub fn release_tool(args: &[&str]) {
    let out = Command::new(sibling_bin("release-tool"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "release-tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `release-tool stamp`: a copy of `binary` in `dir` that reports `version`.
pub fn stamped(dir: &Path, binary: &Path, version: &str) -> PathBuf {
    let out = dir.join(format!("wireleap-relay-{version}"));
    release_tool(&[
        "stamp",
        "--version",
        version,
        &binary.display().to_string(),
        &out.display().to_string(),
    ]);
    out
}

/// Publishes `binary` as `version` in the release tree `root`, signed with [`release_key`],
/// with a changelog; returns the asset and its statement (`<asset>.hash`). The binary is made to
/// report `version` first ([`reporting`]).
pub fn publish(root: &Path, version: &str, binary: &Path) -> (PathBuf, PathBuf) {
    publish_signed(root, version, binary, &[release_key()])
}

/// As [`publish`], the statement signed by each of `keys` (secret key files).
pub fn publish_signed(
    root: &Path,
    version: &str,
    binary: &Path,
    keys: &[PathBuf],
) -> (PathBuf, PathBuf) {
    publish_release(root, version, binary, keys, None)
}

/// As [`publish_signed`], the release carrying `supervisor` too (signed by the same statement).
pub fn publish_release(
    root: &Path,
    version: &str,
    binary: &Path,
    keys: &[PathBuf],
    supervisor: Option<&Path>,
) -> (PathBuf, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let binary = &reporting(work.path(), binary, version);
    let changelog = root.join("changelog.md");
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        &changelog,
        format!("# {version}\n\n- what changed in {version}\n"),
    )
    .unwrap();
    let mut args: Vec<String> = vec![
        "publish".into(),
        "--root".into(),
        root.display().to_string(),
    ];
    for key in keys {
        args.push("--key".into());
        args.push(key.display().to_string());
    }
    if let Some(supervisor) = supervisor {
        args.push("--supervisor".into());
        args.push(supervisor.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    release_tool(
        &[
            &args[..],
            &[
                "--version",
                version,
                "--binary",
                &binary.display().to_string(),
                "--changelog",
                &changelog.display().to_string(),
            ],
        ]
        .concat(),
    );
    let asset = std::fs::read_dir(root.join(format!("v{version}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_none()
                && !p.file_name().is_some_and(|n| {
                    n.to_string_lossy()
                        .starts_with("wireleap-relay-supervisor_")
                })
        })
        .unwrap();
    let statement = PathBuf::from(format!("{}.hash", asset.display()));
    (asset, statement)
}

/// A copy of `binary` in `dir` that reports `version`, as the release tool and the supervisor
/// require of a release: a relay build is stamped; a test script (`#!`) answers `version` first
/// and does what it did for everything else. A binary that reports it already is returned as is.
pub fn reporting(dir: &Path, binary: &Path, version: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let bytes = std::fs::read(binary).unwrap();
    if let Some(body) = bytes.strip_prefix(b"#!/bin/sh\n") {
        let path = dir.join(format!(
            "{}-{version}",
            binary.file_name().unwrap().to_string_lossy()
        ));
        let mut script =
            format!("#!/bin/sh\n[ \"$1\" = version ] && {{ echo {version}; exit 0; }}\n")
                .into_bytes();
        script.extend_from_slice(body);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        return path;
    }
    if relay_release::stamp::find(&bytes) == Some(version) {
        return binary.to_path_buf();
    }
    stamped(dir, binary, version)
}

/// Points the `default` channel of the release tree `root` at `version`.
pub fn set_channel(root: &Path, version: &str) {
    release_tool(&[
        "channel",
        "set",
        "--root",
        &root.display().to_string(),
        "default",
        version,
    ]);
}

/// Publishes `binary` as `version` for this host, signed by the test key, without the release
/// tool's checks (what a careless or hostile signer could publish): a binary that reports
/// another version, or (`None`) a statement for this host that lists no binary at all.
pub fn publish_unchecked(root: &Path, version: &str, binary: Option<&[u8]>) {
    use relay_release::layout::{CHANGELOG_NAME, asset_name, statement_name};
    use relay_release::{FileEntry, Product, SigningKey, Statement, Target, sign};
    let target = Target::host().unwrap();
    let asset = asset_name(&Product::relay(), &target);
    let dir = root.join(format!("v{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let changelog = format!("# {version}\n");
    std::fs::write(dir.join(CHANGELOG_NAME), &changelog).unwrap();
    let mut files = vec![
        FileEntry::digest(
            CHANGELOG_NAME,
            changelog.as_bytes(),
            Path::new(CHANGELOG_NAME),
        )
        .unwrap(),
    ];
    if let Some(binary) = binary {
        std::fs::write(dir.join(&asset), binary).unwrap();
        files.insert(
            0,
            FileEntry::digest(&asset, binary, Path::new(&asset)).unwrap(),
        );
    }
    let issued = relay_release::manifest::whole_seconds(std::time::SystemTime::now());
    let statement = Statement {
        product: Product::relay(),
        version: relay_release::parse_version(version).unwrap(),
        target,
        issued,
        expires: issued + std::time::Duration::from_secs(86_400),
        files,
    };
    let name = statement_name(&asset);
    let key = SigningKey::from_file(&release_key()).unwrap();
    std::fs::write(
        dir.join(&name),
        sign::sign_statement(&key, &statement, &name).unwrap(),
    )
    .unwrap();
}

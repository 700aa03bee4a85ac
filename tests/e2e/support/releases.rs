//! Releases made with the real `release-tool` and the test-only project key, for the upgrade
//! tests: stamp a copy of the relay with a version, publish it signed into a release tree, point
//! a channel at it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::sibling_bin;

/// The test-only release key whose public half the relay embeds (releases/testdata/keys).
pub fn release_key() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("releases/testdata/keys/test-only-project.key")
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
/// with a changelog; returns the asset and its statement (`<asset>.hash`).
pub fn publish(root: &Path, version: &str, binary: &Path) -> (PathBuf, PathBuf) {
    let changelog = root.join("changelog.md");
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        &changelog,
        format!("# {version}\n\n- what changed in {version}\n"),
    )
    .unwrap();
    release_tool(&[
        "publish",
        "--root",
        &root.display().to_string(),
        "--key",
        &release_key().display().to_string(),
        "--version",
        version,
        "--binary",
        &binary.display().to_string(),
        "--changelog",
        &changelog.display().to_string(),
    ]);
    let asset = std::fs::read_dir(root.join(format!("v{version}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none())
        .unwrap();
    let statement = PathBuf::from(format!("{}.hash", asset.display()));
    (asset, statement)
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

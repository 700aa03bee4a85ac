//! Shared test support: the fixture parameters, test-only keys, the fixture generator, a local
//! HTTP server and external-tool helpers.

pub(crate) mod server;
pub(crate) mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use relay_release::layout::{CHANGELOG_NAME, statement_name};
use relay_release::manifest::parse_time;
use relay_release::root::RoleKeys;
use relay_release::{
    Expected, ExpiryCheck, FileEntry, Product, Role, Root, SigningKey, Statement, Target,
    TrustedKeys, VersionFloor, parse_version, sign,
};

pub(crate) const ASSET: &str = "wireleap-relay_linux-x86_64";
pub(crate) const TARGET: &str = "linux-x86_64";
pub(crate) const VERSION: &str = "0.7.1";
pub(crate) const RUNNING: &str = "0.7.0";
/// The time at which fixtures are checked (they are signed before it, and expire after it).
pub(crate) const FIXTURE_NOW: &str = "2026-12-01T00:00:00Z";
pub(crate) const ISSUED: &str = "2026-11-30T00:00:00Z";
pub(crate) const EXPIRES: &str = "2027-11-30T00:00:00Z";

/// Every fixture scenario, in `testdata/<name>/`.
pub(crate) const SCENARIOS: &[&str] = &[
    "valid",
    "prefix-injected",
    "no-signed-block",
    "unknown-key",
    "bad-signature",
    "wrong-product",
    "wrong-target",
    "version-rollback",
    "downgrade",
    "below-threshold",
    "expired",
    "digest-mismatch",
    "truncated",
    "oversized",
    "traversal-name",
    "unsafe-version",
    "mix-and-match",
    "oversized-statement",
    "rotated-key",
];

pub(crate) fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

pub(crate) fn scenario_dir(name: &str) -> PathBuf {
    testdata().join(name)
}

/// A test-only key: `project`, `rotated` (a second key), `unknown`, or `root-a` … `root-e`.
pub(crate) fn key(name: &str) -> SigningKey {
    SigningKey::from_file(&key_path(name, "key")).unwrap()
}

pub(crate) fn key_path(name: &str, ext: &str) -> PathBuf {
    testdata()
        .join("keys")
        .join(format!("test-only-{name}.{ext}"))
}

pub(crate) fn time(t: &str) -> SystemTime {
    parse_time(t).unwrap()
}

/// What the upgrader asks for in the fixture scenarios.
pub(crate) fn expected() -> Expected {
    Expected {
        product: Product::relay(),
        version: parse_version(VERSION).unwrap(),
        target: Target::parse(TARGET).unwrap(),
        floor: VersionFloor::Above {
            running: parse_version(RUNNING).unwrap(),
            highest_committed: None,
        },
        expiry: ExpiryCheck::At(time(FIXTURE_NOW)),
    }
}

/// The test-only project key alone, as the tests install it into a relay's home (no build
/// trusts it).
pub(crate) fn project_keys() -> TrustedKeys {
    TrustedKeys::empty()
        .with_file(&key_path("project", "pub"))
        .unwrap()
}

/// A deterministic stand-in binary of `len` bytes.
pub(crate) fn fake_binary(seed: u8, len: usize) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

pub(crate) fn genuine_binary() -> Vec<u8> {
    fake_binary(1, 4096)
}

pub(crate) fn evil_binary() -> Vec<u8> {
    fake_binary(2, 4096)
}

pub(crate) const CHANGELOG: &[u8] = b"# 0.7.1\n\n- Test release for the fixtures.\n";

pub(crate) fn entry(name: &str, data: &[u8]) -> FileEntry {
    FileEntry::digest(name, data, Path::new(name)).unwrap()
}

/// A statement with the fixture defaults for `asset` with `data`.
pub(crate) fn statement(
    product: &str,
    version: &str,
    target: &str,
    asset: &str,
    data: &[u8],
) -> Statement {
    Statement {
        product: Product::try_new(product).unwrap(),
        version: parse_version(version).unwrap(),
        target: Target::parse(target).unwrap(),
        issued: time(ISSUED),
        expires: time(EXPIRES),
        files: vec![entry(asset, data), entry(CHANGELOG_NAME, CHANGELOG)],
    }
}

fn genuine_statement() -> Statement {
    statement("wireleap-relay", VERSION, TARGET, ASSET, &genuine_binary())
}

fn signed(key: &SigningKey, s: &Statement) -> Vec<u8> {
    sign::sign_statement(key, s, &statement_name(ASSET)).unwrap()
}

fn signed_text(key: &SigningKey, text: &str) -> Vec<u8> {
    sign::clearsign(key, text, time(ISSUED)).unwrap()
}

/// The files of one scenario: (statement, served binary).
pub(crate) fn build_scenario(name: &str) -> (Vec<u8>, Vec<u8>) {
    let project = key("project");
    let genuine = genuine_binary();
    let evil = evil_binary();
    let evil_entry = entry(ASSET, &evil);
    match name {
        "valid" | "below-threshold" => (signed(&project, &genuine_statement()), genuine),
        "prefix-injected" => {
            // The reference relay's bypass: a forged digest line before the genuine block.
            let mut out = format!("{}  {ASSET}\n", hex::encode(evil_entry.sha512)).into_bytes();
            out.extend(signed(&project, &genuine_statement()));
            (out, evil)
        }
        "no-signed-block" => (
            format!(
                "{}  {ASSET}\n{}  {ASSET}\n",
                hex::encode(evil_entry.sha256),
                hex::encode(evil_entry.sha512)
            )
            .into_bytes(),
            evil,
        ),
        "unknown-key" => (
            signed(
                &key("unknown"),
                &statement("wireleap-relay", VERSION, TARGET, ASSET, &evil),
            ),
            evil,
        ),
        "bad-signature" => {
            // The signed text altered after signing: the digest now names the evil binary.
            let good = String::from_utf8(signed(&project, &genuine_statement())).unwrap();
            let genuine_hex = hex::encode(entry(ASSET, &genuine).sha512);
            assert!(good.contains(&genuine_hex));
            let forged = good.replace(&genuine_hex, &hex::encode(evil_entry.sha512));
            (forged.into_bytes(), evil)
        }
        "wrong-product" => {
            let client = fake_binary(3, 4096);
            let s = statement(
                "wireleap",
                VERSION,
                TARGET,
                "wireleap_linux-x86_64",
                &client,
            );
            (signed(&project, &s), client)
        }
        "wrong-target" => {
            let arm = fake_binary(4, 4096);
            let s = statement(
                "wireleap-relay",
                VERSION,
                "linux-aarch64",
                "wireleap-relay_linux-aarch64",
                &arm,
            );
            (signed(&project, &s), arm)
        }
        "version-rollback" => {
            // A genuine old release served at the new version's URL.
            let old = fake_binary(5, 4096);
            let s = statement("wireleap-relay", "0.6.9", TARGET, ASSET, &old);
            (signed(&project, &s), old)
        }
        "downgrade" => {
            // A genuine old release, and the directory asks for that old version.
            let old = fake_binary(5, 4096);
            let s = statement("wireleap-relay", "0.6.9", TARGET, ASSET, &old);
            (signed(&project, &s), old)
        }
        "expired" => {
            let mut s = genuine_statement();
            s.issued = time("2026-11-29T00:00:00Z");
            s.expires = time("2026-11-30T12:00:00Z");
            (signed(&project, &s), genuine)
        }
        "digest-mismatch" => (signed(&project, &genuine_statement()), evil),
        "truncated" => (
            signed(&project, &genuine_statement()),
            genuine.get(..3000).unwrap().to_vec(),
        ),
        "oversized" => {
            let mut long = genuine.clone();
            long.extend(fake_binary(6, 1000));
            (signed(&project, &genuine_statement()), long)
        }
        "traversal-name" => {
            let mut s = genuine_statement();
            if let Some(f) = s.files.first_mut() {
                f.name = format!("../{ASSET}");
            }
            (signed(&project, &s), genuine)
        }
        "unsafe-version" => {
            let text = genuine_statement()
                .render(&statement_name(ASSET))
                .replace("version: 0.7.1", "version: 0.7.1/../../../tmp/x");
            (signed_text(&project, &text), genuine)
        }
        "mix-and-match" => {
            // A genuine statement that lists only the changelog.
            let mut s = genuine_statement();
            s.files.retain(|f| f.name == CHANGELOG_NAME);
            (signed(&project, &s), genuine)
        }
        "oversized-statement" => {
            let mut text = genuine_statement().render(&statement_name(ASSET));
            for i in 0..1200 {
                text.push_str(&format!(
                    "# padding line {i:05} ..................................................\n"
                ));
            }
            (signed_text(&project, &text), genuine)
        }
        "rotated-key" => (signed(&key("rotated"), &genuine_statement()), genuine),
        other => panic!("unknown scenario {other}"),
    }
}

/// Writes every scenario into `root/<name>/`.
pub(crate) fn write_scenarios(root: &Path) {
    for name in SCENARIOS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (statement, binary) = build_scenario(name);
        std::fs::write(dir.join(statement_name(ASSET)), statement).unwrap();
        std::fs::write(dir.join(ASSET), binary).unwrap();
        std::fs::write(dir.join(CHANGELOG_NAME), CHANGELOG).unwrap();
    }
}

/// Rewrites `releases/testdata/<scenario>/` from the test-only keys. Run by hand:
/// `cargo nextest run -p relay-release --run-ignored only regenerate_fixtures`.
#[test]
#[ignore = "rewrites the checked-in fixtures"]
fn regenerate_fixtures() {
    write_scenarios(&testdata());
}

/// A root with `keys`, `threshold` of them for both the root and the release role.
fn fixture_root(
    version: u64,
    issued: &str,
    expires: &str,
    keys: &[&SigningKey],
    threshold: usize,
) -> Root {
    let fprs: Vec<String> = keys.iter().map(|k| k.fingerprint()).collect();
    let role = || RoleKeys {
        threshold,
        keys: fprs.clone(),
    };
    let certs = keys
        .iter()
        .map(|k| k.trusted().unwrap().certs()[0].clone())
        .collect();
    let roles = BTreeMap::from([(Role::Root, role()), (Role::Release, role())]);
    Root::new(version, time(issued), time(expires), certs, roles).unwrap()
}

fn signed_by(keys: &[&SigningKey], text: &str) -> Vec<u8> {
    let keys: Vec<SigningKey> = keys.iter().map(|k| (*k).clone()).collect();
    sign::clearsign_by(&keys, text, time(ISSUED)).unwrap()
}

/// Writes the root fixtures into `dir` (see `roots.rs`): roots 1 and 2, the hostile roots, and
/// release statements signed by several keys.
pub(crate) fn write_root_fixtures(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|n| key(&format!("root-{n}")));
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).unwrap();
    let v1 = fixture_root(1, ISSUED, EXPIRES, &[&a, &b, &c], 2)
        .render()
        .unwrap();
    write("1.root", signed_by(&[&a, &b], &v1));
    let v2 = fixture_root(2, ISSUED, EXPIRES, &[&a, &b, &d], 2)
        .render()
        .unwrap();
    write("2.root", signed_by(&[&a, &b, &d], &v2));
    let stranger = fixture_root(2, ISSUED, EXPIRES, &[&d, &e], 2)
        .render()
        .unwrap();
    write(
        "rotation-new-keys-only.root",
        signed_by(&[&d, &e], &stranger),
    );
    write(
        "rotation-old-keys-only.root",
        signed_by(&[&a, &b], &stranger),
    );
    let expired = fixture_root(
        1,
        "2026-11-01T00:00:00Z",
        "2026-11-30T12:00:00Z",
        &[&a, &b, &c],
        2,
    )
    .render()
    .unwrap();
    write("expired.root", signed_by(&[&a, &b], &expired));
    // Whitespace between JSON tokens (trailing whitespace would not be signed text).
    let oversized = v1.replacen(
        "\"format\": ",
        &format!("\"format\": {}", " ".repeat(70_000)),
        1,
    );
    write("oversized.root", signed_by(&[&a, &b], &oversized));
    let text = genuine_statement().render(&statement_name(ASSET));
    let project = key("project");
    for (name, keys) in [
        ("a-b", vec![&a, &b]),
        ("a", vec![&a]),
        ("a-a", vec![&a, &a]),
        ("a-c", vec![&a, &c]),
        ("a-d", vec![&a, &d]),
        ("test-key", vec![&project]),
    ] {
        write(&format!("release-{name}.hash"), signed_by(&keys, &text));
    }
}

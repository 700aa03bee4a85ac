//! `init`: the four identity files, their modes and formats; never overwritten without --force.

use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::support::Home;

const FILES: [&str; 4] = ["key.seed", "key.pub", "relay-cert.pem", "relay-key.pem"];

fn mode(home: &Home, name: &str) -> u32 {
    std::fs::metadata(home.file(name))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn json_b64(home: &Home, name: &str) -> Vec<u8> {
    let text = home.read(name);
    assert!(
        !text.ends_with('\n'),
        "{name} must have no trailing newline"
    );
    let s: String =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not a JSON string: {e}"));
    assert!(!s.contains('='), "{name} must be base64url without padding");
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

#[test]
fn init_writes_the_four_files_with_modes_and_formats() {
    let home = Home::new();
    let run = home.ok(&["init"]);
    for f in FILES {
        assert!(run.stdout.contains(f), "init did not report {f}:\n{run}");
    }
    assert_eq!(mode(&home, "key.seed"), 0o600);
    assert_eq!(mode(&home, "relay-key.pem"), 0o600);
    assert_eq!(mode(&home, "key.pub"), 0o644);
    assert_eq!(mode(&home, "relay-cert.pem"), 0o644);
    // The one embedded file the reference unpacks (spec §1.2), never overwritten.
    assert!(run.stdout.contains("LICENSE"), "{run}");
    assert!(home.read("LICENSE").contains("MIT License"));
    home.write("LICENSE", "the operator's own");
    home.ok(&["init", "--force"]);
    assert_eq!(home.read("LICENSE"), "the operator's own");

    let seed: [u8; 32] = json_b64(&home, "key.seed").try_into().unwrap();
    let public = json_b64(&home, "key.pub");
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    assert_eq!(key.verifying_key().as_bytes().as_slice(), public.as_slice());

    // The certificate: self-signed ed25519 with the same key, as spec §6.1 describes.
    let pem = home.read("relay-cert.pem");
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.subject().to_string(), "O=Wireleap");
    assert_eq!(cert.issuer().to_string(), "O=Wireleap");
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        public.as_slice()
    );
    let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
        / (365 * 86_400);
    assert!((99..=100).contains(&years), "validity {years} years");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[DNSName(\"wireleap.com\")]"
    );
    assert!(
        !cert
            .basic_constraints()
            .unwrap()
            .is_some_and(|bc| bc.value.ca)
    );
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    assert_eq!(cert.raw_serial().len(), 16);

    let key_pem = home.read("relay-key.pem");
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{key_pem}"
    );

    // Other tools read both files (nginx and Apache use OpenSSL): the key's public half is key.pub.
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(home.file("relay-key.pem"))
        .output()
        .expect("openssl is missing: apt-get install openssl");
    assert!(
        out.status.success(),
        "openssl cannot read relay-key.pem: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[out.stdout.len() - 32..], public.as_slice());
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(home.file("relay-cert.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl cannot read relay-cert.pem");
}

#[test]
fn second_init_refuses_and_changes_nothing_force_replaces() {
    let home = Home::new();
    home.ok(&["init"]);
    let before: Vec<String> = FILES.iter().map(|f| home.read(f)).collect();

    let again = home.run(&["init"]);
    assert_ne!(again.code, 0, "{again}");
    assert!(
        again.stderr.contains("key.seed already exists") && again.stderr.contains("--force"),
        "{again}"
    );
    let after: Vec<String> = FILES.iter().map(|f| home.read(f)).collect();
    assert_eq!(before, after, "a refused init changed files");

    home.ok(&["init", "--force"]);
    for (f, old) in FILES.iter().zip(&before) {
        assert_ne!(&home.read(f), old, "{f} was not replaced");
    }
    assert_eq!(mode(&home, "key.seed"), 0o600);
}

#[test]
fn legacy_go_style_flag_is_accepted() {
    let home = Home::new();
    home.ok(&["init"]);
    home.ok(&["init", "-force"]);
}

/// A home restored from a backup of `key.seed` alone (or with a TLS file removed): `start` says
/// to run `init`, and `init` then makes the TLS pair from the existing key, keeping the relay's
/// identity (what its earnings are bound to), instead of refusing unless `--force` replaces it.
#[test]
fn init_completes_a_home_that_has_the_key_but_not_the_tls_pair() {
    let home = Home::new();
    home.ok(&["init"]);
    let seed = home.read("key.seed");
    let public = home.read("key.pub");
    std::fs::remove_file(home.file("relay-cert.pem")).unwrap();
    std::fs::remove_file(home.file("key.pub")).unwrap();
    home.write(
        "config.json",
        r#"{"address": "127.0.0.1:0", "contracts": {"http://127.0.0.1:9":
            {"address": "wireleap://127.0.0.1:13499", "role": "fronting"}}}"#,
    );
    let start = home.run(&["start", "--fg"]);
    assert_ne!(start.code, 0, "{start}");
    assert!(
        start.stderr.contains("relay-cert.pem") && start.stderr.contains("wireleap-relay init"),
        "{start}"
    );

    let init = home.ok(&["init"]);
    assert!(
        init.stdout.contains("kept") && init.stdout.contains("key.seed"),
        "{init}"
    );
    assert!(
        init.stdout.contains("wrote") && init.stdout.contains("relay-cert.pem"),
        "{init}"
    );
    assert_eq!(home.read("key.seed"), seed, "the identity was replaced");
    assert_eq!(home.read("key.pub"), public);
    assert_eq!(mode(&home, "relay-key.pem"), 0o600);
    // The certificate is the key's: openssl reads the pair and their public keys agree.
    let pubkey_of = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}");
        out.stdout
    };
    let cert = home.file("relay-cert.pem");
    let key = home.file("relay-key.pem");
    assert_eq!(
        pubkey_of(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]),
        pubkey_of(&["pkey", "-pubout", "-in", key.to_str().unwrap()]),
    );
    // Complete now: a further init refuses as before.
    let again = home.run(&["init"]);
    assert!(again.stderr.contains("already exists"), "{again}");

    // No key at all: `start` says what to run.
    std::fs::remove_file(home.file("key.seed")).unwrap();
    let start = home.run(&["start", "--fg"]);
    assert!(
        start.stderr.contains("key.seed does not exist")
            && start.stderr.contains("wireleap-relay init"),
        "{start}"
    );
}

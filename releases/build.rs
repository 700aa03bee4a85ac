//! Embeds the release trust root an official build is given, and nothing otherwise.
//!
//! `WIRELEAP_TRUST_ROOT=/path/to/N.root cargo build --release` embeds that signed root in every
//! binary that links this crate (the relay and the supervisor); it is verified when it is used
//! (`trust::Trust::load`). Without the variable the embedded root is empty and the build trusts
//! no key. See `docs/releasing.md`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=WIRELEAP_TRUST_ROOT");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("embedded-root");
    let bytes = match std::env::var_os("WIRELEAP_TRUST_ROOT") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            match std::fs::read(&path) {
                Ok(bytes) if !bytes.is_empty() => bytes,
                Ok(_) => fail(&format!("WIRELEAP_TRUST_ROOT={} is empty", path.display())),
                Err(e) => fail(&format!("WIRELEAP_TRUST_ROOT={}: {e}", path.display())),
            }
        }
        _ => Vec::new(),
    };
    if let Err(e) = std::fs::write(&out, bytes) {
        fail(&format!("writing {}: {e}", out.display()));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

//! The hidden `migrate` command (spec §3.6, with up and down): the supervisor runs it with the
//! binary of the version being installed, since only that binary knows its own migrations.
//!
//! - `migrate FROM`: copies `config.json` to `config.json.next` (0644) and applies every
//!   migration with FROM < version ≤ this binary's version, in order; the config migrations
//!   work on `config.json.next`, so the running generation keeps its config until the commit.
//!   `config.json.next` exists afterwards even when nothing applied, as in the reference.
//! - `migrate --down TO`: undoes every migration with TO < version ≤ this binary's version, in
//!   reverse order, on `config.json.next` if it exists (a failed upgrade), else on `config.json`
//!   (an operator's offline rollback).
//! - `migrate --down --copy-config TO`: copies `config.json` to `config.json.next` first and
//!   undoes on the copy (the supervisor's rollback: the old generation keeps its config until
//!   the commit, and the copy is the relay user's own file).
//!
//! A failing step undoes the steps before it; the command prints what failed and exits 1.

use std::path::Path;

use semver::Version;

use crate::exit;
use crate::home::files;

/// Runs the command; returns the exit code.
pub fn command(home: &Path, own: &Version, other: &str, down: bool, copy_config: bool) -> u8 {
    let Ok(other) = Version::parse(other.trim_start_matches('v')) else {
        eprintln!("migrate: {other:?} is not a version (expected e.g. 0.7.0)");
        return exit::USAGE;
    };
    let config = if down && !copy_config {
        if home.join(files::CONFIG_NEXT).exists() {
            files::CONFIG_NEXT
        } else {
            files::CONFIG
        }
    } else {
        let (from, to) = (home.join(files::CONFIG), home.join(files::CONFIG_NEXT));
        let copied = std::fs::read(&from)
            .and_then(|bytes| wireleap_home::durable::write_atomic(&to, &bytes, 0o644));
        if let Err(e) = copied {
            eprintln!(
                "migrate: could not copy {} to {}: {e}",
                from.display(),
                to.display()
            );
            return exit::FAILURE;
        }
        files::CONFIG_NEXT
    };
    let ctx = relay_migrations::Context::new(home, config);
    let (from, to) = if down { (own, &other) } else { (&other, own) };
    match relay_migrations::migrate(&ctx, from, to) {
        Ok(ids) => {
            println!(
                "migrated {from} -> {to} ({} step(s){})",
                ids.len(),
                if ids.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        ids.iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("migrate {from} -> {to} failed: {e}");
            exit::FAILURE
        }
    }
}

//! `relay-dist`: renders what a package installs beside the binaries from the binaries' own
//! command-line definitions, so the man pages and completions cannot drift from the flags.
//!
//! `relay-dist man DIR` writes one roff page per command and visible subcommand
//! (`wireleap-relay.1`, `wireleap-relay-status.1`, ..., `wireleap-relay-supervisor.1`);
//! `relay-dist completions DIR` writes `bash/<bin>`, `zsh/_<bin>` and `fish/<bin>.fish` for both
//! binaries. `scripts/deb` runs both while it builds the Debian package.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;

/// Renders the man pages and shell completions of wireleap-relay and its supervisor.
#[derive(Debug, Parser)]
#[command(name = "relay-dist", version)]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// One man page (section 1) per command and visible subcommand, into DIR.
    Man {
        /// The folder to write into (created if missing).
        dir: PathBuf,
    },
    /// bash, zsh and fish completions for both binaries, into DIR/<shell>/.
    Completions {
        /// The folder to write into (created if missing).
        dir: PathBuf,
    },
}

/// The two commands a package ships, with the product version on each (the relay's own
/// definition prints its version through a subcommand, so clap does not know it).
fn commands() -> [clap::Command; 2] {
    let version = env!("CARGO_PKG_VERSION");
    [
        wireleap_relay::cli::Cli::command().version(version),
        wireleap_relay_supervisor::cli::Cli::command().version(version),
    ]
}

fn man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for cmd in commands() {
        let name = cmd.get_name().to_owned();
        clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("writing the man pages of {name} into {}", dir.display()))?;
    }
    Ok(())
}

fn completions(dir: &Path) -> anyhow::Result<()> {
    for (shell, folder) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let out = dir.join(folder);
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        for mut cmd in commands() {
            let name = cmd.get_name().to_owned();
            // The names each shell's completion loader looks for.
            let file = match shell {
                Shell::Zsh => format!("_{name}"),
                Shell::Fish => format!("{name}.fish"),
                _ => name.clone(),
            };
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut text);
            let path = out.join(file);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = match &cli.what {
        What::Man { dir } => man(dir),
        What::Completions { dir } => completions(dir),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-dist: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_and_completion_is_written_and_names_the_commands() {
        Cli::command().debug_assert();
        let dir = tempfile::tempdir().unwrap();
        man(&dir.path().join("man")).unwrap();
        completions(&dir.path().join("completions")).unwrap();
        let page = |name: &str| std::fs::read_to_string(dir.path().join("man").join(name)).unwrap();
        for (file, says) in [
            ("wireleap-relay.1", "wireleap\\-relay"),
            ("wireleap-relay-status.1", "\\-\\-json"),
            ("wireleap-relay-balance.1", "\\-\\-human"),
            ("wireleap-relay-supervisor.1", "\\-\\-relay\\-user"),
        ] {
            assert!(page(file).contains(says), "{file} lacks {says}");
        }
        // Hidden subcommands (the supervisor's `migrate`, ...) get no page.
        assert!(!dir.path().join("man/wireleap-relay-migrate.1").exists());
        for file in [
            "bash/wireleap-relay",
            "bash/wireleap-relay-supervisor",
            "zsh/_wireleap-relay",
            "fish/wireleap-relay-supervisor.fish",
        ] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            assert!(
                text.contains("check-config") || text.contains("relay-user"),
                "{file}"
            );
        }
    }
}

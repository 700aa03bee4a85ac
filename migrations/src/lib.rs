//! relay-migrations: versioned migrations of a relay's home directory.
//!
//! A migration belongs to the product version that introduced it and has an `up` and a `down`
//! step. Upgrading from version A to B runs `up` of every migration with A < version ≤ B in
//! ascending order; rolling back from B to A runs `down` of the same set in descending order
//! ([`plan`], a pure function). [`run`] applies a plan and, if a step fails, undoes the steps it
//! already applied, so the home directory is left as it was. Every step is idempotent: running
//! `up` twice leaves what one run leaves.
//!
//! Config migrations work on the file named in [`Context::config`] (by convention
//! `config.json.next` during an upgrade, so the running generation keeps its own config until
//! the commit). Who calls it: the supervisor during an upgrade and a rollback, and the relay's
//! `migrate` command. It must never touch files outside the home directory.

use std::path::{Path, PathBuf};

use semver::Version;

pub mod ledger;
mod m0001_upgrade_channel;
mod m0002_ledger_schema;
mod m0003_import_sharetokens;
mod m0004_ledger_prune_index;
mod m0005_ledger_compact_rows;

pub use wireleap_home::durable::write_atomic;

/// What a migration works on.
#[derive(Debug, Clone)]
pub struct Context {
    /// The relay's home directory.
    pub home: PathBuf,
    /// The config file to migrate (e.g. `<home>/config.json.next`).
    pub config: PathBuf,
}

impl Context {
    /// A context for `home`, migrating `config_name` inside it.
    pub fn new(home: &Path, config_name: &str) -> Self {
        Self {
            home: home.to_owned(),
            config: home.join(config_name),
        }
    }
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's content is not what the migration can work on.
    #[error("{}: {why}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A step failed and the steps before it were undone.
    #[error("migration {id} ({name}) failed: {source}")]
    Step {
        /// The failing migration.
        id: u32,
        /// Its name.
        name: &'static str,
        /// Why.
        source: Box<Error>,
    },
    /// A step failed and undoing the earlier steps failed too: the home needs an operator.
    #[error(
        "migration {id} ({name}) failed ({source}), and undoing migration {undo_id} failed too: {undo}"
    )]
    Undo {
        /// The failing migration.
        id: u32,
        /// Its name.
        name: &'static str,
        /// Why it failed.
        source: Box<Error>,
        /// The migration whose undo failed.
        undo_id: u32,
        /// Why the undo failed.
        undo: Box<Error>,
    },
}

/// One migration.
pub trait Migration: Send + Sync {
    /// Order among all migrations; unique, increasing with `version`.
    fn id(&self) -> u32;
    /// A short slug for logs.
    fn name(&self) -> &'static str;
    /// The product version that introduced it.
    fn version(&self) -> Version;
    /// Applies it. Must be idempotent.
    ///
    /// # Errors
    /// An [`Error`] saying what could not be done.
    fn up(&self, ctx: &Context) -> Result<(), Error>;
    /// Undoes it. Must be idempotent.
    ///
    /// # Errors
    /// An [`Error`] saying what could not be done.
    fn down(&self, ctx: &Context) -> Result<(), Error>;
}

impl std::fmt::Debug for dyn Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Migration({} {} {})",
            self.id(),
            self.name(),
            self.version()
        )
    }
}

/// Every migration, in id order.
pub fn registry() -> Vec<Box<dyn Migration>> {
    vec![
        Box::new(m0001_upgrade_channel::UpgradeChannel),
        Box::new(m0002_ledger_schema::LedgerSchema),
        Box::new(m0003_import_sharetokens::ImportSharetokens),
        Box::new(m0004_ledger_prune_index::LedgerPruneIndex),
        Box::new(m0005_ledger_compact_rows::LedgerCompactRows),
    ]
}

/// Which way a plan goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Upgrade: `up` steps in ascending order.
    Up,
    /// Rollback: `down` steps in descending order.
    Down,
}

/// The steps to go from one version to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Which way.
    pub direction: Direction,
    /// Migration ids, in the order they run.
    pub steps: Vec<u32>,
}

/// The steps from `from` to `to` over `migrations` (id and version of each). Pure.
pub fn plan(migrations: &[(u32, Version)], from: &Version, to: &Version) -> Plan {
    let (direction, low, high) = if from <= to {
        (Direction::Up, from, to)
    } else {
        (Direction::Down, to, from)
    };
    let mut steps: Vec<(u32, &Version)> = migrations
        .iter()
        .filter(|(_, v)| low < v && v <= high)
        .map(|(id, v)| (*id, v))
        .collect();
    steps.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
    if direction == Direction::Down {
        steps.reverse();
    }
    Plan {
        direction,
        steps: steps.into_iter().map(|(id, _)| id).collect(),
    }
}

/// Applies a plan from the registry. On a failed step, the steps already applied are undone in
/// reverse order. Returns the ids applied.
///
/// # Errors
/// [`Error::Step`] (home restored) or [`Error::Undo`] (home needs an operator).
pub fn run(all: &[Box<dyn Migration>], plan: &Plan, ctx: &Context) -> Result<Vec<u32>, Error> {
    let find = |id: u32| all.iter().find(|m| m.id() == id);
    let mut done: Vec<&dyn Migration> = Vec::new();
    for id in &plan.steps {
        let Some(m) = find(*id) else { continue };
        let result = match plan.direction {
            Direction::Up => m.up(ctx),
            Direction::Down => m.down(ctx),
        };
        if let Err(e) = result {
            for prev in done.iter().rev() {
                let undo = match plan.direction {
                    Direction::Up => prev.down(ctx),
                    Direction::Down => prev.up(ctx),
                };
                if let Err(undo) = undo {
                    return Err(Error::Undo {
                        id: m.id(),
                        name: m.name(),
                        source: Box::new(e),
                        undo_id: prev.id(),
                        undo: Box::new(undo),
                    });
                }
            }
            return Err(Error::Step {
                id: m.id(),
                name: m.name(),
                source: Box::new(e),
            });
        }
        done.push(m.as_ref());
    }
    Ok(done.iter().map(|m| m.id()).collect())
}

/// Migrates the home directory of `ctx` from version `from` to version `to` (up or down) with
/// every migration of the [`registry`]. Returns the ids applied.
///
/// # Errors
/// As [`run`].
pub fn migrate(ctx: &Context, from: &Version, to: &Version) -> Result<Vec<u32>, Error> {
    let all = registry();
    let versions: Vec<(u32, Version)> = all.iter().map(|m| (m.id(), m.version())).collect();
    run(&all, &plan(&versions, from, to), ctx)
}

/// Reads `config` as JSON, keeping key order.
///
/// # Errors
/// [`Error::Io`] or [`Error::Content`].
pub fn read_json(path: &Path) -> Result<serde_json::Value, Error> {
    let text = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| Error::Content {
        path: path.to_owned(),
        why: format!("not valid JSON: {e}"),
    })
}

/// Writes `value` as indented JSON (as the reference's migrations do), atomically.
///
/// # Errors
/// [`Error::Io`].
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Content {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes(), 0o644).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn plan_picks_the_range_and_orders_it() {
        let all = vec![(1, v("0.5.0")), (2, v("0.7.0")), (3, v("0.8.0"))];
        assert_eq!(plan(&all, &v("0.4.0"), &v("0.7.0")).steps, vec![1, 2]);
        assert_eq!(plan(&all, &v("0.7.0"), &v("0.8.1")).steps, vec![3]);
        let back = plan(&all, &v("0.8.0"), &v("0.5.0"));
        assert_eq!((back.direction, back.steps), (Direction::Down, vec![3, 2]));
        assert!(plan(&all, &v("0.7.0"), &v("0.7.0")).steps.is_empty());
    }

    proptest! {
        #[test]
        fn down_plan_is_the_reverse_of_up(a in 0u64..20, b in 0u64..20, versions in proptest::collection::vec(0u64..20, 0..10)) {
            let all: Vec<(u32, Version)> = versions.iter().enumerate()
                .map(|(i, m)| (i as u32, Version::new(0, *m, 0))).collect();
            let (lo, hi) = (Version::new(0, a.min(b), 0), Version::new(0, a.max(b), 0));
            let up = plan(&all, &lo, &hi);
            let mut down = plan(&all, &hi, &lo).steps;
            down.reverse();
            prop_assert_eq!(&up.steps, &down);
            for id in &up.steps {
                let ver = &all[*id as usize].1;
                prop_assert!(&lo < ver && ver <= &hi);
            }
        }
    }

    struct Failing;
    impl Migration for Failing {
        fn id(&self) -> u32 {
            99
        }
        fn name(&self) -> &'static str {
            "failing"
        }
        fn version(&self) -> Version {
            v("9.0.0")
        }
        fn up(&self, ctx: &Context) -> Result<(), Error> {
            Err(Error::Content {
                path: ctx.config.clone(),
                why: "refused on purpose".into(),
            })
        }
        fn down(&self, _: &Context) -> Result<(), Error> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_step_undoes_the_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let before = r#"{"contracts":{"https://c":{"role":"backing","update_channel":"beta"}}}"#;
        std::fs::write(dir.path().join("config.json"), before).unwrap();
        let ctx = Context::new(dir.path(), "config.json");
        let all: Vec<Box<dyn Migration>> = vec![
            Box::new(m0001_upgrade_channel::UpgradeChannel),
            Box::new(Failing),
        ];
        let p = plan(
            &[(1, v("0.5.0")), (99, v("9.0.0"))],
            &v("0.4.0"),
            &v("9.0.0"),
        );
        let err = run(&all, &p, &ctx).unwrap_err();
        assert!(matches!(err, Error::Step { id: 99, .. }), "{err}");
        let after = read_json(&ctx.config).unwrap();
        assert_eq!(
            after,
            serde_json::from_str::<serde_json::Value>(before).unwrap()
        );
    }
}

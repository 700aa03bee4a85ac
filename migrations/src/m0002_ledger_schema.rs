//! m0002 (0.7.0): the sharetoken ledger database `ledger.db`, schema version 1.
//!
//! `up` creates the database and its schema (idempotent: `CREATE … IF NOT EXISTS`, guarded by
//! `user_version`), first taking back a database an earlier `down` moved aside, so an upgrade
//! after a rollback keeps every token. `down` folds the WAL into the file and moves it to
//! `ledger.db.down`: the reference relay does not read it, and nothing in it is lost.

use semver::Version;

use crate::ledger::{self, DB_FILE, DB_FILE_DOWN};
use crate::{Context, Error, Migration};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LedgerSchema;

impl Migration for LedgerSchema {
    fn id(&self) -> u32 {
        2
    }
    fn name(&self) -> &'static str {
        "ledger_schema"
    }
    fn version(&self) -> Version {
        Version::new(0, 7, 0)
    }
    fn up(&self, ctx: &Context) -> Result<(), Error> {
        let db = ctx.home.join(DB_FILE);
        let aside = ctx.home.join(DB_FILE_DOWN);
        if !db.exists() && aside.exists() {
            std::fs::rename(&aside, &db).map_err(|source| Error::Io {
                path: aside.clone(),
                source,
            })?;
        }
        let sql = |e: rusqlite::Error| Error::Content {
            path: db.clone(),
            why: e.to_string(),
        };
        let conn = ledger::open(&db).map_err(sql)?;
        ledger::ensure_schema_v1(&conn).map_err(sql)
    }
    fn down(&self, ctx: &Context) -> Result<(), Error> {
        let db = ctx.home.join(DB_FILE);
        if !db.exists() {
            return Ok(());
        }
        let sql = |e: rusqlite::Error| Error::Content {
            path: db.clone(),
            why: e.to_string(),
        };
        {
            // A self-contained file: no -wal or -shm beside it once moved.
            let conn = ledger::open(&db).map_err(sql)?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(sql)?;
            let _mode: String = conn
                .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
                .map_err(sql)?;
        }
        let aside = ctx.home.join(DB_FILE_DOWN);
        std::fs::rename(&db, &aside).map_err(|source| Error::Io {
            path: db.clone(),
            source,
        })
    }
}

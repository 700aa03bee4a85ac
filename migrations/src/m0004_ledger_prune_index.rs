//! m0004 (0.7.0): the ledger index that lets the relay delete settled sharetokens once their
//! settlement window has closed (so the ledger does not grow forever).
//!
//! `up` creates the partial index `sharetokens_settled (settlement_close)` over accepted tokens;
//! `down` drops it. Rows
//! are never touched, and `user_version` stays 1: a relay without pruning works with or without
//! the index. Both steps are idempotent, and a home without a ledger is left alone.

use semver::Version;

use crate::ledger::{self, DB_FILE};
use crate::{Context, Error, Migration};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LedgerPruneIndex;

impl LedgerPruneIndex {
    fn with_ledger(
        ctx: &Context,
        f: impl FnOnce(&rusqlite::Connection) -> Result<(), rusqlite::Error>,
    ) -> Result<(), Error> {
        let db = ctx.home.join(DB_FILE);
        if !db.exists() {
            // m0002 not applied (or moved aside by its `down`): nothing to index.
            return Ok(());
        }
        let sql = |e: rusqlite::Error| Error::Content {
            path: db.clone(),
            why: e.to_string(),
        };
        let conn = ledger::open(&db).map_err(sql)?;
        if ledger::schema_version(&conn).map_err(sql)? < ledger::SCHEMA_V1_VERSION {
            return Ok(());
        }
        f(&conn).map_err(sql)
    }
}

impl Migration for LedgerPruneIndex {
    fn id(&self) -> u32 {
        4
    }
    fn name(&self) -> &'static str {
        "ledger_prune_index"
    }
    fn version(&self) -> Version {
        Version::new(0, 7, 0)
    }
    fn up(&self, ctx: &Context) -> Result<(), Error> {
        Self::with_ledger(ctx, ledger::ensure_prune_index)
    }
    fn down(&self, ctx: &Context) -> Result<(), Error> {
        Self::with_ledger(ctx, ledger::drop_prune_index)
    }
}

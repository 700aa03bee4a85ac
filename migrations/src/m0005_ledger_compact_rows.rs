//! m0005 (0.7.0): the ledger's rows, compacted (schema version 2, `relay_migrations::ledger::
//! SCHEMA_V2`): a token's JSON is kept once, its replay key is its signature read from that
//! JSON, and its state a small integer; 1272 bytes per token in `ledger.db` became about 800.
//!
//! `up` moves every row of `sharetokens` to `tokens` and installs the triggers that move a
//! version 1 relay's inserts over (refusing a replay of a token `tokens` has), so the previous
//! generation can go on admitting tokens during a hand-over and none is lost or admitted twice.
//! `down` moves them all back and turns the triggers around, for the failed generation still
//! draining during a rollback. Both steps run in one transaction each, keep every token with its
//! state, and are idempotent; a home without a ledger is left alone. The relay also runs `up`
//! at start.

use semver::Version;

use crate::ledger;
use crate::{Context, Error, Migration};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LedgerCompactRows;

impl Migration for LedgerCompactRows {
    fn id(&self) -> u32 {
        5
    }
    fn name(&self) -> &'static str {
        "ledger_compact_rows"
    }
    fn version(&self) -> Version {
        Version::new(0, 7, 0)
    }
    fn up(&self, ctx: &Context) -> Result<(), Error> {
        ledger::with_existing(&ctx.home, ledger::ensure_schema_v2)
    }
    fn down(&self, ctx: &Context) -> Result<(), Error> {
        ledger::with_existing(&ctx.home, ledger::downgrade_schema_v2)
    }
}

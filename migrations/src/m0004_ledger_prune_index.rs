//! m0004 (0.7.0): the ledger index that lets the relay delete settled sharetokens once their
//! settlement window has closed (so the ledger does not grow forever).
//!
//! `up` creates the partial index `sharetokens_settled (settlement_close)` over accepted tokens;
//! `down` drops it. Rows
//! are never touched, and `user_version` stays 1: a relay without pruning works with or without
//! the index. Both steps are idempotent, and a home without a ledger is left alone.

use semver::Version;

use crate::ledger;
use crate::{Context, Error, Migration};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LedgerPruneIndex;

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
        ledger::with_existing(&ctx.home, ledger::ensure_prune_index)
    }
    fn down(&self, ctx: &Context) -> Result<(), Error> {
        ledger::with_existing(&ctx.home, ledger::drop_prune_index)
    }
}

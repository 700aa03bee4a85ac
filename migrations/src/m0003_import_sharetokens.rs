//! m0003 (0.7.0): a reference relay's `sharetokens/` store into the ledger database.
//!
//! `up` imports every token file (spec §5.5, both layouts) and moves malformed files to
//! `sharetokens/malformed/`; token files stay, so `up` is idempotent and a rollback finds the
//! store intact. `down` writes every still-pending token of the ledger back as a store file, so
//! the reference relay submits what this relay earned. The relay also runs the import at every
//! start: a store copied in later is picked up, and a store that did not change since the last
//! import costs a `stat` per folder, not a read per file.

use semver::Version;

use crate::ledger;
use crate::{Context, Error, Migration};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ImportSharetokens;

impl Migration for ImportSharetokens {
    fn id(&self) -> u32 {
        3
    }
    fn name(&self) -> &'static str {
        "import_sharetokens"
    }
    fn version(&self) -> Version {
        Version::new(0, 7, 0)
    }
    fn up(&self, ctx: &Context) -> Result<(), Error> {
        ledger::import_store(&ctx.home).map(|_| ())
    }
    fn down(&self, ctx: &Context) -> Result<(), Error> {
        ledger::export_pending(&ctx.home).map(|_| ())
    }
}

//! m0001 (0.5.0): `update_channel` becomes `upgrade_channel` in every contract entry.
//!
//! The reference relay's only migration (spec §3.6): for every contract, the old
//! `update_channel` value moves to `upgrade_channel` and `update_channel` is dropped. `down`
//! moves it back. An entry that already has `upgrade_channel` keeps it (idempotent).

use semver::Version;
use serde_json::Value;

use crate::{Context, Error, Migration, read_json, write_json};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct UpgradeChannel;

impl UpgradeChannel {
    fn rewrite(&self, ctx: &Context, from: &str, to: &str) -> Result<(), Error> {
        let mut config = read_json(&ctx.config)?;
        let Some(contracts) = config.get_mut("contracts").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let mut changed = false;
        for entry in contracts.values_mut() {
            let Some(entry) = entry.as_object_mut() else {
                continue;
            };
            let Some(old) = entry.remove(from) else {
                continue;
            };
            changed = true;
            let keep_existing = entry
                .get(to)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !keep_existing && old.as_str().is_some_and(|s| !s.is_empty()) {
                entry.insert(to.to_owned(), old);
            }
        }
        if changed {
            write_json(&ctx.config, &config)?;
        }
        Ok(())
    }
}

impl Migration for UpgradeChannel {
    fn id(&self) -> u32 {
        1
    }
    fn name(&self) -> &'static str {
        "upgrade_channel"
    }
    fn version(&self) -> Version {
        Version::new(0, 5, 0)
    }
    fn up(&self, ctx: &Context) -> Result<(), Error> {
        self.rewrite(ctx, "update_channel", "upgrade_channel")
    }
    fn down(&self, ctx: &Context) -> Result<(), Error> {
        self.rewrite(ctx, "upgrade_channel", "update_channel")
    }
}

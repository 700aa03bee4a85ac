//! Each migration against its fixtures: `up(before) == after`, `down(after) == before`, and both
//! idempotent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use relay_migrations::{Context, Migration, read_json, registry};

fn check(m: &dyn Migration) {
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/m{:04}", m.id()));
    let before = read_json(&fixtures.join("before/config.json")).unwrap();
    let after = read_json(&fixtures.join("after/config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context::new(dir.path(), "config.json.next");
    std::fs::copy(fixtures.join("before/config.json"), &ctx.config).unwrap();

    m.up(&ctx).unwrap();
    assert_eq!(read_json(&ctx.config).unwrap(), after, "{} up", m.name());
    m.up(&ctx).unwrap();
    assert_eq!(
        read_json(&ctx.config).unwrap(),
        after,
        "{} up is not idempotent",
        m.name()
    );
    m.down(&ctx).unwrap();
    assert_eq!(read_json(&ctx.config).unwrap(), before, "{} down", m.name());
    m.down(&ctx).unwrap();
    assert_eq!(
        read_json(&ctx.config).unwrap(),
        before,
        "{} down is not idempotent",
        m.name()
    );
}

#[test]
fn every_migration_matches_its_fixtures() {
    let all = registry();
    assert!(!all.is_empty());
    let ids: Vec<u32> = all.iter().map(|m| m.id()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort_unstable();
        s.dedup();
        s
    };
    assert_eq!(ids, sorted, "ids must be unique and in registry order");
    for m in &all {
        check(m.as_ref());
    }
}

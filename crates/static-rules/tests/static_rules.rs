//! The static rules of Keel, checked by the compiler: each `fail/` program breaks one rule
//! and must be rejected with the message in its `.stderr`. The right ways are ordinary test
//! programs beside this one (`spawned_tasks.rs`), so trybuild only type-checks (no second
//! build of the dependencies).
//!
//! The `.stderr` snapshots depend on the compiler version; after a toolchain upgrade,
//! review the differences and refresh them with `TRYBUILD=overwrite cargo test -p keel-static-rules`.

// A test or example crate has no public API: `pub` only shares items between its modules.
#![allow(unreachable_pub)]

#[test]
fn static_rules() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/fail/*.rs");
}

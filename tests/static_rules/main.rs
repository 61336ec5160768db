//! The static rules of Keel, checked by the compiler: each `fail/` program breaks one rule
//! and must be rejected with the message in its `.stderr`; each `pass/` program is the right
//! way and must compile (and run).
//!
//! The `.stderr` snapshots depend on the compiler version; after a toolchain upgrade,
//! review the differences and refresh them with `TRYBUILD=overwrite cargo test --test static_rules`.

// A test or example crate has no public API: `pub` only shares items between its modules.
#![allow(unreachable_pub)]

#[test]
fn static_rules() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/static_rules/fail/*.rs");
    cases.pass("tests/static_rules/pass/*.rs");
}

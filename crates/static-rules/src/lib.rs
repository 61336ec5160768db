//! Keel's compile-fail suite lives in `tests/`: each program in `tests/fail/` breaks one
//! rule and must be rejected with the message in its `.stderr`; the other test programs are
//! the right ways, and must compile. It is a crate of its own so that trybuild, which
//! builds the cases' dependencies again, builds only Keel on PostgreSQL, serde and tokio.

//! Units of work against real PostgreSQL and SQLite: commit, rollback, retries, locks,
//! optimistic versions. Tests named `…::postgres` / `…::sqlite` run the same body on each
//! backend (see `keel_testing::backend_tests!`); `…_postgres` tests are PostgreSQL-only.

mod bank_account;
mod contention;
mod database;
mod rollback;
mod support;

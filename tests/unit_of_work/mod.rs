//! Units of work against real PostgreSQL and SQLite: commit, rollback, retries, locks,
//! optimistic versions. Each file is compiled once per backend, in module `postgres` and
//! module `sqlite`, against that backend's aliases (`Database`, `Tx`); files named
//! `…_postgres` / `…_sqlite` hold what only one backend has.

// The same files, compiled once per backend.
#![allow(clippy::duplicate_mod)]

mod urls;

// `path = "."`: the files of each module are this directory's.
#[path = "."]
mod postgres {
    pub type B = keel::sqlx::Postgres;
    pub const POSTGRES: bool = true;
    pub use keel::postgres::{Database, Tx};

    mod bank_account;
    mod connection_postgres;
    mod contention;
    mod contention_postgres;
    mod migrations;
    mod migrations_postgres;
    mod nesting;
    mod rollback;
    mod support;
    mod tampering;
    mod tls_postgres;
}

#[path = "."]
mod sqlite {
    pub type B = keel::sqlx::Sqlite;
    pub const POSTGRES: bool = false;
    pub use keel::sqlite::{Database, Tx};

    mod bank_account;
    mod contention;
    mod contention_sqlite;
    mod migrations;
    mod nesting;
    mod rollback;
    mod support;
    mod tampering;
}

//! The command bus, on real PostgreSQL and SQLite: sending, workers, per-key order and
//! exclusion, batches, retries, shutdown. Built on the same outbox and delivery machinery
//! as events. Each file is compiled once per backend, in module `postgres` and module
//! `sqlite`, against that backend's aliases.

// The same files, compiled once per backend.
#![allow(clippy::duplicate_mod)]

// `path = "."`: the files of each module are this directory's.
#[path = "."]
mod postgres {
    pub type B = keel::sqlx::Postgres;
    pub const POSTGRES: bool = true;
    pub use keel::postgres::{App, Database, Handler, HandlerContext, Registry};

    mod commit_order_postgres;
    mod fairness;
    mod keys;
    mod likes;
    mod ordering;
    mod reliability;
    mod sending;
    mod support;
}

#[path = "."]
mod sqlite {
    pub type B = keel::sqlx::Sqlite;
    pub const POSTGRES: bool = false;
    pub use keel::sqlite::{App, Database, Handler, HandlerContext, Registry};

    mod fairness;
    mod keys;
    mod likes;
    mod ordering;
    mod reliability;
    mod sending;
    mod support;
}

//! Events after commit, on real PostgreSQL and SQLite: recorded in a unit of work,
//! released by its commit only, delivered to each handler independently, retried, chained.
//! Each file is compiled once per backend, in module `postgres` and module `sqlite`,
//! against that backend's aliases; files named `…_postgres` hold what only PostgreSQL has.

// The same files, compiled once per backend.
#![allow(clippy::duplicate_mod)]

// `path = "."`: the files of each module are this directory's.
#[path = "."]
mod postgres {
    pub type B = keel::sqlx::Postgres;
    pub const POSTGRES: bool = true;
    pub use keel::postgres::{App, Database, Handler, HandlerContext, Registry, Session};

    mod delivery;
    mod grouping;
    mod hot_rows_postgres;
    mod incident_postgres;
    mod late_due;
    mod registry;
    mod support;
    mod telemetry;
    mod wakeups;
}

#[path = "."]
mod sqlite {
    pub type B = keel::sqlx::Sqlite;
    pub const POSTGRES: bool = false;
    pub use keel::sqlite::{App, Database, Handler, HandlerContext, Registry, Session};

    mod delivery;
    mod grouping;
    mod late_due;
    mod registry;
    mod support;
    mod telemetry;
    mod wakeups;
}

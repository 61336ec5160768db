//! Nothing committed is lost: the outbox, the relay, per-handler delivery state, the dead
//! letter and the processed marker, under crashes, restarts, competing relays and bad input.
//! Each file is compiled once per backend, in module `postgres` and module `sqlite`,
//! against that backend's aliases; files named `…_postgres` hold what only PostgreSQL has.
//!
//! `crash::child` and `restart_postgres::*` are `#[ignore]`d: the first is the child
//! process the kill -9 test starts, the second restarts the shared PostgreSQL server and
//! runs on its own (`scripts/test.sh` runs it after the suite).

// The same files, compiled once per backend.
#![allow(clippy::duplicate_mod)]

// `path = "."`: the files of each module are this directory's.
#[path = "."]
mod postgres {
    pub type B = keel::sqlx::Postgres;
    pub const POSTGRES: bool = true;
    pub use keel::postgres::{
        App, Database, Dispatcher, Handler, HandlerContext, Registry, Session, Tx,
    };

    mod claims_postgres;
    mod crash;
    mod deploys;
    mod inbox;
    mod inbox_postgres;
    mod ordering_postgres;
    mod poison;
    mod relays_postgres;
    mod restart_postgres;
    mod retention;
    mod retries;
    mod shutdown;
    mod support;
    mod wakeups_postgres;
}

#[path = "."]
mod sqlite {
    pub type B = keel::sqlx::Sqlite;
    pub const POSTGRES: bool = false;
    pub use keel::sqlite::{
        App, Database, Dispatcher, Handler, HandlerContext, Registry, Session, Tx,
    };

    mod crash;
    mod deploys;
    mod inbox;
    mod poison;
    mod retention;
    mod retries;
    mod shutdown;
    mod support;
}

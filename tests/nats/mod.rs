//! Services that share no database exchange events through a real NATS JetStream server:
//! forwarded from one service's outbox, accepted into another's, each effect once.
//! Each file is compiled once per backend, in module `postgres` and module `sqlite`.
//!
//! The server comes from `KEEL_TEST_NATS_URL` (the README's test command starts one); the
//! tests are skipped without it, unless `KEEL_REQUIRE_NATS=1`.

// The same files, compiled once per backend.
#![allow(clippy::duplicate_mod)]

#[path = "."]
mod postgres {
    pub type B = keel::sqlx::Postgres;
    pub const POSTGRES: bool = true;
    pub use keel::postgres::{App, Database, Handler, HandlerContext, Registry};

    mod commands;
    mod crash;
    mod flows;
    mod restart;
    mod support;
}

#[path = "."]
mod sqlite {
    pub type B = keel::sqlx::Sqlite;
    pub const POSTGRES: bool = false;
    pub use keel::sqlite::{App, Database, Handler, HandlerContext, Registry};

    mod commands;
    mod crash;
    mod flows;
    mod restart;
    mod support;
}

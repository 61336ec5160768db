//! # Keel
//!
//! Steps that must succeed together run in one transaction on one connection; domain
//! events fire only after commit; nothing committed is lost.
//!
//! This facade re-exports the focused crates:
//!
//! - [`domain`] (`keel-domain`): aggregates, versions, domain events and their envelope.
//!   Pure: no I/O.
//! - [`orchestrator`] (`keel-orchestrator`): the database handle for PostgreSQL and
//!   SQLite, units of work with retries, row and named locks, optimistic versions.
//! - [`dispatcher`] (`keel-dispatcher`): after-commit delivery of events.
//!
//! It also re-exports [`sqlx`], so that queries in a unit of work use the very version
//! Keel runs them with.
//!
//! ```no_run
//! use keel::{Database, Error, RowLock};
//!
//! # async fn run() -> Result<(), Error> {
//! let db = Database::connect("sqlite:data/app.db").await?;
//! db.migrate().await?;
//! db.unit_of_work(async |tx| {
//!     let _ = tx.lock(RowLock::for_update("accounts", 1)).await?;
//!     keel::sqlx::query("UPDATE accounts SET balance = balance - 50 WHERE id = 1")
//!         .execute(tx.conn())
//!         .await?;
//!     Ok(())
//! })
//! .await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub use keel_dispatcher as dispatcher;
pub use keel_domain as domain;
pub use keel_orchestrator as orchestrator;

pub use keel_domain::{Aggregate, DecodeError, DomainEvent, Envelope, EventId, Id, Version};
pub use keel_orchestrator::{
    Backend, Database, DatabaseOptions, Error, Isolation, Key, LockMode, LockWait, Locked,
    Rejection, RetryPolicy, RowLock, Tx, TxFn, UnitOfWork,
};
pub use sqlx;

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
//! - [`dispatcher`] (`keel-dispatcher`): sessions, handlers and their registry, after-commit
//!   delivery of events.
//!
//! It also re-exports [`sqlx`], so that queries in a unit of work use the very version
//! Keel runs them with.
//!
//! ```no_run
//! use keel::{App, Database, DomainEvent, Registry, RowLock};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct AccountDebited { id: i64 }
//! # impl DomainEvent for AccountDebited { const NAME: &'static str = "account.debited.v1";
//! #   const AGGREGATE_TYPE: &'static str = "Account";
//! #   fn aggregate_id(&self) -> String { self.id.to_string() } }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Database::connect("sqlite:data/app.db").await?;
//! db.migrate().await?;
//! let app = App::new(db, Registry::global()?);
//! let mut session = app.session();
//! session
//!     .unit_of_work(async |tx| {
//!         let _ = tx.lock(RowLock::for_update("accounts", 1)).await?;
//!         keel::sqlx::query("UPDATE accounts SET balance = balance - 50 WHERE id = 1")
//!             .execute(tx.conn())
//!             .await?;
//!         tx.record(AccountDebited { id: 1 })?; // delivered after commit
//!         Ok(())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod app;

pub use app::{App, AppBuilder};
pub use keel_dispatcher as dispatcher;
pub use keel_domain as domain;
pub use keel_orchestrator as orchestrator;

pub use keel_dispatcher::{
    DeadLetter, DeadLetters, DeliveryOptions, Dispatcher, FailedAttempt, Handler, HandlerContext,
    HandlerFn, HandlerKind, NO_HANDLER, Registry, RegistryError, Session, WorkerLimits,
    WorkerReport, register_command_handler, register_handler,
};
pub use keel_domain::{
    Aggregate, Command, DecodeError, DomainEvent, Envelope, EventId, Id, Version,
};
pub use keel_orchestrator::{
    Backend, Committed, Database, DatabaseOptions, Error, Isolation, Key, LockMode, LockWait,
    Locked, Rejection, Release, RetryPolicy, RowLock, Tx, TxFn, UnitOfWork,
};
pub use sqlx;

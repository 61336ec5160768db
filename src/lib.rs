//! # Keel
//!
//! Steps that must succeed together run in one transaction on one connection; domain
//! events fire only after commit; nothing committed is lost.
//!
//! The backend is a type, chosen at compile time as sqlx chooses drivers: a service on
//! one backend imports its aliases and never writes the type parameter:
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")] {
//! use keel::sqlite::{App, Database};
//! use keel::{DomainEvent, Registry, RowLock};
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
//!         // `tx.conn()` is `&mut SqliteConnection` (`&mut PgConnection` on PostgreSQL)
//!         sqlx::query("UPDATE accounts SET balance = balance - 50 WHERE id = 1")
//!             .execute(tx.conn())
//!             .await?;
//!         tx.record(AccountDebited { id: 1 })?; // delivered after commit
//!         Ok(())
//!     })
//!     .await?;
//! # Ok(()) }
//! # }
//! ```
//!
//! The pieces live in focused crates (`keel-domain`, `keel-orchestrator`,
//! `keel-dispatcher`); this facade is the one path to each public item.

#![warn(missing_docs)]

mod app;

pub use app::{App, AppBuilder};
pub use keel_dispatcher::{
    Admin, DeadFilter, DeadLetter, DeadLetters, DeliveryOptions, Dispatcher, FailedAttempt,
    Handler, HandlerContext, HandlerFn, HandlerKind, HandlerStatus, Incoming, LeaseHolder,
    NO_HANDLER, Registry, RegistryError, RelayHealth, RelayStatus, SchemaState, Session, Status,
    Unsubscribed, WorkerLimits, WorkerReport, register_command_handler, register_handler,
};
pub use keel_domain::{
    Aggregate, Command, DecodeError, DomainEvent, Envelope, EventId, Id, Version,
};
pub use keel_orchestrator::{
    Backend, Committed, Database, DatabaseOptions, Error, GroupCommit, Isolation, Key, LockMode,
    LockWait, Locked, Rejection, Release, RetryPolicy, RowLock, Tx, TxFn, UnitOfWorkOptions,
    redact_url,
};
pub use keel_orchestrator::{telemetry, trace};
pub use sqlx;

/// Events and commands over NATS JetStream (feature `nats`): see the crate `keel-nats`.
#[cfg(feature = "nats")]
pub use keel_nats as nats;

/// Declares the aliases of one backend.
macro_rules! backend_aliases {
    ($backend:ty, $name:literal) => {
        /// The database handle.
        pub type Database = crate::Database<$backend>;
        /// The transaction handle of a unit of work; [`Tx::conn`](crate::Tx::conn) is the
        #[doc = concat!("driver's own ", $name, " connection.")]
        pub type Tx<'c> = crate::Tx<'c, $backend>;
        /// The assembled service.
        pub type App = crate::App<$backend>;
        /// The builder of an [`App`].
        pub type AppBuilder = crate::AppBuilder<$backend>;
        /// Runs units of work and releases their events.
        pub type Session<'a> = crate::Session<'a, $backend>;
        /// What a handler receives besides its event.
        pub type HandlerContext = crate::HandlerContext<$backend>;
        /// A handler of one event or command type.
        pub type Handler = crate::Handler<$backend>;
        /// The handlers of a program.
        pub type Registry = crate::Registry<$backend>;
        /// Delivers the events of committed units of work.
        pub type Dispatcher = crate::Dispatcher<$backend>;
        /// The dead letter.
        pub type DeadLetters = crate::DeadLetters<$backend>;
        /// The operator's view of the database.
        pub type Admin = crate::Admin<$backend>;
    };
}

/// Keel on PostgreSQL, the production backend: `use keel::postgres::{App, Database, Tx};`.
///
/// In a unit of work, `tx.conn()` is `&mut sqlx::PgConnection`: native types, `FromRow`,
/// `query!` and `&mut PgConnection` repositories work as they are.
#[cfg(feature = "postgres")]
pub mod postgres {
    backend_aliases!(sqlx::Postgres, "PostgreSQL");
}

/// Keel on SQLite, the embedded backend: `use keel::sqlite::{App, Database, Tx};`.
///
/// In a unit of work, `tx.conn()` is `&mut sqlx::SqliteConnection`.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    backend_aliases!(sqlx::Sqlite, "SQLite");
}

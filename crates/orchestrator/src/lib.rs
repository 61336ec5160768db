//! Units of work: steps that must succeed together, run in one transaction on one
//! connection, re-run on a fresh transaction when the database says "try again".
//!
//! # Why this shape
//!
//! A use case whose steps must succeed or fail together is an *orchestration* inside one
//! transaction. Keel makes that transaction the only thing the steps can touch: the closure
//! given to [`Database::unit_of_work`] receives `&mut` [`Tx`], which wraps the transaction's
//! connection, and nothing else. A step that needs a second connection would wait on the
//! pool while holding the first one, and under load every pooled connection ends up held by
//! a transaction waiting for another: the application-side pool deadlocks while the database
//! sees nothing wrong. A task-local marker makes every framework connection request made
//! from inside a unit of work fail at once with [`Error::InsideUnitOfWork`].
//!
//! Contention is normal in a transactional service: deadlocks, serialization failures, lock
//! timeouts, optimistic version conflicts, a busy SQLite file. All of them are classified in
//! one place ([`Error::is_transient`]); a transient failure rolls the attempt back and re-runs
//! the whole closure on a fresh transaction, per a [`RetryPolicy`]. The closure is an
//! `AsyncFnMut`, so it is re-run from its start and no state of a failed attempt survives.
//!
//! The backend is a type ([`Backend`]: `sqlx::Postgres` or `sqlx::Sqlite`), and
//! [`Tx::conn`] is the driver's own connection, so a step is ordinary sqlx code:
//!
//! ```no_run
//! # mod keel { pub use keel_orchestrator::{Database, Error, Locked, RowLock}; }
//! # #[cfg(feature = "sqlite")] {
//! use keel::{Database, Error, Locked, RowLock};
//! use sqlx::Sqlite;
//!
//! # async fn run() -> Result<(), Error> {
//! let mut db = Database::<Sqlite>::connect("sqlite:data/bank.db").await?;
//! db.migrate().await?;
//! let balance: i64 = db
//!     .unit_of_work(async |tx| {
//!         if tx.lock(RowLock::for_update("accounts", 1)).await? == Locked::Missing {
//!             return Err(Error::rejected(std::io::Error::other("no account 1")));
//!         }
//!         let (balance,): (i64,) = sqlx::query_as("SELECT balance FROM accounts WHERE id = $1")
//!             .bind(1_i64)
//!             .fetch_one(tx.conn())
//!             .await?;
//!         sqlx::query("UPDATE accounts SET balance = $1 WHERE id = $2")
//!             .bind(balance - 50)
//!             .bind(1_i64)
//!             .execute(tx.conn())
//!             .await?;
//!         Ok(balance - 50)
//!     })
//!     .await?
//!     .into_value();
//! # Ok(()) }
//! # }
//! ```

#![warn(missing_docs)]
// Without a backend feature, only the generic parts are left.
#![cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]

mod backend;
mod committed;
mod database;
mod error;
mod group;
mod guard;
mod lock;
mod marker;
mod migrations;
mod notify;
pub mod operations;
mod options;
#[doc(hidden)]
pub mod outbox;
mod pool;
#[cfg(feature = "postgres")]
mod postgres;
mod retry;
#[cfg(feature = "sqlite")]
mod sqlite;
#[doc(hidden)]
pub mod store;
pub mod telemetry;
pub mod trace;
mod transaction;
mod tx;
mod unit_of_work;
mod url;

pub use backend::Backend;
pub use committed::{Committed, Release};
pub use database::{Database, DatabaseOptions};
pub use error::{Error, Rejection};
#[doc(hidden)]
pub use group::GroupCommit;
pub use guard::ensure_outside_unit_of_work;
pub use lock::{Key, LockMode, LockWait, Locked, RowLock};
pub use options::{Isolation, UnitOfWorkOptions};
pub use retry::RetryPolicy;
pub use tx::Tx;
pub use unit_of_work::{TxFn, TxStep};
pub use url::redact as redact_url;

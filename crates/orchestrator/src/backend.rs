//! The backend is a type, chosen at compile time.
//!
//! sqlx makes the driver a compile-time choice for type safety and speed, and Keel follows
//! it: a [`Database`](crate::Database), a [`Tx`](crate::Tx) and everything built on them
//! carry their backend as a type parameter, which is sqlx's own database type. Inside a
//! unit of work the steps get the driver's own connection (`&mut PgConnection`,
//! `&mut SqliteConnection`), so native types (`uuid`, `timestamptz`, `jsonb`, arrays,
//! enums), `FromRow`, `query!` and existing repository functions work unchanged.
//!
//! Each backend is behind a Cargo feature of the same name (both on by default); a
//! PostgreSQL service that turns `sqlite` off does not build the bundled SQLite library.

use crate::store::{Operations, Store};

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
}

/// A database engine Keel runs on: [`sqlx::Postgres`] or [`sqlx::Sqlite`].
///
/// Sealed: Keel's own statements are written once per backend, so only these two
/// implement it. Application code names a backend once, usually through the facade's
/// `keel::postgres` or `keel::sqlite` aliases, and never writes the parameter again.
///
/// ```
/// # mod keel { pub use keel_orchestrator::{Backend, Database}; }
/// # #[cfg(feature = "postgres")] {
/// use keel::{Backend, Database};
/// fn name<B: Backend>(_: &Database<B>) -> &'static str { B::NAME }
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Keel backend",
    label = "Keel runs on `sqlx::Postgres` or `sqlx::Sqlite`",
    note = "enable the `postgres` or `sqlite` feature of `keel`, and use `keel::postgres::*` or \
            `keel::sqlite::*`"
)]
pub trait Backend: Store + Operations + sealed::Sealed {}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {}
#[cfg(feature = "sqlite")]
impl Backend for sqlx::Sqlite {}

//! How to open a database: the URL and the pool's settings.

use std::time::Duration;

use super::Database;
use crate::url::redact;
use crate::{Backend, Error};

/// How to open a [`Database`]: the URL plus pool settings.
///
/// ```no_run
/// # mod keel { pub use keel_orchestrator::{Database, DatabaseOptions, Error}; }
/// # #[cfg(feature = "postgres")]
/// # async fn run() -> Result<(), keel::Error> {
/// use std::time::Duration;
/// use keel::{Database, DatabaseOptions};
///
/// let db: Database<sqlx::Postgres> = DatabaseOptions::new("postgres://app@127.0.0.1:5432/app")
///     .max_connections(16)
///     .acquire_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DatabaseOptions {
    pub(crate) url: String,
    pub(crate) max_connections: u32,
    pub(crate) acquire_timeout: Duration,
    pub(crate) lock_timeout: Duration,
}

impl std::fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseOptions")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .finish()
    }
}

impl DatabaseOptions {
    /// Options for `url` with the defaults: 10 connections, a 10 s acquire timeout and a
    /// 5 s lock timeout.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseOptions {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(5),
        }
    }

    /// Size of the connection pool.
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a connection request may wait for the pool before failing. Keeping this
    /// bounded means even code outside Keel's control cannot hang forever on the pool.
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long any statement may wait for a lock by default: PostgreSQL's `lock_timeout`
    /// on every connection, SQLite's busy timeout and its write-lock queue. Nothing Keel
    /// runs then waits forever for a lock; exceeding it is [`Error::LockTimeout`], which a
    /// unit of work retries. A unit of work's own
    /// [`UnitOfWorkOptions::lock_timeout`](crate::UnitOfWorkOptions::lock_timeout) overrides it.
    #[must_use]
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Opens the database on backend `B`; the URL's scheme must name it.
    pub async fn connect<B: Backend>(self) -> Result<Database<B>, Error> {
        Database::open(self).await
    }
}

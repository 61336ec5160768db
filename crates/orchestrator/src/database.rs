//! Opening a database from a URL, applying the framework's migrations.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;

use crate::migrations;
use crate::notify::Notifier;
use crate::operations::SchemaState;
use crate::outbox::Routing;
use crate::url::redact;
use crate::{Backend, Error, guard};

mod options;
pub use options::DatabaseOptions;

pub(crate) fn invalid(url: &str, reason: &str) -> Error {
    Error::InvalidUrl {
        url: redact(url),
        reason: reason.to_owned(),
    }
}

/// What a failed connection to `url` is: a URL the driver cannot use, or a server away or
/// refusing.
pub(crate) fn not_connected(url: &str, source: sqlx::Error) -> Error {
    match source {
        sqlx::Error::Configuration(e) => invalid(url, &e.to_string()),
        source => Error::Unreachable {
            url: redact(url),
            source,
        },
    }
}

/// A handle to the database on backend `B`: a connection pool plus what Keel keeps about
/// it.
///
/// Cheap to clone; every clone shares one pool. Opened from a URL:
///
/// - `postgres://user:password@host:port/database` (`Database<sqlx::Postgres>`)
/// - `sqlite:path/to/file.db` (`Database<sqlx::Sqlite>`; the file and its directory are
///   created if missing; the database runs in WAL mode)
pub struct Database<B: sqlx::Database> {
    inner: Arc<Inner<B>>,
    routing: Option<Arc<dyn Routing>>,
}

impl<B: sqlx::Database> Clone for Database<B> {
    fn clone(&self) -> Self {
        Database {
            inner: self.inner.clone(),
            routing: self.routing.clone(),
        }
    }
}

struct Inner<B: sqlx::Database> {
    pool: sqlx::Pool<B>,
    url: String,
    /// SQLite allows one writer: units of work of this process queue here instead of
    /// spinning in SQLite's busy handler.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The group of units of work taking members, and when a member last failed (see the
    /// `group` module).
    groups: crate::group::Groups<B>,
    /// Kept to open an independent pool (`connect_again`); holds the unredacted URL, so
    /// it is never printed.
    options: DatabaseOptions,
    /// When and whether to wake other processes' relays.
    notifier: Notifier,
    /// The units of work holding a connection of the pool (or waiting for SQLite's write
    /// lock): named in the error when the pool or the lock runs out.
    holders: std::sync::Mutex<Vec<(u64, &'static str)>>,
    next_holder: AtomicU64,
    /// Whether a direct connection attempt is diagnosing an unreachable server: one at a
    /// time, however many requests time out together.
    probing: std::sync::atomic::AtomicBool,
    backend: PhantomData<fn() -> B>,
}

impl<B: Backend> std::fmt::Debug for Database<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &B::NAME)
            .field("url", &self.inner.url)
            .finish()
    }
}

/// Why no connection to `url` can be opened (refused, unknown host, wrong password): one
/// direct attempt of at most 2 s; `PoolTimedOut` if it connects or does not answer.
async fn connection_failure<B: Backend>(url: &str) -> sqlx::Error {
    let attempt = <B::Connection as sqlx::Connection>::connect(url);
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            sqlx::Error::PoolTimedOut
        }
        Ok(Err(source)) => source,
        Err(_) => sqlx::Error::PoolTimedOut,
    }
}

/// The table keel records its own migrations in, apart from the application's.
const MIGRATIONS_TABLE: &str = "keel_schema_migrations";

impl<B: Backend> Database<B> {
    /// Opens the database at `url` with default [`DatabaseOptions`].
    ///
    /// ```no_run
    /// # mod keel { pub use keel_orchestrator::{Database, Error}; }
    /// # #[cfg(feature = "sqlite")]
    /// # async fn run() -> Result<(), keel::Error> {
    /// let db = keel::Database::<sqlx::Sqlite>::connect("sqlite:data/app.db").await?;
    /// db.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        DatabaseOptions::new(url).connect().await
    }

    async fn open(options: DatabaseOptions) -> Result<Self, Error> {
        let url = B::normalise_url(options.url.trim())?;
        let pool = match B::open(&url, &options).await {
            Ok(pool) => pool,
            // The pool retried until its timeout and says only that: one attempt says why.
            Err(Error::Unreachable {
                url: shown,
                source: sqlx::Error::PoolTimedOut,
            }) => {
                return Err(Error::Unreachable {
                    url: shown,
                    source: connection_failure::<B>(&url).await,
                });
            }
            Err(error) => return Err(error),
        };
        let shown = redact(&url);
        tracing::debug!(url = %shown, backend = B::NAME, "database opened");
        Ok(Database {
            routing: None,
            inner: Arc::new(Inner {
                pool,
                url: shown,
                writer: Arc::new(tokio::sync::Mutex::new(())),
                groups: crate::group::Groups::default(),
                options,
                notifier: Notifier::new(),
                holders: std::sync::Mutex::new(Vec::new()),
                next_holder: AtomicU64::new(0),
                probing: std::sync::atomic::AtomicBool::new(false),
                backend: PhantomData,
            }),
        })
    }

    /// Creates or upgrades the framework's tables (embedded migrations, recorded in
    /// `keel_schema_migrations`, apart from the application's own migrations).
    ///
    /// Fails with [`Error::SchemaNewerThanLibrary`] if the database was migrated by a newer
    /// version of Keel. Safe to call from several processes at once on PostgreSQL.
    pub async fn migrate(&self) -> Result<(), Error> {
        guard::ensure_outside("run migrations")?;
        let migrator = migrations::migrator(B::MIGRATIONS, MIGRATIONS_TABLE);
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        match B::run_migrations(&migrator, &self.inner.pool, true).await {
            Ok(()) => Ok(()),
            Err(MigrateError::VersionMissing(found)) => {
                Err(Error::SchemaNewerThanLibrary { found, known })
            }
            Err(e) => Err(Error::Migration(e)),
        }
    }

    /// Where this database's Keel schema stands against this build: never migrated, behind,
    /// current, or migrated by a newer Keel. Reads only; [`Database::migrate`] upgrades.
    pub async fn schema_state(&self) -> Result<SchemaState, Error> {
        guard::ensure_outside("read the schema's state")?;
        let Some(applied) = B::applied_migrations(self).await? else {
            return Ok(SchemaState::Missing);
        };
        let embedded = migrations::migrator(B::MIGRATIONS, MIGRATIONS_TABLE);
        let known = embedded.iter().map(|m| m.version).max().unwrap_or(0);
        let found = applied.iter().copied().max().unwrap_or(0);
        if found > known {
            return Ok(SchemaState::Newer { found, known });
        }
        let pending = embedded
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count();
        Ok(match pending {
            0 => SchemaState::Current,
            pending => SchemaState::Behind { pending },
        })
    }

    /// Opens an independent pool on the same database, with the same options, as another
    /// process would. Units of work on the two handles contend like two processes (on
    /// SQLite they meet SQLite's own locking rather than this handle's writer queue).
    pub async fn connect_again(&self) -> Result<Self, Error> {
        guard::ensure_outside("open another pool")?;
        self.inner.options.clone().connect().await
    }

    /// A handle on the same pool whose units of work write a delivery row for each
    /// handler of each recorded event. The dispatcher installs it.
    #[doc(hidden)]
    #[must_use]
    pub fn with_routing(&self, routing: Arc<dyn Routing>) -> Self {
        Database {
            inner: self.inner.clone(),
            routing: Some(routing),
        }
    }

    pub(crate) fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    pub(crate) fn routing(&self) -> Option<&dyn Routing> {
        self.routing.as_deref()
    }

    /// The URL this database was opened with, password hidden.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The options this database was opened with.
    pub(crate) fn options(&self) -> &DatabaseOptions {
        &self.inner.options
    }

    /// A connection from the pool, for work outside any unit of work (reads, set-up).
    ///
    /// Fails at once with [`Error::InsideUnitOfWork`] when called from inside a unit of
    /// work: the steps of a unit of work use the `&mut Tx` they are given.
    pub async fn acquire(&self) -> Result<PoolConnection<B>, Error> {
        guard::ensure_outside("acquire a database connection")?;
        match self.inner.pool.acquire().await {
            Ok(conn) => Ok(conn),
            Err(error) => Err(self.exhausted("a connection request", None, error).await),
        }
    }

    /// Records that unit of work `name` holds a connection until the result is dropped.
    pub(crate) fn hold(&self, name: &'static str) -> Holding<'_, B> {
        let id = self.inner.next_holder.fetch_add(1, Ordering::Relaxed);
        self.holders().push((id, name));
        Holding { db: self, id }
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, Vec<(u64, &'static str)>> {
        self.inner
            .holders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The units of work holding connections (or the write lock) now, oldest first.
    pub(crate) fn holder_names(&self, except: Option<u64>) -> Vec<&'static str> {
        self.holders()
            .iter()
            .filter(|(id, _)| Some(*id) != except)
            .map(|(_, name)| *name)
            .collect()
    }

    /// The error of a connection request that failed: when the pool ran out, one that
    /// names who holds the connections, so that a nested acquisition reads as what it is;
    /// when it holds no connection at all, the server is the problem: one direct attempt
    /// says why ([`Error::Unreachable`]: refused, unknown host, wrong password), as does
    /// any error of the pool's own attempt.
    pub(crate) async fn exhausted(
        &self,
        waiting: &'static str,
        except: Option<u64>,
        error: sqlx::Error,
    ) -> Error {
        match error {
            sqlx::Error::PoolTimedOut if self.inner.pool.size() == 0 => {
                let source = if self.inner.probing.swap(true, Ordering::AcqRel) {
                    sqlx::Error::PoolTimedOut // another request is finding out why
                } else {
                    let url = B::normalise_url(self.inner.options.url.trim()).unwrap_or_default();
                    let found = connection_failure::<B>(&url).await;
                    self.inner.probing.store(false, Ordering::Release);
                    found
                };
                Error::Unreachable {
                    url: self.inner.url.clone(),
                    source,
                }
            }
            sqlx::Error::PoolTimedOut => Error::PoolExhausted {
                waiting,
                waited_ms: self.inner.options.acquire_timeout.as_millis() as u64,
                size: self.inner.pool.size(),
                holders: self.holder_names(except),
            },
            sqlx::Error::PoolClosed => Error::Database(sqlx::Error::PoolClosed),
            // The pool could not open a connection: refused, reset, TLS or handshake cut.
            source => Error::Unreachable {
                url: self.inner.url.clone(),
                source,
            },
        }
    }

    /// Runs SQL statements (e.g. a test's schema) outside any unit of work.
    ///
    /// The SQL must be written by the program, never derived from user input. A service's
    /// schema belongs in migrations: [`Database::run_migrations`].
    pub async fn execute_script(&self, sql: &'static str) -> Result<(), Error> {
        let mut conn = self.acquire().await?;
        B::run_script(&mut conn, sql).await
    }

    /// Applies a service's own migrations, embedded with sqlx's `migrate!`, recorded in
    /// sqlx's `_sqlx_migrations` table (Keel's own are in `keel_schema_migrations`, applied
    /// by [`Database::migrate`]). Safe to call from several processes at once on
    /// PostgreSQL.
    ///
    /// ```ignore
    /// db.migrate().await?;                                         // Keel's tables
    /// db.run_migrations(&sqlx::migrate!("./migrations")).await?;   // the service's
    /// ```
    pub async fn run_migrations(&self, migrator: &Migrator) -> Result<(), Error> {
        guard::ensure_outside("run migrations")?;
        Ok(B::run_migrations(migrator, &self.inner.pool, false).await?)
    }

    /// Closes the pool: no new connection is handed out, idle ones are closed at once, and
    /// connections in use are closed when returned. Waits for them up to the acquire
    /// timeout, then returns (with a warning) rather than hang on a connection its holder
    /// keeps.
    ///
    /// Fails at once with [`Error::InsideUnitOfWork`] inside a unit of work, whose own
    /// connection would never be returned.
    pub async fn close(&self) -> Result<(), Error> {
        guard::ensure_outside("close the database")?;
        let pool = self.inner.pool.clone();
        // sqlx closes the idle connections only once every connection is back. Take them
        // out first (no await in between, so none is handed out meanwhile), then mark the
        // pool closed (`close()` does when called), close them, and let the pool's close
        // finish in the background if a connection is kept.
        let idle: Vec<_> = std::iter::from_fn(|| pool.try_acquire()).collect();
        drop(pool.close());
        let closing = tokio::spawn(async move {
            for conn in idle {
                let _ = conn.close().await;
            }
            pool.close().await
        });
        let wait = self.inner.options.acquire_timeout;
        if tokio::time::timeout(wait, closing).await.is_err() {
            let pool = &self.inner.pool;
            tracing::warn!(
                in_use = (pool.size() as usize).saturating_sub(pool.num_idle()),
                waited_ms = wait.as_millis() as u64,
                "closing the pool: connections still in use are closed when returned"
            );
        }
        Ok(())
    }

    /// The pool, for Keel's own statements.
    pub(crate) fn pool(&self) -> &sqlx::Pool<B> {
        &self.inner.pool
    }

    pub(crate) fn writer(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.writer
    }

    /// The write lock, held until the guard is dropped, wherever it goes.
    pub(crate) async fn writer_owned(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.inner.writer.clone().lock_owned().await
    }

    pub(crate) fn groups(&self) -> &crate::group::Groups<B> {
        &self.inner.groups
    }
}

/// A unit of work's entry among the holders of its database; removed when dropped.
pub(crate) struct Holding<'a, B: Backend> {
    db: &'a Database<B>,
    id: u64,
}

impl<B: Backend> Holding<'_, B> {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl<B: Backend> Drop for Holding<'_, B> {
    fn drop(&mut self) {
        self.db.holders().retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_never_print_the_password() {
        let options = DatabaseOptions::new("postgres://app:hunter2@db/app");
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("app:***@db"),
            "{shown}"
        );
    }
}

//! Opening a database from a URL, applying the framework's migrations.

use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::{AnyPool, AssertSqlSafe, Executor};

use crate::outbox::Routing;
use crate::url::redact;
use crate::{Db, Error, guard};

/// Which database engine a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// PostgreSQL: the production backend.
    Postgres,
    /// SQLite: the embedded default, one file, writers serialized.
    Sqlite,
}

impl Backend {
    /// Reads the backend from a URL's scheme.
    fn of_url(url: &str) -> Result<Self, Error> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "sqlite" => Ok(Backend::Sqlite),
            "" => Err(invalid(url, "the URL has no scheme")),
            other => Err(invalid(
                url,
                &format!("unsupported scheme `{other}` (keel supports postgres and sqlite)"),
            )),
        }
    }
}

fn invalid(url: &str, reason: &str) -> Error {
    Error::InvalidUrl {
        url: redact(url),
        reason: reason.to_owned(),
    }
}

/// How to open a [`Database`]: the URL plus pool settings.
///
/// ```no_run
/// # async fn run() -> Result<(), keel_orchestrator::Error> {
/// use std::time::Duration;
/// use keel_orchestrator::DatabaseOptions;
///
/// let db = DatabaseOptions::new("postgres://app@127.0.0.1:5432/app")
///     .max_connections(16)
///     .acquire_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DatabaseOptions {
    url: String,
    max_connections: u32,
    acquire_timeout: Duration,
    sqlite_busy_timeout: Duration,
}

impl std::fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseOptions")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("sqlite_busy_timeout", &self.sqlite_busy_timeout)
            .finish()
    }
}

impl DatabaseOptions {
    /// Options for `url` with the defaults: 10 connections, 10 s acquire timeout, and on
    /// SQLite a 5 s busy timeout.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseOptions {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(5),
        }
    }

    /// Size of the connection pool.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a connection request may wait for the pool before failing. Keeping this
    /// bounded means even code outside Keel's control cannot hang forever on the pool.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// SQLite only: how long to wait for another process's write lock by default (a unit
    /// of work's own `lock_timeout` overrides it).
    pub fn sqlite_busy_timeout(mut self, timeout: Duration) -> Self {
        self.sqlite_busy_timeout = timeout;
        self
    }

    /// Opens the database.
    pub async fn connect(self) -> Result<Database, Error> {
        Database::open(self).await
    }
}

/// A handle to the database: a connection pool plus what Keel knows about its backend.
///
/// Cheap to clone; every clone shares one pool. Opened from a URL:
///
/// - `postgres://user:password@host:port/database`
/// - `sqlite:path/to/file.db` (the file and its directory are created if missing; the
///   database runs in WAL mode)
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
    routing: Option<Arc<dyn Routing>>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    url: String,
    /// SQLite allows one writer: units of work of this process queue here instead of
    /// spinning in SQLite's busy handler.
    sqlite_writer: tokio::sync::Mutex<()>,
    sqlite_busy_timeout: Duration,
    /// Kept to open an independent pool (`connect_again`); holds the unredacted URL, so
    /// it is never printed.
    options: DatabaseOptions,
    /// When this pool last sent `NOTIFY keel_outbox` (ms since the epoch).
    last_notify: std::sync::atomic::AtomicI64,
    /// Whether a coalesced `NOTIFY` is scheduled for the end of the current window.
    notify_scheduled: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.inner.backend)
            .field("url", &self.inner.url)
            .finish()
    }
}

/// Commits of one pool within this many milliseconds share one `NOTIFY`.
const NOTIFY_WINDOW_MS: i64 = 5;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The table keel records its own migrations in, apart from the application's.
const MIGRATIONS_TABLE: &str = "keel_schema_migrations";

impl Database {
    /// Opens the database at `url` with default [`DatabaseOptions`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keel_orchestrator::Error> {
    /// let db = keel_orchestrator::Database::connect("sqlite:data/app.db").await?;
    /// db.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        DatabaseOptions::new(url).connect().await
    }

    async fn open(options: DatabaseOptions) -> Result<Self, Error> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let kept = options.clone();
        let url = options.url.trim();
        let backend = Backend::of_url(url)?;
        let url = match backend {
            Backend::Postgres => url.to_owned(),
            Backend::Sqlite => sqlite_url(url)?,
        };
        let connect_options: AnyConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| invalid(&url, &e.to_string()))?;

        let busy_ms = options.sqlite_busy_timeout.as_millis();
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        let pragmas = format!(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {busy_ms};"
                        );
                        conn.execute(AssertSqlSafe(pragmas)).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect_options)
            .await
            .map_err(|source| match source {
                sqlx::Error::Configuration(e) => invalid(&url, &e.to_string()),
                source => Error::Unreachable {
                    url: redact(&url),
                    source,
                },
            })?;

        let shown = redact(&url);
        tracing::debug!(url = %shown, ?backend, "database opened");
        Ok(Database {
            routing: None,
            inner: Arc::new(Inner {
                pool,
                backend,
                url: shown,
                sqlite_writer: tokio::sync::Mutex::new(()),
                sqlite_busy_timeout: options.sqlite_busy_timeout,
                options: kept,
                last_notify: std::sync::atomic::AtomicI64::new(0),
                notify_scheduled: std::sync::atomic::AtomicBool::new(false),
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
        let mut migrator = match self.inner.backend {
            Backend::Postgres => clone_migrator(&POSTGRES_MIGRATIONS),
            Backend::Sqlite => clone_migrator(&SQLITE_MIGRATIONS),
        };
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        match migrator.run(&self.inner.pool).await {
            Ok(()) => Ok(()),
            Err(MigrateError::VersionMissing(found)) => {
                Err(Error::SchemaNewerThanLibrary { found, known })
            }
            Err(e) => Err(Error::Migration(e)),
        }
    }

    /// Opens an independent pool on the same database, with the same options, as another
    /// process would. Units of work on the two handles contend like two processes (on
    /// SQLite they meet SQLite's own locking rather than this handle's writer queue).
    pub async fn connect_again(&self) -> Result<Database, Error> {
        guard::ensure_outside("open another pool")?;
        self.inner.options.clone().connect().await
    }

    /// A handle on the same pool whose units of work write a delivery row for each
    /// handler of each recorded event (see [`crate::outbox`]). The dispatcher installs it.
    pub fn with_routing(&self, routing: Arc<dyn Routing>) -> Database {
        Database {
            inner: self.inner.clone(),
            routing: Some(routing),
        }
    }

    /// Whether a `NOTIFY` may be sent now: at most one per [`NOTIFY_WINDOW_MS`] per pool.
    /// A commit that may not notify calls [`Database::notify_later`] instead.
    pub(crate) fn may_notify(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = crate::outbox::now_millis();
        let last = self.inner.last_notify.load(Ordering::Relaxed);
        now - last >= NOTIFY_WINDOW_MS
            && self
                .inner
                .last_notify
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Schedules one `NOTIFY` at the end of the current window, unless one is scheduled
    /// already: the commits coalesced into a window are announced by its trailing
    /// notification, so a remote relay never waits for its poll interval to see them.
    pub(crate) fn notify_later(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.notify_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let db = self.clone();
        // At the end of the window of the last notification, not a whole window later.
        let last = self.inner.last_notify.load(Ordering::Relaxed);
        let wait =
            (last + NOTIFY_WINDOW_MS - crate::outbox::now_millis()).clamp(0, NOTIFY_WINDOW_MS);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            db.inner.notify_scheduled.store(false, Ordering::Release);
            db.inner
                .last_notify
                .store(crate::outbox::now_millis(), Ordering::Relaxed);
            match db.inner.pool.acquire().await {
                Ok(mut conn) => crate::outbox::notify_relays(&mut conn).await,
                Err(error) => {
                    tracing::debug!(%error, "could not notify relays; they will find the rows when they poll")
                }
            }
        });
    }

    pub(crate) fn routing(&self) -> Option<&dyn Routing> {
        self.routing.as_deref()
    }

    /// The URL with its password, for drivers that need their own connection (the
    /// PostgreSQL listener). Never print it.
    #[doc(hidden)]
    pub fn connect_url(&self) -> &str {
        &self.inner.options.url
    }

    /// The backend this database runs on.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The URL this database was opened with, password hidden.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// A connection from the pool, for work outside any unit of work (reads, set-up).
    ///
    /// Fails at once with [`Error::InsideUnitOfWork`] when called from inside a unit of
    /// work: the steps of a unit of work use the `&mut Tx` they are given.
    pub async fn acquire(&self) -> Result<PoolConnection<Db>, Error> {
        guard::ensure_outside("acquire a database connection")?;
        Ok(self.inner.pool.acquire().await?)
    }

    /// Runs SQL statements (e.g. an application's schema) outside any unit of work.
    ///
    /// The SQL must be written by the program, never derived from user input.
    pub async fn execute_script(&self, sql: &'static str) -> Result<(), Error> {
        let mut conn = self.acquire().await?;
        sqlx::raw_sql(sql).execute(&mut *conn).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    pub(crate) fn sqlite_writer(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.sqlite_writer
    }

    pub(crate) fn sqlite_busy_timeout(&self) -> Duration {
        self.inner.sqlite_busy_timeout
    }
}

fn clone_migrator(embedded: &Migrator) -> Migrator {
    Migrator::with_migrations(embedded.iter().cloned().collect())
}

/// Normalises a SQLite URL: refuses in-memory databases, creates the file's directory,
/// and asks for the file to be created if missing.
fn sqlite_url(url: &str) -> Result<String, Error> {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(url, "the SQLite URL names no file"));
    }
    if path == ":memory:" || query.is_some_and(|q| q.contains("mode=memory")) {
        return Err(invalid(
            url,
            "in-memory SQLite databases are not supported (each pooled connection would see \
             its own empty database); use a file, e.g. `sqlite:data/app.db`",
        ));
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            invalid(
                url,
                &format!("cannot create directory `{}`: {e}", dir.display()),
            )
        })?;
    }
    Ok(match query {
        Some(q) if q.contains("mode=") => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    })
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

    #[test]
    fn backends_are_read_from_the_scheme() {
        assert_eq!(
            Backend::of_url("postgres://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(Backend::of_url("sqlite:a.db").unwrap(), Backend::Sqlite);
        let err = Backend::of_url("mysql://u:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported scheme `mysql`"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(Backend::of_url("just-a-path.db").is_err());
    }

    #[test]
    fn sqlite_urls_create_the_file_and_refuse_memory() {
        let dir = std::env::temp_dir().join(format!("keel-url-{}", std::process::id()));
        let file = dir.join("sub/app.db");
        let url = sqlite_url(&format!("sqlite:{}", file.display())).unwrap();
        assert!(url.ends_with("app.db?mode=rwc"), "{url}");
        assert!(file.parent().unwrap().is_dir());
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(sqlite_url("sqlite::memory:").is_err());
        assert!(sqlite_url("sqlite:").is_err());
        assert_eq!(
            sqlite_url("sqlite:a.db?mode=ro").unwrap(),
            "sqlite://a.db?mode=ro"
        );
    }
}

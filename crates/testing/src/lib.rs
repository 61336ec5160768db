//! Test support for Keel services: every test gets its own, migrated database.
//!
//! A unit of work is only meaningful against a real database, so tests of use cases run
//! on real PostgreSQL and SQLite, never on a mock. Isolation comes from giving each test a
//! database of its own (as sqlx's `#[sqlx::test]` does): tests run in parallel without
//! seeing each other's rows, and a failing test leaves nothing behind for the next.
//!
//! - SQLite: a fresh file in the system's temporary directory, removed when the
//!   [`TestDatabase`] is dropped.
//! - PostgreSQL: a fresh database created on the server named by `KEEL_TEST_POSTGRES_URL`
//!   (any database on that server that the user may connect to; the user needs
//!   `CREATEDB`), dropped when the [`TestDatabase`] is dropped. When the variable is unset
//!   PostgreSQL tests are skipped with a notice (shown with `--nocapture`), unless
//!   `KEEL_REQUIRE_POSTGRES=1` or `CI=true`, in which case they fail: a test that silently
//!   did not run must never pass on CI.
//!
//! `KEEL_TEST_POOL_SIZE` sets the pool size of every test database.
//!
//! [`TestDatabase::<B>::new`](TestDatabase::new) gives a fresh, migrated database of backend `B`.
//! [`backend_tests!`] turns `async fn name(db: Database<B>)` functions into tests, where
//! `B` is a type alias in scope naming the backend; a suite written once against the
//! aliases runs on both backends by being compiled once per backend:
//!
//! ```ignore
//! // tests/orders/main.rs: the same files, once per backend
//! #[path = "."]
//! mod postgres {
//!     pub type B = keel::sqlx::Postgres;
//!     pub use keel::postgres::{App, Database};
//!     mod counting;   // tests/orders/counting.rs
//! }
//! #[path = "."]
//! mod sqlite {
//!     pub type B = keel::sqlx::Sqlite;
//!     pub use keel::sqlite::{App, Database};
//!     mod counting;
//! }
//!
//! // tests/orders/counting.rs
//! use super::{B, Database};
//!
//! async fn counts_rows(db: Database) {
//!     db.execute_script("CREATE TABLE t (id BIGINT PRIMARY KEY)").await.unwrap();
//!     // ...
//! }
//!
//! keel_testing::backend_tests!(counts_rows);
//! // runs as `postgres::counting::counts_rows::test` and `sqlite::counting::counts_rows::test`
//! ```
//!
//! (The layout of `docs/testing.md`: `#[path = "."]` makes each module's files those of
//! the test's own folder.)

#![warn(missing_docs)]

use std::path::PathBuf;

use std::future::Future;

use keel_orchestrator::{Backend, Database, DatabaseOptions};

/// The variable naming the PostgreSQL server tests create their databases on.
pub const POSTGRES_URL_VAR: &str = "KEEL_TEST_POSTGRES_URL";
/// When set to `1`, a missing [`POSTGRES_URL_VAR`] fails PostgreSQL tests instead of skipping them.
pub const REQUIRE_POSTGRES_VAR: &str = "KEEL_REQUIRE_POSTGRES";
/// When set, the pool size of every test database (e.g. `1`, to prove that nothing inside a
/// unit of work ever needs a second connection).
pub const POOL_SIZE_VAR: &str = "KEEL_TEST_POOL_SIZE";

/// Whether a PostgreSQL test must fail rather than be skipped when no server is
/// configured: when [`REQUIRE_POSTGRES_VAR`] is `1`, or on CI (`CI=true`), where a test that
/// silently did not run would pass for one that did.
fn postgres_required() -> bool {
    std::env::var(REQUIRE_POSTGRES_VAR).as_deref() == Ok("1")
        || std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1")
}

/// Applies [`POOL_SIZE_VAR`], then the test's own adjustments.
fn options_for(
    url: impl Into<String>,
    configure: impl FnOnce(DatabaseOptions) -> DatabaseOptions,
) -> DatabaseOptions {
    let mut options = DatabaseOptions::new(url);
    if let Ok(size) = std::env::var(POOL_SIZE_VAR) {
        let size: u32 = size
            .parse()
            .unwrap_or_else(|_| panic!("{POOL_SIZE_VAR}={size} is not a number"));
        options = options.max_connections(size);
    }
    configure(options)
}

/// A migrated database that exists for one test and is removed when dropped.
#[derive(Debug)]
pub struct TestDatabase<B: Backend> {
    database: Database<B>,
    url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    File(PathBuf),
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Server { admin_url: String, name: String },
}

/// A backend tests can create databases on. Implemented for `sqlx::Postgres` and
/// `sqlx::Sqlite`.
pub trait TestBackend: Backend {
    /// Creates a fresh database opened with options adjusted by `configure`; `None` when
    /// the backend's server is not configured (see the crate documentation).
    fn create(
        configure: impl FnOnce(DatabaseOptions) -> DatabaseOptions + Send,
    ) -> impl Future<Output = Option<TestDatabase<Self>>> + Send;
}

impl<B: TestBackend> TestDatabase<B> {
    /// A new, migrated database; `None` (with a notice) when it is PostgreSQL and no
    /// server is configured, and PostgreSQL is not required.
    ///
    /// # Panics
    /// If the database cannot be created or migrated, or if PostgreSQL is required
    /// (`KEEL_REQUIRE_POSTGRES=1`) but not configured: a test cannot proceed without it.
    pub async fn new() -> Option<Self> {
        B::create(|options| options).await
    }

    /// [`TestDatabase::new`] with the options adjusted by `configure` (pool size, timeouts).
    pub async fn with(
        configure: impl FnOnce(DatabaseOptions) -> DatabaseOptions + Send,
    ) -> Option<Self> {
        B::create(configure).await
    }

    /// The database under test.
    pub fn database(&self) -> &Database<B> {
        &self.database
    }

    /// The database's URL, password included (for a subprocess under test).
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(feature = "sqlite")]
impl TestBackend for sqlx::Sqlite {
    /// A new SQLite file in the temporary directory.
    async fn create(
        configure: impl FnOnce(DatabaseOptions) -> DatabaseOptions + Send,
    ) -> Option<TestDatabase<Self>> {
        let path = std::env::temp_dir()
            .join("keel-tests")
            .join(format!("{}.db", uuid::Uuid::now_v7().simple()));
        let url = format!("sqlite:{}", path.display());
        let database = connect_and_migrate(options_for(url.clone(), configure)).await;
        Some(TestDatabase {
            database,
            url,
            cleanup: Cleanup::File(path),
        })
    }
}

#[cfg(feature = "postgres")]
impl TestBackend for sqlx::Postgres {
    /// A new database on the server named by `KEEL_TEST_POSTGRES_URL`.
    async fn create(
        configure: impl FnOnce(DatabaseOptions) -> DatabaseOptions + Send,
    ) -> Option<TestDatabase<Self>> {
        use sqlx::{AssertSqlSafe, Connection};

        let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
            if postgres_required() {
                panic!(
                    "{POSTGRES_URL_VAR} is not set, and PostgreSQL tests may not be skipped \
                     here ({REQUIRE_POSTGRES_VAR}=1, or CI=true): set it to a server where the \
                     user may create databases, e.g. postgres://postgres@localhost:5432/postgres"
                );
            }
            eprintln!("note: {POSTGRES_URL_VAR} is not set; skipping a PostgreSQL test");
            return None;
        };
        let name = format!("keel_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}: {e}"));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = admin.close().await;
        let mut url = url::Url::parse(&admin_url)
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} is not a URL: {e}"));
        url.set_path(&name);
        let database = connect_and_migrate(options_for(url.as_str(), configure)).await;
        Some(TestDatabase {
            database,
            url: url.to_string(),
            cleanup: Cleanup::Server { admin_url, name },
        })
    }
}

async fn connect_and_migrate<B: Backend>(options: DatabaseOptions) -> Database<B> {
    let database = options
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot open the test database: {e}"));
    database
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("cannot migrate the test database: {e}"));
    database
}

impl<B: Backend> Drop for TestDatabase<B> {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            #[cfg(feature = "postgres")]
            Cleanup::Server { admin_url, name } => {
                use sqlx::{AssertSqlSafe, Connection};

                let (admin_url, shown, name) = (admin_url.clone(), name.clone(), name.clone());
                // Drop runs inside the test's runtime, which cannot be blocked on: use a
                // short-lived runtime on a thread of its own.
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    runtime.block_on(async {
                        let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        sqlx::query(AssertSqlSafe(sql))
                            .execute(&mut admin)
                            .await
                            .ok()?;
                        admin.close().await.ok()
                    })
                })
                .join();
                if !matches!(dropped, Ok(Some(()))) {
                    eprintln!("note: could not drop test database {shown}");
                }
            }
            #[cfg(not(feature = "postgres"))]
            Cleanup::Server { .. } => {}
        }
    }
}

/// Declares, for each `async fn name(db: Database<B>)`, a test `name::test` running the
/// function on a fresh database of backend `B`, a type alias that must be in scope
/// (`type B = sqlx::Postgres;`). A PostgreSQL test without a configured server is skipped.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn test() {
                if let Some(test_db) = $crate::TestDatabase::<super::B>::new().await {
                    super::$name(test_db.database().clone()).await;
                }
            }
        }
    )+};
}

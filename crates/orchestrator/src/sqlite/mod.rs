//! Keel on SQLite: connecting, error classification, the statements of units of work and
//! the outbox write. The delivery side is in `delivery`, the dead letter in `dead_letter`.
//!
//! SQLite has one writer at a time: every writing unit of work takes the write lock with
//! `BEGIN IMMEDIATE`, and units of work of one process queue for it in the process. Times
//! are integer milliseconds read from SQLite's own clock (`now_ms!`) by the transaction
//! that uses them.

mod dead_letter;
mod delivery;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use keel_domain::{Envelope, EventId};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePoolOptions};
use sqlx::query::Query;
use sqlx::error::DatabaseError;
use sqlx::{AssertSqlSafe, Executor, QueryBuilder, Sqlite};
use tokio::sync::watch;

use crate::database::invalid;
use crate::lock::is_identifier;
use crate::outbox::{Claim, DeadLetter, Group, Next, Outgoing};
use crate::store::{Saved, Store};
use crate::url::redact;
use crate::{Database, DatabaseOptions, Error, Isolation, Key, Locked, RowLock};

/// SQLite's clock, in milliseconds since the Unix epoch, as an SQL expression.
macro_rules! now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}
pub(crate) use now_ms;

/// The savepoint that marks a unit of work's transaction.
macro_rules! savepoint {
    () => {
        "keel_unit_of_work"
    };
}

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row statement (well under SQLite's bind-parameter limit).
pub(crate) const CHUNK: usize = 500;

fn bind_key<'q>(query: Query<'q, Sqlite, SqliteArguments>, key: &Key) -> Query<'q, Sqlite, SqliteArguments> {
    match key {
        Key::Int(i) => query.bind(*i),
        Key::Text(s) => query.bind(s.clone()),
        Key::Uuid(u) => query.bind(u.to_string()),
    }
}

/// The database's clock, read in the caller's transaction.
pub(crate) async fn now(conn: &mut SqliteConnection) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(concat!("SELECT ", now_ms!()))
        .fetch_one(conn)
        .await?)
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

impl Store for Sqlite {
    const ONE_WRITER: bool = true;
    const NOTIFIES: bool = false;
    const ATOMIC_OUTBOX_WRITE: bool = false;

    fn normalise_url(url: &str) -> Result<String, Error> {
        sqlite_url(url)
    }

    async fn open(url: &str, options: &DatabaseOptions) -> Result<sqlx::SqlitePool, Error> {
        let busy_ms = options.lock_timeout.as_millis();
        SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    let pragmas = format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {busy_ms};"
                    );
                    conn.execute(AssertSqlSafe(pragmas)).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|source| match source {
                sqlx::Error::Configuration(e) => invalid(url, &e.to_string()),
                source => Error::Unreachable {
                    url: redact(url),
                    source,
                },
            })
    }

    fn migrator() -> &'static Migrator {
        &MIGRATIONS
    }

    async fn run_migrations(
        migrator: &Migrator,
        pool: &sqlx::Pool<Sqlite>,
    ) -> Result<(), sqlx::migrate::MigrateError> {
        migrator.run(pool).await
    }

    fn classify(error: sqlx::Error) -> Result<Error, sqlx::Error> {
        let Some(lite) = error
            .as_database_error()
            .and_then(|db| db.try_downcast_ref::<sqlx::sqlite::SqliteError>())
        else {
            return Err(error);
        };
        let primary = lite
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff);
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended variants.
        match primary {
            Some(5 | 6) => Ok(Error::LockTimeout {
                detail: format!("SQLite: {}", lite.message()),
            }),
            _ => Err(error),
        }
    }

    async fn listen(_: &Database<Sqlite>, _: &(dyn Fn() + Sync), _: watch::Receiver<bool>) {}

    async fn before_begin(conn: &mut SqliteConnection, lock_timeout: Duration) -> Result<(), Error> {
        set_busy_timeout(conn, lock_timeout).await
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so two writers never deadlock
    /// upgrading a read lock (SQLite transactions are serializable). The savepoint marks
    /// the transaction: it vanishes with a `COMMIT` or `ROLLBACK` run by hand, and another
    /// connection does not have it.
    async fn begin(
        conn: &mut SqliteConnection,
        _: Isolation,
        _: Option<Duration>,
        _: uuid::Uuid,
    ) -> Result<(), Error> {
        sqlx::raw_sql(concat!("BEGIN IMMEDIATE; SAVEPOINT ", savepoint!()))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn verify(conn: &mut SqliteConnection, _: uuid::Uuid) -> Result<bool, Error> {
        match sqlx::raw_sql(concat!("RELEASE ", savepoint!()))
            .execute(conn)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.to_string().contains("no such savepoint") => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    async fn commit(conn: &mut SqliteConnection, _: uuid::Uuid, _: Isolation) -> Result<bool, Error> {
        sqlx::raw_sql("COMMIT").execute(conn).await?;
        Ok(true)
    }

    async fn rollback(conn: &mut SqliteConnection) -> Result<(), Error> {
        sqlx::raw_sql("ROLLBACK").execute(conn).await?;
        Ok(())
    }

    async fn after_end(conn: &mut SqliteConnection, options: &DatabaseOptions) -> Result<(), Error> {
        set_busy_timeout(conn, options.lock_timeout).await
    }

    /// The write lock taken by `BEGIN IMMEDIATE` already covers every row: the lock is
    /// granted at once and tells whether the row exists.
    async fn lock_row(conn: &mut SqliteConnection, lock: &RowLock) -> Result<Locked, Error> {
        let found = bind_key(sqlx::query(AssertSqlSafe(lock.exists_sql())), &lock.key)
            .fetch_optional(conn)
            .await?;
        Ok(if found.is_some() {
            Locked::Acquired
        } else {
            Locked::Missing
        })
    }

    async fn lock_named(conn: &mut SqliteConnection, name: &str) -> Result<(), Error> {
        sqlx::query("INSERT INTO keel_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn save_version(
        conn: &mut SqliteConnection,
        table: &'static str,
        key: &Key,
        expected: i64,
    ) -> Result<Saved, Error> {
        debug_assert!(is_identifier(table));
        let sql = format!("UPDATE {table} SET version = version + 1 WHERE id = $1 AND version = $2");
        let result = bind_key(sqlx::query(AssertSqlSafe(sql)), key)
            .bind(expected)
            .execute(&mut *conn)
            .await?;
        if result.rows_affected() == 1 {
            return Ok(Saved::Saved);
        }
        let sql = format!("SELECT 1 FROM {table} WHERE id = $1");
        let exists = bind_key(sqlx::query(AssertSqlSafe(sql)), key)
            .fetch_optional(conn)
            .await?;
        Ok(if exists.is_some() {
            Saved::Conflict
        } else {
            Saved::Missing
        })
    }

    async fn write_outbox(conn: &mut SqliteConnection, outgoing: &Outgoing<'_>) -> Result<(), Error> {
        write_outbox(conn, outgoing).await
    }

    async fn mark_done(
        conn: &mut SqliteConnection,
        event_ids: &[EventId],
        handler: &str,
    ) -> Result<usize, Error> {
        let mut done = 0;
        for chunk in event_ids.chunks(CHUNK) {
            let mut query = QueryBuilder::<Sqlite>::new(concat!(
                "UPDATE keel_deliveries SET status = 'done', leased_until = NULL, \
                 leased_by = NULL, updated_at = ",
                now_ms!(),
                " WHERE status = 'pending' AND handler = "
            ));
            query.push_bind(handler).push(" AND event_id IN (");
            let mut ids = query.separated(", ");
            for id in chunk {
                ids.push_bind(id.to_string());
            }
            query.push(")");
            done += query.build().execute(&mut *conn).await?.rows_affected() as usize;
        }
        Ok(done)
    }

    async fn notify_relays(_: &mut PoolConnection<Sqlite>) {}

    async fn claim(db: &Database<Sqlite>, limit: u32, lease: Duration) -> Result<Vec<Claim>, Error> {
        delivery::claim(db, limit, lease).await
    }

    async fn claim_keyed(
        db: &Database<Sqlite>,
        max_keys: u32,
        lease: Duration,
        batch_size: &(dyn Fn(&str) -> usize + Sync),
        max_batch: usize,
    ) -> Result<Vec<Group>, Error> {
        delivery::claim_keyed(db, max_keys, lease, batch_size, max_batch).await
    }

    async fn renew(
        db: &Database<Sqlite>,
        claims: &[Claim],
        key: Option<&str>,
        lease: Duration,
    ) -> Result<Vec<bool>, Error> {
        delivery::renew(db, claims, key, lease).await
    }

    async fn release_key(db: &Database<Sqlite>, key: &str, token: uuid::Uuid) -> Result<(), Error> {
        delivery::release_key(db, key, token).await
    }

    async fn mark_done_many(
        db: &Database<Sqlite>,
        by_handler: &BTreeMap<&str, Vec<EventId>>,
    ) -> Result<(), Error> {
        delivery::mark_done_many(db, by_handler).await
    }

    async fn record_failure(
        db: &Database<Sqlite>,
        claim: &Claim,
        error: &str,
        next: Next,
    ) -> Result<(), Error> {
        delivery::record_failure(db, claim, error, next).await
    }

    async fn route_unrouted(
        db: &Database<Sqlite>,
        limit: u32,
        handlers_for: &(dyn Fn(&str) -> Vec<&'static str> + Sync),
    ) -> Result<usize, Error> {
        delivery::route_unrouted(db, limit, handlers_for).await
    }

    async fn any_unfinished(db: &Database<Sqlite>) -> Result<bool, Error> {
        delivery::any_unfinished(db).await
    }

    async fn purge(db: &Database<Sqlite>, older_than: Duration, limit: u32) -> Result<u64, Error> {
        delivery::purge(db, older_than, limit).await
    }

    async fn dead_list(db: &Database<Sqlite>, limit: u32) -> Result<Vec<DeadLetter>, Error> {
        dead_letter::list(db, limit).await
    }

    async fn dead_count(db: &Database<Sqlite>) -> Result<i64, Error> {
        dead_letter::count(db).await
    }

    async fn dead_show(
        db: &Database<Sqlite>,
        event_id: EventId,
        handler: &str,
    ) -> Result<Option<DeadLetter>, Error> {
        dead_letter::show(db, event_id, handler).await
    }

    async fn dead_retry(db: &Database<Sqlite>, event_id: EventId, handler: &str) -> Result<bool, Error> {
        dead_letter::retry(db, event_id, handler).await
    }

    async fn dead_discard(
        db: &Database<Sqlite>,
        event_id: EventId,
        handler: &str,
    ) -> Result<bool, Error> {
        dead_letter::discard(db, event_id, handler).await
    }
}

async fn set_busy_timeout(conn: &mut SqliteConnection, busy: Duration) -> Result<(), Error> {
    let pragma = format!("PRAGMA busy_timeout = {}", busy.as_millis());
    sqlx::query(AssertSqlSafe(pragma)).execute(conn).await?;
    Ok(())
}

fn occurred_at(e: &Envelope) -> Result<String, Error> {
    e.occurred_at
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|err| Error::rejected(std::io::Error::other(err.to_string())))
}

/// The outbox write: multi-row inserts, chunked under SQLite's parameter limit. The fast
/// path's lease ends at SQLite's clock plus the lease.
async fn write_outbox(conn: &mut SqliteConnection, outgoing: &Outgoing<'_>) -> Result<(), Error> {
    let messages: Vec<(&Envelope, Option<&str>)> = outgoing.messages().collect();
    for chunk in messages.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at, \
             payload, correlation_id, causation_id, routed, ordering_key) ",
        );
        let mut failed = None;
        query.push_values(chunk, |mut row, (e, key)| {
            let occurred = occurred_at(e).unwrap_or_else(|err| {
                failed = Some(err);
                String::new()
            });
            row.push_bind(e.id.to_string())
                .push_bind(e.name.as_str())
                .push_bind(e.aggregate_type.as_str())
                .push_bind(e.aggregate_id.as_str())
                .push_bind(occurred)
                .push_bind(e.payload.to_string())
                .push_bind(e.correlation_id.to_string())
                .push_bind(e.causation_id.map(|c| c.to_string()))
                .push_bind(!outgoing.handlers_of(e).is_empty())
                .push_bind(*key);
        });
        if let Some(err) = failed {
            return Err(err);
        }
        query.build().execute(&mut *conn).await?;
    }

    let leased_until = match outgoing.lease {
        Some((_, lease)) => Some(now(conn).await? + millis(lease)),
        None => None,
    };
    let token = outgoing.lease.map(|(token, _)| token.to_string());
    let mut deliveries = Vec::new();
    for (n, (e, key)) in messages.iter().enumerate() {
        // Event deliveries are reserved for this process's fast path (when it has one);
        // command deliveries always go to workers, which honour their ordering keys.
        let leased = n < outgoing.events.len();
        for handler in outgoing.handlers_of(e) {
            deliveries.push((e.id.to_string(), *handler, leased, *key));
        }
    }
    for chunk in deliveries.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO keel_deliveries (event_id, handler, leased_until, leased_by, ordering_key) ",
        );
        query.push_values(chunk, |mut row, (id, handler, leased, key)| {
            row.push_bind(id.as_str())
                .push_bind(*handler)
                .push_bind(leased_until.filter(|_| *leased))
                .push_bind(token.as_deref().filter(|_| *leased))
                .push_bind(*key);
        });
        query.build().execute(&mut *conn).await?;
    }

    let keys = outgoing.keys();
    for chunk in keys.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new("INSERT INTO keel_keys (key) ");
        query.push_values(chunk, |mut row, key| {
            row.push_bind(*key);
        });
        query.push(" ON CONFLICT DO NOTHING");
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Normalises a SQLite URL: refuses in-memory databases, creates the file's directory,
/// and asks for the file to be created if missing.
fn sqlite_url(url: &str) -> Result<String, Error> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(match url.split_once(':') {
            Some((scheme, _)) if !scheme.is_empty() => invalid(
                url,
                &format!("this database is SQLite, but the URL's scheme is `{scheme}`"),
            ),
            _ => invalid(url, "the URL has no scheme"),
        });
    };
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
        let err = sqlite_url("postgres://u:pw@h/db").unwrap_err().to_string();
        assert!(err.contains("scheme is `postgres`") && !err.contains("pw"), "{err}");
    }
}

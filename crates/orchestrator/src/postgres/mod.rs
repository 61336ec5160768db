//! Keel on PostgreSQL: connecting, error classification, the statements of units of work
//! and the outbox write. The delivery side is in `delivery`, the dead letter in
//! `dead_letter`.
//!
//! Times are `timestamptz` written from `now()`; durations travel as milliseconds and
//! become intervals in SQL (`$n * interval '1 millisecond'`), so every lease and due time is
//! the server's.

mod dead_letter;
mod delivery;

use std::collections::BTreeMap;
use std::time::Duration;

use keel_domain::EventId;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgDatabaseError, PgPoolOptions};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres};
use tokio::sync::watch;

use crate::database::invalid;
use crate::lock::{LockMode, is_identifier};
use crate::outbox::{Claim, DeadLetter, Group, NOTIFY_CHANNEL, Next, Outgoing};
use crate::store::{Saved, Store};
use crate::url::redact;
use crate::{Database, DatabaseOptions, Error, Isolation, Key, LockWait, Locked, RowLock};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The setting that marks a unit of work's transaction (`SET LOCAL`, so it ends with it).
const MARKER: &str = "keel.unit_of_work";

/// The setting whose lookup fails when a unit of work's transaction is not the one begun.
const REPLACED: &str = "keel.transaction_replaced";

fn is_replaced(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<PgDatabaseError>())
        .is_some_and(|pg| pg.code() == "42704" && pg.message().contains(REPLACED))
}

fn bind_key<'q>(query: Query<'q, Postgres, PgArguments>, key: &Key) -> Query<'q, Postgres, PgArguments> {
    match key {
        Key::Int(i) => query.bind(*i),
        Key::Text(s) => query.bind(s.clone()),
        Key::Uuid(u) => query.bind(*u),
    }
}

fn lock_sql(lock: &RowLock) -> String {
    let mode = match lock.mode {
        LockMode::ForUpdate => "FOR UPDATE",
        LockMode::ForShare => "FOR SHARE",
    };
    let wait = match lock.wait {
        LockWait::Wait => "",
        LockWait::NoWait => " NOWAIT",
        LockWait::SkipLocked => " SKIP LOCKED",
    };
    format!(
        "SELECT 1 FROM {} WHERE {} = $1 {mode}{wait}",
        lock.table, lock.key_column
    )
}

impl Store for Postgres {
    const ONE_WRITER: bool = false;
    const NOTIFIES: bool = true;
    const ATOMIC_OUTBOX_WRITE: bool = true;

    fn normalise_url(url: &str) -> Result<String, Error> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("postgres" | "postgresql") => Ok(url.to_owned()),
            Some(other) if !other.is_empty() => Err(invalid(
                url,
                &format!("this database is PostgreSQL, but the URL's scheme is `{other}`"),
            )),
            _ => Err(invalid(url, "the URL has no scheme")),
        }
    }

    /// Every connection starts with the database's lock timeout (sent in the startup
    /// packet: no extra round trip), so no statement waits forever for a lock.
    async fn open(url: &str, options: &DatabaseOptions) -> Result<sqlx::PgPool, Error> {
        let connect: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| invalid(url, &e.to_string()))?;
        let lock_timeout = format!("{}ms", options.lock_timeout.as_millis());
        let connect = connect.options([("lock_timeout", lock_timeout.as_str())]);
        PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
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
        pool: &sqlx::Pool<Postgres>,
    ) -> Result<(), sqlx::migrate::MigrateError> {
        migrator.run(pool).await
    }

    fn classify(error: sqlx::Error) -> Result<Error, sqlx::Error> {
        let Some(pg) = error
            .as_database_error()
            .and_then(|db| db.try_downcast_ref::<PgDatabaseError>())
        else {
            return Err(error);
        };
        match pg.code() {
            "40001" => Ok(Error::SerializationFailure(error)),
            "40P01" => Ok(Error::Deadlock(error)),
            "55P03" => Ok(Error::LockTimeout {
                detail: pg.message().to_owned(),
            }),
            _ => Err(error),
        }
    }

    async fn listen(db: &Database<Postgres>, wake: &(dyn Fn() + Sync), stop: watch::Receiver<bool>) {
        delivery::listen(db, wake, stop).await
    }

    async fn before_begin(_: &mut PgConnection, _: Duration) -> Result<(), Error> {
        Ok(())
    }

    /// `BEGIN`, the marker and the lock timeout in one round trip (a simple query).
    async fn begin(
        conn: &mut PgConnection,
        isolation: Isolation,
        lock_timeout: Option<Duration>,
        marker: uuid::Uuid,
    ) -> Result<(), Error> {
        let begin = match isolation {
            Isolation::ReadCommitted => "BEGIN",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        };
        let mut sql = format!("{begin}; SET LOCAL {MARKER} = '{marker}'");
        if let Some(timeout) = lock_timeout {
            sql.push_str(&format!(
                "; SET LOCAL lock_timeout = '{}ms'",
                timeout.as_millis().max(1)
            ));
        }
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
        Ok(())
    }

    /// The marker is checked by the outbox write and by the commit themselves, in their
    /// own round trips.
    async fn verify(_: &mut PgConnection, _: uuid::Uuid) -> Result<bool, Error> {
        Ok(true)
    }

    /// A check and `COMMIT` in one simple query: when the check fails, PostgreSQL skips
    /// the rest of the query, so the transaction is not committed.
    async fn commit(
        conn: &mut PgConnection,
        marker: uuid::Uuid,
        isolation: Isolation,
    ) -> Result<bool, Error> {
        let level = match isolation {
            Isolation::ReadCommitted => "read committed",
            Isolation::RepeatableRead => "repeatable read",
            Isolation::Serializable => "serializable",
        };
        // `current_setting` of an unknown name raises: a check that fails at execution,
        // never at planning (constant folding would evaluate a failing cast too early).
        let sql = format!(
            "SELECT CASE WHEN current_setting('{MARKER}', true) = '{marker}'
                          AND current_setting('transaction_isolation') = '{level}'
                     THEN '' ELSE current_setting('{REPLACED}') END; COMMIT"
        );
        match sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await {
            Ok(_) => Ok(true),
            Err(error) if is_replaced(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    async fn rollback(conn: &mut PgConnection) -> Result<(), Error> {
        sqlx::raw_sql("ROLLBACK").execute(conn).await?;
        Ok(())
    }

    async fn after_end(_: &mut PgConnection, _: &DatabaseOptions) -> Result<(), Error> {
        Ok(())
    }

    async fn lock_row(conn: &mut PgConnection, lock: &RowLock) -> Result<Locked, Error> {
        let found = bind_key(sqlx::query(AssertSqlSafe(lock_sql(lock))), &lock.key)
            .fetch_optional(&mut *conn)
            .await;
        match found {
            Ok(Some(_)) => return Ok(Locked::Acquired),
            Ok(None) => {}
            Err(e) => {
                return Err(match (lock.wait, Error::from(e)) {
                    (LockWait::NoWait, Error::LockTimeout { .. }) => Error::RowLocked {
                        table: lock.table,
                        key: lock.key.to_string(),
                    },
                    (_, e) => e,
                });
            }
        }
        if lock.wait == LockWait::SkipLocked {
            let exists = bind_key(sqlx::query(AssertSqlSafe(lock.exists_sql())), &lock.key)
                .fetch_optional(&mut *conn)
                .await?;
            if exists.is_some() {
                return Ok(Locked::Skipped);
            }
        }
        Ok(Locked::Missing)
    }

    async fn lock_named(conn: &mut PgConnection, name: &str) -> Result<(), Error> {
        const LOCK: &str = "SELECT 1 FROM keel_locks WHERE name = $1 FOR UPDATE";
        if sqlx::query(LOCK)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?
            .is_some()
        {
            return Ok(());
        }
        // A concurrent creator's uncommitted row makes this insert wait until that
        // transaction ends; then the conflict is ignored and the lock below is granted.
        let created = sqlx::query(
            "INSERT INTO keel_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING 1",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        if created.is_some() {
            return Ok(());
        }
        match sqlx::query(LOCK).bind(name).fetch_optional(&mut *conn).await? {
            Some(_) => Ok(()),
            // Only under REPEATABLE READ / SERIALIZABLE: the row committed after this
            // transaction's snapshot. A fresh attempt sees it.
            None => Err(Error::LockTimeout {
                detail: format!("named lock `{name}` was created concurrently; retrying"),
            }),
        }
    }

    async fn save_version(
        conn: &mut PgConnection,
        table: &'static str,
        key: &Key,
        expected: i64,
    ) -> Result<Saved, Error> {
        debug_assert!(is_identifier(table));
        // One round trip: the update, and whether the row exists at all.
        let sql = format!(
            "WITH u AS (UPDATE {table} SET version = version + 1
                        WHERE id = $1 AND version = $2 RETURNING 1)
             SELECT (SELECT count(*) FROM u) AS saved,
                    EXISTS (SELECT 1 FROM {table} WHERE id = $1) AS present"
        );
        let (saved, present): (i64, bool) = bind_key(sqlx::query(AssertSqlSafe(sql)), key)
            .bind(expected)
            .try_map(|row: sqlx::postgres::PgRow| {
                use sqlx::Row;
                Ok((row.try_get(0)?, row.try_get(1)?))
            })
            .fetch_one(conn)
            .await?;
        Ok(match (saved, present) {
            (1, _) => Saved::Saved,
            (_, true) => Saved::Conflict,
            (_, false) => Saved::Missing,
        })
    }

    async fn write_outbox(conn: &mut PgConnection, outgoing: &Outgoing<'_>) -> Result<(), Error> {
        write_outbox(conn, outgoing).await
    }

    async fn mark_done(
        conn: &mut PgConnection,
        event_ids: &[EventId],
        handler: &str,
    ) -> Result<usize, Error> {
        let ids: Vec<uuid::Uuid> = event_ids.iter().map(|id| *id.as_uuid()).collect();
        let done = sqlx::query(
            "UPDATE keel_deliveries SET status = 'done', leased_until = NULL, leased_by = NULL,
             updated_at = now()
             WHERE handler = $1 AND status = 'pending' AND event_id = ANY ($2)",
        )
        .bind(handler)
        .bind(ids)
        .execute(conn)
        .await?
        .rows_affected();
        Ok(done as usize)
    }

    async fn notify_relays(conn: &mut PoolConnection<Postgres>) {
        let notified = sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut **conn)
            .await;
        if let Err(error) = notified {
            tracing::debug!(%error, "could not notify relays; they will find the rows when they poll");
        }
    }

    async fn claim(db: &Database<Postgres>, limit: u32, lease: Duration) -> Result<Vec<Claim>, Error> {
        delivery::claim(db, limit, lease).await
    }

    async fn claim_keyed(
        db: &Database<Postgres>,
        max_keys: u32,
        lease: Duration,
        batch_size: &(dyn Fn(&str) -> usize + Sync),
        max_batch: usize,
    ) -> Result<Vec<Group>, Error> {
        delivery::claim_keyed(db, max_keys, lease, batch_size, max_batch).await
    }

    async fn renew(
        db: &Database<Postgres>,
        claims: &[Claim],
        key: Option<&str>,
        lease: Duration,
    ) -> Result<Vec<bool>, Error> {
        delivery::renew(db, claims, key, lease).await
    }

    async fn release_key(db: &Database<Postgres>, key: &str, token: uuid::Uuid) -> Result<(), Error> {
        delivery::release_key(db, key, token).await
    }

    async fn mark_done_many(
        db: &Database<Postgres>,
        by_handler: &BTreeMap<&str, Vec<EventId>>,
    ) -> Result<(), Error> {
        let mut conn = db.acquire().await?;
        for (handler, event_ids) in by_handler {
            Self::mark_done(&mut conn, event_ids, handler).await?;
        }
        Ok(())
    }

    async fn record_failure(
        db: &Database<Postgres>,
        claim: &Claim,
        error: &str,
        next: Next,
    ) -> Result<(), Error> {
        delivery::record_failure(db, claim, error, next).await
    }

    async fn route_unrouted(
        db: &Database<Postgres>,
        limit: u32,
        handlers_for: &(dyn Fn(&str) -> Vec<&'static str> + Sync),
    ) -> Result<usize, Error> {
        delivery::route_unrouted(db, limit, handlers_for).await
    }

    async fn any_unfinished(db: &Database<Postgres>) -> Result<bool, Error> {
        delivery::any_unfinished(db).await
    }

    async fn purge(db: &Database<Postgres>, older_than: Duration, limit: u32) -> Result<u64, Error> {
        delivery::purge(db, older_than, limit).await
    }

    async fn dead_list(db: &Database<Postgres>, limit: u32) -> Result<Vec<DeadLetter>, Error> {
        dead_letter::list(db, limit).await
    }

    async fn dead_count(db: &Database<Postgres>) -> Result<i64, Error> {
        dead_letter::count(db).await
    }

    async fn dead_show(
        db: &Database<Postgres>,
        event_id: EventId,
        handler: &str,
    ) -> Result<Option<DeadLetter>, Error> {
        dead_letter::show(db, event_id, handler).await
    }

    async fn dead_retry(db: &Database<Postgres>, event_id: EventId, handler: &str) -> Result<bool, Error> {
        dead_letter::retry(db, event_id, handler).await
    }

    async fn dead_discard(
        db: &Database<Postgres>,
        event_id: EventId,
        handler: &str,
    ) -> Result<bool, Error> {
        dead_letter::discard(db, event_id, handler).await
    }
}

/// The outbox write: events, deliveries and ordering keys in one statement, whatever the
/// number of rows. Every column travels as one array (`UNNEST`), so the statement's text
/// never changes and stays prepared. Inside a unit of work it writes only if the
/// transaction still carries the unit of work's marker: after a `COMMIT` run by hand, it
/// would otherwise commit on its own.
async fn write_outbox(conn: &mut PgConnection, outgoing: &Outgoing<'_>) -> Result<(), Error> {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut aggregate_types = Vec::new();
    let mut aggregate_ids = Vec::new();
    let mut occurred = Vec::new();
    let mut payloads = Vec::new();
    let mut correlations = Vec::new();
    let mut causations = Vec::new();
    let mut routed = Vec::new();
    let mut keys = Vec::new();
    let (mut d_ids, mut d_handlers, mut d_leased, mut d_keys) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, (e, key)) in outgoing.messages().enumerate() {
        let handlers = outgoing.handlers_of(e);
        ids.push(*e.id.as_uuid());
        names.push(e.name.as_str());
        aggregate_types.push(e.aggregate_type.as_str());
        aggregate_ids.push(e.aggregate_id.as_str());
        occurred.push(e.occurred_at);
        payloads.push(&e.payload);
        correlations.push(e.correlation_id);
        causations.push(e.causation_id.map(|c| *c.as_uuid()));
        routed.push(!handlers.is_empty());
        keys.push(key);
        // Event deliveries are reserved for this process's fast path (when it has one);
        // command deliveries always go to workers, which honour their ordering keys.
        let leased = n < outgoing.events.len() && outgoing.lease.is_some();
        for handler in handlers {
            d_ids.push(*e.id.as_uuid());
            d_handlers.push(*handler);
            d_leased.push(leased);
            d_keys.push(key);
        }
    }
    let (token, lease_ms) = match outgoing.lease {
        Some((token, lease)) => (Some(token), lease.as_millis() as i64),
        None => (None, 0),
    };
    sqlx::query(
        "WITH e AS (
             INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at,
                 payload, correlation_id, causation_id, routed, ordering_key)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[],
                 $5::timestamptz[], $6::jsonb[], $7::uuid[], $8::uuid[], $9::bool[], $10::text[])
             WHERE $17::text IS NULL OR current_setting('keel.unit_of_work', true) = $17),
         d AS (
             INSERT INTO keel_deliveries (event_id, handler, leased_until, leased_by, ordering_key)
             SELECT i, h, CASE WHEN l THEN now() + $13 * interval '1 millisecond' END,
                    CASE WHEN l THEN $14::uuid END, k
             FROM UNNEST($11::uuid[], $12::text[], $15::bool[], $16::text[]) AS t (i, h, l, k)
             WHERE $17::text IS NULL OR current_setting('keel.unit_of_work', true) = $17),
         k AS (
             INSERT INTO keel_keys (key)
             SELECT DISTINCT k FROM UNNEST($10::text[]) AS t (k)
             WHERE k IS NOT NULL
               AND ($17::text IS NULL OR current_setting('keel.unit_of_work', true) = $17)
             ON CONFLICT DO NOTHING)
         SELECT 1",
    )
    .bind(ids)
    .bind(names)
    .bind(aggregate_types)
    .bind(aggregate_ids)
    .bind(occurred)
    .bind(payloads)
    .bind(correlations)
    .bind(causations)
    .bind(routed)
    .bind(keys)
    .bind(d_ids)
    .bind(d_handlers)
    .bind(lease_ms)
    .bind(token)
    .bind(d_leased)
    .bind(d_keys)
    .bind(outgoing.marker.map(|m| m.to_string()))
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_name_postgres() {
        assert!(Postgres::normalise_url("postgres://h/db").is_ok());
        assert!(Postgres::normalise_url("postgresql://h/db").is_ok());
        let err = Postgres::normalise_url("mysql://u:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheme is `mysql`"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(Postgres::normalise_url("just-a-path.db").is_err());
    }

    #[test]
    fn lock_sql_spells_each_mode() {
        let sql = lock_sql(&RowLock::for_share("posts", 1).skip_locked());
        assert_eq!(
            sql,
            "SELECT 1 FROM posts WHERE id = $1 FOR SHARE SKIP LOCKED"
        );
        let sql = lock_sql(&RowLock::for_update("posts", "x").key_column("slug").nowait());
        assert_eq!(sql, "SELECT 1 FROM posts WHERE slug = $1 FOR UPDATE NOWAIT");
    }
}

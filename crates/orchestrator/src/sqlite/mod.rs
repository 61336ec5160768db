//! Keel on SQLite: error classification, the statements of units of work and the outbox
//! write. Opening the pool is in `connect`, the delivery side in `delivery`, the dead
//! letter in `dead_letter`.
//!
//! SQLite has one writer at a time: every writing unit of work takes the write lock with
//! `BEGIN IMMEDIATE`, and units of work of one process queue for it in the process. Times
//! are integer milliseconds read from SQLite's own clock (`now_ms!`) by the transaction
//! that uses them.

mod claims;
mod connect;
mod dead_letter;
mod delivery;
mod inbox;
mod operations;
mod outbox;
mod transaction;

use std::collections::BTreeMap;
use std::time::Duration;

use keel_domain::EventId;
use sqlx::Sqlite;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::operations::DeadFilter;
use crate::outbox::{Claim, Claimed, DeadLetter, Group, Incoming, Next, Outgoing};
use crate::store::{GroupEnd, Saved, Store};
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
pub(crate) use savepoint;

/// Rows per multi-row statement (well under SQLite's bind-parameter limit).
pub(crate) const CHUNK: usize = 500;

/// A time as Keel's SQLite tables store it: milliseconds since the Unix epoch.
pub(crate) fn to_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A time stored as milliseconds since the Unix epoch (the epoch itself if out of range).
pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The database's clock, read in the caller's transaction.
pub(crate) async fn now(conn: &mut SqliteConnection) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(concat!("SELECT ", now_ms!()))
        .fetch_one(conn)
        .await?)
}

impl Store for Sqlite {
    const ONE_WRITER: bool = true;
    const NOTIFIES: bool = false;
    const ATOMIC_OUTBOX_WRITE: bool = false;

    fn normalise_url(url: &str) -> Result<String, Error> {
        connect::sqlite_url(url)
    }

    async fn open(url: &str, options: &DatabaseOptions) -> Result<sqlx::SqlitePool, Error> {
        connect::open(url, options).await
    }

    const MIGRATIONS: &'static [crate::migrations::File] = crate::migrations::embed!("sqlite":
        "0001_keel.sql",
        "0002_retry_runs.sql",
        "0003_subscriptions.sql",
        "0004_key_order.sql",
        "0005_done_log.sql",
        "0006_headers.sql",
        "0007_relays.sql",
    );

    async fn run_migrations(
        migrator: &Migrator,
        pool: &sqlx::Pool<Sqlite>,
        _quiet: bool,
    ) -> Result<(), sqlx::migrate::MigrateError> {
        migrator.run(pool).await
    }

    async fn run_script(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), Error> {
        sqlx::raw_sql(sql).execute(conn).await?;
        Ok(())
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

    async fn before_begin(
        conn: &mut SqliteConnection,
        lock_timeout: Duration,
    ) -> Result<(), Error> {
        connect::set_busy_timeout(conn, lock_timeout).await
    }

    async fn begin(
        conn: &mut SqliteConnection,
        _: Isolation,
        _: Option<Duration>,
        _: uuid::Uuid,
        group: Option<bool>,
    ) -> Result<(), Error> {
        // Its savepoint marks the group's first member as well.
        transaction::begin(conn, group.is_some()).await
    }

    async fn verify(conn: &mut SqliteConnection, _: uuid::Uuid) -> Result<bool, Error> {
        transaction::verify(conn).await
    }

    async fn commit(
        conn: &mut SqliteConnection,
        _: uuid::Uuid,
        _: Isolation,
        _: bool,
    ) -> Result<bool, Error> {
        transaction::commit(conn).await
    }

    async fn commit_group(
        conn: &mut SqliteConnection,
        _: uuid::Uuid,
        marks: &[(&'static str, Vec<EventId>)],
        unchecked: bool,
    ) -> Result<GroupEnd, Error> {
        transaction::commit_group(conn, marks, unchecked).await
    }

    async fn rollback(conn: &mut SqliteConnection) -> Result<(), Error> {
        transaction::rollback(conn).await
    }

    const MARKS_WITH_SAVEPOINT: bool = true;

    async fn member_begin(
        conn: &mut SqliteConnection,
        _: bool,
        unchecked: bool,
    ) -> Result<bool, Error> {
        transaction::member_begin(conn, unchecked).await
    }

    async fn member_rollback(conn: &mut SqliteConnection) -> Result<(), Error> {
        transaction::member_rollback(conn).await
    }

    async fn after_end(
        conn: &mut SqliteConnection,
        options: &DatabaseOptions,
    ) -> Result<(), Error> {
        connect::set_busy_timeout(conn, options.lock_timeout).await
    }

    async fn lock_row(conn: &mut SqliteConnection, lock: &RowLock) -> Result<Locked, Error> {
        transaction::lock_row(conn, lock).await
    }

    async fn lock_named(conn: &mut SqliteConnection, name: &str) -> Result<(), Error> {
        transaction::lock_named(conn, name).await
    }

    async fn save_version(
        conn: &mut SqliteConnection,
        table: &'static str,
        key: &Key,
        expected: i64,
    ) -> Result<Saved, Error> {
        transaction::save_version(conn, table, key, expected).await
    }

    async fn write_outbox(
        conn: &mut SqliteConnection,
        outgoing: &Outgoing<'_>,
    ) -> Result<bool, Error> {
        outbox::write(conn, outgoing).await
    }

    async fn mark_done(
        conn: &mut SqliteConnection,
        event_ids: &[EventId],
        handler: &str,
    ) -> Result<usize, Error> {
        transaction::mark_done(conn, event_ids, handler).await
    }

    async fn notify_relays(_: &mut PoolConnection<Sqlite>) {}

    async fn others_listen(_: &mut PoolConnection<Sqlite>, _: &[i32]) -> bool {
        false
    }

    async fn claim(
        db: &Database<Sqlite>,
        limit: u32,
        lease: Duration,
        handlers: &[&str],
        due_from: Option<OffsetDateTime>,
    ) -> Result<Claimed, Error> {
        claims::claim(db, limit, lease, handlers, due_from).await
    }

    async fn claim_keyed(
        db: &Database<Sqlite>,
        max_keys: u32,
        lease: Duration,
        handlers: &[&str],
        batch_size: &(dyn Fn(&str) -> usize + Sync),
        max_batch: usize,
    ) -> Result<Vec<Group>, Error> {
        claims::claim_keyed(db, max_keys, lease, handlers, batch_size, max_batch).await
    }

    async fn backfill(
        db: &Database<Sqlite>,
        message: &str,
        handler: &str,
        since: time::OffsetDateTime,
        again: bool,
    ) -> Result<u64, Error> {
        delivery::backfill(db, message, handler, since, again).await
    }

    async fn subscribe(db: &Database<Sqlite>, subscriptions: &[(&str, &str)]) -> Result<(), Error> {
        delivery::subscribe(db, subscriptions).await
    }

    async fn renew(
        db: &Database<Sqlite>,
        claims: &[Claim],
        key: Option<&str>,
        lease: Duration,
    ) -> Result<Vec<bool>, Error> {
        claims::renew(db, claims, key, lease).await
    }

    async fn release(db: &Database<Sqlite>, claims: &[Claim]) -> Result<(), Error> {
        claims::release(db, claims).await
    }

    async fn release_key(db: &Database<Sqlite>, key: &str, token: uuid::Uuid) -> Result<(), Error> {
        claims::release_key(db, key, token).await
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

    async fn accept(
        db: &Database<Sqlite>,
        handler: &str,
        incoming: &[Incoming],
    ) -> Result<u64, Error> {
        inbox::accept(db, handler, incoming).await
    }

    async fn any_unfinished(db: &Database<Sqlite>, handlers: &[&str]) -> Result<bool, Error> {
        delivery::any_unfinished(db, handlers).await
    }

    async fn purge(
        db: &Database<Sqlite>,
        done_older_than: Option<Duration>,
        dead_older_than: Option<Duration>,
        limit: u32,
    ) -> Result<u64, Error> {
        delivery::purge(db, done_older_than, dead_older_than, limit).await
    }

    async fn dead_find(
        db: &Database<Sqlite>,
        filter: &DeadFilter,
    ) -> Result<Vec<DeadLetter>, Error> {
        dead_letter::find(db, filter).await
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

    async fn dead_retry(
        db: &Database<Sqlite>,
        event_id: EventId,
        handler: &str,
    ) -> Result<bool, Error> {
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

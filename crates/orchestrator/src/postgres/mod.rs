//! Keel on PostgreSQL: connecting, error classification, the statements of units of work
//! and the outbox write. The delivery side is in `delivery`, the dead letter in
//! `dead_letter`.
//!
//! Times are `timestamptz` written from the server's clock; durations travel as milliseconds
//! and become intervals in SQL (`$n * interval '1 millisecond'`), so every lease and due
//! time is the server's. A lease or a due time starts at `clock_timestamp()`, the moment
//! the statement runs, never at `now()`, which is when the transaction began: a fast-path
//! lease written by a unit of work that took seconds still lasts its whole term.

mod claims;
mod dead_letter;
mod delivery;
mod inbox;
mod operations;
mod outbox;
mod transaction;

use std::collections::BTreeMap;
use std::time::Duration;

use keel_domain::EventId;
use sqlx::Postgres;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgPoolOptions};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::database::{invalid, not_connected};
use crate::operations::DeadFilter;
use crate::outbox::{Claim, Claimed, DeadLetter, Group, Incoming, NOTIFY_CHANNEL, Next, Outgoing};
use crate::store::{GroupEnd, Saved, Store};
use crate::{Database, DatabaseOptions, Error, Isolation, Key, Locked, RowLock};

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
        crate::pool::tested_unless_beginning(PgPoolOptions::new())
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|source| not_connected(url, source))
    }

    const MIGRATIONS: &'static [crate::migrations::File] = crate::migrations::embed!("postgres":
        "0001_keel.sql",
        "0002_retry_runs.sql",
        "0003_subscriptions.sql",
        "0004_key_order.sql",
        "0005_done_log.sql",
        "0006_headers.sql",
        "0007_relays.sql",
        "0008_claim.sql",
        "0009_accept.sql",
        "0010_mark_done.sql",
        "0011_mark_few.sql",
        "0012_generic_plans.sql",
        "0013_claim_from.sql",
        "0014_group_guard.sql",
        "0015_mark_few_delegates.sql",
    );

    async fn run_migrations(
        migrator: &Migrator,
        pool: &sqlx::Pool<Postgres>,
        quiet: bool,
    ) -> Result<(), sqlx::migrate::MigrateError> {
        if !quiet {
            return migrator.run(pool).await;
        }
        // The setting stays on this connection, which is closed rather than returned to the
        // pool, whatever happens (also a cancelled migration, and one that failed holding
        // the migration lock).
        let mut conn = pool.acquire().await?;
        conn.close_on_drop();
        sqlx::raw_sql("SET client_min_messages = warning")
            .execute(&mut *conn)
            .await?;
        migrator.run_direct(None, &mut *conn, false).await
    }

    async fn run_script(conn: &mut PgConnection, sql: &'static str) -> Result<(), Error> {
        sqlx::raw_sql(sql).execute(conn).await?;
        Ok(())
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
            // The server ended the session (shutdown, restart, an operator's terminate) or
            // the connection failed: the open transaction was rolled back.
            "57P01" | "57P02" | "57P03" => Ok(Error::ConnectionLost(error)),
            code if code.starts_with("08") => Ok(Error::ConnectionLost(error)),
            _ => Err(error),
        }
    }

    async fn listen(
        db: &Database<Postgres>,
        wake: &(dyn Fn() + Sync),
        stop: watch::Receiver<bool>,
    ) {
        delivery::listen(db, wake, stop).await
    }

    async fn before_begin(_: &mut PgConnection, _: Duration) -> Result<(), Error> {
        Ok(())
    }

    async fn begin(
        conn: &mut PgConnection,
        isolation: Isolation,
        lock_timeout: Option<Duration>,
        marker: uuid::Uuid,
        group: Option<bool>,
    ) -> Result<(), Error> {
        transaction::begin(conn, isolation, lock_timeout, marker, group).await
    }

    /// The marker is checked by the outbox write and by the commit themselves, in their
    /// own round trips.
    async fn verify(_: &mut PgConnection, _: uuid::Uuid) -> Result<bool, Error> {
        Ok(true)
    }

    async fn commit(
        conn: &mut PgConnection,
        marker: uuid::Uuid,
        isolation: Isolation,
        verified: bool,
    ) -> Result<bool, Error> {
        transaction::commit(conn, marker, isolation, verified).await
    }

    async fn commit_group(
        conn: &mut PgConnection,
        marker: uuid::Uuid,
        marks: &[(&'static str, Vec<EventId>)],
        _: bool,
    ) -> Result<GroupEnd, Error> {
        transaction::commit_group(conn, marker, marks).await
    }

    async fn rollback(conn: &mut PgConnection) -> Result<(), Error> {
        transaction::rollback(conn).await
    }

    const MARKS_WITH_SAVEPOINT: bool = false;

    /// [`Store::verify`] has nothing to check here: `unchecked` needs no statement.
    async fn member_begin(
        conn: &mut PgConnection,
        savepoint: bool,
        _: bool,
    ) -> Result<bool, Error> {
        if savepoint {
            transaction::savepoint(conn).await?;
        }
        Ok(true)
    }

    async fn member_rollback(conn: &mut PgConnection) -> Result<(), Error> {
        transaction::rollback_to_savepoint(conn).await
    }

    async fn after_end(_: &mut PgConnection, _: &DatabaseOptions) -> Result<(), Error> {
        Ok(())
    }

    async fn lock_row(conn: &mut PgConnection, lock: &RowLock) -> Result<Locked, Error> {
        transaction::lock_row(conn, lock).await
    }

    async fn lock_named(conn: &mut PgConnection, name: &str) -> Result<(), Error> {
        transaction::lock_named(conn, name).await
    }

    async fn save_version(
        conn: &mut PgConnection,
        table: &'static str,
        key: &Key,
        expected: i64,
    ) -> Result<Saved, Error> {
        transaction::save_version(conn, table, key, expected).await
    }

    async fn write_outbox(conn: &mut PgConnection, outgoing: &Outgoing<'_>) -> Result<bool, Error> {
        outbox::write(conn, outgoing).await
    }

    async fn mark_done(
        conn: &mut PgConnection,
        event_ids: &[EventId],
        handler: &str,
    ) -> Result<usize, Error> {
        transaction::mark_done(conn, event_ids, handler).await
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

    async fn others_listen(conn: &mut PoolConnection<Postgres>, own: &[i32]) -> bool {
        delivery::others_listen(conn, own).await
    }

    async fn claim(
        db: &Database<Postgres>,
        limit: u32,
        lease: Duration,
        handlers: &[&str],
        due_from: Option<OffsetDateTime>,
    ) -> Result<Claimed, Error> {
        claims::claim(db, limit, lease, handlers, due_from).await
    }

    async fn claim_keyed(
        db: &Database<Postgres>,
        max_keys: u32,
        lease: Duration,
        handlers: &[&str],
        batch_size: &(dyn Fn(&str) -> usize + Sync),
        max_batch: usize,
    ) -> Result<Vec<Group>, Error> {
        claims::claim_keyed(db, max_keys, lease, handlers, batch_size, max_batch).await
    }

    async fn backfill(
        db: &Database<Postgres>,
        message: &str,
        handler: &str,
        since: time::OffsetDateTime,
        again: bool,
    ) -> Result<u64, Error> {
        delivery::backfill(db, message, handler, since, again).await
    }

    async fn subscribe(
        db: &Database<Postgres>,
        subscriptions: &[(&str, &str)],
    ) -> Result<(), Error> {
        delivery::subscribe(db, subscriptions).await
    }

    async fn renew(
        db: &Database<Postgres>,
        claims: &[Claim],
        key: Option<&str>,
        lease: Duration,
    ) -> Result<Vec<bool>, Error> {
        claims::renew(db, claims, key, lease).await
    }

    async fn release(db: &Database<Postgres>, claims: &[Claim]) -> Result<(), Error> {
        claims::release(db, claims).await
    }

    async fn release_key(
        db: &Database<Postgres>,
        key: &str,
        token: uuid::Uuid,
    ) -> Result<(), Error> {
        claims::release_key(db, key, token).await
    }

    async fn mark_done_many(
        db: &Database<Postgres>,
        by_handler: &BTreeMap<&str, Vec<EventId>>,
    ) -> Result<(), Error> {
        let mut conn = db.acquire().await?;
        for (handler, event_ids) in by_handler {
            transaction::mark_done_alone(&mut conn, event_ids, handler).await?;
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

    async fn accept(
        db: &Database<Postgres>,
        handler: &str,
        incoming: &[Incoming],
    ) -> Result<u64, Error> {
        inbox::accept(db, handler, incoming).await
    }

    async fn any_unfinished(db: &Database<Postgres>, handlers: &[&str]) -> Result<bool, Error> {
        delivery::any_unfinished(db, handlers).await
    }

    async fn purge(
        db: &Database<Postgres>,
        done_older_than: Option<Duration>,
        dead_older_than: Option<Duration>,
        limit: u32,
    ) -> Result<u64, Error> {
        delivery::purge(db, done_older_than, dead_older_than, limit).await
    }

    async fn dead_find(
        db: &Database<Postgres>,
        filter: &DeadFilter,
    ) -> Result<Vec<DeadLetter>, Error> {
        dead_letter::find(db, filter).await
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

    async fn dead_retry(
        db: &Database<Postgres>,
        event_id: EventId,
        handler: &str,
    ) -> Result<bool, Error> {
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
}

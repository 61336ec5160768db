//! What operators read on SQLite: the status per handler, the relays, the schema.

use sqlx::Sqlite;

use super::now_ms;
use crate::operations::{Counts, RelayStatus, Status, Unsubscribed};
use crate::options::internal;
use crate::store::Operations;
use crate::{Database, Error};

async fn read_status(conn: &mut sqlx::SqliteConnection) -> Result<Status, Error> {
    let now = super::now(conn).await?;
    let counts: Vec<Counts> = sqlx::query_as(
        "SELECT COALESCE(s.message, e.name, '') AS message, d.handler,
                count(*) FILTER (WHERE d.status = 'pending' AND d.leased_until > $1),
                count(*) FILTER (WHERE d.status = 'pending' AND d.attempts > d.retried_from
                                   AND (d.leased_until IS NULL OR d.leased_until <= $1)),
                count(*) FILTER (WHERE d.status = 'pending' AND d.attempts <= d.retried_from
                                   AND (d.leased_until IS NULL OR d.leased_until <= $1)),
                count(*) FILTER (WHERE d.status = 'dead'),
                $1 - min(e.created_at) FILTER (WHERE d.status = 'pending')
         FROM keel_deliveries d
         LEFT JOIN keel_events e ON e.id = d.event_id
         LEFT JOIN keel_subscriptions s ON s.handler = d.handler AND s.message = e.name
         GROUP BY 1, 2",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let done: Vec<(String, i64)> = sqlx::query_as(
        "SELECT handler, count(*) FROM keel_done WHERE done_at > $1 - 60000 GROUP BY handler",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let subscriptions: Vec<(String, String)> =
        sqlx::query_as("SELECT message, handler FROM keel_subscriptions")
            .fetch_all(&mut *conn)
            .await?;
    let leases: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT handler, substr(leased_by, 1, 18), count(*) FROM keel_deliveries
         WHERE status = 'pending' AND leased_until > $1 AND leased_by IS NOT NULL
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let unrouted: i64 = sqlx::query_scalar("SELECT count(*) FROM keel_events WHERE NOT routed")
        .fetch_one(&mut *conn)
        .await?;
    let relays: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT process, host, pid, started_at, $1 - last_seen FROM keel_relays
         ORDER BY started_at, process",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Status {
        handlers: crate::operations::merge(subscriptions, counts, done, leases),
        unrouted,
        relays: relays
            .into_iter()
            .map(|(process, host, pid, started_ms, silent_ms)| RelayStatus {
                process,
                host,
                pid,
                started_at: super::from_ms(started_ms),
                silent_ms,
            })
            .collect(),
    })
}

impl Operations for Sqlite {
    /// Through a unit of work: it writes, and SQLite's writers queue in the process.
    async fn heartbeat(
        db: &Database<Sqlite>,
        process: &str,
        host: &str,
        pid: u32,
    ) -> Result<(), Error> {
        db.clone()
            .unit_of_work_with(&internal("keel_heartbeat"), async |tx| {
                sqlx::query(concat!(
                    "DELETE FROM keel_relays WHERE last_seen < ",
                    now_ms!(),
                    " - 86400000"
                ))
                .execute(tx.conn())
                .await?;
                sqlx::query(concat!(
                    "INSERT INTO keel_relays (process, host, pid) VALUES ($1, $2, $3)
                     ON CONFLICT (process) DO UPDATE SET last_seen = ",
                    now_ms!()
                ))
                .bind(process)
                .bind(host)
                .bind(i64::from(pid))
                .execute(tx.conn())
                .await?;
                Ok(())
            })
            .await
            .map(|receipt| receipt.into_value())
    }

    async fn forget_relay(db: &Database<Sqlite>, process: &str) -> Result<(), Error> {
        db.clone()
            .unit_of_work_with(&internal("keel_forget_relay"), async |tx| {
                sqlx::query("DELETE FROM keel_relays WHERE process = $1")
                    .bind(process)
                    .execute(tx.conn())
                    .await?;
                Ok(())
            })
            .await
            .map(|receipt| receipt.into_value())
    }

    async fn status(db: &Database<Sqlite>) -> Result<Status, Error> {
        // sqlx's transaction: rolled back even if this future is dropped midway.
        let mut conn = db.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let result = read_status(&mut tx).await;
        tx.rollback().await?;
        result
    }

    /// The versions of Keel's migrations applied, or `None` without Keel's migration table.
    async fn applied_migrations(db: &Database<Sqlite>) -> Result<Option<Vec<i64>>, Error> {
        let mut conn = db.acquire().await?;
        let exists: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'keel_schema_migrations'",
        )
        .fetch_one(&mut *conn)
        .await?;
        if exists == 0 {
            return Ok(None);
        }
        let versions = sqlx::query_scalar(
            "SELECT version FROM keel_schema_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(Some(versions))
    }

    async fn subscriptions(db: &Database<Sqlite>) -> Result<Vec<(String, String)>, Error> {
        let mut conn = db.acquire().await?;
        Ok(sqlx::query_as(
            "SELECT message, handler FROM keel_subscriptions ORDER BY message, handler",
        )
        .fetch_all(&mut *conn)
        .await?)
    }

    async fn unsubscribe(db: &Database<Sqlite>, handler: &str) -> Result<Unsubscribed, Error> {
        /// The events of the pending deliveries removed.
        macro_rules! pending {
            () => {
                "SELECT event_id FROM keel_deliveries WHERE handler = $1 AND status = 'pending'"
            };
        }
        db.clone()
            .unit_of_work_with(&internal("keel_unsubscribe"), async |tx| {
                sqlx::query(concat!(
                    "DELETE FROM keel_delivery_errors WHERE handler = $1 AND event_id IN (",
                    pending!(),
                    ")"
                ))
                .bind(handler)
                .execute(tx.conn())
                .await?;
                sqlx::query(concat!(
                    "DELETE FROM keel_events WHERE id IN (",
                    pending!(),
                    ") AND NOT EXISTS (SELECT 1 FROM keel_deliveries k
                                      WHERE k.event_id = keel_events.id
                                        AND NOT (k.handler = $1 AND k.status = 'pending'))
                      AND NOT EXISTS (SELECT 1 FROM keel_done k WHERE k.event_id = keel_events.id)"
                ))
                .bind(handler)
                .execute(tx.conn())
                .await?;
                let deliveries = sqlx::query(
                    "DELETE FROM keel_deliveries WHERE handler = $1 AND status = 'pending'",
                )
                .bind(handler)
                .execute(tx.conn())
                .await?
                .rows_affected();
                let subscriptions =
                    sqlx::query("DELETE FROM keel_subscriptions WHERE handler = $1")
                        .bind(handler)
                        .execute(tx.conn())
                        .await?
                        .rows_affected();
                Ok(Unsubscribed {
                    subscriptions,
                    deliveries,
                })
            })
            .await
            .map(|receipt| receipt.into_value())
    }
}

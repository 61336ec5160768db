//! What operators read on PostgreSQL: the status per handler, the relays, the schema.

use sqlx::Postgres;
use time::OffsetDateTime;

use crate::operations::{Counts, RelayStatus, Status, Unsubscribed};
use crate::store::Operations;
use crate::{Database, Error};

async fn read_status(conn: &mut sqlx::PgConnection) -> Result<Status, Error> {
    let counts: Vec<Counts> = sqlx::query_as(
        "SELECT COALESCE(s.message, e.name, '') AS message, d.handler,
                count(*) FILTER (WHERE d.status = 'pending' AND d.leased_until IS NOT NULL
                                   AND d.leased_until > clock_timestamp()),
                count(*) FILTER (WHERE d.status = 'pending' AND d.attempts > d.retried_from
                                   AND (d.leased_until IS NULL OR d.leased_until <= clock_timestamp())),
                count(*) FILTER (WHERE d.status = 'pending' AND d.attempts <= d.retried_from
                                   AND (d.leased_until IS NULL OR d.leased_until <= clock_timestamp())),
                count(*) FILTER (WHERE d.status = 'dead'),
                (EXTRACT(EPOCH FROM clock_timestamp() - min(e.created_at)
                                    FILTER (WHERE d.status = 'pending')) * 1000)::bigint
         FROM keel_deliveries d
         LEFT JOIN keel_events e ON e.id = d.event_id
         LEFT JOIN keel_subscriptions s ON s.handler = d.handler AND s.message = e.name
         GROUP BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let done: Vec<(String, i64)> = sqlx::query_as(
        "SELECT handler, count(*) FROM keel_done
         WHERE done_at > clock_timestamp() - interval '1 minute' GROUP BY handler",
    )
    .fetch_all(&mut *conn)
    .await?;
    let subscriptions: Vec<(String, String)> =
        sqlx::query_as("SELECT message, handler FROM keel_subscriptions")
            .fetch_all(&mut *conn)
            .await?;
    let leases: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT handler, left(leased_by::text, 18), count(*) FROM keel_deliveries
         WHERE status = 'pending' AND leased_until > clock_timestamp() AND leased_by IS NOT NULL
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let unrouted: i64 = sqlx::query_scalar("SELECT count(*) FROM keel_events WHERE NOT routed")
        .fetch_one(&mut *conn)
        .await?;
    let relays: Vec<(String, String, i64, OffsetDateTime, i64)> = sqlx::query_as(
        "SELECT process, host, pid, started_at,
                (EXTRACT(EPOCH FROM clock_timestamp() - last_seen) * 1000)::bigint
         FROM keel_relays ORDER BY started_at, process",
    )
    .fetch_all(&mut *conn)
    .await?;
    let handlers = crate::operations::merge(subscriptions, counts, done, leases);
    Ok(Status {
        handlers,
        unrouted,
        relays: relays
            .into_iter()
            .map(|(process, host, pid, started_at, silent_ms)| RelayStatus {
                process,
                host,
                pid,
                started_at,
                silent_ms,
            })
            .collect(),
    })
}

impl Operations for Postgres {
    async fn heartbeat(
        db: &Database<Postgres>,
        process: &str,
        host: &str,
        pid: u32,
    ) -> Result<(), Error> {
        let mut conn = db.acquire().await?;
        sqlx::query(
            "WITH gone AS (DELETE FROM keel_relays WHERE last_seen < now() - interval '1 day')
             INSERT INTO keel_relays (process, host, pid) VALUES ($1, $2, $3)
             ON CONFLICT (process) DO UPDATE SET last_seen = now()",
        )
        .bind(process)
        .bind(host)
        .bind(i64::from(pid))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Counts per (message, handler) from the deliveries, the done log and the subscriptions,
    /// read in one snapshot (`REPEATABLE READ`), so the figures add up.
    async fn forget_relay(db: &Database<Postgres>, process: &str) -> Result<(), Error> {
        let mut conn = db.acquire().await?;
        sqlx::query("DELETE FROM keel_relays WHERE process = $1")
            .bind(process)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn status(db: &Database<Postgres>) -> Result<Status, Error> {
        // sqlx's transaction: rolled back even if this future is dropped midway.
        let mut conn = db.acquire().await?;
        let mut tx = sqlx::Connection::begin_with(
            &mut *conn,
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )
        .await?;
        let result = read_status(&mut tx).await;
        tx.rollback().await?;
        result
    }

    /// The versions of Keel's migrations applied, or `None` without Keel's migration table.
    async fn applied_migrations(db: &Database<Postgres>) -> Result<Option<Vec<i64>>, Error> {
        let mut conn = db.acquire().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('keel_schema_migrations') IS NOT NULL")
                .fetch_one(&mut *conn)
                .await?;
        if !exists {
            return Ok(None);
        }
        let versions = sqlx::query_scalar(
            "SELECT version FROM keel_schema_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(Some(versions))
    }

    async fn subscriptions(db: &Database<Postgres>) -> Result<Vec<(String, String)>, Error> {
        let mut conn = db.acquire().await?;
        Ok(sqlx::query_as(
            "SELECT message, handler FROM keel_subscriptions ORDER BY message, handler",
        )
        .fetch_all(&mut *conn)
        .await?)
    }

    /// One statement: its parts see one snapshot, so the events' check ignores the
    /// deliveries deleted alongside.
    async fn unsubscribe(db: &Database<Postgres>, handler: &str) -> Result<Unsubscribed, Error> {
        let mut conn = db.acquire().await?;
        let (subscriptions, deliveries): (i64, i64) = sqlx::query_as(
            "WITH p AS (
                 DELETE FROM keel_deliveries WHERE handler = $1 AND status = 'pending'
                 RETURNING event_id),
             x AS (
                 DELETE FROM keel_delivery_errors r USING p
                 WHERE r.handler = $1 AND r.event_id = p.event_id),
             v AS (
                 DELETE FROM keel_events e WHERE e.id IN (SELECT event_id FROM p)
                   AND NOT EXISTS (SELECT 1 FROM keel_deliveries k WHERE k.event_id = e.id
                                     AND NOT (k.handler = $1 AND k.status = 'pending'))
                   AND NOT EXISTS (SELECT 1 FROM keel_done k WHERE k.event_id = e.id)),
             s AS (DELETE FROM keel_subscriptions WHERE handler = $1 RETURNING 1)
             SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM p)",
        )
        .bind(handler)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Unsubscribed {
            subscriptions: subscriptions as u64,
            deliveries: deliveries as u64,
        })
    }
}

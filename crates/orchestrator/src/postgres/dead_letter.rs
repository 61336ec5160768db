//! The dead letter on PostgreSQL: list, show, retry, discard.

use keel_domain::EventId;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::claims::{EVENT_COLUMNS, envelope_from};
use crate::operations::DeadFilter;
use crate::outbox::{DeadLetter, FailedAttempt, NO_HANDLER};
use crate::store::millis;
use crate::{Database, Error};

fn select(tail: &str) -> String {
    format!(
        "SELECT d.event_id, d.handler, d.attempts, COALESCE(e.name, '') AS event_name,
                COALESCE(e.payload::text, '') AS payload_text, {EVENT_COLUMNS}
         FROM keel_deliveries d LEFT JOIN keel_events e ON e.id = d.event_id {tail}"
    )
}

/// Reads the letters of `rows` with their error histories (one more query for all).
async fn letters(db: &Database<Postgres>, rows: &[PgRow]) -> Result<Vec<DeadLetter>, Error> {
    let mut letters = Vec::with_capacity(rows.len());
    for row in rows {
        letters.push(DeadLetter {
            event_id: EventId::from_uuid(row.try_get("event_id")?),
            event_name: row.try_get("event_name")?,
            handler: row.try_get("handler")?,
            payload: row.try_get("payload_text")?,
            event: envelope_from(row).ok(),
            attempts: row.try_get::<i32, _>("attempts")?.max(0) as u32,
            failures: Vec::new(),
        });
    }
    if letters.is_empty() {
        return Ok(letters);
    }
    let ids: Vec<Uuid> = letters.iter().map(|l| *l.event_id.as_uuid()).collect();
    let handlers: Vec<&str> = letters.iter().map(|l| l.handler.as_str()).collect();
    let mut conn = db.acquire().await?;
    let failures: Vec<(Uuid, String, i32, OffsetDateTime, String)> = sqlx::query_as(
        "SELECT r.event_id, r.handler, r.attempt, r.failed_at, r.error
         FROM keel_delivery_errors r
         JOIN UNNEST($1::uuid[], $2::text[]) AS t (i, h) ON r.event_id = t.i AND r.handler = t.h
         ORDER BY r.attempt",
    )
    .bind(ids)
    .bind(handlers)
    .fetch_all(&mut *conn)
    .await?;
    let index: std::collections::HashMap<(Uuid, String), usize> = letters
        .iter()
        .enumerate()
        .map(|(at, l)| ((*l.event_id.as_uuid(), l.handler.clone()), at))
        .collect();
    for (id, handler, attempt, failed_at, error) in failures {
        if let Some(&at) = index.get(&(id, handler)) {
            letters[at].failures.push(FailedAttempt {
                attempt: attempt.max(0) as u32,
                failed_at,
                error,
            });
        }
    }
    Ok(letters)
}

pub(super) async fn find(
    db: &Database<Postgres>,
    filter: &DeadFilter,
) -> Result<Vec<DeadLetter>, Error> {
    let sql = select(
        "WHERE d.status = 'dead'
           AND ($2::text IS NULL OR d.handler = $2)
           AND ($3::text IS NULL OR e.name = $3)
           AND ($4::text IS NULL OR d.last_error ILIKE $4)
           AND ($5::bigint IS NULL OR d.updated_at <= now() - $5 * interval '1 millisecond')
           AND ($6::bigint IS NULL OR d.updated_at >= now() - $6 * interval '1 millisecond')
           AND ($7::uuid IS NULL OR d.event_id = $7)
         ORDER BY d.updated_at, d.event_id, d.handler LIMIT $1",
    );
    let mut conn = db.acquire().await?;
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(i64::from(filter.limit))
        .bind(filter.handler.as_deref())
        .bind(filter.message.as_deref())
        .bind(filter.error_pattern())
        .bind(filter.older_than.map(millis))
        .bind(filter.newer_than.map(millis))
        .bind(filter.event_id.map(|id| *id.as_uuid()))
        .fetch_all(&mut *conn)
        .await?;
    drop(conn);
    letters(db, &rows).await
}

pub(super) async fn count(db: &Database<Postgres>) -> Result<i64, Error> {
    let mut conn = db.acquire().await?;
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM keel_deliveries WHERE status = 'dead'")
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub(super) async fn show(
    db: &Database<Postgres>,
    event_id: EventId,
    handler: &str,
) -> Result<Option<DeadLetter>, Error> {
    let sql = select("WHERE d.status = 'dead' AND d.event_id = $1 AND d.handler = $2");
    let mut conn = db.acquire().await?;
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(event_id.as_uuid())
        .bind(handler)
        .fetch_all(&mut *conn)
        .await?;
    drop(conn);
    Ok(letters(db, &rows).await?.pop())
}

/// Due now, for a fresh run of its retry policy whose attempt numbers count on; an unrouted entry is routed again instead, with
/// the handlers registered by then.
pub(super) async fn retry(
    db: &Database<Postgres>,
    event_id: EventId,
    handler: &str,
) -> Result<bool, Error> {
    let mut conn = db.acquire().await?;
    let sql = if handler == NO_HANDLER {
        "WITH d AS (
             DELETE FROM keel_deliveries
             WHERE event_id = $1 AND handler = $2 AND status = 'dead' RETURNING event_id),
         x AS (DELETE FROM keel_delivery_errors
               WHERE event_id IN (SELECT event_id FROM d) AND handler = $2),
         e AS (UPDATE keel_events SET routed = FALSE WHERE id IN (SELECT event_id FROM d))
         SELECT count(*) FROM d"
    } else {
        "WITH u AS (
             UPDATE keel_deliveries SET status = 'pending', retried_from = attempts,
                 next_attempt_at = now(), leased_until = NULL, leased_by = NULL,
                 updated_at = now()
             WHERE event_id = $1 AND handler = $2 AND status = 'dead' RETURNING 1)
         SELECT count(*) FROM u"
    };
    let changed: i64 = sqlx::query_scalar(sql)
        .bind(event_id.as_uuid())
        .bind(handler)
        .fetch_one(&mut *conn)
        .await?;
    Ok(changed == 1)
}

/// Removes the delivery, its history, and its event if no other delivery of it is left.
pub(super) async fn discard(
    db: &Database<Postgres>,
    event_id: EventId,
    handler: &str,
) -> Result<bool, Error> {
    let mut conn = db.acquire().await?;
    let removed: i64 = sqlx::query_scalar(
        "WITH d AS (
             DELETE FROM keel_deliveries
             WHERE event_id = $1 AND handler = $2 AND status = 'dead' RETURNING event_id),
         x AS (
             DELETE FROM keel_delivery_errors
             WHERE event_id = $1 AND handler = $2 AND EXISTS (SELECT 1 FROM d)),
         v AS (
             DELETE FROM keel_events e WHERE e.id IN (SELECT event_id FROM d)
               AND NOT EXISTS (SELECT 1 FROM keel_deliveries k
                               WHERE k.event_id = e.id AND k.handler <> $2))
         SELECT count(*) FROM d",
    )
    .bind(event_id.as_uuid())
    .bind(handler)
    .fetch_one(&mut *conn)
    .await?;
    Ok(removed == 1)
}

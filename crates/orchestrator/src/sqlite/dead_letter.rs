//! The dead letter on SQLite: list, show, retry, discard.

use keel_domain::EventId;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::claims::envelope_from;
use super::now_ms;
use crate::operations::DeadFilter;
use crate::options::internal;
use crate::outbox::{DeadLetter, FailedAttempt, NO_HANDLER};
use crate::store::millis;
use crate::{Database, Error};

fn select(tail: &str) -> String {
    format!(
        "SELECT d.event_id, d.handler, d.attempts, COALESCE(e.name, '') AS event_name,
                COALESCE(e.payload, '') AS payload_text, e.id, e.name, e.aggregate_type,
                e.aggregate_id, e.occurred_at, e.payload, e.correlation_id, e.causation_id,
                e.headers
         FROM keel_deliveries d LEFT JOIN keel_events e ON e.id = d.event_id {tail}"
    )
}

async fn letter(db: &Database<Sqlite>, row: &SqliteRow) -> Result<DeadLetter, Error> {
    let event_id: String = row.try_get("event_id")?;
    let handler: String = row.try_get("handler")?;
    let mut conn = db.acquire().await?;
    let failures: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT attempt, failed_at, error FROM keel_delivery_errors
         WHERE event_id = $1 AND handler = $2 ORDER BY attempt",
    )
    .bind(event_id.as_str())
    .bind(handler.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let failures = failures
        .into_iter()
        .map(|(attempt, failed_at, error)| FailedAttempt {
            attempt: attempt.max(0) as u32,
            failed_at: super::from_ms(failed_at),
            error,
        })
        .collect();
    Ok(DeadLetter {
        event_id: event_id
            .parse()
            .map_err(|e| Error::rejected(std::io::Error::other(format!("event id: {e}"))))?,
        event_name: row.try_get("event_name")?,
        payload: row.try_get("payload_text")?,
        event: envelope_from(row).ok(),
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        handler,
        failures,
    })
}

pub(super) async fn find(
    db: &Database<Sqlite>,
    filter: &DeadFilter,
) -> Result<Vec<DeadLetter>, Error> {
    let sql = select(concat!(
        "WHERE d.status = 'dead'
           AND ($2 IS NULL OR d.handler = $2)
           AND ($3 IS NULL OR e.name = $3)
           AND ($4 IS NULL OR d.last_error LIKE $4 ESCAPE '\\')
           AND ($5 IS NULL OR d.updated_at <= ",
        now_ms!(),
        " - $5)
           AND ($6 IS NULL OR d.updated_at >= ",
        now_ms!(),
        " - $6)
           AND ($7 IS NULL OR d.event_id = $7)
         ORDER BY d.updated_at, d.event_id, d.handler LIMIT $1"
    ));
    let mut conn = db.acquire().await?;
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(i64::from(filter.limit))
        .bind(filter.handler.as_deref())
        .bind(filter.message.as_deref())
        .bind(filter.error_pattern())
        .bind(filter.older_than.map(millis))
        .bind(filter.newer_than.map(millis))
        .bind(filter.event_id.map(|id| id.to_string()))
        .fetch_all(&mut *conn)
        .await?;
    drop(conn);
    let mut letters = Vec::with_capacity(rows.len());
    for row in &rows {
        letters.push(letter(db, row).await?);
    }
    Ok(letters)
}

pub(super) async fn count(db: &Database<Sqlite>) -> Result<i64, Error> {
    let mut conn = db.acquire().await?;
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM keel_deliveries WHERE status = 'dead'")
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub(super) async fn show(
    db: &Database<Sqlite>,
    event_id: EventId,
    handler: &str,
) -> Result<Option<DeadLetter>, Error> {
    let sql = select("WHERE d.status = 'dead' AND d.event_id = $1 AND d.handler = $2");
    let mut conn = db.acquire().await?;
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(event_id.to_string())
        .bind(handler)
        .fetch_optional(&mut *conn)
        .await?;
    drop(conn);
    match row {
        Some(row) => Ok(Some(letter(db, &row).await?)),
        None => Ok(None),
    }
}

pub(super) async fn retry(
    db: &Database<Sqlite>,
    event_id: EventId,
    handler: &str,
) -> Result<bool, Error> {
    let event_id = event_id.to_string();
    let event_id = event_id.as_str();
    db.clone()
        .unit_of_work_with(&internal("keel_dead_letter_retry"), async |tx| {
            if handler == NO_HANDLER {
                // Route the event again, with the handlers registered now.
                let removed = delete_dead(tx.conn(), event_id, handler).await?;
                if removed {
                    sqlx::query("UPDATE keel_events SET routed = FALSE WHERE id = $1")
                        .bind(event_id)
                        .execute(tx.conn())
                        .await?;
                    sqlx::query(
                        "DELETE FROM keel_delivery_errors WHERE event_id = $1 AND handler = $2",
                    )
                    .bind(event_id)
                    .bind(handler)
                    .execute(tx.conn())
                    .await?;
                }
                return Ok(removed);
            }
            let updated = sqlx::query(concat!(
                "UPDATE keel_deliveries SET status = 'pending', retried_from = attempts, leased_until = NULL,
                 leased_by = NULL, next_attempt_at = ",
                now_ms!(),
                ", updated_at = ",
                now_ms!(),
                " WHERE event_id = $1 AND handler = $2 AND status = 'dead'"
            ))
            .bind(event_id)
            .bind(handler)
            .execute(tx.conn())
            .await?
            .rows_affected();
            Ok(updated == 1)
        })
        .await
        .map(|receipt| receipt.into_value())
}

pub(super) async fn discard(
    db: &Database<Sqlite>,
    event_id: EventId,
    handler: &str,
) -> Result<bool, Error> {
    let event_id = event_id.to_string();
    let event_id = event_id.as_str();
    db.clone()
        .unit_of_work_with(&internal("keel_dead_letter_discard"), async |tx| {
            let removed = delete_dead(tx.conn(), event_id, handler).await?;
            if removed {
                sqlx::query(
                    "DELETE FROM keel_delivery_errors WHERE event_id = $1 AND handler = $2",
                )
                .bind(event_id)
                .bind(handler)
                .execute(tx.conn())
                .await?;
                sqlx::query(
                    "DELETE FROM keel_events WHERE id = $1 AND NOT EXISTS
                     (SELECT 1 FROM keel_deliveries d WHERE d.event_id = keel_events.id)",
                )
                .bind(event_id)
                .execute(tx.conn())
                .await?;
            }
            Ok(removed)
        })
        .await
        .map(|receipt| receipt.into_value())
}

async fn delete_dead(
    conn: &mut sqlx::SqliteConnection,
    event_id: &str,
    handler: &str,
) -> Result<bool, Error> {
    let removed = sqlx::query(
        "DELETE FROM keel_deliveries WHERE event_id = $1 AND handler = $2 AND status = 'dead'",
    )
    .bind(event_id)
    .bind(handler)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(removed == 1)
}

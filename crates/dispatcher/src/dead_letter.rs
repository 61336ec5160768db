//! The dead letter: deliveries that exhausted their retries or failed permanently, kept
//! with the event and every attempt's error, to inspect, retry or discard.

use keel_domain::Envelope;
use keel_orchestrator::outbox::{DEAD, PENDING, now_millis};
use keel_orchestrator::{Database, Error, UnitOfWork};
use sqlx::Row;

use crate::store::{NO_HANDLER, envelope_from};

/// One failed attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    /// The attempt's number (1 for the first; 0 for a routing failure).
    pub attempt: u32,
    /// When it failed, in milliseconds since the Unix epoch.
    pub failed_at_ms: i64,
    /// What went wrong.
    pub error: String,
}

/// A delivery in the dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The event's id.
    pub event_id: String,
    /// The event's name.
    pub event_name: String,
    /// The handler that gave up ([`NO_HANDLER`](crate::NO_HANDLER) if none is registered).
    pub handler: String,
    /// The stored payload, as written.
    pub payload: String,
    /// The event, if its row still parses.
    pub event: Option<Envelope>,
    /// Attempts made.
    pub attempts: u32,
    /// Every failed attempt, oldest first.
    pub failures: Vec<FailedAttempt>,
}

/// Lists, shows, retries and discards dead deliveries.
///
/// ```no_run
/// # async fn run(app: keel_dispatcher::Dispatcher) -> Result<(), keel_orchestrator::Error> {
/// let dead = app.dead_letters();
/// for letter in dead.list(50).await? {
///     println!("{} / {}: {:?}", letter.event_name, letter.handler, letter.failures.last());
///     dead.retry(&letter.event_id, &letter.handler).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetters {
    db: Database,
    wake: std::sync::Arc<crate::relay::Wake>,
}

const SELECT: &str = "SELECT d.event_id, d.handler, d.attempts, e.id, e.name, e.aggregate_type,
    e.aggregate_id, e.occurred_at, e.payload, e.correlation_id, e.causation_id
    FROM keel_deliveries d JOIN keel_events e ON e.id = d.event_id";

impl DeadLetters {
    pub(crate) fn new(db: Database, wake: std::sync::Arc<crate::relay::Wake>) -> Self {
        DeadLetters { db, wake }
    }

    /// The oldest `limit` dead deliveries.
    pub async fn list(&self, limit: u32) -> Result<Vec<DeadLetter>, Error> {
        let sql = dead_letter_query(
            "WHERE d.status = 'dead' ORDER BY d.updated_at, d.event_id, d.handler LIMIT $1",
        );
        let mut conn = self.db.acquire().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
        drop(conn);
        let mut letters = Vec::with_capacity(rows.len());
        for row in &rows {
            letters.push(self.letter(row).await?);
        }
        Ok(letters)
    }

    /// How many deliveries are dead.
    pub async fn count(&self) -> Result<i64, Error> {
        let mut conn = self.db.acquire().await?;
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM keel_deliveries WHERE status = 'dead'")
                .fetch_one(&mut *conn)
                .await?;
        Ok(n)
    }

    /// One dead delivery, if it is dead.
    pub async fn show(&self, event_id: &str, handler: &str) -> Result<Option<DeadLetter>, Error> {
        let sql =
            dead_letter_query("WHERE d.status = 'dead' AND d.event_id = $1 AND d.handler = $2");
        let mut conn = self.db.acquire().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(event_id)
            .bind(handler)
            .fetch_optional(&mut *conn)
            .await?;
        drop(conn);
        match row {
            Some(row) => Ok(Some(self.letter(&row).await?)),
            None => Ok(None),
        }
    }

    /// Puts a dead delivery back in the queue, due now with its attempt count reset.
    /// Returns `false` if it is not dead. Its error history is kept.
    pub async fn retry(&self, event_id: &str, handler: &str) -> Result<bool, Error> {
        let retried = self
            .db
            .clone()
            .unit_of_work_with(&UnitOfWork::named("keel_dead_letter_retry"), async |tx| {
                if handler == NO_HANDLER {
                    // Route the event again, with the handlers registered now.
                    let removed = delete_dead(tx, event_id, handler).await?;
                    if removed {
                        sqlx::query("UPDATE keel_events SET routed = FALSE WHERE id = $1")
                            .bind(event_id)
                            .execute(tx.conn())
                            .await?;
                    }
                    return Ok(removed);
                }
                let updated = sqlx::query(
                    "UPDATE keel_deliveries SET status = $1, attempts = 0, next_attempt_at = $2,
                     leased_until = NULL, leased_by = NULL, updated_at = $2
                     WHERE event_id = $3 AND handler = $4 AND status = $5",
                )
                .bind(PENDING)
                .bind(now_millis())
                .bind(event_id)
                .bind(handler)
                .bind(DEAD)
                .execute(tx.conn())
                .await?
                .rows_affected();
                Ok(updated == 1)
            })
            .await?
            .into_value();
        if retried {
            self.wake.wake();
        }
        Ok(retried)
    }

    /// Removes a dead delivery and its error history (and the event, if no other delivery
    /// of it is left). Returns `false` if it is not dead.
    pub async fn discard(&self, event_id: &str, handler: &str) -> Result<bool, Error> {
        self.db
            .clone()
            .unit_of_work_with(&UnitOfWork::named("keel_dead_letter_discard"), async |tx| {
                let removed = delete_dead(tx, event_id, handler).await?;
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

    async fn letter(&self, row: &sqlx::any::AnyRow) -> Result<DeadLetter, Error> {
        let event_id: String = row.try_get("event_id")?;
        let handler: String = row.try_get("handler")?;
        let mut conn = self.db.acquire().await?;
        let failures = sqlx::query(
            "SELECT attempt, failed_at, error FROM keel_delivery_errors
             WHERE event_id = $1 AND handler = $2 ORDER BY attempt",
        )
        .bind(event_id.as_str())
        .bind(handler.as_str())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(FailedAttempt {
                attempt: r.try_get::<i64, _>("attempt")?.max(0) as u32,
                failed_at_ms: r.try_get("failed_at")?,
                error: r.try_get("error")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(DeadLetter {
            event_name: row.try_get("name")?,
            payload: row.try_get("payload")?,
            event: envelope_from(row).ok(),
            attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
            event_id,
            handler,
            failures,
        })
    }
}

/// Deletes the dead delivery `(event_id, handler)`; returns whether it was dead.
async fn delete_dead(
    tx: &mut keel_orchestrator::Tx<'_>,
    event_id: &str,
    handler: &str,
) -> Result<bool, Error> {
    let removed = sqlx::query(
        "DELETE FROM keel_deliveries WHERE event_id = $1 AND handler = $2 AND status = $3",
    )
    .bind(event_id)
    .bind(handler)
    .bind(DEAD)
    .execute(tx.conn())
    .await?
    .rows_affected();
    Ok(removed == 1)
}

fn dead_letter_query(tail: &str) -> String {
    format!("{SELECT} {tail}")
}

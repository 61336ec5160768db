//! Claims on PostgreSQL: one statement leases due deliveries and returns them with their
//! events; keyed commands are claimed key by key; leases are renewed and released.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Envelope, EventId};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::options::internal;
use crate::outbox::{Claim, Claimed, Group};
use crate::store::millis;
use crate::{Database, Error};

/// The event columns every claim returns, prefixed by the events table's alias `e`.
pub(super) const EVENT_COLUMNS: &str = "e.id, e.name, e.aggregate_type, e.aggregate_id, \
    e.occurred_at, e.payload, e.correlation_id, e.causation_id, e.headers";

/// Turns a row holding [`EVENT_COLUMNS`] back into an envelope.
pub(super) fn envelope_from(row: &PgRow) -> Result<Envelope, String> {
    let get = |column: &str| format!("column {column}");
    let id: Option<Uuid> = row
        .try_get("id")
        .map_err(|e| format!("{}: {e}", get("id")))?;
    let Some(id) = id else {
        return Err("event row not found".to_owned());
    };
    let text = |column: &str| -> Result<String, String> {
        row.try_get::<String, _>(column)
            .map_err(|e| format!("{}: {e}", get(column)))
    };
    Ok(Envelope {
        id: EventId::from_uuid(id),
        name: text("name")?,
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        occurred_at: row
            .try_get("occurred_at")
            .map_err(|e| format!("{}: {e}", get("occurred_at")))?,
        payload: row
            .try_get("payload")
            .map_err(|e| format!("{}: {e}", get("payload")))?,
        correlation_id: row
            .try_get("correlation_id")
            .map_err(|e| format!("{}: {e}", get("correlation_id")))?,
        causation_id: row
            .try_get::<Option<Uuid>, _>("causation_id")
            .map_err(|e| format!("{}: {e}", get("causation_id")))?
            .map(EventId::from_uuid),
        headers: row
            .try_get::<Option<sqlx::types::Json<_>>, _>("headers")
            .map_err(|e| format!("{}: {e}", get("headers")))?
            .map(|h| h.0)
            .unwrap_or_default(),
    })
}

fn claim_from(row: &PgRow, token: Uuid) -> Result<Claim, Error> {
    Ok(Claim {
        event: envelope_from(row).map(Arc::new),
        event_id: EventId::from_uuid(row.try_get("claimed_id")?),
        handler: row.try_get("claimed_handler")?,
        attempt: row.try_get::<i32, _>("claimed_attempts")?.max(1) as u32,
        retried_from: row.try_get::<i32, _>("claimed_retried_from")?.max(0) as u32,
        token,
        claimed_at: std::time::Instant::now(),
    })
}

/// One statement leases the rows and returns them joined with their events: the
/// `keel_claim` function (migrations `0012_generic_plans.sql`, `0013_claim_from.sql`),
/// whose plan holds whatever the table's statistics say. The rows locked are updated by
/// their physical address (`ctid`, stable while locked), and the lease leaves every indexed
/// column alone, so PostgreSQL updates them in place (HOT).
pub(super) async fn claim(
    db: &Database<Postgres>,
    limit: u32,
    lease: Duration,
    handlers: &[&str],
    due_from: Option<OffsetDateTime>,
) -> Result<Claimed, Error> {
    let token = crate::operations::lease_token();
    let mut conn = db.acquire().await?;
    let rows = sqlx::query("SELECT * FROM keel_claim($1, $2, $3, $4, $5)")
        .bind(i64::from(limit))
        .bind(millis(lease))
        .bind(token)
        .bind(handlers)
        .bind(due_from)
        .fetch_all(&mut *conn)
        .await?;
    let mut claimed = Claimed::default();
    for row in &rows {
        let due: OffsetDateTime = row.try_get("claimed_due")?;
        claimed.last_due = claimed.last_due.max(Some(due));
        claimed.claims.push(claim_from(row, token)?);
    }
    Ok(claimed)
}

/// Keys whose head (first pending command) is due, free and for one of `handlers`, each
/// key once whatever its backlog, skipping keys another worker is claiming right now; then,
/// per key, its head commands in commit order (`key_seq`).
pub(super) async fn claim_keyed(
    db: &Database<Postgres>,
    max_keys: u32,
    lease: Duration,
    handlers: &[&str],
    batch_size: &(dyn Fn(&str) -> usize + Sync),
    max_batch: usize,
) -> Result<Vec<Group>, Error> {
    let lease_ms = millis(lease);
    let claim_sql = format!(
        "WITH u AS (
             UPDATE keel_deliveries
             SET leased_until = clock_timestamp() + $1 * interval '1 millisecond', leased_by = $2,
                 attempts = attempts + 1
             WHERE handler = $3 AND status = 'pending' AND event_id = ANY ($4)
             RETURNING event_id AS claimed_id, handler AS claimed_handler,
                       attempts AS claimed_attempts, retried_from AS claimed_retried_from)
         SELECT u.claimed_id, u.claimed_handler, u.claimed_attempts, u.claimed_retried_from,
                {EVENT_COLUMNS}
         FROM u LEFT JOIN keel_events e ON e.id = u.claimed_id ORDER BY u.claimed_id"
    );
    let claim_sql = &claim_sql;
    db.clone()
        .unit_of_work_with(&internal("keel_claim_keyed"), async |tx| {
            // Each key once, by its head (its first pending command): a key's backlog,
            // a head waiting for its retry or a key leased by a dead worker holds that
            // key alone, never the others.
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT k.key FROM keel_keys k
                 CROSS JOIN LATERAL (
                     SELECT d.next_attempt_at, d.handler, d.leased_until FROM keel_deliveries d
                     WHERE d.ordering_key = k.key AND d.status = 'pending'
                     ORDER BY d.key_seq NULLS FIRST, d.event_id LIMIT 1) h
                 WHERE (k.leased_until IS NULL OR k.leased_until < now())
                   AND h.next_attempt_at <= now()
                   AND (h.leased_until IS NULL OR h.leased_until < now())
                   AND h.handler = ANY ($2)
                 ORDER BY h.next_attempt_at LIMIT $1
                 FOR UPDATE OF k SKIP LOCKED",
            )
            .bind(i64::from(max_keys))
            .bind(handlers)
            .fetch_all(tx.conn())
            .await?;
            let mut groups = Vec::with_capacity(keys.len());
            for key in keys {
                let heads: Vec<(Uuid, String, bool)> = sqlx::query_as(
                    "SELECT event_id, handler,
                            next_attempt_at <= now()
                            AND (leased_until IS NULL OR leased_until < now()) AS free
                     FROM keel_deliveries
                     WHERE ordering_key = $1 AND status = 'pending'
                     ORDER BY key_seq NULLS FIRST, event_id LIMIT $2",
                )
                .bind(key.as_str())
                .bind(max_batch as i64)
                .fetch_all(tx.conn())
                .await?;
                // Strict order: a head that waits for its retry holds its key, and so does
                // a head for a handler another process runs.
                let Some((_, handler, true)) = heads.first() else {
                    continue;
                };
                if !handlers.contains(&handler.as_str()) {
                    continue;
                }
                let ids: Vec<Uuid> = heads
                    .iter()
                    .take(batch_size(handler))
                    .take_while(|(_, h, free)| h == handler && *free)
                    .map(|(id, _, _)| *id)
                    .collect();
                let token = crate::operations::lease_token();
                sqlx::query(
                    "UPDATE keel_keys SET leased_until = clock_timestamp() + $1 * interval '1 millisecond',
                     leased_by = $2 WHERE key = $3",
                )
                .bind(lease_ms)
                .bind(token)
                .bind(key.as_str())
                .execute(tx.conn())
                .await?;
                let rows = sqlx::query(AssertSqlSafe(claim_sql.clone()))
                    .bind(lease_ms)
                    .bind(token)
                    .bind(handler.as_str())
                    .bind(ids)
                    .fetch_all(tx.conn())
                    .await?;
                let claims = rows
                    .iter()
                    .map(|row| claim_from(row, token))
                    .collect::<Result<Vec<_>, _>>()?;
                groups.push(Group {
                    claims,
                    key: Some(key),
                });
            }
            Ok(groups)
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Extends the leases still held by the claims' token, and their key's, in one statement.
pub(super) async fn renew(
    db: &Database<Postgres>,
    claims: &[Claim],
    key: Option<&str>,
    lease: Duration,
) -> Result<Vec<bool>, Error> {
    let Some(token) = claims.first().map(|c| c.token) else {
        return Ok(Vec::new());
    };
    let ids: Vec<Uuid> = claims.iter().map(|c| *c.event_id.as_uuid()).collect();
    let handlers: Vec<&str> = claims.iter().map(|c| c.handler.as_str()).collect();
    let mut conn = db.acquire().await?;
    let renewed: Vec<(Uuid, String)> = sqlx::query_as(
        "WITH k AS (
             UPDATE keel_keys SET leased_until = clock_timestamp() + $1 * interval '1 millisecond'
             WHERE key = $5 AND leased_by = $2)
         UPDATE keel_deliveries d SET leased_until = clock_timestamp() + $1 * interval '1 millisecond'
         FROM UNNEST($3::uuid[], $4::text[]) AS t (i, h)
         WHERE d.event_id = t.i AND d.handler = t.h AND d.leased_by = $2
           AND d.status = 'pending'
         RETURNING d.event_id, d.handler",
    )
    .bind(millis(lease))
    .bind(token)
    .bind(ids)
    .bind(handlers)
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    Ok(claims
        .iter()
        .map(|c| {
            renewed
                .iter()
                .any(|(i, h)| i == c.event_id.as_uuid() && *h == c.handler)
        })
        .collect())
}

pub(super) async fn release(db: &Database<Postgres>, claims: &[Claim]) -> Result<(), Error> {
    let Some(token) = claims.first().map(|c| c.token) else {
        return Ok(());
    };
    let ids: Vec<Uuid> = claims.iter().map(|c| *c.event_id.as_uuid()).collect();
    let handlers: Vec<&str> = claims.iter().map(|c| c.handler.as_str()).collect();
    let mut conn = db.acquire().await?;
    sqlx::query(
        "UPDATE keel_deliveries d
         SET leased_until = NULL, leased_by = NULL, attempts = greatest(d.attempts - 1, 0),
             next_attempt_at = least(d.next_attempt_at, now())
         FROM UNNEST($2::uuid[], $3::text[]) AS t (i, h)
         WHERE d.event_id = t.i AND d.handler = t.h AND d.leased_by = $1
           AND d.status = 'pending'",
    )
    .bind(token)
    .bind(ids)
    .bind(handlers)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn release_key(
    db: &Database<Postgres>,
    key: &str,
    token: Uuid,
) -> Result<(), Error> {
    let mut conn = db.acquire().await?;
    sqlx::query(
        "UPDATE keel_keys SET leased_until = NULL, leased_by = NULL
         WHERE key = $1 AND leased_by = $2",
    )
    .bind(key)
    .bind(token)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
